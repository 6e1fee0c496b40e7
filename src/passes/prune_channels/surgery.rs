//! Surgery: physically remove pruned units from every tensor that carries them, producing a
//! smaller dense model with an updated architecture. Each node keeps the positions of its
//! input and output channel axes whose unit survives.

use super::deps::{is_depthwise, Deps};
use crate::error::Result;
use crate::model::arch::Op;
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

/// The model with `removed` units cut out.
pub fn remove_units(model: &Model, deps: &Deps, removed: &BTreeSet<usize>) -> Result<Model> {
    let mut tensors = model.tensors();
    let mut arch = model.arch.clone();
    for node in arch.nodes.iter_mut() {
        let name = node.name.clone();
        let kin = keep(deps, &node.inputs[0], removed);
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
        match &mut node.op {
            Op::Linear(c) => {
                sel("weight", &kout, 0)?;
                sel("bias", &kout, 0)?;
                if model.graph.shapes[&node.inputs[0]].len() == 1 {
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
                sel("weight", &kin, 1)?;
                sel("bias", &kout, 0)?;
                (c.in_channels, c.out_channels) = (kin.len(), kout.len());
            }
            Op::Conv1d(c) if c.groups == 1 => {
                sel("weight", &kout, 0)?;
                sel("weight", &kin, 1)?;
                sel("bias", &kout, 0)?;
                (c.in_channels, c.out_channels) = (kin.len(), kout.len());
            }
            Op::BatchNorm1d(c) | Op::BatchNorm2d(c) => {
                for s in ["weight", "bias", "running_mean", "running_var"] {
                    sel(s, &kout, 0)?;
                }
                c.num_features = kout.len();
            }
            _ => {}
        }
    }
    Model::new(arch, tensors, &model.source)
}

/// Sets to zero every parameter that produces the `units` (conv/linear output rows and biases,
/// BatchNorm scale and shift), so those channels output exactly zero after BatchNorm. Used to
/// check surgery: pruning zeroed channels must not change the outputs.
pub fn zero_units(model: &Model, deps: &Deps, units: &BTreeSet<usize>) -> Result<()> {
    for node in &model.arch.nodes {
        let out = deps.units(&node.name);
        let rows: Vec<usize> = out.iter().enumerate().filter(|(_, u)| units.contains(u)).map(|(i, _)| i).collect();
        if rows.is_empty() {
            continue;
        }
        let suffixes: &[&str] = match &node.op {
            Op::Linear(_) | Op::Conv1d(_) | Op::Conv2d(_) => &["weight", "bias"],
            Op::BatchNorm1d(_) | Op::BatchNorm2d(_) => &["weight", "bias"],
            _ => &[],
        };
        for s in suffixes {
            let Some(v) = model.params.get(&node.param(s)) else { continue };
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
