//! LayerNorm as one op with a hand-written backward: candle composes it from two means, a
//! subtraction, a square, a division, a product and a sum, and reduces the weight's and bias's
//! gradients over the leading dims through per-element index arithmetic, a third of a small
//! transformer's training step. Per row of `n` values, the sums in f64:
//! forward `μ = Σx/n`, `σ² = Σ(x − μ)²/n`, `s = 1/√(σ² + eps)`, `x̂ = (x − μ)·s`,
//! `y = x̂·w + b`; backward `g = dy·w`, `dx = s·(g − Σg/n − x̂·Σ(g·x̂)/n)`, `dw = Σ_rows dy·x̂`,
//! `db = Σ_rows dy` (PyTorch's formulas). The compiled plans normalise with the same row
//! function, [`normalize_rows`], so the executor and the plans agree bit for bit.

use super::conv_op::{f32_slice, with_f32};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task: enough work to pay for the task (a transformer's rows are a few
/// hundred values).
const ROWS_PER_TASK: usize = 64;

struct LayerNorm {
    inner: usize,
    eps: f64,
}

/// Partial sums per row: independent lanes the compiler can vectorise.
const LANES: usize = 8;

/// `Σ f(x)` over `row` in f64, element `i` into partial sum `i % LANES`, then the partials in
/// order.
#[inline(always)]
fn sum_f64(row: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut part = [0f64; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (p, &x) in part.iter_mut().zip(c) {
            *p += f(x as f64);
        }
    }
    for (p, &x) in part.iter_mut().zip(chunks.remainder()) {
        *p += f(x as f64);
    }
    part.iter().sum()
}

/// `(μ, s)` of one row (see the module docs).
#[inline(always)]
fn stats(row: &[f32], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = sum_f64(row, |x| x) / n;
    let var = sum_f64(row, |x| (x - mean) * (x - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm of each row of `inner` values of `data`, in place: `x̂`, then `x̂·w + b` when
/// `affine` holds `(w, b)` (see the module docs). Inlined, so that a caller compiled for an
/// instruction set (the plans' `wide_f32_fn!`) vectorises it for that set.
#[inline(always)]
pub(crate) fn normalize_rows(data: &mut [f32], inner: usize, eps: f64, affine: Option<(&[f32], &[f32])>) {
    for row in data.chunks_mut(inner) {
        let (mean, inv) = stats(row, eps);
        match affine {
            Some((w, b)) => row.iter_mut().zip(w).zip(b).for_each(|((x, &w), &b)| *x = ((*x as f64 - mean) * inv) as f32 * w + b),
            None => row.iter_mut().for_each(|x| *x = ((*x as f64 - mean) * inv) as f32),
        }
    }
}

impl LayerNorm {
    fn forward(&self, x: &[f32], affine: Option<(&[f32], &[f32])>) -> Vec<f32> {
        let mut y = x.to_vec();
        y.par_chunks_mut(ROWS_PER_TASK * self.inner).for_each(|rows| normalize_rows(rows, self.inner, self.eps, affine));
        y
    }

    /// `(dx, dw, db)` from `dy` (`dw`, `db` empty without `w`). Each task of rows sums its
    /// own part of `dw` and `db`; the parts add in task order, which depends on the shapes
    /// only, so the result does not depend on the thread count.
    fn backward(&self, x: &[f32], w: Option<&[f32]>, dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = self.inner;
        let mut dx = vec![0f32; x.len()];
        let rows = ROWS_PER_TASK * n;
        let parts: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .zip(dy.par_chunks(rows))
            .map(|((dx, x), dy)| {
                let (mut dw, mut db) = (vec![0f64; n], vec![0f64; n]);
                let (mut hat, mut g) = (vec![0f64; n], vec![0f64; n]);
                for ((dx, x), dy) in dx.chunks_mut(n).zip(x.chunks(n)).zip(dy.chunks(n)) {
                    let (mean, inv) = stats(x, self.eps);
                    let (mut sum_g, mut sum_gh) = (0.0, 0.0);
                    for i in 0..n {
                        hat[i] = (x[i] as f64 - mean) * inv;
                        g[i] = dy[i] as f64 * w.map_or(1.0, |w| w[i] as f64);
                        sum_g += g[i];
                        sum_gh += g[i] * hat[i];
                        dw[i] += dy[i] as f64 * hat[i];
                        db[i] += dy[i] as f64;
                    }
                    let (mean_g, mean_gh) = (sum_g / n as f64, sum_gh / n as f64);
                    for (i, d) in dx.iter_mut().enumerate() {
                        *d = (inv * (g[i] - mean_g - hat[i] * mean_gh)) as f32;
                    }
                }
                (dw, db)
            })
            .collect();
        if w.is_none() {
            return (dx, vec![], vec![]);
        }
        let (mut dw, mut db) = (vec![0f64; n], vec![0f64; n]);
        for (pw, pb) in &parts {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        (dx, dw.into_iter().map(|v| v as f32).collect(), db.into_iter().map(|v| v as f32).collect())
    }
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.forward(f32_slice(s, l, "layernorm")?, None)), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_f32(x, "layernorm", |x| with_f32(grad, "layernorm", |dy| self.backward(x, None, dy).0))??;
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    #[allow(clippy::too_many_arguments)] // three tensors and their layouts
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (w, b) = (f32_slice(s2, l2, "layernorm")?, f32_slice(s3, l3, "layernorm")?);
        Ok((CpuStorage::F32(self.forward(f32_slice(s1, l1, "layernorm")?, Some((w, b)))), l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = "layernorm";
        let (dx, dw, db) = with_f32(x, name, |x| with_f32(w, name, |w| with_f32(grad, name, |dy| self.backward(x, Some(w), dy))))???;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, x.dims(), dev)?), Some(Tensor::from_vec(dw, w.dims(), dev)?), Some(Tensor::from_vec(db, b.dims(), dev)?)))
    }
}

/// LayerNorm of `x` over its trailing `inner` values (see the module docs), with the weight and
/// bias (of `inner` values each) when given.
pub fn layer_norm(x: &Tensor, inner: usize, eps: f64, affine: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let op = LayerNorm { inner, eps };
    let x = x.contiguous()?;
    Ok(match affine {
        Some((w, b)) => x.apply_op3(&w.contiguous()?, &b.contiguous()?, op)?,
        None => x.apply_op1(op)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Forward and every gradient equal candle's composition of the formula (within f32
    /// rounding), for rows of 12 values with and without the affine map.
    #[test]
    fn matches_the_composed_formula() {
        let dev = Device::Cpu;
        let vals = |seed: usize, n: usize| (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 250.0) - 2.0).collect::<Vec<f32>>();
        let x = Var::from_vec(vals(1, 3 * 5 * 12), (3, 5, 12), &dev).unwrap();
        let w = Var::from_vec(vals(2, 12), 12, &dev).unwrap();
        let b = Var::from_vec(vals(3, 12), 12, &dev).unwrap();
        let r = Tensor::from_vec(vals(4, 3 * 5 * 12), (3, 5, 12), &dev).unwrap();
        let composed = |x: &Tensor, affine: bool| -> Tensor {
            let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap()).unwrap();
            let h = xc.broadcast_div(&(xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5).unwrap().sqrt().unwrap()).unwrap();
            if affine {
                h.broadcast_mul(w.as_tensor()).unwrap().broadcast_add(b.as_tensor()).unwrap()
            } else {
                h
            }
        };
        for affine in [true, false] {
            let ours = layer_norm(x.as_tensor(), 12, 1e-5, affine.then(|| (w.as_tensor(), b.as_tensor()))).unwrap();
            let want = composed(x.as_tensor(), affine);
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let (a, b): (Vec<f32>, Vec<f32>) = (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
                let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                assert!(worst < 2e-5, "{what} (affine {affine}): {worst}");
            };
            close(&ours, &want, "y");
            let (g1, g2) = ((ours * &r).unwrap().sum_all().unwrap().backward().unwrap(), (want * &r).unwrap().sum_all().unwrap().backward().unwrap());
            close(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap(), "dx");
            if affine {
                for p in [&w, &b] {
                    close(g1.get(p.as_tensor()).unwrap(), g2.get(p.as_tensor()).unwrap(), "dw, db");
                }
            }
        }
    }
}
