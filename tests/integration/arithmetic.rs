//! Arithmetic with constants inside a model, as deployed models carry it: an input normalised by
//! per-channel buffers `(x − mean) / std`, `y · 0.5 + y`, a clamp, `· 2 − 1`, `/ 3 + 1`. ONNX's
//! `Sub`, `Div`, `Mul` and `Add` with a scalar or a per-channel constant import as the
//! `channel_affine` op, and a `Clip` to any bounds as `hardtanh`
//! (`fixtures/onnx/make_input_arithmetic.py`); both train, prune and run compiled, as do the ELU
//! family's activations (`fixtures/models/make_elementwise_cases.py`).

use crate::common::*;
use candle_core::Tensor;
use wick::model::arch::Op;
use wick::model::forward::Mode;
use wick::runtime::plan::Plan;
use wick::tensor_file::TensorFile;

/// Both exporters' graphs give PyTorch's logits within 1e-5, with the normalisation's `Sub` and
/// `Div` as one node and each other run of arithmetic as one: four `channel_affine` nodes and
/// the `Clip(−0.5, 1)` a `hardtanh`, none left to candle; wick's own export of the import reads
/// back to the same logits.
#[test]
fn arithmetic_with_constants_imports_as_channel_affine_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("onnx/input_arithmetic.data.safetensors");
    for e in ["legacy", "dynamo"] {
        let model = fixture(&format!("onnx/input_arithmetic.{e}.onnx"));
        assert_matches_pytorch(&model, &data, dir.path(), e);
        let m = load(&model);
        let affine: Vec<&str> = m.arch.nodes.iter().filter(|n| matches!(n.op, Op::ChannelAffine(_))).map(|n| n.name.as_str()).collect();
        assert_eq!(affine.len(), 4, "{e}: {affine:?}");
        let clamps: Vec<(f64, f64)> = m.arch.nodes.iter().filter_map(|n| if let Op::Hardtanh(c) = &n.op { Some((c.min_val, c.max_val)) } else { None }).collect();
        assert_eq!(clamps, [(-0.5, 1.0)], "{e}");
        assert_eq!(Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{e}");
        let exported = dir.path().join(format!("{e}.onnx"));
        run_expect(&["export", model.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
        assert_matches_pytorch(&exported, &data, dir.path(), &format!("{e}, exported by wick"));
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
/// channel of a conv1d's output, hardtanh, ELU, SELU and CELU. Each float plan equals candle's
/// forward within 1e-5 and PyTorch's eval logits within 1e-4, and so does wick's ONNX export of
/// the case read back (`Mul` and `Add`, `Clip`, `Elu`, `Selu`, `Celu`); each INT8 model's integer
/// runtime equals its scalar reference bit for bit. Pruning the conv1d's channels prunes the `channel_affine` after it
/// with them.
#[test]
fn elementwise_ops_run_compiled_and_channel_affine_prunes_with_its_channels() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["channel_affine_input_norm", "channel_affine_features", "act_hardtanh", "act_elu", "act_selu", "act_celu"] {
        let (_, x, _) = assert_case_runs_compiled(case);
        let path = fixture(&format!("reference/gradients/{case}.safetensors"));
        let exported = dir.path().join(format!("{case}.onnx"));
        run_expect(&["export", path.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
        let back: Vec<f32> = load(&exported).forward(&x, Mode::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let eval = TensorFile::read(&path).unwrap().f32("eval_logits").unwrap();
        assert!(max_abs_diff(&back, &eval) <= 1e-4, "{case} through ONNX: {}", max_abs_diff(&back, &eval));
    }
    use wick::passes::prune_channels::{apply, plan, PruneConfig};
    let m = load(&fixture("reference/gradients/channel_affine_features.safetensors"));
    let cfg = PruneConfig { ratio: 0.5, criterion: wick::passes::prune_channels::importance::Criterion::L1, global: false, round_to: 1, min_channels: 1, ignore: vec![], seed: 0 };
    let pruned = apply(&m, &plan(&m, &cfg, None).unwrap()).unwrap();
    let Some(Op::ChannelAffine(c)) = pruned.arch.node("affine").map(|n| n.op.clone()) else { panic!("affine is a channel_affine") };
    assert_eq!(c.num_features, 2);
    assert_eq!(pruned.params["affine.weight"].as_tensor().dims(), [2]);
    assert_eq!(pruned.forward(&Tensor::zeros((3, 3, 7), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(), Mode::Eval).unwrap().dims(), [3, 10]);
}
