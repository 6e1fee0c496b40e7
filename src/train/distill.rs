//! Knowledge distillation into a student: logits distillation
//! `α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE` plus, per hint, `β·mean((t_f − A(s_f))²)`
//! where `A` is a learned 1×1 conv (`[C, H, W]` features) or linear (`[C]` features) adapter from
//! the student's width to the teacher's (identity when they match). Teacher logits and features
//! are computed once (the data is not augmented).

use super::fit::{fit, FitReport, TrainConfig};
use super::loss;
use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::eval::evaluate;
use crate::model::forward::{Mode, Run};
use crate::model::Model;
use crate::progress::{Progress, Silent};
use candle_core::{Tensor, Var};
use rand::{RngExt, SeedableRng};
use std::cell::RefCell;

/// A feature hint: the student node's activation should match the teacher node's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hint {
    pub teacher: String,
    pub student: String,
}

impl std::str::FromStr for Hint {
    type Err = WickError;
    fn from_str(s: &str) -> Result<Hint> {
        match s.split_once('=') {
            Some((t, st)) if !t.is_empty() && !st.is_empty() => Ok(Hint { teacher: t.into(), student: st.into() }),
            _ => Err(WickError::invalid("--hint", format!("'{s}' is not TEACHER_NODE=STUDENT_NODE"))),
        }
    }
}

/// Distillation settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DistillConfig {
    pub temperature: f64,
    pub alpha: f64,
    pub hints: Vec<Hint>,
    /// Weight β of each hint loss.
    pub hint_weight: f64,
}

/// Checks that teacher and student can be distilled: same input, same classes, hints that
/// name nodes with compatible shapes. Returns each hint's `(teacher C, student C)`.
pub fn check_pair(teacher: &Model, student: &Model, cfg: &DistillConfig) -> Result<Vec<(usize, usize)>> {
    if teacher.input_shape() != student.input_shape() {
        return Err(WickError::invalid("student", format!("takes input {:?}, the teacher {:?}", student.input_shape(), teacher.input_shape())));
    }
    if teacher.num_classes() != student.num_classes() {
        return Err(WickError::invalid("student", format!("has {} output classes, the teacher {}", student.num_classes(), teacher.num_classes())));
    }
    if cfg.temperature.is_nan() || cfg.temperature <= 0.0 || !(0.0..=1.0).contains(&cfg.alpha) {
        return Err(WickError::invalid("--temperature/--alpha", "need T > 0 and α in [0, 1]"));
    }
    cfg.hints
        .iter()
        .map(|h| {
            let ts = teacher.graph.shapes.get(&h.teacher).ok_or_else(|| WickError::invalid("--hint", format!("'{}' names no node of the teacher", h.teacher)))?;
            let ss = student.graph.shapes.get(&h.student).ok_or_else(|| WickError::invalid("--hint", format!("'{}' names no node of the student", h.student)))?;
            if ts.len() != ss.len() || ts[1..] != ss[1..] {
                return Err(WickError::invalid("--hint", format!("{}={}: shapes {ts:?} and {ss:?} differ beyond the channel axis", h.teacher, h.student)));
            }
            Ok((ts[0], ss[0]))
        })
        .collect()
}

/// An adapter from `cs` student channels to `ct` teacher channels, a `[ct, cs]` weight
/// (`None`: identity).
fn adapter(ct: usize, cs: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Result<Option<Var>> {
    if ct == cs {
        return Ok(None);
    }
    let bound = 1.0 / (cs as f32).sqrt();
    let w: Vec<f32> = (0..ct * cs).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Some(Var::from_tensor(&Tensor::from_vec(w, (ct, cs), &crate::model::device())?)?))
}

