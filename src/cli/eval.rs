//! `wick eval MODEL --data FILE`: top-1 accuracy, mean cross-entropy and the sample count. An
//! INT8 artifact runs with integer arithmetic, or as its fake-quant float simulation with
//! `--simulate`; a float model on the compiled float runtime. `--reference` runs the oracle.

use super::progress::CliProgress;
use super::Outcome;
use std::path::PathBuf;
use wick::artifact::{load_any, AnyModel};
use wick::data::Dataset;
use wick::eval::{evaluate, evaluate_int8, evaluate_reference};
use wick::runtime::{kernels::Kernel, Exec};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    /// Data set (safetensors with `x` and `y`).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// INT8 artifacts: evaluate the fake-quant float simulation instead of integer execution.
    #[arg(long)]
    simulate: bool,
    /// Run the reference executor (slow; the oracle): the scalar integer kernels for an INT8
    /// artifact, candle's executor for a float model.
    #[arg(long)]
    reference: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let (model, warnings) = load_any(&a.m.model, a.m.arch.as_deref())?;
    super::warn_all(&warnings);
    let data = Dataset::read(&a.data)?;
    let progress = CliProgress::new(a.quiet);
    let (r, how) = match &model {
        AnyModel::Float(m) => {
            if a.simulate {
                anyhow::bail!("--simulate applies to INT8 artifacts; {} is a float model", a.m.model.display());
            }
            match a.reference {
                true => (evaluate_reference(m, &data, a.batch_size, &progress)?, "float32 (candle executor)"),
                false => (evaluate(m, &data, a.batch_size, &progress)?, "float32"),
            }
        }
        AnyModel::Int8(q) => {
            let exec = match (a.simulate, a.reference) {
                (true, _) => Exec::Simulate,
                (false, true) => Exec::Integer(Kernel::Reference),
                (false, false) => Exec::Integer(Kernel::Fast),
            };
            let how = if a.simulate { "int8 simulated (fake-quant float)" } else { "int8 integer execution" };
            (evaluate_int8(q, &data, a.batch_size, exec, &progress)?, how)
        }
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["execution"] = how.into();
        println!("{v}");
    } else {
        println!("accuracy {:.4} ({}/{})  loss {:.4}  [{how}]", r.accuracy, r.correct, r.samples, r.loss);
    }
    Ok(Outcome::Ok)
}
