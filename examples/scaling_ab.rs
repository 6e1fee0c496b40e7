//! Profiling aid: the 1 → 2 thread speed-up of training and of the compiled runtimes, measured
//! with a 1-thread and a 2-thread pool alternating in one process, so both see the same machine
//! load (`cargo run --release --example scaling_ab -- MODEL TRAIN TEST [PAIRS]`). Each pair
//! times one training epoch (batch 64, SGD, after a warm-up epoch, as `wick bench` does), then
//! 20 INT8 and 20 FP32 batches of 64, on each pool; the median per-pair ratios are printed.
//! Like the CLI, candle's own threads are off (`CANDLE_NUM_THREADS=1`): the pools do the work.
use std::path::Path;
use std::time::Instant;
use wick::artifact::AnyModel;
use wick::runtime::plan::Plan;

fn main() -> anyhow::Result<()> {
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    let a: Vec<String> = std::env::args().collect();
    let pairs: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let (m, _) = wick::artifact::load_any(Path::new(&a[1]), None)?;
    let AnyModel::Float(m) = m else { anyhow::bail!("{}: a float model is needed", a[1]) };
    let train = wick::data::Dataset::read(Path::new(&a[2]))?;
    let x = wick::data::Dataset::read(Path::new(&a[3]))?.x.narrow(0, 0, 64)?;
    let (fp32, int8) = (Plan::float(&m)?, Plan::int8(&wick::bench::int8_of(&m, &train, wick::quant::ActType::U8)?)?);
    let pools = [1, 2].map(|n| rayon::ThreadPoolBuilder::new().num_threads(n).stack_size(8 << 20).build());
    let [one, two] = pools;
    let (one, two) = (one?, two?);
    // Seconds per epoch, ms per INT8 batch, ms per FP32 batch, on `pool` (on one of its threads).
    let measure = |pool: &rayon::ThreadPool| -> anyhow::Result<[f64; 3]> {
        pool.install(|| {
            let epoch = wick::bench::train_epoch_seconds(&m, &train, 1)?;
            let batches = |plan: &Plan| -> anyhow::Result<f64> {
                let t = Instant::now();
                for _ in 0..20 {
                    plan.predict(&x)?;
                }
                Ok(t.elapsed().as_secs_f64() * 1e3 / 20.0)
            };
            Ok([epoch, batches(&int8)?, batches(&fp32)?])
        })
    };
    let mut ratios = [vec![], vec![], vec![]];
    for i in 0..pairs {
        let (t1, t2) = if i % 2 == 0 {
            (measure(&one)?, measure(&two)?)
        } else {
            let t2 = measure(&two)?;
            (measure(&one)?, t2)
        };
        for k in 0..3 {
            ratios[k].push(t1[k] / t2[k]);
        }
        println!("pair {i}: 1 thread {:.3} s, {:.3} ms, {:.3} ms; 2 threads {:.3} s, {:.3} ms, {:.3} ms", t1[0], t1[1], t1[2], t2[0], t2[1], t2[2]);
    }
    for (name, r) in ["training epoch", "INT8 batch 64", "FP32 batch 64"].iter().zip(ratios.iter_mut()) {
        r.sort_by(f64::total_cmp);
        println!("{name}: 1 → 2 threads {:.2}x (median of {pairs} pairs; {:.2}..{:.2})", r[r.len() / 2], r[0], r[r.len() - 1]);
    }
    Ok(())
}
