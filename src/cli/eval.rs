//! `wick eval MODEL --data FILE`: top-1 accuracy, mean cross-entropy and the sample count.

use super::progress::CliProgress;
use super::Outcome;
use std::path::PathBuf;
use wick::data::Dataset;
use wick::eval::evaluate;
use wick::model::load::load_model;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (safetensors).
    model: PathBuf,
    /// Architecture JSON (else the file's metadata or a sidecar `<stem>.arch.json`).
    #[arg(long)]
    arch: Option<PathBuf>,
    /// Data set (safetensors with `x` and `y`).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let loaded = load_model(&a.model, a.arch.as_deref())?;
    super::warn_all(&loaded.warnings);
    let data = Dataset::read(&a.data)?;
    let progress = CliProgress::new(a.quiet);
    let r = evaluate(&loaded.model, &data, a.batch_size, &progress)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("accuracy {:.4} ({}/{})  loss {:.4}", r.accuracy, r.correct, r.samples, r.loss);
    }
    Ok(Outcome::Ok)
}
