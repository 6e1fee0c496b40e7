//! `qat`: quantisation-aware training. Starts from the BN-folded model and its calibration; trains with
//! fake-quant on every quantised unit's weight (per channel, `s_c = max|w_c|/127`) and input
//! (per tensor), straight-through gradients (zero outside the clamp range). Input ranges follow
//! a moving average of batch min/max (`r ← r + 0.01·(batch − r)`, PyTorch's QAT observer) for
//! the first `observer_epochs`, then freeze; a recurrent hidden state keeps the op's fixed range. Optional distillation from a float teacher. The
//! best validation checkpoint (fake-quant accuracy) and the ranges it was measured with are
//! what the step passes on to `convert_int8`.

use super::{check_distillation, check_training, train_config, wrong_state, Applied, Ctx, Pass, Sketch, State};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::forward::{Hook, Mode, Run};
use crate::model::qunit::UnitInput;
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::fake::{fake_quant_act, fake_quant_weight};
use crate::quant::{ActType, QParams};
use crate::train::{fit, loss, Epochs, FitReport, LearningRate, OptimizerKind, TrainConfig};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

/// The step's settings (recipe fields and `wick qat` flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QatSettings {
    /// `auto`: `QAT_STEPS` optimiser steps (within the usual bounds on epochs).
    pub epochs: Epochs,
    pub lr: LearningRate,
    pub optimizer: OptimizerKind,
    /// Epochs during which activation ranges keep updating before they freeze.
    pub observer_epochs: usize,
    /// Distil from the recipe's teacher (or, for `wick qat`, the float model).
    pub distill: bool,
    pub temperature: f64,
    pub alpha: f64,
    pub batch_size: usize,
}

/// Optimiser steps of QAT with `epochs: auto`: it starts from a trained model whose ranges
/// calibration already set, so it adjusts rather than learns.
pub const QAT_STEPS: usize = 100;

impl Default for QatSettings {
    fn default() -> Self {
        QatSettings { epochs: Epochs::Auto, lr: LearningRate::Fixed(1e-4), optimizer: OptimizerKind::Adamw, observer_epochs: 1, distill: true, temperature: 4.0, alpha: 0.7, batch_size: 64 }
    }
}

impl QatSettings {
    /// Range checks (shared by the recipe and the CLI).
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_distillation(self.temperature, self.alpha)?;
        check_training(self.batch_size)
    }
}

/// QAT settings beyond the training loop's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QatConfig {
    pub train: TrainConfig,
    /// Epochs during which activation ranges keep updating.
    pub observer_epochs: usize,
    /// Distillation temperature and weight, when a teacher is given.
    pub temperature: f64,
    pub alpha: f64,
}

impl Pass for QatSettings {
    fn apply(&self, state: State, ctx: &Ctx) -> Result<Applied> {
        let State::Calibrated { mut folded, inputs } = state else { return Err(wrong_state("qat", &state, "a calibrated model (run 'calibrate' first)")) };
        self.validate().map_err(|e| WickError::invalid("qat", e))?;
        let cfg = QatConfig {
            train: train_config(self.epochs, self.lr, self.optimizer, self.batch_size, QAT_STEPS, ctx),
            observer_epochs: self.observer_epochs,
            temperature: self.temperature,
            alpha: self.alpha,
        };
        let teacher = self.distill.then_some(ctx.teacher);
        let (inputs, r) = qat(&mut folded, &inputs, teacher, ctx.train, ctx.val, &cfg, ctx.progress)?;
        let summary =
            format!("QAT {} epochs{}, best val accuracy {:.4} at epoch {}", r.fit.epochs_run, if self.distill { " with distillation" } else { "" }, r.fit.best_val_accuracy, r.fit.best_epoch);
        // Keeping the starting checkpoint (epoch 0) restores the model and the ranges it began with.
        let changed = r.fit.best_epoch > 0;
        Ok(Applied { state: State::Calibrated { folded, inputs }, summary, changed, details: serde_json::to_value(&r).unwrap_or_default(), fallbacks: vec![] })
    }

    fn plan(&self, sketch: Sketch, _ctx: &Ctx) -> Result<(Sketch, String)> {
        Ok((sketch, format!("QAT for {} epochs{}", self.epochs, if self.distill { " with distillation" } else { "" })))
    }
}

