//! The training loop: seeded shuffling, mini-batches, an objective given by the caller (plain
//! cross-entropy, distillation, QAT), cosine schedule with warm-up, validation after every
//! epoch, early stopping, and the best validation checkpoint (`Keep`) restored at the end.

use super::budget::{range_test, range_test_steps, LearningRate, RangeTest};
use super::optim::{cosine_lr, Optimizer, OptimizerKind};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::EvalResult;
use crate::model::Model;
use crate::progress::Progress;
use candle_core::{Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cell::RefCell;
use std::time::Instant;

/// Settings of one training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// The base rate of the schedule; `Auto` runs a range test first (`budget::range_test`).
    pub lr: LearningRate,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    /// SGD momentum (Nesterov when non-zero).
    pub momentum: f64,
    /// Warm-up length in epochs (fractional allowed).
    pub warmup_epochs: f64,
    pub seed: u64,
    /// Stop when the validation result has not improved for this many epochs.
    pub patience: Option<usize>,
    /// Which validated checkpoint the run keeps.
    #[serde(skip)]
    pub keep: Keep,
}

/// The rule by which a run compares validated checkpoints (the model before training among
/// them) and keeps the best.
#[derive(Debug, Clone, Default)]
pub enum Keep {
    /// The highest accuracy, ties to the lower loss.
    #[default]
    Accuracy,
    /// The most validation samples predicted as these predictions (a teacher's) have them, ties
    /// to the higher accuracy, then the lower loss: a student recovering its teacher keeps the
    /// checkpoint closest to it, not one whose gains over it on a small validation split are
    /// chance.
    Agreement(std::sync::Arc<Vec<u32>>),
}

impl Keep {
    /// Whether checkpoint `a` is better than `b`.
    fn prefers(&self, a: &EvalResult, b: &EvalResult) -> bool {
        let rank = |r: &EvalResult| match self {
            Keep::Accuracy => (0.0, r.correct),
            Keep::Agreement(p) => (crate::eval::agreement(&r.predictions, p), r.correct),
        };
        let (ra, rb) = (rank(a), rank(b));
        ra > rb || (ra == rb && a.loss < b.loss)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            lr: LearningRate::Fixed(1e-3),
            optimizer: OptimizerKind::Adamw,
            weight_decay: 1e-4,
            momentum: 0.9,
            warmup_epochs: 0.0,
            seed: 0,
            patience: None,
            keep: Keep::Accuracy,
        }
    }
}

/// What a training run did.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    /// The base learning rate trained with, and the range test that chose it (`lr: auto`).
    pub lr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_test: Option<RangeTest>,
    /// Validation accuracy after every epoch.
    pub val_accuracy: Vec<f64>,
    /// The validation result of the checkpoint kept (its predictions too), so that a caller
    /// need not evaluate the same model again.
    #[serde(skip)]
    pub best_val: Option<EvalResult>,
    /// Mean training loss of every epoch.
    pub train_loss: Vec<f64>,
    pub seconds: f64,
}

/// Computes the loss of one batch: `(model, x, y, sample indices, rng)`. The indices let a
/// caller look up per-sample values computed once (a teacher's logits).
pub type Objective<'a> = dyn Fn(&Model, &Tensor, &[u32], &[usize], &RefCell<ChaCha8Rng>) -> Result<Tensor> + 'a;
/// Validation metrics of the model as it stands; `TrainConfig::keep` ranks them.
pub type Validate<'a> = dyn Fn(&Model) -> Result<EvalResult> + 'a;

