//! The `prune_channels` step: its settings (recipe fields and `wick prune` flags) and what it
//! does with them: a fixed ratio in `steps` steps, or (`ratio: auto`) the search of
//! `search.rs` for the largest ratio the accuracy budget allows. Each pruning step is followed
//! by recovery fine-tuning, by distillation from the recipe's teacher unless `distill: false`.

use super::importance::Criterion;
use super::search::{search, SearchReport};
use super::{apply, plan, prune_with_recovery, PruneConfig, Recovery};
use crate::error::{Result, WickError};
use crate::model::stats::total_params;
use crate::passes::{check_training, train_config, wrong_state, Applied, Ctx, Fallback, Pass, Sketch, State};
use crate::train::budget::{auto_or, AUTO_STEPS};
use crate::train::{Epochs, LearningRate, OptimizerKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A pruning ratio, or `auto`: as much as the accuracy budget allows, up to `max_ratio`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ratio {
    Auto,
    Fixed(f64),
}

auto_or!(Ratio, f64, "a ratio in [0, 1)", |r| if (0.0..1.0).contains(&r) { Ok(()) } else { Err(format!("ratio {r} is outside [0, 1)")) });

/// The step's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneSettings {
    /// Fraction of channels to remove, or `auto`.
    pub ratio: Ratio,
    /// `ratio: auto`: the most it may remove.
    pub max_ratio: f64,
    /// `ratio: auto`: the fraction of the remaining channels each search step removes (halved
    /// twice at most when a step loses too much).
    pub search_step: f64,
    pub criterion: Criterion,
    /// Rank channels across the network (each group's scores normalised by its mean).
    pub global: bool,
    pub round_to: usize,
    pub min_channels: usize,
    /// Layers whose output channels are kept.
    pub ignore: Vec<String>,
    /// Prune whole attention heads as well as channels.
    pub heads: bool,
    /// Fixed ratio: reach it in this many steps, recovering after each.
    pub steps: usize,
    /// Recovery epochs after each pruning step (`auto`: `AUTO_STEPS` optimiser steps).
    pub epochs: Epochs,
    pub lr: LearningRate,
    pub optimizer: OptimizerKind,
    pub batch_size: usize,
    /// Recover by distilling from the recipe's teacher instead of from the labels alone.
    pub distill: bool,
}

impl Default for PruneSettings {
    fn default() -> Self {
        PruneSettings {
            ratio: Ratio::Auto,
            max_ratio: 0.9,
            search_step: 0.25,
            criterion: Criterion::L1,
            global: false,
            round_to: 1,
            min_channels: 0,
            ignore: vec![],
            heads: false,
            steps: 1,
            epochs: Epochs::Auto,
            lr: LearningRate::Auto,
            optimizer: OptimizerKind::Adamw,
            batch_size: 64,
            distill: true,
        }
    }
}

impl PruneSettings {
    /// Range checks (shared by the recipe and the CLI).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.max_ratio > 0.0 && self.max_ratio < 1.0) {
            return Err(format!("field 'max_ratio' is {}, outside (0, 1)", self.max_ratio));
        }
        if !(self.search_step > 0.0 && self.search_step < 1.0) {
            return Err(format!("field 'search_step' is {}, outside (0, 1)", self.search_step));
        }
        if self.round_to == 0 {
            return Err("field 'round_to' must be at least 1".into());
        }
        if self.steps == 0 {
            return Err("field 'steps' must be at least 1".into());
        }
        check_training(self.batch_size)
    }

    /// The pruning configuration at `ratio`.
    pub fn config(&self, ratio: f64, seed: u64) -> PruneConfig {
        PruneConfig { ratio, criterion: self.criterion, global: self.global, round_to: self.round_to, min_channels: self.min_channels, ignore: self.ignore.clone(), heads: self.heads, seed }
    }

    /// The recovery after each pruning step, as the context's data and teacher allow. Distilling
    /// keeps the checkpoint closest to the teacher on validation.
    pub fn recovery<'a>(&self, ctx: &Ctx<'a>) -> Recovery<'a> {
        let mut train_cfg = train_config(self.epochs, self.lr, self.optimizer, self.batch_size, AUTO_STEPS, ctx);
        if self.distill {
            train_cfg.keep = ctx.keep_closest_to_teacher();
        }
        Recovery { train: ctx.train, val: ctx.val, train_cfg, teacher: self.distill.then_some(ctx.teacher) }
    }
}

