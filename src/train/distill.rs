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

/// An adapter from `cs` student channels to `ct` teacher channels (`None`: identity).
fn adapter(ct: usize, cs: usize, rank: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Result<Option<Var>> {
    if ct == cs {
        return Ok(None);
    }
    let bound = 1.0 / (cs as f32).sqrt();
    let w: Vec<f32> = (0..ct * cs).map(|_| rng.random_range(-bound..bound)).collect();
    let mut shape = vec![ct, cs];
    shape.extend(std::iter::repeat_n(1, rank - 1));
    Ok(Some(Var::from_tensor(&Tensor::from_vec(w, shape, &crate::model::device())?)?))
}

fn apply_adapter(a: &Option<Var>, x: &Tensor) -> Result<Tensor> {
    Ok(match a {
        None => x.clone(),
        Some(w) if x.rank() == 2 => x.matmul(&w.as_tensor().t()?)?,
        Some(w) if x.rank() == 3 => x.conv1d(w.as_tensor(), 0, 1, 1, 1)?,
        Some(w) => x.conv2d(w.as_tensor(), 0, 1, 1, 1)?,
    })
}

/// Trains `student` in place from `teacher`.
pub fn distill(teacher: &Model, student: &Model, train: &Dataset, val: &Dataset, tc: &TrainConfig, cfg: &DistillConfig, progress: &dyn Progress) -> Result<FitReport> {
    let widths = check_pair(teacher, student, cfg)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(tc.seed ^ 0x5eed);
    let adapters: Vec<Option<Var>> = cfg.hints.iter().zip(&widths).map(|(h, &(ct, cs))| adapter(ct, cs, student.graph.shapes[&h.student].len(), &mut rng)).collect::<Result<_>>()?;
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
