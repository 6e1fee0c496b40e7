//! Channel importance, summed over every member of a unit: the producing conv/linear rows, the
//! consuming conv/linear columns, depthwise rows, BatchNorm scales, a recurrent hidden unit's
//! gate rows and state columns in every layer and direction, and an embedding table's column.
//! - `l1`: `Σ |w|`; `l2`: `√(Σ w²)` over the unit's slices;
//! - `bn_scale`: `Σ |γ|` of the unit's BatchNorms (network slimming);
//! - `taylor`: `Σ |w · ∂L/∂w|` (first-order Taylor estimate of the loss change), gradients of the
//!   cross-entropy over the given batches;
//! - `random`: a seeded uniform draw (a baseline).

use super::deps::{is_depthwise, Deps};
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::arch::{rnn_params, Op};
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
        // The weight's values and, for `taylor`, their gradients.
        let values = |param: &str| -> Result<(Vec<f32>, Option<Vec<f32>>)> {
            let wv: Vec<f32> = model.p(param).flatten_all()?.to_vec1()?;
            let gv = grads.as_ref().map(|g| g.get(param).cloned().unwrap_or_else(|| vec![0.0; wv.len()]));
            Ok((wv, gv))
        };
        if let Op::Gru(rc) | Op::Lstm(rc) = &node.op {
            let ins = deps.units(&node.inputs[0]);
            let input_tracked = deps.feature_last.contains(&node.inputs[0]);
            for k in 0..rc.num_layers {
                for reverse in (0..rc.dirs()).map(|d| d == 1) {
                    let [w_ih, w_hh, ..] = rnn_params(k, reverse);
                    for (p, cols) in [(w_ih, if k == 0 { input_tracked.then_some(&ins) } else { Some(&out) }), (w_hh, Some(&out))] {
                        let (wv, gv) = values(&node.param(p))?;
                        let inp = wv.len() / (rc.hidden_size * if matches!(node.op, Op::Gru(_)) { 3 } else { 4 });
                        // Each entry counts for its row's hidden unit and its column's unit.
                        for (i, &x) in wv.iter().enumerate() {
                            let t = term(c, x, gv.as_ref().map(|g| g[i]));
                            let (r, col) = (i / inp, i % inp);
                            for u in std::iter::once(out.get(r % rc.hidden_size)).chain(std::iter::once(cols.and_then(|cu| cu.get(col)))).flatten() {
                                if let Some(s) = score.get_mut(u) {
                                    *s += t;
                                }
                            }
                        }
                    }
                }
            }
            continue;
        }
        if let Op::Embedding(e) = &node.op {
            // Unit j is the table's column j: `Σ_v term(w[v, j])`.
            let (wv, gv) = values(&node.param("weight"))?;
            for (i, &x) in wv.iter().enumerate() {
                if let Some(s) = out.get(i % e.embedding_dim).and_then(|u| score.get_mut(u)) {
                    *s += term(c, x, gv.as_ref().map(|g| g[i]));
                }
            }
            continue;
        }
        if !is_layer {
            continue;
        }
        let w = model.p(&node.param("weight"));
        let dims = w.dims().to_vec();
        let (wv, gv) = values(&node.param("weight"))?;
        let term = |i: usize| -> f64 { term(c, wv[i], gv.as_ref().map(|g| g[i])) };
        let (o, i_ch) = (dims[0], dims.get(1).copied().unwrap_or(1));
        let inner: usize = dims[2..].iter().product();
        // Output rows.
        for (j, u) in out.iter().enumerate().take(o) {
            if let Some(s) = score.get_mut(u) {
                *s += (j * i_ch * inner..(j + 1) * i_ch * inner).map(term).sum::<f64>();
            }
        }
        // Input columns (not for depthwise convs, whose rows are their inputs' channels).
        let reads_units = !matches!(node.op, Op::Linear(_)) || model.graph.shapes[&node.inputs[0]].len() == 1 || deps.feature_last.contains(&node.inputs[0]);
        if !is_depthwise(&node.op) && reads_units {
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

/// One weight entry's term: `|w|` (l1), `w²` (l2), `|w·g|` (taylor).
fn term(c: Criterion, w: f32, g: Option<f32>) -> f64 {
    let x = w as f64;
    match (c, g) {
        (Criterion::L1, _) => x.abs(),
        (Criterion::L2, _) => x * x,
        (Criterion::Taylor, Some(g)) => (x * g as f64).abs(),
        _ => 0.0,
    }
}

/// Gradients of the mean cross-entropy over (up to 256 samples of) `data` w.r.t. each
/// conv/linear weight and recurrent matrix, by parameter name.
fn weight_grads(model: &Model, data: Option<&Dataset>) -> Result<BTreeMap<String, Vec<f32>>> {
    let data = data.ok_or_else(|| WickError::invalid("--criterion taylor", "needs data: give --train"))?;
    let d = data.head(256)?;
    let logits = model.forward(&d.x, Mode::Eval)?;
    let loss = crate::train::loss::cross_entropy(&logits, &d.y)?;
    let grads = loss.backward()?;
    let mut out = BTreeMap::new();
    for unit in crate::model::qunit::units(model) {
        if let Some(g) = model.params.get(&unit.weight).and_then(|v| grads.get(v.as_tensor())) {
            out.insert(unit.weight, g.flatten_all()?.to_vec1()?);
        }
    }
    Ok(out)
}
