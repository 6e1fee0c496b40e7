//! The normalising steps of the compiled plans: LayerNorm over trailing dims, softmax along a
//! dim, and a BatchNorm that no conv or linear absorbed (a per-channel affine map in eval
//! mode), each over plain buffers in the layout it needs.

use super::Value;

crate::wide_f32_fn!(
    /// LayerNorm of each row of `inner` values, in place: `μ = Σx/n`, `σ² = Σ(x − μ)²/n`,
    /// `y = (x − μ)/√(σ² + eps)`, then `y·γ + β` when affine (sums in f64, so long rows lose
    /// nothing to accumulation; in 8 interleaved partial sums, which the compiler keeps in
    /// vector lanes, on AVX-512 or AVX2 where the CPU has them).
    pub(super) fn layer_norm(data: &mut [f32], inner: usize, eps: f64, affine: Option<&(Vec<f32>, Vec<f32>)>) => rows
);

/// [`layer_norm`] in whatever instruction set the caller was compiled for: the training op's
/// row function, so that the plans and the executor give the same bits.
#[inline(always)]
fn rows(data: &mut [f32], inner: usize, eps: f64, affine: Option<&(Vec<f32>, Vec<f32>)>) {
    crate::model::layernorm_op::normalize_rows(data, inner, eps, affine.map(|(g, b)| (g.as_slice(), b.as_slice())));
}

/// Softmax along full-tensor dim `dim` of `v` (logical layout), in place:
/// `y_i = exp(x_i − max x) / Σ_j exp(x_j − max x)` over each line along `dim`; with `log` its
/// logarithm, `y_i = (x_i − max x) − ln Σ_j exp(x_j − max x)`, as candle's and PyTorch's
/// log-softmax compute it (never the log of a quotient that underflowed to 0).
pub(super) fn softmax(v: &mut Value, dim: usize, log: bool) {
    let len = v.dims[dim];
    let inner: usize = v.dims[dim + 1..].iter().product();
    for block in v.data.chunks_mut(len * inner) {
        for i in 0..inner {
            let max = (0..len).map(|k| block[k * inner + i]).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..len).map(|k| (block[k * inner + i] - max).exp()).sum();
            let ln_sum = sum.ln();
            for k in 0..len {
                let x = &mut block[k * inner + i];
                *x = match log {
                    true => (*x - max) - ln_sum,
                    false => (*x - max).exp() / sum,
                };
            }
        }
    }
}

/// A BatchNorm in eval mode as `y = x·scale_c + shift_c` with `scale_c = γ_c/√(σ²_c + eps)`,
/// `shift_c = β_c − μ_c·scale_c`, on channel axis 1 of `v` in either layout.
pub(super) fn channel_affine(v: &mut Value, scale: &[f32], shift: &[f32]) {
    let c = scale.len();
    if v.channels_last {
        for px in v.data.chunks_mut(c) {
            px.iter_mut().zip(scale).zip(shift).for_each(|((x, &s), &t)| *x = *x * s + t);
        }
    } else {
        let plane: usize = v.dims[2..].iter().product();
        for (i, p) in v.data.chunks_mut(plane).enumerate() {
            let (s, t) = (scale[i % c], shift[i % c]);
            p.iter_mut().for_each(|x| *x = *x * s + t);
        }
    }
}

/// `x·scale_j + shift_j` along each row of `data` (rows of `scale.len()` values: a value's last
/// axis in logical order).
pub(super) fn affine_rows(data: &mut [f32], scale: &[f32], shift: &[f32]) {
    for row in data.chunks_mut(scale.len()) {
        row.iter_mut().zip(scale).zip(shift).for_each(|((x, &s), &t)| *x = *x * s + t);
    }
}

/// PReLU on channel axis 1 of `v` in either layout: `y = x` where `x > 0`, else `x·slope_c`
/// (`slope` of one value for every channel, or one).
pub(super) fn prelu(v: &mut Value, slope: &[f32]) {
    let f = |x: &mut f32, s: f32| {
        if *x <= 0.0 {
            *x *= s;
        }
    };
    match (slope, v.channels_last) {
        (&[s], _) => v.data.iter_mut().for_each(|x| f(x, s)),
        (_, true) => v.data.chunks_mut(slope.len()).for_each(|px| px.iter_mut().zip(slope).for_each(|(x, &s)| f(x, s))),
        (_, false) => {
            let plane: usize = v.dims[2..].iter().product();
            v.data.chunks_mut(plane).enumerate().for_each(|(i, p)| p.iter_mut().for_each(|x| f(x, slope[i % slope.len()])));
        }
    }
}
