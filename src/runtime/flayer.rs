//! One float layer (conv or linear) prepared for the compiled float runtime: weights reordered
//! to the channels-last patch order `(ky, kx, c)` and packed per group (a BatchNorm that only
//! this layer fed is already folded into them). Running it runs the packed f32 GEMM over the
//! patch rows (each tap read where it lies in the input, or the input in place when a row *is* a
//! pixel), or a depthwise conv's direct kernel (`depthwise.rs`: one input channel per group, any
//! channel multiplier, a one-channel input's conv included), and finishes each row in the
//! epilogue: `y = acc + b_c`, then `max(y, 0)` when a ReLU was fused into it, or the activation
//! that was.

use super::depthwise;
use super::epilogue::{act_in_row, activate, clamp, finish_tile, with_flags, FinishRow, Residual};
use super::layout::{run_layer, LayerShape, PatchRuns};
use super::winograd::{self, Winograd};
use crate::matmul::f32::PackedF32;
use crate::model::act_op::Act;
use crate::model::vmath::over_row;
use crate::model::vmath::Lanes;
use std::mem::MaybeUninit;

/// A float layer ready to run.
pub struct FloatLayer {
    pub shape: LayerShape,
    /// One packed weight per group (none for a conv on the direct kernel).
    packed: Vec<PackedF32>,
    /// A depthwise conv's (one input channel per group) weights, tap-major, for its direct
    /// kernel (`depthwise.rs`).
    depthwise: Option<Vec<f32>>,
    /// A 3×3 stride-1 conv's transformed weights (`winograd.rs`).
    winograd: Option<Box<Winograd>>,
    /// Where each output position's patch row reads (convs that are not pointwise).
    runs: Option<PatchRuns>,
    bias: Option<Vec<f32>>,
    /// A ReLU applied in the epilogue.
    pub relu: bool,
    /// Another activation applied in the epilogue.
    pub act: Option<Act>,
}

impl FloatLayer {
    /// Prepares a weight layer of shape `shape` from its row-major weight (`[out, in]` or
    /// `[O, C/groups, kh, kw]`) and bias.
    pub fn new(shape: LayerShape, weight: &[f32], bias: Option<Vec<f32>>) -> FloatLayer {
        let (packed, runs) = match shape {
            LayerShape::Conv(g) if depthwise::one_input_per_group(&g) => {
                return FloatLayer { shape, packed: vec![], depthwise: Some(depthwise::tap_major(&g, weight)), winograd: None, runs: None, bias, relu: false, act: None };
            }
            LayerShape::Linear { inp, out } => (vec![PackedF32::pack(weight, out, inp)], None),
            LayerShape::Conv(g) => {
                let packed = (0..g.groups).map(|gi| PackedF32::pack(&g.patch_order(weight, gi), g.o / g.groups, g.k())).collect();
                (packed, (!g.pointwise()).then(|| PatchRuns::new(&g)))
            }
        };
        // A 3×3 stride-1 conv keeps its direct form too, for batches of too few tiles.
        let winograd = match shape {
            LayerShape::Conv(g) if winograd::applies(&g) => Some(Box::new(Winograd::new(&g, weight))),
            _ => None,
        };
        FloatLayer { shape, packed, depthwise: None, winograd, runs, bias, relu: false, act: None }
    }

    /// Runs the layer on `x` (channels last for a conv; `rows × in` for a linear) of `n`
    /// samples; returns `[rows, out]` (channels last for a conv). With
    /// `residual = (shortcut, relu)`, a residual add (and a ReLU) follows in the output loop:
    /// `max(y + shortcut, 0)` ([`Residual`]; `shortcut` in the output's layout).
    pub fn run(&self, x: &[f32], n: usize, residual: Option<(&[f32], bool)>) -> Vec<f32> {
        self.run_in_batch(x, n, n, residual)
    }

    /// [`FloatLayer::run`] on `n` samples of a batch of `batch` (a part or chunk of it): a 3×3
    /// conv takes Winograd's form by the whole batch's size, so that the parts and chunks of
    /// one batch all sum the same way.
    pub fn run_in_batch(&self, x: &[f32], n: usize, batch: usize, residual: Option<(&[f32], bool)>) -> Vec<f32> {
        match residual {
            None => self.run_with(x, n, batch, self),
            Some((shortcut, relu)) => self.run_with(x, n, batch, &Residual { layer: self, shortcut, ldo: self.shape.out_channels(), relu }),
        }
    }

