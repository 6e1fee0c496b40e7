//! Distillation of a text encoder into a shallower one on unlabeled sentences. The student is
//! the teacher's architecture with `k` layers, student layer `j` initialised from the teacher's
//! `j`-th kept layer, the embeddings shared. The kept layers are chosen on the validation
//! sentences by [`choose_layers`]: dropping one layer at a time, always the one whose removal
//! leaves the highest cosine to the teacher, since where a student starts bounds where a short
//! training on a small corpus takes it. It is trained (AdamW, warm-up then cosine decay) on
//! `loss = mean_i (1 − cos(s_i, t_i)) + β · mean_j ‖m ⊙ (h_j − H_{t_j})‖² / ‖m ⊙ H_{t_j}‖²`:
//! the sentence embeddings' cosine to the teacher's, plus each mapped layer's hidden states'
//! squared error relative to the teacher's (`m` the real tokens), scale-free so that `β` means
//! the same for any model. The embedding tables stay frozen: a small corpus would move only the
//! rows of the words it holds, while weight decay shrank all the others. The checkpoint with
//! the best validation cosine is kept. Uses `embedding`, `hf`, `model`, `train`.

use super::Pass;
use crate::embedding::{embed, fidelity, Fidelity, TextData};
use crate::error::{Result, WickError};
use crate::hf::family::split_layer;
use crate::hf::Config;
use crate::model::arch::Op;
use crate::model::forward::{Mode, Run};
use crate::model::Model;
use crate::progress::Progress;
use crate::train::optim::{cosine_lr, Optimizer, OptimizerKind};
use candle_core::{Device, Tensor, D};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;

/// Settings of one distillation.
#[derive(Debug, Clone, Serialize)]
pub struct TextDistillConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Warm-up, as a share of all steps.
    pub warmup: f64,
    /// `β`, the weight of the hidden-state term.
    pub hidden_weight: f64,
    pub seed: u64,
}

/// What the distillation did.
#[derive(Debug, Clone, Serialize)]
pub struct TextDistillReport {
    /// Student layer `j` ← teacher layer `layer_map[j]`.
    pub layer_map: Vec<usize>,
    pub train_sentences: usize,
    pub steps: usize,
    /// Mean training loss of every epoch.
    pub train_loss: Vec<f64>,
    /// Validation fidelity after every epoch (the untrained student's first).
    pub val: Vec<Fidelity>,
    /// Index into `val` of the checkpoint kept (0: the initial student).
    pub best: usize,
}

/// The number of layers of a BERT-family model (`encoder.layer.{i}` blocks, see `hf::family`).
pub fn encoder_layers(model: &Model) -> usize {
    model.arch.nodes.iter().filter_map(|n| split_layer(&n.name).map(|(_, i, _)| i)).max().map_or(0, |m| m + 1)
}

/// The output of layer `l` of a BERT-family model: the last node inside it.
fn layer_output(model: &Model, l: usize) -> String {
    let last = model.arch.nodes.iter().rev().find(|n| split_layer(&n.name).is_some_and(|(_, i, _)| i == l));
    last.expect("a layer below encoder_layers").name.clone()
}

/// The student of `teacher` (whose directory's `config.json` is `config`) whose layer `j` is a
/// copy of teacher layer `keep[j]`, everything else copied.
pub fn student_of(teacher: &Model, config: &Config, keep: &[usize]) -> Result<Model> {
    let arch = crate::hf::arch_from_config(&config.with_layers(keep.len()), teacher.input_shape()[0])?;
    let mut tensors = BTreeMap::new();
    for (name, t) in &teacher.tensors() {
        match split_layer(name) {
            Some((stack, i, rest)) => {
                if let Some(j) = keep.iter().position(|&k| k == i) {
                    tensors.insert(format!("{stack}.{j}.{rest}"), t.copy()?);
                }
            }
            None => {
                tensors.insert(name.clone(), t.copy()?);
            }
        }
    }
    Model::new(arch, tensors, &teacher.source)
}

/// The teacher's number of layers, or an error naming `--layers` when a `k`-layer student of
/// it would not be shallower.
pub fn check_layers(teacher: &Model, k: usize) -> Result<usize> {
    let layers = encoder_layers(teacher);
    if k == 0 || k >= layers {
        return Err(WickError::invalid("--layers", format!("{k}: a student needs between 1 and {} layers (the teacher has {layers})", layers.saturating_sub(1))));
    }
    Ok(layers)
}

