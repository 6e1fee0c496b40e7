//! Compression passes, one file per recipe step, named as the step and as its key in the
//! report: `prune_channels`, `distill`, `fold_batchnorm`, `calibrate`, `qat`, `convert_int8`.
//! Each step is a settings struct that implements [`Pass`]; the recipe reads the same struct
//! from JSON and the single-pass commands fill it from their flags, so both share defaults
//! (the struct's `Default`) and checks (`validate`). Uses `model`, `quant`, `calibrate`,
//! `train`, `artifact`, `eval`.

pub mod calibrate;
pub mod convert_int8;
pub mod distill;
pub mod fold_batchnorm;
pub mod prune_channels;
pub mod qat;
pub mod text_distill;
pub mod text_ptq;

use crate::artifact::Int8Model;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::{agreement, calibrated_label_probabilities, evaluate_plan, EvalResult};
use crate::model::Model;
use crate::progress::{Progress, Silent};
use crate::quant::QParams;
use crate::train::budget::{AUTO_MAX_EPOCHS, AUTO_MIN_EPOCHS};
use crate::train::{Epochs, LearningRate, OptimizerKind, TrainConfig};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Where a recipe stands between two steps.
pub enum State {
    /// A float model (the teacher, pruned, distilled, folded).
    Float(Model),
    /// A BatchNorm-folded float model and the static quantisation of each quantised layer's
    /// input (after `calibrate`, or `qat`, which trains both).
    Calibrated { folded: Model, inputs: BTreeMap<String, QParams> },
    /// The INT8 model built by `convert_int8`, and the float model it was converted from.
    Int8 { folded: Model, q: Box<Int8Model> },
}

impl State {
    /// The name of the state, for errors about a step in the wrong place.
    pub fn describe(&self) -> &'static str {
        match self {
            State::Float(_) => "a float model",
            State::Calibrated { .. } => "a calibrated model",
            State::Int8 { .. } => "an INT8 model",
        }
    }
}

/// Accuracy, in points, that the recipe may spend: the gate's allowance
/// (`--max-accuracy-drop`, or `--max-relative-drop` times the teacher's accuracy), or one point
/// without a gate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Budget {
    pub points: f64,
    /// The teacher's validation accuracy the drop is measured from.
    pub teacher_val_accuracy: f64,
}

/// How close a candidate model (a pruned or distilled student) stays to the teacher.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fidelity {
    pub val_accuracy: f64,
    /// Validation samples the teacher gets right and the candidate wrong (`b`), and the
    /// reverse (`c`).
    pub val_lost: usize,
    pub val_gained: usize,
    /// An upper bound of the candidate's accuracy drop, in points: the paired estimate
    /// `(b − c)/n` plus one standard error `√(b + c)/n` (McNemar), so a small validation split
    /// needs a clearer result than a large one.
    pub val_drop_bound: f64,
    /// An upper bound of the same drop from probabilities: the mean of `d_i = p_i − q_i` plus one
    /// standard error `sd(d)/√n`, in points, where `p_i` and `q_i` are the teacher's and the
    /// candidate's temperature-calibrated probabilities of sample `i`'s label
    /// (`eval::calibrated_label_probabilities`). A sample on which the teacher was nearly
    /// undecided costs little when the candidate's choice flips there, where `val_drop_bound`
    /// counts it whole.
    pub val_soft_drop_bound: f64,
    /// Share of training samples on which it predicts the teacher's class.
    pub train_agreement: f64,
}

impl Fidelity {
    /// The candidate's accuracy drop from the teacher on validation, in points.
    pub fn val_drop(&self, n: usize) -> f64 {
        100.0 * (self.val_lost as f64 - self.val_gained as f64) / n.max(1) as f64
    }
}

/// What the gate allows, before it is measured against the teacher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowance {
    /// `--max-accuracy-drop`: points of accuracy.
    Points(f64),
    /// `--max-relative-drop`: a fraction of the teacher's accuracy.
    Relative(f64),
}

impl Budget {
    /// The budget when no gate is set.
    pub const DEFAULT_POINTS: f64 = 1.0;

