//! Post-training quantisation: fold BatchNorm, calibrate the input of every conv/linear layer
//! (less `exclude`), quantise weights per output channel, and build the INT8 model.

use super::fold_batchnorm::fold_batchnorm;
use crate::artifact::Int8Model;
use crate::calibrate::{calibrate, CalibConfig, LayerCalib};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::forward::is_weight_layer;
use crate::model::Model;
use crate::progress::Progress;
use serde::Serialize;
use std::collections::BTreeMap;

/// What PTQ did.
#[derive(Debug, Clone, Serialize)]
pub struct PtqReport {
    pub folded: Vec<(String, String)>,
    pub layers: BTreeMap<String, LayerCalib>,
    pub excluded: Vec<String>,
    pub calibration_samples: usize,
}

/// The conv/linear layers of `model` to quantise; an `exclude` entry that names no node, or a
/// node that is not a weight layer, is an error.
pub fn quantizable_layers(model: &Model, exclude: &[String]) -> Result<Vec<String>> {
    for e in exclude {
        match model.arch.node(e) {
            None => return Err(WickError::invalid("--exclude", format!("'{e}' names no node of the model"))),
            Some(n) if !is_weight_layer(&n.op) => return Err(WickError::invalid("--exclude", format!("node '{e}' is a {}, not a conv or linear layer", n.op.name()))),
            _ => {}
        }
    }
    Ok(model.arch.nodes.iter().filter(|n| is_weight_layer(&n.op) && !exclude.contains(&n.name)).map(|n| n.name.clone()).collect())
}

/// What PTQ produced: the INT8 model, the BN-folded float model it was converted from (QAT
/// trains that one), and the report.
pub struct PtqOutput {
    pub int8: Int8Model,
    pub folded: Model,
    pub report: PtqReport,
}

/// Folds, calibrates on the first `samples` of `calib` and converts.
pub fn ptq(model: &Model, calib: &Dataset, cfg: &CalibConfig, samples: usize, exclude: &[String], progress: &dyn Progress) -> Result<PtqOutput> {
    if samples == 0 {
        return Err(WickError::invalid("--samples", "must be at least 1"));
    }
    let (folded, fold) = fold_batchnorm(model)?;
    let layers = quantizable_layers(&folded, exclude)?;
    let calib = calib.head(samples)?;
    let cal = calibrate(&folded, &calib, &layers, cfg, progress)?;
    let inputs = cal.iter().map(|(k, v)| (k.clone(), v.qparams)).collect();
    let int8 = Int8Model::quantize(&folded, &inputs)?;
    let report = PtqReport { folded: fold.folded, layers: cal, excluded: exclude.to_vec(), calibration_samples: calib.len() };
    Ok(PtqOutput { int8, folded: folded.deep_clone()?, report })
}
