//! What each fuzz target does with an input: parse it as a user's file would be parsed, and if
//! that succeeds, use the result the way the CLI does (build, run, quantise, write). A parser may
//! reject any input with an error; a panic, an abort, a hang or an allocation past the fuzzer's
//! limit is a bug. Shared by `fuzz_targets/*.rs` and the corpus replay test
//! (`tests/integration/fuzz_corpus.rs`), so the replay checks exactly what the fuzzer ran.

use candle_core::{Device, Tensor};
use std::path::Path;
use wick::artifact::{AnyModel, Int8Model};
use wick::data::Dataset;
use wick::model::arch::Arch;
use wick::model::graph;
use wick::model::Model;
use wick::runtime::plan::Plan;
use wick::tensor_file::TensorFile;

/// The largest model and activation the targets build and run: architectures that pass the
/// checks may still be far bigger than a fuzzer's memory, and only the checks are under test there.
const MAX_RUN_PARAMS: usize = 1 << 18;
const MAX_RUN_VALUES: usize = 1 << 16;

/// A safetensors file: the header and tensor table, then a float model from its metadata's
/// architecture, as `wick inspect` and `wick eval` load one.
pub fn safetensors(data: &[u8]) {
    let Ok(file) = TensorFile::parse(Path::new("fuzz.safetensors"), data) else { return };
    let _ = wick::model::load::wick_metadata(&file);
    let Ok(arch) = wick::model::load::resolve_arch(&file, None) else { return };
    if !small(&arch) {
        return;
    }
    if let Ok(loaded) = wick::model::load::model_from_file(&file, arch) {
        run_float(&loaded.model);
    }
}

/// An architecture JSON: parsed, analysed, and when small, built with initial weights, run by
/// candle and by the compiled plan, quantised and run by the integer plan.
pub fn architecture(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(arch) = Arch::from_json(text, "fuzz.arch.json") else { return };
    if !small(&arch) {
        return;
    }
    let Ok(model) = wick::model::init::init_model(arch, 0) else { return };
    let _ = wick::model::stats::total_macs(&model);
    run_float(&model);
    let Some(x) = input(&model) else { return };
    let calib = Dataset { name: "fuzz".into(), x, y: vec![0; 2], sha256: String::new() };
    let settings = wick::passes::calibrate::CalibrateSettings { samples: 2, ..Default::default() };
    if let Ok(out) = wick::passes::calibrate::ptq(&model, &calib, &settings, &wick::progress::Silent) {
        run_int8(&out.int8);
    }
}

/// A recipe JSON.
pub fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = wick::recipe::parse(text, "fuzz.json");
}

/// A batch manifest JSON, and each job's gate allowance.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(jobs) = wick::job::manifest::parse(text, Path::new("fuzz/manifest.json")) else { return };
    for j in jobs {
        let _ = j.spec.allowance();
    }
}

/// An INT8 artifact: the safetensors file, its metadata and layers, and when small, the
/// integer plan run on zeros, as `wick eval` runs it.
pub fn int8_artifact(data: &[u8]) {
    let Ok(file) = TensorFile::parse(Path::new("fuzz.int8.safetensors"), data) else { return };
    let Ok(Some(q)) = Int8Model::read(&file) else { return };
    if small(&q.model.arch) {
        run_int8(&q);
    }
}

/// An ONNX file: decoded and mapped onto wick's ops (constants folded, activation and QDQ
/// patterns fused), and when small, run on its compiled plan and exported back to ONNX and read
/// again, as `wick eval`, `wick export` and `wick import` do. External data points nowhere.
pub fn onnx(data: &[u8]) {
    let no_dir = Path::new("/nonexistent-wick-fuzz");
    let Ok(model) = wick::onnx::from_bytes(data, "fuzz.onnx", no_dir) else { return };
    let exported = match &model {
        AnyModel::Float(m) if small(&m.arch) => {
            run_float(m);
            wick::onnx::export::float_model(m)
        }
        AnyModel::Int8(q) if small(&q.model.arch) => {
            run_int8(q);
            wick::onnx::export::int8_model(q)
        }
        _ => return,
    };
    if let Ok(p) = exported {
        let _ = wick::onnx::from_bytes(&wick::onnx::export::encode(&p), "fuzz.exported.onnx", no_dir);
    }
}

/// Whether the architecture passes the checks and is small enough to build and run here.
fn small(arch: &Arch) -> bool {
    let Ok(g) = graph::analyse(arch, "fuzz") else { return false };
    let params: usize = arch.nodes.iter().flat_map(|n| n.op.param_suffixes().into_iter().map(move |(s, _)| n.op.param_shape(s).iter().product::<usize>())).sum();
    let values = g.shapes.values().map(|s| s.iter().product::<usize>()).max().unwrap_or(0);
    params <= MAX_RUN_PARAMS && values <= MAX_RUN_VALUES
}

/// Two samples of zeros in the model's input shape.
fn input(model: &Model) -> Option<Tensor> {
    let mut shape = vec![2];
    shape.extend_from_slice(model.input_shape());
    Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).ok()
}

fn run_float(model: &Model) {
    let Some(x) = input(model) else { return };
    let _ = model.forward(&x, wick::model::forward::Mode::Eval);
    if let Ok(plan) = Plan::float(model) {
        let _ = plan.predict(&x);
    }
}

fn run_int8(q: &Int8Model) {
    let Some(x) = input(&q.model) else { return };
    if let Ok(plan) = Plan::int8(q) {
        let _ = plan.predict(&x);
    }
}
