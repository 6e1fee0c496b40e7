//! Layer geometry shared by the compiled runtimes, integer and float: a conv over channels-last
//! input `[N, H, W, C]`, its weights reordered to the channels-last patch order `(ky, kx, c)`,
//! and where each output position's patch row reads.

use crate::matmul::blocked::{gemm, Gather, Panels, Rows};
use crate::model::arch::Op;
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
    /// Padding before the first row and column, and after the last (`pad_end`): equal unless a
    /// `pad` before the conv was folded into it (`LayerShape::with_pad_folded`).
    pub pad: (usize, usize),
    pub pad_end: (usize, usize),
    pub dil: (usize, usize),
    pub groups: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvShape {
    /// Input channels per group.
    pub fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Patch length per group: `kh·kw·C/groups`.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.cg()
    }
    /// Whether the input serves as the GEMM's rows as it is: every patch row is one input
    /// pixel's channels.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0) && self.pad_end == (0, 0) && self.groups == 1
    }

    /// Group `gi`'s weights `[O, C/g, kh, kw]` (row-major `values`) as rows of `(ky, kx, c)`,
    /// the channels-last patch order: `out[j·k + (ky·kw + kx)·cg + c] = w[gi·og + j][c][ky][kx]`.
    pub fn patch_order<T: Copy + Default>(&self, values: &[T], gi: usize) -> Vec<T> {
        self.patch_order_in(values, gi, self.cg())
    }

    /// [`ConvShape::patch_order`] with each tap's `cg` weights followed by zeros up to `seg`
    /// (rows of `kh·kw·seg`): the layout of patches gathered in segments of `seg` channels
    /// ([`ConvShape::seg`]), whose extra values (the next channels in memory) meet zero weights.
    pub fn patch_order_in<T: Copy + Default>(&self, values: &[T], gi: usize, seg: usize) -> Vec<T> {
        let (cg, og, taps) = (self.cg(), self.o / self.groups, self.kh * self.kw);
        let (per, k) = (cg * taps, seg * taps);
        let mut out = vec![T::default(); og * k];
        for j in 0..og {
            for ci in 0..cg {
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        out[j * k + (ky * self.kw + kx) * seg + ci] = values[(gi * og + j) * per + (ci * self.kh + ky) * self.kw + kx];
                    }
                }
            }
        }
        out
    }

    /// The values a gathered tap reads for a GEMM that takes `group` activations per depth step
    /// (an integer kernel's u8 quads or i16 pairs, one f32): the group's `C/groups` channels
    /// rounded up to whole steps.
    pub fn seg(&self, group: usize) -> usize {
        self.cg().next_multiple_of(group)
    }
}

/// The kind of a prepared layer.
#[derive(Debug, Clone, Copy)]
pub enum LayerShape {
    /// `[rows, in] → [rows, out]` over the last dim.
    Linear {
        inp: usize,
        out: usize,
    },
    Conv(ConvShape),
}

impl LayerShape {
    /// The shape of weight layer `op` over per-sample input `in_shape`; `None` for other ops or
    /// an input the op cannot read.
    pub fn of(op: &Op, in_shape: &[usize]) -> Option<LayerShape> {
        Some(match op {
            Op::Linear(c) => LayerShape::Linear { inp: c.in_features, out: c.out_features },
            Op::Conv2d(c) => {
                let (kh, kw) = c.kernel_size.hw();
                LayerShape::Conv(conv_shape(in_shape, c.out_channels, (kh, kw), c.stride.hw(), c.padding.hw(), c.dilation.hw(), c.groups)?)
            }
            Op::Conv1d(c) => {
                let s = [in_shape.first().copied()?, 1, in_shape.get(1).copied()?];
                LayerShape::Conv(conv_shape(&s, c.out_channels, (1, c.kernel_size), (1, c.stride), (0, c.padding), (1, c.dilation), c.groups)?)
            }
            _ => return None,
        })
    }