/// The `k` teacher layers a student starts from, in order: from all `L` layers, greedily drop
/// `r* = argmax_{r ∈ keep} mean_i cos(e_i(keep ∖ {r}), t_i)` until `k` remain, where
/// `e_i(keep)` is sentence `i`'s embedding by [`student_of`]`(keep)` and `t_i` the teacher's,
/// over `val` (ties to the lower layer). `L + (L−1) + … + (k+1)` evaluations of `val`, where all
/// `C(L, k)` subsets would be 924 for 6 of 12.
pub fn choose_layers(teacher: &Model, config: &Config, k: usize, val: &TextData, batch_size: usize, progress: &dyn Progress) -> Result<Vec<usize>> {
    let layers = check_layers(teacher, k)?;
    let target = embed(teacher, val, batch_size)?;
    let mut keep: Vec<usize> = (0..layers).collect();
    progress.start(&format!("choosing {k} of {layers} layers"), ((k + 1..=layers).sum::<usize>()) as u64);
    while keep.len() > k {
        let mut best: Option<(f64, usize)> = None;
        for r in 0..keep.len() {
            let mut fewer = keep.clone();
            fewer.remove(r);
            let cos = fidelity(&embed(&student_of(teacher, config, &fewer)?, val, batch_size)?, &target)?.cosine_mean;
            if best.is_none_or(|(b, _)| cos > b) {
                best = Some((cos, r));
            }
            progress.inc(1);
        }
        keep.remove(best.expect("keep has more than k ≥ 1 layers").1);
    }
    progress.finish(&format!("student layers: {keep:?} of the teacher's"));
    Ok(keep)
}

/// The `k`-layer student of `teacher` with its layers chosen on `val` by [`choose_layers`];
/// returns it and the teacher layer of each of its layers.
pub fn student(teacher: &Model, config: &Config, k: usize, val: &TextData, batch_size: usize, progress: &dyn Progress) -> Result<(Model, Vec<usize>)> {
    let map = choose_layers(teacher, config, k, val, batch_size, progress)?;
    Ok((student_of(teacher, config, &map)?, map))
}

/// Trains `student` from `teacher` (layers mapped by `map`) on `train`, validating on `val`.
pub fn distill(teacher: &Model, student: &mut Model, map: &[usize], train: &TextData, val: &TextData, cfg: &TextDistillConfig, progress: &dyn Progress) -> Result<TextDistillReport> {
    let frozen: Vec<String> = student.arch.nodes.iter().filter(|n| matches!(n.op, Op::Embedding(_) | Op::PositionEmbedding(_) | Op::EmbeddingRow(_))).map(|n| n.param("weight")).collect();
    let vars = student.trainable_names().into_iter().filter(|n| !frozen.contains(n)).map(|n| student.params[&n].clone()).collect();
    let mut opt = Optimizer::new(OptimizerKind::Adamw, vars, cfg.lr, cfg.weight_decay, 0.0)?;
    let taps_s: Vec<String> = (0..map.len()).map(|j| layer_output(student, j)).collect();
    let taps_t: Vec<String> = map.iter().map(|&t| layer_output(teacher, t)).collect();
    let pad = crate::embedding::pad_id(teacher) as f32;
    let val_teacher = embed(teacher, val, cfg.batch_size)?;
    // The teacher's embeddings once, on its compiled plan; its hidden states (β > 0) per batch.
    let train_teacher = embed(teacher, train, cfg.batch_size)?;
    let width = train_teacher.first().map_or(0, Vec::len);
    let mut report =
        TextDistillReport { layer_map: map.to_vec(), train_sentences: train.len(), steps: 0, train_loss: vec![], val: vec![fidelity(&embed(student, val, cfg.batch_size)?, &val_teacher)?], best: 0 };
    let mut best = (report.val[0].cosine_mean, snapshot(student)?);
    let per_epoch = train.len().div_ceil(cfg.batch_size.max(1));
    let total = cfg.epochs * per_epoch;
    let warmup = (cfg.warmup * total as f64).round() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        progress.start(&format!("distilling, epoch {}/{}", epoch + 1, cfg.epochs), per_epoch as u64);
        let mut sum = 0.0;
        for batch in order.chunks(cfg.batch_size.max(1)) {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| train.ids[i].as_slice()).collect();
            let (ids, mask) = padded(&rows, pad)?;
            let len = ids.dim(1)?;
            let t_out = Tensor::from_vec(batch.iter().flat_map(|&i| train_teacher[i].iter().copied()).collect::<Vec<f32>>(), (batch.len(), width), &Device::Cpu)?;
            let hidden_taps = if cfg.hidden_weight > 0.0 { (taps_s.as_slice(), taps_t.as_slice()) } else { (&[][..], &[][..]) };
            let t_taps = match cfg.hidden_weight > 0.0 {
                true => teacher.with_input_shape(&[len])?.run(&ids, &Run { mode: Mode::Eval, taps: hidden_taps.1, hook: None, rng: None })?.1,
                false => BTreeMap::new(),
            };
            let (s_out, s_taps) = student.with_input_shape(&[len])?.run(&ids, &Run { mode: Mode::Train, taps: hidden_taps.0, hook: None, rng: None })?;
            // Both embeddings are L2-normalised: the cosine is their dot product.
            let cos_loss = (1.0 - (&s_out * &t_out.detach())?.sum(D::Minus1)?.mean_all()?)?;
            let m = mask.unsqueeze(2)?;
            let mut hidden = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
            for (s, t) in hidden_taps.0.iter().zip(hidden_taps.1) {
                let target = t_taps[t].detach();
                let err = (&s_taps[s] - &target)?.broadcast_mul(&m)?.sqr()?.sum_all()?;
                let norm = target.broadcast_mul(&m)?.sqr()?.sum_all()?;
                hidden = (hidden + (err / norm)?)?;
            }
            let loss = (cos_loss + (hidden * (cfg.hidden_weight / map.len() as f64))?)?;
            opt.set_lr(cosine_lr(cfg.lr, report.steps, total, warmup));
            opt.step(&loss.backward()?)?;
            report.steps += 1;
            sum += loss.to_scalar::<f32>()? as f64;
            progress.inc(1);
        }
        report.train_loss.push(sum / per_epoch as f64);
        let f = fidelity(&embed(student, val, cfg.batch_size)?, &val_teacher)?;
        progress.finish(&format!("epoch {}: loss {:.5}, validation cosine mean {:.5}", epoch + 1, sum / per_epoch as f64, f.cosine_mean));
        if f.cosine_mean > best.0 {
            best = (f.cosine_mean, snapshot(student)?);
            report.best = report.val.len();
        }
        report.val.push(f);
    }
    for (k, v) in &student.params {
        v.set(&best.1[k])?;
    }
    Ok(report)
}

