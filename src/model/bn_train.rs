//! BatchNorm in train mode as one fused candle op with a hand-written backward. Composed from
//! candle ops it costs a strided reduction over (N, H, W) per statistic and more in backward,
//! which dominated training time (bench/README.md). With `m` values per channel,
//! `x̂ = (x − μ) / √(σ² + eps)` (biased σ²), `y = γ·x̂ + β`, and in backward
//! `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/√(σ² + eps) · (dy − dβ/m − x̂·dγ/m)`.

use crate::error::Result;
use super::conv_op::f32_slice;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Per-channel batch statistics `(mean, biased variance)` of `[N, C, inner]` data, in f64.
pub fn batch_stats(x: &[f32], n: usize, c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * inner) as f64;
    let mut mean = vec![0f64; c];
    let mut var = vec![0f64; c];
    for ch in 0..c {
        let mut s = 0f64;
        for s_i in 0..n {
            s += x[(s_i * c + ch) * inner..(s_i * c + ch + 1) * inner].iter().map(|&v| v as f64).sum::<f64>();
        }
        let mu = s / m;
        let mut q = 0f64;
        for s_i in 0..n {
            q += x[(s_i * c + ch) * inner..(s_i * c + ch + 1) * inner].iter().map(|&v| (v as f64 - mu) * (v as f64 - mu)).sum::<f64>();
        }
        mean[ch] = mu;
        var[ch] = q / m;
    }
    (mean, var)
}

struct BnTrain {
    n: usize,
    c: usize,
    inner: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batchnorm-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, g, b) = (f32_slice(s1, l1, op)?, f32_slice(s2, l2, op)?, f32_slice(s3, l3, op)?);
        let mut y = vec![0f32; x.len()];
        for s_i in 0..self.n {
            for ch in 0..self.c {
                let o = (s_i * self.c + ch) * self.inner;
                let (mu, k, gg, bb) = (self.mean[ch], self.inv_std[ch], g[ch], b[ch]);
                for i in o..o + self.inner {
                    y[i] = (x[i] - mu) * k * gg + bb;
                }
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, _beta: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let dy: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let g: Vec<f32> = gamma.to_vec1()?;
        let (n, c, inner) = (self.n, self.c, self.inner);
        let m = (n * inner) as f64;
        let mut dbeta = vec![0f64; c];
        let mut dgamma = vec![0f64; c];
        for s_i in 0..n {
            for ch in 0..c {
                let o = (s_i * c + ch) * inner;
                for i in o..o + inner {
                    let xh = ((xs[i] - self.mean[ch]) * self.inv_std[ch]) as f64;
                    dbeta[ch] += dy[i] as f64;
                    dgamma[ch] += dy[i] as f64 * xh;
                }
            }
        }
        let mut dx = vec![0f32; xs.len()];
        for s_i in 0..n {
            for ch in 0..c {
                let o = (s_i * c + ch) * inner;
                let k = g[ch] * self.inv_std[ch];
                let (mb, mg) = ((dbeta[ch] / m) as f32, (dgamma[ch] / m) as f32);
                for i in o..o + inner {
                    let xh = (xs[i] - self.mean[ch]) * self.inv_std[ch];
                    dx[i] = k * (dy[i] - mb - xh * mg);
                }
            }
        }
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
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (mean, var) = batch_stats(&xs, n, c, inner);
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
