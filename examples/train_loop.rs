//! Profiling aid: times training epochs of a float model (batch 64, SGD with momentum, as
//! `wick bench` does) on TRAIN (`cargo run --release --example train_loop -- MODEL TRAIN [EPOCHS]`).
//! The CLI sets `CANDLE_NUM_THREADS=1`; set it here too (and `RAYON_NUM_THREADS`) to time what
//! `wick` runs. Like the CLI, the work runs on a thread of rayon's pool.
use std::path::Path;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // As the CLI: freed memory stays mapped, not handed back as fresh pages every epoch.
    wick::allocator::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    let epochs: usize = a.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let (m, _) = wick::artifact::load_any(Path::new(&a[1]), None)?;
    let wick::artifact::AnyModel::Float(m) = m else { anyhow::bail!("{}: a float model is needed", a[1]) };
    let train = wick::data::Dataset::read(Path::new(&a[2]))?;
    let s = rayon::scope(|_| wick::bench::train_epoch_seconds(&m, &train, epochs))?;
    println!("{:.3} s per epoch (median of {epochs})", s);
    Ok(())
}
