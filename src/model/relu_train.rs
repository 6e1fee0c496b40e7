//! ReLU as one op with a one-pass backward, for training: candle differentiates `relu` through
//! four temporary tensors (zeros, a comparison mask, its conversion to f32, a product).
//! `y = max(x, 0)`, `dx = dy·[y > 0]` (PyTorch's convention: no gradient at 0).

use super::conv_op::{f32_slice, with_f32};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use crate::parallel::build_chunks;

struct Relu;

/// Elements per task.
const CHUNK: usize = 1 << 14;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        // SAFETY: each chunk writes every element (zip stops at the chunk's end, which `x`
        // reaches).
        let y = unsafe { build_chunks(x.len(), CHUNK, x.len(), |i, out| out.iter_mut().zip(&x[i * CHUNK..]).for_each(|(o, &v)| _ = o.write(v.max(0.0)))) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_f32(grad, self.name(), |d| {
            with_f32(y, self.name(), |y| {
                assert_eq!(d.len(), y.len());
                // SAFETY: as in the forward pass; `d` and `y` have the chunks' total length.
                unsafe { build_chunks(d.len(), CHUNK, d.len(), |i, out| out.iter_mut().zip(&d[i * CHUNK..]).zip(&y[i * CHUNK..]).for_each(|((o, &d), &v)| _ = o.write(if v > 0.0 { d } else { 0.0 }))) }
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, y.dims(), y.device())?))
    }
}

/// `max(x, 0)` with the one-pass backward.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Relu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_and_gradient_match_the_definition() {
        let x = Var::new(&[[-2f32, -0.0, 0.0, 0.5], [3.0, -1e-30, 1e-30, f32::MAX]], &Device::Cpu).unwrap();
        let y = relu(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), [[0.0, 0.0, 0.0, 0.5], [3.0, 0.0, 1e-30, f32::MAX]]);
        let r = Tensor::new(&[[1f32, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], &Device::Cpu).unwrap();
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), [[0.0, 0.0, 0.0, 4.0], [5.0, 0.0, 7.0, 8.0]]);
    }
}
