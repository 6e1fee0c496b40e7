//! How much to train and at what rate, derived from the model and the data when a setting is
//! `auto`: epochs from a budget of optimiser steps, the learning rate from a short range test.
//! Uses `train::fit`, `train::optim`, `data`, `model`.

use super::fit::{Objective, TrainConfig};
use super::optim::Optimizer;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::Model;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// A count of epochs, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epochs {
    Auto,
    Fixed(usize),
}

/// A learning rate, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LearningRate {
    Auto,
    Fixed(f64),
}

/// `N` or `"auto"` in JSON and on the command line, for an enum `{ Auto, Fixed(inner) }`,
/// with a check of the value.
macro_rules! auto_or {
    ($t:ident, $inner:ty, $what:literal, $check:expr) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                if s == "auto" {
                    return Ok($t::Auto);
                }
                let v: $inner = s.parse().map_err(|_| format!("'{s}' is neither 'auto' nor {}", $what))?;
                let check: fn($inner) -> std::result::Result<(), String> = $check;
                check(v)?;
                Ok($t::Fixed(v))
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $t::Auto => write!(f, "auto"),
                    $t::Fixed(v) => write!(f, "{v}"),
                }
            }
        }

        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                match self {
                    $t::Auto => s.serialize_str("auto"),
                    $t::Fixed(v) => v.serialize(s),
                }
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                match serde_json::Value::deserialize(d)? {
                    serde_json::Value::String(s) if s == "auto" => Ok($t::Auto),
                    v => {
                        let x: $inner = serde_json::from_value(v.clone()).map_err(|_| serde::de::Error::custom(format!("{v} is neither \"auto\" nor {}", $what)))?;
                        let check: fn($inner) -> std::result::Result<(), String> = $check;
                        check(x).map_err(serde::de::Error::custom)?;
                        Ok($t::Fixed(x))
                    }
                }
            }
        }
    };
}

pub(crate) use auto_or;

auto_or!(Epochs, usize, "a whole number of epochs", |_| Ok(()));
auto_or!(LearningRate, f64, "a learning rate", |v| if v > 0.0 && v.is_finite() { Ok(()) } else { Err(format!("learning rate {v} must be a positive number")) });

/// Optimiser steps an `auto` fine-tuning run aims for, and the bounds on its epochs: enough
/// steps to recover from a pruning step or to distil on a small data set, without training a
/// large one for dozens of epochs.
pub const AUTO_STEPS: usize = 600;
pub const AUTO_MIN_EPOCHS: usize = 3;
pub const AUTO_MAX_EPOCHS: usize = 30;

impl Epochs {
    /// The epochs to run: `Fixed(n)` as is; `Auto` gives `⌈steps / steps per epoch⌉` clamped to
    /// `[min, max]` epochs, with `steps` the budget (`AUTO_STEPS` for fine-tuning).
    pub fn resolve(self, samples: usize, batch_size: usize, steps: usize, (min, max): (usize, usize)) -> usize {
        match self {
            Epochs::Fixed(n) => n,
            Epochs::Auto => {
                let per_epoch = samples.div_ceil(batch_size.max(1)).max(1);
                steps.div_ceil(per_epoch).clamp(min, max)
            }
        }
    }
}

/// Where a range test starts and how far it may go.
const RANGE_LO: f64 = 1e-6;
const RANGE_HI: f64 = 1.0;
/// The smoothing of the recorded loss (an exponential moving average with bias correction).
const SMOOTHING: f64 = 0.9;

/// The outcome of a learning-rate range test.
#[derive(Debug, Clone, Serialize)]
pub struct RangeTest {
    /// The learning rate chosen: a tenth of the rate at the lowest smoothed loss.
    pub lr: f64,
    /// The rate at the lowest smoothed loss.
    pub lr_at_min_loss: f64,
    pub steps: usize,
}

