//! `wick prune MODEL --ratio R --out OUT`: structured channel pruning with optional recovery.

use super::progress::CliProgress;
use super::quant_common::{load_float, read_data};
use super::Outcome;
use serde_json::json;
use std::path::PathBuf;
use wick::eval::evaluate;
use wick::model::load::save_model;
use wick::model::stats::{total_macs, total_params};
use wick::passes::prune_channels::{importance::Criterion, layer_table, plan, step_ratio, PruneSettings, Ratio};
use wick::passes::{Ctx, Data, Pass, Sketch, State};
use wick::progress::Silent;
use wick::train::{Epochs, LearningRate, OptimizerKind};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    /// Fraction of channels to remove, in [0, 1), or `auto`: as much as --max-accuracy-drop
    /// allows on the validation split (needs --train and --val).
    #[arg(long, default_value_t = PruneSettings::default().ratio)]
    ratio: Ratio,
    /// `--ratio auto`: the most it may remove.
    #[arg(long, default_value_t = PruneSettings::default().max_ratio)]
    max_ratio: f64,
    /// `--ratio auto`: the fraction of the remaining channels each search step removes.
    #[arg(long, default_value_t = PruneSettings::default().search_step)]
    search_step: f64,
    /// `--ratio auto`: accuracy points the search may spend (half of them on validation).
    #[arg(long, allow_negative_numbers = true)]
    max_accuracy_drop: Option<f64>,
    #[arg(long, default_value_t = PruneSettings::default().criterion)]
    criterion: Criterion,
    /// Rank channels across the whole network instead of per group.
    #[arg(long)]
    global: bool,
    #[arg(long, default_value_t = PruneSettings::default().round_to)]
    round_to: usize,
    #[arg(long, default_value_t = PruneSettings::default().min_channels)]
    min_channels: usize,
    /// Layers whose output channels are kept.
    #[arg(long, num_args = 1..)]
    ignore: Vec<String>,
    /// Prune whole attention heads as well (each head's q, k and v features, and the output
    /// projection's columns that read them).
    #[arg(long)]
    heads: bool,
    /// Prune in K steps, recovering after each.
    #[arg(long, default_value_t = PruneSettings::default().steps)]
    steps: usize,
    #[arg(long)]
    train: Option<PathBuf>,
    #[arg(long)]
    val: Option<PathBuf>,
    /// Recovery epochs after each pruning step (`auto`: from the data; 0: none).
    #[arg(long, default_value_t = PruneSettings::default().epochs)]
    epochs: Epochs,
    /// Recovery learning rate (`auto`: a range test).
    #[arg(long, default_value_t = PruneSettings::default().lr)]
    lr: LearningRate,
    #[arg(long, default_value_t = PruneSettings::default().optimizer)]
    optimizer: OptimizerKind,
    #[arg(long, default_value_t = PruneSettings::default().batch_size)]
    batch_size: usize,
    /// Recover by distilling from the unpruned model (`--distill false`: labels alone).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = PruneSettings::default().distill)]
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
    wick::hf::refuse_for(&a.m.model, "prune")?;
    let model = load_float(&a.m.model, a.m.arch.as_deref())?;
    let settings = PruneSettings {
        ratio: a.ratio,
        max_ratio: a.max_ratio,
        search_step: a.search_step,
        criterion: a.criterion,
        global: a.global,
        round_to: a.round_to,
        min_channels: a.min_channels,
        ignore: a.ignore.clone(),
        heads: a.heads,
        steps: a.steps,
        epochs: a.epochs,
        lr: a.lr,
        optimizer: a.optimizer,
        batch_size: a.batch_size,
        distill: a.distill,
    };
    settings.validate().map_err(|e| super::as_flags(&e))?;
    let progress = CliProgress::new(a.quiet);
    let train = a.train.as_ref().map(|p| read_data(p, &model)).transpose()?;
    let val = a.val.as_ref().map(|p| read_data(p, &model)).transpose()?;
    if a.out.is_none() && !a.dry_run {
        anyhow::bail!("--out is required (or use --dry-run)");
    }
    let (pruned, details) = match (&train, &val) {
        (Some(train), Some(val)) => {
            let ctx = Ctx::new(&model, Data { train, val, calib: train }, a.seed, None, super::points_allowance(a.max_accuracy_drop)?, &progress)?;
            if a.dry_run {
                let (sketch, what) = settings.plan(Sketch { model: model.deep_clone()?, quantized: false }, &ctx)?;
                (sketch.model, json!({ "plan": what }))
            } else {
                let applied = settings.apply(State::Float(model.deep_clone()?), &ctx)?;
                let State::Float(m) = applied.state else { unreachable!("prune_channels gives a float model") };
                (m, json!({ "summary": applied.summary, "details": applied.details }))
            }
        }
        (None, None) => {
            let Ratio::Fixed(ratio) = a.ratio else { anyhow::bail!("--ratio auto needs --train and --val (it measures validation accuracy)") };
            if a.epochs != Epochs::Fixed(0) && a.epochs != Epochs::Auto {
                anyhow::bail!("--epochs needs --train and --val");
            }
            let p = plan(&model, &settings.config(step_ratio(ratio, a.steps), a.seed), None)?;
            (wick::passes::prune_channels::apply(&model, &p)?, json!({ "groups": p.groups }))
        }
        _ => anyhow::bail!("give both --train and --val, or neither"),
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
        extra.insert("provenance".to_string(), json!({"teacher": a.m.model.display().to_string(), "teacher_sha256": wick::provenance::model_sha256(&a.m.model)?, "tool": wick::provenance::tool_version(), "pass": "prune_channels", "settings": &settings}));
        save_model(&pruned, out, extra)?;
    }
    let summary = json!({
        "params_before": p0, "params_after": p1, "params_ratio": p1 as f64 / p0 as f64,
        "macs_before": m0, "macs_after": m1, "macs_ratio": m1 as f64 / m0.max(1) as f64,
        "test_accuracy_before": acc.map(|x| x.0), "test_accuracy_after": acc.map(|x| x.1),
        "pruning": details, "layers": layers, "dry_run": a.dry_run,
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
