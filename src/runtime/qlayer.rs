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
    /// Whether the codes serve as the GEMM's rows as they are: every patch row is one input
    /// pixel's channels, and that row is already the even length the packed GEMM reads.
    fn rows_in_place(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0) && self.groups == 1 && self.c.is_multiple_of(2)
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
        let per = w.values.len() / w.shape[0];
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
        let runs = match shape {
            LayerShape::Conv(g) if !g.rows_in_place() => Some(PatchRuns::new(&g)),
            _ => None,
        };
        Some(QLayer { input: q.input, shape, packed, wsum: q.weight_sums(), mult: q.multipliers(), bias, relu: false, runs })
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
                let epi = |acc: &[i32], stride: usize, out: &mut [MaybeUninit<f32>]| self.epilogue(acc, stride, o, zp, 0, out);
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
                    let epi = |acc: &[i32], stride: usize, out: &mut [MaybeUninit<f32>]| self.epilogue(acc, stride, o, zp, gi * og, out);
                    if g.rows_in_place() {
                        gemm(&Rows::Slice { a: codes, lda: g.c }, rows, p, out, o, &epi);
                    } else {
                        let runs = self.runs.as_ref().expect("convs whose codes are not rows have patch runs");
                        let fill = |i: usize, row: &mut [i16]| runs.fill(codes, &g, gi, zp as i16, i, row);
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

fn conv_shape(s: &[usize], o: usize, k: (usize, usize), stride: (usize, usize), pad: (usize, usize), dil: (usize, usize), groups: usize) -> Option<ConvShape> {
    let (c, h, w) = (*s.first()?, *s.get(1)?, *s.get(2)?);
    let out = |len: usize, k: usize, p: usize, s: usize, d: usize| (len + 2 * p).checked_sub(d * (k - 1) + 1).map(|v| v / s + 1);
    let ho = out(h, k.0, pad.0, stride.0, dil.0)?;
    let wo = out(w, k.1, pad.1, stride.1, dil.1)?;
    Some(ConvShape { c, h, w, o, kh: k.0, kw: k.1, stride, pad, dil, groups, ho, wo })
}

/// Where the channels-last patch of each output position reads, computed once per layer:
/// runs of `(offset in the row, offset in the sample's [H, W, C] codes, length)`. With one group
/// and no dilation the taps of a kernel row are one contiguous run of the input (neighbouring
/// pixels, all channels); otherwise each tap is a run of the group's `C/groups` channels (read
/// at an extra offset `group·C/groups`). Entries no run covers are taps in the padding and hold
/// the zero point.
struct PatchRuns {
    /// `runs[starts[p]..starts[p + 1]]` belong to position `p`.
    starts: Vec<usize>,
    runs: Vec<(u32, u32, u32)>,
    /// Whether position `p` has padding taps (its row is filled with the zero point first).
    padded: Vec<bool>,
}

impl PatchRuns {
    fn new(g: &ConvShape) -> PatchRuns {
        let (cg, k) = (g.cg(), g.k());
        let merge = g.groups == 1 && g.dil.1 == 1;
        let (mut starts, mut runs, mut padded) = (vec![0], vec![], vec![]);
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let mut covered = 0;
                for ky in 0..g.kh {
                    let iy = (oy * g.stride.0 + ky * g.dil.0) as isize - g.pad.0 as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let ix = (ox * g.stride.1 + kx * g.dil.1) as isize - g.pad.1 as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        let (dst, src) = ((ky * g.kw + kx) * cg, (iy as usize * g.w + ix as usize) * g.c);
                        covered += cg;
                        // Extend this position's previous run when the tap continues it in both places.
                        let own = runs.len() > *starts.last().expect("starts begins with 0");
                        match runs.last_mut() {
                            Some((d, s, len)) if merge && own && (*d + *len) as usize == dst && (*s + *len) as usize == src => *len += cg as u32,
                            _ => runs.push((dst as u32, src as u32, cg as u32)),
                        }
                    }
                }
                padded.push(covered < k);
                starts.push(runs.len());
            }
        }
        PatchRuns { starts, runs, padded }
    }

    /// Writes the patch of output row `i` (sample `i / (Ho·Wo)`, position `i % (Ho·Wo)`) for
    /// group `gi` into `row[..k]`.
    #[inline]
    fn fill(&self, x: &[i16], g: &ConvShape, gi: usize, zp: i16, i: usize, row: &mut [i16]) {
        let l = g.ho * g.wo;
        let (s, pos) = (i / l, i % l);
        let xs = &x[s * g.h * g.w * g.c + gi * g.cg()..];
        if self.padded[pos] {
            row[..g.k()].fill(zp);
        }
        for &(d, src, len) in &self.runs[self.starts[pos]..self.starts[pos + 1]] {
            let (d, src, len) = (d as usize, src as usize, len as usize);
            row[d..d + len].copy_from_slice(&xs[src..src + len]);
        }
    }
}
