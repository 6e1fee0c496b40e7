//! One quantised layer (conv or linear) prepared for the compiled runtime: weights reordered to
//! the channels-last patch order `(ky, kx, c)` and packed per group, and the epilogue constants.
//! Running it quantises nothing itself: it takes the input's i16 codes (channels last), builds
//! the patch rows (or reads the codes in place when a row *is* a pixel), runs the packed GEMM,
//! and dequantises in the GEMM's epilogue:
//! `y = (acc − zp·Σw_c) · (s_in · s_c) + b_c`, then `max(y, 0)` when a ReLU was fused into it.

use super::packed::{gemm, PackedWeights, Rows};
use crate::artifact::QuantLayer;
use crate::model::arch::Op;
use crate::quant::QParams;
use std::mem::MaybeUninit;

/// Geometry of a convolution over channels-last input `[N, H, W, C]` (a conv1d has `H = 1`).
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dil: (usize, usize),
    pub groups: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvShape {
    /// Input channels per group.
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Patch length per group: `kh·kw·C/groups`.
    fn k(&self) -> usize {
        self.kh * self.kw * self.cg()
    }
    /// Whether every patch row is one input pixel's channels, so the codes serve as rows as they are.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0) && self.groups == 1
    }
}

/// The kind of a prepared layer.
#[derive(Debug, Clone, Copy)]
pub enum LayerShape {
    /// `[rows, in] → [rows, out]` over the last dim.
    Linear { inp: usize, out: usize },
    Conv(ConvShape),
}

/// A quantised layer ready to run.
pub struct QLayer {
    pub input: QParams,
    pub shape: LayerShape,
    /// One packed weight per group.
    packed: Vec<PackedWeights>,
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
        let shape = match op {
            Op::Linear(c) => LayerShape::Linear { inp: c.in_features, out: c.out_features },
            Op::Conv2d(c) => {
                let (kh, kw) = c.kernel_size.hw();
                let geom = conv_shape(in_shape, c.out_channels, (kh, kw), c.stride.hw(), c.padding.hw(), c.dilation.hw(), c.groups)?;
                LayerShape::Conv(geom)
            }
            Op::Conv1d(c) => {
                let s = [in_shape.first().copied()?, 1, in_shape.get(1).copied()?];
                let geom = conv_shape(&s, c.out_channels, (1, c.kernel_size), (1, c.stride), (0, c.padding), (1, c.dilation), c.groups)?;
                LayerShape::Conv(geom)
            }
            _ => return None,
        };
        let w = &q.weight;
        let out = w.shape[0];
        let per = w.values.len() / out;
        let wsum = (0..out).map(|c| w.values[c * per..(c + 1) * per].iter().map(|&v| v as i32).sum()).collect();
        let mult = w.scales.iter().map(|&s| q.input.scale * s).collect();
        let packed = match shape {
            LayerShape::Linear { inp, out } => vec![PackedWeights::pack(&w.values, out, inp)],
            LayerShape::Conv(g) => {
                let (cg, og) = (g.cg(), g.o / g.groups);
                (0..g.groups)
                    .map(|gi| {
                        // [O, C/g, kh, kw] → rows of (ky, kx, c), the channels-last patch order.
                        let mut reordered = vec![0i8; og * g.k()];
                        for j in 0..og {
                            for ci in 0..cg {
                                for ky in 0..g.kh {
                                    for kx in 0..g.kw {
                                        reordered[j * g.k() + (ky * g.kw + kx) * cg + ci] = w.values[(gi * og + j) * per + (ci * g.kh + ky) * g.kw + kx];
                                    }
                                }
                            }
                        }
                        PackedWeights::pack(&reordered, og, g.k())
                    })
                    .collect()
            }
        };
        Some(QLayer { input: q.input, shape, packed, wsum, mult, bias, relu: false })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        match self.shape {
            LayerShape::Linear { out, .. } => out,
            LayerShape::Conv(g) => g.o,
        }
    }

    /// Runs the layer on `codes` (channels last for a conv; `rows × in` for a linear) of `n`
    /// samples with the shifted zero point `zp`; returns `[rows, out]` f32 (channels last for a
    /// conv).
    pub fn run(&self, codes: &[i16], zp: i32, n: usize) -> Vec<f32> {
        let o = self.out_channels();
        match self.shape {
            LayerShape::Linear { inp, .. } => {
                let rows = codes.len() / inp;
                let mut y = Vec::with_capacity(rows * o);
                let p = &self.packed[0];
                let epi = |acc: &[i32], out: &mut [MaybeUninit<f32>]| self.epilogue(acc, zp, 0, out);
                let out = &mut y.spare_capacity_mut()[..rows * o];
                if inp == p.kp {
                    gemm(&Rows::Slice { a: codes, lda: inp }, rows, p, out, o, &epi);
                } else {
                    let fill = |i: usize, row: &mut [i16]| row[..inp].copy_from_slice(&codes[i * inp..(i + 1) * inp]);
                    gemm(&Rows::Built(&fill), rows, p, out, o, &epi);
                }
                // SAFETY: the GEMM ran the epilogue on every row, which writes all `o` columns.
                unsafe { y.set_len(rows * o) };
                y
            }
            LayerShape::Conv(g) => {
                let rows = n * g.ho * g.wo;
                let mut y = Vec::with_capacity(rows * o);
                let out = &mut y.spare_capacity_mut()[..rows * o];
                let og = g.o / g.groups;
                for (gi, p) in self.packed.iter().enumerate() {
                    let epi = |acc: &[i32], out: &mut [MaybeUninit<f32>]| self.epilogue(acc, zp, gi * og, out);
                    if g.is_pointwise() && g.c == p.kp {
                        gemm(&Rows::Slice { a: codes, lda: g.c }, rows, p, out, o, &epi);
                    } else {
                        let fill = |i: usize, row: &mut [i16]| patch_row(codes, &g, gi, zp as i16, i, row);
                        gemm(&Rows::Built(&fill), rows, p, out, o, &epi);
                    }
                }
                // SAFETY: each group's GEMM ran the epilogue on every row, writing the group's
                // `og` columns; the groups partition all `o` columns.
                unsafe { y.set_len(rows * o) };
                y
            }
        }
    }

    /// `out[c0 + j] = (acc[j] − zp·Σw) · mult + b` for this group's channels, ReLU if fused
    /// (`max(y, 0)`). Writes every entry of `out[c0..c0 + n]`.
    #[inline]
    fn epilogue(&self, acc: &[i32], zp: i32, c0: usize, out: &mut [MaybeUninit<f32>]) {
        let n = acc.len();
        let (wsum, mult, out) = (&self.wsum[c0..c0 + n], &self.mult[c0..c0 + n], &mut out[c0..c0 + n]);
        let bias = self.bias.as_ref().map(|b| &b[c0..c0 + n]);
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // The same loops compiled for 8-wide vectors; the arithmetic is identical.
                #[target_feature(enable = "avx2")]
                unsafe fn wide(acc: &[i32], zp: i32, wsum: &[i32], mult: &[f32], bias: Option<&[f32]>, relu: bool, out: &mut [MaybeUninit<f32>]) {
                    dequantise(acc, zp, wsum, mult, bias, relu, out)
                }
                // SAFETY: the CPU has AVX2.
                unsafe { wide(acc, zp, wsum, mult, bias, self.relu, out) };
                return;
            }
        }
        dequantise(acc, zp, wsum, mult, bias, self.relu, out)
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