    /// The budget of an allowance (none: `DEFAULT_POINTS`) for a teacher of validation
    /// accuracy `teacher_val_accuracy`: a relative drop `r` allows `100·r·accuracy` points.
    pub fn new(allowance: Option<Allowance>, teacher_val_accuracy: f64) -> Budget {
        let points = match allowance {
            None => Self::DEFAULT_POINTS,
            Some(Allowance::Points(p)) => p,
            Some(Allowance::Relative(r)) => 100.0 * r * teacher_val_accuracy,
        };
        Budget { points, teacher_val_accuracy }
    }

    /// Whether a candidate stays within `share` of the budget: one of the two upper bounds of
    /// its validation drop (`Fidelity::val_drop_bound` from its predictions,
    /// `Fidelity::val_soft_drop_bound` from its probabilities) is at most `share·points`, and it
    /// disagrees with the teacher on at most `share·points` per cent of the training samples.
    /// The two bounds estimate the same drop and fail on different samples: counting
    /// predictions charges a whole sample for a flip where the teacher itself was undecided,
    /// which on a small validation split is enough to reject a student with no loss, and
    /// probabilities miss a student that keeps its confidence while changing its choices, which
    /// counting sees. A student that cannot reproduce the teacher on the data it was trained on
    /// will not on new data either, and that measure, over the whole training split, is
    /// steadier than a small validation split.
    pub fn within(&self, f: &Fidelity, share: f64) -> bool {
        self.within_on_validation(f, share) && 100.0 * (1.0 - f.train_agreement) <= self.points * share + 1e-9
    }

    /// The validation half of [`Budget::within`]: one of the two bounds is at most
    /// `share·points`.
    pub fn within_on_validation(&self, f: &Fidelity, share: f64) -> bool {
        f.val_drop_bound.min(f.val_soft_drop_bound) <= self.points * share + 1e-9
    }
}

/// What every step may read (made by [`Ctx::new`]).
pub struct Ctx<'a> {
    /// The model the recipe started from, which steps distil from.
    pub teacher: &'a Model,
    pub train: &'a Dataset,
    pub val: &'a Dataset,
    pub calib: &'a Dataset,
    pub seed: u64,
    /// Caps every step's epochs (quick runs and tests).
    pub max_epochs: Option<usize>,
    pub budget: Budget,
    /// The teacher's predicted class of every training and validation sample.
    pub teacher_train_predictions: Vec<u32>,
    pub teacher_val_predictions: Vec<u32>,
    /// The teacher's calibrated probability of each validation sample's label
    /// (`eval::calibrated_label_probabilities`).
    pub teacher_val_label_probabilities: Vec<f64>,
    pub progress: &'a dyn Progress,
}

/// The data of a [`Ctx`].
pub struct Data<'a> {
    pub train: &'a Dataset,
    pub val: &'a Dataset,
    pub calib: &'a Dataset,
}

impl<'a> Ctx<'a> {
    /// The context of steps run on `teacher`'s data, measuring the teacher once.
    pub fn new(teacher: &'a Model, data: Data<'a>, seed: u64, max_epochs: Option<usize>, allowance: Option<Allowance>, progress: &'a dyn Progress) -> Result<Ctx<'a>> {
        let plan = crate::runtime::plan::Plan::float(teacher)?;
        let val = evaluate_plan(&plan, data.val, 256, &Silent)?;
        let train = evaluate_plan(&plan, data.train, 256, &Silent)?;
        Ok(Ctx::with_teacher_results(teacher, data, seed, max_epochs, allowance, val, train, progress))
    }

    /// The context given the teacher's results on the validation and training splits (for a
    /// caller that measured them already).
    #[allow(clippy::too_many_arguments)] // each argument is a distinct input of the steps
    pub fn with_teacher_results(
        teacher: &'a Model,
        data: Data<'a>,
        seed: u64,
        max_epochs: Option<usize>,
        allowance: Option<Allowance>,
        val: EvalResult,
        train: EvalResult,
        progress: &'a dyn Progress,
    ) -> Ctx<'a> {
        Ctx {
            teacher,
            train: data.train,
            val: data.val,
            calib: data.calib,
            seed,
            max_epochs,
            budget: Budget::new(allowance, val.accuracy),
            teacher_train_predictions: train.predictions,
            teacher_val_label_probabilities: calibrated_label_probabilities(&val.logits, &data.val.y),
            teacher_val_predictions: val.predictions,
            progress,
        }
    }

