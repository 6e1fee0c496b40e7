//! The sentence-transformers modules after the encoder (`modules.json`): how its last hidden
//! states become one embedding per sentence. wick reads a Transformer module (the directory
//! itself), one Pooling module (the mask's mean, the first token's state `[CLS]`, the mask's
//! max, … or several of them side by side), Dense modules (a linear layer and its activation,
//! weights in the module's folder) and an optional Normalize module. A directory without `modules.json` gets what sentence-transformers gives a
//! plain Hugging Face encoder: mean pooling, no normalisation.

use crate::error::{Result, WickError};
use crate::model::arch::PoolMode;
use serde_json::Value;
use std::path::Path;

/// How the last hidden states `h [L, D]` of a sentence with mask `m` become its embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// `Σ_t m_t·h_t / Σ_t m_t` (`pooling_mode_mean_tokens`).
    Mean,
    /// `h_0`, the `[CLS]` token's state (`pooling_mode_cls_token`).
    Cls,
    /// One of the `masked_pool` op's modes (`max`, `mean_sqrt_len_tokens`, `weightedmean`,
    /// `lasttoken`).
    Masked(PoolMode),
}

impl Pooling {
    /// The pooling sentence-transformers calls `mode`.
    fn of(mode: &str) -> Option<Pooling> {
        Some(match mode {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "max" => Pooling::Masked(PoolMode::Max),
            "mean_sqrt_len_tokens" => Pooling::Masked(PoolMode::MeanSqrtLen),
            "weightedmean" => Pooling::Masked(PoolMode::WeightedMean),
            "lasttoken" => Pooling::Masked(PoolMode::Last),
            _ => return None,
        })
    }
}

/// A Dense module: `e ← act(W·e + b)`, `W [out_features, in_features]`, its weights
/// (`linear.weight`, `linear.bias`) in `folder/model.safetensors`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub folder: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    /// The activation's node (op and fields), none for the identity.
    pub act: Option<Value>,
}

/// The poolings (their outputs side by side, in this order), the Dense modules after them, and
/// whether `e / ‖e‖₂` follows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub pooling: Vec<Pooling>,
    pub dense: Vec<Dense>,
    pub normalize: bool,
}

/// What a directory without `modules.json` gets.
pub fn default_head() -> Head {
    Head { pooling: vec![Pooling::Mean], dense: vec![], normalize: false }
}

/// The Pooling config's legacy mode flags and the modes they name (`pooling_mode`'s values), in
/// the order sentence-transformers joins them.
const FLAGS: [(&str, &str); 6] = [
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
];

/// The head of model directory `dir` whose encoder has hidden size `hidden`.
pub fn read(dir: &Path, hidden: usize) -> Result<Head> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(default_head());
    }
    let json = super::read_json(&path)?;
    let bad = |msg: String| WickError::invalid(path.display().to_string(), msg);
    let modules = json.as_array().ok_or_else(|| bad("is not a list of modules".into()))?;
    let mut pooling = None;
    let mut dense: Vec<Dense> = vec![];
    let mut normalize = false;
    for (i, m) in modules.iter().enumerate() {
        let kind = m.get("type").and_then(Value::as_str).ok_or_else(|| bad(format!("module {i} has no 'type'")))?;
        let folder = m.get("path").and_then(Value::as_str).unwrap_or("");
        let short = kind.rsplit('.').next().unwrap_or(kind);
        match (i, short, pooling.is_some(), normalize) {
            (0, "Transformer", ..) if folder.is_empty() => {}
            (0, "Transformer", ..) => return Err(bad(format!("module 0 keeps the encoder in '{folder}'; wick reads it from the directory itself (path \"\")"))),
            (0, ..) => return Err(bad(format!("module 0 is {kind}; wick reads a Transformer first"))),
            (_, "Pooling", false, _) => pooling = Some(read_pooling(&dir.join(folder).join("config.json"), hidden)?),
            (_, "Dense", true, false) => {
                let width = dense.last().map_or(hidden * pooling.as_ref().map_or(1, Vec::len), |d| d.out_features);
                dense.push(read_dense(dir, folder, width)?);
            }
            (_, "Normalize", true, false) => normalize = true,
            _ => return Err(bad(format!("module {i} is {kind}; wick reads a Transformer, one Pooling, Dense modules and then an optional Normalize module"))),
        }
    }
    let pooling = pooling.ok_or_else(|| bad("has no Pooling module; wick makes one embedding per sentence".into()))?;
    Ok(Head { pooling, dense, normalize })
}

