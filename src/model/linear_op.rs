//! Linear layer as one op with a hand-written backward over the `gemm` crate: candle composes it
//! from a transpose, a (broadcast) matmul and a broadcast add, and differentiates each. With the
//! leading dims of `x` flattened to `M` rows: forward `y[M, O] = x[M, K]·Wᵀ + b`; backward
//! `dx = dy·W`, `dW = dyᵀ·x`, `db = Σ_rows dy`.

use super::conv_op::{f32_slice, matmul, with_f32};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

struct Linear {
    rows: usize,
    in_features: usize,
    out_features: usize,
}

impl Linear {
    /// `y = x·Wᵀ (+ b)`.
    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let (m, k, o) = (self.rows, self.in_features, self.out_features);
        let mut y = matmul(m, o, k, x, k, 1, w, 1, k);
        if let Some(b) = b {
            for row in y.chunks_mut(o) {
                row.iter_mut().zip(b).for_each(|(y, &b)| *y += b);
            }
        }
        y
    }

    /// `(dx, dW, db)` from `dy`.
    fn backward(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (m, k, o) = (self.rows, self.in_features, self.out_features);
        let name = "linear";
        let (dx, dw, db) = with_f32(grad, name, |dy| {
            let dx = with_f32(w, name, |w| matmul(m, k, o, dy, o, 1, w, k, 1))?;
            let dw = with_f32(x, name, |x| matmul(o, k, m, dy, 1, o, x, k, 1))?;
            let mut db = vec![0f32; o];
            for row in dy.chunks(o) {
                db.iter_mut().zip(row).for_each(|(s, &d)| *s += d);
            }
            Ok::<_, candle_core::Error>((dx, dw, db))
        })??;
        let dev = x.device();
        Ok((Tensor::from_vec(dx, x.dims(), dev)?, Tensor::from_vec(dw, w.dims(), dev)?, Tensor::from_vec(db, o, dev)?))
    }

    fn out_shape(&self, l: &Layout) -> Shape {
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = self.out_features;
        Shape::from(dims)
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.forward(f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?, None);
        Ok((CpuStorage::F32(y), self.out_shape(l1)))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.forward(f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?, Some(f32_slice(s3, l3, "linear")?));
        Ok((CpuStorage::F32(y), self.out_shape(l1)))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `y = x·Wᵀ + b` over the last dim of `x` (any number of leading dims); `w` is `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (out_features, in_features) = w.dims2()?;
    let x = x.contiguous()?;
    let last = *x.dims().last().unwrap_or(&0);
    if last != in_features {
        // A tensor-library error: the executor names the node it happened in.
        return Err(candle_core::Error::Msg(format!("linear: input has {last} features, the weight expects {in_features}")).into());
    }
    let op = Linear { rows: x.elem_count() / in_features.max(1), in_features, out_features };
    let w = w.contiguous()?;
    Ok(match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        None => x.apply_op2(&w, op)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::op_test_support::{grad_diffs, max_diff, rnd};
    use super::*;
    use candle_core::Var;

    #[test]
    fn matches_composed_candle_ops_forward_and_backward() {
        // 2-d and 3-d inputs, with and without bias; a batch large enough for the threaded GEMM.
        for (xs, bias) in [(vec![5usize, 7], true), (vec![2, 3, 7], false), (vec![300, 7], true)] {
            let x = Var::from_tensor(&rnd(&xs, 1)).unwrap();
            let w = Var::from_tensor(&rnd(&[4, 7], 2)).unwrap();
            let b = Var::from_tensor(&rnd(&[4], 3)).unwrap();
            let bo = bias.then(|| b.as_tensor());
            let ours = linear(x.as_tensor(), w.as_tensor(), bo).unwrap();
            let mut theirs = x.as_tensor().broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap();
            if bias {
                theirs = theirs.broadcast_add(b.as_tensor()).unwrap();
            }
            assert_eq!(ours.dims(), theirs.dims());
            let d = max_diff(&ours, &theirs);
            assert!(d < 1e-5, "forward {d}");
            let vars: Vec<&Var> = if bias { vec![&x, &w, &b] } else { vec![&x, &w] };
            for d in grad_diffs(&ours, &theirs, &rnd(ours.dims(), 4), &vars) {
                assert!(d < 1e-3, "backward {d} for {xs:?}");
            }
        }
    }

    #[test]
    fn a_feature_count_mismatch_is_an_error() {
        let e = linear(&rnd(&[2, 5], 1), &rnd(&[3, 4], 2), None).unwrap_err().to_string();
        assert!(e.contains("5 features") && e.contains("expects 4"), "{e}");
    }
}
