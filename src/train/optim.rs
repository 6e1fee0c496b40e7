//! Optimisers: SGD with momentum (PyTorch semantics, optionally Nesterov, L2 weight decay) and
//! candle-nn's AdamW (decoupled weight decay).

use crate::error::{Result, WickError};
use crate::model::with_f32;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::Optimizer as _;

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = WickError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adamw" => Ok(OptimizerKind::Adamw),
            o => Err(WickError::invalid("--optimizer", format!("'{o}' is not one of sgd, adamw"))),
        }
    }
}

/// A live optimiser over a set of variables.
pub enum Optimizer {
    /// PyTorch SGD: `g ← ∇ + wd·θ; b ← μ·b + g; step = nesterov ? g + μ·b : b; θ ← θ − lr·step`.
    /// One pass per variable over plain slices: candle ops would allocate five temporaries.
    Sgd {
        vars: Vec<Var>,
        bufs: Vec<Option<Vec<f32>>>,
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    AdamW(candle_nn::AdamW),
}

impl Optimizer {
    /// A new optimiser of `kind` over `vars`.
    pub fn new(kind: OptimizerKind, vars: Vec<Var>, lr: f64, weight_decay: f64, momentum: f64) -> Result<Optimizer> {
        Ok(match kind {
            OptimizerKind::Sgd => {
                let n = vars.len();
                Optimizer::Sgd { vars, bufs: vec![None; n], lr, momentum, nesterov: momentum > 0.0, weight_decay }
            }
            OptimizerKind::Adamw => Optimizer::AdamW(candle_nn::AdamW::new(vars, candle_nn::ParamsAdamW { lr, weight_decay, ..Default::default() })?),
        })
    }

    /// Sets the learning rate for the next step.
    pub fn set_lr(&mut self, new: f64) {
        match self {
            Optimizer::Sgd { lr, .. } => *lr = new,
            Optimizer::AdamW(a) => a.set_learning_rate(new),
        }
    }

    /// One step from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        match self {
            Optimizer::AdamW(a) => Ok(a.step(grads)?),
            Optimizer::Sgd { vars, bufs, lr, momentum, nesterov, weight_decay } => {
                let (lr, mu, wd, nesterov) = (*lr as f32, *momentum as f32, *weight_decay as f32, *nesterov);
                for (v, buf) in vars.iter().zip(bufs.iter_mut()) {
                    let Some(g) = grads.get(v.as_tensor()) else { continue };
                    let theta = with_f32(v.as_tensor(), "sgd", |theta| {
                        with_f32(g, "sgd", |g| {
                            let first = buf.is_none();
                            let b = buf.get_or_insert_with(|| vec![0f32; g.len()]);
                            sgd_update(theta, g, b, Sgd { lr, mu, wd, nesterov, first })
                        })
                    })??;
                    v.set(&Tensor::from_vec(theta, v.dims(), v.device())?)?;
                }
                Ok(())
            }
        }
    }
}

/// Cosine schedule with linear warm-up:
/// `lr(t) = base·(t+1)/W` for `t < W`, then `base·½·(1 + cos(π·(t−W)/(T−W)))`.
/// One SGD step's constants (see [`sgd_update`]).
#[derive(Clone, Copy)]
struct Sgd {
    lr: f32,
    mu: f32,
    wd: f32,
    nesterov: bool,
    /// The momentum buffer is empty (PyTorch starts it at the first gradient).
    first: bool,
}

/// PyTorch's SGD for one variable: `g' = g + wd·θ`; without momentum `θ' = θ − lr·g'`; with it
/// `b = g'` on the first step, else `b = mu·b + g'`, and `θ' = θ − lr·(g' + mu·b)` (Nesterov) or
/// `θ − lr·b`. Returns `θ'`. Large variables are split over the pool in chunks of 16K values.
fn sgd_update(theta: &[f32], g: &[f32], b: &mut [f32], c: Sgd) -> Vec<f32> {
    let mut out = theta.to_vec();
    let size = 1 << 14;
    let work = theta.len();
    let mut parts: Vec<(&mut [f32], &mut [f32])> = out.chunks_mut(size).zip(b.chunks_mut(size)).collect();
    crate::parallel::for_chunks(&mut parts, 1, work, |i, part| {
        let (t, b) = &mut part[0];
        let g = &g[i * size..i * size + t.len()];
        for ((t, &g), b) in t.iter_mut().zip(g).zip(b.iter_mut()) {
            let g = g + c.wd * *t;
            if c.mu == 0.0 {
                *t -= c.lr * g;
                continue;
            }
            *b = if c.first { g } else { c.mu * *b + g };
            *t -= c.lr * if c.nesterov { g + c.mu * *b } else { *b };
        }
    });
    out
}

