//! `wick quantize MODEL --calib FILE --out OUT`: post-training INT8 quantisation. A text
//! encoder (a model directory) with calibration sentences goes to `quantize_text`.

use super::progress::CliProgress;
use super::quant_common::*;
use super::Outcome;
use serde_json::json;
use std::path::PathBuf;
use wick::passes::calibrate::ptq;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub m: super::ModelArgs,
    /// Calibration data (safetensors with `x`; `y` is not used but required by the format).
    #[arg(long)]
    calib: PathBuf,
    #[command(flatten)]
    c: CalibrateArgs,
    #[command(flatten)]
    o: OutputArgs,
    #[command(flatten)]
    pub t: super::quantize_text::TargetArgs,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    if wick::hf::is_model_dir(&a.m.model) {
        return super::quantize_text::run(&a.m.model, &a.calib, &a.c.exclude, &a.t, &a.o);
    }
    let teacher = load_float(&a.m.model, a.m.arch.as_deref())?;
    let calib = wick::data::Dataset::read(&a.calib)?;
    let progress = CliProgress::new(a.o.quiet);
    let settings = a.c.settings()?;
    let out = ptq(&teacher, &calib, &settings, &progress)?;
    let (mut q, rep) = (out.int8, out.report);
    let settings = json!({"pass": "ptq", "calibrate": &settings, "samples": rep.calibration_samples, "method": rep.method});
    let cmp = write_and_compare(&mut q, &teacher, &a.m.model, &a.o.out, a.o.test.as_ref(), settings.clone(), &progress)?;
    println!("wrote {} ({} layers INT8, {} BatchNorms folded, {} kept in float)", a.o.out.display(), q.layers.len(), rep.folded.len(), rep.excluded.len());
    if let Some(c) = &cmp {
        print_comparison(c);
    }
    if let Some(r) = &a.o.report {
        let layers: serde_json::Map<String, serde_json::Value> = rep
            .layers
            .iter()
            .map(|(k, l)| {
                let ws = &q.layers[k].weight.scales;
                (
                    k.clone(),
                    json!({
                        "input": l, "weight_scale_min": ws.iter().cloned().fold(f32::INFINITY, f32::min),
                        "weight_scale_max": ws.iter().cloned().fold(0f32, f32::max), "weight_shape": q.layers[k].weight.shape,
                    }),
                )
            })
            .collect();
        write_report(r, &json!({"tool": wick::provenance::tool_version(), "settings": settings, "comparison": cmp, "method_errors": rep.method_errors, "folded": rep.folded, "layers": layers}))?;
    }
    Ok(Outcome::Ok)
}