/// Trains `vars` (usually `model.trainable_vars()`) of `model` on `train`, minimising `objective`.
/// `on_epoch(e)` runs before epoch `e` (QAT freezes observers and BatchNorm through it).
#[allow(clippy::too_many_arguments)] // each argument is a distinct role; a struct would only rename them
pub fn fit(
    model: &mut Model,
    vars: Vec<Var>,
    train: &Dataset,
    cfg: &TrainConfig,
    objective: &Objective,
    validate: &Validate,
    on_epoch: &dyn Fn(usize) -> Result<()>,
    progress: &dyn Progress,
) -> Result<FitReport> {
    if cfg.batch_size == 0 {
        return Err(WickError::invalid("--batch-size", "must be at least 1"));
    }
    let started = Instant::now();
    let (base_lr, range_test) = match cfg.lr {
        LearningRate::Fixed(lr) if lr > 0.0 && lr.is_finite() => (lr, None),
        LearningRate::Fixed(lr) => return Err(WickError::invalid("--lr", format!("must be a positive number, got {lr}"))),
        LearningRate::Auto => {
            progress.start("learning-rate range test", 1);
            let steps = range_test_steps(train.len(), cfg.batch_size);
            let t = range_test(model, train, cfg, steps, objective)?;
            progress.finish(&format!("learning rate {:.2e} (loss lowest at {:.2e})", t.lr, t.lr_at_min_loss));
            (t.lr, Some(t))
        }
    };
    let mut opt = Optimizer::new(cfg.optimizer, vars, base_lr, cfg.weight_decay, cfg.momentum)?;
    let rng = RefCell::new(ChaCha8Rng::seed_from_u64(cfg.seed));
    let n = train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let warmup = (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let v0 = validate(model)?;
    let mut report = FitReport { epochs_run: 0, best_epoch: 0, best_val_accuracy: v0.accuracy, lr: base_lr, range_test, best_val: None, val_accuracy: vec![], train_loss: vec![], seconds: 0.0 };
    let mut best = (v0, 0usize, snapshot(model)?);
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        on_epoch(epoch)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut *rng.borrow_mut());
        progress.start(&format!("epoch {}/{}", epoch + 1, cfg.epochs), steps_per_epoch as u64);
        let mut loss_sum = 0.0;
        crate::parallel::with_workers_awake(|| -> Result<()> {
            for chunk in order.chunks(cfg.batch_size) {
                opt.set_lr(cosine_lr(base_lr, step, total, warmup));
                let (x, y) = train.batch(chunk)?;
                let loss = objective(model, &x, &y, chunk, &rng)?;
                let lv: f32 = loss.to_scalar()?;
                if !lv.is_finite() {
                    return Err(WickError::invalid("training", format!("loss became {lv} at epoch {}; lower --lr", epoch + 1)));
                }
                loss_sum += lv as f64 * chunk.len() as f64;
                opt.step(&loss.backward()?)?;
                step += 1;
                progress.inc(1);
            }
            Ok(())
        })?;
        let v = validate(model)?;
        let acc = v.accuracy;
        let mean_loss = loss_sum / n as f64;
        report.train_loss.push(mean_loss);
        report.val_accuracy.push(acc);
        report.epochs_run = epoch + 1;
        progress.finish(&format!("loss {mean_loss:.4}, val accuracy {acc:.4}"));
        if cfg.keep.prefers(&v, &best.0) {
            best = (v, epoch + 1, snapshot(model)?);
        }
        if let Some(p) = cfg.patience {
            if epoch + 1 - best.1 >= p {
                break;
            }
        }
    }
    restore(model, &best.2)?;
    report.best_epoch = best.1;
    report.best_val_accuracy = best.0.accuracy;
    report.best_val = Some(best.0);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Copies of every parameter and buffer.
pub fn snapshot(model: &Model) -> Result<Vec<(String, Tensor)>> {
    model.params.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect()
}

/// Writes a snapshot back into the model's variables.
pub fn restore(model: &Model, snap: &[(String, Tensor)]) -> Result<()> {
    for (k, t) in snap {
        model.params[k].set(t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(predictions: &[u32], labels: &[u32], loss: f64) -> EvalResult {
        let correct = predictions.iter().zip(labels).filter(|(p, y)| p == y).count();
        EvalResult { accuracy: correct as f64 / labels.len() as f64, loss, correct, samples: labels.len(), predictions: predictions.to_vec(), logits: vec![] }
    }

    #[test]
    fn agreement_keeps_the_checkpoint_closest_to_the_teacher_over_a_more_accurate_one() {
        let labels = [0, 1, 2, 3];
        let teacher = std::sync::Arc::new(vec![0, 1, 2, 0]);
        // `close` predicts as the teacher does (3 of 4 right); `lucky` also gets sample 3 right,
        // one prediction away from the teacher's.
        let close = result(&[0, 1, 2, 0], &labels, 0.5);
        let lucky = result(&[0, 1, 2, 3], &labels, 0.9);
        assert!(Keep::Accuracy.prefers(&lucky, &close) && !Keep::Accuracy.prefers(&close, &lucky));
        assert!(!Keep::Agreement(teacher.clone()).prefers(&lucky, &close));
        assert!(Keep::Agreement(teacher.clone()).prefers(&close, &lucky));
        // Equal agreement: the higher accuracy, then the lower loss.
        let close_lower_loss = result(&[0, 1, 2, 0], &labels, 0.3);
        assert!(Keep::Agreement(teacher.clone()).prefers(&close_lower_loss, &close));
        assert!(!Keep::Agreement(teacher).prefers(&close, &close_lower_loss));
    }
}
