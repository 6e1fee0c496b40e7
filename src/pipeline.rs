//! Runs a recipe's steps in order over a teacher and records one stage per step (what it did,
//! seconds, size, test accuracy). The steps themselves are in `passes/`; this only sequences
//! them, names the step in any error, and measures each distinct model once.
//! Uses `recipe`, `passes`, `eval`, `artifact`.

use crate::artifact::Int8Model;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::{evaluate_plan, EvalResult};
use crate::model::stats::{total_macs, total_params};
use crate::model::Model;
use crate::passes::convert_int8::ConvertInt8;
use crate::passes::{Ctx, Sketch, State};
use crate::progress::Silent;
use crate::recipe::Recipe;
use crate::runtime::plan::Plan;
use serde::Serialize;
use std::time::Instant;

/// One row of the per-pass table and one point of the accuracy-vs-size chart.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub pass: String,
    pub summary: String,
    pub seconds: f64,
    pub params: usize,
    pub macs: u64,
    /// Bytes of the weights at this stage: 4 per float parameter; 1 per INT8 weight plus 4
    /// per float parameter and per scale.
    pub weight_bytes: u64,
    /// Test accuracy at this stage (float, or integer execution once quantised).
    pub test_accuracy: f64,
    /// The step's own record (search trials, training curves).
    pub details: serde_json::Value,
}

/// The result of a run.
pub struct Outcome {
    /// The float model the INT8 model was converted from (BN folded, after QAT if any).
    pub folded: Model,
    pub int8: Int8Model,
    pub stages: Vec<Stage>,
    /// The stages whose model is the final INT8 model and whose test accuracy is left to the
    /// caller, which evaluates the artifact it writes.
    pub final_stages: Vec<usize>,
    /// The final model's test result and compiled plan, when a step measured it already (a
    /// step that turned out to keep the model it was given).
    pub final_measure: Option<(EvalResult, Plan)>,
}

/// Bytes of an INT8 model's weights: `Σ int8 weights + 4·(float params + scales)`.
pub fn int8_weight_bytes(q: &Int8Model) -> u64 {
    let mut b = 0u64;
    let quantised = q.quantised_weights();
    for (k, v) in &q.model.params {
        b += match quantised.get(k) {
            Some((_, l)) => (v.as_tensor().elem_count() + 4 * l.weight.scales.len() + 8) as u64,
            None => 4 * v.as_tensor().elem_count() as u64,
        };
    }
    b
}

fn float_bytes(m: &Model) -> u64 {
    m.params.values().map(|v| 4 * v.as_tensor().elem_count() as u64).sum()
}

/// Size of a state: parameters, MACs and weight bytes (an INT8 state's as converted).
fn size(state: &State) -> Result<(usize, u64, u64)> {
    let int8 = |q: &Int8Model| (total_params(&q.model), total_macs(&q.model), int8_weight_bytes(q));
    Ok(match state {
        State::Float(m) => (total_params(m), total_macs(m), float_bytes(m)),
        State::Calibrated { folded, inputs } => int8(&ConvertInt8::convert(folded, inputs)?),
        State::Int8 { q, .. } => int8(q),
    })
}

/// The test result of a state, with its compiled plan: a float model in float, a calibrated or
/// converted one by integer execution of its INT8 model.
fn measure(state: &State, test: &Dataset) -> Result<(EvalResult, Plan)> {
    let plan = match state {
        State::Float(m) => Plan::float(m)?,
        State::Calibrated { folded, inputs } => Plan::int8(&ConvertInt8::convert(folded, inputs)?)?,
        State::Int8 { q, .. } => Plan::int8(q)?,
    };
    Ok((evaluate_plan(&plan, test, 256, &Silent)?, plan))
}

/// Runs `recipe` on `ctx.teacher`, measuring each stage's model on `test` once: a stage's model
/// is measured when the next step that changes it begins, so the model the run ends with is
/// left to the caller (`Outcome::final_stages`).
pub fn run(recipe: &Recipe, ctx: &Ctx, test: &Dataset) -> Result<Outcome> {
    let mut state = State::Float(ctx.teacher.deep_clone()?);
    let mut stages: Vec<Stage> = vec![];
    // The stages of the model as it stands, whose test accuracy is not measured yet, and its
    // measurement once taken.
    let mut pending: Vec<usize> = vec![];
    let mut measured: Option<(EvalResult, Plan)> = None;
    for spec in &recipe.passes {
        let started = Instant::now();
        let name = spec.name();
        if !pending.is_empty() && !spec.pass().keeps_model(&state) {
            let m = measure(&state, test)?;
            pending.drain(..).for_each(|i| stages[i].test_accuracy = m.0.accuracy);
            measured = Some(m);
        }
        let applied = spec.pass().apply(state, ctx).map_err(|e| WickError::Pass { pass: name.to_string(), cause: Box::new(e) })?;
        state = applied.state;
        let (params, macs, weight_bytes) = size(&state)?;
        let test_accuracy = match (&measured, applied.changed) {
            (Some((e, _)), false) => e.accuracy,
            _ => {
                measured = None;
                pending.push(stages.len());
                f64::NAN
            }
        };
        stages.push(Stage { pass: name.to_string(), summary: applied.summary, seconds: started.elapsed().as_secs_f64(), params, macs, weight_bytes, test_accuracy, details: applied.details });
    }
    match state {
        State::Int8 { folded, q } => Ok(Outcome { folded, int8: *q, stages, final_stages: pending, final_measure: measured }),
        other => Err(WickError::invalid(format!("recipe {}", recipe.name), format!("ended with {}; its last step must be 'convert_int8'", other.describe()))),
    }
}

/// The dry-run plan of each step, with the expected parameters and weight bytes after it.
pub fn plan(recipe: &Recipe, ctx: &Ctx) -> Result<Vec<(String, String, usize, u64)>> {
    let mut sketch = Sketch { model: ctx.teacher.deep_clone()?, quantized: false };
    let mut rows = vec![];
    for spec in &recipe.passes {
        let (next, what) = spec.pass().plan(sketch, ctx)?;
        sketch = next;
        let m = &sketch.model;
        let bytes = if sketch.quantized {
            m.arch
                .nodes
                .iter()
                .map(|n| {
                    n.op.param_suffixes()
                        .iter()
                        .map(|(s, _)| {
                            let c: usize = n.op.param_shape(s).iter().product();
                            if *s == "weight" && crate::model::forward::is_weight_layer(&n.op) {
                                c as u64 + 4 * n.op.param_shape(s)[0] as u64 + 8
                            } else {
                                4 * c as u64
                            }
                        })
                        .sum::<u64>()
                })
                .sum()
        } else {
            float_bytes(m)
        };
        rows.push((spec.name().to_string(), what, total_params(m), bytes));
    }
    Ok(rows)
}
