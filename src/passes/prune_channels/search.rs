//! `ratio: auto`: the largest pruning ratio the accuracy budget allows. From the model as it
//! comes, each step removes `search_step` of the remaining channels (ranked again on the
//! recovered model), recovers, and measures how close it stays to the teacher
//! (`Budget::within`: an upper bound of the validation drop, and agreement on the training
//! split); the recovery keeps its checkpoint closest to the teacher on validation. A step that
//! stays within `SEARCH_SHARE` of the budget is taken; one that does not is undone
//! and tried again at half the step, at most twice, and no later step keeps as few channels as
//! it did. The search stops there, at `max_ratio`, or when no channel is left to remove. The
//! rest of the budget is left for quantisation and for the difference between the validation
//! and the test split.

use super::settings::PruneSettings;
use super::{apply, plan};
use crate::error::Result;
use crate::model::stats::total_params;
use crate::model::Model;
use crate::passes::Ctx;
use crate::train::LearningRate;
use serde::Serialize;

/// The share of the accuracy budget pruning may spend on the validation split.
pub const SEARCH_SHARE: f64 = 0.5;

/// One pruned and recovered candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Fraction of the channels kept (of the model the search started from).
    pub keep: f64,
    pub params: usize,
    pub val_accuracy: f64,
    /// Drop from the teacher's validation accuracy, in points.
    pub drop_points: f64,
    /// The two upper bounds of the drop `Budget::within` tests, in points: from predictions
    /// and from calibrated probabilities (`Fidelity`).
    pub drop_bound: f64,
    pub soft_drop_bound: f64,
    /// Share of training samples with the teacher's prediction.
    pub train_agreement: f64,
    pub accepted: bool,
    pub recovery_epochs: usize,
}

/// What the search tried and why it stopped.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub budget_points: f64,
    pub share: f64,
    pub teacher_val_accuracy: f64,
    pub trials: Vec<Trial>,
    /// Fraction of the channels kept by the result.
    pub keep: f64,
    pub stopped: String,
}

/// Runs the search on `model`; returns the smallest model that stayed within budget (the model
/// itself when no step did), and the models it passed through on the way with the fraction of
/// channels each keeps: `model` itself first, then each step it took before the last.
#[allow(clippy::type_complexity)] // the result, its record, and the path to it
pub fn search(model: &Model, s: &PruneSettings, ctx: &Ctx) -> Result<(Model, SearchReport, Vec<(Model, f64)>)> {
    let mut current = model.deep_clone()?;
    let mut passed = vec![];
    let (mut keep, mut step) = (1.0f64, s.search_step);
    let min_step = s.search_step / 4.0;
    let mut recovery = s.recovery(ctx);
    let mut trials = vec![];
    let floor = 1.0 - s.max_ratio;
    // The largest fraction kept by a trial over budget: the search does not go there again,
    // since a second draw of the same ratio judged on the same validation split would pass by
    // chance as often as it failed by chance.
    let mut over = 0.0f64;
    let stopped = loop {
        if keep <= floor + 1e-9 {
            break format!("reached max_ratio {}", s.max_ratio);
        }
        let target = (keep * (1.0 - step)).max(floor);
        // No step: one that would keep no more channels than a trial over budget, or a ratio that
        // would empty a group or that rounding turns into no change. It is tried at half the step.
        let p = if target <= over + 1e-9 {
            Err(format!("removing {:.0}% more of the channels would keep no more than the {:.1}% of them a trial found over budget", 100.0 * step, 100.0 * over))
        } else {
            let cfg = s.config(1.0 - target / keep, ctx.seed + trials.len() as u64);
            plan(&current, &cfg, Some(ctx.train)).ok().filter(|p| !p.removed.is_empty()).ok_or_else(|| "no channel left to remove at the smallest step".to_string())
        };
        let p = match p {
            Ok(p) => p,
            Err(_) if step / 2.0 >= min_step => {
                step /= 2.0;
                continue;
            }
            Err(why) => break why,
        };
        let mut candidate = apply(&current, &p)?;
        let fit = recovery.run(&mut candidate, trials.len(), ctx.progress)?;
        // The first recovery's range test sets the rate of every later one.
        recovery.train_cfg.lr = LearningRate::Fixed(fit.lr);
        let f = ctx.fidelity(&candidate, fit.best_val.as_ref())?;
        let accepted = ctx.budget.within(&f, SEARCH_SHARE);
        let drop = f.val_drop(ctx.val.len());
        trials.push(Trial {
            keep: target,
            params: total_params(&candidate),
            val_accuracy: f.val_accuracy,
            drop_points: drop,
            drop_bound: f.val_drop_bound,
            soft_drop_bound: f.val_soft_drop_bound,
            train_agreement: f.train_agreement,
            accepted,
            recovery_epochs: fit.epochs_run,
        });
        ctx.progress.finish(&format!(
            "pruning search: keep {:.0}% of channels, val accuracy {:.4}, train agreement {:.4}: {}",
            100.0 * target,
            f.val_accuracy,
            f.train_agreement,
            if accepted { "within budget" } else { "over budget" }
        ));
        if accepted {
            passed.push((std::mem::replace(&mut current, candidate), keep));
            keep = target;
            continue;
        }
        over = over.max(target);
        if step / 2.0 >= min_step {
            step /= 2.0;
        } else {
            break format!(
                "removing {:.0}% more of the channels lost {drop:.2} points on validation ({:.2} at one standard error; {:.2} by calibrated probabilities) and left {:.2}% of the training samples off the teacher's prediction; the search may spend {:.2} of either (its share of the {:.2}-point budget)",
                100.0 * step,
                f.val_drop_bound,
                f.val_soft_drop_bound,
                100.0 * (1.0 - f.train_agreement),
                SEARCH_SHARE * ctx.budget.points,
                ctx.budget.points
            );
        }
    };
    let report = SearchReport { budget_points: ctx.budget.points, share: SEARCH_SHARE, teacher_val_accuracy: ctx.budget.teacher_val_accuracy, trials, keep, stopped };
    Ok((current, report, passed))
}
