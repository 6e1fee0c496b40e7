//! `wick export MODEL --format onnx --out FILE.onnx`: a float model as a plain ONNX graph, an
//! INT8 artifact as a QDQ graph with its exact scales and zero points (opset 17, dynamic batch).

use super::Outcome;
use std::path::PathBuf;
use wick::artifact::{load_any, AnyModel};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Onnx,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    wick::hf::refuse_for(&a.m.model, "export")?;
    let Format::Onnx = a.format;
    let (model, warnings) = load_any(&a.m.model, a.m.arch.as_deref())?;
    super::warn_all(&warnings);
    let (proto, kind) = match &model {
        AnyModel::Float(m) => (wick::onnx::export::float_model(m)?, "float graph"),
        AnyModel::Int8(q) => (wick::onnx::export::int8_model(q)?, "QDQ graph"),
    };
    wick::onnx::export::write(&proto, &a.out)?;
    let opset = proto.opset_import.first().map_or(0, |o| o.version);
    println!("wrote {} (ONNX opset {opset}, {kind}, {} nodes)", a.out.display(), proto.graph.as_ref().map_or(0, |g| g.node.len()));
    Ok(Outcome::Ok)
}
