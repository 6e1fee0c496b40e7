//! Channel importance, summed over every member of a unit: the producing conv/linear rows, the
//! consuming conv/linear columns, depthwise rows, and BatchNorm scales.
//! - `l1`: `Σ |w|`; `l2`: `√(Σ w²)` over the unit's slices;
//! - `bn_scale`: `Σ |γ|` of the unit's BatchNorms (network slimming);
//! - `taylor`: `Σ |w · ∂L/∂w|` (first-order Taylor estimate of the loss change), gradients of the
//!   cross-entropy over the given batches;
//! - `random`: a seeded uniform draw (a baseline).

use super::deps::{is_depthwise, Deps};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::arch::Op;
use crate::model::forward::Mode;
use crate::model::Model;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;

/// Importance criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    L1,
    L2,
    BnScale,
    Taylor,
    Random,
}

impl std::str::FromStr for Criterion {
    type Err = WickError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l1" => Ok(Criterion::L1),
            "l2" => Ok(Criterion::L2),
            "bn_scale" => Ok(Criterion::BnScale),
            "taylor" => Ok(Criterion::Taylor),
            "random" => Ok(Criterion::Random),
            o => Err(WickError::invalid("--criterion", format!("'{o}' is not one of l1, l2, bn_scale, taylor, random"))),
        }
    }
}

/// Importance of every unit that appears in `deps.groups`.
pub fn importance(model: &Model, deps: &Deps, c: Criterion, data: Option<&Dataset>, seed: u64) -> Result<BTreeMap<usize, f64>> {
    let mut score: BTreeMap<usize, f64> = deps.groups.iter().flat_map(|g| g.units.iter().map(|&u| (u, 0.0))).collect();
    if c == Criterion::Random {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for v in score.values_mut() {
            *v = rng.random::<f64>();
        }
        return Ok(score);
    }
    let grads = if c == Criterion::Taylor { Some(weight_grads(model, data)?) } else { None };
    for node in &model.arch.nodes {
        let out = deps.units(&node.name);
        let is_bn = matches!(node.op, Op::BatchNorm1d(_) | Op::BatchNorm2d(_));
        let is_layer = matches!(node.op, Op::Linear(_) | Op::Conv1d(_) | Op::Conv2d(_));
        if c == Criterion::BnScale {
            if is_bn && model.params.contains_key(&node.param("weight")) {
                let g: Vec<f32> = model.p(&node.param("weight")).to_vec1()?;
                for (j, u) in out.iter().enumerate() {
                    if let Some(s) = score.get_mut(u) {
                        *s += g[j].abs() as f64;
                    }
                }
            }
            continue;
        }
        if !is_layer {
            continue;
        }
        let w = model.p(&node.param("weight"));
        let dims = w.dims().to_vec();
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let gv: Option<Vec<f32>> = grads.as_ref().map(|g| g.get(&node.name).cloned().unwrap_or_else(|| vec![0.0; wv.len()]));
        let term = |i: usize| -> f64 {
            let x = wv[i] as f64;
            match (c, &gv) {
                (Criterion::L1, _) => x.abs(),
                (Criterion::L2, _) => x * x,
                (Criterion::Taylor, Some(g)) => (x * g[i] as f64).abs(),
                _ => 0.0,
            }
        };
        let (o, i_ch) = (dims[0], dims.get(1).copied().unwrap_or(1));
        let inner: usize = dims[2..].iter().product();
        // Output rows.
        for (j, u) in out.iter().enumerate().take(o) {
            if let Some(s) = score.get_mut(u) {
                *s += (j * i_ch * inner..(j + 1) * i_ch * inner).map(term).sum::<f64>();
            }
        }
        // Input columns (not for depthwise convs, whose rows are their inputs' channels).
        let rank1_in = model.graph.shapes[&node.inputs[0]].len() == 1 || !matches!(node.op, Op::Linear(_));
        if !is_depthwise(&node.op) && rank1_in {
            let ins = deps.units(&node.inputs[0]);
            if ins.len() == i_ch {
                for (j, u) in ins.iter().enumerate() {
                    if let Some(s) = score.get_mut(u) {
                        *s += (0..o).flat_map(|r| (r * i_ch + j) * inner..(r * i_ch + j + 1) * inner).map(term).sum::<f64>();
                    }
                }
            }
        }
    }
    if c == Criterion::L2 {
        score.values_mut().for_each(|v| *v = v.sqrt());
    }
    Ok(score)
}

/// Gradients of the mean cross-entropy over (up to 256 samples of) `data` w.r.t. each
/// conv/linear weight.
fn weight_grads(model: &Model, data: Option<&Dataset>) -> Result<BTreeMap<String, Vec<f32>>> {
    let data = data.ok_or_else(|| WickError::invalid("--criterion taylor", "needs data: give --train"))?;
    let d = data.head(256)?;
    let logits = model.forward(&d.x, Mode::Eval)?;
    let loss = crate::train::loss::cross_entropy(&logits, &d.y)?;
    let grads = loss.backward()?;
    let mut out = BTreeMap::new();
    for node in &model.arch.nodes {
        if let Some(v) = model.params.get(&node.param("weight")) {
            if let Some(g) = grads.get(v.as_tensor()) {
                out.insert(node.name.clone(), g.flatten_all()?.to_vec1()?);
            }
        }
    }
    Ok(out)
}
