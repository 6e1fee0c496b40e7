//! A compression job on a text encoder (`wick compress DIR` with a recipe of text steps): the
//! recipe's `text_distill` (a shallower student on the `--train` sentences, validated on
//! `--val`) and `text_ptq` (calibrated on `--calib`, else `--val`), the INT8 artifact written
//! once and read back bit for bit, then the written file's fidelity to the teacher on `--test`
//! (cosine mean and min, nearest-neighbour agreement), sizes, parameters and latency at batch 1
//! and 32 of both, in `report.json` and `report.md`, with the gate `--min-cosine`. Outputs are
//! staged and renamed into place as the classifier job's are.

use super::{JobSpec, ARTIFACT, REPORT_JSON, REPORT_MD};
use crate::embedding::{embed_on_plan, fidelity, Fidelity, TextData};
use crate::error::{Result, WickError};
use crate::model::stats::total_params;
use crate::model::Model;
use crate::passes::text_distill::{distill, encoder_layers, student};
use crate::passes::text_ptq::ptq;
use crate::passes::PassSpec;
use crate::progress::Progress;
use crate::provenance::{file_sha256, tool_version};
use crate::report::markdown::{size, speed};
use crate::runtime::plan::Plan;
use crate::staging::Staging;
use crate::tensor_file::write_atomic;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

/// Sentences per batch while measuring fidelity, and the large batch of the latency.
const BATCH: usize = 32;

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TextSide {
    pub file: String,
    pub bytes_on_disk: u64,
    pub params: usize,
    pub layers: usize,
    pub execution: String,
    /// Embedding the `--test` sentences one at a time, per sentence.
    pub batch1_ms_per_sentence: f64,
    /// Embedding them 32 at a time (each batch padded to its longest), per batch.
    pub batch32_ms_per_batch: f64,
}

/// The gate: the compressed model's mean cosine on `--test` against `--min-cosine`.
#[derive(Debug, Clone, Serialize)]
pub struct TextGate {
    pub min_cosine: Option<f64>,
    pub passed: bool,
    pub reason: String,
}

/// `report.json` of a text job.
#[derive(Debug, Clone, Serialize)]
pub struct TextReport {
    pub tool: String,
    pub recipe: String,
    pub recipe_name: String,
    pub seed: u64,
    pub inputs: Value,
    pub teacher: TextSide,
    pub compressed: TextSide,
    /// The written file's embeddings against the teacher's on `--test`.
    pub fidelity: Fidelity,
    pub size_ratio: f64,
    pub gate: TextGate,
    /// Each step's name and record (training curves, sensitivity, kept-float linears).
    pub passes: Vec<Value>,
}

