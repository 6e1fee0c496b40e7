//! `distill`: knowledge distillation of the recipe's teacher into a narrower copy of the model
//! (every prunable channel group scaled by `width`, started from the strongest channels by L1
//! norm; `prune_channels::width_scaled`). With `widen` (the default), a student whose
//! validation accuracy drops more than `SEARCH_SHARE` of the accuracy budget below the
//! teacher's is given up for one `√2` times wider, up to the model's full width, so the step
//! ends within budget whenever a wider student can. The training is `train::distill`.

use super::prune_channels::search::SEARCH_SHARE;
use super::prune_channels::width_scaled;
use super::{check_distillation, check_training, train_config, wrong_state, Applied, Ctx, Fidelity, Pass, Sketch, State};
use crate::error::{Result, WickError};
use crate::model::stats::total_params;
use crate::train::budget::AUTO_STEPS;
use crate::train::distill::{distill, DistillConfig, Hint};
use crate::train::{Epochs, FitReport, LearningRate, OptimizerKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The step's settings (recipe fields and `wick distill` flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillSettings {
    /// The student's width as a fraction of the model's, in (0, 1].
    pub width: f64,
    /// Widen a student that misses its share of the budget (by √2, up to full width).
    pub widen: bool,
    pub epochs: Epochs,
    pub optimizer: OptimizerKind,
    pub lr: LearningRate,
    /// Softening temperature `T` of both distributions.
    pub temperature: f64,
    /// Weight `α` of the distillation term; `1 − α` goes to cross-entropy with the labels.
    pub alpha: f64,
    /// Feature hints `TEACHER_NODE=STUDENT_NODE`.
    pub hints: Vec<String>,
    /// Weight `β` of each hint's MSE.
    pub hint_weight: f64,
    pub batch_size: usize,
}

impl Default for DistillSettings {
    fn default() -> Self {
        DistillSettings {
            width: 0.5,
            widen: true,
            epochs: Epochs::Auto,
            optimizer: OptimizerKind::Adamw,
            lr: LearningRate::Auto,
            temperature: 4.0,
            alpha: 0.9,
            hints: vec![],
            hint_weight: 1.0,
            batch_size: 64,
        }
    }
}

impl DistillSettings {
    /// Range checks (shared by the recipe and the CLI).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.width > 0.0 && self.width <= 1.0) {
            return Err(format!("field 'width' is {}, outside (0, 1]", self.width));
        }
        for h in &self.hints {
            h.parse::<Hint>().map_err(|e| e.to_string())?;
        }
        if !(self.hint_weight >= 0.0 && self.hint_weight.is_finite()) {
            return Err(format!("field 'hint_weight' is {}; it must be a number at least 0", self.hint_weight));
        }
        check_distillation(self.temperature, self.alpha)?;
        check_training(self.batch_size)
    }

    /// The distillation objective's settings.
    pub fn config(&self) -> Result<DistillConfig> {
        let hints = self.hints.iter().map(|h| h.parse()).collect::<Result<_>>()?;
        Ok(DistillConfig { temperature: self.temperature, alpha: self.alpha, hints, hint_weight: self.hint_weight })
    }
}

/// One student tried.
#[derive(Debug, Clone, Serialize)]
struct Attempt {
    width: f64,
    params: usize,
    fidelity: Fidelity,
    within_budget: bool,
    training: FitReport,
}

impl Pass for DistillSettings {
    fn apply(&self, state: State, ctx: &Ctx) -> Result<Applied> {
        let State::Float(m) = state else { return Err(wrong_state("distill", &state, "a float model")) };
        self.validate().map_err(|e| WickError::invalid("distill", e))?;
        let dc = self.config()?;
        let mut tc = train_config(self.epochs, self.lr, self.optimizer, self.batch_size, AUTO_STEPS, ctx);
        let mut width = self.width;
        let mut attempts: Vec<Attempt> = vec![];
        let student = loop {
            let student = width_scaled(&m, width)?;
            let r = distill(ctx.teacher, &student, ctx.train, ctx.val, &tc, &dc, ctx.progress)?;
            // The first student's range test sets the rate of any wider one.
            tc.lr = LearningRate::Fixed(r.lr);
            let fidelity = ctx.fidelity(&student)?;
            let within = ctx.budget.within(&fidelity, SEARCH_SHARE);
            attempts.push(Attempt { width, params: total_params(&student), fidelity, within_budget: within, training: r });
            if within || !self.widen || width >= 1.0 {
                break student;
            }
            width = (width * std::f64::consts::SQRT_2).min(1.0);
        };
        let last = attempts.last().expect("one attempt at least");
        let widened = match attempts.len() {
            1 => String::new(),
            n => format!(" (widened {} time(s) from {}: narrower students missed the budget)", n - 1, self.width),
        };
        let summary = format!(
            "distilled into a {:.2}x-wide student ({} params){widened}, best val accuracy {:.4} at epoch {}",
            last.width, last.params, last.training.best_val_accuracy, last.training.best_epoch
        );
        Ok(Applied { state: State::Float(student), summary, changed: true, details: json!({ "attempts": attempts }) })
    }

    fn plan(&self, sketch: Sketch, _ctx: &Ctx) -> Result<(Sketch, String)> {
        let student = width_scaled(&sketch.model, self.width)?;
        let what = format!("distil into a {}x-wide student ({} params){}", self.width, total_params(&student), if self.widen { ", widened while over budget" } else { "" });
        Ok((Sketch { model: student, ..sketch }, what))
    }
}
