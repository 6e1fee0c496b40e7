//! Typed errors of the library. Every variant names the file, tensor, node, field or pass at fault,
//! so the CLI can print one short line and exit 2. Uses nothing else in the crate.

use std::path::PathBuf;

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum WickError {
    /// The cause is part of the message and not a `source`, so that a report of the error chain
    /// prints it once.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: architecture: {msg}")]
    Arch { path: String, msg: String },
    #[error("{file}: tensor '{tensor}' needed by node '{node}' is missing")]
    MissingTensor { file: String, tensor: String, node: String },
    #[error("{file}: tensor '{tensor}' has shape {found:?}, node '{node}' expects {expected:?}")]
    ShapeMismatch { file: String, tensor: String, node: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{file}: tensor '{tensor}' holds {what} values")]
    NonFinite { file: String, tensor: String, what: &'static str },
    #[error("{file}: tensor '{tensor}' has dtype {dtype}, which wick cannot load as {role}")]
    BadDtype { file: String, tensor: String, dtype: String, role: &'static str },
    #[error("node '{node}': {msg}")]
    Node { node: String, msg: String },
    #[error("{file}: data: {msg}")]
    Data { file: String, msg: String },
    #[error("{file}: ONNX node '{node}' ({op_type}): {msg}")]
    Onnx { file: String, node: String, op_type: String, msg: String },
    #[error("{what}: {msg}")]
    Invalid { what: String, msg: String },
    #[error("pass '{pass}': {cause}")]
    Pass { pass: String, cause: Box<WickError> },
    /// Boxed: candle's error is large and every `Result` would carry its size.
    #[error("tensor computation failed: {0}")]
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for WickError {
    fn from(e: candle_core::Error) -> Self {
        WickError::Candle(Box::new(e))
    }
}

impl WickError {
    /// A node-level error: `node 'conv1': msg`.
    pub fn node(node: impl Into<String>, msg: impl Into<String>) -> Self {
        WickError::Node { node: node.into(), msg: msg.into() }
    }
    /// An error in a named argument, field or setting: `what: msg`.
    pub fn invalid(what: impl Into<String>, msg: impl Into<String>) -> Self {
        WickError::Invalid { what: what.into(), msg: msg.into() }
    }
    /// An error in a data file.
    pub fn data(file: impl Into<String>, msg: impl Into<String>) -> Self {
        WickError::Data { file: file.into(), msg: msg.into() }
    }
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        WickError::Io { path: path.into(), cause }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, WickError>;
