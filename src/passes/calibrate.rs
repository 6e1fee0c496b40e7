//! `calibrate`: post-training calibration of the input of every quantisation unit
//! (`model::qunit`: conv, linear, GRU/LSTM matrix; less the nodes in `exclude`) of a
//! BatchNorm-folded model: the observer (`calibrate::Method`) turns the values
//! seen on the first `samples` calibration rows into each layer's static input quantisation.
//! `ptq` is the whole of post-training quantisation (fold, calibrate, convert) for
//! `wick quantize` and the benchmarks.

use super::convert_int8::ConvertInt8;
use super::fold_batchnorm::fold_batchnorm;
use super::{wrong_state, Applied, Ctx, Pass, Sketch, State};
use crate::artifact::Int8Model;
use crate::calibrate::{calibrate, CalibConfig, Calibration, LayerCalib, Method};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::{evaluate_plan, log_sum_exp};
use crate::model::qunit::{has_units, units, Unit};
use crate::model::Model;
use crate::progress::Progress;
use crate::progress::Silent;
use crate::quant::ActType;
use crate::runtime::plan::Plan;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// The step's settings (recipe fields and `wick quantize` / `wick qat` flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrateSettings {
    pub method: Method,
    /// Calibration rows used (the first N of the calibration set).
    pub samples: usize,
    pub activations: ActType,
    /// For `method: percentile`: the percentile of `|x|` kept, in (50, 100].
    pub percentile: f64,
    /// Nodes kept in float (conv, linear, GRU or LSTM).
    pub exclude: Vec<String>,
}

impl Default for CalibrateSettings {
    fn default() -> Self {
        CalibrateSettings { method: Method::Entropy, samples: 512, activations: ActType::U8, percentile: 99.99, exclude: vec![] }
    }
}

impl CalibrateSettings {
    /// Range checks (shared by the recipe and the CLI).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.samples == 0 {
            return Err("field 'samples' must be at least 1".into());
        }
        if !(self.percentile > 50.0 && self.percentile <= 100.0) {
            return Err(format!("field 'percentile' is {}, outside (50, 100]", self.percentile));
        }
        Ok(())
    }

    fn config(&self) -> CalibConfig {
        CalibConfig { method: self.method, percentile: self.percentile, act: self.activations, batch_size: 64 }
    }

    /// Calibrates `folded` (BatchNorm already folded) on the first `samples` rows of `calib`.
    /// With `method: auto`, of the calibrations by each candidate observer the one whose INT8
    /// model's predicted distribution on those rows is closest to the float model's (least
    /// mean KL divergence) is kept: which observer clips well depends on the model's activations
    /// (entropy's clipping can cost a thin pruned net ten points where min-max costs one).
    pub fn run(&self, folded: &Model, calib: &Dataset, progress: &dyn Progress) -> Result<Chosen> {
        self.validate().map_err(|m| WickError::invalid("calibrate", m))?;
        let units = quantizable_units(folded, &self.exclude)?;
        let mut rows = calib.head(self.samples)?;
        if rows.len() < calib.len() {
            rows.name = format!("{} (its first {} rows)", calib.name, rows.len());
        }
        let mut candidates = calibrate(folded, &rows, &units, &self.config(), progress)?;
        if candidates.len() == 1 {
            let (method, layers) = candidates.remove(0);
            return Ok(Chosen { method, layers, errors: vec![] });
        }
        let reference = evaluate_plan(&Plan::float(folded)?, &rows, 256, &Silent)?.logits;
        let mut errors = vec![];
        for (method, layers) in &candidates {
            let q = ConvertInt8::convert(folded, &layers.iter().map(|(k, v)| (k.clone(), v.qparams)).collect())?;
            let logits = evaluate_plan(&Plan::int8(&q)?, &rows, 256, &Silent)?.logits;
            errors.push((*method, mean_kl_divergence(&reference, &logits, rows.len())));
        }
        // The first of equals, in the order of `Method::candidates`.
        let best = (0..errors.len()).fold(0, |b, i| if errors[i].1 < errors[b].1 { i } else { b });
        let (method, layers) = candidates.swap_remove(best);
        Ok(Chosen { method, layers, errors })
    }
}

/// The mean over `rows` rows of `KL(p ‖ q) = Σ_c p_c (ln p_c − ln q_c)`, where `p` and `q` are
/// the softmax of each row of `reference` and of `logits`: how far the quantised model's
/// predicted distribution moves from the float model's.
fn mean_kl_divergence(reference: &[f32], logits: &[f32], rows: usize) -> f64 {
    let classes = reference.len() / rows.max(1);
    fn log_softmax(row: &[f32]) -> impl Iterator<Item = f64> + '_ {
        let lse = log_sum_exp(row, 1.0);
        row.iter().map(move |&v| v as f64 - lse)
    }
    let total: f64 =
        reference.chunks_exact(classes.max(1)).zip(logits.chunks_exact(classes.max(1))).map(|(r, l)| log_softmax(r).zip(log_softmax(l)).map(|(lp, lq)| lp.exp() * (lp - lq)).sum::<f64>()).sum();
    total / rows.max(1) as f64
}