/// A learning-rate range test (Smith, 2017): on a copy of `model`, `steps` optimiser steps with
/// the rate growing geometrically from 1e-6 to 1, the loss smoothed as
/// `s_t = (β·a_{t−1} + (1−β)·ℓ_t) / (1 − β^t)`; it stops when `s_t > 4·min s` or the loss is
/// not finite. The chosen rate is a tenth of the rate at the lowest smoothed loss (the steepest
/// safe rate is about an order of magnitude below where the loss bottoms out), so that
/// fine-tuning moves as fast as the model tolerates without undoing what it starts from.
/// The optimiser, its weight decay, the batch size and the seed are `cfg`'s.
pub fn range_test(model: &Model, train: &Dataset, cfg: &TrainConfig, steps: usize, objective: &Objective) -> Result<RangeTest> {
    let batch_size = cfg.batch_size;
    if batch_size == 0 {
        return Err(WickError::invalid("--batch-size", "must be at least 1"));
    }
    let probe = model.deep_clone()?;
    let mut opt = Optimizer::new(cfg.optimizer, probe.trainable_vars(), RANGE_LO, cfg.weight_decay, cfg.momentum)?;
    let rng = RefCell::new(ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x1f_7e57));
    let steps = steps.max(2);
    let growth = (RANGE_HI / RANGE_LO).powf(1.0 / (steps - 1) as f64);
    let mut order: Vec<usize> = vec![];
    let mut avg = 0.0;
    let (mut best, mut best_lr) = (f64::INFINITY, RANGE_LO);
    for t in 0..steps {
        if order.len() < batch_size {
            let mut more: Vec<usize> = (0..train.len()).collect();
            more.shuffle(&mut *rng.borrow_mut());
            order.extend(more);
        }
        let chunk: Vec<usize> = order.drain(..batch_size.min(train.len())).collect();
        let lr = RANGE_LO * growth.powi(t as i32);
        opt.set_lr(lr);
        let (x, y) = train.batch(&chunk)?;
        let loss = objective(&probe, &x, &y, &chunk, &rng)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            break;
        }
        avg = SMOOTHING * avg + (1.0 - SMOOTHING) * l;
        let smoothed = avg / (1.0 - SMOOTHING.powi(t as i32 + 1));
        if smoothed > 4.0 * best {
            break;
        }
        if smoothed < best {
            (best, best_lr) = (smoothed, lr);
        }
        opt.step(&loss.backward()?)?;
    }
    Ok(RangeTest { lr: best_lr / 10.0, lr_at_min_loss: best_lr, steps })
}

/// Steps of an automatic range test on `samples` training samples: three epochs' worth, at
/// least 40 (enough points along the six decades) and at most 100.
pub fn range_test_steps(samples: usize, batch_size: usize) -> usize {
    (3 * samples.div_ceil(batch_size.max(1))).clamp(40, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_and_fixed_parse_from_json_and_text() {
        assert_eq!(serde_json::from_str::<Epochs>("\"auto\"").unwrap(), Epochs::Auto);
        assert_eq!(serde_json::from_str::<Epochs>("12").unwrap(), Epochs::Fixed(12));
        assert!(serde_json::from_str::<Epochs>("\"many\"").unwrap_err().to_string().contains("neither"));
        assert_eq!("0.01".parse::<LearningRate>().unwrap(), LearningRate::Fixed(0.01));
        assert!("-1".parse::<LearningRate>().unwrap_err().contains("positive"));
        assert!(serde_json::from_str::<LearningRate>("0").unwrap_err().to_string().contains("positive"));
        assert_eq!(serde_json::to_string(&LearningRate::Auto).unwrap(), "\"auto\"");
    }

    #[test]
    fn auto_epochs_follow_the_step_budget_within_bounds() {
        // 1257 samples at batch 64: 20 steps an epoch, 600 steps = 30 epochs.
        assert_eq!(Epochs::Auto.resolve(1257, 64, 600, (3, 30)), 30);
        assert_eq!(Epochs::Auto.resolve(1257, 64, 200, (3, 30)), 10);
        // A large data set: the lower bound of epochs.
        assert_eq!(Epochs::Auto.resolve(1_000_000, 64, 600, (3, 30)), 3);
        assert_eq!(Epochs::Fixed(7).resolve(10, 64, 600, (3, 30)), 7);
    }
}
