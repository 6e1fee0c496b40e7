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
use crate::passes::{Ctx, Fallback, PassSpec, Sketch, State};
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
    /// Else the final model's compiled plan (measured on validation, not yet on test).
    pub final_plan: Option<Plan>,
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
///
/// The INT8 model the steps end with is measured on validation and training too. When it misses
/// the whole accuracy budget (`Budget::within`: an upper bound of its validation drop, and its
/// disagreement with the teacher on the training split), the steps after the last step that
/// offered larger results (`Applied::fallbacks`: a pruning search's earlier candidates, a
/// distillation's wider students) run again from the next of them, until one is within budget
/// or none is left; then the one closest to the teacher on validation is kept. Quantisation
/// can cost a thin pruned model far more than its share of the budget, and only the model it
/// ends with shows it.
pub fn run(recipe: &Recipe, ctx: &Ctx, test: &Dataset) -> Result<Outcome> {
    let mut run = Run { state: State::Float(ctx.teacher.deep_clone()?), stages: vec![], pending: vec![], measured: None, plan: None };
    // The last step that offered fallbacks: its index and what is left of them.
    let mut resume: Option<(usize, std::vec::IntoIter<Fallback>)> = None;
    let mut ended: Vec<(f64, Run)> = vec![];
    // What each run's INT8 model measured on validation, for the report.
    let mut checks: Vec<serde_json::Value> = vec![];
    let mut started_from = "the step's own result".to_string();
    let mut from = 0;
    loop {
        for (i, spec) in recipe.passes.iter().enumerate().skip(from) {
            let fallbacks;
            (run, fallbacks) = run.step(spec, ctx, test)?;
            if !fallbacks.is_empty() {
                resume = Some((i, fallbacks.into_iter()));
            }
        }
        let State::Int8 { q, .. } = &run.state else { return Err(not_int8(recipe, &run.state)) };
        // Compiled once: the caller measures the model it keeps with the same plan.
        let plan = match (&run.measured, &mut run.plan) {
            (Some((_, p)), _) => p,
            (None, slot) => &*slot.insert(Plan::int8(q)?),
        };
        let f = ctx.fidelity_of_plan(plan, None)?;
        let bound = f.val_drop_bound.min(f.val_soft_drop_bound);
        let within = ctx.budget.within(&f, 1.0);
        checks.push(serde_json::json!({
            "from": started_from, "params": total_params(&q.model), "val_accuracy": f.val_accuracy,
            "val_drop_points": f.val_drop(ctx.val.len()), "drop_bound": f.val_drop_bound, "soft_drop_bound": f.val_soft_drop_bound,
            "train_agreement": f.train_agreement, "within_budget": within,
        }));
        if within {
            ended.push((bound, run));
            break;
        }
        let next = resume.as_mut().and_then(|(i, left)| left.next().map(|fb| (*i, fb)));
        let Some((i, fallback)) = next else {
            ended.push((bound, run));
            break;
        };
        // The steps after `i` again, from the fallback: the stages up to `i` are kept, step
        // `i`'s record says what it gave instead.
        let mut again = Run { state: fallback.state, stages: run.stages[..=i].to_vec(), pending: vec![i], measured: None, plan: None };
        let (params, macs, weight_bytes) = size(&again.state)?;
        let s = &mut again.stages[i];
        s.summary = format!(
            "{}; its INT8 model lost {:.2} points on validation ({:.2} at the lower of its bounds) and left {:.2}% of the training samples off the teacher's prediction, over the {:.2}-point budget, so the steps after this one ran again from {}",
            s.summary,
            f.val_drop(ctx.val.len()),
            bound,
            100.0 * (1.0 - f.train_agreement),
            ctx.budget.points,
            &fallback.what
        );
        (s.params, s.macs, s.weight_bytes, s.test_accuracy) = (params, macs, weight_bytes, f64::NAN);
        ended.push((bound, run));
        started_from = fallback.what;
        run = again;
        from = i + 1;
    }
    // The last run when it is within budget, else the one closest to the teacher (the later
    // of equals).
    let last = ended.len() - 1;
    let best = ended.iter().enumerate().min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(b.0.cmp(&a.0))).map_or(last, |(k, _)| k);
    let Run { state, mut stages, pending, measured, plan } = ended.swap_remove(best).1;
    if let Some((i, _)) = &resume {
        if best != last {
            stages[*i].summary.push_str(&format!("; the {} larger result(s) tried after it missed the budget too, so this one, the closest to the teacher on validation, is kept", last - best));
        }
        if let Some(d) = stages[*i].details.as_object_mut() {
            d.insert("int8_on_validation".into(), serde_json::json!({ "budget_points": ctx.budget.points, "runs": checks, "kept": best }));
        }
    }
    match state {
        State::Int8 { folded, q } => Ok(Outcome { folded, int8: *q, stages, final_stages: pending, final_measure: measured, final_plan: plan }),
        other => Err(not_int8(recipe, &other)),
    }
}

/// The error of a recipe that ends without an INT8 model.
fn not_int8(recipe: &Recipe, state: &State) -> WickError {
    WickError::invalid(format!("recipe {}", recipe.name), format!("ended with {}; its last step must be 'convert_int8'", state.describe()))
}

/// A run of the steps in progress: the model as it stands and the stages so far.
struct Run {
    state: State,
    stages: Vec<Stage>,
    /// The stages of the model as it stands, whose test accuracy is not measured yet, and its
    /// measurement once taken.
    pending: Vec<usize>,
    measured: Option<(EvalResult, Plan)>,
    /// The final INT8 model's plan, compiled for its check on validation.
    plan: Option<Plan>,
}

impl Run {
    /// Runs one step and records its stage; returns the run after it and the fallbacks the
    /// step offered.
    fn step(self, spec: &PassSpec, ctx: &Ctx, test: &Dataset) -> Result<(Run, Vec<Fallback>)> {
        let Run { state, mut stages, mut pending, mut measured, .. } = self;
        let started = Instant::now();
        let name = spec.name();
        if !pending.is_empty() && !spec.pass().keeps_model(&state) {
            let m = measure(&state, test)?;
            pending.drain(..).for_each(|i| stages[i].test_accuracy = m.0.accuracy);
            measured = Some(m);
        }
        let applied = spec.pass().apply(state, ctx).map_err(|e| WickError::Pass { pass: name.to_string(), cause: Box::new(e) })?;
        let (params, macs, weight_bytes) = size(&applied.state)?;
        let test_accuracy = match (&measured, applied.changed) {
            (Some((e, _)), false) => e.accuracy,
            _ => {
                measured = None;
                pending.push(stages.len());
                f64::NAN
            }
        };
        stages.push(Stage { pass: name.to_string(), summary: applied.summary, seconds: started.elapsed().as_secs_f64(), params, macs, weight_bytes, test_accuracy, details: applied.details });
        Ok((Run { state: applied.state, stages, pending, measured, plan: None }, applied.fallbacks))
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
