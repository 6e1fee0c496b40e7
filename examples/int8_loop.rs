//! Profiling aid: runs the compiled INT8 runtime (on an INT8 artifact, or on a float model after
//! min-max PTQ) on the first test samples, many times (`cargo run --release --example int8_loop -- MODEL TRAIN TEST [REPS] [BATCH]`).
use std::path::Path;
use std::time::Instant;
use wick::runtime::{kernels::Kernel, Exec, Executor};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let reps: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let batch: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let (m, _) = wick::artifact::load_any(Path::new(&a[1]), None)?;
    let test = wick::data::Dataset::read(Path::new(&a[3]))?;
    // A float model is quantised (min-max PTQ on TRAIN); an INT8 artifact runs as it is.
    let q = match m {
        wick::artifact::AnyModel::Float(m) => wick::bench::int8_of(&m, &wick::data::Dataset::read(Path::new(&a[2]))?)?,
        wick::artifact::AnyModel::Int8(q) => q,
    };
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
