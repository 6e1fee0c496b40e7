//! BatchNorm in train mode as one fused candle op with a hand-written backward. Composed from
//! candle ops it costs a strided reduction over (N, H, W) per statistic and more in backward,
//! which dominated training time (bench/README.md). With `m` values per channel,
//! `x̂ = (x − μ) / √(σ² + eps)` (biased σ²), `y = γ·x̂ + β`, and in backward
//! `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/√(σ² + eps) · (dy − dβ/m − x̂·dγ/m)`.

use super::conv_op::{f32_slice, with_f32};
use crate::error::Result;
use crate::parallel::{build_chunks, for_chunks};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Per-channel batch statistics `(mean, biased variance)` of `[N, C, inner]` data:
/// `μ = Σx / m`, `σ² = Σ(x − μ)² / m` with `m = N·inner`. Each contiguous run of `inner`
/// values is summed in f32 lanes (`lane_sum`) and the runs are added in f64.
pub fn batch_stats(x: &[f32], n: usize, c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * inner) as f64;
    let mut stats = vec![(0f64, 0f64); c];
    for_chunks(&mut stats, 1, x.len(), |ch, st| {
        let mean = channel_runs(x, n, c, inner, ch).map(|r| lane_sum(r, r, |v, _| v) as f64).sum::<f64>() / m;
        let mu = mean as f32;
        let var = channel_runs(x, n, c, inner, ch).map(|r| lane_sum(r, r, |v, _| (v - mu) * (v - mu)) as f64).sum::<f64>() / m;
        st[0] = (mean, var);
    });
    stats.into_iter().unzip()
}

