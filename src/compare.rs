//! Teacher versus INT8 artifact on a test set: the artifact is read back from disk and run with
//! integer arithmetic, so the numbers are those of the shipped file. Uses `artifact`, `runtime`,
//! `eval`, `model`.

use crate::artifact::Int8Model;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::{agreement, evaluate, EvalResult};
use crate::model::Model;
use crate::progress::Progress;
use crate::runtime::{kernels::Kernel, Exec};
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

/// Evaluates `teacher` and the artifact at `artifact` on `test`.
pub fn compare(teacher: &Model, teacher_path: &Path, artifact: &Path, test: &Dataset, progress: &dyn Progress) -> Result<Comparison> {
    let t = evaluate(teacher, test, 256, progress)?;
    let q = read_int8(artifact)?;
    let c = crate::runtime::evaluate(&q, test, 256, Exec::Integer(Kernel::Fast), progress)?;
    let bytes = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| WickError::io(p, e));
    let (b0, b1) = (bytes(teacher_path)?, bytes(artifact)?);
    let agree = agreement(&t.predictions, &c.predictions);
    Ok(Comparison {
        drop_points: 100.0 * (t.accuracy - c.accuracy),
        agreement: agree,
        flipped: t.predictions.iter().zip(&c.predictions).filter(|(a, b)| a != b).count(),
        bytes_before: b0,
        bytes_after: b1,
        size_ratio: b1 as f64 / b0 as f64,
        teacher: t,
        compressed: c,
    })
}

/// Reads an INT8 artifact, failing when the file is not one.
pub fn read_int8(path: &Path) -> Result<Int8Model> {
    let f = TensorFile::read(path)?;
    Int8Model::read(&f)?.ok_or_else(|| WickError::invalid(path.display().to_string(), "not a wick INT8 artifact (no int8 metadata)"))
}
