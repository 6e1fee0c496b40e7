//! Recipes: an ordered list of steps with their settings, read from JSON (`passes/*.json`).
//! Each step's settings are its struct in `passes/` (`PassSpec`); unknown fields are errors,
//! and every error names the file, the pass index and the field. Uses `passes`.

use crate::error::{Result, WickError};
pub use crate::passes::PassSpec;
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
        let spec = PassSpec::from_json(p).map_err(|e| bad(format!("passes[{i}] ({name}): {e}")))?;
        recipe.passes.push(spec);
    }
    validate(&recipe).map_err(bad)?;
    Ok(recipe)
}

/// A text encoder's recipe: text steps only, an optional `text_distill` first, `text_ptq` last.
fn validate_text(r: &Recipe) -> std::result::Result<(), String> {
    let last = r.passes.len() - 1;
    for (i, p) in r.passes.iter().enumerate() {
        let at = |m: &str| format!("passes[{i}] ({}): {m}", p.name());
        match p {
            PassSpec::TextDistill(_) if i == 0 && last > 0 => {}
            PassSpec::TextPtq(_) if i == last => {}
            PassSpec::TextDistill(_) => return Err(at("comes first, once, before 'text_ptq'")),
            PassSpec::TextPtq(_) => return Err(at("must be the last step")),
            _ => return Err(at("is a classifier step in a recipe of text-encoder steps")),
        }
    }
    if !matches!(r.passes[last], PassSpec::TextPtq(_)) {
        return Err("the last step of a text-encoder recipe must be 'text_ptq'".into());
    }
    Ok(())
}

/// Order checks that need the whole recipe: float steps (`prune_channels`, `distill`,
/// `fold_batchnorm`) before `calibrate`, `qat` between `calibrate` and `convert_int8`, which
/// ends the recipe; `calibrate` and `convert_int8` once each.
fn validate(r: &Recipe) -> std::result::Result<(), String> {
    if r.passes.is_empty() {
        return Err("field 'passes' is empty".into());
    }
    if r.passes.iter().any(PassSpec::is_text) {
        return validate_text(r);
    }
    let (mut calibrated, mut converted) = (false, false);
    for (i, p) in r.passes.iter().enumerate() {
        let at = |m: &str| format!("passes[{i}] ({}): {m}", p.name());
        if converted {
            return Err(at("comes after 'convert_int8', which must be the last step"));
        }
        match p {
            PassSpec::PruneChannels(_) | PassSpec::Distill(_) | PassSpec::FoldBatchnorm(_) if calibrated => return Err(at("float steps must come before 'calibrate'")),
            PassSpec::Calibrate(_) if calibrated => return Err(at("a recipe calibrates once")),
            PassSpec::Calibrate(_) => calibrated = true,
            PassSpec::Qat(_) | PassSpec::ConvertInt8(_) if !calibrated => return Err(at("needs a 'calibrate' step before it")),
            PassSpec::ConvertInt8(_) => converted = true,
            _ => {}
        }
    }
    if !converted {
        return Err("the last step must be 'convert_int8'".into());
    }
    Ok(())
}
