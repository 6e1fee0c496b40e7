//! Surgery: physically remove pruned units from every tensor that carries them, producing a
//! smaller dense model with an updated architecture. Each node keeps the positions of its
//! input and output channel axes whose unit survives.

use super::deps::{is_depthwise, Deps};
use crate::error::Result;
use crate::model::arch::{rnn_params, ChannelAffineCfg, Op};
use crate::model::graph::sample_dim;
use crate::model::Model;
use candle_core::Tensor;
use std::collections::BTreeSet;

/// Positions of `node`'s channel axis whose unit is not removed.
fn keep(deps: &Deps, node: &str, removed: &BTreeSet<usize>) -> Vec<u32> {
    deps.units(node).iter().enumerate().filter(|(_, u)| !removed.contains(u)).map(|(i, _)| i as u32).collect()
}

fn select(t: &Tensor, idx: &[u32], dim: usize) -> Result<Tensor> {
    if idx.len() == t.dim(dim)? {
        return Ok(t.clone());
    }
    let ids = Tensor::from_vec(idx.to_vec(), idx.len(), t.device())?;
    Ok(t.index_select(&ids, dim)?.contiguous()?)
}

/// Whether a `channel_affine` reading `input` has the units as its features: its axis is the
/// one `deps` tracks them on (the last for a feature-last input, else the first).
fn affine_on_units(c: &ChannelAffineCfg, model: &Model, deps: &Deps, input: &str) -> bool {
    c.on_last_axis(model.graph.shapes[input].len()) == deps.feature_last.contains(input)
}

/// The model with `removed` units cut out.
pub fn remove_units(model: &Model, deps: &Deps, removed: &BTreeSet<usize>) -> Result<Model> {
    let mut tensors = model.tensors();
    let mut arch = model.arch.clone();
    for node in arch.nodes.iter_mut() {
        let name = node.name.clone();
        let kin = keep(deps, &node.inputs[0], removed);
        // Units on the input's last axis, which a conv does not read as its channels.
        let input_last = deps.feature_last.contains(&node.inputs[0]);
        // The input's shape and the axis `deps` tracks its units on.
        let in_shape = &model.graph.shapes[&node.inputs[0]];
        let units_axis = if input_last { in_shape.len().saturating_sub(1) } else { 0 };
        let kout = keep(deps, &name, removed);
        let mut sel = |suffix: &str, idx: &[u32], dim: usize| -> Result<()> {
            let key = format!("{name}.{suffix}");
            if let Some(t) = tensors.get(&key) {
                let t2 = select(t, idx, dim)?;
                tensors.insert(key, t2);
            }
            Ok(())
        };
        let depthwise = is_depthwise(&node.op);
        let gates = if matches!(node.op, Op::Gru(_)) { 3 } else { 4 };
        match &mut node.op {
            Op::Linear(c) => {
                sel("weight", &kout, 0)?;
                sel("bias", &kout, 0)?;
                if model.graph.shapes[&node.inputs[0]].len() == 1 || input_last {
                    sel("weight", &kin, 1)?;
                    c.in_features = kin.len();
                }
                c.out_features = kout.len();
            }
            Op::Conv2d(c) if depthwise => {
                sel("weight", &kout, 0)?;
                sel("bias", &kout, 0)?;
                (c.in_channels, c.out_channels, c.groups) = (kout.len(), kout.len(), kout.len());
            }
            Op::Conv1d(c) if depthwise => {
                sel("weight", &kout, 0)?;
                sel("bias", &kout, 0)?;
                (c.in_channels, c.out_channels, c.groups) = (kout.len(), kout.len(), kout.len());
            }
            Op::Conv2d(c) if c.groups == 1 => {
                sel("weight", &kout, 0)?;
                sel("bias", &kout, 0)?;
                c.out_channels = kout.len();
                if !input_last {
                    sel("weight", &kin, 1)?;
                    c.in_channels = kin.len();
                }
            }
            Op::Conv1d(c) if c.groups == 1 => {
                sel("weight", &kout, 0)?;
                sel("bias", &kout, 0)?;
                c.out_channels = kout.len();
                if !input_last {
                    sel("weight", &kin, 1)?;
                    c.in_channels = kin.len();
                }
            }
            // A token table's features are its columns.
            Op::Embedding(c) => {
                sel("weight", &kout, 1)?;
                c.embedding_dim = kout.len();
            }
            Op::BatchNorm1d(c) | Op::BatchNorm2d(c) => {
                for s in ["weight", "bias", "running_mean", "running_var"] {
                    sel(s, &kout, 0)?;
                }
                c.num_features = kout.len();
            }
            Op::ChannelAffine(c) if affine_on_units(c, model, deps, &node.inputs[0]) => {
                sel("weight", &kout, 0)?;
                sel("bias", &kout, 0)?;
                c.num_features = kout.len();
            }
            // Only InstanceNorm's channels are pruned: analysis keeps a group's channels whole.
            Op::GroupNorm(c) if c.num_groups == c.num_channels => {
                if c.affine {
                    sel("weight", &kout, 0)?;
                    sel("bias", &kout, 0)?;
                }
                (c.num_groups, c.num_channels) = (kout.len(), kout.len());
            }
            Op::Prelu(c) if c.num_parameters > 1 => {
                sel("weight", &kout, 0)?;
                c.num_parameters = kout.len();
            }
            Op::Gru(c) | Op::Lstm(c) => {
                // Kept hidden units (the first direction's positions) and their rows in every
                // gate block.
                let h = c.hidden_size;
                let kept: Vec<u32> = kout.iter().copied().filter(|&p| (p as usize) < h).collect();
                let rows: Vec<u32> = (0..gates as u32).flat_map(|b| kept.iter().map(move |&j| b * h as u32 + j)).collect();
                for k in 0..c.num_layers {
                    for reverse in (0..c.dirs()).map(|d| d == 1) {
                        let [w_ih, w_hh, b_ih, b_hh] = rnn_params(k, reverse);
                        for p in [w_ih, w_hh, b_ih, b_hh] {
                            sel(p, &rows, 0)?;
                        }
                        sel(w_hh, &kept, 1)?;
                        match (k, input_last) {
                            (0, true) => sel(w_ih, &kin, 1)?,
                            (0, false) => {}
                            _ => sel(w_ih, &kout, 1)?,
                        }
                    }
                }
                if input_last {
                    c.input_size = kin.len();
                }
                c.hidden_size = kept.len();
            }
            Op::Narrow(c) if sample_dim(c.dim, in_shape.len()) == Ok(units_axis) => {
                // A run of the units' axis (`deps`): it starts after the kept positions before it
                // and holds its kept ones.
                if let Ok(first) = c.first(in_shape[units_axis]) {
                    let end = first + c.length;
                    c.start = kin.iter().filter(|&&p| (p as usize) < first).count() as i64;
                    c.length = kin.iter().filter(|&&p| (first..end).contains(&(p as usize))).count();
                }
            }
            Op::Attention(c) if input_last => {
                // Whole heads go (`deps`); their width, and so the default scale, stays.
                c.num_heads = kin.len() / (in_shape[units_axis] / c.num_heads.max(1)).max(1);
            }
            Op::Reshape(c) => {
                // Its first axis carries the channels' ids (`deps`): its size is the kept positions.
                if let Some(d) = c.shape.first_mut().filter(|d| **d > 0) {
                    *d = kout.len() as i64;
                }
            }
            _ => {}
        }
    }
    Model::new(arch, tensors, &model.source)
}

