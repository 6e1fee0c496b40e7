//! Latency of a predictor at batch 1 and a large batch, measured in the same run for teacher
//! and artifact: median wall time of repeated runs after warm-up.

use crate::data::Dataset;
use crate::error::Result;
use candle_core::Tensor;
use serde::Serialize;
use std::time::Instant;

/// Milliseconds per batch.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub batch1_ms: f64,
    pub large_batch: usize,
    pub large_batch_ms: f64,
}

/// Seconds of warm-up runs before timing.
const WARM_UP_S: f64 = 0.1;

/// Median of timed runs after [`WARM_UP_S`] of warm-up runs (two at least): at least `min_reps`, and more (up to 20 times
/// as many) while the total stays under a quarter of a second, so fast workloads get enough
/// samples for the median to be stable on a noisy machine.
fn median_ms(min_reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    // Warm-up for a tenth of a second, two runs at least: the first 50 ms of batches after a
    // process's first allocations of their size ran twice as slow on a VM (fresh pages, the
    // heap settling), which two runs did not cover.
    let warm = Instant::now();
    let mut runs = 0;
    while runs < 2 || warm.elapsed().as_secs_f64() < WARM_UP_S {
        f()?;
        runs += 1;
    }
    let mut t = Vec::with_capacity(min_reps);
    let start = Instant::now();
    while t.len() < min_reps || (t.len() < 20 * min_reps && start.elapsed().as_secs_f64() < 0.25) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Median latency of `predict` on the first sample and on the first `large` samples.
pub fn measure(data: &Dataset, large: usize, predict: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Latency> {
    let large = large.min(data.len()).max(1);
    let one = data.x.narrow(0, 0, 1)?;
    let many = data.x.narrow(0, 0, large)?;
    let b1 = median_ms(25, &mut || predict(&one).map(|_| ()))?;
    let bl = median_ms(7, &mut || predict(&many).map(|_| ()))?;
    Ok(Latency { batch1_ms: b1, large_batch: large, large_batch_ms: bl })
}
