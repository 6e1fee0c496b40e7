//! GRU and LSTM teachers: PyTorch's logits and accuracies, backpropagation through time against
//! PyTorch autograd, and the post-training and QAT recipes end to end.

use crate::common::*;
use crate::gradients::check;
use candle_core::{Tensor, Var};
use wick::model::forward::{Mode, Run};
use wick::tensor_file::{self, TensorFile};

/// Runs `wick compress` of teacher `t` with `recipe` into `out`, at most `max_epochs` per pass,
/// with a 1-point gate it must pass (exit 0); returns the report.
fn compress_quickly(t: &Teacher, recipe: &str, out: &std::path::Path, max_epochs: usize) -> serde_json::Value {
    let mut args: Vec<String> =
        ["compress", &t.path().display().to_string(), "--recipe", recipe, "--out", &out.display().to_string(), "--quiet", "--max-epochs", &max_epochs.to_string(), "--max-accuracy-drop", "1.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(t.data_args());
    run_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// The recurrent teachers in `fixtures/models/` and their data (`digits_rows_*`: each digit
/// read row by row, 8 steps of 8 features).
pub const RECURRENT: [Teacher; 2] = [Teacher { name: "digits_gru", data: "digits_rows" }, Teacher { name: "digits_lstm", data: "digits_rows" }];

/// Both teachers evaluate to PyTorch's logits within 1e-4 with its exact accuracy (0.9667 and
/// 0.9639 on the test split), on the compiled float runtime (no step left to candle).
#[test]
fn recurrent_teachers_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    for (t, correct) in RECURRENT.iter().zip([348, 347]) {
        let plan = wick::runtime::plan::Plan::float(&load(&t.path())).unwrap();
        assert!(plan.candle_steps().is_empty(), "{}: {:?} run on candle", t.name, plan.candle_steps());
        let out = dir.path().join(format!("{}.p.safetensors", t.name));
        let (stdout, _) = run_expect(&["eval", t.path().to_str().unwrap(), "--data", t.split("test").to_str().unwrap(), "--predictions", out.to_str().unwrap(), "--json", "--quiet"], 0);
        let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["correct"], correct, "{}", t.name);
        let logits = TensorFile::read(&out).unwrap().f32("logits").unwrap();
        let reference = TensorFile::read(&t.reference()).unwrap().f32("test_logits").unwrap();
        let d = max_abs_diff(&logits, &reference);
        assert!(d <= 1e-4, "{}: {d}", t.name);
    }
}

