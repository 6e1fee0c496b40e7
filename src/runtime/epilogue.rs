//! The part of a compiled layer's GEMM epilogue that does not depend on the layer's kind:
//! walking a register tile's rows, compiling the layer's per-row arithmetic for 16-wide vectors
//! where the f32 kernels use AVX-512 and for 8-wide ones where the CPU has AVX2 (the
//! arithmetic is identical at every width), and what can follow any layer's row: a residual add
//! fused in ([`Residual`]) and a fused activation ([`activate`]).

use crate::model::act_op::Act;
#[cfg(target_arch = "x86_64")]
use crate::model::vmath::{F32x16, F32x8};
use crate::model::vmath::{Fused, Lanes};
use std::mem::MaybeUninit;

/// What a layer writes for one output row: `out[j]` from the accumulator `acc[j]` of channel
/// `c0 + j`, for every `j < acc.len()`, in three phases: [`FinishRow::row`] for each row, the
/// fused activation over all the rows at once where they lie together in memory (a short row,
/// one 16-channel pixel, keeps too few evaluations in flight on its own), then
/// [`FinishRow::after`] for each row.
pub trait FinishRow<A, O> {
    /// The row up to its activation. `row` is the row's index in the layer's output.
    /// Implementations are `#[inline(always)]`, so that [`finish_tile`]'s wide copies vectorise
    /// them.
    fn row(&self, acc: &[A], row: usize, c0: usize, out: &mut [MaybeUninit<O>]);

    /// [`FinishRow::row`] on `out.len() / ldo` rows: row `first + r` from `acc[r·stride..][..n]`
    /// into `out[r·ldo + c0..][..n]`. A layer whose row has an explicit vector form overrides
    /// it, since the compiler vectorises a 16-channel row's loop only partly.
    ///
    /// # Safety
    /// The CPU has `V`'s features.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<V: Lanes>(&self, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
        for (r, o) in out.chunks_mut(ldo).enumerate() {
            self.row(&acc[r * stride..r * stride + n], first + r, c0, &mut o[c0..c0 + n]);
        }
    }

    /// Whether an activation follows `row`.
    fn has_act(&self) -> bool {
        false
    }

    /// The activation on outputs `row` wrote (any run of them), on vectors of `V`.
    ///
    /// # Safety
    /// The CPU has `V`'s features and, for vectors, FMA (the fused steps of [`activate`]); `row`
    /// wrote every element of `out`.
    unsafe fn activate<V: Lanes>(&self, _out: &mut [MaybeUninit<O>]) {}

    /// Whether something follows the activation ([`FinishRow::after`]).
    fn has_after(&self) -> bool {
        false
    }

    /// What follows the activation in row `row` (a fused residual add); `out` is finished up to
    /// there.
    fn after(&self, _row: usize, _c0: usize, _out: &mut [MaybeUninit<O>]) {}
}

/// For each row `r` of a tile (`out.len() / ldo` rows, output rows `first + r`): `layer.row`
/// on `acc[r·stride..][..n]` into `out[r·ldo + c0..][..n]`, the columns of channels
/// `c0..c0 + n`, then the activation (over the whole tile when it spans every column) and
/// `layer.after`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn finish_tile<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::model::vmath::has_f32x16() {
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn widest<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
                finish_phases::<F32x16, A, O, F>(layer, acc, stride, first, ldo, c0, n, out)
            }
            // SAFETY: `has_f32x16` found AVX-512F.
            unsafe { widest(layer, acc, stride, first, ldo, c0, n, out) };
            return;
        }
        if crate::model::vmath::has_f32x8_fma() {
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn wide<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
                finish_phases::<F32x8, A, O, F>(layer, acc, stride, first, ldo, c0, n, out)
            }
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { wide(layer, acc, stride, first, ldo, c0, n, out) };
            return;
        }
    }
    // SAFETY: scalars need no CPU feature.
    unsafe { finish_phases::<f32, A, O, F>(layer, acc, stride, first, ldo, c0, n, out) }
}