/// Runs the job of `spec` (whose model is a text encoder's directory) with its text recipe.
pub fn run(spec: &JobSpec, recipe: &crate::recipe::Recipe, recipe_path: &Path, min_cosine: Option<f64>, progress: &dyn Progress) -> Result<TextReport> {
    if !recipe.passes.iter().all(PassSpec::is_text) {
        return Err(WickError::invalid("--recipe", format!("'{}' is a classifier recipe; a text encoder takes text-int8 or text-distill-int8", recipe.name)));
    }
    if spec.max_accuracy_drop.is_some() || spec.max_relative_drop.is_some() || spec.sensitivity || spec.fallback {
        return Err(WickError::invalid("--max-accuracy-drop/--max-relative-drop/--sensitivity/--fallback", "apply to classifiers; a text encoder's gate is --min-cosine"));
    }
    if let Some(c) = min_cosine.filter(|c| !(-1.0..=1.0).contains(c)) {
        return Err(WickError::invalid("--min-cosine", format!("{c} is outside [-1, 1]")));
    }
    for (flag, p) in [("--train", Some(&spec.train)), ("--val", Some(&spec.val)), ("--test", Some(&spec.test)), ("--calib", spec.calib.as_ref())] {
        if let Some(p) = p.filter(|p| p.extension().is_none_or(|e| e != "txt")) {
            return Err(WickError::invalid(flag, format!("{} is not a .txt file; a text encoder takes sentences, one per line", p.display())));
        }
    }
    let dir = &spec.model;
    let teacher = crate::model::load::load_model(dir, None)?.model;
    let len = teacher.input_shape()[0];
    let read = |p: &Path| TextData::read(p, dir, len);
    let (train, val, test) = (read(&spec.train)?, read(&spec.val)?, read(&spec.test)?);
    let own_calib = spec.calib.as_deref().map(read).transpose()?;
    let calib = own_calib.as_ref().unwrap_or(&val);
    let staging = Staging::new(&spec.out)?;
    let mut current: Option<Model> = None;
    let mut passes = vec![];
    let mut int8 = None;
    for p in &recipe.passes {
        let model = current.as_ref().unwrap_or(&teacher);
        match p {
            PassSpec::TextDistill(s) => {
                let config = crate::hf::config(dir)?;
                let cfg = s.config(train.len(), spec.seed, spec.max_epochs);
                let (mut st, map) = student(&teacher, &config, s.layers(encoder_layers(&teacher)), &val, cfg.batch_size, progress)?;
                let rep = distill(&teacher, &mut st, &map, &train, &val, &cfg, progress)?;
                passes.push(json!({"pass": "text_distill", "settings": s, "training": rep}));
                current = Some(st);
            }
            PassSpec::TextPtq(s) => {
                let (q, rep) = ptq(model, calib, &s.exclude, s.target(), BATCH, progress)?;
                passes.push(json!({"pass": "text_ptq", "settings": s, "calibration": rep}));
                int8 = Some(q);
            }
            _ => unreachable!("checked: text steps only"),
        }
    }
    let mut q = int8.ok_or_else(|| WickError::invalid("--recipe", "a text-encoder recipe ends with 'text_ptq'"))?;
    let inputs = json!({
        "teacher": {"path": dir.display().to_string(), "sha256": file_sha256(&dir.join("model.safetensors"))?},
        "train": {"path": spec.train.display().to_string(), "sha256": file_sha256(&spec.train)?},
        "val": {"path": spec.val.display().to_string(), "sha256": file_sha256(&spec.val)?},
        "test": {"path": spec.test.display().to_string(), "sha256": file_sha256(&spec.test)?},
    });
    q.info.insert("provenance".into(), json!({"recipe": recipe.name, "tool": tool_version(), "seed": spec.seed, "teacher": inputs["teacher"]}));
    let staged = staging.dir.join(ARTIFACT);
    let written = crate::compare::write_int8(&q, &staged)?;
    let (t_plan, q_plan) = (Plan::float(&teacher)?, Plan::int8(&written)?);
    let f = fidelity(&embed_on_plan(&q_plan, &written.model, &test, BATCH)?, &embed_on_plan(&t_plan, &teacher, &test, BATCH)?)?;
    let (t_bytes, q_bytes) = (crate::compare::file_bytes(&dir.join("model.safetensors"))?, crate::compare::file_bytes(&staged)?);
    let side = |m: &Model, plan: &Plan, file: String, bytes: u64, execution: &str| -> Result<TextSide> {
        let (b1, b32) = (timed(plan, m, &test, 1)?, timed(plan, m, &test, BATCH)?);
        Ok(TextSide {
            file,
            bytes_on_disk: bytes,
            params: total_params(m),
            layers: encoder_layers(m),
            execution: execution.into(),
            batch1_ms_per_sentence: 1000.0 * b1 / test.len() as f64,
            batch32_ms_per_batch: 1000.0 * b32 / test.len().div_ceil(BATCH) as f64,
        })
    };
    let teacher_side = side(&teacher, &t_plan, dir.display().to_string(), t_bytes, "float32 (compiled plan)")?;
    let compressed_side = side(&written.model, &q_plan, spec.out.join(ARTIFACT).display().to_string(), q_bytes, "int8 integer execution (compiled plan)")?;
    let gate = match min_cosine {
        None => TextGate { min_cosine, passed: true, reason: "no gate".into() },
        Some(c) => TextGate { min_cosine, passed: f.cosine_mean >= c, reason: format!("test cosine mean {:.6} {} --min-cosine {c}", f.cosine_mean, if f.cosine_mean >= c { ">=" } else { "<" }) },
    };
    let rep = TextReport {
        tool: tool_version(),
        recipe: recipe_path.display().to_string(),
        recipe_name: recipe.name.clone(),
        seed: spec.seed,
        inputs,
        size_ratio: q_bytes as f64 / t_bytes.max(1) as f64,
        teacher: teacher_side,
        compressed: compressed_side,
        fidelity: f,
        gate,
        passes,
    };
    write_atomic(&staging.dir.join(REPORT_MD), markdown(&rep).as_bytes())?;
    write_atomic(&staging.dir.join(REPORT_JSON), (serde_json::to_string_pretty(&rep).expect("report serialises") + "\n").as_bytes())?;
    staging.commit(&[ARTIFACT, REPORT_MD, REPORT_JSON])?;
    Ok(rep)
}