/// A calibration and the observer that made it.
pub struct Chosen {
    pub method: Method,
    pub layers: Calibration,
    /// With `method: auto`: each candidate's mean KL divergence from the float model.
    pub errors: Vec<(Method, f64)>,
}

impl Chosen {
    /// How the observer was chosen, for a summary: "Mse", or "auto: Mse, the least KL
    /// divergence …".
    pub fn describe(&self) -> String {
        match self.errors.is_empty() {
            true => format!("{:?}", self.method),
            false => {
                let e: Vec<String> = self.errors.iter().map(|(m, e)| format!("{m:?} {e:.2e}")).collect();
                format!("auto: {:?}, the least KL divergence from the float model of {}", self.method, e.join(", "))
            }
        }
    }
}

/// The units of `model` to quantise; an `exclude` entry that names no node, or a node without
/// units, is an error.
pub fn quantizable_units(model: &Model, exclude: &[String]) -> Result<Vec<Unit>> {
    for e in exclude {
        match model.arch.node(e) {
            None => return Err(WickError::invalid("--exclude", format!("'{e}' names no node of the model"))),
            Some(n) if !has_units(&n.op) => return Err(WickError::invalid("--exclude", format!("node '{e}' is a {}, not a conv, linear, GRU or LSTM", n.op.name()))),
            _ => {}
        }
    }
    Ok(units(model).into_iter().filter(|u| !exclude.contains(&u.node)).collect())
}

impl Pass for CalibrateSettings {
    fn apply(&self, state: State, ctx: &Ctx) -> Result<Applied> {
        let State::Float(m) = state else { return Err(wrong_state("calibrate", &state, "a float model")) };
        // A recipe folds first; folding here too keeps a recipe without that step correct.
        let (folded, _) = fold_batchnorm(&m)?;
        let chosen = self.run(&folded, ctx.calib, ctx.progress)?;
        let cal = &chosen.layers;
        let inputs = cal.iter().map(|(k, v)| (k.clone(), v.qparams)).collect();
        let summary = format!("calibrated {} units on {} samples ({:?}; {}), {} kept float", cal.len(), self.samples.min(ctx.calib.len()), self.activations, chosen.describe(), self.exclude.len());
        let details = json!({ "method": chosen.method, "errors": chosen.errors, "layers": cal });
        Ok(Applied { state: State::Calibrated { folded, inputs }, summary, changed: true, details, fallbacks: vec![] })
    }

    fn plan(&self, sketch: Sketch, _ctx: &Ctx) -> Result<(Sketch, String)> {
        let (folded, _) = fold_batchnorm(&sketch.model)?;
        let n = quantizable_units(&folded, &self.exclude)?.len();
        Ok((Sketch { model: folded, quantized: true }, format!("calibrate {n} units ({:?}, {} samples), exclude {:?}", self.method, self.samples, self.exclude)))
    }
}

/// What PTQ did.
#[derive(Debug, Clone, Serialize)]
pub struct PtqReport {
    pub folded: Vec<(String, String)>,
    /// The observer used (`auto`'s choice), and with `auto` each candidate's logit error.
    pub method: Method,
    pub method_errors: Vec<(Method, f64)>,
    pub layers: BTreeMap<String, LayerCalib>,
    pub excluded: Vec<String>,
    pub calibration_samples: usize,
}

/// What PTQ produced: the INT8 model, the BN-folded float model it was converted from (QAT
/// trains that one), and the report.
pub struct PtqOutput {
    pub int8: Int8Model,
    pub folded: Model,
    pub report: PtqReport,
}

/// Post-training quantisation: fold, calibrate, convert (the steps of the `ptq-int8` recipe).
pub fn ptq(model: &Model, calib: &Dataset, settings: &CalibrateSettings, progress: &dyn Progress) -> Result<PtqOutput> {
    let (folded, fold) = fold_batchnorm(model)?;
    let chosen = settings.run(&folded, calib, progress)?;
    let inputs = chosen.layers.iter().map(|(k, v)| (k.clone(), v.qparams)).collect();
    let int8 = ConvertInt8::convert(&folded, &inputs)?;
    let report = PtqReport {
        folded: fold.folded,
        method: chosen.method,
        method_errors: chosen.errors,
        layers: chosen.layers,
        excluded: settings.exclude.clone(),
        calibration_samples: settings.samples.min(calib.len()),
    };
    Ok(PtqOutput { int8, folded, report })
}