/// [`FinishRow`]'s three phases on the rows of a tile (`out.len() / ldo` rows, output rows
/// `first + r`): `layer.rows` into columns `c0..c0 + n` of each, the activation (over the whole
/// tile when it spans every column, else row by row) and `layer.after` on each row. Inlined
/// into the caller that picks the instruction set.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn finish_phases<V: Lanes, A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
    // SAFETY (each call): the caller's CPU features; each phase runs on what the one before wrote.
    unsafe {
        layer.rows::<V>(acc, stride, first, ldo, c0, n, out);
        if layer.has_act() {
            match n == ldo {
                true => layer.activate::<V>(out),
                // A loop, not a closure: a closure is a function of its own without the caller's
                // target features, where the activation's intrinsics would run as calls.
                false => {
                    for o in out.chunks_mut(ldo) {
                        layer.activate::<V>(&mut o[c0..c0 + n]);
                    }
                }
            }
        }
    }
    if layer.has_after() {
        for (r, o) in out.chunks_mut(ldo).enumerate() {
            layer.after(first + r, c0, &mut o[c0..c0 + n]);
        }
    }
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
    }

    #[inline(always)]
    unsafe fn rows<V: Lanes>(&self, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<f32>]) {
        self.layer.rows::<V>(acc, stride, first, ldo, c0, n, out)
    }

    fn has_act(&self) -> bool {
        self.layer.has_act()
    }

    #[inline(always)]
    unsafe fn activate<V: Lanes>(&self, out: &mut [MaybeUninit<f32>]) {
        self.layer.activate::<V>(out)
    }

    fn has_after(&self) -> bool {
        true
    }

    #[inline(always)]
    fn after(&self, row: usize, c0: usize, out: &mut [MaybeUninit<f32>]) {
        self.layer.after(row, c0, out);
        let s = &self.shortcut[row * self.ldo + c0..][..out.len()];
        // SAFETY: the earlier phases wrote every entry of `out`.
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

/// Applies a fused activation (if any) to outputs the epilogue has just written, while they are
/// in cache: `out[j] = f(out[j])`, on vectors of `V` (`model::vmath`), its polynomial steps
/// fused as the integer reference executor's (`act_op::apply_in_place_fused`), bit-identical
/// at every width.
///
/// # Safety
/// The CPU has `V`'s features and FMA; every element of `out` was written.
#[inline(always)]
pub unsafe fn activate<V: Lanes>(out: &mut [MaybeUninit<f32>], act: Option<Act>) {
    if let Some(a) = act {
        // SAFETY: the caller wrote every element of `out`; MaybeUninit<f32> has f32's layout.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
        crate::model::act_op::activate_by::<V, Fused>(out, a);
    }
}

/// Whether a layer's row pass ([`FinishRow::rows`]) applies its activation itself, while the
/// values are in registers: one of a few operations (ReLU6), where a pass of its own would cost
/// more than it computes.
pub fn act_in_row(act: Option<Act>) -> bool {
    act == Some(Act::Relu6)
}

/// `$run::<…, BIAS, RELU, RELU6>(args)` with the three flags of a row pass (a bias, the fused
/// ReLU, the in-row ReLU6) as constants: one loop per combination, holding only its own
/// arithmetic, where flags read inside the loop were loaded and tested at every vector (stores
/// through the output may alias the layer, as far as the compiler knows).
macro_rules! with_flags {
    (($bias:expr, $relu:expr, $relu6:expr), $run:ident::<$($g:ty),*>($($a:expr),*)) => {
        match ($bias, $relu, $relu6) {
            (true, false, false) => $run::<$($g,)* true, false, false>($($a),*),
            (true, true, false) => $run::<$($g,)* true, true, false>($($a),*),
            (true, false, true) => $run::<$($g,)* true, false, true>($($a),*),
            (true, true, true) => $run::<$($g,)* true, true, true>($($a),*),
            (false, false, false) => $run::<$($g,)* false, false, false>($($a),*),
            (false, true, false) => $run::<$($g,)* false, true, false>($($a),*),
            (false, false, true) => $run::<$($g,)* false, false, true>($($a),*),
            (false, true, true) => $run::<$($g,)* false, true, true>($($a),*),
        }
    };
}
pub(crate) use with_flags;

/// The end of a row pass on `v`: `max(v, 0)` when `relu` (a NaN becoming 0, as `f32::max` makes
/// it), then ReLU6 when `relu6` ([`act_in_row`]).
#[inline(always)]
pub fn clamp<V: Lanes>(v: V, relu: bool, relu6: bool) -> V {
    let v = if relu { v.relu() } else { v };
    if relu6 {
        Act::Relu6.eval(v)
    } else {
        v
    }
}
