//! ReLU as one op with a one-pass backward, for training: candle differentiates `relu` through
//! four temporary tensors (zeros, a comparison mask, its conversion to f32, a product).
//! `y = max(x, 0)`, `dx = dy·[y > 0]` (PyTorch's convention: no gradient at 0).

use super::conv_op::{f32_slice, with_f32};
use crate::error::Result;
use crate::parallel::build_chunks;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

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
        Ok(Some(relu_grad(grad, y)?))
    }
}

/// The gradient through a ReLU given its output `y`: `dx = dy·[y > 0]`. Shared by the ReLU op
/// and the ops a ReLU is fused into (`AddRelu`, `bn_train`).
pub(super) fn relu_grad(grad: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let name = "relu-train";
    let dx = with_f32(grad, name, |d| {
        with_f32(y, name, |y| {
            assert_eq!(d.len(), y.len());
            // SAFETY: each chunk writes every element; `d` and `y` have the chunks' total length.
            unsafe { build_chunks(d.len(), CHUNK, d.len(), |i, out| out.iter_mut().zip(&d[i * CHUNK..]).zip(&y[i * CHUNK..]).for_each(|((o, &d), &v)| _ = o.write(if v > 0.0 { d } else { 0.0 }))) }
        })
    })??;
    Tensor::from_vec(dx, y.dims(), y.device())
}

/// `max(x, 0)` with the one-pass backward.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Relu)?)
}

/// A residual join and its ReLU as one op: `y = max(a + b, 0)`, `da = db = dy·[y > 0]`.
/// Composed, the sum runs in candle on one thread and the ReLU node costs its own passes and a
/// gradient accumulation.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.shape(), l2.shape());
        }
        // SAFETY: each chunk writes every element (`a` and `b` reach every chunk's end).
        let y = unsafe { build_chunks(a.len(), CHUNK, a.len(), |i, out| out.iter_mut().zip(&a[i * CHUNK..]).zip(&b[i * CHUNK..]).for_each(|((o, &x), &y)| _ = o.write((x + y).max(0.0)))) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = relu_grad(grad, y)?;
        Ok((Some(dz.clone()), Some(dz)))
    }
}

/// `max(a + b, 0)` for two tensors of one shape, with the one-pass backward.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?)
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

    #[test]
    fn fused_add_relu_matches_the_definition_for_both_inputs() {
        let a = Var::new(&[[-2f32, 1.0, 0.5], [3.0, -4.0, 2.0]], &Device::Cpu).unwrap();
        let b = Var::new(&[[1f32, -1.0, 0.25], [-3.5, 5.0, 1.0]], &Device::Cpu).unwrap();
        let y = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), [[0.0, 0.0, 0.75], [0.0, 1.0, 3.0]]);
        let r = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            assert_eq!(g.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), [[0.0, 0.0, 3.0], [0.0, 5.0, 6.0]]);
        }
        let c = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let e = add_relu(a.as_tensor(), c.as_tensor()).unwrap_err().to_string();
        assert!(e.contains("add-relu-train") && e.contains("differ"), "{e}");
    }
}
