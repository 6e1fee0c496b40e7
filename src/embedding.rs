//! Sentence embeddings: text data for a text encoder (one sentence per line, tokenised with the
//! model's tokenizer), running the encoder batch by batch with each batch padded to its longest
//! sentence only, and the fidelity of one model's embeddings to another's (per-sentence cosine
//! similarity, nearest-neighbour agreement). Uses `hf`, `model`.

use crate::error::{Result, WickError};
use crate::model::arch::Op;
use crate::model::forward::{Mode, Run};
use crate::model::Model;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;

/// Tokenised sentences.
pub struct TextData {
    pub name: String,
    /// Each sentence's token ids, special tokens included.
    pub ids: Vec<Vec<u32>>,
}

impl TextData {
    /// The non-empty lines of `path`, tokenised with the tokenizer of model directory
    /// `model_dir` (lower-cased first when its `sentence_bert_config.json` says
    /// `do_lower_case`), each truncated to `max_len` tokens.
    pub fn read(path: &Path, model_dir: &Path, max_len: usize) -> Result<TextData> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| WickError::io(path, e))?;
        let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        if lines.is_empty() {
            return Err(WickError::data(&name, "holds no sentence (one per line)"));
        }
        let lines = match crate::hf::lower_cases(model_dir)? {
            true => lines.iter().map(|l| l.to_lowercase()).collect(),
            false => lines,
        };
        let ids = crate::hf::tokenize(&crate::hf::tokenizer(model_dir, max_len)?, &lines, &name)?;
        Ok(TextData { name, ids })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The model's output for every sentence, in batches of `batch_size` each padded with the
/// model's pad id to its own longest sentence (the padding is masked, so it changes nothing but
/// the work): one row per sentence. Runs on the compiled float plan, compiled once for every
/// length.
pub fn embed(model: &Model, data: &TextData, batch_size: usize) -> Result<Vec<Vec<f32>>> {
    embed_on_plan(&crate::runtime::plan::Plan::float(model)?, model, data, batch_size)
}

/// [`embed`] on `plan`, the compiled float plan of `model`.
pub fn embed_on_plan(plan: &crate::runtime::plan::Plan, model: &Model, data: &TextData, batch_size: usize) -> Result<Vec<Vec<f32>>> {
    embed_with(model, data, batch_size, |x| plan.predict(x))
}

/// [`embed`] on candle's executor (the oracle of the compiled plan).
pub fn embed_reference(model: &Model, data: &TextData, batch_size: usize) -> Result<Vec<Vec<f32>>> {
    embed_with(model, data, batch_size, |x| Ok(model.with_input_shape(&x.dims()[1..])?.run(x, &Run { mode: Mode::Eval, taps: &[], hook: None, rng: None })?.0))
}

/// The id the model's attention and pooling mask out (0 when it has neither).
pub fn pad_id(model: &Model) -> i64 {
    let pad = model.arch.nodes.iter().find_map(|n| match &n.op {
        Op::Attention(c) => Some(c.pad_id),
        Op::MaskedMean(c) => Some(c.pad_id),
        Op::MaskedPool(c) => Some(c.pad_id),
        _ => None,
    });
    pad.unwrap_or(0)
}

/// The output of `run` (a batch of padded ids `[N, L]` to `[N, …]`) for every sentence, batched
/// and padded as [`embed`] does for `model` (whose pad id and length limit apply).
pub fn embed_with_predict(model: &Model, data: &TextData, batch_size: usize, run: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<Vec<f32>>> {
    embed_with(model, data, batch_size, run)
}

fn embed_with(model: &Model, data: &TextData, batch_size: usize, run: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<Vec<f32>>> {
    let pad = pad_id(model) as f32;
    let mut out = Vec::with_capacity(data.len());
    for batch in data.ids.chunks(batch_size.max(1)) {
        let len = batch.iter().map(Vec::len).max().unwrap_or(1);
        let limit = model.input_shape()[0];
        if len > limit {
            return Err(WickError::data(&data.name, format!("a sentence has {len} tokens; the model takes at most {limit}")));
        }
        let mut x = vec![pad; batch.len() * len];
        for (row, ids) in x.chunks_mut(len).zip(batch) {
            row.iter_mut().zip(ids).for_each(|(v, &id)| *v = id as f32);
        }
        let y = run(&Tensor::from_vec(x, (batch.len(), len), &Device::Cpu)?)?;
        out.extend(y.flatten_from(1)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// How close one set of embeddings is to another's (the teacher's), row for row.
#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    pub sentences: usize,
    /// Mean and least of the per-sentence cosine similarity `a·b / (‖a‖‖b‖)`.
    pub cosine_mean: f64,
    pub cosine_min: f64,
    /// Share of sentences whose nearest neighbour among the other sentences (by cosine) is the
    /// same under both models.
    pub nn_agreement: f64,
}

/// `a·b / (‖a‖‖b‖)` in f64 (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Index of each row's most cosine-similar other row (the first on ties).
pub fn nearest_neighbours(rows: &[Vec<f32>]) -> Vec<usize> {
    (0..rows.len())
        .map(|i| {
            let mut best = (f64::NEG_INFINITY, i);
            for (j, r) in rows.iter().enumerate().filter(|&(j, _)| j != i) {
                let c = cosine(&rows[i], r);
                if c > best.0 {
                    best = (c, j);
                }
            }
            best.1
        })
        .collect()
}

/// The fidelity of `student` to `teacher` (equal numbers of rows of equal width).
pub fn fidelity(student: &[Vec<f32>], teacher: &[Vec<f32>]) -> Result<Fidelity> {
    if student.len() != teacher.len() {
        return Err(WickError::invalid("fidelity", format!("{} embeddings against the teacher's {}", student.len(), teacher.len())));
    }
    if let Some((a, b)) = student.iter().zip(teacher).find(|(a, b)| a.len() != b.len()) {
        return Err(WickError::invalid("fidelity", format!("embeddings of {} values against the teacher's {}", a.len(), b.len())));
    }
    let cos: Vec<f64> = student.iter().zip(teacher).map(|(a, b)| cosine(a, b)).collect();
    let n = cos.len().max(1) as f64;
    let (ns, nt) = (nearest_neighbours(student), nearest_neighbours(teacher));
    Ok(Fidelity {
        sentences: cos.len(),
        cosine_mean: cos.iter().sum::<f64>() / n,
        cosine_min: cos.iter().copied().fold(f64::INFINITY, f64::min),
        nn_agreement: ns.iter().zip(&nt).filter(|(a, b)| a == b).count() as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_neighbours_by_hand() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        let t = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0], vec![0.1, 0.9]];
        assert_eq!(nearest_neighbours(&t), vec![1, 0, 3, 2]);
        assert_eq!(fidelity(&t, &t).unwrap().nn_agreement, 1.0);
        // Row 3 turned to the diagonal: its neighbour becomes row 1; the others keep theirs.
        let s = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0], vec![0.7, 0.7]];
        let f = fidelity(&s, &t).unwrap();
        assert_eq!(nearest_neighbours(&s), vec![1, 0, 3, 1]);
        assert_eq!(f.nn_agreement, 0.75);
        assert!((f.cosine_min - cosine(&s[3], &t[3])).abs() < 1e-12);
        assert!(fidelity(&s[..3], &t).is_err());
    }
}
