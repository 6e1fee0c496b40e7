//! Classification metrics over a data set for any predictor that maps a batch of inputs to
//! logits: top-1 accuracy and mean cross-entropy `CE = logsumexp(z) − z_y` (computed in f64).
//! Float models run on the compiled float runtime, INT8 models on the integer one. Uses
//! `artifact`, `data`, `model`, `progress`, `runtime`.

use crate::artifact::Int8Model;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::forward::Mode;
use crate::model::Model;
use crate::progress::Progress;
use crate::runtime::plan::Plan;
use crate::runtime::{Exec, Executor};
use candle_core::Tensor;
use serde::Serialize;

/// What `wick eval` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    /// Fraction of samples whose argmax equals the label.
    pub accuracy: f64,
    /// Mean cross-entropy of the logits against the labels.
    pub loss: f64,
    pub correct: usize,
    pub samples: usize,
    /// Predicted class of every sample, in order.
    #[serde(skip)]
    pub predictions: Vec<u32>,
    /// The logits of every sample, `[samples, classes]` row by row.
    #[serde(skip)]
    pub logits: Vec<f32>,
}

/// Index of the largest value (the first on ties, as PyTorch's argmax).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// `log Σ_j e^{β·z_j}` of one row of logits, in f64, shifted by its largest term so that no
/// exponential overflows.
pub fn log_sum_exp(row: &[f32], beta: f64) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(beta * z as f64));
    m + row.iter().map(|&z| (beta * z as f64 - m).exp()).sum::<f64>().ln()
}

/// Cross-entropy of one row of logits against label `y`: `log Σ e^{z_j} − z_y`.
pub fn cross_entropy_row(row: &[f32], y: u32) -> f64 {
    log_sum_exp(row, 1.0) - row[y as usize] as f64
}

/// Evaluates `predict`, which returns `[len, classes]` logits for rows `start..start+len`.
pub fn evaluate_with(data: &Dataset, batch_size: usize, progress: &dyn Progress, mut predict: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<EvalResult> {
    if batch_size == 0 {
        return Err(WickError::invalid("--batch-size", "must be at least 1"));
    }
    let n = data.len();
    progress.start("eval", n as u64);
    let (mut correct, mut loss) = (0usize, 0f64);
    let mut predictions = Vec::with_capacity(n);
    let mut all_logits = vec![];
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let (x, y) = data.slice(start, len)?;
        let logits: Vec<Vec<f32>> = predict(&x)?.to_vec2()?;
        for (row, &label) in logits.iter().zip(&y) {
            let p = argmax(row);
            correct += (p == label) as usize;
            loss += cross_entropy_row(row, label);
            predictions.push(p);
            all_logits.extend_from_slice(row);
        }
        progress.inc(len as u64);
        start += len;
    }
    let r = EvalResult { accuracy: correct as f64 / n as f64, loss: loss / n as f64, correct, samples: n, predictions, logits: all_logits };
    progress.finish(&format!("accuracy {:.4} ({}/{}), loss {:.4}", r.accuracy, r.correct, r.samples, r.loss));
    Ok(r)
}

/// Evaluates a float model in eval mode on the compiled float runtime (`runtime::plan`).
pub fn evaluate(model: &Model, data: &Dataset, batch_size: usize, progress: &dyn Progress) -> Result<EvalResult> {
    data.check_fits(model.input_shape(), model.num_classes())?;
    evaluate_plan(&Plan::float(model)?, data, batch_size, progress)
}

/// Evaluates a compiled plan (float or INT8): what a caller that keeps the plan (for latency,
/// for several data sets) runs instead of compiling it again.
pub fn evaluate_plan(plan: &Plan, data: &Dataset, batch_size: usize, progress: &dyn Progress) -> Result<EvalResult> {
    crate::audit::record(|| crate::audit::Event::Evaluated { model: plan.fingerprint(), data: data.name.clone() });
    evaluate_with(data, batch_size, progress, |x| plan.predict(x))
}

/// Evaluates a float model in eval mode on the candle executor: the reference the compiled
/// float runtime is checked against.
pub fn evaluate_reference(model: &Model, data: &Dataset, batch_size: usize, progress: &dyn Progress) -> Result<EvalResult> {
    data.check_fits(model.input_shape(), model.num_classes())?;
    evaluate_with(data, batch_size, progress, |x| model.forward(x, Mode::Eval))
}

