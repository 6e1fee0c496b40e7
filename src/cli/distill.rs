//! `wick distill --teacher MODEL (--student ARCH.json | --student MODEL.safetensors | --width F)
//! --train FILE --val FILE --out OUT`: knowledge distillation into a smaller student.

use super::progress::CliProgress;
use super::quant_common::{load_float, read_data};
use super::Outcome;
use serde_json::json;
use std::path::PathBuf;
use wick::eval::evaluate;
use wick::model::stats::total_params;
use wick::progress::Silent;
use wick::train::distill::{distill, DistillConfig, Hint};
use wick::train::{OptimizerKind, TrainConfig};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    teacher: PathBuf,
    #[arg(long)]
    arch: Option<PathBuf>,
    /// Student: an architecture JSON (randomly initialised from --seed) or a model file.
    #[arg(long, conflicts_with = "width")]
    student: Option<PathBuf>,
    /// Student: the teacher's architecture with every prunable channel group scaled by F,
    /// initialised from the teacher's most important (L1) channels.
    #[arg(long)]
    width: Option<f64>,
    #[arg(long)]
    train: PathBuf,
    #[arg(long)]
    val: PathBuf,
    #[arg(long, default_value_t = 4.0)]
    temperature: f64,
    /// Weight of the distillation term (1 − α goes to cross-entropy with the labels).
    #[arg(long, default_value_t = 0.9)]
    alpha: f64,
    /// Feature hints TEACHER_NODE=STUDENT_NODE.
    #[arg(long, num_args = 1..)]
    hint: Vec<Hint>,
    #[arg(long, default_value_t = 1.0)]
    hint_weight: f64,
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// sgd (Nesterov momentum 0.9) or adamw.
    #[arg(long, default_value = "sgd")]
    optimizer: OptimizerKind,
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f64,
    /// Stop after this many epochs without a better validation accuracy.
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    test: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let teacher = load_float(&a.teacher, a.arch.as_deref())?;
    let student = match (&a.student, a.width) {
        (Some(p), None) if p.to_string_lossy().ends_with(".json") => wick::model::init::init_model(wick::model::load::read_arch(p)?, a.seed)?,
        (Some(p), None) => load_float(p, None)?.deep_clone()?,
        (None, Some(w)) => {
            if !(w > 0.0 && w <= 1.0) {
                anyhow::bail!("--width must lie in (0, 1], got {w}");
            }
            wick::passes::prune_channels::width_scaled(&teacher, w)?
        }
        _ => anyhow::bail!("give exactly one of --student FILE or --width F"),
    };
    let train = read_data(&a.train, &teacher)?;
    let val = read_data(&a.val, &teacher)?;
    let progress = CliProgress::new(a.quiet);
    let tc = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        optimizer: a.optimizer,
        weight_decay: a.weight_decay,
        momentum: 0.9,
        warmup_epochs: a.warmup_epochs,
        seed: a.seed,
        patience: a.patience,
    };
    let dc = DistillConfig { temperature: a.temperature, alpha: a.alpha, hints: a.hint.clone(), hint_weight: a.hint_weight };
    let rep = distill(&teacher, &student, &train, &val, &tc, &dc, &progress)?;
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "provenance".to_string(),
        json!({"teacher": a.teacher.display().to_string(), "teacher_sha256": wick::provenance::file_sha256(&a.teacher)?,
        "tool": wick::provenance::tool_version(), "pass": "distill", "train": &tc, "distill": &dc}),
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
        println!("best val accuracy {:.4} at epoch {} of {}", rep.best_val_accuracy, rep.best_epoch, rep.epochs_run);
        if let Some((t, s)) = accs {
            println!("test accuracy: teacher {t:.4}, student {s:.4}");
        }
        println!("wrote {}", a.out.display());
    }
    Ok(Outcome::Ok)
}
