//! Profiling aid: runs a compiled runtime on the first test samples, many times
//! (`cargo run --release --example infer_loop -- int8|fp32 MODEL TRAIN TEST [REPS] [BATCH]`).
//! `int8` runs the integer runtime (an INT8 artifact as it is, a float model after min-max PTQ
//! on TRAIN); `fp32` runs the compiled float runtime on a float model. Like the CLI, the work
//! runs on a thread of rayon's pool, with the binary's allocator and its freed memory kept mapped
//! (else every call's outputs come back as freshly faulted pages, which the CLI never sees).
use std::path::Path;
use std::time::Instant;
use wick::artifact::AnyModel;
use wick::runtime::{kernels::Kernel, plan::Plan, Exec, Executor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // As the CLI: freed memory stays mapped, not handed back as fresh pages every call.
    wick::allocator::keep_freed_memory();
    // On a thread of rayon's pool, as the CLI runs its commands.
    rayon::scope(|_| run())
}

fn run() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let reps: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let batch: usize = a.get(6).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let (m, _) = wick::artifact::load_any(Path::new(&a[2]), None)?;
    let test = wick::data::Dataset::read(Path::new(&a[4]))?;
    let x = test.x.narrow(0, 0, batch)?;
    let predict: Box<dyn Fn() -> wick::Result<candle_core::Tensor>> = match (a[1].as_str(), m) {
        ("fp32", AnyModel::Float(m)) => {
            let plan = Plan::float(&m)?;
            Box::new(move || plan.predict(&x))
        }
        ("int8", m) => {
            let q = match m {
                AnyModel::Float(m) => wick::bench::int8_of(&m, &wick::data::Dataset::read(Path::new(&a[3]))?, wick::quant::ActType::U8)?,
                AnyModel::Int8(q) => q,
            };
            let q: &'static _ = Box::leak(Box::new(q));
            let ex = Executor::new(q, Exec::Integer(Kernel::Fast))?;
            Box::new(move || ex.predict(&x))
        }
        (kind, _) => anyhow::bail!("the first argument is int8 or fp32 (fp32 on a float model), not '{kind}'"),
    };
    predict()?;
    let t = Instant::now();
    for _ in 0..reps {
        predict()?;
    }
    println!("{:.3} ms per batch of {batch}", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
    Ok(())
}
