//! BatchNorm in train mode as one fused candle op with a hand-written backward. Composed from
//! candle ops it costs a strided reduction over (N, H, W) per statistic and more in backward,
//! which dominated training time (bench/README.md). With `m` values per channel,
//! `x̂ = (x − μ) / √(σ² + eps)` (biased σ²), `y = γ·x̂ + β`, and in backward
//! `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/√(σ² + eps) · (dy − dβ/m − x̂·dγ/m)`.

use crate::error::Result;
use super::conv_op::{f32_slice, with_f32};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Per-channel batch statistics `(mean, biased variance)` of `[N, C, inner]` data:
/// `μ = Σx / m`, `σ² = Σ(x − μ)² / m` with `m = N·inner`. Each contiguous run of `inner`
/// values is summed in f32 lanes (`lane_sum`) and the runs are added in f64.
pub fn batch_stats(x: &[f32], n: usize, c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * inner) as f64;
    let runs = |ch: usize| (0..n).map(move |s| &x[(s * c + ch) * inner..(s * c + ch + 1) * inner]);
    let mean: Vec<f64> = (0..c).map(|ch| runs(ch).map(|r| lane_sum(r, r, |v, _| v) as f64).sum::<f64>() / m).collect();
    let var = (0..c)
        .map(|ch| {
            let mu = mean[ch] as f32;
            runs(ch).map(|r| lane_sum(r, r, |v, _| (v - mu) * (v - mu)) as f64).sum::<f64>() / m
        })
        .collect();
    (mean, var)
}

/// `Σ f(a_i, b_i)` over two equal-length runs, in 8 interleaved f32 partial sums so that it
/// vectorises (a sequential float sum cannot be reordered by the compiler); differs from the
/// sequential sum by rounding only.
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += f(x[j], y[j]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

struct BnTrain {
    n: usize,
    c: usize,
    inner: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl BnTrain {
    /// Calls `f(channel, run)` for each contiguous run of one channel's values in `[N, C, inner]`.
    fn runs<'a, T>(&self, v: &'a mut [T], mut f: impl FnMut(usize, &'a mut [T])) {
        for (i, run) in v.chunks_mut(self.inner).enumerate() {
            f(i % self.c, run);
        }
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batchnorm-train"
    }

    /// `y = x·a + b` per channel with `a = γ/√(σ² + eps)`, `b = β − μ·a`.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, g, b) = (f32_slice(s1, l1, op)?, f32_slice(s2, l2, op)?, f32_slice(s3, l3, op)?);
        let a: Vec<f32> = (0..self.c).map(|ch| self.inv_std[ch] * g[ch]).collect();
        let b: Vec<f32> = (0..self.c).map(|ch| b[ch] - self.mean[ch] * a[ch]).collect();
        let mut y = x.to_vec();
        self.runs(&mut y, |ch, run| run.iter_mut().for_each(|v| *v = *v * a[ch] + b[ch]));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// With `x̂ = (x − μ)·k`, `k = 1/√(σ² + eps)`: `dβ = Σ dy`, `dγ = Σ dy·x̂` (each run summed in
    /// f32 lanes, the runs in f64) and `dx = γk·(dy − dβ/m − x̂·dγ/m)`, evaluated as
    /// `dx = p·dy + q·x + r` with `p = γk`, `q = −γk²·dγ/m`, `r = −γk·dβ/m − q·μ`.
    fn bwd(&self, x: &Tensor, gamma: &Tensor, _beta: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = self.name();
        let (c, inner) = (self.c, self.inner);
        let m = (self.n * inner) as f64;
        let g: Vec<f32> = gamma.to_vec1()?;
        let (dx, dgamma, dbeta) = with_f32(grad, op, |dy| {
            with_f32(x, op, |xs| {
                let (mut dgamma, mut dbeta) = (vec![0f64; c], vec![0f64; c]);
                for (i, (xr, dr)) in xs.chunks(inner).zip(dy.chunks(inner)).enumerate() {
                    let ch = i % c;
                    let (mu, k) = (self.mean[ch], self.inv_std[ch]);
                    dbeta[ch] += lane_sum(dr, dr, |d, _| d) as f64;
                    dgamma[ch] += (lane_sum(xr, dr, |v, d| d * (v - mu)) * k) as f64;
                }
                let coef: Vec<(f32, f32, f32)> = (0..c)
                    .map(|ch| {
                        let (k, gk) = (self.inv_std[ch] as f64, (g[ch] * self.inv_std[ch]) as f64);
                        let q = -gk * k * dgamma[ch] / m;
                        let r = -gk * dbeta[ch] / m - q * self.mean[ch] as f64;
                        (gk as f32, q as f32, r as f32)
                    })
                    .collect();
                let mut dx = Vec::with_capacity(xs.len());
                for (i, (dr, xr)) in dy.chunks(inner).zip(xs.chunks(inner)).enumerate() {
                    let (p, q, r) = coef[i % c];
                    dx.extend(dr.iter().zip(xr).map(|(&d, &v)| p * d + q * v + r));
                }
                (dx, dgamma, dbeta)
            })
        })??;
        let dev = x.device();
        let to32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
        Ok((
            Some(Tensor::from_vec(dx, x.dims(), dev)?),
            Some(Tensor::from_vec(to32(dgamma), c, dev)?),
            Some(Tensor::from_vec(to32(dbeta), c, dev)?),
        ))
    }
}

/// Train-mode BatchNorm of `x` (`[N, C, …]`) with scale `gamma` and shift `beta`; returns the
/// output and the batch's `(mean, biased variance)` per channel for the running statistics.
pub fn forward(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let x = x.contiguous()?;
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let inner: usize = x.dims()[2..].iter().product();
    let (mean, var) = with_f32(&x, "batchnorm-train", |xs| batch_stats(xs, n, c, inner))?;
    let op = BnTrain {
        n,
        c,
        inner,
        mean: mean.iter().map(|&v| v as f32).collect(),
        inv_std: var.iter().map(|&v| (1.0 / (v + eps).sqrt()) as f32).collect(),
    };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, mean, var))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same normalisation composed from candle ops, differentiated by candle.
    fn composed(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let dims = [0usize, 2, 3];
        let mean = x.mean_keepdim(dims.as_slice()).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(dims.as_slice()).unwrap();
        let y = xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
        let c = x.dim(1).unwrap();
        y.broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap()).unwrap().broadcast_add(&b.reshape((1, c, 1, 1)).unwrap()).unwrap()
    }

    #[test]
    fn matches_composed_ops_forward_and_backward() {
        let n = 4 * 3 * 5 * 2;
        let xv: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32) / 17.0 - 2.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(xv, (4, 3, 5, 2), &Device::Cpu).unwrap()).unwrap();
        let g = Var::new(&[1.5f32, -0.5, 2.0], &Device::Cpu).unwrap();
        let b = Var::new(&[0.1f32, 0.2, -0.3], &Device::Cpu).unwrap();
        let r = Tensor::from_vec((0..n).map(|i| ((i * 13 % 7) as f32) - 3.0).collect::<Vec<f32>>(), (4, 3, 5, 2), &Device::Cpu).unwrap();
        let (ours, mean, var) = forward(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let theirs = composed(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5);
        let d = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "forward {d}");
        assert_eq!((mean.len(), var.len()), (3, 3));
        let ga = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &g, &b] {
            let a = ga.get(v.as_tensor()).unwrap();
            let e = gb.get(v.as_tensor()).unwrap();
            let d = (a - e).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "backward {d}");
        }
    }
}
