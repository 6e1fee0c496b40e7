//! Runs a recipe's steps in order over a teacher and records one stage per step (what it did,
//! seconds, size, test accuracy). The steps themselves are in `passes/`; this only sequences
//! them, names the step in any error, and measures each distinct model once.
//! Uses `recipe`, `passes`, `eval`, `artifact`.

use crate::artifact::Int8Model;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::{evaluate, evaluate_int8};
use crate::model::stats::{total_macs, total_params};
use crate::model::Model;
use crate::passes::convert_int8::ConvertInt8;
use crate::passes::{Allowance, Ctx, Data, Sketch, State};
use crate::progress::{Progress, Silent};
use crate::recipe::Recipe;
use crate::runtime::{kernels::Kernel, Exec};
use serde::Serialize;
use std::time::Instant;

/// The data a run uses.
pub struct Inputs<'a> {
    pub teacher: &'a Model,
    pub train: &'a Dataset,
    pub val: &'a Dataset,
    pub test: &'a Dataset,
    pub calib: &'a Dataset,
    pub seed: u64,
    /// Caps every step's epochs (quick runs and tests).
    pub max_epochs: Option<usize>,
    /// What the gate allows (`None`: no gate, `Budget::DEFAULT_POINTS`).
    pub allowance: Option<Allowance>,
}

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
    /// The teacher's validation accuracy the budget was measured from.
    pub teacher_val_accuracy: f64,
}

/// Bytes of an INT8 model's weights: `Σ int8 weights + 4·(float params + scales)`.
pub fn int8_weight_bytes(q: &Int8Model) -> u64 {
    let mut b = 0u64;
    for (k, v) in &q.model.params {
        let layer = k.strip_suffix(".weight").and_then(|l| q.layers.get(l));
        b += match layer {
            Some(l) => (v.as_tensor().elem_count() + 4 * l.weight.scales.len() + 8) as u64,
            None => 4 * v.as_tensor().elem_count() as u64,
        };
    }
    b
}

fn float_bytes(m: &Model) -> u64 {
    m.params.values().map(|v| 4 * v.as_tensor().elem_count() as u64).sum()
}

/// Size and test accuracy of a state: a float model in float, a calibrated or converted one by
/// integer execution of its INT8 model.
fn measure(state: &State, test: &Dataset) -> Result<(usize, u64, u64, f64)> {
    let int8 = |q: &Int8Model| -> Result<(usize, u64, u64, f64)> {
        let acc = evaluate_int8(q, test, 256, Exec::Integer(Kernel::Fast), &Silent)?.accuracy;
        Ok((total_params(&q.model), total_macs(&q.model), int8_weight_bytes(q), acc))
    };
    match state {
        State::Float(m) => Ok((total_params(m), total_macs(m), float_bytes(m), evaluate(m, test, 256, &Silent)?.accuracy)),
        State::Calibrated { folded, inputs } => int8(&ConvertInt8::convert(folded, inputs)?),
        State::Int8 { q, .. } => int8(q),
    }
}

/// The context the steps see.
fn context<'a>(inp: &Inputs<'a>, progress: &'a dyn Progress) -> Result<Ctx<'a>> {
    Ctx::new(inp.teacher, Data { train: inp.train, val: inp.val, calib: inp.calib }, inp.seed, inp.max_epochs, inp.allowance, progress)
}

/// Runs `recipe` on `inp.teacher`.
pub fn run(recipe: &Recipe, inp: &Inputs, progress: &dyn Progress) -> Result<Outcome> {
    let ctx = context(inp, progress)?;
    let teacher_val_accuracy = ctx.budget.teacher_val_accuracy;
    let mut state = State::Float(inp.teacher.deep_clone()?);
    let mut stages: Vec<Stage> = vec![];
    for spec in &recipe.passes {
        let started = Instant::now();
        let name = spec.name();
        let applied = spec.pass().apply(state, &ctx).map_err(|e| WickError::Pass { pass: name.to_string(), cause: Box::new(e) })?;
        state = applied.state;
        let (params, macs, weight_bytes, test_accuracy) = match stages.last() {
            Some(prev) if !applied.changed => (prev.params, prev.macs, prev.weight_bytes, prev.test_accuracy),
            _ => measure(&state, inp.test)?,
        };
        stages.push(Stage { pass: name.to_string(), summary: applied.summary, seconds: started.elapsed().as_secs_f64(), params, macs, weight_bytes, test_accuracy, details: applied.details });
    }
    match state {
        State::Int8 { folded, q } => Ok(Outcome { folded, int8: *q, stages, teacher_val_accuracy }),
        other => Err(WickError::invalid(format!("recipe {}", recipe.name), format!("ended with {}; its last step must be 'convert_int8'", other.describe()))),
    }
}

/// The dry-run plan of each step, with the expected parameters and weight bytes after it.
pub fn plan(recipe: &Recipe, inp: &Inputs) -> Result<Vec<(String, String, usize, u64)>> {
    let ctx = context(inp, &Silent)?;
    let mut sketch = Sketch { model: inp.teacher.clone(), quantized: false };
    let mut rows = vec![];
    for spec in &recipe.passes {
        let (next, what) = spec.pass().plan(sketch, &ctx)?;
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
