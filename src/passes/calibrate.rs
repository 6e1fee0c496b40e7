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
use crate::calibrate::{calibrate, CalibConfig, LayerCalib, Method};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::qunit::{has_units, units, Unit};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::ActType;
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
    pub fn run(&self, folded: &Model, calib: &Dataset, progress: &dyn Progress) -> Result<BTreeMap<String, LayerCalib>> {
        self.validate().map_err(|m| WickError::invalid("calibrate", m))?;
        let units = quantizable_units(folded, &self.exclude)?;
        calibrate(folded, &calib.head(self.samples)?, &units, &self.config(), progress)
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
        let cal = self.run(&folded, ctx.calib, ctx.progress)?;
        let inputs = cal.iter().map(|(k, v)| (k.clone(), v.qparams)).collect();
        let summary = format!("calibrated {} units on {} samples ({:?}, {:?}), {} kept float", cal.len(), self.samples.min(ctx.calib.len()), self.method, self.activations, self.exclude.len());
        Ok(Applied { state: State::Calibrated { folded, inputs }, summary, changed: true, details: json!({ "layers": cal }) })
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
    let cal = settings.run(&folded, calib, progress)?;
    let inputs = cal.iter().map(|(k, v)| (k.clone(), v.qparams)).collect();
    let int8 = ConvertInt8::convert(&folded, &inputs)?;
    let report = PtqReport { folded: fold.folded, layers: cal, excluded: settings.exclude.clone(), calibration_samples: settings.samples.min(calib.len()) };
    Ok(PtqOutput { int8, folded, report })
}
