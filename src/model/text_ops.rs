//! The ops of text encoders, as compositions of candle ops (each differentiable, so training
//! and distillation backpropagate through them): token and position embeddings, multi-head
//! attention with a padding mask (and MPNet's relative position bias), masked mean and other
//! poolings, and L2 normalisation. Token ids travel as f32 (exact below 2²⁴). Uses
//! `model::arch`.

use super::arch::{AttentionCfg, EmbeddingCfg, L2NormalizeCfg, MaskedPoolCfg, PoolMode, RelativePositionBiasCfg};
use crate::error::{Result, WickError};
use candle_core::{DType, Tensor, D};

/// Rows of `weight [V, D]` for the ids `[N, L]`: `[N, L, D]`. An id that is not an integer in
/// `0..V` is an error naming `node`.
pub fn embedding(node: &str, ids: &Tensor, weight: &Tensor, c: &EmbeddingCfg) -> Result<Tensor> {
    let (n, l) = ids.dims2()?;
    let flat: Vec<f32> = ids.flatten_all()?.to_vec1()?;
    if let Some(bad) = flat.iter().find(|&&v| !(v >= 0.0 && (v as usize) < c.num_embeddings && v.fract() == 0.0)) {
        return Err(WickError::node(node, format!("token id {bad} is not an integer in 0..{}", c.num_embeddings)));
    }
    let idx = Tensor::from_vec(flat.iter().map(|&v| v as u32).collect::<Vec<_>>(), n * l, ids.device())?;
    Ok(weight.index_select(&idx, 0)?.reshape((n, l, c.embedding_dim))?)
}

/// `x [N, L, D] + weight[offset..offset + L]`.
pub fn add_positions(x: &Tensor, weight: &Tensor, offset: usize) -> Result<Tensor> {
    super::add_rows_op::add_rows(x, &weight.narrow(0, offset, x.dim(1)?)?)
}

/// `[weight; x]` along the positions of `x [N, L, D]` (`PrependRowsCfg`): `[N, R + L, D]`.
pub fn prepend_rows(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (n, _, d) = x.dims3()?;
    let rows = weight.unsqueeze(0)?.broadcast_as((n, weight.dim(0)?, d))?.contiguous()?;
    Ok(Tensor::cat(&[&rows, x], 1)?)
}

/// `x + weight[index]` at every position.
pub fn add_row(x: &Tensor, weight: &Tensor, index: usize) -> Result<Tensor> {
    Ok(x.broadcast_add(&weight.narrow(0, index, 1)?.squeeze(0)?)?)
}

/// `1` where the id is not `pad_id`, else `0`: `[N, L]` f32.
fn keep_mask(ids: &Tensor, pad_id: i64) -> Result<Tensor> {
    Ok(ids.ne(pad_id as f64)?.to_dtype(DType::F32)?)
}

/// The bias `[N, H, L, L]` of `RelativePositionBiasCfg` for token ids `[N, L]`: the rows
/// `weight [buckets, H]` of each pair's bucket, the same for every sample (a broadcast view).
pub fn relative_position_bias(ids: &Tensor, weight: &Tensor, c: &RelativePositionBiasCfg) -> Result<Tensor> {
    let (n, l) = ids.dims2()?;
    let buckets: Vec<u32> = c.buckets(l).into_iter().map(|b| b as u32).collect();
    let idx = Tensor::from_vec(buckets, l * l, ids.device())?;
    let per_pair = weight.index_select(&idx, 0)?.reshape((l, l, c.num_heads))?;
    Ok(per_pair.permute((2, 0, 1))?.unsqueeze(0)?.broadcast_as((n, c.num_heads, l, l))?)
}

