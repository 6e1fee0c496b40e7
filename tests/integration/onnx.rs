//! ONNX in and out: every PyTorch export of every teacher (both exporters) loads and reproduces
//! PyTorch's logits; compression runs on them; wick's float and QDQ exports have the expected
//! structure and read back to the same predictions; an unsupported op is a clear error.

use crate::common::*;
use prost::Message;
use std::path::{Path, PathBuf};
use wick::onnx::proto::{data_type, ModelProto};
use wick::tensor_file::TensorFile;

const EXPORTERS: [&str; 2] = ["legacy", "dynamo"];

fn onnx_fixture(teacher: &Teacher, exporter: &str) -> PathBuf {
    fixture(&format!("onnx/{}.{exporter}.onnx", teacher.name))
}

/// `wick eval MODEL --data test --predictions …`: (logits, predictions, correct rows).
fn eval_rows(model: &Path, teacher: &Teacher, dir: &Path) -> (Vec<f32>, Vec<i64>, u64) {
    let out = dir.join(format!("{}.predictions.safetensors", model.file_name().unwrap().to_string_lossy()));
    let (stdout, _) = run_expect(&["eval", model.to_str().unwrap(), "--data", teacher.split("test").to_str().unwrap(), "--predictions", out.to_str().unwrap(), "--json", "--quiet"], 0);
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let f = TensorFile::read(&out).unwrap();
    let predictions = wick::tensor_file::to_i64(&f.tensors["predictions"], "p", "predictions").unwrap();
    (f.f32("logits").unwrap(), predictions, j["correct"].as_u64().unwrap())
}

fn reference_correct(teacher: &Teacher) -> u64 {
    let logits = TensorFile::read(&teacher.reference()).unwrap().f32("test_logits").unwrap();
    let labels = teacher.dataset("test").y;
    logits.chunks(10).zip(&labels).filter(|(row, &y)| wick::eval::argmax(row) == y).count() as u64
}

/// The model in an ONNX file, checked for what runtimes refuse to load: two nodes of one name,
/// or two nodes computing one value.
pub fn read_proto(path: &Path) -> ModelProto {
    let p = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let g = p.graph.as_ref().unwrap();
    let mut names = std::collections::BTreeSet::new();
    let mut values = std::collections::BTreeSet::new();
    for n in &g.node {
        assert!(names.insert(&n.name), "{}: two nodes named '{}'", path.display(), n.name);
        for o in &n.output {
            assert!(values.insert(o), "{}: two nodes compute '{o}'", path.display());
        }
    }
    p
}

/// All eight exports (two exporters × four teachers) load, and `wick eval` reproduces PyTorch's
/// logits within 1e-4 and its exact accuracy.
#[test]
fn every_pytorch_export_matches_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    for t in &TEACHERS {
        let reference = TensorFile::read(&t.reference()).unwrap().f32("test_logits").unwrap();
        for e in EXPORTERS {
            let (logits, _, correct) = eval_rows(&onnx_fixture(t, e), t, dir.path());
            let d = max_abs_diff(&logits, &reference);
            assert!(d <= 1e-4, "{} ({e}): logits differ from PyTorch's by {d}", t.name);
            assert_eq!(correct, reference_correct(t), "{} ({e})", t.name);
        }
    }
}

/// The imported graph keeps the `state_dict` names where the exporter kept them (dynamo) or the
/// module path where it did not (legacy), fuses the decomposed activations into single ops, and
/// folds the shape arithmetic away.
#[test]
fn imported_graphs_are_wick_graphs_with_readable_names() {
    let m = |t: usize, e: &str| load(&onnx_fixture(&TEACHERS[t], e));
    let ops = |m: &wick::model::Model| m.arch.nodes.iter().map(|n| n.op.name()).collect::<Vec<_>>().join(" ");
    let seq = m(2, "legacy");
    assert_eq!(ops(&seq), "conv1d relu conv1d relu conv1d silu conv1d add maxpool1d conv1d silu global_avg_pool linear");
    assert!(seq.arch.node("dw_conv").is_some() && seq.arch.node("mods.fc").is_some(), "{:?}", seq.arch.nodes.iter().map(|n| &n.name).collect::<Vec<_>>());
    let ds = m(3, "dynamo");
    assert_eq!(ops(&ds), "conv2d gelu conv2d relu6 conv2d relu6 conv2d relu6 conv2d relu6 avgpool2d flatten linear");
    assert!(ds.arch.node("mods.dw1_conv").is_some());
    let rn = m(1, "legacy");
    assert!(rn.arch.node("layer2.0.downsample.0").is_some() && rn.arch.node("layer1.0.conv2").is_some());
    // The exporters fold BatchNorm into the convs: no batchnorm nodes, every conv has a bias.
    assert!(rn.arch.nodes.iter().all(|n| !n.op.name().starts_with("batchnorm")));
}