    /// The GEMM over `x` with `finish` writing each tile row's outputs.
    fn run_with<F: FinishRow<f32, f32> + Sync>(&self, x: &[f32], n: usize, batch: usize, finish: &F) -> Vec<f32> {
        if let (Some(w), LayerShape::Conv(g)) = (&self.depthwise, self.shape) {
            return depthwise::run(&g, w, x, 0.0, n, finish);
        }
        if let Some(w) = self.winograd.as_ref().filter(|w| w.pays(batch)) {
            return w.run(x, n, finish);
        }
        let (o, og) = (self.shape.out_channels(), self.shape.out_channels() / self.packed.len());
        let epilogue = |gi: usize| move |acc: &[f32], stride: usize, first: usize, out: &mut [MaybeUninit<f32>]| finish_tile(finish, acc, stride, first, o, gi * og, og, out);
        run_layer(&self.shape, &self.packed, self.runs.as_ref(), x, 0.0, n, epilogue)
    }
}

impl FloatLayer {
    /// `o[j] = g(a[j] (+ b[j]))` for `j < n`, `g` the fused ReLU or the in-row activation
    /// ([`clamp`]): in vectors of `V` (`vmath::over_row`) with
    /// the same operations as one by one.
    ///
    /// # Safety
    /// The CPU has `V`'s features; `a`, `b` and `o` are valid for `n` values.
    #[inline(always)]
    unsafe fn finish_run<V: Lanes>(&self, a: *const f32, b: Option<*const f32>, o: *mut f32, n: usize) {
        /// One vector (or scalar) of the row; the flags are constants, so each of
        /// `finish_run`'s loops holds only its own arithmetic.
        #[inline(always)]
        unsafe fn lanes<V: Lanes, const BIAS: bool, const RELU: bool, const RELU6: bool>(a: *const f32, b: *const f32, o: *mut f32) {
            // SAFETY: the caller's.
            unsafe {
                let v = V::load(a);
                let v = if BIAS { v + V::load(b) } else { v };
                clamp(v, RELU, RELU6).store(o);
            }
        }
        #[inline(always)]
        unsafe fn run<V: Lanes, const BIAS: bool, const RELU: bool, const RELU6: bool>(a: *const f32, b: *const f32, o: *mut f32, n: usize) {
            // SAFETY: the caller's bounds and features.
            unsafe {
                over_row!(
                    V,
                    n,
                    |j| lanes::<V, BIAS, RELU, RELU6>(a.add(j), b.add(j), o.add(j)),
                    lanes::<V::Half, BIAS, RELU, RELU6>(a.add(j), b.add(j), o.add(j)),
                    lanes::<f32, BIAS, RELU, RELU6>(a.add(j), b.add(j), o.add(j))
                )
            }
        }
        let bias = b.unwrap_or(std::ptr::null());
        // SAFETY: the caller's; `bias` is read only with `BIAS`, when `b` is given.
        unsafe { with_flags!((b.is_some(), self.relu, act_in_row(self.act)), run::<V>(a, bias, o, n)) }
    }
}

impl FinishRow<f32, f32> for FloatLayer {
    /// `out[j] = acc[j] (+ b[c0 + j])`, then the fused ReLU or the in-row activation.
    #[inline(always)]
    fn row(&self, acc: &[f32], _row: usize, c0: usize, out: &mut [MaybeUninit<f32>]) {
        let n = acc.len().min(out.len());
        let b = self.bias.as_ref().map(|b| b[c0..c0 + n].as_ptr());
        // SAFETY: scalars need no CPU feature; each pointer holds `n` values.
        unsafe { self.finish_run::<f32>(acc.as_ptr(), b, out.as_mut_ptr() as *mut f32, n) }
    }

    /// [`FinishRow::row`] on every row, in vectors of `V`.
    #[inline(always)]
    unsafe fn rows<V: Lanes>(&self, acc: &[f32], stride: usize, _first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<f32>]) {
        let bias = self.bias.as_ref().map(|b| b[c0..c0 + n].as_ptr());
        for (r, o) in out.chunks_mut(ldo).enumerate() {
            let (a, o) = (&acc[r * stride..r * stride + n], &mut o[c0..c0 + n]);
            // SAFETY: the caller's CPU features; `a`, `bias` and `o` each hold `n` values.
            unsafe { self.finish_run::<V>(a.as_ptr(), bias, o.as_mut_ptr() as *mut f32, n) };
        }
    }

    fn has_act(&self) -> bool {
        self.act.is_some() && !act_in_row(self.act)
    }

    #[inline(always)]
    unsafe fn activate<V: Lanes>(&self, out: &mut [MaybeUninit<f32>]) {
        // SAFETY: the caller's CPU features; the vector epilogues run where FMA is (AVX-512F has
        // it; the AVX2 ones check for it), and the scalar `f32::mul_add` needs none.
        unsafe { activate::<V>(out, self.act) }
    }
}
