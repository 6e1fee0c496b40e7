//! Reading and writing safetensors files through the `safetensors` crate, with every dtype wick
//! meets (f32/f16/bf16 floats, integer labels and buffers, i8/u8 quantised weights), and atomic
//! writes (temporary file in the same folder, then rename). Uses only `error`.

use crate::error::{Result, WickError};
use crate::partial_files::{self, Partial};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One tensor as stored: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A whole safetensors file in memory.
#[derive(Debug, Clone)]
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, RawTensor>,
    pub metadata: BTreeMap<String, String>,
    /// Hex sha256 of the bytes read (provenance without reading the file again).
    pub sha256: String,
}

impl RawTensor {
    /// An f32 tensor.
    pub fn from_f32(shape: Vec<usize>, v: &[f32]) -> Self {
        RawTensor { dtype: Dtype::F32, shape, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }
    /// An i8 tensor.
    pub fn from_i8(shape: Vec<usize>, v: &[i8]) -> Self {
        RawTensor { dtype: Dtype::I8, shape, data: v.iter().map(|&x| x as u8).collect() }
    }
    /// A u8 tensor.
    pub fn from_u8(shape: Vec<usize>, v: &[u8]) -> Self {
        RawTensor { dtype: Dtype::U8, shape, data: v.to_vec() }
    }
    /// An i64 tensor.
    pub fn from_i64(shape: Vec<usize>, v: &[i64]) -> Self {
        RawTensor { dtype: Dtype::I64, shape, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the dtype is a float wick computes with (f32, f16, bf16).
    pub fn is_float(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
}

impl TensorFile {
    /// Reads and parses `path`; errors name the file.
    pub fn read(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
        Self::parse(path, &bytes)
    }

    /// Parses safetensors bytes; `path` is used in errors only.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
        let bad = |msg: String| WickError::Safetensors { path: path.to_path_buf(), msg };
        if bytes.len() < 8 {
            return Err(bad(format!("the file has {} bytes, fewer than the 8-byte header length", bytes.len())));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(explain(&e, bytes)))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(explain(&e, bytes)))?;
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        let tensors = st.tensors().into_iter().map(|(name, v)| (name, RawTensor { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })).collect();
        Ok(TensorFile { path: path.to_path_buf(), tensors, metadata, sha256: crate::provenance::sha256_hex(bytes) })
    }

    /// The file's name for messages.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Tensor `name` or an error naming file and tensor.
    pub fn get(&self, name: &str) -> Result<&RawTensor> {
        self.tensors.get(name).ok_or_else(|| WickError::data(self.name(), format!("tensor '{name}' is missing")))
    }

    /// Tensor `name` as f32 values (f32, f16 or bf16 stored).
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        to_f32(self.get(name)?, &self.name(), name)
    }
}

/// Converts a float tensor to f32; other dtypes are an error naming file and tensor.
pub fn to_f32(t: &RawTensor, file: &str, name: &str) -> Result<Vec<f32>> {
    let d = &t.data;
    Ok(match t.dtype {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(WickError::BadDtype { file: file.into(), tensor: name.into(), dtype: format!("{other:?}"), role: "a float tensor" }),
    })
}

/// Converts an integer tensor (any signed or unsigned width) to i64 values.
pub fn to_i64(t: &RawTensor, file: &str, name: &str) -> Result<Vec<i64>> {
    let d = &t.data;
    Ok(match t.dtype {
        Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::I16 => d.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
        Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
        Dtype::U16 => d.chunks_exact(2).map(|c| u16::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::U32 => d.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::U64 => d.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        other => return Err(WickError::BadDtype { file: file.into(), tensor: name.into(), dtype: format!("{other:?}"), role: "integer labels" }),
    })
}

fn explain(e: &safetensors::SafeTensorError, bytes: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    let len = bytes.len();
    // A file that does not parse and reads as JSON text is most likely an architecture file
    // given where its weights belong.
    if bytes.trim_ascii_start().first() == Some(&b'{') && std::str::from_utf8(bytes).is_ok() {
        return "it is JSON text; an architecture file goes with --arch (or beside its weights as <stem>.arch.json), and the model argument is the weights (safetensors) or an ONNX file".into();
    }
    match e {
        E::InvalidHeaderLength | E::MetadataIncompleteBuffer => format!("header or data run past the end of the file ({len} bytes): truncated?"),
        E::InvalidHeaderDeserialization(_) | E::InvalidHeader(_) => format!("the header is not safetensors JSON ({e})"),
        other => other.to_string(),
    }
}

/// Serialises `tensors` with `metadata` and writes them to `path` atomically.
pub fn write(path: &Path, tensors: &BTreeMap<String, RawTensor>, metadata: &BTreeMap<String, String>) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| TensorView::new(t.dtype, t.shape.clone(), &t.data).map(|v| (k.clone(), v)).map_err(|e| WickError::invalid(format!("tensor '{k}'"), e.to_string())))
        .collect::<Result<_>>()?;
    let meta: Option<HashMap<String, String>> = if metadata.is_empty() { None } else { Some(metadata.clone().into_iter().collect()) };
    let bytes = safetensors::serialize(views, meta).map_err(|e| WickError::invalid(path.display().to_string(), e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file and an interrupted run leaves none behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Created and renamed under the partial-file lock, so that an interrupt removes it unless
    // it is already in place (partial_files.rs).
    let (mut tmp, partial) = {
        let mut reg = partial_files::lock();
        partial_files::remove_stale(&dir);
        let tmp = tempfile::Builder::new().prefix(&partial_files::owned_prefix(partial_files::TMP_PREFIX)).tempfile_in(&dir).map_err(|e| WickError::io(&dir, e))?;
        let partial = Partial::File(tmp.path().to_path_buf());
        reg.push(partial.clone());
        (tmp, partial)
    };
    let written: std::io::Result<()> = (|| {
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        // Temporary files are created private (0600); a written artifact is an ordinary file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    })();
    let mut reg = partial_files::lock();
    partial_files::forget(&mut reg, &partial);
    written.map_err(|e| WickError::io(path, e))?;
    tmp.persist(path).map_err(|e| WickError::io(path, e.error))?;
    Ok(())
}
