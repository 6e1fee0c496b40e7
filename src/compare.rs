//! Teacher versus INT8 artifact on a test set: accuracy drop, agreement and size, and reading an
//! artifact back (callers check it against the model they evaluated, so the numbers are those
//! of the shipped file). Uses `artifact`, `eval`, `tensor_file`.

use crate::artifact::Int8Model;
use crate::error::{Result, WickError};
use crate::eval::{agreement, EvalResult};
use crate::tensor_file::TensorFile;
use serde::Serialize;
use std::path::Path;

/// Accuracy and size of a teacher and its compressed artifact.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub teacher: EvalResult,
    /// The written file, executed with integer arithmetic.
    pub compressed: EvalResult,
    /// `100 · (teacher − compressed)` accuracy, in points.
    pub drop_points: f64,
    /// Fraction of test samples where both predict the same class.
    pub agreement: f64,
    /// Test predictions that differ from the teacher's.
    pub flipped: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// `bytes_after / bytes_before`.
    pub size_ratio: f64,
}

/// `100 · (teacher − compressed)`: the accuracy lost, in points.
pub fn drop_points(teacher: f64, compressed: f64) -> f64 {
    100.0 * (teacher - compressed)
}

/// `(teacher − compressed) / teacher`: the accuracy lost, as a fraction of the teacher's.
pub fn drop_relative(teacher: f64, compressed: f64) -> f64 {
    (teacher - compressed) / teacher.max(f64::MIN_POSITIVE)
}

impl Comparison {
    /// The comparison of two evaluations on the same test set and two file sizes.
    pub fn of(teacher: EvalResult, compressed: EvalResult, bytes_before: u64, bytes_after: u64) -> Comparison {
        Comparison {
            drop_points: drop_points(teacher.accuracy, compressed.accuracy),
            agreement: agreement(&teacher.predictions, &compressed.predictions),
            flipped: teacher.predictions.iter().zip(&compressed.predictions).filter(|(a, b)| a != b).count(),
            bytes_before,
            bytes_after,
            size_ratio: bytes_after as f64 / bytes_before as f64,
            teacher,
            compressed,
        }
    }

    /// `(teacher − compressed) / teacher` accuracy, a fraction.
    pub fn drop_relative(&self) -> f64 {
        drop_relative(self.teacher.accuracy, self.compressed.accuracy)
    }
}

/// Bytes on disk of `p`.
pub fn file_bytes(p: &Path) -> Result<u64> {
    std::fs::metadata(p).map(|m| m.len()).map_err(|e| WickError::io(p, e))
}

/// Bytes on disk of the model at `p`: the file, and for an ONNX model its external data too.
pub fn model_bytes(p: &Path) -> Result<u64> {
    match crate::onnx::is_onnx(p) {
        true => crate::onnx::bytes_on_disk(p),
        false => file_bytes(p),
    }
}

/// Writes `q` to `path`, reads the file back and checks it bit for bit against `q`, so that
/// what is measured afterwards is the file; returns the model read back.
pub fn write_int8(q: &Int8Model, path: &Path) -> Result<Int8Model> {
    q.save(path)?;
    let written = read_int8(path)?;
    if !written.same_as(q)? {
        return Err(WickError::invalid(path.display().to_string(), "the artifact read back differs from the model written"));
    }
    Ok(written)
}

/// Reads an INT8 artifact, failing when the file is not one.
pub fn read_int8(path: &Path) -> Result<Int8Model> {
    let f = TensorFile::read(path)?;
    Int8Model::read(&f)?.ok_or_else(|| WickError::invalid(path.display().to_string(), "not a wick INT8 artifact (no int8 metadata)"))
}