/// The `n` contiguous runs of channel `ch` in `[N, C, inner]` data.
fn channel_runs(x: &[f32], n: usize, c: usize, inner: usize, ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |s| &x[(s * c + ch) * inner..(s * c + ch + 1) * inner])
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
    /// Normalised by the batch's own statistics (train mode), which `dx` then depends on;
    /// otherwise by fixed running statistics.
    batch_stats: bool,
    /// Followed by a fused ReLU: `y = max(γ·x̂ + β, 0)`, and backward first masks the incoming
    /// gradient, `dz = dy·[y > 0]` (saves the ReLU node's passes and candle's gradient
    /// accumulation for the BatchNorm output, which runs on one thread).
    relu: bool,
    n: usize,
    c: usize,
    inner: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl BnTrain {
    /// `out[i] = f(ch)(a[i], b[i])` over `[N, C, inner]` data, run by run (each run one
    /// channel's, `f(ch)` made once per run), one task per sample.
    fn map_runs<G: Fn(f32, f32) -> f32>(&self, a: &[f32], b: &[f32], f: impl Fn(usize) -> G + Sync) -> Vec<f32> {
        let (c, inner) = (self.c, self.inner);
        assert!(a.len() == self.n * c * inner && b.len() == a.len());
        // SAFETY: every run of every sample's chunk is written whole.
        unsafe {
            build_chunks(a.len(), c * inner, a.len(), |s, o| {
                let (a, b) = (&a[s * c * inner..(s + 1) * c * inner], &b[s * c * inner..(s + 1) * c * inner]);
                for ch in 0..c {
                    let r = ch * inner..(ch + 1) * inner;
                    let g = f(ch);
                    o[r.clone()].iter_mut().zip(&a[r.clone()]).zip(&b[r]).for_each(|((o, &x), &y)| _ = o.write(g(x, y)));
                }
            })
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
        let relu = self.relu;
        let y = self.map_runs(x, x, |ch| {
            let (a, b) = (a[ch], b[ch]);
            move |v, _| if relu { (v * a + b).max(0.0) } else { v * a + b }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// With `x̂ = (x − μ)·k`, `k = 1/√(σ² + eps)`: `dβ = Σ dy`, `dγ = Σ dy·x̂` (each run summed in
    /// f32 lanes, the runs in f64) and `dx = γk·(dy − dβ/m − x̂·dγ/m)`, evaluated as
    /// `dx = p·dy + q·x + r` with `p = γk`, `q = −γk²·dγ/m`, `r = −γk·dβ/m − q·μ`; with fixed
    /// (running) statistics `dx = γk·dy`.
    fn bwd(&self, x: &Tensor, gamma: &Tensor, _beta: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = self.name();
        let (c, inner) = (self.c, self.inner);
        let m = (self.n * inner) as f64;
        let g: Vec<f32> = gamma.to_vec1()?;
        // With the fused ReLU, the gradient reaching the normalisation: dz = dy·[y > 0].
        let masked;
        let grad = match self.relu {
            true => {
                masked = super::relu_train::relu_grad(grad, res)?;
                &masked
            }
            false => grad,
        };
        let (dx, dgamma, dbeta) = with_f32(grad, op, |dy| {
            with_f32(x, op, |xs| {
                let (n, mean, inv_std) = (self.n, &self.mean, &self.inv_std);
                let mut sums = vec![(0f64, 0f64); c];
                for_chunks(&mut sums, 1, xs.len(), |ch, out| {
                    let (mu, k) = (mean[ch], inv_std[ch]);
                    let runs = channel_runs(xs, n, c, inner, ch).zip(channel_runs(dy, n, c, inner, ch));
                    out[0] = runs.fold((0f64, 0f64), |(dg, db), (xr, dr)| (dg + (lane_sum(xr, dr, |v, d| d * (v - mu)) * k) as f64, db + lane_sum(dr, dr, |d, _| d) as f64));
                });
                let (dgamma, dbeta): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
                let coef: Vec<(f32, f32, f32)> = (0..c)
                    .map(|ch| {
                        let (k, gk) = (self.inv_std[ch] as f64, (g[ch] * self.inv_std[ch]) as f64);
                        if !self.batch_stats {
                            return (gk as f32, 0.0, 0.0);
                        }
                        let q = -gk * k * dgamma[ch] / m;
                        let r = -gk * dbeta[ch] / m - q * self.mean[ch] as f64;
                        (gk as f32, q as f32, r as f32)
                    })
                    .collect();
                let dx = self.map_runs(dy, xs, |ch| {
                    let (p, q, r) = coef[ch];
                    move |d, v| p * d + q * v + r
                });
                (dx, dgamma, dbeta)
            })
        })??;
        let dev = x.device();
        let to32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
        Ok((Some(Tensor::from_vec(dx, x.dims(), dev)?), Some(Tensor::from_vec(to32(dgamma), c, dev)?), Some(Tensor::from_vec(to32(dbeta), c, dev)?)))
    }
}

/// Train-mode BatchNorm of `x` (`[N, C, …]`) with scale `gamma` and shift `beta`, followed by
/// a ReLU when `relu`; returns the output and the batch's `(mean, biased variance)` per channel
/// for the running statistics.
pub fn forward(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, relu: bool) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let x = x.contiguous()?;
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let inner: usize = x.dims()[2..].iter().product();
    let (mean, var) = with_f32(&x, "batchnorm-train", |xs| batch_stats(xs, n, c, inner))?;
    let op = BnTrain { batch_stats: true, relu, n, c, inner, mean: mean.iter().map(|&v| v as f32).collect(), inv_std: var.iter().map(|&v| (1.0 / (v + eps).sqrt()) as f32).collect() };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, mean, var))
}

/// Eval-mode BatchNorm of `x` (`[N, C, …]`) with fixed statistics: the same op, one pass,
/// `y = (x − μ)/√(σ² + eps)·γ + β`, differentiable in `x`, `γ` and `β` (QAT trains through a
/// frozen BatchNorm), followed by a ReLU when `relu`.
pub fn forward_fixed(x: &Tensor, gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor, eps: f64, relu: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let inner: usize = x.dims()[2..].iter().product();
    let op = BnTrain { batch_stats: false, relu, n, c, inner, mean: mean.to_vec1()?, inv_std: var.to_vec1::<f32>()?.iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect() };
    Ok(x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::super::op_test_support::{grad_diffs, max_diff};
    use super::*;
    use candle_core::{Device, Var};

    /// `x [4, 3, 5, 2]`, `γ`, `β` (as variables) and the gradient probe `r` both tests use.
    fn inputs() -> (Var, Var, Var, Tensor) {
        let n = 4 * 3 * 5 * 2;
        let xv: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32) / 17.0 - 2.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(xv, (4, 3, 5, 2), &Device::Cpu).unwrap()).unwrap();
        let g = Var::new(&[1.5f32, -0.5, 2.0], &Device::Cpu).unwrap();
        let b = Var::new(&[0.1f32, 0.2, -0.3], &Device::Cpu).unwrap();
        let r = Tensor::from_vec((0..n).map(|i| ((i * 13 % 7) as f32) - 3.0).collect::<Vec<f32>>(), (4, 3, 5, 2), &Device::Cpu).unwrap();
        (x, g, b, r)
    }

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

    /// `t`, then a ReLU when `relu` (candle's own, differentiated by candle).
    fn then_relu(t: Tensor, relu: bool) -> Tensor {
        if relu {
            t.relu().unwrap()
        } else {
            t
        }
    }

    #[test]
    fn matches_composed_ops_forward_and_backward() {
        for relu in [false, true] {
            let (x, g, b, r) = inputs();
            let (ours, mean, var) = forward(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, relu).unwrap();
            let theirs = then_relu(composed(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5), relu);
            let d = max_diff(&ours, &theirs);
            assert!(d < 1e-5, "forward {d} (relu {relu})");
            assert_eq!((mean.len(), var.len()), (3, 3));
            if relu {
                let zeros = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().filter(|&&v| v == 0.0).count();
                assert!(zeros > 20 && zeros < 100, "the probe should cut {zeros} of 120 values");
            }
            for d in grad_diffs(&ours, &theirs, &r, &[&x, &g, &b]) {
                assert!(d < 1e-4, "backward {d} (relu {relu})");
            }
        }
    }

    #[test]
    fn fixed_statistics_match_composed_ops_forward_and_backward() {
        let (x, g, b, r) = inputs();
        let (mean, var) = (Tensor::new(&[0.3f32, -1.0, 2.0], &Device::Cpu).unwrap(), Tensor::new(&[0.5f32, 2.0, 0.01], &Device::Cpu).unwrap());
        for relu in [false, true] {
            let ours = forward_fixed(x.as_tensor(), g.as_tensor(), b.as_tensor(), &mean, &var, 1e-5, relu).unwrap();
            let cs = |t: &Tensor| t.reshape((1, 3, 1, 1)).unwrap();
            let inv = (cs(&var) + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
            let theirs = x.as_tensor().broadcast_sub(&cs(&mean)).unwrap().broadcast_mul(&inv).unwrap().broadcast_mul(&cs(g.as_tensor())).unwrap().broadcast_add(&cs(b.as_tensor())).unwrap();
            let theirs = then_relu(theirs, relu);
            let d = max_diff(&ours, &theirs);
            assert!(d < 1e-4, "forward {d} (relu {relu})");
            for d in grad_diffs(&ours, &theirs, &r, &[&x, &g, &b]) {
                assert!(d < 1e-3, "backward {d} (relu {relu})");
            }
        }
    }
}