    /// The checkpoint rule of a student trained toward the teacher: the one predicting the most
    /// validation samples as the teacher does (`Keep::Agreement`).
    pub fn keep_closest_to_teacher(&self) -> crate::train::fit::Keep {
        crate::train::fit::Keep::Agreement(std::sync::Arc::new(self.teacher_val_predictions.clone()))
    }

    /// How close `model` stays to the teacher; `val` is its validation result when the caller
    /// has it (training measured the checkpoint it kept).
    pub fn fidelity(&self, model: &Model, val: Option<&EvalResult>) -> Result<Fidelity> {
        self.fidelity_of_plan(&crate::runtime::plan::Plan::float(model)?, val)
    }

    /// [`Ctx::fidelity`] of a compiled model (float or INT8).
    pub fn fidelity_of_plan(&self, plan: &crate::runtime::plan::Plan, val: Option<&EvalResult>) -> Result<Fidelity> {
        let val = match val {
            Some(v) if !v.logits.is_empty() => v.clone(),
            _ => evaluate_plan(plan, self.val, 256, &Silent)?,
        };
        let train = evaluate_plan(plan, self.train, 256, &Silent)?.predictions;
        let (mut lost, mut gained) = (0, 0);
        for ((&s, &t), &y) in val.predictions.iter().zip(&self.teacher_val_predictions).zip(&self.val.y) {
            match (t == y, s == y) {
                (true, false) => lost += 1,
                (false, true) => gained += 1,
                _ => {}
            }
        }
        let n = self.val.len().max(1) as f64;
        let val_drop_bound = 100.0 * ((lost as f64 - gained as f64) + ((lost + gained) as f64).sqrt()) / n;
        let student = calibrated_label_probabilities(&val.logits, &self.val.y);
        let d: Vec<f64> = self.teacher_val_label_probabilities.iter().zip(&student).map(|(p, q)| p - q).collect();
        // Without both models' probabilities of every sample there is no such bound.
        let val_soft_drop_bound = match d.len() == self.val.len() && !d.is_empty() {
            true => {
                let (mean, sd) = mean_and_std_dev(&d);
                100.0 * (mean + sd / n.sqrt())
            }
            false => f64::INFINITY,
        };
        Ok(Fidelity { val_accuracy: val.accuracy, val_lost: lost, val_gained: gained, val_drop_bound, val_soft_drop_bound, train_agreement: agreement(&train, &self.teacher_train_predictions) })
    }

    /// `epochs`, capped by `max_epochs`.
    pub fn cap(&self, epochs: usize) -> usize {
        self.max_epochs.map_or(epochs, |m| epochs.min(m))
    }
}

/// What one step did.
pub struct Applied {
    pub state: State,
    /// One line for the report's pass table.
    pub summary: String,
    /// Whether the model changed (a step that changed nothing keeps the previous stage's
    /// measurements instead of measuring the same model again).
    pub changed: bool,
    /// The step's own record (search trials, training curves), for report.json.
    pub details: Value,
    /// Larger results the step reached on the way, the closest to `state` first: the recipe
    /// goes on from the next of them when the model it ends with misses the accuracy budget
    /// (`pipeline::run`).
    pub fallbacks: Vec<Fallback>,
}

/// A result a step would have given with less compression.
pub struct Fallback {
    /// What it is, for the report ("the candidate keeping 58% of channels (4211 params)").
    pub what: String,
    pub state: State,
}

/// A dry run's picture of the model between steps: its architecture after each step, no
/// training.
pub struct Sketch {
    pub model: Model,
    pub quantized: bool,
}

/// A recipe step.
pub trait Pass {
    /// Runs the step on `state`.
    fn apply(&self, state: State, ctx: &Ctx) -> Result<Applied>;
    /// What the step would do, for `--dry-run`: the sketch after it and one line.
    fn plan(&self, sketch: Sketch, ctx: &Ctx) -> Result<(Sketch, String)>;
    /// Whether the step will leave the model of `state` as it is, so that the model before it
    /// need not be measured on its own.
    fn keeps_model(&self, _state: &State) -> bool {
        false
    }
}

