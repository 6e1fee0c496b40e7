//! Post-training INT8 of a text encoder: every embedding table INT8 per row (rows are gathered,
//! so they are stored as codes and read dequantised); every linear's weight per-channel int8 and its input
//! quantised per token at run time (`InputQuant::PerToken`: a sentence's few large activations
//! do not coarsen every other token's codes, and nothing is calibrated that another text could
//! put out of range). The price of each linear's quantisation is measured alone on the
//! calibration sentences (`1 − mean cosine` of the embeddings to the float model's); when the
//! whole model misses the fidelity target there, the costliest linears stay float, one at a time,
//! until it meets it (what accuracy-aware PTQ does with a metric). Uses `artifact`, `embedding`,
//! `model`, `runtime`.

use super::Pass;
use crate::artifact::Int8Model;
use crate::embedding::{embed, embed_on_plan, fidelity, Fidelity, TextData};
use crate::error::{Result, WickError};
use crate::model::arch::Op;
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::{ActType, InputQuant};
use crate::runtime::plan::Plan;
use serde::Serialize;
use std::collections::BTreeMap;

/// What the quantised encoder must keep on the calibration sentences.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    /// Least mean cosine similarity to the float model's embeddings.
    pub cosine_mean: f64,
    /// Least share of sentences keeping their nearest neighbour.
    pub nn_agreement: f64,
}

impl Target {
    fn met(&self, f: &Fidelity) -> bool {
        f.cosine_mean >= self.cosine_mean && f.nn_agreement >= self.nn_agreement
    }
}

/// One linear's cost when it alone is quantised.
#[derive(Debug, Clone, Serialize)]
pub struct Sensitivity {
    pub layer: String,
    /// `1 − mean cosine` to the float model's embeddings.
    pub cosine_loss: f64,
}

/// What the quantisation did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub calibration_sentences: usize,
    pub target: Target,
    /// Costliest first.
    pub sensitivity: Vec<Sensitivity>,
    /// Linears left float: `--exclude`d, then those the target needed, in that order.
    pub kept_float: Vec<String>,
    /// The INT8 model's fidelity on the calibration sentences.
    pub fidelity: Fidelity,
}

/// The INT8 model of `model` with `layers` quantised (per-token u8 inputs) and every
/// embedding table INT8 per row.
pub fn quantise(model: &Model, layers: &[String]) -> Result<Int8Model> {
    Int8Model::quantize(model, &layers.iter().map(|l| (l.clone(), InputQuant::PerToken(ActType::U8))).collect::<BTreeMap<_, _>>())
}

/// The embeddings of INT8 model `q` (integer execution on the compiled runtime).
pub fn embed_int8(q: &Int8Model, data: &TextData, batch_size: usize) -> Result<Vec<Vec<f32>>> {
    embed_on_plan(&Plan::int8(q)?, &q.model, data, batch_size)
}

/// Quantises `model`'s linears but `exclude`, keeping float the costliest ones the `target`
/// needs on `calib`.
pub fn ptq(model: &Model, calib: &TextData, exclude: &[String], target: Target, batch_size: usize, progress: &dyn Progress) -> Result<(Int8Model, Report)> {
    let linears: Vec<String> = model.arch.nodes.iter().filter(|n| matches!(n.op, Op::Linear(_))).map(|n| n.name.clone()).collect();
    if let Some(bad) = exclude.iter().find(|e| !linears.contains(e)) {
        return Err(WickError::invalid("--exclude", format!("'{bad}' is not a linear of the model")));
    }
    let teacher = embed(model, calib, batch_size)?;
    let mut candidates: Vec<String> = linears.into_iter().filter(|l| !exclude.contains(l)).collect();
    let mut sensitivity = vec![];
    for (i, l) in candidates.iter().enumerate() {
        progress.message(&format!("sensitivity {}/{}: {l}", i + 1, candidates.len()));
        let f = fidelity(&embed_int8(&quantise(model, std::slice::from_ref(l))?, calib, batch_size)?, &teacher)?;
        sensitivity.push(Sensitivity { layer: l.clone(), cosine_loss: 1.0 - f.cosine_mean });
    }
    sensitivity.sort_by(|a, b| b.cosine_loss.total_cmp(&a.cosine_loss).then(a.layer.cmp(&b.layer)));
    let mut kept_float = exclude.to_vec();
    let mut costliest = sensitivity.iter().map(|s| s.layer.clone());
    loop {
        let q = quantise(model, &candidates)?;
        let f = fidelity(&embed_int8(&q, calib, batch_size)?, &teacher)?;
        progress.message(&format!("{} linears INT8: cosine mean {:.5}, nearest-neighbour agreement {:.3}", candidates.len(), f.cosine_mean, f.nn_agreement));
        match (target.met(&f), costliest.next()) {
            (false, Some(l)) => {
                candidates.retain(|c| *c != l);
                kept_float.push(l);
            }
            _ => return Ok((q, Report { calibration_sentences: calib.len(), target, sensitivity, kept_float, fidelity: f })),
        }
    }
}

/// The `text_ptq` step's settings (recipe fields; `wick quantize DIR`'s flags).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextPtqSettings {
    /// Least mean cosine to the float model on the calibration sentences.
    pub min_cosine: f64,
    /// Least nearest-neighbour agreement there. Off (0) by default: it measures the
    /// calibration set's own neighbourhoods (a set of near-synonymous short examples moves far
    /// more than one of distinct sentences), which say little about another set's, where the
    /// per-sentence cosine transfers.
    pub min_nn_agreement: f64,
    /// Linears kept float from the start.
    pub exclude: Vec<String>,
}

impl Default for TextPtqSettings {
    fn default() -> Self {
        TextPtqSettings { min_cosine: 0.995, min_nn_agreement: 0.0, exclude: vec![] }
    }
}

impl TextPtqSettings {
    /// Range checks.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (field, v) in [("min_cosine", self.min_cosine), ("min_nn_agreement", self.min_nn_agreement)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("field '{field}' is {v}, outside [0, 1]"));
            }
        }
        Ok(())
    }

    pub fn target(&self) -> Target {
        Target { cosine_mean: self.min_cosine, nn_agreement: self.min_nn_agreement }
    }
}

impl Pass for TextPtqSettings {
    fn apply(&self, _: super::State, _: &super::Ctx) -> Result<super::Applied> {
        Err(super::text_step_on_classifier("text_ptq"))
    }
    fn plan(&self, _: super::Sketch, _: &super::Ctx) -> Result<(super::Sketch, String)> {
        Err(super::text_step_on_classifier("text_ptq"))
    }
}