fn conv_shape(s: &[usize], o: usize, k: (usize, usize), stride: (usize, usize), pad: (usize, usize), dil: (usize, usize), groups: usize) -> Option<ConvShape> {
    let (c, h, w) = (*s.first()?, *s.get(1)?, *s.get(2)?);
    let out = |len: usize, k: usize, p: usize, s: usize, d: usize| (len + 2 * p).checked_sub(d * (k - 1) + 1).map(|v| v / s + 1);
    let ho = out(h, k.0, pad.0, stride.0, dil.0)?;
    let wo = out(w, k.1, pad.1, stride.1, dil.1)?;
    Some(ConvShape { c, h, w, o, kh: k.0, kw: k.1, stride, pad, dil, groups, ho, wo })
}

/// Channels-last patch of output row `i` (sample `i / (Ho·Wo)`, position `i % (Ho·Wo)`) for
/// group `gi`: for each tap `(ky, kx)` the group's `C/groups` channels of the pixel it reads, or
/// `zp` (real zero) outside the image. With one group and no dilation the taps of a kernel row
/// are one contiguous run of the input (neighbouring pixels, all channels), copied at once.
fn patch_row(x: &[i16], g: &ConvShape, gi: usize, zp: i16, i: usize, row: &mut [i16]) {
    let (cg, l) = (g.cg(), g.ho * g.wo);
    let (s, pos) = (i / l, i % l);
    let (oy, ox) = (pos / g.wo, pos % g.wo);
    let xs = &x[s * g.h * g.w * g.c..(s + 1) * g.h * g.w * g.c];
    let x0 = (ox * g.stride.1) as isize - g.pad.1 as isize;
    let runs = g.groups == 1 && g.dil.1 == 1;
    for ky in 0..g.kh {
        let iy = (oy * g.stride.0 + ky * g.dil.0) as isize - g.pad.0 as isize;
        let dst = &mut row[ky * g.kw * cg..(ky + 1) * g.kw * cg];
        if iy < 0 || iy >= g.h as isize {
            dst.fill(zp);
            continue;
        }
        let line = &xs[iy as usize * g.w * g.c..(iy as usize + 1) * g.w * g.c];
        if runs {
            // Kernel columns inside the image: kx in [lo, hi).
            let lo = (-x0).clamp(0, g.kw as isize) as usize;
            let hi = (g.w as isize - x0).clamp(lo as isize, g.kw as isize) as usize;
            dst[..lo * cg].fill(zp);
            let src = (x0 + lo as isize).max(0) as usize * g.c;
            dst[lo * cg..hi * cg].copy_from_slice(&line[src..src + (hi - lo) * g.c]);
            dst[hi * cg..].fill(zp);
            continue;
        }
        for kx in 0..g.kw {
            let ix = x0 + (kx * g.dil.1) as isize;
            let d = &mut dst[kx * cg..(kx + 1) * cg];
            if ix < 0 || ix >= g.w as isize {
                d.fill(zp);
            } else {
                let src = ix as usize * g.c + gi * cg;
                d.copy_from_slice(&line[src..src + cg]);
            }
        }
    }
}