    /// The conv over an input that a zero `pad` widened by `(before, after)` on each spatial
    /// dim (`[(h), w]`, a conv1d's one), with that pad folded in: the same output from the
    /// unpadded input, its padding taps widened on each side by the pad's. `None` for a linear
    /// or a pad wider than the input.
    pub fn with_pad_folded(self, spatial: &[(usize, usize)]) -> Option<LayerShape> {
        let LayerShape::Conv(mut g) = self else { return None };
        let (h, w) = match *spatial {
            [w] => ((0, 0), w),
            [h, w] => (h, w),
            _ => return None,
        };
        g.h = g.h.checked_sub(h.0 + h.1)?;
        g.w = g.w.checked_sub(w.0 + w.1)?;
        (g.pad, g.pad_end) = ((g.pad.0 + h.0, g.pad.1 + w.0), (g.pad_end.0 + h.1, g.pad_end.1 + w.1));
        Some(LayerShape::Conv(g))
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        match *self {
            LayerShape::Linear { out, .. } => out,
            LayerShape::Conv(g) => g.o,
        }
    }

    /// Output rows for `n` samples whose input holds `len` values: a conv's output positions,
    /// a linear's input rows.
    pub fn rows(&self, n: usize, len: usize) -> usize {
        match *self {
            LayerShape::Linear { inp, .. } => len / inp,
            LayerShape::Conv(g) => n * g.ho * g.wo,
        }
    }
}

pub(crate) fn conv_shape(s: &[usize], o: usize, k: (usize, usize), stride: (usize, usize), pad: (usize, usize), dil: (usize, usize), groups: usize) -> Option<ConvShape> {
    let (c, h, w) = (*s.first()?, *s.get(1)?, *s.get(2)?);
    let out = |len: usize, k: usize, p: usize, s: usize, d: usize| (len + 2 * p).checked_sub(d * (k - 1) + 1).map(|v| v / s + 1);
    let ho = out(h, k.0, pad.0, stride.0, dil.0)?;
    let wo = out(w, k.1, pad.1, stride.1, dil.1)?;
    Some(ConvShape { c, h, w, o, kh: k.0, kw: k.1, stride, pad, pad_end: pad, dil, groups, ho, wo })
}

/// A tap in the padding (see [`PatchRuns`]).
const PAD: u32 = u32::MAX;

/// Where the channels-last patch of each output position reads, computed once per layer: per
/// position and kernel tap `(ky, kx)`, the offset of the tap's pixel in the sample's `[H, W, C]`
/// values, or [`PAD`] for a tap in the padding. The GEMM reads each tap's channels where they
/// lie (`Rows::Gathered`), so nothing is copied.
pub struct PatchRuns {
    /// `taps[p·kh·kw + ky·kw + kx]`: where tap `(ky, kx)` of position `p` reads.
    taps: Vec<u32>,
}

impl PatchRuns {
    pub fn new(g: &ConvShape) -> PatchRuns {
        let mut taps = vec![PAD; g.ho * g.wo * g.kh * g.kw];
        for oy in 0..g.ho {
            for ox in 0..g.wo {
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
                        taps[((oy * g.wo + ox) * g.kh + ky) * g.kw + kx] = ((iy as usize * g.w + ix as usize) * g.c) as u32;
                    }
                }
            }
        }
        PatchRuns { taps }
    }

    /// The patches of group `gi` of channels-last `x` (`n` whole samples), read tap by tap in
    /// segments of `seg` values (at least the group's `C/groups` channels; see [`ConvShape::seg`]),
    /// `pad` (`seg` values) for taps in the padding.
    fn taps<'a, T: Copy + Default + Sync>(&'a self, x: &'a [T], g: &ConvShape, gi: usize, pad: &'a [T], seg: usize) -> TapRows<'a, T> {
        let sample = g.h * g.w * g.c;
        assert!(x.len().is_multiple_of(sample) && seg >= g.cg() && pad.len() >= seg && gi < g.groups, "conv input of {} values, samples of {sample}", x.len());
        // A segment longer than the channels reads on into the next ones; near the end of `x`
        // it reads a copy of `x`'s last `seg` values followed by `seg` defaults instead (none
        // needed when segments are the channels).
        let origin = x.len() as isize - seg as isize;
        let tail = match seg > g.cg() {
            true => (0..2 * seg as isize).map(|i| usize::try_from(origin + i).ok().and_then(|at| x.get(at)).copied().unwrap_or_default()).collect(),
            false => vec![],
        };
        TapRows { runs: self, x, pad, rows: x.len() / sample * g.ho * g.wo, g: *g, gi, seg, tail, origin }
    }
}

