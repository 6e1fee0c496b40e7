//! MobileNetV3's building blocks: hardswish, hardsigmoid, LeakyReLU, squeeze-and-excitation gates
//! (`mul` of a value and its per-channel gate, `reshape` to `[C, 1, 1]`), other products, on the
//! `digits_mbnet` teacher and the oracle cases made by `fixtures/models/make_digits_mbnet.py`.

use crate::common::*;
use candle_core::Tensor;
use wick::model::arch::Op;
use wick::model::forward::Mode;
use wick::runtime::plan::Plan;
use wick::runtime::{kernels::Kernel, Exec, Executor};
use wick::tensor_file::TensorFile;

const MBNET: Teacher = Teacher { name: "digits_mbnet", data: "digits" };

/// The teacher from its safetensors, from both PyTorch exporters' ONNX and from wick's own ONNX
/// export evaluates to PyTorch's logits within 1e-4 with its accuracy (357/360), on the compiled
/// float runtime with no step left to candle. The imports hold the new ops; the export writes
/// them as ONNX's own.
#[test]
fn a_mobilenet_v3_style_net_matches_pytorch_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Plan::float(&load(&MBNET.path())).unwrap().candle_steps(), Vec::<&str>::new());
    let exported = dir.path().join("mbnet.onnx");
    run_expect(&["export", MBNET.path().to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    let ops: Vec<String> = crate::onnx::read_proto(&exported).graph.unwrap().node.iter().map(|n| n.op_type.clone()).collect();
    for op in ["HardSwish", "HardSigmoid", "LeakyRelu", "Mul", "Reshape"] {
        assert!(ops.iter().any(|o| o == op), "{op} not in {ops:?}");
    }
    let sources = [MBNET.path(), fixture("onnx/digits_mbnet.legacy.onnx"), fixture("onnx/digits_mbnet.dynamo.onnx"), exported];
    for model in &sources {
        MBNET.assert_evals_as_pytorch(model, 357, dir.path());
    }
    for onnx in &sources[1..3] {
        let m = load(onnx);
        let ops: Vec<String> = m.arch.nodes.iter().map(|n| n.op.name()).collect();
        for op in ["hardswish", "hardsigmoid", "leaky_relu", "mul", "reshape"] {
            assert!(ops.iter().any(|o| o == op), "{}: {op} not in {ops:?}", onnx.display());
        }
        assert_eq!(Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{}", onnx.display());
    }
}

/// `ptq-int8` loses at most 0.3 point with the integer runtime equal to the scalar reference bit
/// for bit; `edge-int8` (one epoch per pass) passes its 1-point gate with fewer parameters, and
/// each squeeze-and-excitation gate keeps the channels of the value it scales.
#[test]
fn a_mobilenet_v3_style_net_compresses() {
    let dir = tempfile::tempdir().unwrap();
    let m = load(&MBNET.path());
    let settings = wick::passes::calibrate::CalibrateSettings { method: wick::calibrate::Method::Minmax, samples: 128, ..Default::default() };
    let q = wick::passes::calibrate::ptq(&m, &MBNET.dataset("train"), &settings, &wick::progress::Silent).unwrap().int8;
    assert!(q.layers.contains_key("b2_se.fc2") && q.layers.contains_key("b1_dw"), "{:?}", q.layers.keys().collect::<Vec<_>>());
    let x = MBNET.dataset("test").x.narrow(0, 0, 96).unwrap();
    let run = |e: Exec| -> Vec<f32> { Executor::new(&q, e).unwrap().predict(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
    assert_eq!(run(Exec::Integer(Kernel::Fast)), run(Exec::Integer(Kernel::Reference)));
    for recipe in ["ptq-int8", "edge-int8"] {
        let (report, q) = MBNET.compress_within_gate(recipe, &dir.path().join(recipe));
        if recipe == "ptq-int8" {
            continue;
        }
        assert!(wick::model::stats::total_params(&q.model) < wick::model::stats::total_params(&m), "{}", report["size"]);
        let node = |n: &str| q.model.arch.node(n).unwrap().op.clone();
        for (scaled, squeeze, fc2) in [("b1_dw", "b1_se.squeeze", "b1_se.fc2"), ("b2_dw", "b2_se.squeeze", "b2_se.fc2")] {
            let (Op::Conv2d(dw), Op::Reshape(r), Op::Conv2d(gate)) = (node(scaled), node(squeeze), node(fc2)) else { panic!() };
            assert_eq!((r.shape[0], gate.out_channels), (dw.out_channels as i64, dw.out_channels), "{scaled}");
        }
    }
}

/// The oracle cases' products compile: a squeeze-and-excitation gate from 1×1 convs or from
/// linears and a `reshape`, and a product of two values of one shape run as plan steps; a
/// spatial map broadcast over the channels, which has no step, runs on candle. Each float plan
/// equals candle's forward within 1e-5, and each INT8 model's integer runtime its scalar
/// reference bit for bit.
#[test]
fn products_and_gates_run_compiled() {
    for (case, on_candle) in [("se_conv_gate", vec![]), ("se_linear_gate", vec![]), ("mul_same_shape", vec![]), ("mul_spatial_gate", vec!["scaled"])] {
        let path = fixture(&format!("reference/gradients/{case}.safetensors"));
        let m = load(&path);
        let x = Tensor::from_vec(TensorFile::read(&path).unwrap().f32("x").unwrap(), [6usize].iter().chain(m.input_shape()).copied().collect::<Vec<_>>(), &candle_core::Device::Cpu).unwrap();
        let plan = Plan::float(&m).unwrap();
        assert_eq!(plan.candle_steps(), on_candle, "{case}");
        let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let (ours, candle) = (flat(plan.predict(&x).unwrap()), flat(m.forward(&x, Mode::Eval).unwrap()));
        assert!(max_abs_diff(&ours, &candle) <= 1e-5, "{case}: {}", max_abs_diff(&ours, &candle));
        let d = wick::data::Dataset { name: case.into(), x: x.clone(), y: vec![0; 6], sha256: String::new() };
        let settings = wick::passes::calibrate::CalibrateSettings { method: wick::calibrate::Method::Minmax, samples: 6, ..Default::default() };
        let q = wick::passes::calibrate::ptq(&m, &d, &settings, &wick::progress::Silent).unwrap().int8;
        let run = |e: Exec| -> Vec<f32> { flat(Executor::new(&q, e).unwrap().predict(&x).unwrap()) };
        assert_eq!(run(Exec::Integer(Kernel::Fast)), run(Exec::Integer(Kernel::Reference)), "{case}");
    }
}

/// PyTorch's export of a squeeze-and-excitation gate of linears (`view(n, c, 1, 1)` times the
/// value) and of a reshape that is no flatten (`view(n, 16, 32)` of `[8, 8, 8]`, splitting each
/// channel in two: `fixtures/onnx/make_se_reshape.py`) loads with PyTorch's logits, as `mul` and
/// `reshape` nodes; wick's export of it reads back to the same logits, and its INT8 model runs
/// bit for bit as the scalar reference.
#[test]
fn a_general_reshape_and_a_linear_gate_import_from_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("onnx/se_reshape.data.safetensors");
    let onnx = fixture("onnx/se_reshape.onnx");
    assert_matches_pytorch(&onnx, &data, dir.path(), "se_reshape");
    let m = load(&onnx);
    let ops: Vec<String> = m.arch.nodes.iter().map(|n| n.op.name()).collect();
    assert!(["mul", "reshape", "leaky_relu", "hardswish"].iter().all(|o| ops.contains(&o.to_string())), "{ops:?}");
    let exported = dir.path().join("se.wick.onnx");
    run_expect(&["export", onnx.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    assert_matches_pytorch(&exported, &data, dir.path(), "se_reshape (wick's export)");
    ptq_runs_bit_exact(&m, &data);
}

/// A ConvNeXt block (`fixtures/onnx/make_convnext_block.py`): its layer scale `· γ + β`, constants
/// of shape `[C]` that PyTorch broadcasts along the last axis of a channels-last value, reads as
/// one `channel_affine` on the last axis (dim −1); both exports give PyTorch's logits compiled
/// with no candle step and through wick's own export. In INT8 (its linears over every position
/// included) the integer runtime equals the scalar reference, and wick's QDQ export reads back
/// to the same model bit for bit: the MatMul's int32 bias `Add` is its bias again.
#[test]
fn convnext_block_layer_scale_and_int8_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("onnx/convnext_block.data.safetensors");
    for (e, m) in assert_both_exports_import("convnext_block", dir.path()) {
        let affine: Vec<(usize, i64)> = m.arch.nodes.iter().filter_map(|n| if let Op::ChannelAffine(c) = &n.op { Some((c.num_features, c.dim)) } else { None }).collect();
        assert_eq!(affine, [(8, -1)], "{e}");
        let q = ptq_runs_bit_exact(&m, &data);
        let exported = dir.path().join(format!("convnext_block.{e}.int8.onnx"));
        wick::onnx::export::write(&wick::onnx::export::int8_model(&q).unwrap(), &exported).unwrap();
        let wick::artifact::AnyModel::Int8(back) = wick::onnx::load(&exported).unwrap().0 else { panic!("{e}: the QDQ export reads back as an INT8 model") };
        let x = Tensor::from_vec(TensorFile::read(&data).unwrap().f32("x").unwrap(), (5, 4, 6, 6), &candle_core::Device::Cpu).unwrap();
        let run = |q: &wick::artifact::Int8Model| -> Vec<f32> { Executor::new(q, Exec::Integer(Kernel::Fast)).unwrap().predict(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
        assert_eq!(run(&back), run(&q), "{e}: the read-back INT8 model computes the same bits");
        assert_eq!(back.layers.keys().collect::<Vec<_>>(), q.layers.keys().collect::<Vec<_>>(), "{e}");
    }
}