/// `compress FILE.onnx` runs end to end: the post-training recipe on every export, the full edge
/// recipe (training capped at one epoch per pass to keep CI short) on each teacher's export by
/// one exporter, alternating, since both import to the same graph.
#[test]
fn compress_runs_on_every_onnx_export() {
    let dir = tempfile::tempdir().unwrap();
    for (k, t) in TEACHERS.iter().enumerate() {
        for e in EXPORTERS {
            let edge = (e == EXPORTERS[k % 2]).then_some(("edge-int8", vec!["--max-epochs", "1"]));
            for (recipe, extra) in std::iter::once(("ptq-int8", vec![])).chain(edge) {
                let out = dir.path().join(format!("{}-{e}-{recipe}", t.name));
                let model = onnx_fixture(t, e);
                let mut args = vec!["compress".to_string(), model.display().to_string(), "--recipe".into(), recipe.into(), "--out".into(), out.display().to_string(), "--quiet".into()];
                args.extend(t.data_args());
                args.extend(extra.iter().map(|s| s.to_string()));
                run_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
                let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
                assert_eq!(report["inputs"]["teacher"]["path"], model.display().to_string());
                assert!(out.join("model.int8.safetensors").is_file());
                if recipe == "ptq-int8" {
                    let drop = report["accuracy_drop_points"].as_f64().unwrap();
                    assert!(drop <= 1.0, "{} ({e}) ptq-int8 loses {drop} points", t.name);
                } else if load(&t.path()).arch.nodes.iter().any(|n| matches!(n.op, wick::model::arch::Op::BatchNorm1d(_) | wick::model::arch::Op::BatchNorm2d(_))) {
                    // The exporters folded every BatchNorm: pruning puts them back for recovery.
                    let summary = report["passes"][0]["summary"].as_str().unwrap();
                    assert!(summary.contains("identity BatchNorm back"), "{} ({e}): {summary}", t.name);
                }
            }
        }
    }
}

/// `wick export` of a float teacher: opset 17, a dynamic batch, `state_dict` initializer names,
/// standard ops only; `wick eval` of the file reproduces the teacher's logits.
#[test]
fn float_export_reads_back_to_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for t in &TEACHERS {
        let out = dir.path().join(format!("{}.onnx", t.name));
        run_expect(&["export", t.path().to_str().unwrap(), "--format", "onnx", "--out", out.to_str().unwrap()], 0);
        let p = read_proto(&out);
        assert_eq!(p.opset_import[0].version, 17);
        let g = p.graph.as_ref().unwrap();
        let batch = &g.input[0].r#type.as_ref().unwrap().tensor_type.as_ref().unwrap().shape.as_ref().unwrap().dim[0];
        assert_eq!(batch.dim_param.as_deref(), Some("batch"), "{}: the batch dim is dynamic", t.name);
        assert!(g.node.iter().all(|n| !n.op_type.contains("Quantize")), "{}: a float export has no QDQ", t.name);
        let teacher = load(&t.path());
        for w in teacher.params.keys().filter(|k| k.ends_with(".weight") && !teacher.arch.nodes.iter().any(|n| n.op.name().starts_with("batchnorm") && k.starts_with(&format!("{}.", n.name)))) {
            assert!(g.initializer.iter().any(|i| &i.name == w), "{}: initializer '{w}' keeps its state_dict name", t.name);
        }
        let (a, _, acc_a) = eval_rows(&t.path(), t, dir.path());
        let (b, _, acc_b) = eval_rows(&out, t, dir.path());
        assert!(max_abs_diff(&a, &b) <= 1e-5, "{}: {}", t.name, max_abs_diff(&a, &b));
        assert_eq!(acc_a, acc_b);
    }
}

