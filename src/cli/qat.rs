//! `wick qat MODEL --train FILE --val FILE --out OUT`: quantisation-aware training from PTQ
//! calibration, converted to an INT8 artifact.

use super::progress::CliProgress;
use super::quant_common::*;
use super::Outcome;
use serde_json::json;
use std::path::PathBuf;
use wick::passes::calibrate::ptq;
use wick::passes::convert_int8::ConvertInt8;
use wick::passes::qat::QatSettings;
use wick::passes::{Ctx, Data, Pass, State};
use wick::train::{Epochs, LearningRate, OptimizerKind};

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
    #[command(flatten)]
    c: CalibrateArgs,
    /// Epochs (`auto`: from the data).
    #[arg(long, default_value_t = QatSettings::default().epochs)]
    epochs: Epochs,
    /// Epochs during which activation ranges keep updating before they freeze.
    #[arg(long, default_value_t = QatSettings::default().observer_epochs)]
    observer_epochs: usize,
    #[arg(long, default_value_t = QatSettings::default().lr)]
    lr: LearningRate,
    #[arg(long, default_value_t = QatSettings::default().optimizer)]
    optimizer: OptimizerKind,
    #[arg(long, default_value_t = QatSettings::default().batch_size)]
    batch_size: usize,
    /// Distil from the float model's logits while training (`--distill false`: labels alone).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = QatSettings::default().distill)]
    distill: bool,
    #[arg(long, default_value_t = QatSettings::default().temperature)]
    temperature: f64,
    #[arg(long, default_value_t = QatSettings::default().alpha)]
    alpha: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    o: OutputArgs,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    wick::hf::refuse_for(&a.m.model, "qat")?;
    let teacher = load_float(&a.m.model, a.m.arch.as_deref())?;
    let train = read_data(&a.train, &teacher)?;
    let val = read_data(&a.val, &teacher)?;
    let calib = match &a.calib {
        Some(p) => wick::data::Dataset::read(p)?,
        None => train.clone(),
    };
    let progress = CliProgress::new(a.o.quiet);
    let calibration = a.c.settings()?;
    let settings = QatSettings {
        epochs: a.epochs,
        lr: a.lr,
        optimizer: a.optimizer,
        observer_epochs: a.observer_epochs,
        distill: a.distill,
        temperature: a.temperature,
        alpha: a.alpha,
        batch_size: a.batch_size,
    };
    settings.validate().map_err(|e| super::as_flags(&e))?;
    // The steps of the qat-int8 recipe: fold and calibrate, QAT, convert.
    let init = ptq(&teacher, &calib, &calibration, &progress)?;
    let inputs = init.int8.layers.iter().map(|(k, l)| (k.clone(), l.input)).filter_map(|(k, i)| Some((k, i.fixed()?))).collect();
    let ctx = Ctx::new(&teacher, Data { train: &train, val: &val, calib: &calib }, a.seed, None, None, &progress)?;
    let applied = settings.apply(State::Calibrated { folded: init.folded, inputs }, &ctx)?;
    let State::Calibrated { folded, inputs } = applied.state else { unreachable!("qat gives a calibrated model") };
    let mut q = ConvertInt8::convert(&folded, &inputs)?;
    let settings_json = json!({"pass": "qat", "qat": &settings, "calibrate": &calibration});
    let cmp = write_and_compare(&mut q, &teacher, &a.m.model, &a.o.out, a.o.test.as_ref(), settings_json.clone(), &progress)?;
    println!("wrote {} ({} layers INT8; {})", a.o.out.display(), q.layers.len(), applied.summary);
    if let Some(c) = &cmp {
        print_comparison(c);
    }
    if let Some(r) = &a.o.report {
        write_report(r, &json!({"tool": wick::provenance::tool_version(), "settings": settings_json, "comparison": cmp, "training": applied.details}))?;
    }
    Ok(Outcome::Ok)
}