impl Pass for PruneSettings {
    fn apply(&self, state: State, ctx: &Ctx) -> Result<Applied> {
        let State::Float(m) = state else { return Err(wrong_state("prune_channels", &state, "a float model")) };
        self.validate().map_err(|e| WickError::invalid("prune_channels", e))?;
        let p0 = total_params(&m);
        // Convs an exporter folded BatchNorm into train back as the normalised net they were.
        let (m, unfolded) = match super::unfold::unfold_batchnorm(&m, ctx.train)? {
            Some((u, convs)) => (u, format!("; first put an identity BatchNorm back after {} conv(s) without one, for recovery training", convs.len())),
            None => (m, String::new()),
        };
        match self.ratio {
            Ratio::Fixed(ratio) => {
                let rec = self.recovery(ctx);
                let (pruned, r) = prune_with_recovery(&m, &self.config(ratio, ctx.seed), self.steps, Some(&rec), ctx.progress)?;
                let summary =
                    format!("pruned {:.0}% of channels in {} step(s): {} -> {} params, {} recovery epochs each{unfolded}", ratio * 100.0, self.steps, p0, total_params(&pruned), rec.train_cfg.epochs);
                Ok(Applied { state: State::Float(pruned), summary, changed: ratio > 0.0, details: serde_json::to_value(&r).unwrap_or_default(), fallbacks: vec![] })
            }
            Ratio::Auto => {
                let (pruned, r, passed) = search(&m, self, ctx)?;
                let summary = format!("{}{unfolded}", summary_of_search(&r, p0, total_params(&pruned)));
                let changed = r.trials.iter().any(|t| t.accepted);
                let fallbacks = passed
                    .into_iter()
                    .rev()
                    .map(|(model, keep)| Fallback {
                        what: match keep < 1.0 {
                            true => format!("the candidate keeping {:.0}% of channels ({} params)", 100.0 * keep, total_params(&model)),
                            false => format!("the unpruned model ({} params)", total_params(&model)),
                        },
                        state: State::Float(model),
                    })
                    .collect();
                Ok(Applied { state: State::Float(pruned), summary, changed, details: json!({ "search": r }), fallbacks })
            }
        }
    }

    fn plan(&self, sketch: Sketch, ctx: &Ctx) -> Result<(Sketch, String)> {
        match self.ratio {
            Ratio::Fixed(ratio) => {
                // A K-step run re-ranks between steps; the plan shows a one-shot prune.
                let p = plan(&sketch.model, &self.config(ratio, ctx.seed), Some(ctx.train))?;
                let m = apply(&sketch.model, &p)?;
                let groups: Vec<String> = p.groups.iter().map(|g| format!("{}: {}->{}{}", g.producers.join("+"), g.channels_before, g.channels_after, if g.heads { " heads" } else { "" })).collect();
                Ok((Sketch { model: m, ..sketch }, format!("prune {ratio} in {} step(s); groups {}", self.steps, groups.join("; "))))
            }
            Ratio::Auto => {
                let p = plan(&sketch.model, &self.config(self.max_ratio, ctx.seed), Some(ctx.train))?;
                let smallest = total_params(&apply(&sketch.model, &p)?);
                let what = format!(
                    "search: remove {:.0}% of the remaining channels a step while validation accuracy stays within {:.2} of the {:.2}-point budget, up to {:.0}% ({} params at most removed to {smallest})",
                    self.search_step * 100.0,
                    super::search::SEARCH_SHARE,
                    ctx.budget.points,
                    self.max_ratio * 100.0,
                    total_params(&sketch.model)
                );
                // The size is known only after the search: the sketch keeps the unpruned model.
                Ok((sketch, what))
            }
        }
    }
}

/// One line for the report: what the search kept and why it stopped.
fn summary_of_search(r: &SearchReport, p0: usize, p1: usize) -> String {
    let tried: Vec<String> = r.trials.iter().map(|t| format!("{:.0}%{}", 100.0 * (1.0 - t.keep), if t.accepted { "" } else { "x" })).collect();
    format!("searched {} ratio(s) [{}] (x: over budget): kept {:.0}% of channels, {p0} -> {p1} params; stopped: {}", r.trials.len(), tried.join(", "), 100.0 * r.keep, r.stopped)
}
