//! `fold_batchnorm`: a conv or linear followed by a BatchNorm that only it feeds becomes one
//! layer. The arithmetic lives in the model IR (`model::fold`) because the compiled float
//! runtime folds the same way when it loads a model.

use super::{wrong_state, Applied, Ctx, Pass, Sketch, State};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use crate::model::fold::{fold_batchnorm, FoldReport};

/// The step (no settings).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldBatchnorm {}

impl Pass for FoldBatchnorm {
    fn apply(&self, state: State, _ctx: &Ctx) -> Result<Applied> {
        let State::Float(m) = state else { return Err(wrong_state("fold_batchnorm", &state, "a float model")) };
        let (folded, r) = fold_batchnorm(&m)?;
        let n = r.folded.len();
        let summary = match n {
            0 => "no BatchNorm to fold".to_string(),
            _ => format!("folded {n} BatchNorm{} into the layer before", if n == 1 { "" } else { "s" }),
        };
        Ok(Applied { state: State::Float(folded), summary, changed: n > 0, details: json!({ "folded": r.folded }), fallbacks: vec![] })
    }

    fn keeps_model(&self, state: &State) -> bool {
        matches!(state, State::Float(m) if fold_batchnorm(m).is_ok_and(|(_, r)| r.folded.is_empty()))
    }

    fn plan(&self, sketch: Sketch, _ctx: &Ctx) -> Result<(Sketch, String)> {
        let (folded, r) = fold_batchnorm(&sketch.model)?;
        Ok((Sketch { model: folded, ..sketch }, format!("fold {} BatchNorms", r.folded.len())))
    }
}
