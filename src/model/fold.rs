//! Folding BatchNorm into the layer before it, for the `fold_batchnorm` pass and the compiled
//! float runtime: a conv or linear followed by a BatchNorm that only it feeds becomes one layer.
//! With `k_c = γ_c / √(σ²_c + eps)`: `W'_c = k_c · W_c` and `b'_c = (b_c − μ_c) · k_c + β_c`.
//! Eval-mode outputs are unchanged up to float rounding.

use crate::error::Result;
use crate::model::arch::{Node, Op};
use crate::model::Model;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// What the pass did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoldReport {
    /// `(layer, batchnorm)` pairs folded.
    pub folded: Vec<(String, String)>,
}

/// Folds every foldable BatchNorm; returns the new model and what was folded.
pub fn fold_batchnorm(model: &Model) -> Result<(Model, FoldReport)> {
    let arch = &model.arch;
    let consumers = |name: &str| arch.nodes.iter().filter(|n| n.inputs.iter().any(|i| i == name)).count() + (arch.output_name() == name) as usize;
    let mut tensors = model.tensors();
    let mut renames: BTreeMap<String, String> = BTreeMap::new();
    let mut removed = std::collections::BTreeSet::new();
    let mut new_ops: BTreeMap<String, Op> = BTreeMap::new();
    let mut folded = vec![];
    for bn in &arch.nodes {
        let (Op::BatchNorm1d(c) | Op::BatchNorm2d(c)) = &bn.op else { continue };
        let Some(prev) = arch.node(&bn.inputs[0]) else { continue };
        let out_ch = match &prev.op {
            Op::Conv1d(p) => p.out_channels,
            Op::Conv2d(p) => p.out_channels,
            // A linear's features sit on the last axis; BatchNorm1d normalises axis 1: the same
            // axis only for 2-d activations.
            Op::Linear(p) if model.graph.shapes[&prev.name].len() == 1 => p.out_features,
            _ => continue,
        };
        if consumers(&prev.name) != 1 || arch.output_name() == prev.name {
            continue;
        }
        let mean = model.p(&bn.param("running_mean"));
        let var = model.p(&bn.param("running_var"));
        let k = (var + c.eps)?.sqrt()?.recip()?;
        let (k, beta) = if c.affine { (k.mul(model.p(&bn.param("weight")))?, model.p(&bn.param("bias")).clone()) } else { (k, mean.zeros_like()?) };
        let w = model.p(&prev.param("weight"));
        let mut kshape = vec![1usize; w.rank()];
        kshape[0] = out_ch;
        let w2 = w.broadcast_mul(&k.reshape(kshape)?)?;
        let b = match tensors.get(&prev.param("bias")) {
            Some(b) => b.clone(),
            None => Tensor::zeros(out_ch, w.dtype(), w.device())?,
        };
        let b2 = ((b - mean)?.mul(&k)? + beta)?;
        tensors.insert(prev.param("weight"), w2);
        tensors.insert(prev.param("bias"), b2);
        for s in ["weight", "bias", "running_mean", "running_var"] {
            tensors.remove(&bn.param(s));
        }
        let mut op = prev.op.clone();
        match &mut op {
            Op::Conv1d(p) => p.bias = true,
            Op::Conv2d(p) => p.bias = true,
            Op::Linear(p) => p.bias = true,
            _ => unreachable!(),
        }
        new_ops.insert(prev.name.clone(), op);
        renames.insert(bn.name.clone(), prev.name.clone());
        removed.insert(bn.name.clone());
        folded.push((prev.name.clone(), bn.name.clone()));
    }
    let mut arch2 = arch.clone();
    arch2.nodes = arch
        .nodes
        .iter()
        .filter(|n| !removed.contains(&n.name))
        .map(|n| Node {
            name: n.name.clone(),
            inputs: n.inputs.iter().map(|i| renames.get(i).cloned().unwrap_or_else(|| i.clone())).collect(),
            op: new_ops.get(&n.name).cloned().unwrap_or_else(|| n.op.clone()),
        })
        .collect();
    if let Some(o) = &arch.output {
        arch2.output = Some(renames.get(o).cloned().unwrap_or_else(|| o.clone()));
    }
    let m = Model::new(arch2, tensors, &model.source)?;
    Ok((m, FoldReport { folded }))
}
