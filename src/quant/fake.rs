//! Fake quantisation in candle for QAT and the float simulation of an INT8 model:
//! `fq(x) = x_c + (dq(q(x_c)) − x_c).detach()` with `x_c = clamp(x, lo, hi)`, the straight-through
//! estimator: gradient 1 inside the representable range, 0 outside it.

use super::{ActType, QParams};
use crate::error::Result;
use candle_core::Tensor;

/// Per-tensor fake quantisation of an activation with `q`.
pub fn fake_quant_act(x: &Tensor, q: &QParams) -> Result<Tensor> {
    let (lo, hi) = q.real_range();
    let xc = x.clamp(lo, hi)?;
    // dq(q(x)) = (round(x/s) + zp − zp)·s after clamping to the range; round is half away from
    // zero. The integer runtime's `QParams::quantize` rounds x·(1/s) half to even: the two differ
    // only where x/s lies within an ulp of a tie, which training does not notice.
    let deq = ((&xc / q.scale as f64)?.round()? * q.scale as f64)?;
    let deq = deq.clamp(lo, hi)?;
    Ok((&xc + (deq - &xc)?.detach())?)
}

/// Per-token fake quantisation: each row of the last dim with its own parameters,
/// [`QParams::of_row`] (taken from the values and detached), then as [`fake_quant_act`].
pub fn fake_quant_per_token(x: &Tensor, act: ActType) -> Result<Tensor> {
    let width = x.dim(candle_core::D::Minus1)?;
    let flat = x.flatten_all()?.to_vec1::<f32>()?;
    let params: Vec<QParams> = flat.chunks(width.max(1)).map(|r| QParams::of_row(r, act)).collect();
    let rows = params.len();
    let column = |f: &dyn Fn(&QParams) -> f32| Tensor::from_vec(params.iter().map(f).collect::<Vec<_>>(), (rows, 1), x.device());
    let (lo, hi, scale) = (column(&|q| q.real_range().0)?, column(&|q| q.real_range().1)?, column(&|q| q.scale)?);
    let x2 = x.reshape((rows, width))?;
    let xc = x2.broadcast_maximum(&lo)?.broadcast_minimum(&hi)?;
    let deq = xc.broadcast_div(&scale)?.round()?.broadcast_mul(&scale)?.broadcast_maximum(&lo)?.broadcast_minimum(&hi)?;
    Ok((&xc + (deq - &xc)?.detach())?.reshape(x.dims())?)
}

/// Per-output-channel symmetric fake quantisation of a weight `[out, …]`, the scale
/// `s_c = max|w_c| / 127` taken from the current weights (and detached).
pub fn fake_quant_weight(w: &Tensor) -> Result<Tensor> {
    let flat = w.flatten_from(1)?;
    let m = flat.abs()?.max_keepdim(1)?.detach();
    // An all-zero channel: scale 1 (codes are 0 either way).
    let ones = m.ones_like()?;
    let s = m.eq(0.0)?.where_cond(&ones, &(m / 127.0)?)?;
    let q = flat.broadcast_div(&s)?.round()?.clamp(-127f32, 127f32)?.broadcast_mul(&s)?;
    let fq = (&flat + (q - &flat)?.detach())?;
    Ok(fq.reshape(w.dims())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fake_quant_matches_scalar_reference_and_passes_gradient_inside() {
        let q = QParams::from_range(-1.0, 3.0, ActType::U8);
        let xs = [-2.0f32, -0.3, 0.0, 0.77, 2.5, 5.0];
        let x = Var::new(&xs, &Device::Cpu).unwrap();
        let y = fake_quant_act(x.as_tensor(), &q).unwrap();
        let v: Vec<f32> = y.to_vec1().unwrap();
        for (a, &xi) in v.iter().zip(&xs) {
            let r = q.dequantize(q.quantize(xi));
            assert!((a - r).abs() < 1e-6, "{xi}: {a} vs {r}");
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(gx, vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0], "STE: 1 inside the range, 0 outside");
    }

    #[test]
    fn fake_quant_weight_matches_per_channel_reference() {
        let w = [1.0f32, -0.5, 0.25, 0.0, 0.0, 0.0, -4.0, 2.0, 1.0];
        let t = Tensor::from_vec(w.to_vec(), (3, 3), &Device::Cpu).unwrap();
        let fq: Vec<f32> = fake_quant_weight(&t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let r = crate::quant::quantize_weight(&w, &[3, 3]).dequantize();
        for (a, b) in fq.iter().zip(&r) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
