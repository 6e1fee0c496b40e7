//! ONNX in and out. `import` maps a PyTorch-exported ONNX graph onto wick's ops (every command
//! that takes a model takes a `.onnx` file through [`load_model`]); `export` writes a float
//! model as a plain ONNX graph and an INT8 artifact as a QDQ graph that ONNX Runtime runs.
//! The protobuf messages are declared for prost in `proto`. Uses `model`, `artifact`, `quant`.

mod arranged;
pub mod export;
pub mod import;
pub mod proto;
pub mod tensor;

use crate::artifact::{AnyModel, Int8Model};
use crate::error::{Result, WickError};
use crate::model::load::Loaded;
use crate::model::Model;
use candle_core::Tensor;
use prost::Message;
use std::path::Path;

/// Whether `path` names an ONNX file (by its `.onnx` extension).
pub fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// The gate blocks of a GRU/LSTM weight, bias or recurrent matrix in the other layout's order:
/// block `k` of the result is block `order[k]` of `v`, each `hidden · cols` values. ONNX's GRU
/// blocks are z, r, h and PyTorch's (wick's) r, z, n; ONNX's LSTM blocks are i, o, f, c and
/// PyTorch's i, f, g, o.
pub fn reorder_gates(v: &[f32], gru: bool, to_onnx: bool, hidden: usize, cols: usize) -> Vec<f32> {
    let order: &[usize] = match (gru, to_onnx) {
        (true, _) => &[1, 0, 2],
        (false, false) => &[0, 2, 3, 1],
        (false, true) => &[0, 3, 1, 2],
    };
    let block = hidden * cols;
    order.iter().flat_map(|&b| v[b * block..(b + 1) * block].iter().copied()).collect()
}

/// What `--arch` is refused for with an ONNX file (`model::load::refuse_arch`).
pub const CARRIES_ITS_GRAPH: &str = "an ONNX file, which carries its own graph";

/// The default-domain opset a model imports (ONNX's rule: an absent import means opset 1).
pub fn opset(model: &proto::ModelProto) -> i64 {
    model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(1, |o| o.version)
}

/// Loads an ONNX file: a float model, or an INT8 model when QDQ pairs quantise its layers.
/// Returns it and the model's hex sha256 ([`model_sha256`]).
pub fn load(path: &Path) -> Result<(AnyModel, String)> {
    let (bytes, model, dir) = read(path)?;
    let any = from_proto(&model, &path.display().to_string(), dir)?;
    Ok((any, sha256_of(&bytes, &model, dir)?))
}

/// An ONNX file's bytes, the model they encode, and the folder its external data lies in.
fn read(path: &Path) -> Result<(Vec<u8>, proto::ModelProto, &Path)> {
    let bytes = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
    let model = proto::ModelProto::decode(bytes.as_slice()).map_err(|e| WickError::invalid(path.display().to_string(), format!("not a valid ONNX model: {e}")))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((bytes, model, dir))
}

/// The external data files `model`'s initializers name, each once, in name order (the dynamo
/// exporter writes the weights to `<model>.onnx.data` by default, so the `.onnx` file alone is
/// a fraction of the model).
fn external_files(model: &proto::ModelProto, dir: &Path) -> Vec<std::path::PathBuf> {
    let locations: std::collections::BTreeSet<&str> =
        model.graph.iter().flat_map(|g| &g.initializer).filter(|t| t.data_location == 1).filter_map(|t| t.external_data.iter().find(|e| e.key == "location").map(|e| e.value.as_str())).collect();
    locations.into_iter().map(|l| dir.join(l)).collect()
}

/// Bytes on disk of an ONNX model: the file and every external data file its initializers
/// name, each once.
pub fn bytes_on_disk(path: &Path) -> Result<u64> {
    let (bytes, model, dir) = read(path)?;
    external_files(&model, dir).iter().try_fold(bytes.len() as u64, |total, file| Ok(total + std::fs::metadata(file).map_err(|e| WickError::io(file, e))?.len()))
}

/// Hex sha256 of an ONNX model: of the graph file's bytes followed by each external data
/// file's, in [`external_files`] order, so that new weights beside an unchanged graph file
/// change it (a report's provenance, `wick batch`'s check that a job's inputs are the same).
pub fn model_sha256(path: &Path) -> Result<String> {
    let (bytes, model, dir) = read(path)?;
    sha256_of(&bytes, &model, dir)
}

fn sha256_of(bytes: &[u8], model: &proto::ModelProto, dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(bytes);
    for file in external_files(model, dir) {
        let mut f = std::fs::File::open(&file).map_err(|e| WickError::io(&file, e))?;
        std::io::copy(&mut f, &mut hash).map_err(|e| WickError::io(&file, e))?;
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// An ONNX model from its bytes; `file` names it in errors and `dir` holds its external data.
pub fn from_bytes(bytes: &[u8], file: &str, dir: &Path) -> Result<AnyModel> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| WickError::invalid(file, format!("not a valid ONNX model: {e}")))?;
    from_proto(&model, file, dir)
}

/// An ONNX model from its decoded protobuf.
fn from_proto(model: &proto::ModelProto, file: &str, dir: &Path) -> Result<AnyModel> {
    let graph = model.graph.as_ref().ok_or_else(|| WickError::invalid(file, "the ONNX model has no graph"))?;
    let imported = import::import(graph, opset(model), file, dir)?;
    let mut tensors = std::collections::BTreeMap::new();
    for (name, (dims, values)) in imported.params {
        tensors.insert(name, Tensor::from_vec(values, dims, &crate::model::device())?);
    }
    let model = Model::new(imported.arch, tensors, file)?;
    if imported.layers.is_empty() && imported.tables.is_empty() {
        return Ok(AnyModel::Float(model));
    }
    let info = serde_json::Map::from_iter([("imported_from".to_string(), serde_json::Value::String(file.to_string()))]);
    Ok(AnyModel::Int8(Int8Model { model, layers: imported.layers, tables: imported.tables, info }))
}

/// Loads an ONNX file as a float wick model; a QDQ (INT8) graph is refused.
pub fn load_model(path: &Path) -> Result<Loaded> {
    match load(path)? {
        (AnyModel::Float(model), sha256) => Ok(Loaded { model, warnings: vec![], sha256 }),
        (AnyModel::Int8(_), _) => Err(WickError::invalid(path.display().to_string(), "is a quantised (QDQ) model; this command takes a float model")),
    }
}
