//! Profiling aid: runs the compiled INT8 runtime on the first 64 test samples of a model, many
//! times (`cargo run --release --example int8_loop -- MODEL TRAIN TEST [REPS] [BATCH]`).
use std::path::Path;
use std::time::Instant;
use wick::runtime::{kernels::Kernel, Exec, Executor};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let reps: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let batch: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let (m, _) = wick::artifact::load_any(Path::new(&a[1]), None)?;
    let wick::artifact::AnyModel::Float(m) = m else { anyhow::bail!("float model expected") };
    let train = wick::data::Dataset::read(Path::new(&a[2]))?;
    let test = wick::data::Dataset::read(Path::new(&a[3]))?;
    let q = wick::bench::int8_of(&m, &train)?;
    let ex = Executor::new(&q, Exec::Integer(Kernel::Fast))?;
    let x = test.x.narrow(0, 0, batch)?;
    ex.predict(&x)?;
    let t = Instant::now();
    for _ in 0..reps {
        ex.predict(&x)?;
    }
    println!("{:.3} ms per batch of {batch}", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
    Ok(())
}
