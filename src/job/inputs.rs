//! A job's inputs as the report records them (paths and sha256), and whether an output folder
//! already holds the report of the same inputs, recipe and seed (`wick batch` resumes).

use super::{JobSpec, ARTIFACT, REPORT_JSON};
use crate::data::Dataset;
use crate::error::Result;
use crate::provenance::{file_sha256, model_sha256};
use crate::report::FileInfo;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

pub(super) fn info(p: &Path) -> Result<FileInfo> {
    Ok(FileInfo { path: p.display().to_string(), sha256: file_sha256(p)? })
}

/// Hashes of the job's inputs, recipe and seed, as the report records them.
pub fn input_fingerprint(spec: &JobSpec) -> Result<serde_json::Value> {
    let recipe = crate::recipe::resolve(&spec.recipe)?;
    let mut inputs = BTreeMap::new();
    inputs.insert("teacher".to_string(), FileInfo { path: spec.model.display().to_string(), sha256: model_sha256(&spec.model)? });
    for (k, p) in [("train", Some(&spec.train)), ("val", Some(&spec.val)), ("test", Some(&spec.test)), ("calib", spec.calib.as_ref()), ("arch", spec.arch.as_ref())] {
        if let Some(p) = p {
            inputs.insert(k.to_string(), info(p)?);
        }
    }
    Ok(json!({"inputs": inputs, "recipe": info(&recipe)?, "seed": spec.seed}))
}

/// The job's input files as the report records them, hashed from the bytes already read (the
/// architecture file, when given, is read again: it is a few kilobytes).
pub(super) fn input_files(spec: &JobSpec, teacher_sha256: &str, splits: [(&str, &Dataset); 3], calib: Option<&Dataset>) -> Result<BTreeMap<String, FileInfo>> {
    let mut inputs = BTreeMap::new();
    let file = |p: &Path, sha: &str| FileInfo { path: p.display().to_string(), sha256: sha.to_string() };
    inputs.insert("teacher".to_string(), file(&spec.model, teacher_sha256));
    for ((name, d), p) in splits.into_iter().zip([&spec.train, &spec.val, &spec.test]) {
        inputs.insert(name.to_string(), file(p, &d.sha256));
    }
    if let (Some(d), Some(p)) = (calib, &spec.calib) {
        inputs.insert("calib".to_string(), file(p, &d.sha256));
    }
    if let Some(p) = &spec.arch {
        inputs.insert("arch".to_string(), info(p)?);
    }
    Ok(inputs)
}

/// Whether `spec.out` already holds a report of the same inputs, recipe and seed.
pub fn already_done(spec: &JobSpec) -> bool {
    let Ok(text) = std::fs::read_to_string(spec.out.join(REPORT_JSON)) else { return false };
    let Ok(old) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    let Ok(now) = input_fingerprint(spec) else { return false };
    spec.out.join(ARTIFACT).is_file() && old["inputs"] == now["inputs"] && old["recipe"] == now["recipe"] && old["seed"] == now["seed"]
}
