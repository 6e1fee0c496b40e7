//! What `wick quantize` and `wick qat` share: loading the float teacher, the test comparison,
//! the printed summary and the JSON report.

use super::progress::CliProgress;
use anyhow::Context;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use wick::artifact::{load_any, AnyModel, Int8Model};
use wick::calibrate::Method;
use wick::compare::{drop_points, file_bytes, model_bytes, Comparison};
use wick::data::Dataset;
use wick::eval::{agreement, evaluate, evaluate_int8};
use wick::model::Model;
use wick::passes::calibrate::CalibrateSettings;
use wick::provenance::tool_version;
use wick::quant::ActType;
use wick::runtime::{kernels::Kernel, Exec};

/// The outputs `wick quantize` and `wick qat` share.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// Test set: compare the teacher and the written artifact (executed with integer arithmetic).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The INT8 artifact to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub quiet: bool,
}

/// The `calibrate` step's flags (`wick quantize`, `wick qat`), defaults from its settings.
#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// Range observer: minmax, moving_average, percentile, entropy, mse, or auto (of minmax,
    /// percentile, entropy and mse, the one whose INT8 predictions stay closest to the float
    /// model's: least KL divergence on the calibration rows).
    #[arg(long, default_value_t = CalibrateSettings::default().method)]
    pub method: Method,
    /// Percentile for `--method percentile`, in (50, 100].
    #[arg(long, default_value_t = CalibrateSettings::default().percentile)]
    pub percentile: f64,
    /// Calibration samples (the first N of the file).
    #[arg(long, default_value_t = CalibrateSettings::default().samples)]
    pub samples: usize,
    /// Activation type: u8 (asymmetric), u7 (asymmetric 7-bit: AVX2's faster exact kernel) or i8
    /// (symmetric).
    #[arg(long, default_value_t = CalibrateSettings::default().activations)]
    pub activations: ActType,
    /// Keep these layers in float.
    #[arg(long, num_args = 1..)]
    pub exclude: Vec<String>,
}

impl CalibrateArgs {
    /// The step's settings, checked as a recipe's are.
    pub fn settings(&self) -> anyhow::Result<CalibrateSettings> {
        let s = CalibrateSettings { method: self.method, samples: self.samples, activations: self.activations, percentile: self.percentile, exclude: self.exclude.clone() };
        s.validate().map_err(|e| super::as_flags(&e))?;
        Ok(s)
    }
}

/// Loads a float model; an INT8 artifact is refused.
pub fn load_float(path: &Path, arch: Option<&Path>) -> anyhow::Result<Model> {
    let (m, warnings) = load_any(path, arch)?;
    super::warn_all(&warnings);
    match m {
        AnyModel::Float(m) => Ok(m),
        AnyModel::Int8(_) => anyhow::bail!("{} is already an INT8 artifact; give the float model", path.display()),
    }
}

/// Reads a data set and checks it fits the model.
pub fn read_data(path: &Path, model: &Model) -> anyhow::Result<Dataset> {
    Ok(Dataset::read_fitting(path, model.input_shape(), model.num_classes())?)
}

/// Writes the artifact (with a test set: after evaluating it with integer arithmetic, its
/// headline metrics in its metadata), reads it back and checks it bit for bit against the model
/// evaluated; returns the comparison. The test set is read and checked before anything is
/// written, so a bad one leaves no artifact.
pub fn write_and_compare(q: &mut Int8Model, teacher: &Model, teacher_path: &Path, out: &Path, test: Option<&PathBuf>, settings: Value, progress: &CliProgress) -> anyhow::Result<Option<Comparison>> {
    let data = test.map(|t| read_data(t, teacher)).transpose()?;
    q.info.insert(
        "provenance".into(),
        json!({
            "teacher": teacher_path.display().to_string(),
            "teacher_sha256": wick::provenance::model_sha256(teacher_path)?,
            "tool": tool_version(),
            "settings": settings,
        }),
    );
    let results = match &data {
        Some(d) => Some((evaluate(teacher, d, 256, progress)?, evaluate_int8(q, d, 256, Exec::Integer(Kernel::Fast), progress)?)),
        None => None,
    };
    if let Some((t, c)) = &results {
        q.info.insert(
            "metrics".into(),
            json!({
                "teacher_accuracy": t.accuracy,
                "int8_accuracy": c.accuracy,
                "drop_points": drop_points(t.accuracy, c.accuracy),
                "agreement": agreement(&c.predictions, &t.predictions),
                "test_samples": c.samples,
            }),
        );
    }
    wick::compare::write_int8(q, out).with_context(|| format!("writing {}", out.display()))?;
    match results {
        Some((t, c)) => Ok(Some(Comparison::of(t, c, model_bytes(teacher_path)?, file_bytes(out)?))),
        None => Ok(None),
    }
}

/// Prints the comparison for people.
pub fn print_comparison(c: &Comparison) {
    println!("teacher   accuracy {:.4} ({}/{})", c.teacher.accuracy, c.teacher.correct, c.teacher.samples);
    println!("int8      accuracy {:.4} ({}/{})  [integer execution of the written file]", c.compressed.accuracy, c.compressed.correct, c.compressed.samples);
    println!("drop      {:+.2} points; agreement {:.4} ({} predictions flipped)", c.drop_points, c.agreement, c.flipped);
    println!("size      {} -> {} bytes ({:.1}% of the teacher file)", c.bytes_before, c.bytes_after, 100.0 * c.size_ratio);
}

/// Writes a JSON report atomically.
pub fn write_report(path: &Path, report: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)? + "\n";
    wick::tensor_file::write_atomic(path, text.as_bytes())?;
    Ok(())
}