/// Conv patch rows read tap by tap where they lie (see [`PatchRuns`]).
struct TapRows<'a, T> {
    runs: &'a PatchRuns,
    x: &'a [T],
    /// `seg` padding values.
    pad: &'a [T],
    /// Output rows `x` holds: samples × positions.
    rows: usize,
    g: ConvShape,
    gi: usize,
    /// Values read per tap.
    seg: usize,
    /// `x[origin..]` (`origin = len − seg`, defaults before `x`'s start) followed by `seg`
    /// defaults: read instead of a tap whose segment would run past the end of `x`.
    tail: Vec<T>,
    origin: isize,
}

// SAFETY: row `i < rows` (asserted) lies in sample `s = i / (Ho·Wo)`, whole in `x` (checked in
// `PatchRuns::taps`); each tap offset is `(iy·W + ix)·C` of an in-image pixel (`PatchRuns::new`),
// so its `C/groups` channels at group offset `gi·C/groups` lie in that sample, and its `seg`
// values in `x` unless they reach past its end, where `starts` points into `tail` instead: at
// the same values, `at − origin ≥ 0` since `at + seg > len`, and `at − origin + seg ≤ 2·seg`
// since `at ≤ len`. `pad` holds at least `seg` values.
unsafe impl<T: Copy + Sync> Gather<T> for TapRows<'_, T> {
    fn seg(&self) -> usize {
        self.seg
    }

    fn segs(&self) -> usize {
        self.g.kh * self.g.kw
    }

    /// `out[r·kh·kw + t]` = the start of tap `t = ky·kw + kx` of row `first + r`: `x` at
    /// `s·H·W·C + gi·C/groups + offset`, or `pad`. Each row's starts are contiguous, so the
    /// loop over its taps vectorises.
    fn starts(&self, first: usize, rows: usize, out: &mut [*const T]) {
        assert!(first + rows <= self.rows && out.len() >= self.segs() * rows, "rows {first}+{rows} of {}", self.rows);
        let (l, kk) = (self.g.ho * self.g.wo, self.segs());
        let (sample, pad) = (self.g.h * self.g.w * self.g.c, self.pad.as_ptr());
        let (mut s, mut pos) = (first / l, first % l);
        let len = self.x.len();
        for r in 0..rows {
            let at = s * sample + self.gi * self.g.cg();
            // SAFETY: within `x`, see the `unsafe impl`.
            let base: *const T = unsafe { self.x.as_ptr().add(at) };
            let taps = out[r * kk..(r + 1) * kk].iter_mut().zip(&self.runs.taps[pos * kk..(pos + 1) * kk]);
            // The row's last possible tap, the sample's last pixel, ends at `at + sample − C + seg`.
            if at + sample - self.g.c + self.seg <= len || self.seg == self.g.cg() {
                // No tap of this row reaches past `x`: a select rather than a branch, as which
                // taps are padding changes from row to row.
                for (o, &off) in taps {
                    // In `x` unless `off` is PAD (see the `unsafe impl`), where it is not used.
                    let inside = base.wrapping_add(off as usize);
                    *o = if off == PAD { pad } else { inside };
                }
            } else {
                for (o, &off) in taps {
                    let end = at + off as usize + self.seg;
                    *o = match off {
                        PAD => pad,
                        // SAFETY: within `tail`, see the `unsafe impl`.
                        _ if end > len => unsafe { self.tail.as_ptr().offset((at + off as usize) as isize - self.origin) },
                        _ => base.wrapping_add(off as usize),
                    };
                }
            }
            pos += 1;
            if pos == l {
                (s, pos) = (s + 1, 0);
            }
        }
    }
}

