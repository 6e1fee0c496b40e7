//! One float layer (conv or linear) prepared for the compiled float runtime: weights reordered
//! to the channels-last patch order `(ky, kx, c)` and packed per group (a BatchNorm that only
//! this layer fed is already folded into them). Running it builds the patch rows (or reads the
//! input in place when a row *is* a pixel), runs the packed f32 GEMM, and finishes each tile in
//! the GEMM's epilogue: `y = acc + b_c`, then `max(y, 0)` when a ReLU was fused into it.

use super::layout::{run_layer, LayerShape, PatchRuns};
use crate::gemm::packed_f32::PackedF32;
use crate::model::arch::Op;
use std::mem::MaybeUninit;

/// A float layer ready to run.
pub struct FloatLayer {
    pub shape: LayerShape,
    /// One packed weight per group.
    packed: Vec<PackedF32>,
    /// Where each output position's patch row reads (convs that are not pointwise).
    runs: Option<PatchRuns>,
    bias: Option<Vec<f32>>,
    /// A ReLU applied in the epilogue.
    pub relu: bool,
}

impl FloatLayer {
    /// Prepares weight layer `op` over per-sample input `in_shape` from its row-major weight
    /// (`[out, in]` or `[O, C/groups, kh, kw]`) and bias.
    pub fn new(op: &Op, in_shape: &[usize], weight: &[f32], bias: Option<Vec<f32>>) -> Option<FloatLayer> {
        let shape = LayerShape::of(op, in_shape)?;
        let (packed, runs) = match shape {
            LayerShape::Linear { inp, out } => (vec![PackedF32::pack(weight, out, inp)], None),
            LayerShape::Conv(g) => {
                let packed = (0..g.groups).map(|gi| PackedF32::pack(&g.patch_order(weight, gi), g.o / g.groups, g.k())).collect();
                (packed, (!g.pointwise()).then(|| PatchRuns::new(&g)))
            }
        };
        Some(FloatLayer { shape, packed, runs, bias, relu: false })
    }

    /// Runs the layer on `x` (channels last for a conv; `rows × in` for a linear) of `n`
    /// samples; returns `[rows, out]` (channels last for a conv).
    pub fn run(&self, x: &[f32], n: usize) -> Vec<f32> {
        let (o, og) = (self.shape.out_channels(), self.shape.out_channels() / self.packed.len());
        let epilogue = |gi: usize| move |acc: &[f32], stride: usize, out: &mut [MaybeUninit<f32>]| self.epilogue(acc, stride, o, gi * og, og, out);
        run_layer(&self.shape, &self.packed, self.runs.as_ref(), x, 0.0, n, epilogue)
    }

    /// For each row `r` of a tile: `out[r·ldo + c0 + j] = acc[r·stride + j] + b[c0 + j]` for
    /// the group's `n` channels `j`, then `max(·, 0)` if a ReLU is fused.
    #[inline]
    fn epilogue(&self, acc: &[f32], stride: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<f32>]) {
        let t = Tile { acc, stride, ldo, c0, n, bias: self.bias.as_ref().map(|b| &b[c0..c0 + n]), relu: self.relu };
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // The same loops compiled for 8-wide vectors; the arithmetic is identical.
                #[target_feature(enable = "avx2")]
                unsafe fn wide(t: &Tile, out: &mut [MaybeUninit<f32>]) {
                    t.rows(out)
                }
                // SAFETY: the CPU has AVX2.
                unsafe { wide(&t, out) };
                return;
            }
        }
        t.rows(out)
    }
}

/// One register tile's accumulators and what the epilogue adds to them.
struct Tile<'a> {
    acc: &'a [f32],
    stride: usize,
    ldo: usize,
    c0: usize,
    n: usize,
    bias: Option<&'a [f32]>,
    relu: bool,
}

impl Tile<'_> {
    /// `out[r·ldo + c0 + j] = acc[r·stride + j] (+ bias[j]) (then max 0)` for every row `r` and
    /// `j < n`, one `for` loop per combination: each inlines into the AVX2 caller and vectorises
    /// (`for_each` left an out-of-line scalar `fold`).
    #[inline(always)]
    fn rows(&self, out: &mut [MaybeUninit<f32>]) {
        for (r, o) in out.chunks_mut(self.ldo).enumerate() {
            let (a, o) = (&self.acc[r * self.stride..r * self.stride + self.n], &mut o[self.c0..self.c0 + self.n]);
            match (self.bias, self.relu) {
                (None, false) => {
                    for (o, &a) in o.iter_mut().zip(a) {
                        o.write(a);
                    }
                }
                (None, true) => {
                    for (o, &a) in o.iter_mut().zip(a) {
                        o.write(a.max(0.0));
                    }
                }
                (Some(b), false) => {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        o.write(a + b);
                    }
                }
                (Some(b), true) => {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        o.write((a + b).max(0.0));
                    }
                }
            }
        }
    }
}
