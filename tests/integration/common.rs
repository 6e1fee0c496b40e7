//! Shared helpers: fixture paths, the `wick` binary, small file builders.

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use wick::data::Dataset;
use wick::model::load::load_model;
use wick::model::Model;

/// A path under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

pub fn mlp_path() -> PathBuf {
    fixture("models/digits_mlp.safetensors")
}
pub fn resnet_path() -> PathBuf {
    fixture("models/digits_resnet.safetensors")
}
pub fn digits(split: &str) -> PathBuf {
    fixture(&format!("data/digits_{split}.safetensors"))
}

pub fn load(path: &Path) -> Model {
    load_model(path, None).expect("fixture loads").model
}

pub fn data(split: &str) -> Dataset {
    Dataset::read(&digits(split)).expect("fixture data loads")
}

/// The `wick` binary.
pub fn wick() -> Command {
    Command::cargo_bin("wick").expect("binary built")
}

/// Runs `wick args…`, expecting exit code `code`; returns (stdout, stderr).
pub fn run_expect(args: &[&str], code: i32) -> (String, String) {
    let out = wick().args(args).output().expect("wick runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "wick {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "panic in wick {args:?}: {stderr}");
    (stdout, stderr)
}

/// Max |a − b| over two equal-length slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