pub fn cosine_lr(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let t = (step - warmup).min(span) as f64 / span as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cosine_schedule_shape() {
        assert!((cosine_lr(1.0, 0, 100, 10) - 0.1).abs() < 1e-12);
        assert!((cosine_lr(1.0, 9, 100, 10) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(1.0, 10, 100, 10) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(1.0, 55, 100, 10) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(1.0, 100, 100, 10).abs() < 1e-12);
    }

    #[test]
    fn sgd_momentum_matches_pytorch_update() {
        // θ=1, grad of θ² = 2θ. lr 0.1, μ 0.9, no nesterov: b1 = 2, θ1 = 0.8; b2 = 0.9·2 + 1.6 = 3.4, θ2 = 0.46
        let v = Var::new(&[1f32], &Device::Cpu).unwrap();
        let mut o = Optimizer::new(OptimizerKind::Sgd, vec![v.clone()], 0.1, 0.0, 0.9).unwrap();
        if let Optimizer::Sgd { nesterov, .. } = &mut o {
            *nesterov = false;
        }
        for _ in 0..2 {
            let loss = v.as_tensor().sqr().unwrap().sum_all().unwrap();
            o.step(&loss.backward().unwrap()).unwrap();
        }
        let t: Vec<f32> = v.as_tensor().to_vec1().unwrap();
        assert!((t[0] - 0.46).abs() < 1e-6, "{t:?}");
    }

    #[test]
    fn sgd_nesterov_with_weight_decay_matches_hand_computation() {
        // Loss θ², θ0 = 1, lr 0.1, μ 0.9, wd 0.1, Nesterov:
        // g1 = 2 + 0.1 = 2.1, b1 = 2.1, θ1 = 1 − 0.1·(2.1 + 0.9·2.1) = 0.601;
        // g2 = 1.202 + 0.0601 = 1.2621, b2 = 0.9·2.1 + 1.2621 = 3.1521,
        // θ2 = 0.601 − 0.1·(1.2621 + 0.9·3.1521) = 0.191101. Without momentum: θ1 = 1 − 0.1·2.1.
        for (momentum, expect) in [(0.9, [0.601f32, 0.191101]), (0.0, [0.79, 0.79 - 0.1 * (1.58 + 0.079)])] {
            let v = Var::new(&[1f32], &Device::Cpu).unwrap();
            let mut o = Optimizer::new(OptimizerKind::Sgd, vec![v.clone()], 0.1, 0.1, momentum).unwrap();
            for e in expect {
                let loss = v.as_tensor().sqr().unwrap().sum_all().unwrap();
                o.step(&loss.backward().unwrap()).unwrap();
                let t: Vec<f32> = v.as_tensor().to_vec1().unwrap();
                assert!((t[0] - e).abs() < 1e-6, "{t:?} vs {e} (momentum {momentum})");
            }
        }
    }

    /// A variable longer than one chunk (40 000 values, three chunks of 16 384 and a partial
    /// one): every value gets its own gradient and buffer, on two steps of Nesterov SGD with
    /// weight decay, against the formula evaluated per value.
    #[test]
    fn sgd_over_several_chunks_updates_every_value_with_its_own_gradient() {
        let n = 40_000;
        let theta: Vec<f32> = (0..n).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect();
        let g: Vec<f32> = (0..n).map(|i| (i % 89) as f32 / 89.0 - 0.3).collect();
        let c = Sgd { lr: 0.1, mu: 0.9, wd: 0.01, nesterov: true, first: true };
        let mut b = vec![0f32; n];
        let t1 = sgd_update(&theta, &g, &mut b, c);
        let t2 = sgd_update(&t1, &g, &mut b, Sgd { first: false, ..c });
        for i in [0, 1, 16_383, 16_384, 32_768, 39_999] {
            let g1 = g[i] + 0.01 * theta[i];
            let b1 = g1;
            let w1 = theta[i] - 0.1 * (g1 + 0.9 * b1);
            let g2 = g[i] + 0.01 * w1;
            let b2 = 0.9 * b1 + g2;
            let w2 = w1 - 0.1 * (g2 + 0.9 * b2);
            assert!((t1[i] - w1).abs() < 1e-6 && (t2[i] - w2).abs() < 1e-6 && (b[i] - b2).abs() < 1e-6, "value {i}");
        }
    }
}
