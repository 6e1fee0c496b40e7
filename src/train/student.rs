//! Training a model on labels, optionally distilling from a float teacher's logits (computed
//! once, since the data is not augmented): fine-tuning after pruning, and the logits part of
//! `wick distill`. Validation is float accuracy in eval mode.

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

/// Trains every trainable parameter of `model` in place.
pub fn train_model(model: &Model, train: &Dataset, val: &Dataset, cfg: &TrainConfig, kd: Option<&LogitDistill>, progress: &dyn Progress) -> Result<FitReport> {
    let teacher_logits = match kd {
        Some(k) => Some(k.teacher.forward(&train.x, Mode::Eval)?.detach()),
        None => None,
    };
    let objective = |m: &Model, x: &Tensor, y: &[u32], idx: &[usize], rng: &std::cell::RefCell<rand_chacha::ChaCha8Rng>| -> Result<Tensor> {
        let s = m.run(x, &Run { mode: Mode::Train, taps: &[], hook: None, rng: Some(rng) })?.0;
        match (&teacher_logits, kd) {
            (Some(t), Some(k)) => {
                let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), t.device())?;
                loss::distillation(&s, &t.index_select(&ids, 0)?, y, k.temperature, k.alpha)
            }
            _ => loss::cross_entropy(&s, y),
        }
    };
    let validate = |m: &Model| -> Result<f64> { Ok(evaluate(m, val, 256, &Silent)?.accuracy) };
    fit(model, model.trainable_vars(), train, cfg, &objective, &validate, &|_| Ok(()), progress)
}
