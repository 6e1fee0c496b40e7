//! `wick bench MODEL --train FILE --test FILE [--threads N]`: speed of float and INT8 inference
//! and of a training epoch; with `--scaling`, the same at 1 and at N threads (separate
//! processes, since a thread pool is fixed once built) and the speed-ups.

use super::Outcome;
use std::path::PathBuf;
use wick::bench::{bench, BenchResult};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    #[arg(long)]
    train: PathBuf,
    #[arg(long)]
    test: PathBuf,
    /// Training epochs to time (median); 0 skips training.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Also run at 1 thread and report the speed-up of `--threads` over it.
    #[arg(long)]
    scaling: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, threads: usize) -> anyhow::Result<Outcome> {
    wick::hf::refuse_for(&a.m.model, "bench")?;
    let model = super::quant_common::load_float(&a.m.model, a.m.arch.as_deref())?;
    let train = super::quant_common::read_data(&a.train, &model)?;
    let test = super::quant_common::read_data(&a.test, &model)?;
    let name = a.m.model.display().to_string();
    let r = bench(&name, &model, &train, &test, threads, a.epochs)?;
    let one = if a.scaling && threads > 1 {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["--threads", "1", "bench"]).arg(&a.m.model).arg("--train").arg(&a.train).arg("--test").arg(&a.test).args(["--epochs", &a.epochs.to_string(), "--json"]);
        if let Some(arch) = &a.m.arch {
            cmd.arg("--arch").arg(arch);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            anyhow::bail!("the 1-thread run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Some(serde_json::from_value::<serde_json::Value>(v["runs"][0].clone())?)
    } else {
        None
    };
    if a.json {
        let mut runs = vec![serde_json::to_value(&r)?];
        if let Some(o) = &one {
            runs.push(o.clone());
        }
        println!("{}", serde_json::json!({ "runs": runs }));
        return Ok(Outcome::Ok);
    }
    print_table(&r, one.as_ref());
    Ok(Outcome::Ok)
}

fn print_table(r: &BenchResult, one: Option<&serde_json::Value>) {
    println!("{} ({} threads, fp32 kernel {}, int8 kernel {}), medians after warm-up", r.model, r.threads, r.fp32_kernel, r.int8_kernel);
    println!("{:<34} {:>12} {:>12} {:>8}", "workload", "wick fp32", "wick int8", "ratio");
    println!("{:<34} {:>9.3} ms {:>9.3} ms {:>7.2}x", "inference, batch 1", r.fp32.batch1_ms, r.int8.batch1_ms, r.int8_speedup_batch1);
    println!("{:<34} {:>9.3} ms {:>9.3} ms {:>7.2}x", format!("inference, batch {}", r.fp32.large_batch), r.fp32.large_batch_ms, r.int8.large_batch_ms, r.int8_speedup_large_batch);
    println!("{:<34} {:>9.3} ms {:>9.3} ms {:>7.2}x   (int8: 7-bit activations, {})", "inference, batch 1, u7", r.fp32.batch1_ms, r.int8_u7.batch1_ms, r.int8_u7_speedup_batch1, r.int8_u7_kernel);
    println!("{:<34} {:>9.3} ms {:>9.3} ms {:>7.2}x", format!("inference, batch {}, u7", r.fp32.large_batch), r.fp32.large_batch_ms, r.int8_u7.large_batch_ms, r.int8_u7_speedup_large_batch);
    println!("{:<34} {:>9.3} ms / {:.3} ms at batch {}", "fp32 on candle's executor, batch 1", r.fp32_candle.batch1_ms, r.fp32_candle.large_batch_ms, r.fp32_candle.large_batch);
    if r.train_epoch_s > 0.0 {
        println!("{:<34} {:>9.3} s", "training epoch (batch 64, SGD)", r.train_epoch_s);
    }
    if let Some(o) = one {
        let f = |k: &str, sub: &str| o[k][sub].as_f64().unwrap_or(f64::NAN);
        println!("speed-up of {} threads over 1:", r.threads);
        print!(
            "  fp32 batch {}: {:.2}x, int8 batch {}: {:.2}x",
            r.fp32.large_batch,
            f("fp32", "large_batch_ms") / r.fp32.large_batch_ms,
            r.int8.large_batch,
            f("int8", "large_batch_ms") / r.int8.large_batch_ms
        );
        match r.train_epoch_s > 0.0 {
            true => println!(", training epoch: {:.2}x", o["train_epoch_s"].as_f64().unwrap_or(f64::NAN) / r.train_epoch_s),
            false => println!(),
        }
    }
}
