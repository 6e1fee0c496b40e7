//! `wick qat MODEL --train FILE --val FILE --out OUT`: quantisation-aware training from PTQ
//! calibration, converted to an INT8 artifact.

use super::progress::CliProgress;
use super::quant_common::*;
use super::Outcome;
use serde_json::json;
use std::path::PathBuf;
use wick::calibrate::{CalibConfig, Method};
use wick::passes::{
    ptq::ptq,
    qat::{qat, QatConfig},
};
use wick::quant::ActType;
use wick::train::{OptimizerKind, TrainConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    #[arg(long)]
    train: PathBuf,
    #[arg(long)]
    val: PathBuf,
    /// Calibration data for the initial ranges (default: the training set).
    #[arg(long)]
    calib: Option<PathBuf>,
    #[arg(long, default_value = "entropy")]
    method: Method,
    #[arg(long, default_value = "u8")]
    activations: ActType,
    #[arg(long, num_args = 1..)]
    exclude: Vec<String>,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Epochs during which activation ranges keep updating before they freeze.
    #[arg(long, default_value_t = 2)]
    observer_epochs: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value = "adamw")]
    optimizer: OptimizerKind,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Distil from the float teacher's logits while training.
    #[arg(long)]
    distill: bool,
    #[arg(long, default_value_t = 4.0)]
    temperature: f64,
    #[arg(long, default_value_t = 0.7)]
    alpha: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    o: OutputArgs,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let teacher = load_float(&a.m.model, a.m.arch.as_deref())?;
    let train = read_data(&a.train, &teacher)?;
    let val = read_data(&a.val, &teacher)?;
    let calib = match &a.calib {
        Some(p) => wick::data::Dataset::read(p)?,
        None => train.clone(),
    };
    let progress = CliProgress::new(a.o.quiet);
    let ccfg = CalibConfig { method: a.method, percentile: 99.99, act: a.activations, batch_size: 64 };
    let init = ptq(&teacher, &calib, &ccfg, 512, &a.exclude, &progress)?;
    let folded = init.folded;
    let init = init.int8;
    let cfg = QatConfig {
        train: TrainConfig {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            optimizer: a.optimizer,
            weight_decay: a.weight_decay,
            momentum: 0.9,
            warmup_epochs: 0.0,
            seed: a.seed,
            patience: None,
        },
        observer_epochs: a.observer_epochs,
        temperature: a.temperature,
        alpha: a.alpha,
    };
    let teacher_ref = if a.distill { Some(&teacher) } else { None };
    let (mut q, rep) = qat(&folded, &init, teacher_ref, &train, &val, &cfg, &progress)?;
    let settings = json!({"pass": "qat", "qat": &cfg, "calibration": &ccfg, "exclude": &a.exclude});
    let cmp = write_and_compare(&mut q, &teacher, &a.m.model, &a.o.out, a.o.test.as_ref(), settings.clone(), &progress)?;
    println!("wrote {} ({} layers INT8; best val accuracy {:.4} at epoch {})", a.o.out.display(), q.layers.len(), rep.fit.best_val_accuracy, rep.fit.best_epoch);
    if let Some(c) = &cmp {
        print_comparison(c);
    }
    if let Some(r) = &a.o.report {
        write_report(r, &json!({"tool": wick::provenance::tool_version(), "settings": settings, "comparison": cmp, "training": rep}))?;
    }
    Ok(Outcome::Ok)
}
