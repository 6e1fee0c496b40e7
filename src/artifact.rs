//! The INT8 artifact: an in-memory INT8 model and its safetensors file format (names follow the
//! compressed-tensors convention): per quantised unit (`model::qunit`; a layer `<layer>` or a
//! recurrent matrix `<node>.weight_hh_l0`), its weight (`<layer>.weight`, or the matrix's own
//! name) I8 per-output-channel symmetric, `<unit>.weight_scale` F32 `[out]`,
//! `<unit>.input_scale` F32 `[1]`, `<unit>.input_zero_point` U8/I8 `[1]` (none for a per-token
//! input, quantised at run time row by row); an INT8 lookup table (`tables`) as `<node>.weight`
//! I8 with `<node>.weight_scale` F32 per row; every other parameter F32, and one metadata key
//! `wick` with the architecture, each quantised layer's scheme, provenance and metrics.
//! Uses `model`, `quant`, `tensor_file`.

use crate::error::{Result, WickError};
use crate::model::arch::Op;
use crate::model::load::{self, META_KEY};
use crate::model::qunit::{node_units, tensors_of};
use crate::model::Model;
use crate::quant::{ActType, InputQuant, QParams, QWeight};
use crate::tensor_file::{self, RawTensor, TensorFile};
use candle_core::Tensor;
use safetensors::Dtype;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The artifact format this build writes. Version 2 states the weight scheme once and each
/// quantised layer's input type in `quantization.layers`; version 1 repeated the whole scheme,
/// with the scales, per layer. Both are read.
pub const ARTIFACT_VERSION: u32 = 2;

/// One quantised layer: its integer weight and the quantisation of its input.
#[derive(Debug, Clone)]
pub struct QuantLayer {
    pub weight: QWeight,
    pub input: InputQuant,
}

impl QuantLayer {
    /// `Σ_k w_c[k]` per output channel: the zero-point correction `zp·Σw_c` of the integer
    /// epilogue.
    pub fn weight_sums(&self) -> Vec<i32> {
        let w = &self.weight;
        let per = w.values.len() / w.shape[0];
        w.values.chunks(per).map(|row| row.iter().map(|&v| v as i32).sum()).collect()
    }

    /// `s_in · s_c` per output channel: what one unit of the i32 accumulator is worth; for a
    /// per-token input `s_c` alone (each row's `s_in` multiplies it at run time).
    pub fn multipliers(&self) -> Vec<f32> {
        match self.input {
            InputQuant::Static(q) => self.weight.scales.iter().map(|&s| q.scale * s).collect(),
            InputQuant::PerToken(_) => self.weight.scales.clone(),
        }
    }
}

/// An INT8 model: a float model whose quantised layers hold their *dequantised* weights
/// (`q · s_c`, so the float simulation and every float op share one executor), plus the integer
/// data of each quantised layer.
#[derive(Debug)]
pub struct Int8Model {
    pub model: Model,
    pub layers: BTreeMap<String, QuantLayer>,
    /// Lookup tables stored INT8 per row (an embedding's `weight`, by node name): the codes and
    /// scales of [`quantize_weight`](crate::quant::quantize_weight), gathered rather than
    /// multiplied, so the model holds them dequantised and every executor reads those values.
    pub tables: BTreeMap<String, QWeight>,
    /// Provenance and metrics carried in the file's metadata.
    pub info: Map<String, Value>,
}

impl Int8Model {
    /// Builds an INT8 model from a float model, quantising the weights of `inputs`' layers and
    /// putting their biases on the accumulator's grid, `b̂_c = round(b_c / (s_in·s_c))·s_in·s_c`:
    /// the int32 bias integer runtimes add (what `onnx::export` writes), so that every runtime
    /// given the artifact computes the same sums. A per-token input has no fixed grid: its
    /// bias stays f32, added after the scaling. Every lookup table (an embedding's) is stored
    /// INT8 per row (`quantize_tables`): a classifier over token ids is mostly its table.
    pub fn quantize(model: &Model, inputs: &BTreeMap<String, InputQuant>) -> Result<Int8Model> {
        let mut tensors = model.tensors();
        let mut layers = BTreeMap::new();
        for (name, &input) in inputs {
            let (wname, bname) = tensors_of(name, |k| tensors.contains_key(k));
            let w = tensors.get(&wname).ok_or_else(|| WickError::node(name, "has no weight to quantise"))?;
            let shape = w.dims().to_vec();
            let qw = crate::quant::quantize_weight(&w.flatten_all()?.to_vec1()?, &shape);
            tensors.insert(wname, Tensor::from_vec(qw.dequantize(), shape, w.device())?);
            let layer = QuantLayer { weight: qw, input };
            if let Some(b) = tensors.get(&bname).filter(|_| input.fixed().is_some()) {
                let grid: Vec<f32> = b.to_vec1::<f32>()?.iter().zip(layer.multipliers()).map(|(&b, m)| bias_code(b, m) as f32 * m).collect();
                let n = grid.len();
                tensors.insert(bname, Tensor::from_vec(grid, n, b.device())?);
            }
            layers.insert(name.clone(), layer);
        }
        let m = Model::new(model.arch.clone(), tensors, &model.source)?;
        let mut q = Int8Model { model: m, layers, tables: BTreeMap::new(), info: Map::new() };
        let tables: Vec<String> = model.arch.nodes.iter().filter(|n| matches!(n.op, Op::Embedding(_) | Op::PositionEmbedding(_) | Op::EmbeddingRow(_))).map(|n| n.name.clone()).collect();
        q.quantize_tables(&tables)?;
        Ok(q)
    }

