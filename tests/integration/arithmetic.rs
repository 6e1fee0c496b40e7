//! Arithmetic with constants inside a model, as deployed models carry it: an input normalised by
//! per-channel buffers `(x − mean) / std`, `y · 0.5 + y`, a clamp, `· 2 − 1`, `/ 3 + 1`. ONNX's
//! `Sub`, `Div`, `Mul` and `Add` with a scalar or a per-channel constant import as the
//! `channel_affine` op, and a `Clip` to any bounds as `hardtanh`
//! (`fixtures/onnx/make_input_arithmetic.py`); both train, prune and run compiled, as do the ELU
//! family's activations, softplus, Mish, softsign and PReLU (`fixtures/models/make_elementwise_cases.py`,
//! `fixtures/onnx/make_smooth_acts.py`, `fixtures/onnx/make_prelu.py`).

use crate::common::*;
use candle_core::Tensor;
use wick::model::arch::Op;
use wick::model::forward::Mode;

/// Both exporters' graphs give PyTorch's logits within 1e-5, with the normalisation's `Sub` and
/// `Div` as one node and each other run of arithmetic as one: four `channel_affine` nodes and
/// the `Clip(−0.5, 1)` a `hardtanh`, none left to candle; wick's own export of the import reads
/// back to the same logits.
#[test]
fn arithmetic_with_constants_imports_as_channel_affine_nodes() {
    let dir = tempfile::tempdir().unwrap();
    for (e, m) in assert_both_exports_import("input_arithmetic", dir.path()) {
        let affine: Vec<&str> = m.arch.nodes.iter().filter(|n| matches!(n.op, Op::ChannelAffine(_))).map(|n| n.name.as_str()).collect();
        assert_eq!(affine.len(), 4, "{e}: {affine:?}");
        let clamps: Vec<(f64, f64)> = m.arch.nodes.iter().filter_map(|n| if let Op::Hardtanh(c) = &n.op { Some((c.min_val, c.max_val)) } else { None }).collect();
        assert_eq!(clamps, [(-0.5, 1.0)], "{e}");
    }
}

/// Softplus (with a beta), Mish and softsign as both exporters write them (opset 17's
/// `Mul`/`Softplus`/`Div`, `Softplus`·`Tanh`·`Mul` and `Abs`/`Add`/`Div`; dynamo's `Mish` and
/// `Greater`/`Where` switch) read as one node each, give PyTorch's logits within 1e-5 on the
/// compiled plan with no candle step, and read back from wick's own export to the same logits.
#[test]
fn smooth_activations_import_as_one_node_each() {
    let dir = tempfile::tempdir().unwrap();
    for (e, m) in assert_both_exports_import("smooth_acts", dir.path()) {
        let ops: Vec<String> = m.arch.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(ops, ["conv2d", "softplus", "conv2d", "mish", "conv2d", "softsign", "conv2d", "softplus", "global_avg_pool", "linear"], "{e}");
        let softplus: Vec<(f64, f64)> = m.arch.nodes.iter().filter_map(|n| if let Op::Softplus(c) = &n.op { Some((c.beta, c.threshold)) } else { None }).collect();
        assert_eq!(softplus, [(2.0, 20.0), (1.0, 20.0)], "{e}");
    }
}

/// PReLU from both exporters (its slope `[C, 1, 1]` or `[1, C, 1, 1]` after a conv, `[1, 1, 1]`
/// shared, `[16]` or `[1, 16]` after a linear) imports as `prelu` nodes with PyTorch's logits
/// within 1e-5, compiled with no candle step, and reads back from wick's own export.
#[test]
fn prelu_imports_with_a_slope_per_channel_or_one() {
    let dir = tempfile::tempdir().unwrap();
    for (e, m) in assert_both_exports_import("prelu", dir.path()) {
        let slopes: Vec<usize> = m.arch.nodes.iter().filter_map(|n| if let Op::Prelu(c) = &n.op { Some(c.num_parameters) } else { None }).collect();
        assert_eq!(slopes, [8, 1, 16], "{e}");
    }
}

/// A constant that is neither a scalar nor along the channel axis (one value per pixel) is
/// refused, naming the node and the constant's shape.
#[test]
fn a_constant_across_positions_is_refused_by_name() {
    use prost::Message;
    let mut p = crate::onnx::read_proto(&fixture("onnx/input_arithmetic.legacy.onnx"));
    let g = p.graph.as_mut().unwrap();
    let sub = g.node.iter_mut().find(|n| n.op_type == "Sub").unwrap();
    sub.name = "subtract_grid".into();
    let mean = sub.input[1].clone();
    let t = g.initializer.iter_mut().find(|i| i.name == mean).unwrap();
    (t.dims, t.raw_data, t.float_data) = (vec![1, 1, 8, 8], vec![], vec![0.5; 64]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.onnx");
    std::fs::write(&path, p.encode_to_vec()).unwrap();
    let (_, err) = run_expect(&["inspect", path.to_str().unwrap()], 2);
    assert!(err.contains("subtract_grid") && err.contains("[1, 1, 8, 8]") && err.contains("channel axis"), "{err}");
}

/// The oracle cases run compiled: an input normalisation before a conv, a scale and shift per
/// channel of a conv1d's output, hardtanh, ELU, SELU, CELU, softplus (beta 2, threshold 1.5),
/// Mish, softsign and PReLU (a slope per channel, and one for all). Each float plan equals candle's forward within 1e-5 and PyTorch's eval
/// logits within 1e-4, and so does wick's ONNX export of the case read back (`Mul` and `Add`,
/// `Clip`, `Elu`, `Selu`, `Celu`, `Softplus` with `Greater`/`Where`, `Softplus`·`Tanh`·`Mul`,
/// `Softsign`, `PRelu`); each INT8 model's integer
/// runtime equals its scalar reference bit for bit. Pruning the conv1d's channels prunes the `channel_affine` after it
/// with them.
#[test]
fn elementwise_ops_run_compiled_and_channel_affine_prunes_with_its_channels() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["channel_affine_input_norm", "channel_affine_features", "act_hardtanh", "act_elu", "act_selu", "act_celu", "act_softplus", "act_mish", "act_softsign", "prelu"] {
        assert_case_runs_compiled_and_through_onnx(case, dir.path());
    }
    use wick::passes::prune_channels::{apply, plan, PruneConfig};
    let m = load(&fixture("reference/gradients/channel_affine_features.safetensors"));
    let cfg = PruneConfig { ratio: 0.5, criterion: wick::passes::prune_channels::importance::Criterion::L1, global: false, round_to: 1, min_channels: 1, ignore: vec![], heads: false, seed: 0 };
    let pruned = apply(&m, &plan(&m, &cfg, None).unwrap()).unwrap();
    let Some(Op::ChannelAffine(c)) = pruned.arch.node("affine").map(|n| n.op.clone()) else { panic!("affine is a channel_affine") };
    assert_eq!(c.num_features, 2);
    assert_eq!(pruned.params["affine.weight"].as_tensor().dims(), [2]);
    assert_eq!(pruned.forward(&Tensor::zeros((3, 3, 7), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(), Mode::Eval).unwrap().dims(), [3, 10]);
}
