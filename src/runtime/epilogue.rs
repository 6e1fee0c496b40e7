//! The part of a compiled layer's GEMM epilogue that does not depend on the layer's kind:
//! walking a register tile's rows, compiling the layer's per-row arithmetic for 8-wide vectors
//! where the CPU has AVX2 (the arithmetic is identical either way), and what can follow any
//! layer's row: a residual add fused in ([`Residual`]).

use crate::model::act_op::Act;
use std::mem::MaybeUninit;

/// What a layer writes for one output row: `out[j]` from the accumulator `acc[j]` of channel
/// `c0 + j`, for every `j < acc.len()`. `row` is the row's index in the layer's output.
pub trait FinishRow<A, O> {
    /// Implementations are `#[inline(always)]`, so that [`finish_tile`]'s AVX2 copy vectorises
    /// them.
    fn row(&self, acc: &[A], row: usize, c0: usize, out: &mut [MaybeUninit<O>]);
}

/// For each row `r` of a tile (`out.len() / ldo` rows, output rows `first + r`): `layer.row`
/// on `acc[r·stride..][..n]` into `out[r·ldo + c0..][..n]`, the columns of channels
/// `c0..c0 + n`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn finish_tile<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rows<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
        for (r, o) in out.chunks_mut(ldo).enumerate() {
            layer.row(&acc[r * stride..r * stride + n], first + r, c0, &mut o[c0..c0 + n]);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn wide<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
                rows(layer, acc, stride, first, ldo, c0, n, out)
            }
            // SAFETY: the CPU has AVX2.
            unsafe { wide(layer, acc, stride, first, ldo, c0, n, out) };
            return;
        }
    }
    rows(layer, acc, stride, first, ldo, c0, n, out)
}

/// A layer's f32 row with a residual added and an optional ReLU after it:
/// `out[j] = y[j] + shortcut[row·ldo + c0 + j]`, then `max(·, 0)` when `relu` (`y` the
/// layer's own row). This is the add step `y + shortcut` of a two-input add that is the only
/// reader of the layer, computed where the row is still in registers; f32 addition commutes,
/// so it equals the step whichever input came first.
pub struct Residual<'a, F> {
    pub layer: &'a F,
    /// The other input of the add, in the layer's output layout (`ldo` values per row).
    pub shortcut: &'a [f32],
    pub ldo: usize,
    pub relu: bool,
}

impl<A, F: FinishRow<A, f32>> FinishRow<A, f32> for Residual<'_, F> {
    #[inline(always)]
    fn row(&self, acc: &[A], row: usize, c0: usize, out: &mut [MaybeUninit<f32>]) {
        self.layer.row(acc, row, c0, out);
        let s = &self.shortcut[row * self.ldo + c0..][..out.len()];
        // SAFETY: `row` wrote every entry of `out` (its contract).
        let y = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
        add_relu(y, Some(s), self.relu);
    }
}

/// `a[i] = a[i] + b[i]` (when `b` is given), then `max(·, 0)` when `relu`: the add and ReLU of
/// a fused residual and of the plan's add and ReLU steps. Inlined, so it vectorises for the
/// caller's target features.
#[inline(always)]
pub fn add_relu(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
    match (b, relu) {
        (Some(b), true) => a.iter_mut().zip(b).for_each(|(a, b)| *a = (*a + b).max(0.0)),
        (Some(b), false) => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
        (None, true) => a.iter_mut().for_each(|a| *a = a.max(0.0)),
        (None, false) => {}
    }
}

/// Applies a fused activation (if any) to an output row the epilogue has just written, while it
/// is in cache: `out[j] = f(out[j])`.
#[inline(always)]
pub fn activate(out: &mut [MaybeUninit<f32>], act: Option<Act>) {
    if let Some(a) = act {
        // SAFETY: the caller wrote every element of `out`; MaybeUninit<f32> has f32's layout.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
        crate::model::act_op::apply(out, a);
    }
}
