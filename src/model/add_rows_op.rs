//! `x + rows` for `x [N, L, D]` and `rows [L, D]` (a position table's rows, or one row
//! repeated) as one op with a hand-written backward: candle's broadcast add reduces the rows'
//! gradient over the batch through per-element index arithmetic. Forward `y[n] = x[n] + rows`;
//! backward `dx = dy`, `drows = Σ_n dy[n]`.

use super::conv_op::{f32_slice, with_f32};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

struct AddRows;

impl CustomOp2 for AddRows {
    fn name(&self) -> &'static str {
        "add-rows"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, rows) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let mut y = x.to_vec();
        add_to_chunks(&mut y, rows.len(), rows);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, rows: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let per_sample = rows.elem_count();
        let drows = with_f32(grad, self.name(), |dy| {
            let mut sum = vec![0f32; per_sample];
            for sample in dy.chunks(per_sample.max(1)) {
                sum.iter_mut().zip(sample).for_each(|(s, d)| *s += d);
            }
            sum
        })?;
        Ok((Some(grad.clone()), Some(Tensor::from_vec(drows, rows.dims(), rows.device())?)))
    }
}

/// `chunk[i] += rows[i]` for each run of `chunk` values of `data` (`rows` at least that long):
/// the forward here, and the compiled plans' `position_embedding` and `embedding_row`.
pub(crate) fn add_to_chunks(data: &mut [f32], chunk: usize, rows: &[f32]) {
    data.chunks_mut(chunk.max(1)).for_each(|x| x.iter_mut().zip(rows).for_each(|(x, r)| *x += r));
}

/// `x + rows` at every sample of `x`, `rows` one sample's shape (see the module docs).
pub fn add_rows(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&rows.contiguous()?, AddRows)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The sum and both gradients equal candle's broadcast add's.
    #[test]
    fn matches_the_broadcast_add() {
        let dev = Device::Cpu;
        let x = Var::from_vec((0..24).map(|i| i as f32 * 0.5 - 3.0).collect(), (3, 2, 4), &dev).unwrap();
        let rows = Var::from_vec((0..8).map(|i| i as f32 * 0.25).collect(), (2, 4), &dev).unwrap();
        let r = Tensor::from_vec((0..24).map(|i| (i % 5) as f32 - 2.0).collect(), (3, 2, 4), &dev).unwrap();
        let ours = add_rows(x.as_tensor(), rows.as_tensor()).unwrap();
        let want = x.as_tensor().broadcast_add(rows.as_tensor()).unwrap();
        assert_eq!(ours.to_vec3::<f32>().unwrap(), want.to_vec3::<f32>().unwrap());
        let (g1, g2) = ((ours * &r).unwrap().sum_all().unwrap().backward().unwrap(), (want * &r).unwrap().sum_all().unwrap().backward().unwrap());
        for v in [&x, &rows] {
            let (a, b) = (g1.get(v.as_tensor()).unwrap().flatten_all().unwrap(), g2.get(v.as_tensor()).unwrap().flatten_all().unwrap());
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        }
    }
}