/// Multi-head attention (see `AttentionCfg`) on `q, k, v [N, L, D]`, masked by token ids
/// `[N, L]` when given, with an optional additive bias `[N, H, L, L]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, ids: Option<&Tensor>, bias: Option<&Tensor>, c: &AttentionCfg) -> Result<Tensor> {
    let (n, l, d) = q.dims3()?;
    let (h, hd) = (c.num_heads, d / c.num_heads);
    let heads = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((n, l, h, hd))?.transpose(1, 2)?.contiguous()?) };
    let (qh, kh, vh) = (heads(q)?, heads(k)?, heads(v)?);
    let mut scores = (qh.matmul(&kh.t()?.contiguous()?)? * c.score_scale(d))?;
    if let Some(b) = bias {
        scores = scores.broadcast_add(b)?;
    }
    if let Some(ids) = ids {
        // `(1 − keep)·f32::MIN` added to the scores of padded keys, as Hugging Face's BERT does.
        let masked = ((keep_mask(ids, c.pad_id)?.affine(-1.0, 1.0)? * f32::MIN as f64)?).reshape((n, 1, 1, l))?;
        scores = scores.broadcast_add(&masked)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs.matmul(&vh)?.transpose(1, 2)?.reshape((n, l, d))?)
}

/// `(Σ_t w_t·x_t, max(Σ_t w_t, 1e-9))` over the positions of `x [N, L, D]` for weights
/// `w [N, L]`: `[N, D]` and `[N, 1]`, the numerator and denominator of every mean pooling.
fn weighted_sum(x: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor)> {
    let w = w.unsqueeze(2)?;
    Ok((x.broadcast_mul(&w)?.sum(1)?, w.sum(1)?.clamp(1e-9f32, f32::MAX)?))
}

/// `Σ_t m_t·x_t / max(Σ_t m_t, 1e-9)` over the positions of `x [N, L, D]`, `m` the keep mask of
/// `ids`: `[N, D]`.
pub fn masked_mean(x: &Tensor, ids: &Tensor, pad_id: i64) -> Result<Tensor> {
    let (sum, count) = weighted_sum(x, &keep_mask(ids, pad_id)?)?;
    Ok(sum.broadcast_div(&count)?)
}

/// The pooling `c.mode` (see `PoolMode`) of `x [N, L, D]` over the kept positions of `ids`:
/// `[N, D]`.
pub fn masked_pool(x: &Tensor, ids: &Tensor, c: &MaskedPoolCfg) -> Result<Tensor> {
    let (n, l, d) = x.dims3()?;
    let keep = keep_mask(ids, c.pad_id)?;
    match c.mode {
        PoolMode::Max => {
            let kept = keep.unsqueeze(2)?.broadcast_as((n, l, d))?.ne(0f64)?;
            let padding = Tensor::full(f32::NEG_INFINITY, (n, l, d), x.device())?;
            Ok(kept.where_cond(x, &padding)?.max(1)?)
        }
        PoolMode::MeanSqrtLen => {
            let (sum, count) = weighted_sum(x, &keep)?;
            Ok(sum.broadcast_div(&count.sqrt()?)?)
        }
        PoolMode::WeightedMean => {
            let position = Tensor::arange(1f32, l as f32 + 1.0, x.device())?.unsqueeze(0)?;
            let (sum, total) = weighted_sum(x, &keep.broadcast_mul(&position)?)?;
            Ok(sum.broadcast_div(&total)?)
        }
        PoolMode::Last => {
            // A one-hot weight on each sample's last kept position (none: all zero).
            let m: Vec<f32> = keep.flatten_all()?.to_vec1()?;
            let mut onehot = vec![0f32; n * l];
            for (row, w) in m.chunks(l.max(1)).zip(onehot.chunks_mut(l.max(1))) {
                if let Some(t) = row.iter().rposition(|&v| v != 0.0) {
                    w[t] = 1.0;
                }
            }
            let w = Tensor::from_vec(onehot, (n, l, 1), x.device())?;
            Ok(x.broadcast_mul(&w)?.sum(1)?)
        }
    }
}

/// `x / max(‖x‖₂, eps)` over the last dim.
pub fn l2_normalize(x: &Tensor, c: &L2NormalizeCfg) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(c.eps as f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}
