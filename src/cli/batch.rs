//! `wick batch MANIFEST.json [--jobs N] [--force]`: many compression jobs, concurrently and
//! isolated: a failing job is reported and the others go on. Exit 1 when a job failed its gate,
//! 2 when a job errored. A job whose folder already holds a report of the same inputs, recipe
//! and seed is skipped unless `--force`, so an interrupted batch resumes.

use super::Outcome;
use rayon::prelude::*;
use serde::Deserialize;
use std::path::{Path, PathBuf};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    jobs: Vec<NamedJob>,
}

/// A job: its `name` and the fields of `compress` (`JobSpec`, which denies unknown fields: a
/// flattened struct would ignore a misspelled one).
struct NamedJob {
    name: String,
    spec: JobSpec,
}

impl<'de> Deserialize<'de> for NamedJob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let serde_json::Value::Object(mut m) = serde_json::Value::deserialize(d)? else { return Err(serde::de::Error::custom("a job must be a JSON object")) };
        let name = match m.remove("name") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(serde::de::Error::custom("a job lacks a string field 'name'")),
        };
        let spec = serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| serde::de::Error::custom(format!("job '{name}': {e}")))?;
        Ok(NamedJob { name, spec })
    }
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

/// Paths in a manifest are relative to the manifest's folder.
fn rebase(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
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
    let text = std::fs::read_to_string(&a.manifest).map_err(|e| anyhow::anyhow!("{}: {e}", a.manifest.display()))?;
    let mut m: Manifest = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("manifest {}: {e}", a.manifest.display()))?;
    let base = a.manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    for j in &mut m.jobs {
        let s = &mut j.spec;
        for p in [&mut s.model, &mut s.train, &mut s.val, &mut s.test, &mut s.out] {
            rebase(&base, p);
        }
        for p in [&mut s.arch, &mut s.calib].into_iter().flatten() {
            rebase(&base, p);
        }
        if !Path::new(&s.recipe).is_absolute() && base.join(&s.recipe).is_file() {
            s.recipe = base.join(&s.recipe).display().to_string();
        }
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.jobs.max(1)).build()?;
    let rows: Vec<Row> = pool.install(|| {
        m.jobs
            .par_iter()
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
