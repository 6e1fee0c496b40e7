//! Provenance of outputs: input file hashes and the tool version.

use crate::error::{Result, WickError};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Hex sha256 of a file's bytes.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
    Ok(sha256_hex(&bytes))
}

/// Hex sha256 of a model: its file's bytes, or for an ONNX file its graph's and its external
/// data's (`onnx::model_sha256`).
pub fn model_sha256(path: &Path) -> Result<String> {
    match crate::onnx::is_onnx(path) {
        true => crate::onnx::model_sha256(path),
        false => file_sha256(path),
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `wick <version>`.
pub fn tool_version() -> String {
    format!("wick {}", env!("CARGO_PKG_VERSION"))
}
