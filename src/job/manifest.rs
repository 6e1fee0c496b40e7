//! A batch manifest: `{"jobs": [{"name", "model", "recipe", "train", "val", "test", "out", ...}]}`,
//! each job the fields of `compress` (`JobSpec`). Paths are relative to the manifest's folder.

use super::JobSpec;
use crate::error::{Result, WickError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    jobs: Vec<NamedJob>,
}

/// A job: its `name` and the fields of `compress` (`JobSpec`, which denies unknown fields: a
/// flattened struct would ignore a misspelled one).
pub struct NamedJob {
    pub name: String,
    pub spec: JobSpec,
}

impl<'de> Deserialize<'de> for NamedJob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let serde_json::Value::Object(mut m) = serde_json::Value::deserialize(d)? else { return Err(serde::de::Error::custom("a job must be a JSON object")) };
        let name = match m.remove("name") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(serde::de::Error::custom("a job lacks a string field 'name'")),
        };
        let spec = serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| serde::de::Error::custom(format!("job '{name}': {e}")))?;
        Ok(NamedJob { name, spec })
    }
}

/// Reads a manifest file.
pub fn read(path: &Path) -> Result<Vec<NamedJob>> {
    let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
    parse(&text, path)
}

/// Parses manifest JSON read from `path` (named in errors; its folder anchors relative paths).
pub fn parse(text: &str, path: &Path) -> Result<Vec<NamedJob>> {
    let mut m: Manifest = serde_json::from_str(text).map_err(|e| WickError::invalid(format!("manifest {}", path.display()), e.to_string()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    for j in &mut m.jobs {
        let s = &mut j.spec;
        for p in [&mut s.model, &mut s.train, &mut s.val, &mut s.test, &mut s.out] {
            rebase(&base, p);
        }
        for p in [&mut s.arch, &mut s.calib].into_iter().flatten() {
            rebase(&base, p);
        }
        if !Path::new(&s.recipe).is_absolute() && base.join(&s.recipe).is_file() {
            s.recipe = base.join(&s.recipe).display().to_string();
        }
    }
    Ok(m.jobs)
}

fn rebase(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}
