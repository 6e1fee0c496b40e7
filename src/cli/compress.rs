//! `wick compress MODEL --recipe NAME|FILE --train --val --test --out DIR`: the whole pipeline,
//! an INT8 artifact and its report, with an accuracy gate for CI (exit 1 when missed).

use super::progress::CliProgress;
use super::Outcome;
use std::path::PathBuf;
use wick::job::{self, JobSpec};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    /// Recipe: a name in passes/ (ptq-int8, qat-int8, distill-int8, edge-int8) or a JSON file.
    #[arg(long)]
    recipe: String,
    #[arg(long)]
    train: PathBuf,
    #[arg(long)]
    val: PathBuf,
    #[arg(long)]
    test: PathBuf,
    /// Calibration data (default: the training set).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Output folder: model.int8.safetensors, report.json, report.md, accuracy_vs_size.svg.
    #[arg(long)]
    out: PathBuf,
    /// Gate: fail (exit 1) when test accuracy drops more than this many points.
    #[arg(long, conflicts_with = "max_relative_drop", allow_negative_numbers = true)]
    max_accuracy_drop: Option<f64>,
    /// Gate: fail (exit 1) when test accuracy drops more than this fraction of the teacher's.
    #[arg(long, allow_negative_numbers = true)]
    max_relative_drop: Option<f64>,
    /// Measure, per quantised layer, the accuracy lost when only it is quantised.
    #[arg(long)]
    sensitivity: bool,
    /// Keep the most sensitive layers in float, one at a time, until the gate passes.
    #[arg(long)]
    fallback: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cap every pass's epochs (quick runs).
    #[arg(long)]
    max_epochs: Option<usize>,
    /// Print each pass's plan and the expected size; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    quiet: bool,
    /// Print the report's JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Text encoders: fail (exit 1) when the compressed model's mean cosine to the teacher's
    /// embeddings on --test is below this.
    #[arg(long, allow_negative_numbers = true)]
    min_cosine: Option<f64>,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let spec = JobSpec {
        model: a.m.model,
        arch: a.m.arch,
        recipe: a.recipe,
        train: a.train,
        val: a.val,
        test: a.test,
        calib: a.calib,
        out: a.out,
        max_accuracy_drop: a.max_accuracy_drop,
        max_relative_drop: a.max_relative_drop,
        seed: a.seed,
        max_epochs: a.max_epochs,
        sensitivity: a.sensitivity,
        fallback: a.fallback,
    };
    let progress = CliProgress::new(a.quiet || a.json);
    if wick::hf::is_model_dir(&spec.model) {
        return run_text(&spec, a.min_cosine, a.dry_run, a.quiet, a.json, &progress);
    }
    if a.min_cosine.is_some() {
        anyhow::bail!(wick::WickError::invalid("--min-cosine", "applies to text encoders (a model directory)"));
    }
    if a.dry_run {
        return dry_run(&spec);
    }
    let r = job::run(&spec, &progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if !a.quiet {
        println!("recipe {}: teacher {:.4} -> int8 {:.4} (drop {:.2} points, agreement {:.4})", r.recipe_name, r.teacher.accuracy, r.compressed.accuracy, r.accuracy_drop_points, r.agreement);
        println!(
            "size {} -> {} bytes ({:.1}x smaller); params {:.1}%, MACs {:.1}%",
            r.teacher.bytes_on_disk,
            r.compressed.bytes_on_disk,
            1.0 / r.ratios.size,
            100.0 * r.ratios.params,
            100.0 * r.ratios.macs
        );
        println!(
            "latency batch 1: {:.3} -> {:.3} ms ({:.1}x); batch {}: {:.3} -> {:.3} ms ({:.1}x)",
            r.teacher.latency.batch1_ms,
            r.compressed.latency.batch1_ms,
            r.ratios.latency_batch1_speedup,
            r.teacher.latency.large_batch,
            r.teacher.latency.large_batch_ms,
            r.compressed.latency.large_batch_ms,
            r.ratios.latency_large_batch_speedup
        );
        println!("gate: {} ({})", if r.gate.passed { "passed" } else { "FAILED" }, r.gate.reason);
        println!("wrote {}/{{{}, {}, {}, {}}}", spec.out.display(), job::ARTIFACT, job::REPORT_JSON, job::REPORT_MD, job::CHART);
    }
    if !r.gate.passed {
        eprintln!("error: accuracy gate failed: {}", r.gate.reason);
        return Ok(Outcome::GateFailed);
    }
    Ok(Outcome::Ok)
}

