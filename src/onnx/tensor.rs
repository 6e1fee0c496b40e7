//! ONNX tensors to wick values and back: `TensorProto` data in any of its encodings (typed
//! fields, little-endian `raw_data`, or an external file beside the model), as f32 or i64.

use super::proto::{data_type, TensorProto};
use crate::error::{Result, WickError};
use std::path::Path;

/// A constant tensor's values: floats widen or narrow to f32, integers and booleans widen to i64.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A constant tensor: its dims and values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub values: Values,
}

impl Values {
    /// The values at `indices`, in their order: `out[k] = self[indices[k]]`.
    pub fn pick(&self, indices: impl Iterator<Item = usize>) -> Values {
        match self {
            Values::F32(v) => Values::F32(indices.map(|j| v[j]).collect()),
            Values::I64(v) => Values::I64(indices.map(|j| v[j]).collect()),
        }
    }
}

impl Const {
    /// Number of elements: the product of the dims (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The values as f32 (integers converted), for weights and scalar operands.
    pub fn f32s(&self) -> Vec<f32> {
        match &self.values {
            Values::F32(v) => v.clone(),
            Values::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as i64, or `None` for a float tensor (shapes, axes and indices are integers).
    pub fn i64s(&self) -> Option<&[i64]> {
        match &self.values {
            Values::I64(v) => Some(v),
            Values::F32(_) => None,
        }
    }

    /// The single value of a one-element tensor, as f32.
    pub fn scalar(&self) -> Option<f32> {
        (self.numel() == 1).then(|| self.f32s()[0])
    }
}

/// Reads a tensor's values; `what` names it in errors and `dir` is where external data lives.
pub fn read(t: &TensorProto, what: &str, dir: &Path) -> Result<Const> {
    let bad = |msg: String| WickError::invalid(what.to_string(), msg);
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut numel: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| bad(format!("has a negative dim in {:?}", t.dims)))?;
        numel = numel.checked_mul(d).ok_or_else(|| bad(format!("shape {:?} overflows", t.dims)))?;
        dims.push(d);
    }
    let external;
    let raw: &[u8] = if t.data_location == 1 {
        external = read_external(t, what, dir)?;
        &external
    } else {
        &t.raw_data
    };
    let from_raw = !raw.is_empty() || t.data_location == 1;
    let size = match t.data_type {
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::DOUBLE | data_type::INT64 => 8,
        data_type::FLOAT16 => 2,
        data_type::INT8 | data_type::UINT8 | data_type::BOOL => 1,
        other => return Err(bad(format!("has ONNX data type {other}; wick reads float, double, float16, int64, int32, int8, uint8 and bool tensors"))),
    };
    if from_raw && raw.len() != numel.saturating_mul(size) {
        return Err(bad(format!("holds {} bytes of data; its shape {dims:?} needs {}", raw.len(), numel.saturating_mul(size))));
    }
    let typed_len = match t.data_type {
        data_type::FLOAT => t.float_data.len(),
        data_type::DOUBLE => t.double_data.len(),
        data_type::INT64 => t.int64_data.len(),
        _ => t.int32_data.len(),
    };
    if !from_raw && typed_len != numel {
        return Err(bad(format!("holds {typed_len} values; its shape {dims:?} needs {numel}")));
    }
    let chunks = |n: usize| raw.chunks_exact(n);
    let values = match t.data_type {
        data_type::FLOAT if from_raw => Values::F32(chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        data_type::FLOAT => Values::F32(t.float_data.clone()),
        data_type::DOUBLE if from_raw => Values::F32(chunks(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()),
        data_type::DOUBLE => Values::F32(t.double_data.iter().map(|&v| v as f32).collect()),
        data_type::FLOAT16 if from_raw => Values::F32(chunks(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        data_type::FLOAT16 => Values::F32(t.int32_data.iter().map(|&v| half::f16::from_bits(v as u16).to_f32()).collect()),
        data_type::INT64 if from_raw => Values::I64(chunks(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()),
        data_type::INT64 => Values::I64(t.int64_data.clone()),
        data_type::INT32 if from_raw => Values::I64(chunks(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect()),
        data_type::INT8 if from_raw => Values::I64(raw.iter().map(|&b| b as i8 as i64).collect()),
        data_type::UINT8 | data_type::BOOL if from_raw => Values::I64(raw.iter().map(|&b| b as i64).collect()),
        _ => Values::I64(t.int32_data.iter().map(|&v| v as i64).collect()),
    };
    Ok(Const { dims, values })
}

/// The bytes of an external tensor: `location` (a path relative to the model's folder that
/// stays inside it, as the ONNX checker requires), `offset` and `length`.
fn read_external(t: &TensorProto, what: &str, dir: &Path) -> Result<Vec<u8>> {
    let bad = |msg: String| WickError::invalid(what.to_string(), msg);
    let field = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
    let location = field("location").ok_or_else(|| bad("is stored externally but names no 'location'".into()))?;
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(bad(format!("external data location '{location}' is outside the model's folder")));
    }
    let number = |key: &str| -> Result<Option<u64>> { field(key).map(|v| v.parse::<u64>().map_err(|_| bad(format!("external data field '{key}' is '{v}', not a byte count")))).transpose() };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?;
    let path = dir.join(rel);
    // Only this tensor's range is read: one file holds every tensor of the model.
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(&path).map_err(|e| WickError::io(&path, e))?;
    let size = file.metadata().map_err(|e| WickError::io(&path, e))?.len();
    if offset > size {
        return Err(bad(format!("external data offset {offset} is past the end of {}", path.display())));
    }
    let length = match length {
        Some(l) if offset.checked_add(l).is_some_and(|e| e <= size) => l,
        Some(l) => return Err(bad(format!("external data offset {offset} + length {l} is past the end of {}", path.display()))),
        None => size - offset,
    };
    let mut bytes = vec![0u8; usize::try_from(length).map_err(|_| bad(format!("external data length {length} is too large")))?];
    file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut bytes)).map_err(|e| WickError::io(&path, e))?;
    Ok(bytes)
}

/// A tensor named `name` of ONNX type `data_type` from its little-endian bytes.
fn raw_tensor(name: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.iter().map(|&d| d as i64).collect(), data_type, raw_data, ..Default::default() }
}

/// An f32 tensor named `name`.
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    raw_tensor(name, dims, data_type::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int64 tensor named `name`.
pub fn i64_tensor(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    raw_tensor(name, dims, data_type::INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int32 tensor named `name`.
pub fn i32_tensor(name: &str, dims: &[usize], values: &[i32]) -> TensorProto {
    raw_tensor(name, dims, data_type::INT32, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int8 (`signed`) or uint8 tensor named `name`, one byte per value.
pub fn byte_tensor(name: &str, dims: &[usize], values: &[u8], signed: bool) -> TensorProto {
    raw_tensor(name, dims, if signed { data_type::INT8 } else { data_type::UINT8 }, values.to_vec())
}
