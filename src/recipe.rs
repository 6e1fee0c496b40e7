//! Recipes: an ordered list of passes with their settings, read from JSON (`passes/*.json`).
//! Unknown fields are errors; every error names the file, the pass index and the field.
//! Uses `calibrate`, `quant`, `passes`, `train` (setting types only).

use crate::calibrate::Method;
use crate::error::{Result, WickError};
use crate::passes::prune_channels::importance::Criterion;
use crate::quant::ActType;
use crate::train::OptimizerKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A whole recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(skip_deserializing)]
    pub passes: Vec<PassSpec>,
}

fn d_true() -> bool {
    true
}
fn d_one() -> usize {
    1
}
fn d_samples() -> usize {
    512
}
fn d_percentile() -> f64 {
    99.99
}
fn d_temperature() -> f64 {
    4.0
}
fn d_alpha() -> f64 {
    0.7
}
fn d_l1() -> Criterion {
    Criterion::L1
}
fn d_entropy() -> Method {
    Method::Entropy
}
fn d_u8() -> ActType {
    ActType::U8
}
fn d_sgd() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn d_adamw() -> OptimizerKind {
    OptimizerKind::Adamw
}
fn d_lr_fine() -> f64 {
    1e-3
}
fn d_lr_distill() -> f64 {
    0.05
}
fn d_lr_qat() -> f64 {
    1e-4
}
fn d_batch() -> usize {
    64
}

/// One pass and its settings. The `pass` field names it; the name is also the pass's file in
/// `src/passes/` and its key in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "pass", rename_all = "snake_case", deny_unknown_fields)]
pub enum PassSpec {
    /// Fold each BatchNorm into the conv/linear before it.
    FoldBatchnorm {},
    /// Structured channel pruning with recovery fine-tuning.
    PruneChannels {
        ratio: f64,
        #[serde(default = "d_l1")]
        criterion: Criterion,
        #[serde(default)]
        global: bool,
        #[serde(default = "d_one")]
        round_to: usize,
        #[serde(default)]
        min_channels: usize,
        #[serde(default)]
        ignore: Vec<String>,
        #[serde(default = "d_one")]
        steps: usize,
        /// Fine-tuning epochs in all (0: none).
        #[serde(default)]
        epochs: usize,
        /// Recover by distilling from the teacher.
        #[serde(default = "d_true")]
        distill: bool,
        #[serde(default = "d_lr_fine")]
        lr: f64,
        #[serde(default = "d_batch")]
        batch_size: usize,
    },
    /// Distil the teacher into a width-scaled copy of itself.
    Distill {
        width: f64,
        epochs: usize,
        #[serde(default = "d_sgd")]
        optimizer: OptimizerKind,
        #[serde(default = "d_lr_distill")]
        lr: f64,
        #[serde(default = "d_temperature")]
        temperature: f64,
        #[serde(default = "d_alpha")]
        alpha: f64,
        /// `TEACHER_NODE=STUDENT_NODE` feature hints.
        #[serde(default)]
        hints: Vec<String>,
        #[serde(default = "d_batch")]
        batch_size: usize,
    },
    /// Post-training calibration of activation ranges and INT8 weight quantisation.
    Calibrate {
        #[serde(default = "d_entropy")]
        method: Method,
        #[serde(default = "d_samples")]
        samples: usize,
        #[serde(default = "d_u8")]
        activations: ActType,
        #[serde(default = "d_percentile")]
        percentile: f64,
        #[serde(default)]
        exclude: Vec<String>,
    },
    /// Quantisation-aware training from the calibration.
    Qat {
        epochs: usize,
        #[serde(default = "d_lr_qat")]
        lr: f64,
        #[serde(default = "d_adamw")]
        optimizer: OptimizerKind,
        #[serde(default = "d_one")]
        observer_epochs: usize,
        #[serde(default = "d_true")]
        distill: bool,
        #[serde(default = "d_temperature")]
        temperature: f64,
        #[serde(default = "d_alpha")]
        alpha: f64,
        #[serde(default = "d_batch")]
        batch_size: usize,
    },
    /// Finalise the INT8 model (the artifact written by `wick compress`).
    ConvertInt8 {},
}

impl PassSpec {
    /// The pass's name (`prune_channels`, …).
    pub fn name(&self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.get("pass").and_then(Value::as_str).map(str::to_string)).unwrap_or_default()
    }
}

/// Where `passes/` lies: `$WICK_PASSES`, else beside the executable's project, else `./passes`.
pub fn passes_dir() -> PathBuf {
    if let Ok(p) = std::env::var("WICK_PASSES") {
        return PathBuf::from(p);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("passes");
    if built.is_dir() {
        return built;
    }
    PathBuf::from("passes")
}

/// Resolves a recipe argument: a path to a JSON file, or a name in `passes/`.
pub fn resolve(arg: &str) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.is_file() {
        return Ok(p);
    }
    let named = passes_dir().join(format!("{arg}.json"));
    if named.is_file() {
        return Ok(named);
    }
    Err(WickError::invalid("--recipe", format!("'{arg}' is neither a file nor a recipe in {}", passes_dir().display())))
}

/// Reads and validates a recipe file.
pub fn read(path: &Path) -> Result<Recipe> {
    let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates recipe JSON; `origin` names the file in errors.
pub fn parse(text: &str, origin: &str) -> Result<Recipe> {
    let bad = |msg: String| WickError::invalid(format!("recipe {origin}"), msg);
    let mut v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let passes = match v.as_object_mut().and_then(|o| o.remove("passes")) {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("field 'passes' must be a list".into())),
        None => return Err(bad("missing field 'passes'".into())),
    };
    let mut recipe: Recipe = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
    for (i, p) in passes.into_iter().enumerate() {
        let name = p.get("pass").and_then(Value::as_str).unwrap_or("?").to_string();
        let spec: PassSpec = serde_json::from_value(p).map_err(|e| bad(format!("passes[{i}] ({name}): {e}")))?;
        recipe.passes.push(spec);
    }
    validate(&recipe).map_err(bad)?;
    Ok(recipe)
}

/// Order and range checks that need the whole recipe.
fn validate(r: &Recipe) -> std::result::Result<(), String> {
    if r.passes.is_empty() {
        return Err("field 'passes' is empty".into());
    }
    let mut quantised = false;
    for (i, p) in r.passes.iter().enumerate() {
        let at = |m: &str| format!("passes[{i}] ({}): {m}", p.name());
        match p {
            PassSpec::PruneChannels { ratio, .. } if !(0.0..1.0).contains(ratio) => return Err(at(&format!("field 'ratio' is {ratio}, outside [0, 1)"))),
            PassSpec::Distill { width, .. } if !(*width > 0.0 && *width <= 1.0) => return Err(at(&format!("field 'width' is {width}, outside (0, 1]"))),
            PassSpec::PruneChannels { .. } | PassSpec::Distill { .. } | PassSpec::FoldBatchnorm {} if quantised => return Err(at("float passes must come before 'calibrate'")),
            PassSpec::Calibrate { samples: 0, .. } => return Err(at("field 'samples' must be at least 1")),
            PassSpec::Calibrate { .. } => quantised = true,
            PassSpec::Qat { .. } | PassSpec::ConvertInt8 {} if !quantised => return Err(at("needs a 'calibrate' pass before it")),
            _ => {}
        }
    }
    if !matches!(r.passes.last(), Some(PassSpec::ConvertInt8 {})) {
        return Err("the last pass must be 'convert_int8'".into());
    }
    Ok(())
}