/// Seconds to embed every sentence of `data` in batches of `batch` on `plan` (the median of
/// three runs, after one warm-up).
fn timed(plan: &Plan, model: &Model, data: &TextData, batch: usize) -> Result<f64> {
    embed_on_plan(plan, model, data, batch)?;
    let mut t = vec![];
    for _ in 0..3 {
        let start = std::time::Instant::now();
        embed_on_plan(plan, model, data, batch)?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[1])
}

/// `report.md`: the comparison table and each step's one-line summary.
fn markdown(r: &TextReport) -> String {
    let (t, c, f) = (&r.teacher, &r.compressed, &r.fidelity);
    let mut s = format!("# wick compression report: `{}` (text encoder)\n\nGate: {}\n\n", r.recipe_name, r.gate.reason);
    s += "| | teacher | compressed | ratio |\n|---|---|---|---|\n";
    s += &format!("| cosine to the teacher, mean / min ({} sentences) | 1 | {:.6} / {:.6} | |\n", f.sentences, f.cosine_mean, f.cosine_min);
    s += &format!("| nearest-neighbour agreement | 1 | {:.4} | |\n", f.nn_agreement);
    s += &format!("| bytes on disk | {} | {} | {:.1}x smaller |\n", size(t.bytes_on_disk), size(c.bytes_on_disk), 1.0 / r.size_ratio);
    s += &format!("| parameters | {} | {} | {:.1}% |\n", t.params, c.params, 100.0 * c.params as f64 / t.params.max(1) as f64);
    s += &format!("| layers | {} | {} | |\n", t.layers, c.layers);
    s += &format!(
        "| latency, batch 1, ms per sentence | {:.2} | {:.2} | {} |\n",
        t.batch1_ms_per_sentence,
        c.batch1_ms_per_sentence,
        speed(t.batch1_ms_per_sentence / c.batch1_ms_per_sentence.max(1e-9))
    );
    s += &format!("| latency, batch 32, ms per batch | {:.1} | {:.1} | {} |\n", t.batch32_ms_per_batch, c.batch32_ms_per_batch, speed(t.batch32_ms_per_batch / c.batch32_ms_per_batch.max(1e-9)));
    s += &format!(
        "\nThe compressed fidelity is that of `{}` ({}); the teacher runs {}. Latencies are medians measured in this run on this machine, padding each batch to its longest sentence.\n\n## Passes\n\n",
        c.file, c.execution, t.execution
    );
    for p in &r.passes {
        let line = match p["pass"].as_str() {
            Some("text_distill") => {
                let tr = &p["training"];
                let best = &tr["val"][tr["best"].as_u64().unwrap_or(0) as usize];
                format!(
                    "`text_distill`: layers {} of the teacher, {} steps on {} sentences; validation cosine mean {:.5} (untrained {:.5})",
                    tr["layer_map"],
                    tr["steps"],
                    tr["train_sentences"],
                    best["cosine_mean"].as_f64().unwrap_or(f64::NAN),
                    tr["val"][0]["cosine_mean"].as_f64().unwrap_or(f64::NAN)
                )
            }
            _ => {
                let cal = &p["calibration"];
                let kept = cal["kept_float"].as_array().map_or(0, Vec::len);
                format!(
                    "`text_ptq`: linears INT8 with per-token inputs, tables INT8 per row, {kept} linear(s) kept float; cosine mean {:.6} to the model it quantised on {} calibration sentences",
                    cal["fidelity"]["cosine_mean"].as_f64().unwrap_or(f64::NAN),
                    cal["calibration_sentences"]
                )
            }
        };
        s += &format!("- {line}\n");
    }
    s
}
