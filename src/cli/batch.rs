//! `wick batch MANIFEST.json [--jobs N] [--force]`: many compression jobs, concurrently and
//! isolated: a failing job is reported and the others go on. Exit 1 when a job failed its gate,
//! 2 when a job errored. A job whose folder already holds a report of the same inputs, recipe
//! and seed is skipped unless `--force`, so an interrupted batch resumes.

use super::Outcome;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;
use wick::job::{self, JobSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Manifest: {"jobs": [{"name", "model", "recipe", "train", "val", "test", "out", ...}]}.
    manifest: PathBuf,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Rerun jobs whose reports are up to date.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    job: String,
    verdict: String,
    accuracy_drop_points: Option<f64>,
    size_ratio: Option<f64>,
    seconds: f64,
    error: Option<String>,
}

/// A job whose report is up to date: its gate is judged again from the stored numbers, since
/// the manifest's threshold may have changed.
fn skipped(name: &str, spec: &JobSpec) -> Row {
    let old: serde_json::Value = std::fs::read_to_string(spec.out.join(job::REPORT_JSON)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let dp = old["accuracy_drop_points"].as_f64().unwrap_or(f64::INFINITY);
    let dr = old["accuracy_drop_relative"].as_f64().unwrap_or(f64::INFINITY);
    let g = wick::report::gate(dp, dr, spec.max_accuracy_drop, spec.max_relative_drop);
    Row {
        job: name.to_string(),
        verdict: if g.passed { "passed (up to date)".into() } else { "gate failed (up to date)".into() },
        accuracy_drop_points: Some(dp),
        size_ratio: old["ratios"]["size"].as_f64(),
        seconds: 0.0,
        error: if g.passed { None } else { Some(g.reason) },
    }
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let jobs = job::manifest::read(&a.manifest)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.jobs.max(1)).build()?;
    let rows: Vec<Row> = pool.install(|| {
        jobs.par_iter()
            .map(|j| {
                let started = Instant::now();
                if !a.force && job::already_done(&j.spec) {
                    return skipped(&j.name, &j.spec);
                }
                // A panic in one job must not take the others down.
                let r = std::panic::catch_unwind(|| job::run(&j.spec, &wick::progress::Silent));
                let seconds = started.elapsed().as_secs_f64();
                let row = match r {
                    Ok(Ok(rep)) => Row {
                        job: j.name.clone(),
                        verdict: if rep.gate.passed { "passed".into() } else { "gate failed".into() },
                        accuracy_drop_points: Some(rep.accuracy_drop_points),
                        size_ratio: Some(rep.ratios.size),
                        seconds,
                        error: if rep.gate.passed { None } else { Some(rep.gate.reason) },
                    },
                    Ok(Err(e)) => Row { job: j.name.clone(), verdict: "error".into(), accuracy_drop_points: None, size_ratio: None, seconds, error: Some(e.to_string()) },
                    Err(_) => Row { job: j.name.clone(), verdict: "error".into(), accuracy_drop_points: None, size_ratio: None, seconds, error: Some("internal error (panic)".into()) },
                };
                eprintln!("job {}: {}", row.job, row.verdict);
                row
            })
            .collect()
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<20} {:<22} {:>12} {:>10} {:>9}", "job", "verdict", "drop (pts)", "size", "seconds");
        for r in &rows {
            let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
            println!("{:<20} {:<22} {:>12} {:>10} {:>9.1}", r.job, r.verdict, f(r.accuracy_drop_points, 2), f(r.size_ratio, 3), r.seconds);
            if let Some(e) = &r.error {
                println!("    {e}");
            }
        }
    }
    if rows.iter().any(|r| r.verdict == "error") {
        anyhow::bail!("{} of {} jobs errored", rows.iter().filter(|r| r.verdict == "error").count(), rows.len());
    }
    if rows.iter().any(|r| r.verdict.starts_with("gate failed")) {
        return Ok(Outcome::GateFailed);
    }
    Ok(Outcome::Ok)
}
