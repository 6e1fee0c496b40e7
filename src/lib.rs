//! wick: compress trained neural networks — structured channel pruning, knowledge distillation,
//! INT8 quantisation (post-training and quantisation-aware) — and report the accuracy of the
//! integer artifact it writes. See README.md for the architecture.

pub mod allocator;
pub mod artifact;
pub mod audit;
pub mod bench;
pub mod calibrate;
pub mod compare;
pub mod data;
pub mod embedding;
pub mod error;
pub mod eval;
pub mod hf;
pub mod job;
pub mod matmul;
pub mod model;
pub mod onnx;
pub mod parallel;
pub mod partial_files;
pub mod passes;
pub mod pipeline;
pub mod progress;
pub mod provenance;
pub mod quant;
pub mod recipe;
pub mod report;
pub mod runtime;
pub mod staging;
pub mod tensor_file;
pub mod train;

pub use error::{Result, WickError};

/// `Display` through a unit enum's serde name: its spelling in recipes and on the command line.
macro_rules! display_as_serde {
    ($($t:ty),*) => {
        $(impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        })*
    };
}

display_as_serde!(calibrate::Method, train::OptimizerKind, passes::prune_channels::importance::Criterion, quant::ActType);
