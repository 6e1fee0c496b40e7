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
    if a.dry_run {
        return dry_run(&spec);
    }
    let progress = CliProgress::new(a.quiet || a.json);
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
