//! Loading and saving float models. The architecture is found in this order: an explicit
//! `--arch FILE`, the file's own `__metadata__["wick"]` (wick's outputs are self-describing), a
//! sidecar `<stem>.arch.json` beside the file. Uses `model`, `tensor_file`, `error`, and `onnx`
//! for `.onnx` files.

use super::arch::Arch;
use super::Model;
use crate::error::{Result, WickError};
use crate::tensor_file::{self, RawTensor, TensorFile};
use candle_core::Tensor;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The metadata key under which wick stores its JSON.
pub const META_KEY: &str = "wick";
/// Version of wick's file metadata.
pub const META_VERSION: u32 = 1;

/// A loaded float model and the warnings loading raised (unused tensors).
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<String>,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
}

/// wick's metadata JSON of a file, if it has one.
pub fn wick_metadata(file: &TensorFile) -> Result<Option<Value>> {
    match file.metadata.get(META_KEY) {
        None => Ok(None),
        Some(s) => serde_json::from_str(s).map(Some).map_err(|e| WickError::invalid(format!("{}: metadata '{META_KEY}'", file.name()), e.to_string())),
    }
}

/// The sidecar architecture path of a model file: `dir/stem.arch.json`.
pub fn sidecar_path(model: &Path) -> PathBuf {
    let stem = model.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    model.with_file_name(format!("{stem}.arch.json"))
}

/// Reads an architecture file.
pub fn read_arch(path: &Path) -> Result<Arch> {
    let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
    Arch::from_json(&text, &path.display().to_string())
}

/// Resolves the architecture of `file` (see the module doc for the order).
pub fn resolve_arch(file: &TensorFile, arch_override: Option<&Path>) -> Result<Arch> {
    if let Some(p) = arch_override {
        return read_arch(p);
    }
    if let Some(meta) = wick_metadata(file)? {
        if let Some(a) = meta.get("arch") {
            let origin = format!("{} (metadata)", file.name());
            return Arch::from_json(&a.to_string(), &origin);
        }
    }
    let side = sidecar_path(&file.path);
    if side.exists() {
        return read_arch(&side);
    }
    Err(WickError::invalid(file.name(), format!("no architecture: the file has no wick metadata, there is no sidecar {}, and no --arch was given", side.display())))
}

/// Loads a float model from a safetensors file, or from an ONNX file (by its extension).
pub fn load_model(path: &Path, arch_override: Option<&Path>) -> Result<Loaded> {
    if crate::hf::is_model_dir(path) {
        refuse_arch(path, arch_override, "a model directory, whose config.json is its architecture")?;
        return crate::hf::load(path, None);
    }
    if crate::onnx::is_onnx(path) {
        refuse_arch(path, arch_override, crate::onnx::CARRIES_ITS_GRAPH)?;
        return crate::onnx::load_model(path);
    }
    let file = TensorFile::read(path)?;
    let arch = resolve_arch(&file, arch_override)?;
    model_from_file(&file, arch)
}

/// Builds a float model from an already-read file and its architecture.
pub fn model_from_file(file: &TensorFile, arch: Arch) -> Result<Loaded> {
    let name = file.name();
    let needed: BTreeSet<String> = arch.nodes.iter().flat_map(|n| n.op.param_suffixes().into_iter().map(move |(s, _)| n.param(s))).collect();
    let mut tensors = BTreeMap::new();
    let mut warnings = vec![];
    for (k, t) in &file.tensors {
        if !t.is_float() {
            if needed.contains(k) {
                return Err(WickError::BadDtype { file: name.clone(), tensor: k.clone(), dtype: format!("{:?}", t.dtype), role: "a float parameter" });
            }
            continue; // integer buffers such as num_batches_tracked or position_ids: not used
        }
        if !needed.contains(k) {
            warnings.push(format!("{name}: tensor '{k}' is not used by the architecture"));
            continue;
        }
        let v = tensor_file::to_f32(t, &name, k)?;
        tensors.insert(k.clone(), Tensor::from_vec(v, t.shape.clone(), &super::device())?);
    }
    let model = Model::new(arch, tensors, &name)?;
    Ok(Loaded { model, warnings, sha256: file.sha256.clone() })
}

/// Saves a float model with its architecture and `extra` metadata fields, atomically.
pub fn save_model(model: &Model, path: &Path, extra: BTreeMap<String, Value>) -> Result<()> {
    let mut tensors = BTreeMap::new();
    for (k, t) in model.tensors() {
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        tensors.insert(k, RawTensor::from_f32(t.dims().to_vec(), &v));
    }
    let mut meta = serde_json::Map::new();
    meta.insert("format_version".into(), META_VERSION.into());
    meta.insert("kind".into(), "float".into());
    meta.insert("arch".into(), serde_json::to_value(&model.arch).expect("arch serialises"));
    meta.extend(extra);
    let mut md = BTreeMap::new();
    md.insert(META_KEY.to_string(), Value::Object(meta).to_string());
    tensor_file::write(path, &tensors, &md)
}

/// `--arch` with a model that carries its own architecture (`what` it is, for the message): an
/// error.
pub fn refuse_arch(path: &Path, arch_override: Option<&Path>, what: &str) -> Result<()> {
    match arch_override {
        Some(a) => Err(WickError::invalid("--arch", format!("{} is {what}; drop --arch {}", path.display(), a.display()))),
        None => Ok(()),
    }
}
