//! `wick quantize DIR --calib SENTENCES.txt --out OUT`: post-training INT8 of a text encoder
//! (`text_ptq`), the artifact written, read back and checked bit for bit, and with `--test`
//! the written file's fidelity to the float model on other sentences.

use super::progress::CliProgress;
use super::quant_common::{write_report, OutputArgs};
use super::Outcome;
use anyhow::Context;
use serde_json::json;
use std::path::Path;
use wick::compare::file_bytes;
use wick::embedding::{embed, fidelity, TextData};
use wick::passes::text_ptq::{embed_int8, ptq, TextPtqSettings};
use wick::provenance::{file_sha256, tool_version};

/// Sentences per batch while calibrating and measuring.
const BATCH: usize = 32;

/// The fidelity a text encoder's INT8 model must keep on the calibration sentences.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// Text encoders: least mean cosine similarity to the float model's embeddings on the
    /// calibration sentences; the costliest linears stay float until it is met.
    #[arg(long, default_value_t = TextPtqSettings::default().min_cosine)]
    pub min_cosine: f64,
    /// Text encoders: least share of calibration sentences keeping their nearest neighbour (0:
    /// no such target; see `TextPtqSettings::min_nn_agreement`).
    #[arg(long, default_value_t = TextPtqSettings::default().min_nn_agreement)]
    pub min_nn_agreement: f64,
}

pub fn run(dir: &Path, calib: &Path, exclude: &[String], t: &TargetArgs, o: &OutputArgs) -> anyhow::Result<Outcome> {
    let settings = TextPtqSettings { min_cosine: t.min_cosine, min_nn_agreement: t.min_nn_agreement, exclude: exclude.to_vec() };
    settings.validate().map_err(|e| super::as_flags(&e))?;
    if calib.extension().is_none_or(|e| e != "txt") {
        anyhow::bail!(wick::WickError::invalid("--calib", format!("{} is not a .txt file; a text encoder calibrates on sentences, one per line", calib.display())));
    }
    let loaded = wick::model::load::load_model(dir, None)?;
    super::warn_all(&loaded.warnings);
    let model = loaded.model;
    let len = model.input_shape()[0];
    let calib_data = TextData::read(calib, dir, len)?;
    let test = o.test.as_ref().map(|p| TextData::read(p, dir, len)).transpose()?;
    let progress = CliProgress::new(o.quiet);
    let target = settings.target();
    let (mut q, rep) = ptq(&model, &calib_data, exclude, target, BATCH, &progress)?;
    let settings = json!({"pass": "ptq", "input": "per_token u8", "calibration": calib.display().to_string(), "target": target, "exclude": exclude});
    q.info.insert("provenance".into(), json!({"teacher": dir.display().to_string(), "teacher_sha256": file_sha256(&dir.join("model.safetensors"))?, "tool": tool_version(), "settings": settings}));
    let written = wick::compare::write_int8(&q, &o.out).with_context(|| format!("writing {}", o.out.display()))?;
    let (before, after) = (file_bytes(&dir.join("model.safetensors"))?, file_bytes(&o.out)?);
    println!("wrote {} ({} linears INT8 with per-token inputs, {} kept float: {})", o.out.display(), q.layers.len(), rep.kept_float.len(), rep.kept_float.join(", "));
    println!("size      {before} -> {after} bytes ({:.1}% of model.safetensors)", 100.0 * after as f64 / before as f64);
    let f = &rep.fidelity;
    println!("calibration ({} sentences): cosine mean {:.6}, min {:.6}; nearest-neighbour agreement {:.4}", rep.calibration_sentences, f.cosine_mean, f.cosine_min, f.nn_agreement);
    let test_fid = match &test {
        Some(d) => {
            let f = fidelity(&embed_int8(&written, d, BATCH)?, &embed(&model, d, BATCH)?)?;
            println!(
                "test        ({} sentences): cosine mean {:.6}, min {:.6}; nearest-neighbour agreement {:.4}  [integer execution of the written file]",
                d.len(),
                f.cosine_mean,
                f.cosine_min,
                f.nn_agreement
            );
            Some(f)
        }
        None => None,
    };
    if let Some(r) = &o.report {
        write_report(r, &json!({"tool": tool_version(), "settings": settings, "calibration": rep, "test": test_fid, "bytes_before": before, "bytes_after": after}))?;
    }
    Ok(Outcome::Ok)
}
