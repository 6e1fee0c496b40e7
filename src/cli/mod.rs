//! The command line: one file per subcommand. Only this module and `main.rs` know clap,
//! indicatif and anyhow.

mod batch;
mod bench;
mod compress;
mod distill;
mod distill_text;
mod eval;
mod export;
mod import;
mod inspect;
pub mod progress;
mod prune;
mod qat;
mod quant_common;
mod quantize;
mod quantize_text;

use clap::{Parser, Subcommand};

/// wick: compress trained neural networks (pruning, distillation, INT8 quantisation).
#[derive(Parser)]
#[command(name = "wick", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for tensor kernels and integer execution (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show every node: op, output shape, parameters, MACs per sample, bytes.
    Inspect(inspect::Args),
    /// Top-1 accuracy and cross-entropy of a model on a data set.
    Eval(eval::Args),
    /// Post-training INT8 quantisation with calibration.
    Quantize(quantize::Args),
    /// Quantisation-aware training, then conversion to INT8.
    Qat(qat::Args),
    /// Structured channel pruning: a physically smaller model.
    Prune(prune::Args),
    /// Knowledge distillation into a smaller student.
    Distill(distill::Args),
    /// Teacher to INT8 edge artifact in one command: recipe, report, accuracy gate.
    Compress(compress::Args),
    /// Many compression jobs from a manifest.
    Batch(batch::Args),
    /// Speed of float and INT8 inference and of training, as ratios measured in one run.
    Bench(bench::Args),
    /// An ONNX model as a wick model file (float, or INT8 from a QDQ graph).
    Import(import::Args),
    /// A wick model as ONNX: a float graph, or a QDQ graph for an INT8 artifact.
    Export(export::Args),
}

/// The model a command reads: a safetensors file and, optionally, its architecture, or an
/// ONNX file.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model file: wick safetensors (a float model, or for `eval`, `export` and `inspect` also an INT8
    /// artifact) or ONNX (`.onnx`).
    pub model: std::path::PathBuf,
    /// Architecture JSON (else the file's metadata or a sidecar `<stem>.arch.json`).
    #[arg(long)]
    pub arch: Option<std::path::PathBuf>,
}

/// How a run ended, for the exit code: 0 success, 1 accuracy gate failed, 2 error.
pub enum Outcome {
    Ok,
    GateFailed,
}

/// Runs the parsed command on one of the pool's threads (see [`set_threads`]).
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let threads = set_threads(cli.threads)?;
    rayon::scope(|_| dispatch(cli.command, threads))
}

fn dispatch(command: Command, threads: usize) -> anyhow::Result<Outcome> {
    match command {
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Qat(a) => qat::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Distill(a) => distill::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Bench(a) => bench::run(a, threads),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
    }
}

/// Fixes the number of worker threads: rayon's global pool (wick's float and integer kernels,
/// the GEMMs, batch jobs) and candle's CPU kernels, which read `RAYON_NUM_THREADS`; candle's
/// elementwise pool is kept to the calling thread. Returns the number in force.
///
/// The command then runs on a thread of that pool (`run`), so that each parallel step (a
/// conv's parts, a batch's parts) runs on the calling thread plus the others, instead of being
/// handed from an outside thread to the pool and waited for: that hand-off would put the caller
/// to sleep and wake it again at every step.
fn set_threads(n: Option<usize>) -> anyhow::Result<usize> {
    let n = match n {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) if n > MAX_THREADS => anyhow::bail!("--threads {n} is more than {MAX_THREADS}"),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    // Safe here: called once at start-up, before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    // candle's elementwise kernels run on a pool of their own whose workers spin after every
    // job; next to rayon's workers (which run wick's GEMMs and kernels) they only compete for
    // the cores. A CANDLE_NUM_THREADS already set wins.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    // The main thread's stack size, since the commands now run on a pool thread.
    rayon::ThreadPoolBuilder::new().num_threads(n).stack_size(8 << 20).build_global()?;
    Ok(n)
}

/// A settings check's message as the CLI says it: `field 'max_ratio'` becomes `--max-ratio`.
pub fn as_flags(msg: &str) -> anyhow::Error {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(i) = rest.find("field '") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "field '".len()..];
        let end = after.find('\'').unwrap_or(after.len());
        out.push_str("--");
        out.push_str(&after[..end].replace('_', "-"));
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    anyhow::anyhow!(out)
}

/// `--max-accuracy-drop`, checked: points in [0, 100].
pub fn points_allowance(points: Option<f64>) -> anyhow::Result<Option<wick::passes::Allowance>> {
    match points {
        Some(p) if !(0.0..=100.0).contains(&p) => anyhow::bail!("--max-accuracy-drop: {p} is not a number of points in [0, 100]"),
        p => Ok(p.map(wick::passes::Allowance::Points)),
    }
}

/// The most worker threads `--threads` may ask for: far more than any machine wick runs on has
/// cores, and few enough that starting them cannot exhaust the system.
const MAX_THREADS: usize = 1024;

/// Prints load warnings to stderr.
pub fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
