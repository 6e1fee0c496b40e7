//! Candle implementations of the node ops, each differentiable (built from candle ops that have
//! backward passes). Shapes here include the batch dim. Uses `model::arch`, `model::graph`.

use super::arch::{BatchNormCfg, Conv1dCfg, Conv2dCfg, FlattenCfg, LayerNormCfg, Op};
use super::graph::{pool_params, sample_dim};
use super::pool_op::{PoolGeom, PoolKind};
use crate::error::{Result, WickError};
use candle_core::{Tensor, D};

/// `y = x · Wᵀ + b` over the last dim (any number of leading dims): one op with its own
/// backward (linear_op.rs).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    super::linear_op::linear(x, w, b)
}

/// Adds a per-channel bias on axis 1 of an `[N, C, …]` tensor.
fn add_channel_bias(y: Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let Some(b) = b else { return Ok(y) };
    let mut shape = vec![1usize; y.rank()];
    shape[1] = b.dim(0)?;
    Ok(y.broadcast_add(&b.reshape(shape)?)?)
}

/// 1-d cross-correlation, PyTorch semantics (conv_op.rs; with `train`, patches are kept for
/// the backward pass).
pub fn conv1d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &Conv1dCfg, train: bool) -> Result<Tensor> {
    let y = super::conv_op::conv1d(x, w, c.stride, c.padding, c.dilation, c.groups, train)?;
    add_channel_bias(y, b)
}

/// 2-d cross-correlation, PyTorch semantics (conv_op.rs: im2col + GEMM per group, or the direct
/// depthwise kernel).
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &Conv2dCfg, train: bool) -> Result<Tensor> {
    let spec = super::conv_op::ConvSpec { stride: c.stride.hw(), pad: c.padding.hw(), dil: c.dilation.hw(), groups: c.groups };
    let y = super::conv_op::conv2d(x, w, spec, train)?;
    add_channel_bias(y, b)
}

/// BatchNorm, eval: `y = (x − μ_run) / √(σ²_run + eps) · γ + β`.
/// Train: batch statistics (biased variance) normalise, and the running statistics update as in
/// PyTorch: `run ← (1 − m)·run + m·stat`, with the *unbiased* batch variance `σ²·n/(n−1)`.
/// With `relu`, `max(y, 0)` in the same op.
pub fn batchnorm(x: &Tensor, p: BnParams, c: &BatchNormCfg, train: bool, relu: bool) -> Result<Tensor> {
    // Both modes run one fused op (bn_train.rs) with a hand-written backward.
    let ch = x.dim(1)?;
    let ones;
    let zeros;
    let (g, b) = match (p.weight, p.bias) {
        (Some(g), Some(b)) => (g, b),
        _ => {
            ones = Tensor::ones(ch, x.dtype(), x.device())?;
            zeros = Tensor::zeros(ch, x.dtype(), x.device())?;
            (&ones, &zeros)
        }
    };
    if !train {
        return super::bn_train::forward_fixed(x, g, b, p.running_mean.as_tensor(), p.running_var.as_tensor(), c.eps, relu);
    }
    let (y, mean, var) = super::bn_train::forward(x, g, b, c.eps, relu)?;
    let n = x.elem_count() / ch;
    let m = c.momentum;
    let unbiased: Vec<f32> = var.iter().map(|&v| (v * n as f64 / (n.max(2) - 1) as f64) as f32).collect();
    let mean: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let dev = x.device();
    let new_mean = ((p.running_mean.as_tensor() * (1.0 - m))? + (Tensor::from_vec(mean, ch, dev)? * m)?)?;
    let new_var = ((p.running_var.as_tensor() * (1.0 - m))? + (Tensor::from_vec(unbiased, ch, dev)? * m)?)?;
    p.running_mean.set(&new_mean)?;
    p.running_var.set(&new_var)?;
    Ok(y)
}

/// The tensors of one BatchNorm node.
pub struct BnParams<'a> {
    pub weight: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub running_mean: &'a candle_core::Var,
    pub running_var: &'a candle_core::Var,
}

/// LayerNorm over the trailing `normalized_shape`: `y = (x − μ) / √(σ² + eps) · γ + β` (biased σ²).
pub fn layernorm(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, c: &LayerNormCfg) -> Result<Tensor> {
    let inner: usize = c.normalized_shape.iter().product();
    let affine = w.zip(b).map(|(w, b)| Ok::<_, crate::error::WickError>((w.reshape(inner)?, b.reshape(inner)?))).transpose()?;
    super::layernorm_op::layer_norm(x, inner, c.eps, affine.as_ref().map(|(w, b)| (w, b)))
}

