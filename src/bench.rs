//! Speed measurements for `wick bench`: float (compiled, and candle's executor for comparison)
//! and INT8 inference at batch 1 and a large batch, and one training epoch, each the median of
//! repeated runs after warm-up. Ratios are taken against baselines measured in the same run.

use crate::artifact::Int8Model;
use crate::calibrate::Method;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::forward::Mode;
use crate::model::Model;
use crate::passes::calibrate::{ptq, CalibrateSettings};
use crate::progress::Silent;
use crate::quant::ActType;
use crate::report::latency::{measure, Latency};
use crate::runtime::{kernels::Kernel, plan::Plan, Exec, Executor};
use crate::train::{fit, loss, OptimizerKind, TrainConfig};
use serde::Serialize;
use std::time::Instant;

/// What `wick bench` measures for one model.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub threads: usize,
    /// The compiled float runtime (what `wick eval` runs).
    pub fp32: Latency,
    /// The candle executor, for comparison (what float inference ran on before the compiled
    /// float runtime, and still the reference it is tested against).
    pub fp32_candle: Latency,
    pub int8: Latency,
    /// Median seconds of one training epoch (batch 64, forward + backward + SGD step).
    pub train_epoch_s: f64,
    /// fp32 / int8 latency at the large batch.
    pub int8_speedup_large_batch: f64,
    pub int8_speedup_batch1: f64,
    /// The INT8 model with 7-bit activations (`--activations u7`).
    pub int8_u7: Latency,
    pub int8_u7_speedup_large_batch: f64,
    pub int8_u7_speedup_batch1: f64,
    /// The f32 GEMM tile this CPU runs (`WICK_F32_ISA` caps it).
    pub fp32_kernel: String,
    /// The integer GEMM kernel this CPU runs for u8 activations.
    pub int8_kernel: String,
    /// The one it runs for 7-bit activations.
    pub int8_u7_kernel: String,
}

/// The INT8 model benchmarks run: PTQ (min-max, activations `act`) on the first 256 samples.
pub fn int8_of(model: &Model, data: &Dataset, act: ActType) -> Result<Int8Model> {
    let settings = CalibrateSettings { method: Method::Minmax, samples: 256, activations: act, ..CalibrateSettings::default() };
    Ok(ptq(model, data, &settings, &Silent)?.int8)
}

/// Median seconds of one training epoch over `reps` epochs (after one warm-up epoch).
pub fn train_epoch_seconds(model: &Model, train: &Dataset, reps: usize) -> Result<f64> {
    let mut m = model.deep_clone()?;
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 64,
        lr: crate::train::LearningRate::Fixed(0.01),
        optimizer: OptimizerKind::Sgd,
        weight_decay: 0.0,
        momentum: 0.9,
        warmup_epochs: 0.0,
        seed: 0,
        patience: None,
        keep: crate::train::fit::Keep::Accuracy,
    };
    let obj = |m: &Model, x: &candle_core::Tensor, y: &[u32], _: &[usize], _: &std::cell::RefCell<rand_chacha::ChaCha8Rng>| loss::cross_entropy(&m.forward(x, Mode::Train)?, y);
    // Validation is not part of the step being measured: a constant stands in for it.
    let val = |_: &Model| Ok(crate::eval::EvalResult { accuracy: 0.0, loss: 0.0, correct: 0, samples: 0, predictions: vec![], logits: vec![] });
    let mut t = vec![];
    for i in 0..=reps {
        let s = Instant::now();
        let vars = m.trainable_vars();
        fit(&mut m, vars, train, &cfg, &obj, &val, &|_| Ok(()), &Silent)?;
        if i > 0 {
            t.push(s.elapsed().as_secs_f64());
        }
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// All measurements for one model.
pub fn bench(name: &str, model: &Model, train: &Dataset, test: &Dataset, threads: usize, epochs: usize) -> Result<BenchResult> {
    let plan = Plan::float(model)?;
    let fp32 = measure(test, 64, &|x| plan.predict(x))?;
    let fp32_candle = measure(test, 64, &|x| model.forward(x, Mode::Eval))?;
    let int8_latency = |act: ActType| -> Result<(Latency, String)> {
        let q = int8_of(model, train, act)?;
        let ex = Executor::new(&q, Exec::Integer(Kernel::Fast))?;
        Ok((measure(test, 64, &|x| ex.predict(x))?, crate::runtime::kernel_names(&q)))
    };
    let (int8, int8_kernel) = int8_latency(ActType::U8)?;
    let (int8_u7, int8_u7_kernel) = int8_latency(ActType::U7)?;
    let train_epoch_s = if epochs > 0 { train_epoch_seconds(model, train, epochs)? } else { 0.0 };
    Ok(BenchResult {
        model: name.into(),
        threads,
        int8_speedup_large_batch: fp32.large_batch_ms / int8.large_batch_ms,
        int8_speedup_batch1: fp32.batch1_ms / int8.batch1_ms,
        int8_u7_speedup_large_batch: fp32.large_batch_ms / int8_u7.large_batch_ms,
        int8_u7_speedup_batch1: fp32.batch1_ms / int8_u7.batch1_ms,
        fp32_kernel: crate::matmul::isa::F32Isa::detect().name().into(),
        int8_kernel,
        int8_u7_kernel,
        int8_u7,
        fp32,
        fp32_candle,
        int8,
        train_epoch_s,
    })
}