    /// Stores the `weight` of each node of `nodes` INT8 per row (see `tables`): the model then
    /// holds `q · s_row`.
    pub fn quantize_tables(&mut self, nodes: &[String]) -> Result<()> {
        let mut tensors = self.model.tensors();
        for node in nodes {
            let name = format!("{node}.weight");
            let w = tensors.get(&name).ok_or_else(|| WickError::node(node, "has no weight table to quantise"))?;
            let shape = w.dims().to_vec();
            let qw = crate::quant::quantize_weight(&w.flatten_all()?.to_vec1()?, &shape);
            tensors.insert(name, Tensor::from_vec(qw.dequantize(), shape, w.device())?);
            self.tables.insert(node.clone(), qw);
        }
        self.model = Model::new(self.model.arch.clone(), tensors, &self.model.source)?;
        Ok(())
    }

    /// Whether `other` holds the same model bit for bit: architecture, every float tensor, and
    /// every quantised layer's codes, scales and input quantisation (the check that a file read
    /// back is the model that was evaluated).
    pub fn same_as(&self, other: &Int8Model) -> Result<bool> {
        if self.model.arch.nodes != other.model.arch.nodes || self.model.params.keys().ne(other.model.params.keys()) {
            return Ok(false);
        }
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect()) };
        for (k, v) in &self.model.params {
            if bits(v.as_tensor())? != bits(other.model.params[k].as_tensor())? {
                return Ok(false);
            }
        }
        let layer = |q: &QuantLayer| {
            let input = match q.input {
                InputQuant::Static(p) => (p.scale.to_bits(), p.zero_point, p.act, false),
                InputQuant::PerToken(act) => (0, 0, act, true),
            };
            (q.weight.values.clone(), q.weight.shape.clone(), q.weight.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(), input)
        };
        Ok(self.tables == other.tables && self.layers.len() == other.layers.len() && self.layers.iter().zip(&other.layers).all(|((ka, a), (kb, b))| ka == kb && layer(a) == layer(b)))
    }

    /// Each quantised unit by its weight tensor's name.
    pub fn quantised_weights(&self) -> BTreeMap<String, (&str, &QuantLayer)> {
        self.layers.iter().map(|(l, q)| (tensors_of(l, |k| self.model.params.contains_key(k)).0, (l.as_str(), q))).collect()
    }

    /// Whether node `name` runs any quantised unit.
    pub fn node_quantised(&self, name: &str) -> bool {
        self.model.arch.node(name).is_some_and(|n| node_units(n).iter().any(|u| self.layers.contains_key(&u.key)))
    }

    /// The float bias of unit `name`, if it has one.
    pub fn bias(&self, name: &str) -> Result<Option<Vec<f32>>> {
        match self.model.params.get(&tensors_of(name, |k| self.model.params.contains_key(k)).1) {
            Some(b) => Ok(Some(b.as_tensor().to_vec1::<f32>()?)),
            None => Ok(None),
        }
    }

    /// Writes the artifact atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = BTreeMap::new();
        let mut layer_types = Map::new();
        let by_weight = self.quantised_weights();
        let tables: BTreeMap<String, (&String, &QWeight)> = self.tables.iter().map(|(n, q)| (format!("{n}.weight"), (n, q))).collect();
        for (name, t) in self.model.tensors() {
            if let Some((node, q)) = tables.get(&name) {
                out.insert(name.clone(), RawTensor::from_i8(q.shape.clone(), &q.values));
                out.insert(format!("{node}.weight_scale"), RawTensor::from_f32(vec![q.scales.len()], &q.scales));
                continue;
            }
            match by_weight.get(&name).copied() {
                Some((l, q)) => {
                    out.insert(name.clone(), RawTensor::from_i8(q.weight.shape.clone(), &q.weight.values));
                    out.insert(format!("{l}.weight_scale"), RawTensor::from_f32(vec![q.weight.scales.len()], &q.weight.scales));
                    match q.input {
                        InputQuant::Static(p) => {
                            out.insert(format!("{l}.input_scale"), RawTensor::from_f32(vec![1], &[p.scale]));
                            let zp = match p.act {
                                ActType::U8 | ActType::U7 => RawTensor::from_u8(vec![1], &[p.zero_point as u8]),
                                ActType::I8 => RawTensor::from_i8(vec![1], &[p.zero_point as i8]),
                            };
                            out.insert(format!("{l}.input_zero_point"), zp);
                            layer_types.insert(l.to_string(), json!(p.act));
                        }
                        // Nothing to store: each row's parameters come from the row at run time.
                        InputQuant::PerToken(act) => {
                            layer_types.insert(l.to_string(), json!(format!("{act}{PER_TOKEN_SUFFIX}")));
                        }
                    }
                }
                None => {
                    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                    out.insert(name, RawTensor::from_f32(t.dims().to_vec(), &v));
                }
            }
        }
        let mut meta = Map::new();
        meta.insert("format_version".into(), ARTIFACT_VERSION.into());
        meta.insert("kind".into(), "int8".into());
        meta.insert("arch".into(), serde_json::to_value(&self.model.arch).expect("arch serialises"));
        // The scales and zero points are tensors; the metadata says how to read them.
        meta.insert(
            "quantization".into(),
            json!({
                "weight": {"dtype": "i8", "symmetric": true, "granularity": "per_channel", "axis": 0, "range": [-127, 127]},
                "input": {"granularity": "per_tensor, or per_token (dynamic, no stored parameters) where a layer's type ends in _per_token"},
                "layers": Value::Object(layer_types),
                "tables": self.tables.keys().collect::<Vec<_>>(),
            }),
        );
        for (k, v) in &self.info {
            meta.insert(k.clone(), v.clone());
        }
        let mut md = BTreeMap::new();
        md.insert(META_KEY.to_string(), Value::Object(meta).to_string());
        tensor_file::write(path, &out, &md)
    }

    /// Reads an artifact; `None` when the file is not an INT8 artifact.
    pub fn read(file: &TensorFile) -> Result<Option<Int8Model>> {
        let Some(meta) = load::wick_metadata(file)? else { return Ok(None) };
        if meta.get("kind").and_then(Value::as_str) != Some("int8") {
            return Ok(None);
        }
        let fname = file.name();
        let arch = load::resolve_arch(file, None)?;
        let layer_types = quantized_layers(&meta, &fname)?;
        let table_nodes = quantized_tables(&meta, &fname)?;
        let mut tables = BTreeMap::new();
        for node in &table_nodes {
            tables.insert(node.clone(), read_table(file, node)?);
        }
        let mut floats = TensorFile { path: file.path.clone(), tensors: BTreeMap::new(), metadata: BTreeMap::new(), sha256: file.sha256.clone() };
        let mut layers = BTreeMap::new();
        let weights: BTreeMap<String, &str> = layer_types.keys().map(|l| (tensors_of(l, |k| file.tensors.contains_key(k)).0, l.as_str())).collect();
        for (name, t) in &file.tensors {
            if let Some(node) = name.strip_suffix(".weight").filter(|n| tables.contains_key(*n)) {
                floats.tensors.insert(name.clone(), RawTensor::from_f32(tables[node].shape.clone(), &tables[node].dequantize()));
            } else if let Some(&l) = weights.get(name) {
                layers.insert(l.to_string(), read_layer(file, l, name, t, &layer_types[l])?);
            } else if !(name.ends_with(".weight_scale") || name.ends_with(".input_scale") || name.ends_with(".input_zero_point")) {
                floats.tensors.insert(name.clone(), t.clone());
            }
        }
        for (w, l) in &weights {
            let q = layers.get(*l).ok_or_else(|| WickError::MissingTensor { file: fname.clone(), tensor: w.clone(), node: l.to_string() })?;
            floats.tensors.insert(w.clone(), RawTensor::from_f32(q.weight.shape.clone(), &q.weight.dequantize()));
        }
        let mut loaded = load::model_from_file(&floats, arch)?;
        loaded.model.source = fname;
        let mut info = meta.as_object().cloned().unwrap_or_default();
        for k in ["format_version", "kind", "arch", "quantization"] {
            info.remove(k);
        }
        Ok(Some(Int8Model { model: loaded.model, layers, tables, info }))
    }
}