/// Fake-quant hook whose activation ranges can observe batches.
struct QatHook {
    ranges: RefCell<BTreeMap<String, (f32, f32)>>,
    /// Units whose input range the op fixes (recurrent hidden states): never observed.
    fixed: BTreeSet<String>,
    act: ActType,
    observing: Cell<bool>,
}

impl QatHook {
    fn qparams(&self) -> BTreeMap<String, QParams> {
        self.ranges.borrow().iter().map(|(k, &(lo, hi))| (k.clone(), QParams::from_range(lo, hi, self.act))).collect()
    }
}

impl Hook for QatHook {
    fn input(&self, unit: &str, x: Tensor) -> Result<Tensor> {
        let Some(&(mut lo, mut hi)) = self.ranges.borrow().get(unit) else { return Ok(x) };
        if self.observing.get() && !self.fixed.contains(unit) {
            let d = x.detach().flatten_all()?;
            let (bmin, bmax): (f32, f32) = (d.min(0)?.to_scalar()?, d.max(0)?.to_scalar()?);
            lo += 0.01 * (bmin - lo);
            hi += 0.01 * (bmax - hi);
            self.ranges.borrow_mut().insert(unit.to_string(), (lo, hi));
        }
        fake_quant_act(&x, &QParams::from_range(lo, hi, self.act))
    }

    fn weight(&self, unit: &str, w: Tensor) -> Result<Tensor> {
        if self.ranges.borrow().contains_key(unit) {
            fake_quant_weight(&w)
        } else {
            Ok(w)
        }
    }
}

/// What QAT did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QatReport {
    pub fit: FitReport,
    pub distilled: bool,
}

/// Trains `folded` (BN already folded; modified in place) from the calibrated input
/// quantisation `init` and returns the input quantisation of the best checkpoint.
pub fn qat(
    folded: &mut Model,
    init: &BTreeMap<String, QParams>,
    teacher: Option<&Model>,
    train: &Dataset,
    val: &Dataset,
    cfg: &QatConfig,
    progress: &dyn Progress,
) -> Result<(BTreeMap<String, QParams>, QatReport)> {
    let act = init.values().next().map(|q| q.act).unwrap_or(ActType::U8);
    let fixed = crate::model::qunit::units(folded).into_iter().filter(|u| u.input == UnitInput::Hidden).map(|u| u.key).collect();
    let hook = QatHook { ranges: RefCell::new(init.iter().map(|(k, q)| (k.clone(), q.real_range())).collect()), fixed, act, observing: Cell::new(false) };
    let teacher_logits = match teacher {
        Some(t) => Some(t.forward(&train.x, Mode::Eval)?),
        None => None,
    };
    let history: RefCell<Vec<BTreeMap<String, (f32, f32)>>> = RefCell::new(vec![]);
    let observer_epochs = cfg.observer_epochs;
    // No epoch yet (a learning-rate range test runs before the first): the ranges do not move.
    let current_epoch = Cell::new(usize::MAX);
    let objective = |m: &Model, x: &Tensor, y: &[u32], idx: &[usize], rng: &RefCell<rand_chacha::ChaCha8Rng>| -> Result<Tensor> {
        hook.observing.set(current_epoch.get() < observer_epochs);
        let out = m.run(x, &Run { mode: Mode::Train, taps: &[], hook: Some(&hook), rng: Some(rng) });
        hook.observing.set(false);
        let s = out?.0;
        match &teacher_logits {
            Some(t) => {
                let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), t.device())?;
                loss::distillation(&s, &t.index_select(&ids, 0)?, y, cfg.temperature, cfg.alpha)
            }
            None => loss::cross_entropy(&s, y),
        }
    };
    let validate = |m: &Model| -> Result<crate::eval::EvalResult> {
        history.borrow_mut().push(hook.ranges.borrow().clone());
        crate::eval::evaluate_with(val, 256, &crate::progress::Silent, |x| Ok(m.run(x, &Run { mode: Mode::Eval, taps: &[], hook: Some(&hook), rng: None })?.0))
    };
    let on_epoch = |e: usize| -> Result<()> {
        current_epoch.set(e);
        Ok(())
    };
    let vars = folded.trainable_vars();
    let report = fit(folded, vars, train, &cfg.train, &objective, &validate, &on_epoch, progress)?;
    // The ranges in force when the best checkpoint was validated.
    *hook.ranges.borrow_mut() = history.borrow()[report.best_epoch].clone();
    Ok((hook.qparams(), QatReport { fit: report, distilled: teacher.is_some() }))
}
