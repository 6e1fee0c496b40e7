//! Quantisation-aware training. Starts from the BN-folded model and PTQ calibration; trains with
//! fake-quant on every quantised layer's weight (per channel, `s_c = max|w_c|/127`) and input
//! (per tensor), straight-through gradients (zero outside the clamp range). Input ranges follow
//! a moving average of batch min/max (`r ← r + 0.01·(batch − r)`, PyTorch's QAT observer) for
//! the first `observer_epochs`, then freeze. Optional distillation from a float teacher. The
//! best validation checkpoint (fake-quant accuracy), with the ranges it was measured with, is
//! converted to INT8.

use crate::artifact::Int8Model;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::arch::Node;
use crate::model::forward::{Hook, Mode, Run};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::fake::{fake_quant_act, fake_quant_weight};
use crate::quant::{ActType, QParams};
use crate::train::{fit, loss, FitReport, TrainConfig};
use candle_core::Tensor;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// QAT settings beyond the training loop's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QatConfig {
    pub train: TrainConfig,
    /// Epochs during which activation ranges keep updating.
    pub observer_epochs: usize,
    /// Distillation temperature and weight, when a teacher is given.
    pub temperature: f64,
    pub alpha: f64,
}

/// Fake-quant hook whose activation ranges can observe batches.
struct QatHook {
    ranges: RefCell<BTreeMap<String, (f32, f32)>>,
    act: ActType,
    observing: Cell<bool>,
}

impl QatHook {
    fn qparams(&self) -> BTreeMap<String, QParams> {
        self.ranges.borrow().iter().map(|(k, &(lo, hi))| (k.clone(), QParams::from_range(lo, hi, self.act))).collect()
    }
}

impl Hook for QatHook {
    fn input(&self, node: &Node, x: Tensor) -> Result<Tensor> {
        let Some(&(mut lo, mut hi)) = self.ranges.borrow().get(&node.name) else { return Ok(x) };
        if self.observing.get() {
            let d = x.detach().flatten_all()?;
            let (bmin, bmax): (f32, f32) = (d.min(0)?.to_scalar()?, d.max(0)?.to_scalar()?);
            lo += 0.01 * (bmin - lo);
            hi += 0.01 * (bmax - hi);
            self.ranges.borrow_mut().insert(node.name.clone(), (lo, hi));
        }
        fake_quant_act(&x, &QParams::from_range(lo, hi, self.act))
    }

    fn weight(&self, node: &Node, w: Tensor) -> Result<Tensor> {
        if self.ranges.borrow().contains_key(&node.name) {
            fake_quant_weight(&w)
        } else {
            Ok(w)
        }
    }
}

/// What QAT did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QatReport {
    pub fit: FitReport,
    pub distilled: bool,
}

/// Trains `folded` (BN already folded; modified in place) from the PTQ model `init`'s ranges
/// and returns the converted INT8 model.
pub fn qat(folded: &Model, init: &Int8Model, teacher: Option<&Model>, train: &Dataset, val: &Dataset, cfg: &QatConfig, progress: &dyn Progress) -> Result<(Int8Model, QatReport)> {
    let act = init.layers.values().next().map(|q| q.input.act).unwrap_or(ActType::U8);
    let hook = QatHook { ranges: RefCell::new(init.layers.iter().map(|(k, q)| (k.clone(), q.input.real_range())).collect()), act, observing: Cell::new(false) };
    let teacher_logits = match teacher {
        Some(t) => Some(t.forward(&train.x, Mode::Eval)?),
        None => None,
    };
    let history: RefCell<Vec<BTreeMap<String, (f32, f32)>>> = RefCell::new(vec![]);
    let observer_epochs = cfg.observer_epochs;
    let current_epoch = Cell::new(0usize);
    let objective = |m: &Model, x: &Tensor, y: &[u32], idx: &[usize], rng: &RefCell<rand_chacha::ChaCha8Rng>| -> Result<Tensor> {
        hook.observing.set(current_epoch.get() < observer_epochs);
        let out = m.run(x, &Run { mode: Mode::Train, taps: &[], hook: Some(&hook), rng: Some(rng) });
        hook.observing.set(false);
        let s = out?.0;
        match &teacher_logits {
            Some(t) => {
                let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), t.device())?;
                loss::distillation(&s, &t.index_select(&ids, 0)?, y, cfg.temperature, cfg.alpha)
            }
            None => loss::cross_entropy(&s, y),
        }
    };
    let validate = |m: &Model| -> Result<crate::eval::EvalResult> {
        history.borrow_mut().push(hook.ranges.borrow().clone());
        crate::eval::evaluate_with(val, 256, &crate::progress::Silent, |x| Ok(m.run(x, &Run { mode: Mode::Eval, taps: &[], hook: Some(&hook), rng: None })?.0))
    };
    let on_epoch = |e: usize| -> Result<()> {
        current_epoch.set(e);
        Ok(())
    };
    let report = fit(folded, folded.trainable_vars(), train, &cfg.train, &objective, &validate, &on_epoch, progress)?;
    // The ranges in force when the best checkpoint was validated.
    *hook.ranges.borrow_mut() = history.borrow()[report.best_epoch].clone();
    let q = Int8Model::quantize(folded, &hook.qparams())?;
    Ok((q, QatReport { fit: report, distilled: teacher.is_some() }))
}