/// Sets to zero every parameter that produces the `units` (conv/linear output rows and biases,
/// BatchNorm scale and shift, a recurrent hidden unit's gate rows, an embedding table's
/// columns), so those channels output exactly zero. Used to
/// check surgery: pruning zeroed channels must not change the outputs.
pub fn zero_units(model: &Model, deps: &Deps, units: &BTreeSet<usize>) -> Result<()> {
    for node in &model.arch.nodes {
        let out = deps.units(&node.name);
        let rows: Vec<usize> = out.iter().enumerate().filter(|(_, u)| units.contains(u)).map(|(i, _)| i).collect();
        if rows.is_empty() {
            continue;
        }
        if let Op::Embedding(e) = &node.op {
            // The table's columns: each token's row then holds zeros there.
            let v = &model.params[&node.param("weight")];
            let t = v.as_tensor();
            let mut data: Vec<f32> = t.flatten_all()?.to_vec1()?;
            data.chunks_mut(e.embedding_dim).for_each(|row| rows.iter().for_each(|&j| row[j] = 0.0));
            v.set(&Tensor::from_vec(data, t.dims(), t.device())?)?;
            continue;
        }
        let mut zero: Vec<(String, Vec<usize>)> = match &node.op {
            Op::ChannelAffine(c) if !affine_on_units(c, model, deps, &node.inputs[0]) => vec![],
            Op::Linear(_) | Op::Conv1d(_) | Op::Conv2d(_) | Op::BatchNorm1d(_) | Op::BatchNorm2d(_) | Op::ChannelAffine(_) => {
                ["weight", "bias"].iter().map(|s| (node.param(s), rows.clone())).collect()
            }
            // InstanceNorm maps a zero channel to its bias: zeroed too, the channel stays 0.
            Op::GroupNorm(c) if c.affine => ["weight", "bias"].iter().map(|s| (node.param(s), rows.clone())).collect(),
            // Every gate's rows of a hidden unit: its state then stays 0 (GRU: n = 0 and
            // h' = h/2; LSTM: g = 0 and c' = c/2).
            Op::Gru(c) | Op::Lstm(c) => {
                let gates = if matches!(node.op, Op::Gru(_)) { 3 } else { 4 };
                let unit_rows: Vec<usize> = (0..gates).flat_map(|b| rows.iter().filter(|&&r| r < c.hidden_size).map(move |&j| b * c.hidden_size + j)).collect();
                let params = (0..c.num_layers).flat_map(|k| (0..c.dirs()).flat_map(move |d| rnn_params(k, d == 1)));
                params.map(|p| (node.param(p), unit_rows.clone())).collect()
            }
            _ => vec![],
        };
        for (name, rows) in zero.drain(..) {
            let Some(v) = model.params.get(&name) else { continue };
            let t = v.as_tensor();
            let dims = t.dims().to_vec();
            let per: usize = dims[1..].iter().product();
            let mut data: Vec<f32> = t.flatten_all()?.to_vec1()?;
            for &r in &rows {
                data[r * per..(r + 1) * per].iter_mut().for_each(|x| *x = 0.0);
            }
            v.set(&Tensor::from_vec(data, dims, t.device())?)?;
        }
    }
    Ok(())
}
