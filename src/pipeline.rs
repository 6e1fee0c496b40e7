//! Runs a recipe's passes in order over a teacher, validating the model after each and naming
//! the pass in any error, and records one stage per pass (what it did, seconds, size, test
//! accuracy). Uses `recipe`, `passes`, `train`, `calibrate`, `artifact`, `runtime`.

use crate::artifact::Int8Model;
use crate::calibrate::CalibConfig;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::evaluate;
use crate::model::stats::{total_macs, total_params};
use crate::model::Model;
use crate::passes::{fold_batchnorm::fold_batchnorm, prune_channels, ptq::ptq, qat};
use crate::progress::{Progress, Silent};
use crate::recipe::{PassSpec, Recipe};
use crate::runtime::{kernels::Kernel, Exec};
use crate::train::distill::{distill, DistillConfig, Hint};
use crate::train::{OptimizerKind, TrainConfig};
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
    /// Caps every pass's epochs (quick runs and tests).
    pub max_epochs: Option<usize>,
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
}

/// Where the pipeline stands.
enum State {
    Float(Model),
    Int8 { folded: Model, q: Box<Int8Model> },
}

/// The result of a run.
pub struct Outcome {
    /// The float model the INT8 model was converted from (BN folded, after QAT if any).
    pub folded: Model,
    pub int8: Int8Model,
    pub stages: Vec<Stage>,
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

fn cap(epochs: usize, inp: &Inputs) -> usize {
    inp.max_epochs.map_or(epochs, |m| epochs.min(m))
}

/// Runs `recipe` on `inp.teacher`.
pub fn run(recipe: &Recipe, inp: &Inputs, progress: &dyn Progress) -> Result<Outcome> {
    let mut state = State::Float(inp.teacher.deep_clone()?);
    let mut stages = vec![];
    for spec in &recipe.passes {
        let started = Instant::now();
        let name = spec.name();
        let (next, summary) = apply(spec, state, inp, progress).map_err(|e| WickError::Pass { pass: name.clone(), source: Box::new(e) })?;
        state = next;
        let stage = match &state {
            State::Float(m) => {
                crate::model::graph::analyse(&m.arch, &name).map_err(|e| WickError::Pass { pass: name.clone(), source: Box::new(e) })?;
                Stage {
                    pass: name,
                    summary,
                    seconds: started.elapsed().as_secs_f64(),
                    params: total_params(m),
                    macs: total_macs(m),
                    weight_bytes: float_bytes(m),
                    test_accuracy: evaluate(m, inp.test, 256, &Silent)?.accuracy,
                }
            }
            State::Int8 { q, .. } => {
                let acc = crate::eval::evaluate_int8(q, inp.test, 256, Exec::Integer(Kernel::Fast), &Silent)?.accuracy;
                Stage {
                    pass: name,
                    summary,
                    seconds: started.elapsed().as_secs_f64(),
                    params: total_params(&q.model),
                    macs: total_macs(&q.model),
                    weight_bytes: int8_weight_bytes(q),
                    test_accuracy: acc,
                }
            }
        };
        stages.push(stage);
    }
    match state {
        State::Int8 { folded, q } => Ok(Outcome { folded, int8: *q, stages }),
        State::Float(_) => Err(WickError::invalid(format!("recipe {}", recipe.name), "ended without an INT8 model")),
    }
}

fn apply(spec: &PassSpec, state: State, inp: &Inputs, progress: &dyn Progress) -> Result<(State, String)> {
    let float = |s: State| -> Result<Model> {
        match s {
            State::Float(m) => Ok(m),
            State::Int8 { .. } => Err(WickError::invalid("recipe", "a float pass after calibrate")),
        }
    };
    let tc = |epochs: usize, lr: f64, optimizer: OptimizerKind, batch_size: usize| TrainConfig {
        epochs: cap(epochs, inp),
        batch_size,
        lr,
        optimizer,
        weight_decay: if optimizer == OptimizerKind::Sgd { 1e-4 } else { 0.0 },
        momentum: 0.9,
        warmup_epochs: 0.0,
        seed: inp.seed,
        patience: None,
    };
    match spec {
        PassSpec::FoldBatchnorm {} => {
            let (m, r) = fold_batchnorm(&float(state)?)?;
            Ok((State::Float(m.deep_clone()?), format!("folded {} BatchNorms", r.folded.len())))
        }
        PassSpec::PruneChannels { ratio, criterion, global, round_to, min_channels, ignore, steps, epochs, distill: kd, lr, batch_size } => {
            let m = float(state)?;
            let cfg = prune_channels::PruneConfig { ratio: *ratio, criterion: *criterion, global: *global, round_to: *round_to, min_channels: *min_channels, ignore: ignore.clone(), seed: inp.seed };
            let rec = prune_channels::Recovery { train: inp.train, val: inp.val, train_cfg: tc(*epochs, *lr, OptimizerKind::Adamw, *batch_size), distill: *kd };
            let recovery = if rec.train_cfg.epochs > 0 { Some(&rec) } else { None };
            let (p0, pm) = (total_params(&m), total_params);
            // Distillation during recovery is from the unpruned model of this stage.
            let (pruned, _) = prune_channels::prune_with_recovery(&m, &cfg, *steps, recovery, progress)?;
            let s = format!("pruned {:.0}% of channels in {steps} step(s): {} -> {} params, {} recovery epochs", ratio * 100.0, p0, pm(&pruned), rec.train_cfg.epochs);
            Ok((State::Float(pruned), s))
        }
        PassSpec::Distill { width, epochs, optimizer, lr, temperature, alpha, hints, batch_size } => {
            let _ = float(state)?;
            let student = prune_channels::width_scaled(inp.teacher, *width)?;
            let hints: Vec<Hint> = hints.iter().map(|h| h.parse()).collect::<Result<_>>()?;
            let dc = DistillConfig { temperature: *temperature, alpha: *alpha, hints, hint_weight: 1.0 };
            let t = tc(*epochs, *lr, *optimizer, *batch_size);
            let r = distill(inp.teacher, &student, inp.train, inp.val, &t, &dc, progress)?;
            let s = format!("distilled into a {width}x-wide student ({} params), best val accuracy {:.4} at epoch {}", total_params(&student), r.best_val_accuracy, r.best_epoch);
            Ok((State::Float(student), s))
        }
        PassSpec::Calibrate { method, samples, activations, percentile, exclude } => {
            let m = float(state)?;
            let cfg = CalibConfig { method: *method, percentile: *percentile, act: *activations, batch_size: 64 };
            let out = ptq(&m, inp.calib, &cfg, *samples, exclude, progress)?;
            let s = format!("calibrated {} layers on {} samples ({method:?}, {activations:?}), {} kept float", out.report.layers.len(), out.report.calibration_samples, exclude.len());
            Ok((State::Int8 { folded: out.folded, q: Box::new(out.int8) }, s))
        }
        PassSpec::Qat { epochs, lr, optimizer, observer_epochs, distill: kd, temperature, alpha, batch_size } => {
            let State::Int8 { folded, q } = state else { return Err(WickError::invalid("recipe", "qat needs calibrate first")) };
            let cfg = qat::QatConfig { train: tc(*epochs, *lr, *optimizer, *batch_size), observer_epochs: *observer_epochs, temperature: *temperature, alpha: *alpha };
            let teacher = if *kd { Some(inp.teacher) } else { None };
            let (q2, r) = qat::qat(&folded, &q, teacher, inp.train, inp.val, &cfg, progress)?;
            let s = format!("QAT {} epochs{}, best val accuracy {:.4} at epoch {}", r.fit.epochs_run, if *kd { " with distillation" } else { "" }, r.fit.best_val_accuracy, r.fit.best_epoch);
            Ok((State::Int8 { folded, q: Box::new(q2) }, s))
        }
        PassSpec::ConvertInt8 {} => {
            let State::Int8 { folded, q } = state else { return Err(WickError::invalid("recipe", "convert_int8 needs calibrate first")) };
            let s = format!("{} layers INT8 (per-channel weights, per-tensor inputs)", q.layers.len());
            Ok((State::Int8 { folded, q }, s))
        }
    }
}

/// The dry-run plan of each pass, with the expected parameters and weight bytes after it.
pub fn plan(recipe: &Recipe, teacher: &Model, seed: u64, train: &Dataset) -> Result<Vec<(String, String, usize, u64)>> {
    let mut m = teacher.clone();
    let mut int8 = false;
    let mut rows = vec![];
    for spec in &recipe.passes {
        let what = match spec {
            PassSpec::FoldBatchnorm {} => {
                let (f, r) = fold_batchnorm(&m)?;
                m = f;
                format!("fold {} BatchNorms", r.folded.len())
            }
            PassSpec::PruneChannels { ratio, criterion, global, round_to, min_channels, ignore, steps, epochs, .. } => {
                let cfg = prune_channels::PruneConfig { ratio: *ratio, criterion: *criterion, global: *global, round_to: *round_to, min_channels: *min_channels, ignore: ignore.clone(), seed };
                // The plan of a one-shot prune at the full ratio (a K-step run re-ranks between steps).
                let p = prune_channels::plan(&m, &cfg, Some(train))?;
                m = prune_channels::apply(&m, &p)?;
                let groups: Vec<String> = p.groups.iter().map(|g| format!("{}: {}->{}", g.producers.join("+"), g.channels_before, g.channels_after)).collect();
                format!("prune {ratio} in {steps} step(s), {epochs} recovery epochs; groups {}", groups.join("; "))
            }
            PassSpec::Distill { width, epochs, .. } => {
                m = prune_channels::width_scaled(teacher, *width)?;
                format!("distil into a {width}x-wide student for {epochs} epochs")
            }
            PassSpec::Calibrate { method, samples, exclude, .. } => {
                let (f, _) = fold_batchnorm(&m)?;
                m = f;
                int8 = true;
                format!("calibrate ({method:?}, {samples} samples), exclude {exclude:?}")
            }
            PassSpec::Qat { epochs, .. } => format!("QAT for {epochs} epochs"),
            PassSpec::ConvertInt8 {} => "convert to INT8".to_string(),
        };
        let params = total_params(&m);
        let bytes = if int8 {
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
            float_bytes(&m)
        };
        rows.push((spec.name(), what, params, bytes));
    }
    Ok(rows)
}
