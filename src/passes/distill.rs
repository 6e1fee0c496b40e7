//! `distill`: knowledge distillation of the recipe's teacher into a narrower copy of the model
//! (every prunable channel group scaled by `width`). The student narrows in steps of `√2`
//! (width 0.71, 0.5, 0.35, … down to `width`): each step keeps the strongest channels (L1 norm)
//! of the student before it (`prune_channels::width_scaled`) and is distilled from the teacher,
//! since a student reached gradually ends closer to the teacher than one cut to size at once.
//! With `widen` (the default), the narrowest student within `SEARCH_SHARE` of the accuracy
//! budget (`Budget::within`) is kept, so a student that misses it gives way to the wider one
//! trained before it. The training is `train::distill`; like pruning's recovery, it keeps the
//! checkpoint that predicts the most validation samples as the teacher does.

use super::prune_channels::search::SEARCH_SHARE;
use super::prune_channels::width_scaled;
use super::{check_distillation, check_training, train_config, wrong_state, Applied, Ctx, Fallback, Fidelity, Pass, Sketch, State};
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
    /// Keep the narrowest step within budget when the last one misses it.
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

/// The widths a student passes through on its way to `width`: `2^(−k/2)` for `k = 1, 2, …`
/// while above `width`, then `width`.
pub fn width_steps(width: f64) -> Vec<f64> {
    let mut v: Vec<f64> = (1..).map(|k| 0.5f64.powf(k as f64 / 2.0)).take_while(|&w| w > width + 1e-9).collect();
    v.push(width);
    v
}

impl Pass for DistillSettings {
    fn apply(&self, state: State, ctx: &Ctx) -> Result<Applied> {
        let State::Float(m) = state else { return Err(wrong_state("distill", &state, "a float model")) };
        self.validate().map_err(|e| WickError::invalid("distill", e))?;
        let dc = self.config()?;
        let mut tc = train_config(self.epochs, self.lr, self.optimizer, self.batch_size, AUTO_STEPS, ctx);
        tc.keep = ctx.keep_closest_to_teacher();
        let (mut students, mut attempts): (Vec<crate::model::Model>, Vec<Attempt>) = (vec![], vec![]);
        let input = Fallback { what: format!("the undistilled model ({} params)", total_params(&m)), state: State::Float(m.deep_clone()?) };
        let mut previous = (m, 1.0);
        for width in width_steps(self.width) {
            let mut student = width_scaled(&previous.0, width / previous.1)?;
            let r = distill(ctx.teacher, &mut student, ctx.train, ctx.val, &tc, &dc, ctx.progress)?;
            // The first step's range test sets the rate of the later ones.
            tc.lr = LearningRate::Fixed(r.lr);
            let fidelity = ctx.fidelity(&student, r.best_val.as_ref())?;
            let within = ctx.budget.within(&fidelity, SEARCH_SHARE);
            attempts.push(Attempt { width, params: total_params(&student), fidelity, within_budget: within, training: r });
            students.push(student.deep_clone()?);
            previous = (student, width);
        }
        // The narrowest student within budget (with `widen`), else the narrowest.
        let pick = match self.widen {
            true => attempts.iter().rposition(|a| a.within_budget).unwrap_or(0),
            false => attempts.len() - 1,
        };
        let chosen = &attempts[pick];
        let kept = match pick + 1 == attempts.len() {
            true => String::new(),
            false => format!(" (the {}x student missed the budget)", self.width),
        };
        let summary = format!(
            "distilled in {} step(s) into a {:.2}x-wide student ({} params){kept}, best val accuracy {:.4} at epoch {}",
            attempts.len(),
            chosen.width,
            chosen.params,
            chosen.training.best_val_accuracy,
            chosen.training.best_epoch
        );
        // `swap_remove` moves only students after `pick`; the wider ones before it within budget
        // are the fallbacks, the closest first, then the model distilled from.
        let student = students.swap_remove(pick);
        students.truncate(pick);
        let fallbacks = students
            .into_iter()
            .zip(&attempts[..pick])
            .rev()
            .filter(|(_, a)| a.within_budget)
            .map(|(m, a)| Fallback { what: format!("the {:.2}x-wide student ({} params)", a.width, a.params), state: State::Float(m) })
            .chain(std::iter::once(input))
            .collect();
        Ok(Applied { state: State::Float(student), summary, changed: true, details: json!({ "attempts": attempts, "kept": pick }), fallbacks })
    }

    fn plan(&self, sketch: Sketch, _ctx: &Ctx) -> Result<(Sketch, String)> {
        let student = width_scaled(&sketch.model, self.width)?;
        let steps = width_steps(self.width).len();
        let what =
            format!("distil in {steps} step(s) into a {}x-wide student ({} params){}", self.width, total_params(&student), if self.widen { ", or the narrowest step within budget" } else { "" });
        Ok((Sketch { model: student, ..sketch }, what))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn students_narrow_by_root_two_down_to_the_width() {
        let w = super::width_steps(0.5);
        assert_eq!(w.len(), 2);
        assert!((w[0] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12 && w[1] == 0.5);
        assert_eq!(super::width_steps(1.0), vec![1.0]);
        assert_eq!(super::width_steps(0.3).len(), 4);
    }
}
