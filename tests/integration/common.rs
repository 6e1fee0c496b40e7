//! Shared helpers: fixture paths, the `wick` binary, small file builders.

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use wick::data::Dataset;
use wick::model::load::load_model;
use wick::model::Model;

/// A path under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

pub fn mlp_path() -> PathBuf {
    fixture("models/digits_mlp.safetensors")
}
pub fn resnet_path() -> PathBuf {
    fixture("models/digits_resnet.safetensors")
}
pub fn digits(split: &str) -> PathBuf {
    fixture(&format!("data/digits_{split}.safetensors"))
}

/// A trained teacher in `fixtures/models/` and the data set it was trained on.
pub struct Teacher {
    pub name: &'static str,
    /// The data files' prefix: `fixtures/data/{data}_{train,val,test}.safetensors`.
    pub data: &'static str,
}

impl Teacher {
    pub fn path(&self) -> PathBuf {
        fixture(&format!("models/{}.safetensors", self.name))
    }
    pub fn split(&self, split: &str) -> PathBuf {
        fixture(&format!("data/{}_{split}.safetensors", self.data))
    }
    pub fn reference(&self) -> PathBuf {
        fixture(&format!("reference/{}_logits.safetensors", self.name))
    }
    /// `--train FILE --val FILE --test FILE` of this teacher's data.
    pub fn data_args(&self) -> Vec<String> {
        ["train", "val", "test"].iter().flat_map(|s| [format!("--{s}"), self.split(s).display().to_string()]).collect()
    }
    pub fn dataset(&self, split: &str) -> Dataset {
        Dataset::read(&self.split(split)).expect("fixture data loads")
    }
    /// `wick eval` of `model` (this teacher from any source) on the test split: `correct` rows
    /// right and PyTorch's test logits within 1e-4; `dir` holds the predictions.
    pub fn assert_evals_as_pytorch(&self, model: &Path, correct: u64, dir: &Path) {
        let reference = wick::tensor_file::TensorFile::read(&self.reference()).unwrap().f32("test_logits").unwrap();
        let out = dir.join("p.safetensors");
        let (stdout, _) = run_expect(&["eval", model.to_str().unwrap(), "--data", self.split("test").to_str().unwrap(), "--predictions", out.to_str().unwrap(), "--json", "--quiet"], 0);
        let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["correct"], correct, "{}", model.display());
        let l = wick::tensor_file::TensorFile::read(&out).unwrap().f32("logits").unwrap();
        assert!(max_abs_diff(&l, &reference) <= 1e-4, "{}: {}", model.display(), max_abs_diff(&l, &reference));
    }

    /// `wick compress` of this teacher with `recipe` (one epoch per pass, a 1-point gate) into
    /// `out`, asserting that the gate passed and that `ptq-int8` lost at most 0.3 point; returns
    /// the report and the INT8 artifact.
    pub fn compress_within_gate(&self, recipe: &str, out: &Path) -> (serde_json::Value, wick::artifact::Int8Model) {
        let mut args: Vec<String> =
            ["compress", self.path().to_str().unwrap(), "--recipe", recipe, "--out", out.to_str().unwrap(), "--quiet", "--max-epochs", "1", "--max-accuracy-drop", "1.0"].map(String::from).to_vec();
        args.extend(self.data_args());
        run_expect(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["gate"]["passed"], true, "{} {recipe}: {}", self.name, report["gate"]);
        if recipe == "ptq-int8" {
            assert!(report["accuracy_drop_points"].as_f64().unwrap() <= 0.3, "{}: {}", self.name, report["accuracy_drop_points"]);
        }
        let file = wick::tensor_file::TensorFile::read(&out.join("model.int8.safetensors")).unwrap();
        (report, wick::artifact::Int8Model::read(&file).unwrap().unwrap())
    }
}

/// Every feed-forward teacher in the fixtures: an MLP, a 2-d ResNet, a 1-d CNN with a depthwise
/// conv, a depthwise-separable 2-d CNN, a MobileNetV3-style net (hardswish, squeeze-and-
/// excitation gates), and a CNN whose convs and pools step and dilate each axis differently.
pub const TEACHERS: [Teacher; 7] = [
    Teacher { name: "digits_mlp", data: "digits" },
    Teacher { name: "digits_resnet", data: "digits" },
    Teacher { name: "digits_seq_cnn", data: "digits_seq" },
    Teacher { name: "digits_dsnet", data: "digits" },
    Teacher { name: "digits_mbnet", data: "digits" },
    Teacher { name: "digits_rectnet", data: "digits" },
    Teacher { name: "digits_vit", data: "digits_rows" },
];