/// One step of a recipe: its name (`"pass"` in JSON) and settings.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "pass", rename_all = "snake_case")]
pub enum PassSpec {
    PruneChannels(prune_channels::PruneSettings),
    Distill(distill::DistillSettings),
    FoldBatchnorm(fold_batchnorm::FoldBatchnorm),
    Calibrate(calibrate::CalibrateSettings),
    Qat(qat::QatSettings),
    ConvertInt8(convert_int8::ConvertInt8),
    TextDistill(text_distill::TextDistillSettings),
    TextPtq(text_ptq::TextPtqSettings),
}

/// The step names, in the order a recipe may use them.
pub const STEP_NAMES: [&str; 8] = ["prune_channels", "distill", "fold_batchnorm", "calibrate", "qat", "convert_int8", "text_distill", "text_ptq"];

impl PassSpec {
    /// Reads a step from its JSON fields (`pass` and the settings); unknown fields and values
    /// out of range are errors naming the field.
    pub fn from_json(v: Value) -> std::result::Result<PassSpec, String> {
        let Value::Object(mut m) = v else { return Err("a pass must be a JSON object".into()) };
        let name = match m.remove("pass") {
            Some(Value::String(s)) => s,
            _ => return Err("missing string field 'pass'".into()),
        };
        fn settings<T: serde::de::DeserializeOwned>(m: serde_json::Map<String, Value>) -> std::result::Result<T, String> {
            serde_json::from_value(Value::Object(m)).map_err(|e| e.to_string())
        }
        let spec = match name.as_str() {
            "prune_channels" => PassSpec::PruneChannels(settings(m)?),
            "distill" => PassSpec::Distill(settings(m)?),
            "fold_batchnorm" => PassSpec::FoldBatchnorm(settings(m)?),
            "calibrate" => PassSpec::Calibrate(settings(m)?),
            "qat" => PassSpec::Qat(settings(m)?),
            "convert_int8" => PassSpec::ConvertInt8(settings(m)?),
            "text_distill" => PassSpec::TextDistill(settings(m)?),
            "text_ptq" => PassSpec::TextPtq(settings(m)?),
            other => return Err(format!("unknown pass '{other}' (known: {})", STEP_NAMES.join(", "))),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The step's name: its file under `src/passes/` and its key in the report.
    pub fn name(&self) -> &'static str {
        match self {
            PassSpec::PruneChannels(_) => "prune_channels",
            PassSpec::Distill(_) => "distill",
            PassSpec::FoldBatchnorm(_) => "fold_batchnorm",
            PassSpec::Calibrate(_) => "calibrate",
            PassSpec::Qat(_) => "qat",
            PassSpec::ConvertInt8(_) => "convert_int8",
            PassSpec::TextDistill(_) => "text_distill",
            PassSpec::TextPtq(_) => "text_ptq",
        }
    }

    /// The step itself.
    pub fn pass(&self) -> &dyn Pass {
        match self {
            PassSpec::PruneChannels(s) => s,
            PassSpec::Distill(s) => s,
            PassSpec::FoldBatchnorm(s) => s,
            PassSpec::Calibrate(s) => s,
            PassSpec::Qat(s) => s,
            PassSpec::ConvertInt8(s) => s,
            PassSpec::TextDistill(s) => s,
            PassSpec::TextPtq(s) => s,
        }
    }

    /// Range checks of the settings (the same the CLI flags get).
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            PassSpec::PruneChannels(s) => s.validate(),
            PassSpec::Distill(s) => s.validate(),
            PassSpec::Calibrate(s) => s.validate(),
            PassSpec::Qat(s) => s.validate(),
            PassSpec::TextDistill(s) => s.validate(),
            PassSpec::TextPtq(s) => s.validate(),
            PassSpec::FoldBatchnorm(_) | PassSpec::ConvertInt8(_) => Ok(()),
        }
    }

    /// Whether the step works on text encoders (`wick compress DIR`) rather than classifiers.
    pub fn is_text(&self) -> bool {
        matches!(self, PassSpec::TextDistill(_) | PassSpec::TextPtq(_))
    }
}

