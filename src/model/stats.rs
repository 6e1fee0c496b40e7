//! Per-node statistics of a model: output shape, parameter count, multiply-accumulates per sample
//! and parameter bytes. MACs count conv and linear layers (the work that matters on CPUs):
//! linear `in·out·rows`, conv `out·(in/groups)·k·out_positions`. Uses `model`.

use super::arch::Op;
use super::Model;
use serde::Serialize;

/// One row of `wick inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    pub name: String,
    pub op: String,
    pub output_shape: Vec<usize>,
    /// Trained parameters (weights and biases; not BatchNorm running statistics), as PyTorch counts.
    pub params: usize,
    pub macs: u64,
    /// Bytes of every tensor the node owns, buffers included.
    pub bytes: u64,
}

/// Rows in execution order.
pub fn node_stats(model: &Model, bytes_per_param: impl Fn(&str) -> u64) -> Vec<NodeStats> {
    model
        .graph
        .order
        .iter()
        .map(|&i| {
            let node = &model.arch.nodes[i];
            let in_shape = node.inputs.first().map(|n| model.graph.shapes[n].clone()).unwrap_or_default();
            let out_shape = model.graph.shapes[&node.name].clone();
            let mut params = 0usize;
            let mut bytes = 0u64;
            for (s, trained) in node.op.param_suffixes() {
                let name = node.param(s);
                let n: usize = node.op.param_shape(s).iter().product();
                if trained {
                    params += n;
                }
                bytes += n as u64 * bytes_per_param(&name);
            }
            NodeStats { name: node.name.clone(), op: node.op.name(), output_shape: out_shape.clone(), params, macs: macs(&node.op, &in_shape, &out_shape), bytes }
        })
        .collect()
}

/// Multiply-accumulates per sample of one node.
pub fn macs(op: &Op, input: &[usize], output: &[usize]) -> u64 {
    match op {
        Op::Linear(c) => {
            let rows: usize = input[..input.len().saturating_sub(1)].iter().product();
            (c.in_features * c.out_features * rows.max(1)) as u64
        }
        Op::Conv1d(c) => (c.out_channels * (c.in_channels / c.groups) * c.kernel_size * output[1]) as u64,
        Op::Conv2d(c) => {
            let (kh, kw) = c.kernel_size.hw();
            (c.out_channels * (c.in_channels / c.groups) * kh * kw * output[1] * output[2]) as u64
        }
        // Per layer and direction, every step: G·H·(in + H) for the two projections.
        Op::Gru(c) | Op::Lstm(c) => {
            let gates = if matches!(op, Op::Gru(_)) { 3 } else { 4 };
            let steps = input.first().copied().unwrap_or(0);
            let per_step: usize = (0..c.num_layers).map(|k| gates * c.hidden_size * (if k == 0 { c.input_size } else { c.dirs() * c.hidden_size } + c.hidden_size)).sum();
            (steps * c.dirs() * per_step) as u64
        }
        // `q·kᵀ` and `probs·v`: L·L·D each.
        Op::Attention(_) => (2 * input[0] * input[0] * input[1]) as u64,
        _ => 0,
    }
}

/// Total trained parameters.
pub fn total_params(model: &Model) -> usize {
    node_stats(model, |_| 4).iter().map(|r| r.params).sum()
}

/// Total MACs per sample.
pub fn total_macs(model: &Model) -> u64 {
    node_stats(model, |_| 4).iter().map(|r| r.macs).sum()
}