/// Train-mode logits, loss, and the gradients of every GRU/LSTM tensor, the head and the input
/// on 6 rows equal PyTorch autograd's (`fixtures/reference/recurrent/`), within the oracle's
/// tolerance `1e-4·(1 + max|reference|)`.
#[test]
fn backpropagation_through_time_matches_pytorch_autograd() {
    let mut failures = vec![];
    for t in &RECURRENT {
        let case = t.name.trim_start_matches("digits_");
        let file = TensorFile::read(&fixture(&format!("reference/recurrent/recurrent_{case}.safetensors"))).unwrap();
        let f32s = |name: &str| {
            let r = &file.tensors[name];
            (tensor_file::to_f32(r, case, name).unwrap(), r.shape.clone())
        };
        let model = load(&t.path());
        let (x, xs) = f32s("x");
        let x = Var::from_tensor(&Tensor::from_vec(x, xs, &candle_core::Device::Cpu).unwrap()).unwrap();
        let y: Vec<u32> = tensor_file::to_i64(&file.tensors["y"], case, "y").unwrap().into_iter().map(|v| v as u32).collect();
        let (logits, _) = model.run(x.as_tensor(), &Run { mode: Mode::Train, taps: &[], hook: None, rng: None }).unwrap();
        let (lr, ls) = f32s("logits");
        check(case, "logits", &logits, &lr, &ls, &mut failures);
        let loss = wick::train::loss::cross_entropy(&logits, &y).unwrap();
        let (lossr, _) = f32s("loss");
        check(case, "loss", &loss.reshape(1).unwrap(), &lossr, &[1], &mut failures);
        let grads = loss.backward().unwrap();
        let mut names = 0;
        for name in file.tensors.keys().filter_map(|k| k.strip_prefix("grad.")) {
            let (g, gs) = f32s(&format!("grad.{name}"));
            let var = if name == "input" { x.as_tensor() } else { model.params[name].as_tensor() };
            match grads.get(var) {
                Some(ours) => check(case, &format!("grad {name}"), ours, &g, &gs, &mut failures),
                None => failures.push(format!("{case}: no gradient for {name}")),
            }
            names += 1;
        }
        assert!(names >= 7, "{case}: {names} gradients in the oracle");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `ptq-int8` and `qat-int8` run end to end on both teachers and lose at most 0.3 point, with
/// every recurrent matrix INT8 in the artifact (I8 codes, per-row scales, the input's static
/// quantisation under the matrix's name). `edge-int8` (one epoch per pass) passes its 1-point
/// gate, its search prunes hidden units (a candidate with fewer parameters than the teacher),
/// and its artifact's hidden size is the architecture's. `wick inspect` reads each artifact.
#[test]
fn int8_recipes_run_on_recurrent_teachers() {
    let dir = tempfile::tempdir().unwrap();
    for t in &RECURRENT {
        for recipe in ["ptq-int8", "qat-int8", "edge-int8"] {
            let out = dir.path().join(format!("{}-{recipe}", t.name));
            let report = compress_quickly(t, recipe, &out, if recipe == "edge-int8" { 1 } else { 2 });
            let drop = report["accuracy_drop_points"].as_f64().unwrap();
            if recipe == "edge-int8" {
                assert_eq!(report["gate"]["passed"], true, "{}: {}", t.name, report["gate"]);
                let prune = report["passes"].as_array().unwrap().iter().find(|p| p["pass"] == "prune_channels").unwrap();
                let teacher_params = report["teacher"]["params"].as_u64().unwrap();
                let trials = prune["details"]["search"]["trials"].as_array().unwrap();
                assert!(trials.iter().any(|tr| tr["params"].as_u64().unwrap() < teacher_params), "{}: {trials:?}", t.name);
                let q = wick::artifact::Int8Model::read(&TensorFile::read(&out.join("model.int8.safetensors")).unwrap()).unwrap().unwrap();
                let (wick::model::arch::Op::Gru(c) | wick::model::arch::Op::Lstm(c)) = &q.model.arch.nodes[0].op else { panic!() };
                assert_eq!(q.model.p(&format!("{}.weight_hh_l0", q.model.arch.nodes[0].name)).dims()[1], c.hidden_size);
            } else {
                assert!(drop <= 0.3, "{} {recipe}: {drop} points", t.name);
            }
            // `wick inspect` reads the artifact: its matrices count one byte per parameter.
            let artifact = out.join("model.int8.safetensors");
            let (o, _) = run_expect(&["inspect", artifact.to_str().unwrap(), "--json"], 0);
            let rows: serde_json::Value = serde_json::from_str(&o).unwrap();
            let rnn = &rows.as_array().unwrap()[0];
            assert!(rnn["bytes"].as_u64().unwrap() < 2 * rnn["params"].as_u64().unwrap(), "{}: {rnn}", t.name);
            let file = TensorFile::read(&out.join("model.int8.safetensors")).unwrap();
            let matrices: Vec<&String> = file.tensors.keys().filter(|k| k.contains("weight_ih_l") || k.contains("weight_hh_l")).filter(|k| !k.ends_with("_scale") && !k.ends_with("_point")).collect();
            assert!(!matrices.is_empty());
            for m in matrices {
                assert_eq!(file.tensors[m].dtype, safetensors::Dtype::I8, "{m}");
                let rows = file.tensors[m].shape[0];
                assert_eq!(file.tensors[&format!("{m}.weight_scale")].shape, vec![rows], "{m}");
                assert_eq!(file.tensors[&format!("{m}.input_scale")].shape, vec![1], "{m}");
            }
        }
    }
}

/// A GRU or LSTM given a non-batch-first layout or too many layers is refused naming the node
/// and the field.
#[test]
fn recurrent_fields_are_checked() {
    for (field, value, needle) in [("batch_first", "false", "batch_first is false"), ("num_layers", "9", "num_layers is 9"), ("input_size", "7", "input_size is 7")] {
        let json = format!(
            r#"{{"format": "wick-arch", "version": 1, "input": {{"shape": [8, 8]}}, "nodes": [
            {{"name": "rnn", "op": "gru", "inputs": ["input"], "input_size": 8, "hidden_size": 4, "{field}": {value}}},
            {{"name": "last", "op": "select", "inputs": ["rnn"], "dim": 1, "index": -1}}]}}"#
        );
        let arch = wick::model::arch::Arch::from_json(&json, "rnn.json").unwrap();
        let e = wick::model::init::init_model(arch, 0).unwrap_err().to_string();
        assert!(e.contains("rnn") && e.contains(needle), "{e}");
    }
}

