//! Ops that move or reduce one sample axis, on tensors with the batch first: `transpose`
//! (`y = xᵀ` over two dims), `mean` (`y = (1/n)·Σᵢ x[…, i, …]` over one dim) and `amax`
//! (`y = maxᵢ x[…, i, …]`). Their gradients are candle's: a transpose's is the transpose back, a
//! mean's is `1/n` broadcast along the dim, a maximum's goes to the positions holding it.

use super::arch::{ReduceCfg, TransposeCfg};
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

/// `x.mean(dim, keepdim)`.
pub fn mean(x: &Tensor, c: &ReduceCfg) -> Result<Tensor> {
    let d = sample_dim(c.dim, x.rank() - 1).map_err(|m| WickError::invalid("mean", m))? + 1;
    Ok(if c.keepdim { x.mean_keepdim(d)? } else { x.mean(d)? })
}

/// `x.amax(dim, keepdim)`.
pub fn amax(x: &Tensor, c: &ReduceCfg) -> Result<Tensor> {
    let d = sample_dim(c.dim, x.rank() - 1).map_err(|m| WickError::invalid("amax", m))? + 1;
    Ok(if c.keepdim { x.max_keepdim(d)? } else { x.max(d)? })
}