/// The Dense module in `folder` of `dir`, whose input has `width` features.
fn read_dense(dir: &Path, folder: &str, width: usize) -> Result<Dense> {
    let path = dir.join(folder).join("config.json");
    let c = super::read_json(&path)?;
    let field = |f: &str, msg: String| WickError::invalid(format!("{}: field '{f}'", path.display()), msg);
    let size = |f: &str| c.get(f).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| field(f, "is missing or not a non-negative integer".into()));
    let (in_features, out_features) = (size("in_features")?, size("out_features")?);
    if in_features != width {
        return Err(field("in_features", format!("is {in_features}; the embedding before it has {width} values")));
    }
    if c.get("use_residual").and_then(Value::as_bool) == Some(true) {
        return Err(field("use_residual", "is true; wick reads a Dense module without a residual".into()));
    }
    for key in ["module_input_name", "module_output_name"] {
        if let Some(name) = c.get(key).and_then(Value::as_str).filter(|n| *n != "sentence_embedding") {
            return Err(field(key, format!("is \"{name}\"; wick reads a Dense module on the sentence embedding")));
        }
    }
    // sentence-transformers writes the activation's class by its full name; Tanh is its default.
    let act_name = c.get("activation_function").and_then(Value::as_str).unwrap_or("torch.nn.modules.activation.Tanh");
    let act = match act_name.rsplit('.').next().unwrap_or("") {
        "Identity" => None,
        "Tanh" => Some(serde_json::json!({"op": "tanh"})),
        "ReLU" => Some(serde_json::json!({"op": "relu"})),
        "GELU" => Some(serde_json::json!({"op": "gelu"})),
        "Sigmoid" => Some(serde_json::json!({"op": "sigmoid"})),
        "SiLU" => Some(serde_json::json!({"op": "silu"})),
        _ => return Err(field("activation_function", format!("is \"{act_name}\"; wick reads Identity, Tanh, ReLU, GELU, Sigmoid and SiLU"))),
    };
    let bias = c.get("bias").and_then(Value::as_bool).unwrap_or(true);
    Ok(Dense { folder: folder.to_string(), in_features, out_features, bias, act })
}

/// The pooling modes a Pooling module's `config.json` asks for, read as sentence-transformers
/// reads it: `pooling_mode` (a mode or a list of them), else the modes whose `pooling_mode_*`
/// flag is true (in [`FLAGS`]' order), else the mean.
fn read_pooling(path: &Path, hidden: usize) -> Result<Vec<Pooling>> {
    let c = super::read_json(path)?;
    let field = |f: &str, msg: String| WickError::invalid(format!("{}: field '{f}'", path.display()), msg);
    for key in ["embedding_dimension", "word_embedding_dimension"] {
        if let Some(d) = c.get(key).and_then(Value::as_u64).filter(|&d| d as usize != hidden) {
            return Err(field(key, format!("is {d}; the encoder's hidden size is {hidden}")));
        }
    }
    // Each mode asked for, with the field that asked for it.
    let modes: Vec<(String, &str)> = match c.get("pooling_mode") {
        Some(Value::String(m)) => vec![(m.clone(), "pooling_mode")],
        Some(Value::Array(ms)) => ms.iter().map(|m| (m.as_str().unwrap_or("").to_string(), "pooling_mode")).collect(),
        Some(other) => return Err(field("pooling_mode", format!("is {other}; a mode or a list of modes is expected"))),
        None => FLAGS.iter().filter(|(f, _)| c.get(*f).and_then(Value::as_bool) == Some(true)).map(|(f, m)| (m.to_string(), *f)).collect(),
    };
    if modes.is_empty() {
        return Ok(vec![Pooling::Mean]);
    }
    modes
        .iter()
        .map(|(m, f)| {
            Pooling::of(m)
                .ok_or_else(|| field(f, format!("asks for \"{m}\" pooling; sentence-transformers' modes are \"cls\", \"max\", \"mean\", \"mean_sqrt_len_tokens\", \"weightedmean\" and \"lasttoken\"")))
        })
        .collect()
}
