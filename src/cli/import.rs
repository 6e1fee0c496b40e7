//! `wick import MODEL.onnx --out MODEL.safetensors`: an ONNX model as a wick model file (its
//! weights and embedded architecture; a QDQ graph becomes an INT8 artifact), written once so
//! later commands skip the ONNX mapping.

use super::Outcome;
use std::path::PathBuf;
use wick::artifact::{load_any, AnyModel};

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX file (`torch.onnx.export` with either exporter, or `wick export`).
    model: PathBuf,
    /// The wick model file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    if !wick::onnx::is_onnx(&a.model) {
        anyhow::bail!("{}: `wick import` reads ONNX files (`.onnx`); other commands read wick models directly", a.model.display());
    }
    let (model, warnings) = load_any(&a.model, None)?;
    super::warn_all(&warnings);
    let source = serde_json::json!({"imported_from": a.model.display().to_string()});
    let kind = match model {
        AnyModel::Float(m) => {
            let extra = source.as_object().cloned().unwrap_or_default().into_iter().collect();
            wick::model::load::save_model(&m, &a.out, extra)?;
            "float"
        }
        AnyModel::Int8(mut q) => {
            q.info.extend(source.as_object().cloned().unwrap_or_default());
            q.save(&a.out)?;
            "INT8"
        }
    };
    println!("wrote {} ({kind} model imported from {})", a.out.display(), a.model.display());
    Ok(Outcome::Ok)
}
