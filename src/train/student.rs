//! Training a model on labels, or distilling it from a float teacher's logits: fine-tuning
//! after pruning. Validation is float accuracy in eval mode.

use super::distill::{distill, DistillConfig};
use super::fit::{fit, FitReport, TrainConfig};
use super::loss;
use crate::data::Dataset;
use crate::error::Result;
use crate::eval::evaluate;
use crate::model::forward::{Mode, Run};
use crate::model::Model;
use crate::progress::{Progress, Silent};
use candle_core::Tensor;

/// Distillation from a teacher's logits.
pub struct LogitDistill<'a> {
    pub teacher: &'a Model,
    pub temperature: f64,
    pub alpha: f64,
}

/// Trains every trainable parameter of `model` in place: cross-entropy on the labels, or
/// logits distillation when `kd` is given.
pub fn train_model(model: &mut Model, train: &Dataset, val: &Dataset, cfg: &TrainConfig, kd: Option<&LogitDistill>, progress: &dyn Progress) -> Result<FitReport> {
    if let Some(k) = kd {
        let dc = DistillConfig { temperature: k.temperature, alpha: k.alpha, hints: vec![], hint_weight: 0.0 };
        return distill(k.teacher, model, train, val, cfg, &dc, progress);
    }
    let objective = |m: &Model, x: &Tensor, y: &[u32], _: &[usize], rng: &std::cell::RefCell<rand_chacha::ChaCha8Rng>| -> Result<Tensor> {
        loss::cross_entropy(&m.run(x, &Run { mode: Mode::Train, taps: &[], hook: None, rng: Some(rng) })?.0, y)
    };
    let validate = |m: &Model| evaluate(m, val, 256, &Silent);
    let vars = model.trainable_vars();
    fit(model, vars, train, cfg, &objective, &validate, &|_| Ok(()), progress)
}