/// `wick export` of an INT8 artifact is a QDQ graph: each quantised layer's input goes through
/// QuantizeLinear/DequantizeLinear with the artifact's scale and zero point, its weight is int8
/// with the artifact's per-channel scales on the output axis, its bias int32 at `s_in·s_c`; `wick eval` of
/// the file gives the artifact's logits.
#[test]
fn int8_export_is_qdq_and_reads_back_to_the_artifacts_predictions() {
    let dir = tempfile::tempdir().unwrap();
    for t in &TEACHERS {
        let artifact = dir.path().join(format!("{}.int8.safetensors", t.name));
        run_expect(&["quantize", t.path().to_str().unwrap(), "--calib", t.split("train").to_str().unwrap(), "--out", artifact.to_str().unwrap()], 0);
        let out = dir.path().join(format!("{}.qdq.onnx", t.name));
        run_expect(&["export", artifact.to_str().unwrap(), "--out", out.to_str().unwrap()], 0);
        let q = match wick::artifact::load_any(&artifact, None).unwrap().0 {
            wick::artifact::AnyModel::Int8(q) => q,
            _ => panic!("an INT8 artifact"),
        };
        let g = read_proto(&out).graph.unwrap();
        let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count("QuantizeLinear"), q.layers.len(), "{}", t.name);
        let init = |name: &str| g.initializer.iter().find(|i| i.name == name).unwrap_or_else(|| panic!("{}: initializer '{name}'", t.name));
        let f32s = |name: &str| init(name).raw_data.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<f32>>();
        for (name, layer) in &q.layers {
            let w = init(&format!("{name}.weight_quantized"));
            assert_eq!(w.data_type, data_type::INT8);
            let dq = g.node.iter().find(|n| n.output == [format!("{name}.weight")]).unwrap();
            assert_eq!(dq.op_type, "DequantizeLinear");
            // Per output channel: axis 0 of `[out, in, …]`, or axis 1 of a MatMul's `[in, out]`
            // (a linear over every position of a sequence).
            let axis = dq.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
            let codes: Vec<u8> = layer.weight.values.iter().map(|&v| v as u8).collect();
            let codes = match axis {
                0 => codes,
                1 if w.dims.len() == 2 => {
                    let (out, inputs) = (layer.weight.shape[0], layer.weight.shape[1]);
                    (0..inputs).flat_map(|i| (0..out).map(move |o| (o, i))).map(|(o, i)| codes[o * inputs + i]).collect()
                }
                _ => panic!("{name}: weight scales along axis {axis}"),
            };
            assert_eq!(w.raw_data, codes, "{name}: the artifact's exact codes");
            assert_eq!(f32s(&format!("{name}.weight_scale")), layer.weight.scales);
            let input = layer.input.fixed().expect("static input");
            assert_eq!(f32s(&format!("{name}.input_scale")), vec![input.scale]);
            assert_eq!(init(&format!("{name}.input_zero_point")).raw_data, vec![input.zero_point as u8]);
            if q.model.params.contains_key(&format!("{name}.bias")) {
                assert_eq!(init(&format!("{name}.bias_quantized")).data_type, data_type::INT32);
            }
        }
        // The artifact holds its biases on the int32 grid the QDQ file stores, so reading the
        // file back gives the artifact bit for bit.
        let (a, _, _) = eval_rows(&artifact, t, dir.path());
        let (b, _, _) = eval_rows(&out, t, dir.path());
        assert_eq!(a, b, "{}: the QDQ file's logits are the artifact's", t.name);
    }
}

/// `wick import` writes a wick model once: float from a PyTorch export, INT8 from a QDQ graph.
#[test]
fn import_writes_a_wick_model() {
    let dir = tempfile::tempdir().unwrap();
    let t = &TEACHERS[3];
    let out = dir.path().join("dsnet.safetensors");
    run_expect(&["import", onnx_fixture(t, "legacy").to_str().unwrap(), "--out", out.to_str().unwrap()], 0);
    let (a, _, _) = eval_rows(&onnx_fixture(t, "legacy"), t, dir.path());
    let (b, _, _) = eval_rows(&out, t, dir.path());
    assert_eq!(a, b);
    let (_, stderr) = run_expect(&["import", t.path().to_str().unwrap(), "--out", dir.path().join("x.safetensors").to_str().unwrap()], 2);
    assert!(stderr.contains("reads ONNX files"), "{stderr}");
}