/// The mean and the sample standard deviation `√(Σ (d − mean)² / (n − 1))` of `d` (a deviation
/// of 0 for fewer than two values).
fn mean_and_std_dev(d: &[f64]) -> (f64, f64) {
    let n = d.len() as f64;
    if d.is_empty() {
        return (0.0, 0.0);
    }
    let mean = d.iter().sum::<f64>() / n;
    let var = if d.len() < 2 { 0.0 } else { d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) };
    (mean, var.sqrt())
}

/// A training run's settings from a step's fields. `Auto` epochs follow the step budget
/// `steps` (`train::budget`), with a warm-up of 5 % of the run and early stopping after a
/// third of the epochs (at least 4) without a better validation result; fixed epochs run in
/// full. `ctx.max_epochs` caps either.
pub fn train_config(epochs: Epochs, lr: LearningRate, optimizer: OptimizerKind, batch_size: usize, steps: usize, ctx: &Ctx) -> TrainConfig {
    let n = ctx.cap(epochs.resolve(ctx.train.len(), batch_size, steps, (AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS)));
    let auto = epochs == Epochs::Auto;
    TrainConfig {
        epochs: n,
        batch_size,
        lr,
        optimizer,
        weight_decay: if optimizer == OptimizerKind::Sgd { 1e-4 } else { 0.0 },
        momentum: 0.9,
        warmup_epochs: if auto { 0.05 * n as f64 } else { 0.0 },
        seed: ctx.seed,
        patience: if auto { Some((n / 3).max(4)) } else { None },
        keep: crate::train::fit::Keep::Accuracy,
    }
}

/// Checks shared by the training steps' settings.
pub fn check_training(batch_size: usize) -> std::result::Result<(), String> {
    if batch_size == 0 {
        return Err("field 'batch_size' must be at least 1".into());
    }
    Ok(())
}

/// Checks of a distillation's temperature `T > 0` and weight `α ∈ [0, 1]`.
pub fn check_distillation(temperature: f64, alpha: f64) -> std::result::Result<(), String> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(format!("field 'temperature' is {temperature}; it must be a positive number"));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(format!("field 'alpha' is {alpha}, outside [0, 1]"));
    }
    Ok(())
}

/// The error of a text-encoder step in a classifier's pipeline (its `Pass` methods).
pub fn text_step_on_classifier(step: &str) -> WickError {
    WickError::invalid("recipe", format!("'{step}' is a text-encoder step; the model is a classifier"))
}

/// The error of a step given a state it cannot take.
pub fn wrong_state(step: &str, state: &State, needs: &str) -> WickError {
    WickError::invalid("recipe", format!("'{step}' needs {needs}, but comes after {}", state.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fidelity(hard: f64, soft: f64, train_agreement: f64) -> Fidelity {
        Fidelity { val_accuracy: 0.95, val_lost: 0, val_gained: 0, val_drop_bound: hard, val_soft_drop_bound: soft, train_agreement }
    }

    #[test]
    fn a_candidate_is_within_budget_when_either_bound_is_and_it_follows_the_teacher_in_training() {
        let budget = Budget::new(Some(Allowance::Points(1.0)), 0.95);
        // Two near-ties flipped: counting says 1.9 points, probabilities 0.1.
        assert!(budget.within(&fidelity(1.9, 0.1, 1.0), 0.5));
        assert!(budget.within(&fidelity(0.0, 1.5, 1.0), 0.5));
        assert!(!budget.within(&fidelity(0.6, 0.6, 1.0), 0.5));
        // One training sample in a hundred off the teacher's prediction is a point: over half.
        assert!(!budget.within(&fidelity(0.0, 0.0, 0.99), 0.5));
        assert!(budget.within_on_validation(&fidelity(0.0, 0.0, 0.99), 0.5));
        assert!(budget.within_on_validation(&fidelity(1.2, 0.9, 1.0), 1.0));
    }

    #[test]
    fn mean_and_standard_deviation() {
        let (m, s) = mean_and_std_dev(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12 && (s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12, "{m} {s}");
        assert_eq!(mean_and_std_dev(&[2.0]), (2.0, 0.0));
        assert_eq!(mean_and_std_dev(&[]), (0.0, 0.0));
    }
}
