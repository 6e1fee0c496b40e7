//! Constant padding (`pad`): causal dilated convs padded on the left only, each side of a 2-d
//! input its own width, padded channels; on the `digits_tcn` teacher and the oracle cases made by
//! `fixtures/models/make_digits_tcn.py`.

use crate::common::*;
use wick::model::arch::Op;
use wick::model::forward::Mode;
use wick::runtime::plan::Plan;

const TCN: Teacher = Teacher { name: "digits_tcn", data: "digits_seq" };

/// The teacher from its safetensors, from both PyTorch exporters' ONNX (the legacy one writes
/// `Pad` after a chain of constant ops; the dynamo one puts the left-only padding in the conv's
/// own `pads`) and from wick's own ONNX export evaluates to PyTorch's logits within 1e-4 with its
/// accuracy (351/360), on the compiled float runtime with no step left to candle. Each import
/// holds a `pad` node before each of the four causal convs, which the compiled runtimes run as
/// the convs' own padding taps; the INT8 model's integer runtime (pads folded) equals the scalar
/// reference (pads run as nodes) bit for bit.
#[test]
fn a_causal_tcn_matches_pytorch_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("tcn.onnx");
    run_expect(&["export", TCN.path().to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    let ops: Vec<String> = crate::onnx::read_proto(&exported).graph.unwrap().node.iter().map(|n| n.op_type.clone()).collect();
    assert_eq!(ops.iter().filter(|o| *o == "Pad").count(), 4, "{ops:?}");
    let sources = [TCN.path(), fixture("onnx/digits_tcn.legacy.onnx"), fixture("onnx/digits_tcn.dynamo.onnx"), exported];
    for model in &sources {
        TCN.assert_evals_as_pytorch(model, 351, dir.path());
        let m = load(model);
        let pads: Vec<Vec<usize>> = m.arch.nodes.iter().filter_map(|n| if let Op::Pad(c) = &n.op { Some(c.padding.clone()) } else { None }).collect();
        assert_eq!(pads, [[2, 0], [4, 0], [8, 0], [16, 0]], "{}", model.display());
        let plan = Plan::float(&m).unwrap();
        assert_eq!(plan.candle_steps(), Vec::<&str>::new(), "{}", model.display());
        assert_eq!(plan.folded_pads().len(), 4, "{}", model.display());
    }
    ptq_runs_bit_exact(&load(&TCN.path()), &TCN.split("test"));
}

/// The oracle cases' pads run compiled: left-only on a `[C, L]` input (folded into the conv),
/// each side of a `[C, H, W]` input its own width with the value 0.5, and channels added to a
/// conv's channels-last output (each a step of its own).
/// Each float plan equals candle's forward within 1e-5, and each INT8 model's integer runtime its
/// scalar reference bit for bit.
#[test]
fn every_pad_runs_compiled() {
    for (case, folded) in [("pad1d_causal", vec![("pad", "conv")]), ("pad2d_asymmetric_value", vec![]), ("pad_channels", vec![])] {
        let (_, _, plan) = assert_case_runs_compiled(case);
        assert_eq!(plan.folded_pads(), folded, "{case}");
    }
}

/// Pruning sees through a pad of the time axis (the causal convs' channels are pruned, their
/// pads kept) and keeps channels a pad adds to whole: in `pad_channels`, the conv whose output is
/// padded on the channel axis has no prunable group.
#[test]
fn pruning_passes_time_padding_and_keeps_padded_channels_whole() {
    use wick::passes::prune_channels::{deps::analyse, plan, PruneConfig};
    let tcn = load(&TCN.path());
    let groups: Vec<Vec<String>> = analyse(&tcn).groups.iter().map(|g| g.producers.clone()).collect();
    for conv in ["c0", "c1", "c2", "pw"] {
        assert!(groups.iter().any(|g| g.iter().any(|p| p == conv)), "{conv} in no group of {groups:?}");
    }
    let cfg = PruneConfig { ratio: 0.5, criterion: wick::passes::prune_channels::importance::Criterion::L1, global: false, round_to: 1, min_channels: 1, ignore: vec![], heads: false, seed: 0 };
    let p = plan(&tcn, &cfg, None).unwrap();
    let pruned = wick::passes::prune_channels::apply(&tcn, &p).unwrap();
    let x = TCN.dataset("test").x.narrow(0, 0, 16).unwrap();
    assert_eq!(pruned.forward(&x, Mode::Eval).unwrap().dims(), [16, 10]);
    assert!(wick::model::stats::total_params(&pruned) < wick::model::stats::total_params(&tcn));
    let Some(Op::Conv1d(c2)) = pruned.arch.node("c2").map(|n| n.op.clone()) else { panic!("c2 is a conv1d") };
    assert_eq!(c2.out_channels, 16);
    let padded = load(&fixture("reference/gradients/pad_channels.safetensors"));
    assert!(analyse(&padded).groups.iter().all(|g| !g.producers.iter().any(|p| p == "conv")), "{:?}", analyse(&padded).groups.iter().map(|g| &g.producers).collect::<Vec<_>>());
}

/// `ptq-int8` loses at most 0.3 point on the causal TCN; `edge-int8` (one epoch per pass) passes
/// its 1-point gate, and every causal conv of the artifact keeps its left-only pad.
#[test]
fn a_causal_tcn_compresses() {
    let dir = tempfile::tempdir().unwrap();
    for recipe in ["ptq-int8", "edge-int8"] {
        let (_, q) = TCN.compress_within_gate(recipe, &dir.path().join(recipe));
        let pads = q.model.arch.nodes.iter().filter(|n| matches!(&n.op, Op::Pad(c) if c.padding[1] == 0 && c.padding[0] > 0)).count();
        assert_eq!(pads, 4, "{recipe}");
    }
}