/// Layout and op cases the teachers lack (a linear over a 3-D tensor, a dilated depthwise
/// conv1d, average pooling that does not count padding, a concat along the last axis, the tanh
/// GELU, sigmoid, tanh, an asymmetric kernel, a bias-free conv, BatchNorm 1-d and 2-d,
/// LayerNorm, softmax, `transpose`, `mean` and `amax`) survive export and import with the same
/// logits.
#[test]
fn other_ops_round_trip_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let branchy: wick::model::arch::Arch = serde_json::from_str(&std::fs::read_to_string(fixture("arch/branchy.arch.json")).unwrap()).unwrap();
    for (k, arch) in [conv1d_arch(), ops_1d_arch(), branchy, norms_arch(), axes_1d_arch(), axes_2d_arch()].into_iter().enumerate() {
        let (model, data) = random_model(arch, 5);
        let path = dir.path().join(format!("case{k}.onnx"));
        wick::onnx::export::write(&wick::onnx::export::float_model(&model).unwrap(), &path).unwrap();
        let back = load(&path);
        let (x, _) = data.slice(0, 5).unwrap();
        let run = |m: &wick::model::Model| m.forward(&x, wick::model::forward::Mode::Eval).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(&run(&model), &run(&back));
        assert!(d <= 1e-5, "case {k}: {d}");
    }
}

/// An op wick does not read exits 2 naming the op type, the node and the file, and listing what
/// is supported; so do a padding wick cannot express and `--arch` given with an ONNX file.
#[test]
fn unsupported_onnx_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = &TEACHERS[0];
    let mut p = wick::onnx::export::float_model(&load(&t.path())).unwrap();
    let g = p.graph.as_mut().unwrap();
    let relu = g.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    relu.op_type = "Sin".into();
    relu.name = "the_sine".into();
    let bad = dir.path().join("sine.onnx");
    std::fs::write(&bad, p.encode_to_vec()).unwrap();
    let (_, stderr) = run_expect(&["eval", bad.to_str().unwrap(), "--data", t.split("test").to_str().unwrap()], 2);
    for needle in ["sine.onnx", "the_sine", "(Sin)", "Conv", "Gemm"] {
        assert!(stderr.contains(needle), "'{needle}' missing from: {stderr}");
    }
    let mut p = read_proto(&fixture("onnx/digits_tcn.legacy.onnx"));
    let pad = p.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "Pad").unwrap();
    pad.attribute.iter_mut().find(|a| a.name == "mode").unwrap().s = b"reflect".to_vec();
    let reflect = dir.path().join("reflect.onnx");
    std::fs::write(&reflect, p.encode_to_vec()).unwrap();
    let (_, stderr) = run_expect(&["inspect", reflect.to_str().unwrap()], 2);
    assert!(stderr.contains("reflect.onnx") && stderr.contains("'/Pad' (Pad)") && stderr.contains("mode 'reflect'"), "{stderr}");
    let (_, stderr) = run_expect(&["inspect", onnx_fixture(t, "legacy").to_str().unwrap(), "--arch", fixture("models/digits_mlp.arch.json").to_str().unwrap()], 2);
    assert!(stderr.contains("--arch"), "{stderr}");
    std::fs::write(dir.path().join("junk.onnx"), b"not a protobuf at all \xff\xff\xff").unwrap();
    let (_, stderr) = run_expect(&["inspect", dir.path().join("junk.onnx").to_str().unwrap()], 2);
    assert!(stderr.contains("junk.onnx") && stderr.contains("not a valid ONNX model"), "{stderr}");
}

/// `y.sum((2, 3))` (`ReduceSum` over both spatial axes, `fixtures/onnx/make_spatial_sum.py`)
/// reads as one `sum` per axis, not as global average pooling: both exports give PyTorch's
/// logits, compiled and through wick's export, and run in integers as the scalar reference.
#[test]
fn reduce_sum_over_the_spatial_axes_is_a_sum() {
    use wick::model::arch::Op;
    let dir = tempfile::tempdir().unwrap();
    for (e, m) in assert_both_exports_import("spatial_sum", dir.path()) {
        let sums: Vec<i64> = m.arch.nodes.iter().filter_map(|n| if let Op::Sum(c) = &n.op { Some(c.dim) } else { None }).collect();
        assert_eq!(sums, [3, 2], "{e}");
        assert!(!m.arch.nodes.iter().any(|n| matches!(n.op, Op::GlobalAvgPool(_))), "{e}");
        ptq_runs_bit_exact(&m, &fixture("onnx/spatial_sum.data.safetensors"));
    }
}