/// `A(x)` over the channel axis 1 of `[N, C, …]`: `y[n, :, p] = W · x[n, :, p]` at every
/// position `p` (a 1×1 conv), run as the linear op on channels-last rows.
fn apply_adapter(a: &Option<Var>, x: &Tensor) -> Result<Tensor> {
    let Some(w) = a else { return Ok(x.clone()) };
    if x.rank() == 2 {
        return crate::model::linear(x, w.as_tensor(), None);
    }
    let mut dims = x.dims().to_vec();
    let (n, c) = (dims[0], dims[1]);
    let rows = x.reshape((n, c, ()))?.transpose(1, 2)?.contiguous()?;
    let y = crate::model::linear(&rows, w.as_tensor(), None)?;
    dims[1] = w.dim(0)?;
    Ok(y.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

/// Trains `student` in place from `teacher`.
pub fn distill(teacher: &Model, student: &mut Model, train: &Dataset, val: &Dataset, tc: &TrainConfig, cfg: &DistillConfig, progress: &dyn Progress) -> Result<FitReport> {
    let widths = check_pair(teacher, student, cfg)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(tc.seed ^ 0x5eed);
    let adapters: Vec<Option<Var>> = widths.iter().map(|&(ct, cs)| adapter(ct, cs, &mut rng)).collect::<Result<_>>()?;
    let t_taps: Vec<String> = cfg.hints.iter().map(|h| h.teacher.clone()).collect();
    let s_taps: Vec<String> = cfg.hints.iter().map(|h| h.student.clone()).collect();
    let (t_logits, t_feats) = teacher.run(&train.x, &Run { mode: Mode::Eval, taps: &t_taps, hook: None, rng: None })?;
    let t_logits = t_logits.detach();
    let mut vars = student.trainable_vars();
    vars.extend(adapters.iter().flatten().cloned());
    let objective = |m: &Model, x: &Tensor, y: &[u32], idx: &[usize], r: &RefCell<rand_chacha::ChaCha8Rng>| -> Result<Tensor> {
        let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), x.device())?;
        let (s, feats) = m.run(x, &Run { mode: Mode::Train, taps: &s_taps, hook: None, rng: Some(r) })?;
        let mut l = loss::distillation(&s, &t_logits.index_select(&ids, 0)?, y, cfg.temperature, cfg.alpha)?;
        for ((h, a), tt) in cfg.hints.iter().zip(&adapters).zip(&t_taps) {
            let sf = apply_adapter(a, &feats[&h.student])?;
            let tf = t_feats[tt].index_select(&ids, 0)?;
            l = (l + (loss::hint_mse(&sf, &tf)? * cfg.hint_weight)?)?;
        }
        Ok(l)
    };
    let validate = |m: &Model| evaluate(m, val, 256, &Silent);
    fit(student, vars, train, tc, &objective, &validate, &|_| Ok(()), progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The adapter equals `W · x` at every position (a 1×1 conv), forward and backward, for
    /// `[N, C]`, `[N, C, L]` and `[N, C, H, W]` features.
    #[test]
    fn adapter_is_a_pointwise_map_over_channels_forward_and_backward() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let w = adapter(5, 3, &mut rng).unwrap();
        for dims in [vec![2, 3], vec![2, 3, 4], vec![2, 3, 4, 2]] {
            let n: usize = dims.iter().product();
            let x = Var::from_tensor(&Tensor::from_vec((0..n).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect::<Vec<_>>(), dims.clone(), &Device::Cpu).unwrap()).unwrap();
            let ours = apply_adapter(&w, x.as_tensor()).unwrap();
            // Reference: [ct, cs] · [N, cs, S] by candle's matmul, whose backward is its own.
            let wt = w.as_ref().unwrap().as_tensor();
            let flat = x.as_tensor().reshape((dims[0], 3, ())).unwrap();
            let mut out_dims = dims.clone();
            out_dims[1] = 5;
            let theirs = if dims.len() == 2 { x.as_tensor().matmul(&wt.t().unwrap()).unwrap() } else { wt.broadcast_left(dims[0]).unwrap().matmul(&flat).unwrap().reshape(out_dims).unwrap() };
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "forward {dims:?}: {diff}");
            let probe = Tensor::from_vec((0..ours.elem_count()).map(|i| (i % 5) as f32 - 2.0).collect::<Vec<_>>(), ours.dims(), &Device::Cpu).unwrap();
            let ga = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [x.as_tensor(), wt] {
                let d = (ga.get(t).unwrap() - gb.get(t).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-5, "backward {dims:?}: {d}");
            }
        }
    }
}
