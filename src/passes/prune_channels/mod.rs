//! `prune_channels`: structured channel pruning over dependency groups, with uniform or global
//! ratios, minimum channels, rounding to hardware-friendly multiples, ignored layers, and an
//! optional K-step schedule with fine-tuning (or distillation from the teacher) after each
//! step, or a search for the largest ratio the accuracy budget allows (`search.rs`). The
//! result is a physically smaller dense model. The step's settings and `Pass` are in
//! `settings.rs`.

pub mod deps;
pub mod importance;
pub mod search;
pub mod settings;
pub mod surgery;
pub mod unfold;

use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::Model;
use crate::train::TrainConfig;
use deps::{analyse, Deps};
use importance::{importance, Criterion};
use serde::Serialize;
pub use settings::{PruneSettings, Ratio};
use std::collections::{BTreeMap, BTreeSet};

/// Pruning settings.
#[derive(Debug, Clone, Serialize)]
pub struct PruneConfig {
    /// Fraction of each group's channels to remove (uniform), or of all prunable channels
    /// (global), in `[0, 1)`.
    pub ratio: f64,
    pub criterion: Criterion,
    /// Rank channels across the network by importance normalised by each group's mean.
    pub global: bool,
    /// Round kept channels per group to a multiple of this (1 = no rounding).
    pub round_to: usize,
    /// Keep at least this many channels per group.
    pub min_channels: usize,
    /// Layers whose output channels are not pruned.
    pub ignore: Vec<String>,
    /// Prune whole attention heads too (a head is one unit of its attention's group).
    pub heads: bool,
    pub seed: u64,
}

/// What a pruning step will do, per group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    pub producers: Vec<String>,
    pub channels_before: usize,
    pub channels_after: usize,
    /// The counts are attention heads, not channels.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub heads: bool,
}

/// A pruning plan: the units to remove.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub groups: Vec<GroupPlan>,
    #[serde(skip)]
    pub removed: BTreeSet<usize>,
    #[serde(skip)]
    pub deps: Deps,
}

/// Checks the settings against the model.
fn check(model: &Model, cfg: &PruneConfig) -> Result<()> {
    if !(0.0..1.0).contains(&cfg.ratio) {
        return Err(WickError::invalid("--ratio", format!("{} is outside [0, 1)", cfg.ratio)));
    }
    if cfg.round_to == 0 {
        return Err(WickError::invalid("--round-to", "must be at least 1"));
    }
    for n in &cfg.ignore {
        if model.arch.node(n).is_none() {
            return Err(WickError::invalid("--ignore", format!("'{n}' names no node of the model")));
        }
    }
    Ok(())
}

/// Channels to keep out of `n` at keep fraction `1 − ratio`: `round((1 − r)·n)`, rounded to the
/// nearest positive multiple of `round_to`, at least `min_channels`, at most `n`.
fn keep_count(n: usize, ratio: f64, cfg: &PruneConfig, who: &[String]) -> Result<usize> {
    let mut k = ((1.0 - ratio) * n as f64).round() as usize;
    if cfg.round_to > 1 && k > 0 {
        k = (((k as f64) / cfg.round_to as f64).round() as usize).max(1) * cfg.round_to;
    }
    k = k.max(cfg.min_channels).min(n);
    if k == 0 {
        return Err(WickError::invalid("--ratio", format!("{ratio} would leave layer(s) {} with no channels (of {n}); lower the ratio or set --min-channels", who.join(", "))));
    }
    Ok(k)
}

/// Plans one pruning step at `cfg.ratio`.
pub fn plan(model: &Model, cfg: &PruneConfig, data: Option<&Dataset>) -> Result<Plan> {
    check(model, cfg)?;
    let mut deps = analyse(model);
    let ignored: BTreeSet<&str> = cfg.ignore.iter().map(String::as_str).collect();
    deps.groups.retain(|g| (cfg.heads || !g.heads) && !g.producers.iter().any(|p| ignored.contains(p.as_str())));
    let scores = importance(model, &deps, cfg.criterion, data, cfg.seed)?;
    let mut removed = BTreeSet::new();
    let mut groups = vec![];
    if cfg.global {
        // Normalise by each group's mean so wide and narrow layers compare fairly.
        let mut all: Vec<(f64, usize, usize)> = vec![];
        // No group is emptied: each keeps at least max(min_channels, 1).
        let floor = cfg.min_channels.max(1);
        for (gi, g) in deps.groups.iter().enumerate() {
            let mean = g.units.iter().map(|u| scores[u]).sum::<f64>() / g.units.len() as f64;
            all.extend(g.units.iter().map(|&u| (scores[&u] / mean.max(f64::MIN_POSITIVE), u, gi)));
        }
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let target = (cfg.ratio * all.len() as f64).round() as usize;
        let mut left: Vec<usize> = deps.groups.iter().map(|g| g.units.len()).collect();
        for &(_, u, gi) in &all {
            if removed.len() >= target {
                break;
            }
            if left[gi] > floor {
                removed.insert(u);
                left[gi] -= 1;
            }
        }
        // Round each group's kept count up to a multiple of round_to by restoring its best removed units.
        for (gi, g) in deps.groups.iter().enumerate() {
            let want = if cfg.round_to > 1 { left[gi].div_ceil(cfg.round_to) * cfg.round_to } else { left[gi] }.min(g.units.len());
            let mut back: Vec<usize> = g.units.iter().copied().filter(|u| removed.contains(u)).collect();
            back.sort_by(|a, b| scores[b].total_cmp(&scores[a]));
            for u in back.into_iter().take(want - left[gi]) {
                removed.remove(&u);
            }
        }
    } else {
        for g in &deps.groups {
            let k = keep_count(g.units.len(), cfg.ratio, cfg, &g.producers)?;
            let mut order = g.units.clone();
            order.sort_by(|a, b| scores[a].total_cmp(&scores[b]).then(a.cmp(b)));
            removed.extend(order.into_iter().take(g.units.len() - k));
        }
    }
    for g in &deps.groups {
        let after = g.units.iter().filter(|u| !removed.contains(u)).count();
        groups.push(GroupPlan { producers: g.producers.clone(), channels_before: g.units.len(), channels_after: after, heads: g.heads });
    }
    Ok(Plan { groups, removed, deps })
}