/// The nodes whose weight tables are stored INT8 per row (`quantization.tables`; none when the
/// field is absent, as in files written before it).
fn quantized_tables(meta: &Value, file: &str) -> Result<Vec<String>> {
    let bad = || WickError::invalid(format!("{file}: metadata '{META_KEY}'"), "field 'quantization.tables' must be a list of node names");
    match meta.pointer("/quantization/tables") {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect(),
        Some(_) => Err(bad()),
    }
}

/// The INT8 table of `node`: `<node>.weight` I8 `[rows, …]` and `<node>.weight_scale` F32
/// `[rows]`, positive and finite.
fn read_table(file: &TensorFile, node: &str) -> Result<QWeight> {
    let f = file.name();
    let need = |n: String| file.tensors.get(&n).ok_or_else(|| WickError::MissingTensor { file: f.clone(), tensor: n.clone(), node: node.to_string() });
    let w = need(format!("{node}.weight"))?;
    if w.dtype != Dtype::I8 || w.shape.is_empty() {
        return Err(WickError::BadDtype { file: f.clone(), tensor: format!("{node}.weight"), dtype: format!("{:?}", w.dtype), role: "an INT8 table" });
    }
    let scales = tensor_file::to_f32(need(format!("{node}.weight_scale"))?, &f, &format!("{node}.weight_scale"))?;
    if scales.len() != w.shape[0] || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(WickError::invalid(format!("{f}: tensor '{node}.weight_scale'"), format!("must hold {} positive finite scales", w.shape[0])));
    }
    Ok(QWeight { shape: w.shape.clone(), values: w.data.iter().map(|&b| b as i8).collect(), scales })
}

