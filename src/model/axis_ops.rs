//! Ops that move, grow, cut or reduce sample axes, on tensors with the batch first: `transpose`
//! (`y = xᵀ` over two dims), `narrow` (`y[…, i, …] = x[…, start + i, …]`, `i < length`), `pad` (`y[…, i + b, …] = x[…, i, …]`, `value` elsewhere), `mean`
//! (`y = (1/n)·Σᵢ x[…, i, …]` over one dim) and `amax` (`y = maxᵢ x[…, i, …]`). Their gradients
//! are candle's: a transpose's is the transpose back, a narrow's the gradient placed at its
//! positions (zeros elsewhere), a pad's the gradient's interior, a mean's is
//! `1/n` broadcast along the dim, a maximum's goes to the positions holding it.

use super::arch::{NarrowCfg, PadCfg, ReduceCfg, TransposeCfg};
use super::graph::sample_dim;
use crate::error::{Result, WickError};
use candle_core::Tensor;

/// `x.transpose(dim0, dim1)`, laid out contiguously.
pub fn transpose(x: &Tensor, c: &TransposeCfg) -> Result<Tensor> {
    let rank = x.rank() - 1;
    let a = sample_dim(c.dim0, rank).map_err(|m| WickError::invalid("transpose", m))? + 1;
    let b = sample_dim(c.dim1, rank).map_err(|m| WickError::invalid("transpose", m))? + 1;
    if a == b {
        return Ok(x.clone());
    }
    Ok(x.transpose(a, b)?.contiguous()?)
}

/// `x.narrow(dim, start, length)`, laid out contiguously.
pub fn narrow(x: &Tensor, c: &NarrowCfg) -> Result<Tensor> {
    let d = sample_dim(c.dim, x.rank() - 1).map_err(|m| WickError::invalid("narrow", m))? + 1;
    let start = c.first(x.dim(d)?).map_err(|m| WickError::invalid("narrow", m))?;
    Ok(x.narrow(d, start, c.length)?.contiguous()?)
}

/// `F.pad(x, padding, value)`: each padded dim joined with `value`-filled blocks before and
/// after it.
pub fn pad(x: &Tensor, c: &PadCfg) -> Result<Tensor> {
    let pads = c.per_dim(x.rank() - 1).map_err(|m| WickError::invalid("pad", m))?;
    let mut y = x.clone();
    for (d, &(before, after)) in pads.iter().enumerate().filter(|(_, p)| **p != (0, 0)) {
        let block = |len: usize| -> Result<Option<Tensor>> {
            let mut dims = y.dims().to_vec();
            dims[d + 1] = len;
            Ok((len > 0).then(|| Tensor::full(c.value as f32, dims, y.device())).transpose()?)
        };
        let parts: Vec<Tensor> = [block(before)?, Some(y.clone()), block(after)?].into_iter().flatten().collect();
        y = Tensor::cat(&parts, d + 1)?;
    }
    Ok(y)
}

/// `x.mean(dim, keepdim)`.
pub fn mean(x: &Tensor, c: &ReduceCfg) -> Result<Tensor> {
    along_last(x, c, "mean", |t, d| t.mean(d))
}

/// `x.sum(dim, keepdim)`.
pub fn sum(x: &Tensor, c: &ReduceCfg) -> Result<Tensor> {
    along_last(x, c, "sum", |t, d| t.sum(d))
}

/// `x.amax(dim, keepdim)`.
pub fn amax(x: &Tensor, c: &ReduceCfg) -> Result<Tensor> {
    along_last(x, c, "amax", |t, d| t.max(d))
}

/// `reduce` over `c.dim` with that dim moved last first: candle reduces the last dim along
/// contiguous rows, and any other through per-element index arithmetic, several times slower
/// (and so is the backward of the broadcast). The other dims keep their order; the values
/// each output reduces come in the same order either way.
fn along_last(x: &Tensor, c: &ReduceCfg, op: &str, reduce: impl Fn(&Tensor, usize) -> candle_core::Result<Tensor>) -> Result<Tensor> {
    let d = sample_dim(c.dim, x.rank() - 1).map_err(|m| WickError::invalid(op, m))? + 1;
    let last = x.rank() - 1;
    let moved = match d == last {
        true => x.clone(),
        false => x.permute((0..x.rank()).filter(|&k| k != d).chain([d]).collect::<Vec<_>>())?.contiguous()?,
    };
    let y = reduce(&moved, last)?;
    Ok(if c.keepdim { y.unsqueeze(d)? } else { y })
}