/// Runs a layer: one GEMM per group of `packed` over `x` (`n` samples; channels last for a
/// conv, `rows × in` for a linear), each row read in place when it is one (a linear whose
/// input length is the GEMM's row length, a conv without patch `runs`), conv patches read tap
/// by tap where they lie, in segments of [`ConvShape::seg`]`(P::GROUP)` values, which the
/// packed weights' rows must be laid out for ([`ConvShape::patch_order_in`]); `pad` in the
/// padding taps. `epilogue(gi)` turns group `gi`'s accumulators into its columns of the
/// `[rows, out]` output and must write every one of them.
pub fn run_layer<P, O, E>(shape: &LayerShape, packed: &[P], runs: Option<&PatchRuns>, x: &[P::A], pad: P::A, n: usize, epilogue: impl Fn(usize) -> E) -> Vec<O>
where
    P: Panels,
    O: Send,
    E: Fn(&[P::Acc], usize, usize, &mut [MaybeUninit<O>]) + Sync,
{
    let o = shape.out_channels();
    let rows = shape.rows(n, x.len());
    let mut y = Vec::with_capacity(rows * o);
    let out = &mut y.spare_capacity_mut()[..rows * o];
    for (gi, p) in packed.iter().enumerate() {
        let epi = epilogue(gi);
        match (*shape, runs) {
            (LayerShape::Linear { inp, .. }, _) if inp == p.row_len() => gemm(&Rows::Slice { a: x, lda: inp }, rows, p, out, o, &epi),
            (LayerShape::Linear { inp, .. }, _) => {
                let fill = |i: usize, row: &mut [P::A]| row[..inp].copy_from_slice(&x[i * inp..(i + 1) * inp]);
                gemm(&Rows::Built(&fill), rows, p, out, o, &epi)
            }
            (LayerShape::Conv(g), None) => gemm(&Rows::Slice { a: x, lda: g.c }, rows, p, out, o, &epi),
            (LayerShape::Conv(g), Some(runs)) => {
                let seg = g.seg(P::GROUP);
                let pad = vec![pad; seg];
                gemm(&Rows::Gathered(&runs.taps(x, &g, gi, &pad, seg)), rows, p, out, o, &epi)
            }
        }
    }
    // SAFETY: each group's GEMM ran its epilogue on every row, writing the group's columns;
    // the groups partition all `o` columns (a linear has one group).
    unsafe { y.set_len(rows * o) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::f32::PackedF32;
    use crate::matmul::int8::{PairPanels, QuadPanels};
    use crate::matmul::isa::Isa;

    /// A grouped, strided, dilated, padded conv whose taps are long enough to gather (8
    /// channels per group): `C = 16`, 2 groups, 3×2 kernel, stride (2, 1), padding (1, 1),
    /// dilation (1, 2), over 3 samples of 5×7.
    fn geometry() -> ConvShape {
        let s = conv_shape(&[16, 5, 7], 6, (3, 2), (2, 1), (1, 1), (1, 2), 2).unwrap();
        assert!(s.seg(4) == s.cg() && s.ho * s.wo > 1);
        s
    }

    /// The conv by its definition over channels-last `x` (`n` samples) and weights
    /// `[O, C/g, kh, kw]`, padding taps reading `pad`:
    /// `y[s, oy, ox, o] = Σ_{c, ky, kx} x[s, oy·sy + ky·dy − py, ox·sx + kx·dx − px, g(o)·C/g + c] · w[o, c, ky, kx]`.
    fn by_definition(g: &ConvShape, x: &[i64], w: &[i64], pad: i64, n: usize) -> Vec<i64> {
        let (cg, og) = (g.cg(), g.o / g.groups);
        let mut y = vec![0; n * g.ho * g.wo * g.o];
        for s in 0..n {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    for o in 0..g.o {
                        let mut acc = 0;
                        for c in 0..cg {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride.0 + ky * g.dil.0) as isize - g.pad.0 as isize;
                                    let ix = (ox * g.stride.1 + kx * g.dil.1) as isize - g.pad.1 as isize;
                                    let inside = (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix);
                                    let v = if inside { x[((s * g.h + iy as usize) * g.w + ix as usize) * g.c + (o / og) * cg + c] } else { pad };
                                    acc += v * w[((o * cg + c) * g.kh + ky) * g.kw + kx];
                                }
                            }
                        }
                        y[((s * g.ho + oy) * g.wo + ox) * g.o + o] = acc;
                    }
                }
            }
        }
        y
    }

    /// Runs `packed` (one per group, rows laid out for segments of `P::GROUP`) over `x` with
    /// patches gathered.
    fn gathered<P: Panels<Acc = A>, A: Copy + Default + Send>(g: &ConvShape, packed: &[P], x: &[P::A], pad: P::A, n: usize) -> Vec<A> {
        let (runs, og, m, seg) = (PatchRuns::new(g), g.o / g.groups, n * g.ho * g.wo, g.seg(P::GROUP));
        let pads = vec![pad; seg];
        let mut y = vec![A::default(); m * g.o];
        for (gi, p) in packed.iter().enumerate() {
            let epi = |acc: &[A], stride: usize, _: usize, out: &mut [A]| {
                for (r, row) in out.chunks_mut(g.o).enumerate() {
                    row[gi * og..(gi + 1) * og].copy_from_slice(&acc[r * stride..r * stride + og]);
                }
            };
            gemm(&Rows::Gathered(&runs.taps(x, g, gi, &pads, seg)), m, p, &mut y, g.o, &epi);
        }
        y
    }

    /// [`geometry`] with a pad of 2 rows before and 1 column after each sample folded in:
    /// padding (3, 1) before and (1, 2) after.
    fn folded_geometry() -> ConvShape {
        let s = conv_shape(&[16, 5 + 2, 7 + 1], 6, (3, 2), (2, 1), (1, 1), (1, 2), 2).unwrap();
        let LayerShape::Conv(g) = LayerShape::Conv(s).with_pad_folded(&[(2, 0), (0, 1)]).unwrap() else { unreachable!() };
        assert_eq!((g.h, g.w, g.pad, g.pad_end, g.ho, g.wo), (5, 7, (3, 1), (1, 2), s.ho, s.wo));
        g
    }

    /// Gathered patches equal the conv's definition: exactly with the integer kernels this CPU
    /// runs (pair and quad layouts, the zero point as padding), within f32 rounding with the
    /// float tile; with the same padding on both sides and with a pad folded in; and with
    /// groups of channels that are not whole pairs or quads (3, 14, 29, 1), whose segments read
    /// on into the next channels against zero weights, and near the end of the input from its
    /// copied tail.
    #[test]
    fn gathered_patches_equal_the_definition() {
        let odd = [
            conv_shape(&[6, 5, 7], 4, (3, 2), (2, 1), (1, 1), (1, 2), 2).unwrap(),
            conv_shape(&[14, 1, 20], 5, (1, 3), (1, 1), (0, 2), (1, 2), 1).unwrap(),
            conv_shape(&[29, 3, 4], 7, (1, 1), (2, 2), (0, 0), (1, 1), 1).unwrap(),
            conv_shape(&[29, 1, 6], 3, (1, 1), (1, 1), (0, 0), (1, 1), 1).unwrap(),
            conv_shape(&[1, 4, 4], 3, (2, 2), (1, 1), (1, 1), (1, 1), 1).unwrap(),
        ];
        for g in [geometry(), folded_geometry()].into_iter().chain(odd) {
            gathered_equals_the_definition(g);
        }
    }

    fn gathered_equals_the_definition(g: ConvShape) {
        let n = 3;
        let w: Vec<i64> = (0..g.o * g.cg() * g.kh * g.kw).map(|i| ((i * 53) % 255) as i64 - 127).collect();
        let x: Vec<i64> = (0..n * g.h * g.w * g.c).map(|i| ((i * 37) % 128) as i64).collect();
        let pad = 9;
        let want = by_definition(&g, &x, &w, pad, n);
        let group_w = |gi: usize, seg: usize| g.patch_order_in(&w, gi, seg);
        let taps = g.kh * g.kw;
        for isa in Isa::available() {
            let got = match isa.quads() {
                true => {
                    let seg = g.seg(4);
                    let p: Vec<QuadPanels> = (0..g.groups).map(|gi| QuadPanels::pack(&group_w(gi, seg).iter().map(|&v| v as i8).collect::<Vec<_>>(), g.o / g.groups, taps * seg, isa)).collect();
                    gathered(&g, &p, &x.iter().map(|&v| v as u8).collect::<Vec<_>>(), pad as u8, n)
                }
                false => {
                    let seg = g.seg(2);
                    let p: Vec<PairPanels> = (0..g.groups).map(|gi| PairPanels::pack(&group_w(gi, seg).iter().map(|&v| v as i8).collect::<Vec<_>>(), g.o / g.groups, taps * seg, isa)).collect();
                    gathered(&g, &p, &x.iter().map(|&v| v as i16).collect::<Vec<_>>(), pad as i16, n)
                }
            };
            assert_eq!(got.iter().map(|&v| v as i64).collect::<Vec<_>>(), want, "{isa:?} {g:?}");
        }
        let p: Vec<PackedF32> = (0..g.groups).map(|gi| PackedF32::pack(&group_w(gi, g.cg()).iter().map(|&v| v as f32 / 64.0).collect::<Vec<_>>(), g.o / g.groups, g.k())).collect();
        let got = gathered(&g, &p, &x.iter().map(|&v| v as f32 / 32.0).collect::<Vec<_>>(), pad as f32 / 32.0, n);
        for (got, want) in got.iter().zip(&want) {
            let want = *want as f64 / 2048.0;
            assert!((*got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0), "{got} vs {want}");
        }
    }
}