/// The suffix of a per-token input's declared type (`u8_per_token`).
const PER_TOKEN_SUFFIX: &str = "_per_token";

/// Each quantised layer's input type (`u8`, `u7`, `i8`, or one of them with `_per_token`) from
/// the metadata of either version.
fn quantized_layers(meta: &Value, file: &str) -> Result<BTreeMap<String, String>> {
    let bad = |msg: String| WickError::invalid(format!("{file}: metadata '{META_KEY}'"), msg);
    let version = meta.get("format_version").and_then(Value::as_u64);
    let q = meta.get("quantization").and_then(Value::as_object).ok_or_else(|| bad("field 'quantization' is missing or not an object".into()))?;
    let entries: Vec<(String, Option<&str>)> = match version {
        Some(2) => match q.get("layers").and_then(Value::as_object) {
            Some(layers) => layers.iter().map(|(k, v)| (k.clone(), v.as_str())).collect(),
            None => return Err(bad("field 'quantization.layers' is missing or not an object".into())),
        },
        Some(1) => q.iter().map(|(k, v)| (k.clone(), v.pointer("/input/dtype").and_then(Value::as_str))).collect(),
        _ => {
            return Err(bad(format!(
                "field 'format_version' is {}; this wick reads artifact versions 1 and {ARTIFACT_VERSION}",
                meta.get("format_version").map_or("missing".to_string(), Value::to_string)
            )))
        }
    };
    entries
        .into_iter()
        .map(|(k, t)| match t {
            Some(t) if matches!(t.strip_suffix(PER_TOKEN_SUFFIX).unwrap_or(t), "u8" | "u7" | "i8") => Ok((k, t.to_string())),
            other => Err(bad(format!("layer '{k}': input type {other:?} is not one of u8, u7, i8 (each optionally with {PER_TOKEN_SUFFIX})"))),
        })
        .collect()
}

