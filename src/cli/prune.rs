//! `wick prune MODEL --ratio R --out OUT`: structured channel pruning with optional recovery.

use super::progress::CliProgress;
use super::quant_common::{load_float, read_data};
use super::Outcome;
use serde_json::json;
use std::path::PathBuf;
use wick::eval::evaluate;
use wick::model::load::save_model;
use wick::model::stats::{total_macs, total_params};
use wick::passes::prune_channels::{importance::Criterion, layer_table, plan, prune_with_recovery, PruneConfig, Recovery};
use wick::progress::Silent;
use wick::train::{OptimizerKind, TrainConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    /// Fraction of channels to remove, in [0, 1).
    #[arg(long)]
    ratio: f64,
    #[arg(long, default_value = "l1")]
    criterion: Criterion,
    /// Rank channels across the whole network instead of per group.
    #[arg(long)]
    global: bool,
    #[arg(long, default_value_t = 1)]
    round_to: usize,
    #[arg(long, default_value_t = 0)]
    min_channels: usize,
    /// Layers whose output channels are kept.
    #[arg(long, num_args = 1..)]
    ignore: Vec<String>,
    /// Prune in K steps, fine-tuning between them.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    #[arg(long)]
    train: Option<PathBuf>,
    #[arg(long)]
    val: Option<PathBuf>,
    /// Fine-tuning epochs in all (shared out over the steps).
    #[arg(long, default_value_t = 0)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Fine-tune by distilling from the unpruned model.
    #[arg(long)]
    distill: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    test: Option<PathBuf>,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let model = load_float(&a.m.model, a.m.arch.as_deref())?;
    let cfg = PruneConfig { ratio: a.ratio, criterion: a.criterion, global: a.global, round_to: a.round_to, min_channels: a.min_channels, ignore: a.ignore.clone(), seed: a.seed };
    let progress = CliProgress::new(a.quiet);
    let train = a.train.as_ref().map(|p| read_data(p, &model)).transpose()?;
    let val = a.val.as_ref().map(|p| read_data(p, &model)).transpose()?;
    if a.epochs > 0 && (train.is_none() || val.is_none()) {
        anyhow::bail!("--epochs needs --train and --val");
    }
    if a.out.is_none() && !a.dry_run {
        anyhow::bail!("--out is required (or use --dry-run)");
    }
    let (pruned, steps) = if a.dry_run {
        let p = plan(&model, &PruneConfig { ratio: wick::passes::prune_channels::step_ratio(a.ratio, a.steps), ..cfg.clone() }, train.as_ref())?;
        let m = wick::passes::prune_channels::apply(&model, &p)?;
        (m, vec![p.groups])
    } else {
        let recovery = match (&train, &val) {
            (Some(t), Some(v)) if a.epochs > 0 => Some(Recovery {
                train: t,
                val: v,
                train_cfg: TrainConfig {
                    epochs: a.epochs,
                    batch_size: a.batch_size,
                    lr: a.lr,
                    optimizer: OptimizerKind::Adamw,
                    weight_decay: 1e-4,
                    momentum: 0.9,
                    warmup_epochs: 0.0,
                    seed: a.seed,
                    patience: None,
                },
                distill: a.distill,
            }),
            _ => None,
        };
        let (m, r) = prune_with_recovery(&model, &cfg, a.steps, recovery.as_ref(), &progress)?;
        (m, r.steps)
    };
    let (p0, p1, m0, m1) = (total_params(&model), total_params(&pruned), total_macs(&model), total_macs(&pruned));
    let test = a.test.as_ref().map(|p| read_data(p, &model)).transpose()?;
    let acc = match &test {
        Some(t) => Some((evaluate(&model, t, 256, &Silent)?.accuracy, evaluate(&pruned, t, 256, &Silent)?.accuracy)),
        None => None,
    };
    let layers = layer_table(&model, &pruned);
    if !a.dry_run {
        let out = a.out.as_ref().unwrap();
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("provenance".to_string(), json!({"teacher": a.m.model.display().to_string(), "teacher_sha256": wick::provenance::file_sha256(&a.m.model)?, "tool": wick::provenance::tool_version(), "pass": "prune_channels", "settings": &cfg, "steps": a.steps}));
        save_model(&pruned, out, extra)?;
    }
    let summary = json!({
        "params_before": p0, "params_after": p1, "params_ratio": p1 as f64 / p0 as f64,
        "macs_before": m0, "macs_after": m1, "macs_ratio": m1 as f64 / m0.max(1) as f64,
        "test_accuracy_before": acc.map(|x| x.0), "test_accuracy_after": acc.map(|x| x.1),
        "groups": steps, "layers": layers, "dry_run": a.dry_run,
    });
    if a.json {
        println!("{summary}");
        return Ok(Outcome::Ok);
    }
    println!("{:<28} {:>18} {:>20} {:>22}", "layer", "output", "params", "MACs");
    for l in &layers {
        let sh = |v: &serde_json::Value| v.as_array().map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x")).unwrap_or_default();
        println!(
            "{:<28} {:>18} {:>20} {:>22}",
            l["layer"].as_str().unwrap_or(""),
            format!("{}->{}", sh(&l["shape_before"]), sh(&l["shape_after"])),
            format!("{}->{}", l["params_before"], l["params_after"]),
            format!("{}->{}", l["macs_before"], l["macs_after"])
        );
    }
    println!("total params {p0} -> {p1} ({:.1}%), MACs {m0} -> {m1} ({:.1}%)", 100.0 * p1 as f64 / p0 as f64, 100.0 * m1 as f64 / m0.max(1) as f64);
    if let Some((b, c)) = acc {
        println!("test accuracy {b:.4} -> {c:.4}");
    }
    match (&a.out, a.dry_run) {
        (_, true) => println!("dry run: nothing written"),
        (Some(o), false) => println!("wrote {}", o.display()),
        _ => {}
    }
    Ok(Outcome::Ok)
}