/// Evaluates an INT8 model, executed as `exec` says.
pub fn evaluate_int8(m: &Int8Model, data: &Dataset, batch_size: usize, exec: Exec, progress: &dyn Progress) -> Result<EvalResult> {
    data.check_fits(m.model.input_shape(), m.model.num_classes())?;
    let ex = Executor::new(m, exec)?;
    crate::audit::record(|| crate::audit::Event::Evaluated { model: crate::audit::fingerprint_int8(m), data: data.name.clone() });
    evaluate_with(data, batch_size, progress, |x| ex.predict(x))
}

/// Each sample's probability of its label after temperature scaling, `p_i = softmax(β·z_i)[y_i]`,
/// with the one `β` that minimises the mean negative log-likelihood
/// `L(β) = mean_i (logsumexp(β·z_i) − β·z_{i,y_i})` over these samples. A model that grew more
/// or less confident without changing its predictions gets the same probabilities back, so the
/// differences that remain are in what it predicts. `L` is convex in `β` (a log-sum-exp of
/// linear functions, less a linear one), so a golden-section search over `β ∈ [1/20, 20]`
/// finds its minimum.
pub fn calibrated_label_probabilities(logits: &[f32], labels: &[u32]) -> Vec<f64> {
    let n = labels.len();
    if n == 0 || !logits.len().is_multiple_of(n) {
        return vec![];
    }
    let classes = logits.len() / n;
    let rows = || logits.chunks_exact(classes).zip(labels);
    let log_probability = |row: &[f32], y: u32, beta: f64| beta * row[y as usize] as f64 - log_sum_exp(row, beta);
    let loss = |beta: f64| -rows().map(|(row, &y)| log_probability(row, y, beta)).sum::<f64>();
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut lo, mut hi) = (1.0 / 20.0, 20.0);
    let (mut a, mut b) = (hi - ratio * (hi - lo), lo + ratio * (hi - lo));
    let (mut la, mut lb) = (loss(a), loss(b));
    while hi - lo > 1e-4 {
        if la <= lb {
            (hi, b, lb) = (b, a, la);
            a = hi - ratio * (hi - lo);
            la = loss(a);
        } else {
            (lo, a, la) = (a, b, lb);
            b = lo + ratio * (hi - lo);
            lb = loss(b);
        }
    }
    let beta = (lo + hi) / 2.0;
    rows().map(|(row, &y)| log_probability(row, y, beta).exp()).collect()
}

/// Fraction of positions where two prediction lists agree.
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> (Vec<f32>, Vec<u32>) {
        // Four samples of three classes: confident and right, unsure, and wrong.
        (vec![4.0, 0.0, -1.0, 0.5, 0.3, 0.0, 0.0, 3.0, 1.0, 2.0, 2.5, -1.0], vec![0, 0, 1, 0])
    }

    #[test]
    fn calibrated_probabilities_do_not_change_with_the_logits_scale() {
        let (z, y) = logits();
        let p = calibrated_label_probabilities(&z, &y);
        let scaled: Vec<f32> = z.iter().map(|v| 3.0 * v).collect();
        let q = calibrated_label_probabilities(&scaled, &y);
        assert_eq!(p.len(), 4);
        for (a, b) in p.iter().zip(&q) {
            assert!((a - b).abs() < 1e-3, "{p:?} against {q:?}");
        }
    }

    #[test]
    fn calibrated_probabilities_minimise_the_negative_log_likelihood() {
        let (z, y) = logits();
        let nll = |p: &[f64]| -p.iter().map(|v| v.ln()).sum::<f64>();
        let best = nll(&calibrated_label_probabilities(&z, &y));
        // No temperature on a fine grid does better.
        for k in 1..2000 {
            let beta = k as f32 / 100.0;
            let scaled: Vec<f32> = z.iter().map(|v| beta * v).collect();
            let plain: Vec<f64> = scaled
                .chunks_exact(3)
                .zip(&y)
                .map(|(r, &c)| {
                    let s: f64 = r.iter().map(|&v| (v as f64).exp()).sum();
                    (r[c as usize] as f64).exp() / s
                })
                .collect();
            assert!(nll(&plain) >= best - 1e-6, "β {beta}: {} < {best}", nll(&plain));
        }
    }
}
