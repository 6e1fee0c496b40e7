//! The compression report: one `Report` value, rendered as JSON (stable keys) and Markdown (for
//! people, with an SVG chart). Uses `model`, `artifact`, `pipeline`, `compare`.

pub mod chart;
pub mod latency;
pub mod markdown;

use crate::artifact::Int8Model;
use crate::eval::EvalResult;
use crate::model::stats::node_stats;
use crate::model::Model;
use crate::pipeline::Stage;
use latency::Latency;
use serde::Serialize;
use std::collections::BTreeMap;

/// A file the run read.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FileInfo {
    pub path: String,
    pub sha256: String,
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub file: String,
    pub accuracy: f64,
    pub correct: usize,
    pub samples: usize,
    pub loss: f64,
    pub bytes_on_disk: u64,
    pub params: usize,
    pub macs: u64,
    pub latency: Latency,
    /// How its accuracy was measured.
    pub execution: String,
}

/// The accuracy gate.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// `points` (absolute drop in points) or `relative` (fraction of the teacher's accuracy); none when no gate was set.
    pub kind: Option<String>,
    pub threshold: Option<f64>,
    pub passed: bool,
    pub reason: String,
}

/// Compressed over teacher (sizes), teacher over compressed (speed-ups).
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub size: f64,
    pub params: f64,
    pub macs: f64,
    pub latency_batch1_speedup: f64,
    pub latency_large_batch_speedup: f64,
}

/// One layer, before and after.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub layer: String,
    pub op: String,
    pub shape_before: Vec<usize>,
    /// Output shape after compression; empty when the layer was folded away.
    pub shape_after: Vec<usize>,
    pub status: String,
    pub weight_bits: u32,
    pub params_before: usize,
    pub params_after: usize,
}

/// Accuracy lost when only one layer is quantised.
#[derive(Debug, Clone, Serialize)]
pub struct Sensitivity {
    pub layer: String,
    pub drop_points: f64,
}

/// Everything a compression run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub recipe: FileInfo,
    pub recipe_name: String,
    pub seed: u64,
    pub inputs: BTreeMap<String, FileInfo>,
    pub teacher: Side,
    pub compressed: Side,
    /// Fraction of test samples on which both predict the same class.
    pub agreement: f64,
    pub flipped: usize,
    /// `100 · (teacher − compressed)` accuracy.
    pub accuracy_drop_points: f64,
    /// `(teacher − compressed) / teacher`.
    pub accuracy_drop_relative: f64,
    pub gate: Gate,
    pub ratios: Ratios,
    pub layers: Vec<LayerRow>,
    pub passes: Vec<Stage>,
    pub sensitivity: Vec<Sensitivity>,
    /// Layers kept in float by `--fallback`, most sensitive first.
    pub float_fallback: Vec<String>,
}

/// Evaluation of one side, assembled.
pub fn side(file: &str, r: &EvalResult, bytes: u64, m: &Model, latency: Latency, execution: &str) -> Side {
    Side {
        file: file.into(),
        accuracy: r.accuracy,
        correct: r.correct,
        samples: r.samples,
        loss: r.loss,
        bytes_on_disk: bytes,
        params: crate::model::stats::total_params(m),
        macs: crate::model::stats::total_macs(m),
        latency,
        execution: execution.into(),
    }
}

/// Rows for every parametric layer of the teacher, matched by name in the compressed model.
pub fn layer_rows(teacher: &Model, q: &Int8Model) -> Vec<LayerRow> {
    let after: BTreeMap<String, (Vec<usize>, usize)> = node_stats(&q.model, |_| 4).into_iter().map(|r| (r.name, (r.output_shape, r.params))).collect();
    node_stats(teacher, |_| 4)
        .into_iter()
        .filter(|r| r.params > 0)
        .map(|r| {
            let a = after.get(&r.name);
            // A lookup table stored INT8 per row counts as an INT8 layer.
            let int8 = q.node_quantised(&r.name) || q.tables.contains_key(&r.name);
            let status = match (a, int8) {
                (None, _) => "folded into the previous layer".to_string(),
                (Some(_), true) => "int8".to_string(),
                (Some(_), false) => "float".to_string(),
            };
            LayerRow {
                layer: r.name,
                op: r.op,
                shape_before: r.output_shape,
                shape_after: a.map(|x| x.0.clone()).unwrap_or_default(),
                status,
                weight_bits: if int8 {
                    8
                } else if a.is_some() {
                    32
                } else {
                    0
                },
                params_before: r.params,
                params_after: a.map(|x| x.1).unwrap_or(0),
            }
        })
        .collect()
}

/// Decides the gate: `points` compares the drop in points, `relative` the drop as a fraction.
pub fn gate(drop_points: f64, drop_relative: f64, max_points: Option<f64>, max_relative: Option<f64>) -> Gate {
    match (max_points, max_relative) {
        (Some(t), _) => Gate {
            kind: Some("points".into()),
            threshold: Some(t),
            passed: drop_points <= t + 1e-9,
            reason: if drop_points <= t + 1e-9 {
                format!("accuracy dropped {drop_points:.2} points, within the allowed {t}")
            } else {
                format!("accuracy dropped {drop_points:.2} points, more than the allowed {t}")
            },
        },
        (None, Some(t)) => Gate {
            kind: Some("relative".into()),
            threshold: Some(t),
            passed: drop_relative <= t + 1e-12,
            reason: if drop_relative <= t + 1e-12 { format!("relative drop {drop_relative:.4} within the allowed {t}") } else { format!("relative drop {drop_relative:.4} exceeds the allowed {t}") },
        },
        (None, None) => Gate { kind: None, threshold: None, passed: true, reason: "no gate set".into() },
    }
}