/// Reads unit `l` (weight tensor `wname`, `w`) whose metadata declares input type `declared`
/// (`u8`, `u7` or `i8`; 7-bit codes are stored as u8, so only the metadata tells them apart).
fn read_layer(file: &TensorFile, l: &str, wname: &str, w: &RawTensor, declared: &str) -> Result<QuantLayer> {
    let f = file.name();
    let need = |suffix: &str| -> Result<&RawTensor> {
        let n = format!("{l}.{suffix}");
        file.tensors.get(&n).ok_or_else(|| WickError::MissingTensor { file: f.clone(), tensor: n, node: l.to_string() })
    };
    if w.dtype != Dtype::I8 {
        return Err(WickError::BadDtype { file: f.clone(), tensor: wname.to_string(), dtype: format!("{:?}", w.dtype), role: "an INT8 weight" });
    }
    let scales = tensor_file::to_f32(need("weight_scale")?, &f, &format!("{l}.weight_scale"))?;
    if scales.len() != w.shape[0] || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(WickError::invalid(format!("{f}: tensor '{l}.weight_scale'"), format!("must hold {} positive finite scales", w.shape[0])));
    }
    let values: Vec<i8> = w.data.iter().map(|&b| b as i8).collect();
    if let Some(i) = values.iter().position(|&v| v == i8::MIN) {
        return Err(WickError::invalid(format!("{f}: tensor '{wname}'"), format!("holds the code -128 at flat index {i}, outside the format's symmetric range -127..=127")));
    }
    let weight = QWeight { shape: w.shape.clone(), values, scales };
    if let Some(act) = declared.strip_suffix(PER_TOKEN_SUFFIX) {
        let act = act.parse().expect("checked by quantized_layers");
        return Ok(QuantLayer { weight, input: InputQuant::PerToken(act) });
    }
    let in_scale = tensor_file::to_f32(need("input_scale")?, &f, &format!("{l}.input_scale"))?;
    let zp_t = need("input_zero_point")?;
    let act = match (zp_t.dtype, declared) {
        (Dtype::U8, "u7") => ActType::U7,
        (Dtype::U8, "u8") => ActType::U8,
        (Dtype::I8, "i8") => ActType::I8,
        (d @ (Dtype::U8 | Dtype::I8), _) => {
            return Err(WickError::invalid(format!("{f}: tensor '{l}.input_zero_point'"), format!("has dtype {d:?}, but the metadata declares the layer's input type {declared}")));
        }
        d => return Err(WickError::BadDtype { file: f.clone(), tensor: format!("{l}.input_zero_point"), dtype: format!("{d:?}"), role: "a u8/i8 zero point" }),
    };
    let zp = tensor_file::to_i64(zp_t, &f, &format!("{l}.input_zero_point"))?;
    let (&[scale], &[zero_point]) = (in_scale.as_slice(), zp.as_slice()) else {
        return Err(WickError::invalid(format!("{f}: layer '{l}'"), format!("input_scale and input_zero_point must hold one value each (shape [1]); they hold {} and {}", in_scale.len(), zp.len())));
    };
    if !(scale.is_finite() && scale > 0.0) {
        return Err(WickError::invalid(format!("{f}: tensor '{l}.input_scale'"), format!("{scale} is not a positive finite scale")));
    }
    let (qmin, qmax) = act.range();
    if !(qmin as i64..=qmax as i64).contains(&zero_point) {
        return Err(WickError::invalid(format!("{f}: tensor '{l}.input_zero_point'"), format!("{zero_point} is outside the {} range {qmin}..={qmax}", format!("{act:?}").to_lowercase())));
    }
    Ok(QuantLayer { weight, input: InputQuant::Static(QParams { scale, zero_point: zero_point as i32, act }) })
}

/// A bias as an int32 code at scale `m = s_in·s_c`: `round(b / m)`, saturating.
pub fn bias_code(b: f32, m: f32) -> i32 {
    (b / m).round() as i32
}

/// A model file of either kind.
pub enum AnyModel {
    Float(Model),
    Int8(Int8Model),
}

/// Loads a float model or an INT8 artifact (told apart by the file's wick metadata); returns
/// the model and load warnings.
pub fn load_any(path: &Path, arch_override: Option<&Path>) -> Result<(AnyModel, Vec<String>)> {
    if crate::hf::is_model_dir(path) {
        let loaded = load::load_model(path, arch_override)?;
        return Ok((AnyModel::Float(loaded.model), loaded.warnings));
    }
    if crate::onnx::is_onnx(path) {
        load::refuse_arch(path, arch_override, crate::onnx::CARRIES_ITS_GRAPH)?;
        return Ok((crate::onnx::load(path)?.0, vec![]));
    }
    let file = TensorFile::read(path)?;
    if let Some(kind) = load::wick_metadata(&file)?.and_then(|m| m.get("kind").cloned()) {
        if kind != "int8" && kind != "float" {
            return Err(WickError::invalid(format!("{}: metadata '{META_KEY}'", file.name()), format!("field 'kind' is {kind}; expected \"int8\" or \"float\"")));
        }
    }
    if arch_override.is_none() {
        if let Some(q) = Int8Model::read(&file)? {
            return Ok((AnyModel::Int8(q), vec![]));
        }
    }
    let arch = load::resolve_arch(&file, arch_override)?;
    let loaded = load::model_from_file(&file, arch)?;
    Ok((AnyModel::Float(loaded.model), loaded.warnings))
}