/// PyTorch's ONNX exports of both teachers (the ONNX `GRU` and `LSTM` ops, time-major, gates
/// reordered) load with PyTorch's logits; wick's own export (`GRU`/`LSTM` nodes) reads back to
/// the teacher's logits.
#[test]
fn recurrent_onnx_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    for t in &RECURRENT {
        let reference = TensorFile::read(&t.reference()).unwrap().f32("test_logits").unwrap();
        let exported = dir.path().join(format!("{}.onnx", t.name));
        run_expect(&["export", t.path().to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
        let proto = crate::onnx::read_proto(&exported);
        let op = if t.name.ends_with("gru") { "GRU" } else { "LSTM" };
        assert!(proto.graph.unwrap().node.iter().any(|n| n.op_type == op), "{}: an ONNX {op} node", t.name);
        for model in [fixture(&format!("onnx/{}.legacy.onnx", t.name)), exported] {
            let out = dir.path().join("p.safetensors");
            run_expect(&["eval", model.to_str().unwrap(), "--data", t.split("test").to_str().unwrap(), "--predictions", out.to_str().unwrap(), "--quiet"], 0);
            let logits = TensorFile::read(&out).unwrap().f32("logits").unwrap();
            let d = max_abs_diff(&logits, &reference);
            assert!(d <= 1e-4, "{}: {d}", model.display());
        }
    }
}

/// Bidirectional and stacked recurrent nets (`fixtures/onnx/make_bidirectional.py`: a 2-layer
/// bidirectional GRU and a bidirectional LSTM exported by PyTorch) load with PyTorch's logits,
/// and wick's own export of them (`Y` transposed and reshaped to `[T, N, 2·H]` between layers)
/// reads back to the same logits.
#[test]
fn bidirectional_recurrent_nets_match_pytorch_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["bigru", "bilstm"] {
        let imported = matches_pytorch_through_onnx(name, dir.path());
        assert!(imported.arch.nodes.iter().any(|n| matches!(&n.op, wick::model::arch::Op::Gru(c) | wick::model::arch::Op::Lstm(c) if c.bidirectional)));
    }
}

/// PyTorch's dynamo exporter (its default since 2.9) writes a recurrent net differently from the
/// legacy one: each zero initial state is an `Expand` of a zero to a shape holding the batch
/// size, each output goes through `Transpose` and a `Reshape` to a shape computed from `Shape`
/// of it, and a stacked layer's weights may be cut into gate blocks by `Slice` and joined by
/// `Concat` in the graph. A GRU's last step, a 2-layer bidirectional LSTM's mean over time and a
/// stacked GRU's final state give PyTorch's logits, and so do their imports written back out by
/// wick's exporter.
#[test]
fn recurrent_nets_from_the_dynamo_exporter_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layers) in [("dynamo_gru", 1), ("dynamo_bilstm2", 2), ("dynamo_gru2_final", 2)] {
        let imported = matches_pytorch_through_onnx(name, dir.path());
        let recurrent = imported.arch.nodes.iter().filter(|n| matches!(&n.op, wick::model::arch::Op::Gru(_) | wick::model::arch::Op::Lstm(_))).count();
        assert_eq!(recurrent, layers, "{name}");
    }
}