/// Applies a plan: the smaller model.
pub fn apply(model: &Model, plan: &Plan) -> Result<Model> {
    surgery::remove_units(model, &plan.deps, &plan.removed)
}

/// The ratio of each of K steps that together reach `ratio`: every step prunes the current model
/// keeping `(1 − ratio)^(1/K)` of its channels, so `1 − (1 − ratio)^(1/K)`.
pub fn step_ratio(ratio: f64, steps: usize) -> f64 {
    1.0 - (1.0 - ratio).powf(1.0 / steps.max(1) as f64)
}

/// Per-layer parameters and MACs of two models, for the summary.
pub fn layer_table(before: &Model, after: &Model) -> Vec<BTreeMap<&'static str, serde_json::Value>> {
    let a = crate::model::stats::node_stats(before, |_| 4);
    let b = crate::model::stats::node_stats(after, |_| 4);
    a.iter()
        .filter(|r| r.params > 0)
        .map(|r| {
            let o = b.iter().find(|x| x.name == r.name);
            let mut m = BTreeMap::new();
            m.insert("layer", r.name.clone().into());
            m.insert("params_before", r.params.into());
            m.insert("params_after", o.map(|x| x.params).unwrap_or(0).into());
            m.insert("macs_before", r.macs.into());
            m.insert("macs_after", o.map(|x| x.macs).unwrap_or(0).into());
            m.insert("shape_before", serde_json::to_value(&r.output_shape).unwrap());
            m.insert("shape_after", serde_json::to_value(o.map(|x| x.output_shape.clone()).unwrap_or_default()).unwrap());
            m
        })
        .collect()
}

/// Fine-tuning after each pruning step: on the labels, or by distilling from `teacher`.
pub struct Recovery<'a> {
    pub train: &'a Dataset,
    pub val: &'a Dataset,
    /// Settings of each step's fine-tuning.
    pub train_cfg: TrainConfig,
    /// Distil from this model (T = 4, α = 0.7) instead of training on labels alone.
    pub teacher: Option<&'a Model>,
}

impl Recovery<'_> {
    /// Fine-tunes `model` in place (the `s`-th time: its own seed).
    fn run(&self, model: &mut Model, s: usize, progress: &dyn crate::progress::Progress) -> Result<crate::train::FitReport> {
        let tc = TrainConfig { seed: self.train_cfg.seed + s as u64, ..self.train_cfg.clone() };
        let kd = self.teacher.map(|t| crate::train::student::LogitDistill { teacher: t, temperature: 4.0, alpha: 0.7 });
        crate::train::student::train_model(model, self.train, self.val, &tc, kd.as_ref(), progress)
    }
}

/// What pruning did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub steps: Vec<Vec<GroupPlan>>,
    pub fine_tune: Vec<crate::train::FitReport>,
}

/// Prunes in `steps` steps to `cfg.ratio` overall, fine-tuning after each step when `recovery`
/// is given.
pub fn prune_with_recovery(model: &Model, cfg: &PruneConfig, steps: usize, recovery: Option<&Recovery>, progress: &dyn crate::progress::Progress) -> Result<(Model, PruneReport)> {
    check(model, cfg)?;
    let steps = steps.max(1);
    let mut current = model.deep_clone()?;
    let mut report = PruneReport { steps: vec![], fine_tune: vec![] };
    let data = recovery.map(|r| r.train);
    for s in 0..steps {
        let step_cfg = PruneConfig { ratio: step_ratio(cfg.ratio, steps), seed: cfg.seed + s as u64, ..cfg.clone() };
        let p = plan(&current, &step_cfg, data)?;
        current = apply(&current, &p)?;
        report.steps.push(p.groups);
        if let Some(r) = recovery.filter(|r| r.train_cfg.epochs > 0) {
            report.fine_tune.push(r.run(&mut current, s, progress)?);
        }
    }
    Ok((current, report))
}

/// A width-scaled copy of `model`: every prunable group keeps a fraction `width` of its channels
/// (at least one), chosen by L1 importance, so the copy starts from the teacher's strongest
/// channels.
pub fn width_scaled(model: &Model, width: f64) -> Result<Model> {
    let cfg = PruneConfig { ratio: 1.0 - width, criterion: Criterion::L1, global: false, round_to: 1, min_channels: 1, ignore: vec![], heads: false, seed: 0 };
    let cfg = PruneConfig { ratio: cfg.ratio.clamp(0.0, 0.999_999), ..cfg };
    apply(model, &plan(model, &cfg, None)?)
}