pub fn load(path: &Path) -> Model {
    load_model(path, None).expect("fixture loads").model
}

pub fn data(split: &str) -> Dataset {
    Dataset::read(&digits(split)).expect("fixture data loads")
}

/// Whether a model file has a sidecar architecture beside it.
pub fn has_sidecar(model: &Path) -> bool {
    wick::model::load::sidecar_path(model).exists()
}

/// The `wick` binary.
pub fn wick() -> Command {
    Command::cargo_bin("wick").expect("binary built")
}

/// The logits `wick eval MODEL --data DATA --predictions FILE` writes, FILE in `dir`.
pub fn predicted_logits(model: &Path, data: &Path, dir: &Path) -> Vec<f32> {
    let out = dir.join("predictions.safetensors");
    run_expect(&["eval", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--predictions", out.to_str().unwrap(), "--quiet"], 0);
    wick::tensor_file::TensorFile::read(&out).unwrap().f32("logits").unwrap()
}

/// Asserts that `model` gives PyTorch's logits, the `ref` of fixture data file `data`, within
/// 1e-5 (`what` names the case when it does not); `dir` holds the predictions.
pub fn assert_matches_pytorch(model: &Path, data: &Path, dir: &Path, what: &str) {
    let reference = wick::tensor_file::TensorFile::read(data).unwrap().f32("ref").unwrap();
    let d = max_abs_diff(&predicted_logits(model, data, dir), &reference);
    assert!(d <= 1e-5, "{what}: {d}");
}

/// Oracle case `case` (`fixtures/reference/gradients/{case}`) on the compiled float plan: no
/// step left to candle, candle's forward within 1e-5 and PyTorch's eval logits within 1e-4; its
/// INT8 model's integer runtime equals the scalar reference bit for bit. Returns the model, the
/// case's input rows and the plan.
pub fn assert_case_runs_compiled(case: &str) -> (Model, candle_core::Tensor, wick::runtime::plan::Plan) {
    use candle_core::Tensor;
    let path = fixture(&format!("reference/gradients/{case}.safetensors"));
    let m = load(&path);
    let file = wick::tensor_file::TensorFile::read(&path).unwrap();
    let x = Tensor::from_vec(file.f32("x").unwrap(), [6usize].iter().chain(m.input_shape()).copied().collect::<Vec<_>>(), &candle_core::Device::Cpu).unwrap();
    let plan = wick::runtime::plan::Plan::float(&m).unwrap();
    assert_eq!(plan.candle_steps(), Vec::<&str>::new(), "{case}");
    let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let (ours, candle) = (flat(plan.predict(&x).unwrap()), flat(m.forward(&x, wick::model::forward::Mode::Eval).unwrap()));
    assert!(max_abs_diff(&ours, &candle) <= 1e-5, "{case}: {}", max_abs_diff(&ours, &candle));
    let eval = file.f32("eval_logits").unwrap();
    assert!(max_abs_diff(&ours, &eval) <= 1e-4, "{case} against PyTorch: {}", max_abs_diff(&ours, &eval));
    ptq_runs_bit_exact(&m, &path);
    (m, x, plan)
}

/// `fixtures/onnx/{stem}.{legacy,dynamo}.onnx` (PyTorch's two exporters) against
/// `{stem}.data.safetensors`: each gives PyTorch's logits within 1e-5, compiles with no step
/// left to candle, and wick's own export of it (written into `dir`) reads back to the same
/// logits. Returns each export's model with the exporter's name.
pub fn assert_both_exports_import(stem: &str, dir: &Path) -> Vec<(&'static str, Model)> {
    let data = fixture(&format!("onnx/{stem}.data.safetensors"));
    let mut models = vec![];
    for e in ["legacy", "dynamo"] {
        let model = fixture(&format!("onnx/{stem}.{e}.onnx"));
        assert_matches_pytorch(&model, &data, dir, e);
        let m = load(&model);
        assert_eq!(wick::runtime::plan::Plan::float(&m).unwrap().candle_steps(), Vec::<&str>::new(), "{e}");
        let exported = dir.join(format!("{stem}.{e}.onnx"));
        run_expect(&["export", model.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
        assert_matches_pytorch(&exported, &data, dir, &format!("{e}, exported by wick"));
        models.push((e, m));
    }
    models
}

/// [`assert_case_runs_compiled`], then wick's ONNX export of the case (written into `dir`) read
/// back gives PyTorch's eval logits within 1e-4.
pub fn assert_case_runs_compiled_and_through_onnx(case: &str, dir: &Path) {
    let (_, x, _) = assert_case_runs_compiled(case);
    let path = fixture(&format!("reference/gradients/{case}.safetensors"));
    let exported = dir.join(format!("{case}.onnx"));
    run_expect(&["export", path.to_str().unwrap(), "--out", exported.to_str().unwrap()], 0);
    let back: Vec<f32> = load(&exported).forward(&x, wick::model::forward::Mode::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let eval = wick::tensor_file::TensorFile::read(&path).unwrap().f32("eval_logits").unwrap();
    assert!(max_abs_diff(&back, &eval) <= 1e-4, "{case} through ONNX: {}", max_abs_diff(&back, &eval));
}

/// `wick inspect` of oracle case `case` with `from` replaced by `to` in its architecture file:
/// exit 2; returns what it printed on stderr.
pub fn inspect_case_with_arch_edit(case: &str, from: &str, to: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let arch = std::fs::read_to_string(fixture(&format!("reference/gradients/{case}.arch.json"))).unwrap();
    assert!(arch.contains(from), "{case}'s architecture holds {from}");
    let bad = dir.path().join("bad.arch.json");
    std::fs::write(&bad, arch.replace(from, to)).unwrap();
    let model = fixture(&format!("reference/gradients/{case}.safetensors"));
    run_expect(&["inspect", model.to_str().unwrap(), "--arch", bad.to_str().unwrap()], 2).1
}

/// `m` quantised by min-max calibration on every row `x` of fixture data file `data`; on those
/// rows its integer runtime's fast kernels equal the scalar reference bit for bit. Returns the
/// INT8 model.
pub fn ptq_runs_bit_exact(m: &Model, data: &Path) -> wick::artifact::Int8Model {
    use wick::runtime::{kernels::Kernel, Exec, Executor};
    let file = wick::tensor_file::TensorFile::read(data).unwrap();
    let x = candle_core::Tensor::from_vec(file.f32("x").unwrap(), file.tensors["x"].shape.clone(), &candle_core::Device::Cpu).unwrap();
    let rows = x.dim(0).unwrap();
    let d = wick::data::Dataset { name: "fixture".into(), x: x.clone(), y: vec![0; rows], sha256: String::new() };
    let settings = wick::passes::calibrate::CalibrateSettings { method: wick::calibrate::Method::Minmax, samples: rows, ..Default::default() };
    let q = wick::passes::calibrate::ptq(m, &d, &settings, &wick::progress::Silent).unwrap().int8;
    let run = |e: Exec| -> Vec<f32> { Executor::new(&q, e).unwrap().predict(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
    assert_eq!(run(Exec::Integer(Kernel::Fast)), run(Exec::Integer(Kernel::Reference)));
    q
}

/// Runs `wick args…`, expecting exit code `code`; returns (stdout, stderr).
pub fn run_expect(args: &[&str], code: i32) -> (String, String) {
    let out = wick().args(args).output().expect("wick runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "wick {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic in wick {args:?}: {stderr}");
    (stdout, stderr)
}

/// Max |a − b| over two equal-length slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A model of `arch` with seeded random weights and BatchNorm statistics, and `n` random inputs
/// with cycling labels.
pub fn random_model(arch: wick::model::arch::Arch, n: usize) -> (wick::model::Model, wick::data::Dataset) {
    use candle_core::{Device, Tensor};
    use rand::{RngExt, SeedableRng};
    let m = wick::model::init::init_model(arch, 3).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for (k, v) in &m.params {
        if k.ends_with("running_mean") || k.ends_with("running_var") {
            let c = v.as_tensor().elem_count();
            let vals: Vec<f32> = (0..c).map(|_| if k.ends_with("running_var") { rng.random_range(0.5..2.0) } else { rng.random_range(-0.3..0.3) }).collect();
            v.set(&Tensor::from_vec(vals, c, &Device::Cpu).unwrap()).unwrap();
        }
    }
    let mut shape = vec![n];
    shape.extend_from_slice(m.input_shape());
    let count: usize = shape.iter().product();
    let x = Tensor::from_vec((0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap();
    let classes = m.num_classes() as u32;
    (m, wick::data::Dataset { name: "random".into(), x, y: (0..n as u32).map(|i| i % classes).collect(), sha256: String::new() })
}

/// A conv1d feeding a pointwise conv1d over an odd channel count, then a linear over a 3-d
/// tensor: the layout cases the digits fixtures do not have.
pub fn conv1d_arch() -> wick::model::arch::Arch {
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [3, 11]}, "nodes": [
        {"name": "c", "op": "conv1d", "inputs": ["input"], "in_channels": 3, "out_channels": 5, "kernel_size": 3, "padding": 1, "stride": 2},
        {"name": "r", "op": "relu", "inputs": ["c"]},
        {"name": "p", "op": "conv1d", "inputs": ["r"], "in_channels": 5, "out_channels": 4, "kernel_size": 1},
        {"name": "t", "op": "linear", "inputs": ["p"], "in_features": 6, "out_features": 7},
        {"name": "f", "op": "flatten", "inputs": ["t"]},
        {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 28, "out_features": 4}], "output": "head"}"#;
    serde_json::from_str(json).unwrap()
}

/// The ops the other layout cases lack, over a 1-d signal: sigmoid, tanh, the tanh GELU, a
/// dilated depthwise conv1d, average pooling with padding not counted, max pooling, and a
/// concat along the length axis (dim −1).
pub fn ops_1d_arch() -> wick::model::arch::Arch {
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [4, 12]}, "nodes": [
        {"name": "c", "op": "conv1d", "inputs": ["input"], "in_channels": 4, "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"name": "s", "op": "sigmoid", "inputs": ["c"]},
        {"name": "d", "op": "conv1d", "inputs": ["s"], "in_channels": 6, "out_channels": 6, "kernel_size": 3, "padding": 2, "dilation": 2, "groups": 6},
        {"name": "t", "op": "tanh", "inputs": ["d"]},
        {"name": "ap", "op": "avgpool1d", "inputs": ["t"], "kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": false},
        {"name": "g", "op": "gelu", "inputs": ["ap"], "approximate": "tanh"},
        {"name": "mp", "op": "maxpool1d", "inputs": ["s"], "kernel_size": 2},
        {"name": "cat", "op": "concat", "inputs": ["g", "mp"], "dim": -1},
        {"name": "f", "op": "flatten", "inputs": ["cat"]},
        {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 72, "out_features": 5}], "output": "head"}"#;
    serde_json::from_str(json).unwrap()
}

/// `transpose` and `mean` on a 1-d conv's output: a conv's channels-last `[C, L]` turned into
/// steps, a linear per step, turned back, another conv, its mean over the length kept as a
/// unit dim, beside the mean over the steps of the first and the mean and maximum over the
/// length of its max pooling. The first
/// conv's 11 channels are fewer than a 16-lane vector holds (its rows run on half vectors).
pub fn axes_1d_arch() -> wick::model::arch::Arch {
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [4, 10]}, "nodes": [
        {"name": "c", "op": "conv1d", "inputs": ["input"], "in_channels": 4, "out_channels": 11, "kernel_size": 3, "padding": 1},
        {"name": "steps", "op": "transpose", "inputs": ["c"], "dim0": 1, "dim1": 2},
        {"name": "l", "op": "linear", "inputs": ["steps"], "in_features": 11, "out_features": 5},
        {"name": "back", "op": "transpose", "inputs": ["l"], "dim0": -1, "dim1": 1},
        {"name": "c2", "op": "conv1d", "inputs": ["back"], "in_channels": 5, "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"name": "m", "op": "mean", "inputs": ["c2"], "dim": 2, "keepdim": true},
        {"name": "f", "op": "flatten", "inputs": ["m"]},
        {"name": "over_steps", "op": "mean", "inputs": ["steps"], "dim": 1},
        {"name": "p", "op": "maxpool1d", "inputs": ["c"], "kernel_size": 2},
        {"name": "pm", "op": "mean", "inputs": ["p"], "dim": -1},
        {"name": "px", "op": "amax", "inputs": ["p"], "dim": 2},
        {"name": "cat", "op": "concat", "inputs": ["f", "over_steps", "pm", "px"], "dim": 1},
        {"name": "head", "op": "linear", "inputs": ["cat"], "in_features": 36, "out_features": 4}], "output": "head"}"#;
    serde_json::from_str(json).unwrap()
}

/// `transpose` of a 2-d conv's channels-last output with the last axis (`[C, H, W]` to
/// `[W, H, C]`) and the mean over the middle axis.
pub fn axes_2d_arch() -> wick::model::arch::Arch {
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [2, 3, 4]}, "nodes": [
        {"name": "c", "op": "conv2d", "inputs": ["input"], "in_channels": 2, "out_channels": 3, "kernel_size": 1},
        {"name": "r", "op": "relu", "inputs": ["c"]},
        {"name": "swap", "op": "transpose", "inputs": ["r"], "dim0": 1, "dim1": 3},
        {"name": "m", "op": "mean", "inputs": ["swap"], "dim": -2},
        {"name": "f", "op": "flatten", "inputs": ["m"]},
        {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 12, "out_features": 3}], "output": "head"}"#;
    serde_json::from_str(json).unwrap()
}

/// Reductions of a conv's channels-last output along its spatial axes: the maximum over rows
/// with the dim kept (still an image, read by a conv), then the sum over columns.
pub fn spatial_reductions_arch() -> wick::model::arch::Arch {
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [2, 5, 4]}, "nodes": [
        {"name": "c", "op": "conv2d", "inputs": ["input"], "in_channels": 2, "out_channels": 3, "kernel_size": 1},
        {"name": "rows", "op": "amax", "inputs": ["c"], "dim": 2, "keepdim": true},
        {"name": "c2", "op": "conv2d", "inputs": ["rows"], "in_channels": 3, "out_channels": 4, "kernel_size": 1},
        {"name": "cols", "op": "sum", "inputs": ["c2"], "dim": -1},
        {"name": "f", "op": "flatten", "inputs": ["cols"]},
        {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 4, "out_features": 3}], "output": "head"}"#;
    serde_json::from_str(json).unwrap()
}

/// Convs whose groups read one input channel each (the direct kernel): a 3x3 conv of a
/// one-channel image, then a strided depthwise conv with channel multiplier 2.
pub fn one_channel_groups_arch() -> wick::model::arch::Arch {
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [1, 6, 5]}, "nodes": [
        {"name": "stem", "op": "conv2d", "inputs": ["input"], "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"name": "r", "op": "relu", "inputs": ["stem"]},
        {"name": "dw", "op": "conv2d", "inputs": ["r"], "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 4, "bias": false},
        {"name": "s", "op": "silu", "inputs": ["dw"]},
        {"name": "f", "op": "flatten", "inputs": ["s"]},
        {"name": "head", "op": "linear", "inputs": ["f"], "in_features": 72, "out_features": 3}], "output": "head"}"#;
    serde_json::from_str(json).unwrap()
}

/// BatchNorm 2-d after a ReLU (channels last in the plans) and 1-d after a tanh, neither
/// foldable into a layer; LayerNorm over the last dim of a conv's output; softmax over the
/// features.
pub fn norms_arch() -> wick::model::arch::Arch {
    let json = r#"{"format": "wick-arch", "version": 1, "input": {"shape": [3, 6, 6]}, "nodes": [
        {"name": "c", "op": "conv2d", "inputs": ["input"], "in_channels": 3, "out_channels": 4, "kernel_size": [3, 1], "padding": [1, 0], "bias": false},
        {"name": "r", "op": "relu", "inputs": ["c"]},
        {"name": "bn", "op": "batchnorm2d", "inputs": ["r"], "num_features": 4, "eps": 0.001},
        {"name": "ln", "op": "layernorm", "inputs": ["bn"], "normalized_shape": [6], "eps": 1e-6},
        {"name": "f", "op": "flatten", "inputs": ["ln"]},
        {"name": "fc", "op": "linear", "inputs": ["f"], "in_features": 144, "out_features": 8},
        {"name": "t", "op": "tanh", "inputs": ["fc"]},
        {"name": "bn1", "op": "batchnorm1d", "inputs": ["t"], "num_features": 8},
        {"name": "s", "op": "softmax", "inputs": ["bn1"], "dim": -1},
        {"name": "head", "op": "linear", "inputs": ["s"], "in_features": 8, "out_features": 3}], "output": "head"}"#;
    serde_json::from_str(json).unwrap()
}