/// `fixtures/onnx/<name>.onnx` gives PyTorch's logits (`ref` of `<name>.data.safetensors`)
/// within 1e-5, and so does wick's own export of its import (written in `dir`), which is
/// returned.
fn matches_pytorch_through_onnx(name: &str, dir: &std::path::Path) -> wick::model::Model {
    let data = fixture(&format!("onnx/{name}.data.safetensors"));
    let onnx = fixture(&format!("onnx/{name}.onnx"));
    assert_matches_pytorch(&onnx, &data, dir, name);
    let imported = dir.join(format!("{name}.safetensors"));
    run_expect(&["import", onnx.to_str().unwrap(), "--out", imported.to_str().unwrap()], 0);
    let exported = dir.join(format!("{name}.wick.onnx"));
    run_expect(&["export", imported.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    crate::onnx::read_proto(&exported);
    assert_matches_pytorch(&exported, &data, dir, &format!("{name} (wick's export)"));
    load(&imported)
}

/// The dynamo exporter's default writes the weights to `<file>.onnx.data` beside the graph: the
/// model reads them (PyTorch's logits), and its size on disk, which the compression ratio and
/// a size gate are measured against, counts that file too; so does its sha256 in the report
/// (which `wick batch` compares to resume a job).
#[test]
fn an_onnx_teachers_size_counts_its_external_data() {
    let onnx = fixture("onnx/dynamo_gru_external.onnx");
    let data = fixture("onnx/dynamo_gru.data.safetensors");
    let dir = tempfile::tempdir().unwrap();
    assert_matches_pytorch(&onnx, &data, dir.path(), "dynamo_gru_external");
    let out = dir.path().join("ptq");
    let d = data.to_str().unwrap();
    run_expect(&["compress", onnx.to_str().unwrap(), "--recipe", "ptq-int8", "--train", d, "--val", d, "--test", d, "--out", out.to_str().unwrap()], 0);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let external = std::fs::metadata(fixture("onnx/dynamo_gru_external.onnx.data")).unwrap().len();
    assert!(external > 4 * 1024, "the weights lie outside the graph file");
    assert_eq!(report["teacher"]["bytes_on_disk"].as_u64().unwrap(), std::fs::metadata(&onnx).unwrap().len() + external);
    // Its hash covers the weights too: the graph file's bytes, then the data file's.
    use sha2::Digest;
    let both = [std::fs::read(&onnx).unwrap(), std::fs::read(fixture("onnx/dynamo_gru_external.onnx.data")).unwrap()].concat();
    assert_eq!(report["inputs"]["teacher"]["sha256"], format!("{:x}", sha2::Sha256::digest(&both)));
    // New weights beside the same graph file are another model.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(&onnx, copy.join("dynamo_gru_external.onnx")).unwrap();
    let mut weights = std::fs::read(fixture("onnx/dynamo_gru_external.onnx.data")).unwrap();
    weights[0] ^= 1;
    std::fs::write(copy.join("dynamo_gru_external.onnx.data"), weights).unwrap();
    let hash = |p: &std::path::Path| wick::provenance::model_sha256(p).unwrap();
    assert_ne!(hash(&copy.join("dynamo_gru_external.onnx")), hash(&onnx));
}

/// A random stacked bidirectional recurrent net: `cell` over `[6, 5]`, two layers of 7 hidden
/// units each way, the last step into a linear head.
fn stacked_arch(cell: &str, bias: bool) -> wick::model::arch::Arch {
    let json = format!(
        r#"{{"format": "wick-arch", "version": 1, "input": {{"shape": [6, 5]}}, "nodes": [
        {{"name": "rnn", "op": "{cell}", "inputs": ["input"], "input_size": 5, "hidden_size": 7, "num_layers": 2, "bidirectional": true, "bias": {bias}}},
        {{"name": "last", "op": "select", "inputs": ["rnn"], "dim": 1, "index": -1}},
        {{"name": "head", "op": "linear", "inputs": ["last"], "in_features": 14, "out_features": 4}}], "output": "head"}}"#
    );
    wick::model::arch::Arch::from_json(&json, "stacked.json").unwrap()
}

