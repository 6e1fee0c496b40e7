//! The command line: one file per subcommand. Only this module and `main.rs` know clap,
//! indicatif and anyhow.

mod batch;
mod compress;
mod distill;
mod eval;
mod inspect;
pub mod progress;
mod prune;
mod qat;
mod quant_common;
mod quantize;

use clap::{Parser, Subcommand};

/// wick: compress trained neural networks (pruning, distillation, INT8 quantisation).
#[derive(Parser)]
#[command(name = "wick", version, about, long_about = None)]
pub struct Cli {
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
}

/// How a run ended, for the exit code: 0 success, 1 accuracy gate failed, 2 error.
pub enum Outcome {
    Ok,
    GateFailed,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Qat(a) => qat::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Distill(a) => distill::run(a),
        Command::Compress(a) => compress::run(a),
        Command::Batch(a) => batch::run(a),
    }
}

/// Prints load warnings to stderr.
pub fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