/// GroupNorm of an `[N, C, …]` tensor: each sample's `groups` groups of `C/groups` consecutive
/// channels normalised over their channels and positions, `(x − μ)/√(σ² + eps)` (σ² biased),
/// then `·w_c + b_c` per channel when `affine` holds them.
pub fn group_norm(x: &Tensor, groups: usize, eps: f64, affine: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let g = x.reshape((dims[0], groups, ()))?;
    let centered = g.broadcast_sub(&g.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centered.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)?;
    match affine {
        Some((w, b)) => channel_affine(&y, w, b, false),
        None => Ok(y),
    }
}

/// The pooling op's kind and window (`h`, `w` left 0), or `None` for other ops. 1-d pools are
/// 2-d pools over a height of 1.
pub fn pool_geom(op: &Op) -> Option<PoolGeom> {
    let (c, two_d, kind) = match op {
        Op::MaxPool1d(c) => (c, false, PoolKind::Max),
        Op::MaxPool2d(c) => (c, true, PoolKind::Max),
        Op::AvgPool1d(c) => (c, false, PoolKind::Avg { count_include_pad: c.count_include_pad }),
        Op::AvgPool2d(c) => (c, true, PoolKind::Avg { count_include_pad: c.count_include_pad }),
        _ => return None,
    };
    let (k, s, p) = pool_params(c.kernel_size, c.stride, c.padding);
    Some(match two_d {
        true => PoolGeom { kind, k, stride: s, pad: p, ceil: c.ceil_mode, h: 0, w: 0 },
        false => PoolGeom { kind, k: (1, k.0), stride: (1, s.0), pad: (0, p.0), ceil: c.ceil_mode, h: 0, w: 0 },
    })
}

/// Max or average pooling, PyTorch floor mode with padding skipped (pool_op.rs): `g` from
/// [`pool_geom`]; a 1-d input gets a height of 1.
pub fn pool(x: &Tensor, g: PoolGeom) -> Result<Tensor> {
    use super::pool_op::pool2d;
    if x.rank() == 4 {
        return pool2d(x, g);
    }
    Ok(pool2d(&x.unsqueeze(2)?, g)?.squeeze(2)?)
}

/// Mean over every dim after the channel axis: `[N, C, …] → [N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    Ok(x.reshape((n, c, ()))?.mean(2)?)
}

/// Flatten, PyTorch dims (counted with the batch).
pub fn flatten(x: &Tensor, c: &FlattenCfg) -> Result<Tensor> {
    let rank = x.rank() - 1;
    let a = sample_dim(c.start_dim, rank).map_err(|m| WickError::invalid("flatten", m))? + 1;
    let b = sample_dim(c.end_dim, rank).map_err(|m| WickError::invalid("flatten", m))? + 1;
    Ok(x.flatten(a, b)?)
}

/// Softmax along a PyTorch dim: `e^(x_i − max) / Σ e^(x_j − max)`.
pub fn softmax(x: &Tensor, dim: i64) -> Result<Tensor> {
    let d = sample_dim(dim, x.rank() - 1).map_err(|m| WickError::invalid("softmax", m))? + 1;
    Ok(candle_nn::ops::softmax(x, d)?)
}

/// Fixed per-channel arithmetic on axis 1 of an `[N, C, …]` tensor (with `last`, on its last axis):
/// `y = x · w_c + b_c`.
pub fn channel_affine(x: &Tensor, w: &Tensor, b: &Tensor, last: bool) -> Result<Tensor> {
    let mut shape = vec![1usize; x.rank()];
    shape[if last { x.rank() - 1 } else { 1 }] = w.dim(0)?;
    Ok(x.broadcast_mul(&w.reshape(shape.clone())?)?.broadcast_add(&b.reshape(shape)?)?)
}

/// PReLU on axis 1 of an `[N, C, …]` tensor: `y = x` where `x > 0`, else `w_c·x` (`w` of one
/// value for every channel, or one). As a select rather than `max + w·min`, so that its gradients
/// are PyTorch's at 0 too: `∂y/∂x = w_c` and `∂y/∂w_c = x` wherever `x ≤ 0`.
pub fn prelu(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; x.rank()];
    shape[1] = w.dim(0)?;
    let negative = x.broadcast_mul(&w.reshape(shape)?)?;
    Ok(x.gt(0.0)?.where_cond(x, &negative)?)
}

/// Log-softmax along a PyTorch dim: `x_i − max − ln Σ e^(x_j − max)`.
pub fn log_softmax(x: &Tensor, dim: i64) -> Result<Tensor> {
    let d = sample_dim(dim, x.rank() - 1).map_err(|m| WickError::invalid("log_softmax", m))? + 1;
    Ok(candle_nn::ops::log_softmax(x, d)?)
}

/// Inverted dropout: keep with probability `1 − p`, scale kept values by `1 / (1 − p)`.
pub fn dropout(x: &Tensor, p: f64, rng: &mut impl rand::RngExt) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
    Ok(x.mul(&Tensor::from_vec(mask, x.dims(), x.device())?)?)
}