/// A copy of every parameter's current value (not a view that later steps would change).
fn snapshot(m: &Model) -> Result<BTreeMap<String, Tensor>> {
    m.tensors().into_iter().map(|(k, t)| Ok((k, t.copy()?))).collect()
}

/// Ids `[N, L]` (f32) padded with `pad` to the longest row, and the mask `[N, L]` of real
/// tokens.
fn padded(rows: &[&[u32]], pad: f32) -> Result<(Tensor, Tensor)> {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![pad; rows.len() * len];
    let mut mask = vec![0f32; rows.len() * len];
    for (i, r) in rows.iter().enumerate() {
        for (k, &id) in r.iter().enumerate() {
            ids[i * len + k] = id as f32;
            mask[i * len + k] = 1.0;
        }
    }
    Ok((Tensor::from_vec(ids, (rows.len(), len), &Device::Cpu)?, Tensor::from_vec(mask, (rows.len(), len), &Device::Cpu)?))
}

/// The `text_distill` step's settings (recipe fields; `wick distill --layers`'s flags).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextDistillSettings {
    /// The student's layers as a share of the teacher's (rounded, at least 1).
    pub depth: f64,
    pub epochs: crate::train::Epochs,
    pub lr: crate::train::LearningRate,
    pub batch_size: usize,
    /// `β`, the weight of the hidden-state term.
    pub hidden_weight: f64,
}

impl Default for TextDistillSettings {
    fn default() -> Self {
        TextDistillSettings { depth: 0.5, epochs: crate::train::Epochs::Auto, lr: crate::train::LearningRate::Auto, batch_size: 64, hidden_weight: 1.0 }
    }
}

/// AdamW's rate with `lr: auto`: the usual rate for fine-tuning BERT-sized encoders.
pub const AUTO_LR: f64 = 1e-4;

impl TextDistillSettings {
    /// Range checks.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.depth > 0.0 && self.depth < 1.0) {
            return Err(format!("field 'depth' is {}; it must lie in (0, 1)", self.depth));
        }
        if !(self.hidden_weight >= 0.0 && self.hidden_weight.is_finite()) {
            return Err(format!("field 'hidden_weight' is {}; it must be a non-negative number", self.hidden_weight));
        }
        super::check_training(self.batch_size)
    }

    /// The student's layers for a teacher of `layers`.
    pub fn layers(&self, layers: usize) -> usize {
        ((self.depth * layers as f64).round() as usize).max(1)
    }

    /// The training settings for `sentences` training sentences and `seed`.
    pub fn config(&self, sentences: usize, seed: u64, max_epochs: Option<usize>) -> TextDistillConfig {
        use crate::train::budget::{AUTO_MAX_EPOCHS, AUTO_MIN_EPOCHS, AUTO_STEPS};
        let epochs = self.epochs.resolve(sentences, self.batch_size, AUTO_STEPS, (AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS));
        let lr = match self.lr {
            crate::train::LearningRate::Auto => AUTO_LR,
            crate::train::LearningRate::Fixed(v) => v,
        };
        TextDistillConfig { epochs: max_epochs.map_or(epochs, |m| epochs.min(m)), batch_size: self.batch_size, lr, weight_decay: 0.01, warmup: 0.06, hidden_weight: self.hidden_weight, seed }
    }
}

impl Pass for TextDistillSettings {
    fn apply(&self, _: super::State, _: &super::Ctx) -> Result<super::Applied> {
        Err(super::text_step_on_classifier("text_distill"))
    }
    fn plan(&self, _: super::Sketch, _: &super::Ctx) -> Result<(super::Sketch, String)> {
        Err(super::text_step_on_classifier("text_distill"))
    }
}
