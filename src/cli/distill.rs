//! `wick distill --teacher MODEL (--student ARCH.json | --student MODEL.safetensors | --width F)
//! --train FILE --val FILE --out OUT`: knowledge distillation into a smaller student.

use super::progress::CliProgress;
use super::quant_common::{load_float, read_data};
use super::Outcome;
use serde_json::json;
use std::path::PathBuf;
use wick::eval::evaluate;
use wick::model::stats::total_params;
use wick::passes::distill::DistillSettings;
use wick::passes::{train_config, Ctx, Data, Pass, State};
use wick::progress::Silent;
use wick::train::budget::AUTO_STEPS;
use wick::train::distill::distill;
use wick::train::{Epochs, LearningRate, OptimizerKind};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub teacher: PathBuf,
    #[arg(long)]
    arch: Option<PathBuf>,
    /// Student: an architecture JSON (randomly initialised from --seed) or a model file.
    #[arg(long, conflicts_with = "width")]
    pub student: Option<PathBuf>,
    /// Student: the teacher's architecture with every prunable channel group scaled by F,
    /// initialised from the teacher's most important (L1) channels.
    #[arg(long)]
    pub width: Option<f64>,
    /// With --width: the student narrows in steps of √2; keep the narrowest step within half of
    /// --max-accuracy-drop (`--widen false`: always the width given).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = DistillSettings::default().widen)]
    widen: bool,
    /// With --width: the accuracy budget in points (default 1).
    #[arg(long, allow_negative_numbers = true)]
    max_accuracy_drop: Option<f64>,
    #[arg(long)]
    pub train: PathBuf,
    #[arg(long)]
    pub val: PathBuf,
    #[arg(long, default_value_t = DistillSettings::default().temperature)]
    temperature: f64,
    /// Weight of the distillation term (1 − α goes to cross-entropy with the labels).
    #[arg(long, default_value_t = DistillSettings::default().alpha)]
    alpha: f64,
    /// Feature hints TEACHER_NODE=STUDENT_NODE.
    #[arg(long, num_args = 1..)]
    hint: Vec<String>,
    #[arg(long, default_value_t = DistillSettings::default().hint_weight)]
    pub hint_weight: f64,
    /// Epochs (`auto`: from the data).
    #[arg(long, default_value_t = DistillSettings::default().epochs)]
    pub epochs: Epochs,
    #[arg(long, default_value_t = DistillSettings::default().batch_size)]
    pub batch_size: usize,
    /// sgd (Nesterov momentum 0.9) or adamw.
    #[arg(long, default_value_t = DistillSettings::default().optimizer)]
    optimizer: OptimizerKind,
    /// Base learning rate (`auto`: a range test).
    #[arg(long, default_value_t = DistillSettings::default().lr)]
    pub lr: LearningRate,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub test: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
    /// Text encoders (a model directory): the student's number of layers.
    #[arg(long)]
    pub layers: Option<usize>,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    if wick::hf::is_model_dir(&a.teacher) {
        return super::distill_text::run(&a);
    }
    if a.layers.is_some() {
        anyhow::bail!(wick::WickError::invalid("--layers", "applies to text encoders (a model directory as --teacher)"));
    }
    let teacher = load_float(&a.teacher, a.arch.as_deref())?;
    let settings = DistillSettings {
        width: a.width.unwrap_or(DistillSettings::default().width),
        widen: a.widen,
        epochs: a.epochs,
        optimizer: a.optimizer,
        lr: a.lr,
        temperature: a.temperature,
        alpha: a.alpha,
        hints: a.hint.clone(),
        hint_weight: a.hint_weight,
        batch_size: a.batch_size,
    };
    settings.validate().map_err(|e| super::as_flags(&e))?;
    let train = read_data(&a.train, &teacher)?;
    let val = read_data(&a.val, &teacher)?;
    let progress = CliProgress::new(a.quiet);
    let ctx = Ctx::new(&teacher, Data { train: &train, val: &val, calib: &train }, a.seed, None, super::points_allowance(a.max_accuracy_drop)?, &progress)?;
    let (student, rep) = match (&a.student, a.width) {
        (Some(p), None) => {
            let mut student = match p.to_string_lossy().ends_with(".json") {
                true => wick::model::init::init_model(wick::model::load::read_arch(p)?, a.seed)?,
                false => load_float(p, None)?,
            };
            let tc = train_config(settings.epochs, settings.lr, settings.optimizer, settings.batch_size, AUTO_STEPS, &ctx);
            let rep = distill(&teacher, &mut student, &train, &val, &tc, &settings.config()?, &progress)?;
            (student, serde_json::to_value(rep)?)
        }
        (None, Some(_)) => {
            let applied = settings.apply(State::Float(teacher.deep_clone()?), &ctx)?;
            let State::Float(student) = applied.state else { unreachable!("distill gives a float model") };
            (student, applied.details)
        }
        _ => anyhow::bail!("give exactly one of --student FILE or --width F"),
    };
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "provenance".to_string(),
        json!({"teacher": a.teacher.display().to_string(), "teacher_sha256": wick::provenance::model_sha256(&a.teacher)?,
        "tool": wick::provenance::tool_version(), "pass": "distill", "settings": &settings}),
    );
    wick::model::load::save_model(&student, &a.out, extra)?;
    let test = a.test.as_ref().map(|p| read_data(p, &teacher)).transpose()?;
    let accs = match &test {
        Some(t) => Some((evaluate(&teacher, t, 256, &Silent)?.accuracy, evaluate(&student, t, 256, &Silent)?.accuracy)),
        None => None,
    };
    let (tp, sp) = (total_params(&teacher), total_params(&student));
    if a.json {
        println!("{}", json!({"teacher_params": tp, "student_params": sp, "teacher_test_accuracy": accs.map(|x| x.0), "student_test_accuracy": accs.map(|x| x.1), "training": rep}));
    } else {
        println!("teacher {tp} params; student {sp} params ({:.1}%)", 100.0 * sp as f64 / tp as f64);
        let last = rep.get("attempts").and_then(|v| v.as_array()).and_then(|v| v.last()).map(|a| &a["training"]).unwrap_or(&rep);
        println!("best val accuracy {:.4} at epoch {} of {}", last["best_val_accuracy"].as_f64().unwrap_or(f64::NAN), last["best_epoch"], last["epochs_run"]);
        if let Some((t, s)) = accs {
            println!("test accuracy: teacher {t:.4}, student {s:.4}");
        }
        println!("wrote {}", a.out.display());
    }
    Ok(Outcome::Ok)
}