/// A text encoder's job (`job::text`).
fn run_text(spec: &JobSpec, min_cosine: Option<f64>, dry_run: bool, quiet: bool, json: bool, progress: &CliProgress) -> anyhow::Result<Outcome> {
    let path = wick::recipe::resolve(&spec.recipe)?;
    let recipe = wick::recipe::read(&path)?;
    if dry_run {
        anyhow::bail!(wick::WickError::invalid("--dry-run", "is not built for text encoders yet"));
    }
    let r = job::text::run(spec, &recipe, &path, min_cosine, progress)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if !quiet {
        let (t, c, f) = (&r.teacher, &r.compressed, &r.fidelity);
        println!("recipe {}: cosine to the teacher mean {:.6}, min {:.6}; nearest-neighbour agreement {:.4} ({} sentences)", r.recipe_name, f.cosine_mean, f.cosine_min, f.nn_agreement, f.sentences);
        println!("size {} -> {} bytes ({:.1}x smaller); {} -> {} layers", t.bytes_on_disk, c.bytes_on_disk, 1.0 / r.size_ratio, t.layers, c.layers);
        println!(
            "latency batch 1: {:.2} -> {:.2} ms per sentence; batch 32: {:.1} -> {:.1} ms per batch",
            t.batch1_ms_per_sentence, c.batch1_ms_per_sentence, t.batch32_ms_per_batch, c.batch32_ms_per_batch
        );
        println!("gate: {} ({})", if r.gate.passed { "passed" } else { "FAILED" }, r.gate.reason);
        println!("wrote {}/{{{}, {}, {}}}", spec.out.display(), job::ARTIFACT, job::REPORT_JSON, job::REPORT_MD);
    }
    if !r.gate.passed {
        eprintln!("error: fidelity gate failed: {}", r.gate.reason);
        return Ok(Outcome::GateFailed);
    }
    Ok(Outcome::Ok)
}

fn dry_run(spec: &JobSpec) -> anyhow::Result<Outcome> {
    let recipe = wick::recipe::read(&wick::recipe::resolve(&spec.recipe)?)?;
    let teacher = wick::model::load::load_model(&spec.model, spec.arch.as_deref())?.model;
    let read = |p: &std::path::Path| wick::data::Dataset::read_fitting(p, teacher.input_shape(), teacher.num_classes());
    let (train, val) = (read(&spec.train)?, read(&spec.val)?);
    let data = wick::passes::Data { train: &train, val: &val, calib: &train };
    let ctx = wick::passes::Ctx::new(&teacher, data, spec.seed, spec.max_epochs, spec.allowance()?, &wick::progress::Silent)?;
    let rows = wick::pipeline::plan(&recipe, &ctx)?;
    println!("recipe {} ({}): dry run, nothing written", recipe.name, recipe.description);
    println!("teacher: {} params, {} bytes of weights", wick::model::stats::total_params(&teacher), 4 * teacher.params.values().map(|v| v.as_tensor().elem_count()).sum::<usize>());
    for (i, (pass, what, params, bytes)) in rows.iter().enumerate() {
        println!("{:>2}. {pass:<15} {what}\n    -> {params} params, ~{bytes} bytes of weights", i + 1);
    }
    Ok(Outcome::Ok)
}
