//! `convert_int8`: builds the INT8 model from the calibrated (or quantisation-aware trained)
//! float model: each quantised layer's weight becomes per-output-channel symmetric codes
//! `q = round(w / s_c)`, `s_c = max|w_c| / 127`, and keeps its input's static quantisation.
//! This is the model `wick compress` writes.

use super::{wrong_state, Applied, Ctx, Pass, Sketch, State};
use crate::artifact::Int8Model;
use crate::error::Result;
use crate::model::Model;
use crate::quant::{InputQuant, QParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// The step (no settings).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertInt8 {}

impl ConvertInt8 {
    /// The INT8 model of `folded` with the given input quantisation of each quantised layer.
    pub fn convert(folded: &Model, inputs: &BTreeMap<String, QParams>) -> Result<Int8Model> {
        Int8Model::quantize(folded, &inputs.iter().map(|(k, &q)| (k.clone(), InputQuant::Static(q))).collect())
    }
}

impl Pass for ConvertInt8 {
    fn apply(&self, state: State, _ctx: &Ctx) -> Result<Applied> {
        let State::Calibrated { folded, inputs } = state else { return Err(wrong_state("convert_int8", &state, "a calibrated model (run 'calibrate' first)")) };
        let q = ConvertInt8::convert(&folded, &inputs)?;
        let summary = format!("{} layers INT8 (per-channel weights, per-tensor inputs)", q.layers.len());
        // The integer model is what the previous step measured (it evaluates through the same
        // conversion), so there is nothing new to measure.
        Ok(Applied { state: State::Int8 { folded, q: Box::new(q) }, summary, changed: false, details: json!({}), fallbacks: vec![] })
    }

    fn plan(&self, sketch: Sketch, _ctx: &Ctx) -> Result<(Sketch, String)> {
        Ok((sketch, "convert to INT8".to_string()))
    }

    fn keeps_model(&self, _state: &State) -> bool {
        true
    }
}
