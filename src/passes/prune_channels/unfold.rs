//! BatchNorm put back after the convs an exporter folded it into, as the identity on the data:
//! for conv output channel `c` with mean `μ_c` and (biased) variance `σ²_c` over the samples,
//! running statistics `μ_c, σ²_c`, `γ_c = √(σ²_c + eps)` and `β_c = μ_c`, so that in eval mode
//! `(y − μ)/√(σ² + eps)·γ + β = y` and in training the batch statistics are close to these.
//! Pruning's recovery training then works on the normalised net the model was trained as (a
//! ResNet whose BatchNorms were folded recovers from a quarter of its channels pruned no better
//! than from none); `fold_batchnorm` folds them again.

use crate::data::Dataset;
use crate::error::Result;
use crate::model::arch::{BatchNormCfg, Node, Op};
use crate::model::forward::{Mode, Run};
use crate::model::Model;

/// The samples the statistics come from (the first of the data set).
const SAMPLES: usize = 512;

/// The model with an identity BatchNorm after every conv no BatchNorm reads, and the names of
/// the convs that got one; `None` when every conv has its BatchNorm.
pub fn unfold_batchnorm(model: &Model, data: &Dataset) -> Result<Option<(Model, Vec<String>)>> {
    let arch = &model.arch;
    let bare: Vec<&Node> = arch
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv1d(_) | Op::Conv2d(_)))
        .filter(|n| !arch.nodes.iter().any(|m| m.inputs.contains(&n.name) && matches!(m.op, Op::BatchNorm1d(_) | Op::BatchNorm2d(_))))
        .collect();
    if bare.is_empty() {
        return Ok(None);
    }
    let taps: Vec<String> = bare.iter().map(|n| n.name.clone()).collect();
    let (x, _) = data.slice(0, data.len().min(SAMPLES))?;
    let (_, values) = model.run(&x, &Run { mode: Mode::Eval, taps: &taps, hook: None, rng: None })?;
    let mut tensors = model.tensors();
    let mut nodes: Vec<Node> = vec![];
    let mut renamed = std::collections::BTreeMap::new();
    let taken: std::collections::BTreeSet<&str> = arch.nodes.iter().map(|n| n.name.as_str()).collect();
    for node in &arch.nodes {
        let mut n = node.clone();
        n.inputs = n.inputs.iter().map(|i| renamed.get(i).cloned().unwrap_or_else(|| i.clone())).collect();
        nodes.push(n);
        let Some(y) = values.get(&node.name) else { continue };
        let bn = (1..).map(|k| if k == 1 { format!("{}.bn", node.name) } else { format!("{}.bn{k}", node.name) }).find(|b| !taken.contains(b.as_str())).expect("a free name");
        // Per channel over every other axis: y [N, C, …] → [C, N·…].
        let c = y.dim(1)?;
        let per_channel = y.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
        let mean = per_channel.mean_keepdim(1)?;
        let var = per_channel.broadcast_sub(&mean)?.sqr()?.mean(1)?;
        let mean = mean.squeeze(1)?;
        let cfg = BatchNormCfg { num_features: c, eps: 1e-5, momentum: 0.1, affine: true };
        let gamma = (&var + cfg.eps)?.sqrt()?;
        for (s, t) in [("weight", gamma), ("bias", mean.clone()), ("running_mean", mean), ("running_var", var)] {
            tensors.insert(format!("{bn}.{s}"), t.to_dtype(candle_core::DType::F32)?);
        }
        let op = if y.rank() == 4 { Op::BatchNorm2d(cfg) } else { Op::BatchNorm1d(cfg) };
        nodes.push(Node { name: bn.clone(), inputs: vec![node.name.clone()], op });
        renamed.insert(node.name.clone(), bn);
    }
    let mut arch2 = arch.clone();
    arch2.nodes = nodes;
    arch2.output = Some(renamed.get(arch.output_name()).cloned().unwrap_or_else(|| arch.output_name().to_string()));
    let unfolded = Model::new(arch2, tensors, &model.source)?;
    Ok(Some((unfolded, taps)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::Arch;
    use candle_core::Tensor;

    /// The unfolded model computes what the folded one did (eval mode), with a BatchNorm after
    /// each bare conv (a 2-d one and a 1-d one, whose output is also the model's output) and
    /// none after a conv that has one.
    #[test]
    fn unfolding_is_the_identity_in_eval_mode() {
        let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [2, 6, 6]}, "nodes": [
            {"name": "a", "op": "conv2d", "inputs": ["input"], "in_channels": 2, "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "r", "op": "relu", "inputs": ["a"]},
            {"name": "b", "op": "conv2d", "inputs": ["r"], "in_channels": 4, "out_channels": 3, "kernel_size": 3},
            {"name": "bn", "op": "batchnorm2d", "inputs": ["b"], "num_features": 3},
            {"name": "f", "op": "flatten", "inputs": ["bn"], "start_dim": 2},
            {"name": "c", "op": "conv1d", "inputs": ["f"], "in_channels": 3, "out_channels": 5, "kernel_size": 2}], "output": "c"}"#;
        let arch = Arch::from_json(json, "t").unwrap();
        let model = crate::model::init::init_model(arch, 1).unwrap();
        let x = Tensor::rand(-1f32, 1f32, (9, 2, 6, 6), &candle_core::Device::Cpu).unwrap();
        let data = Dataset { name: "t".into(), x: x.clone(), y: vec![0; 9], sha256: String::new() };
        let (u, convs) = unfold_batchnorm(&model, &data).unwrap().unwrap();
        assert_eq!(convs, ["a", "c"]);
        assert!(u.arch.node("a.bn").is_some() && u.arch.node("c.bn").is_some() && u.arch.node("b.bn").is_none());
        assert_eq!(u.arch.output_name(), "c.bn");
        let run = |m: &Model| m.forward(&x, Mode::Eval).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) = (run(&model), run(&u));
        let d = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "{d}");
        assert!(unfold_batchnorm(&u, &data).unwrap().is_none(), "every conv has its BatchNorm now");
    }
}
