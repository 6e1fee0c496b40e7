//! One quantised layer (conv or linear) prepared for the compiled runtime: weights reordered to
//! the channels-last patch order `(ky, kx, c)` and packed per group, and the epilogue constants.
//! Running it quantises nothing itself: it takes the input's i16 codes (channels last), builds
//! the patch rows (or reads the codes in place when a row *is* a pixel), runs the packed GEMM,
//! and dequantises in the GEMM's epilogue:
//! `y = (acc − zp·Σw_c) · (s_in · s_c) + b_c`, then `max(y, 0)` when a ReLU was fused into it.

use super::layout::{run_layer, LayerShape, PatchRuns};
use super::packed::PackedWeights;
use crate::artifact::QuantLayer;
use crate::model::arch::Op;
use crate::quant::QParams;
use std::mem::MaybeUninit;

/// A quantised layer ready to run.
pub struct QLayer {
    pub input: QParams,
    pub shape: LayerShape,
    /// One packed weight per group.
    packed: Vec<PackedWeights>,
    /// Where each output position's patch row reads (convs).
    runs: Option<PatchRuns>,
    /// `Σ_k w_c[k]` per output channel, for the zero-point correction.
    wsum: Vec<i32>,
    /// `s_in · s_c` per output channel.
    mult: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// A ReLU applied in the epilogue.
    pub relu: bool,
}

impl QLayer {
    /// Prepares `q` (the node's op and per-sample input shape given) with its float bias.
    pub fn new(q: &QuantLayer, op: &Op, in_shape: &[usize], bias: Option<Vec<f32>>) -> Option<QLayer> {
        let shape = LayerShape::of(op, in_shape)?;
        let w = &q.weight;
        let packed = match shape {
            LayerShape::Linear { inp, out } => vec![PackedWeights::pack(&w.values, out, inp)],
            LayerShape::Conv(g) => (0..g.groups).map(|gi| PackedWeights::pack(&g.patch_order(&w.values, gi), g.o / g.groups, g.k())).collect(),
        };
        let runs = match shape {
            LayerShape::Conv(g) if !rows_in_place(&g) => Some(PatchRuns::new(&g)),
            _ => None,
        };
        Some(QLayer { input: q.input, shape, packed, wsum: q.weight_sums(), mult: q.multipliers(), bias, relu: false, runs })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.shape.out_channels()
    }

    /// Runs the layer on `codes` (channels last for a conv; `rows × in` for a linear) of `n`
    /// samples with the shifted zero point `zp`; returns `[rows, out]` f32 (channels last for a
    /// conv).
    pub fn run(&self, codes: &[i16], zp: i32, n: usize) -> Vec<f32> {
        let (o, og) = (self.out_channels(), self.out_channels() / self.packed.len());
        let epilogue = |gi: usize| move |acc: &[i32], stride: usize, out: &mut [MaybeUninit<f32>]| self.epilogue(acc, stride, o, zp, gi * og, out);
        run_layer(&self.shape, &self.packed, self.runs.as_ref(), codes, zp as i16, n, epilogue)
    }

    /// For each row `r` of a tile (`out.len() / ldo` rows):
    /// `out[r·ldo + c0 + j] = (acc[r·stride + j] − zp·Σw) · mult + b` for this group's channels
    /// `j`, ReLU if fused (`max(y, 0)`). Writes every entry of those columns.
    #[inline]
    fn epilogue(&self, acc: &[i32], stride: usize, ldo: usize, zp: i32, c0: usize, out: &mut [MaybeUninit<f32>]) {
        let n = self.out_channels() / self.packed.len();
        let t = Tile { acc, stride, ldo, n, c0, zp, wsum: &self.wsum[c0..c0 + n], mult: &self.mult[c0..c0 + n], bias: self.bias.as_ref().map(|b| &b[c0..c0 + n]), relu: self.relu };
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

/// One register tile's accumulators and what the epilogue needs to dequantise them.
struct Tile<'a> {
    acc: &'a [i32],
    stride: usize,
    ldo: usize,
    n: usize,
    c0: usize,
    zp: i32,
    wsum: &'a [i32],
    mult: &'a [f32],
    bias: Option<&'a [f32]>,
    relu: bool,
}

impl Tile<'_> {
    #[inline(always)]
    fn rows(&self, out: &mut [MaybeUninit<f32>]) {
        for (r, o) in out.chunks_mut(self.ldo).enumerate() {
            let acc = &self.acc[r * self.stride..r * self.stride + self.n];
            dequantise(acc, self.zp, self.wsum, self.mult, self.bias, self.relu, &mut o[self.c0..self.c0 + self.n]);
        }
    }
}

/// `out[j] = (acc[j] − zp·wsum[j]) as f32 · mult[j] (+ bias[j]) (then max 0)`, one plain loop
/// per combination so each vectorises.
#[inline(always)]
fn dequantise(acc: &[i32], zp: i32, wsum: &[i32], mult: &[f32], bias: Option<&[f32]>, relu: bool, out: &mut [MaybeUninit<f32>]) {
    let n = acc.len();
    let (wsum, mult, out) = (&wsum[..n], &mult[..n], &mut out[..n]);
    let y = |j: usize| (acc[j] - zp * wsum[j]) as f32 * mult[j];
    match (bias, relu) {
        (None, false) => (0..n).for_each(|j| {
            out[j].write(y(j));
        }),
        (None, true) => (0..n).for_each(|j| {
            out[j].write(y(j).max(0.0));
        }),
        (Some(b), false) => {
            let b = &b[..n];
            (0..n).for_each(|j| {
                out[j].write(y(j) + b[j]);
            })
        }
        (Some(b), true) => {
            let b = &b[..n];
            (0..n).for_each(|j| {
                out[j].write((y(j) + b[j]).max(0.0));
            })
        }
    }
}

/// Whether the codes serve as the GEMM's rows as they are (no patch runs): a pointwise conv
/// whose rows are already the even length the packed GEMM reads.
fn rows_in_place(g: &super::layout::ConvShape) -> bool {
    g.pointwise() && g.c.is_multiple_of(2)
}