/// INT8 recurrent matrices on the integer GEMM: on both teachers and on random stacked
/// bidirectional GRUs and LSTMs (with and without biases), for u8, u7 and i8 activations and
/// with the recurrent node kept float, the compiled runtime's logits equal the scalar reference
/// executor's bit for bit (the two share the gate loops; their matmuls are exact), and the
/// fake-quant simulation agrees. A NaN input is an error naming the matrix that met it; ONNX
/// export of an INT8 recurrent node is refused, naming the node.
#[test]
fn int8_recurrent_matrices_equal_the_reference_bit_for_bit() {
    use wick::calibrate::Method;
    use wick::passes::calibrate::{ptq, CalibrateSettings};
    use wick::progress::Silent;
    use wick::quant::ActType;
    use wick::runtime::{kernels::Kernel, Exec, Executor};
    let mut cases: Vec<(String, wick::model::Model, wick::data::Dataset)> = RECURRENT.iter().map(|t| (t.name.to_string(), load(&t.path()), t.dataset("test").head(96).unwrap())).collect();
    for (cell, bias) in [("gru", true), ("lstm", false), ("lstm", true), ("gru", false)] {
        let (m, d) = random_model(stacked_arch(cell, bias), 24);
        cases.push((format!("stacked {cell} bias {bias}"), m, d));
    }
    for (name, m, d) in &cases {
        for (act, exclude) in [(ActType::U8, vec![]), (ActType::U7, vec![]), (ActType::I8, vec![]), (ActType::U8, vec!["rnn".to_string()])] {
            let exclude: Vec<String> = exclude.into_iter().filter(|e| m.arch.node(e).is_some()).collect();
            let settings = CalibrateSettings { method: Method::Minmax, samples: 64, activations: act, exclude: exclude.clone(), ..Default::default() };
            let q = ptq(m, d, &settings, &Silent).unwrap().int8;
            let recurrent_units = q.layers.keys().filter(|k| k.contains("_l")).count();
            assert_eq!(recurrent_units == 0, !exclude.is_empty(), "{name}: {:?}", q.layers.keys().collect::<Vec<_>>());
            let logits = |e: Exec| -> Vec<f32> { Executor::new(&q, e).unwrap().predict(&d.x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
            let fast = logits(Exec::Integer(Kernel::Fast));
            assert_eq!(fast, logits(Exec::Integer(Kernel::Reference)), "{name} {act:?} {exclude:?}");
            let sim = logits(Exec::Simulate);
            let scale = sim.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(max_abs_diff(&fast, &sim) < 0.05 * scale.max(1.0), "{name} {act:?}: integer vs simulation {}", max_abs_diff(&fast, &sim));
            if !exclude.is_empty() || act != ActType::U8 {
                continue;
            }
            let mut v: Vec<f32> = d.x.flatten_all().unwrap().to_vec1().unwrap();
            v[3] = f32::NAN;
            let bad = Tensor::from_vec(v, d.x.dims(), d.x.device()).unwrap();
            for e in [Exec::Integer(Kernel::Fast), Exec::Integer(Kernel::Reference)] {
                let err = Executor::new(&q, e).unwrap().predict(&bad).unwrap_err().to_string();
                assert!(err.contains("non-finite") && err.contains(".weight_ih_l0"), "{name} {e:?}: {err}");
            }
            let err = wick::onnx::export::int8_model(&q).unwrap_err().to_string();
            assert!(err.contains("ONNX export") && err.contains("--exclude"), "{err}");
        }
    }
}

/// A CRNN (`fixtures/models/digits_crnn`: conv1d blocks, `transpose(1, 2)` into a bidirectional
/// GRU, the `mean` over time, a linear head) evaluates to PyTorch's logits within 1e-4 with its
/// accuracy (350 of 360) on the compiled runtime; PyTorch's legacy ONNX export (the transpose
/// fused into the GRU's time-major `Transpose(perm [2, 0, 1])`, `ReduceMean` over axis 1) and
/// wick's own export read back to the same logits; `ptq-int8` loses at most 0.3 point with the
/// integer runtime equal to the scalar reference bit for bit, and `edge-int8` (one epoch per
/// pass) passes its 1-point gate with fewer parameters.
#[test]
fn a_crnn_with_transpose_and_mean_runs_end_to_end() {
    use wick::model::arch::Op;
    let t = Teacher { name: "digits_crnn", data: "digits_seq" };
    let dir = tempfile::tempdir().unwrap();
    let reference = TensorFile::read(&t.reference()).unwrap().f32("test_logits").unwrap();
    let m = load(&t.path());
    assert_eq!(wick::runtime::plan::Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new());
    let logits = |model: &std::path::Path| -> (Vec<f32>, serde_json::Value) {
        let out = dir.path().join("p.safetensors");
        let (stdout, _) = run_expect(&["eval", model.to_str().unwrap(), "--data", t.split("test").to_str().unwrap(), "--predictions", out.to_str().unwrap(), "--json", "--quiet"], 0);
        (TensorFile::read(&out).unwrap().f32("logits").unwrap(), serde_json::from_str(&stdout).unwrap())
    };
    let legacy = fixture("onnx/digits_crnn.legacy.onnx");
    let exported = dir.path().join("crnn.onnx");
    run_expect(&["export", t.path().to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    let ops: Vec<String> = crate::onnx::read_proto(&exported).graph.unwrap().node.iter().map(|n| n.op_type.clone()).collect();
    assert!(ops.contains(&"ReduceMean".to_string()) && ops.contains(&"GRU".to_string()), "{ops:?}");
    for model in [t.path(), legacy.clone(), exported] {
        let (l, j) = logits(&model);
        assert_eq!(j["correct"], 350, "{}", model.display());
        assert!(max_abs_diff(&l, &reference) <= 1e-4, "{}: {}", model.display(), max_abs_diff(&l, &reference));
    }
    let imported = dir.path().join("imported.safetensors");
    run_expect(&["import", legacy.to_str().unwrap(), "--out", imported.to_str().unwrap()], 0);
    let ops = load(&imported).arch.nodes.iter().map(|n| n.op.name()).collect::<Vec<_>>();
    assert!(ops.contains(&"transpose".to_string()) && ops.contains(&"mean".to_string()), "{ops:?}");

    let settings = wick::passes::calibrate::CalibrateSettings { method: wick::calibrate::Method::Minmax, samples: 128, ..Default::default() };
    let q = wick::passes::calibrate::ptq(&m, &t.dataset("train"), &settings, &wick::progress::Silent).unwrap().int8;
    let x = t.dataset("test").x.narrow(0, 0, 96).unwrap();
    let run = |e: wick::runtime::Exec| -> Vec<f32> { wick::runtime::Executor::new(&q, e).unwrap().predict(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
    use wick::runtime::{kernels::Kernel, Exec};
    assert_eq!(run(Exec::Integer(Kernel::Fast)), run(Exec::Integer(Kernel::Reference)));
    for recipe in ["ptq-int8", "edge-int8"] {
        let out = dir.path().join(recipe);
        let report = compress_quickly(&t, recipe, &out, 1);
        assert_eq!(report["gate"]["passed"], true, "{recipe}: {}", report["gate"]);
        if recipe == "ptq-int8" {
            assert!(report["accuracy_drop_points"].as_f64().unwrap() <= 0.3, "{}", report["accuracy_drop_points"]);
        } else {
            let q = wick::artifact::Int8Model::read(&TensorFile::read(&out.join("model.int8.safetensors")).unwrap()).unwrap().unwrap();
            let (Op::Conv1d(conv), Op::Gru(gru)) = (&q.model.arch.node("conv2").unwrap().op, &q.model.arch.node("gru").unwrap().op) else { panic!() };
            assert_eq!(gru.input_size, conv.out_channels);
            assert!(wick::model::stats::total_params(&q.model) < wick::model::stats::total_params(&m), "{}", report["size"]);
        }
    }
}

/// A keyword-spotting-style CRNN exported by PyTorch (`fixtures/onnx/make_kws.py`: a conv2d over
/// a `[1, F, T]` spectrogram, `permute(0, 3, 1, 2)` and a reshape to `[T, C·F]` into a 2-layer
/// LSTM, the mean over time) loads with PyTorch's logits: the permutation becomes two
/// `transpose` nodes and the reshape a `flatten`. wick's export of it reads back to the same
/// logits, and its INT8 model (every LSTM matrix quantised) runs bit for bit as the scalar
/// reference.
#[test]
fn a_spectrogram_crnn_imports_from_pytorch_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("onnx/kws.data.safetensors");
    let onnx = fixture("onnx/kws.onnx");
    assert_matches_pytorch(&onnx, &data, dir.path(), "kws");
    let imported = dir.path().join("kws.safetensors");
    run_expect(&["import", onnx.to_str().unwrap(), "--out", imported.to_str().unwrap()], 0);
    let m = load(&imported);
    let ops: Vec<String> = m.arch.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(ops.iter().filter(|o| *o == "transpose").count(), 2, "{ops:?}");
    assert!(["flatten", "lstm", "mean"].iter().all(|o| ops.contains(&o.to_string())), "{ops:?}");
    let exported = dir.path().join("kws.wick.onnx");
    run_expect(&["export", imported.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    assert_matches_pytorch(&exported, &data, dir.path(), "kws (wick's export)");
    let q = ptq_runs_bit_exact(&m, &data);
    assert!(q.layers.keys().filter(|k| k.contains("weight_hh_l")).count() >= 2, "{:?}", q.layers.keys().collect::<Vec<_>>());
}

/// PyTorch's recurrent classifier idioms, exported by PyTorch (`fixtures/onnx/make_final_states.py`),
/// load with its logits: a GRU that is not batch-first run on `x.transpose(0, 1)` and read at
/// `y[-1]` (a time-major sequence's `Shape` and step), a GRU's final state `h.squeeze(0)`, and a
/// 2-layer LSTM's `h[-1]` (the layers' `Y_h` joined by `Concat`, one picked by `Gather`), each
/// read as the last step of its layer's output. A bidirectional layer's final states, which are
/// not one step of the output, are refused naming the node.
#[test]
fn final_states_and_time_major_sequences_import_from_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["time_major_gru", "final_state_gru", "final_state_lstm2"] {
        assert_matches_pytorch(&fixture(&format!("onnx/{name}.onnx")), &fixture(&format!("onnx/{name}.data.safetensors")), dir.path(), name);
    }
    let (_, err) = run_expect(&["inspect", fixture("onnx/final_state_bigru.onnx").to_str().unwrap()], 2);
    assert!(err.contains("GRU") && err.contains("bidirectional") && err.contains("Y_h"), "{err}");
}

/// Attention pooling (a linear score per step, softmax over time, the weighted steps summed:
/// the `sum` op, ONNX's `ReduceSum`): the training oracle's case matches PyTorch autograd
/// (`gradients.rs`) and runs compiled and through wick's export; both PyTorch exports of a
/// bidirectional GRU pooled this way import with PyTorch's logits, compiled with no candle step,
/// and run in integers bit for bit as the scalar reference.
#[test]
fn attention_pooling_runs_compiled_and_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    assert_case_runs_compiled_and_through_onnx("gru_attention_sum", dir.path());
    for (e, m) in assert_both_exports_import("attention_pool", dir.path()) {
        let sums: Vec<(i64, bool)> = m.arch.nodes.iter().filter_map(|n| if let wick::model::arch::Op::Sum(c) = &n.op { Some((c.dim, c.keepdim)) } else { None }).collect();
        assert_eq!(sums, [(1, false)], "{e}");
        ptq_runs_bit_exact(&m, &fixture("onnx/attention_pool.data.safetensors"));
    }
}

/// `edge-int8` on the GRU with its full training passes its 1-point gate at least 4x smaller than
/// the teacher file, which needs a quarter of the hidden units pruned: the search takes
/// students whose only validation flips are samples the teacher itself was nearly undecided on
/// (`Budget::within`'s bound from calibrated probabilities).
#[test]
fn the_gru_edge_artifact_is_four_times_smaller_within_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let t = &RECURRENT[0];
    let out = dir.path().join("gru-edge");
    let mut args: Vec<String> = ["compress", t.path().to_str().unwrap(), "--recipe", "edge-int8", "--out", out.to_str().unwrap(), "--max-accuracy-drop", "1", "--quiet"].map(String::from).to_vec();
    args.extend(t.data_args());
    run_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let ratio = report["teacher"]["bytes_on_disk"].as_f64().unwrap() / report["compressed"]["bytes_on_disk"].as_f64().unwrap();
    assert!(ratio >= 4.0, "{ratio:.2}x smaller; {}", report["passes"][0]["summary"]);
}
