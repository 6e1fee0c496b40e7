//! Layer geometry shared by the compiled runtimes, integer and float: a conv over channels-last
//! input `[N, H, W, C]`, its weights reordered to the channels-last patch order `(ky, kx, c)`,
//! and where each output position's patch row reads.

use crate::gemm::blocked::{gemm, Panels, Rows};
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
    pub pad: (usize, usize),
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
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0) && self.groups == 1
    }

    /// Group `gi`'s weights `[O, C/g, kh, kw]` (row-major `values`) as rows of `(ky, kx, c)`,
    /// the channels-last patch order: `out[j·k + (ky·kw + kx)·cg + c] = w[gi·og + j][c][ky][kx]`.
    pub fn patch_order<T: Copy + Default>(&self, values: &[T], gi: usize) -> Vec<T> {
        let (cg, og, k) = (self.cg(), self.o / self.groups, self.k());
        let per = cg * self.kh * self.kw;
        let mut out = vec![T::default(); og * k];
        for j in 0..og {
            for ci in 0..cg {
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        out[j * k + (ky * self.kw + kx) * cg + ci] = values[(gi * og + j) * per + (ci * self.kh + ky) * self.kw + kx];
                    }
                }
            }
        }
        out
    }
}

/// The kind of a prepared layer.
#[derive(Debug, Clone, Copy)]
pub enum LayerShape {
    /// `[rows, in] → [rows, out]` over the last dim.
    Linear { inp: usize, out: usize },
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

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        match *self {
            LayerShape::Linear { out, .. } => out,
            LayerShape::Conv(g) => g.o,
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
pub struct PatchRuns {
    /// `runs[starts[p]..starts[p + 1]]` belong to position `p`.
    starts: Vec<usize>,
    runs: Vec<(u32, u32, u32)>,
    /// Whether position `p` has padding taps (its row is filled with the zero point first).
    padded: Vec<bool>,
}

impl PatchRuns {
    pub fn new(g: &ConvShape) -> PatchRuns {
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
    /// group `gi` of channels-last `x` into `row[..k]`, `pad` in the padding taps.
    #[inline]
    pub fn fill<T: Copy>(&self, x: &[T], g: &ConvShape, gi: usize, pad: T, i: usize, row: &mut [T]) {
        let l = g.ho * g.wo;
        let (s, pos) = (i / l, i % l);
        let xs = &x[s * g.h * g.w * g.c + gi * g.cg()..];
        if self.padded[pos] {
            row[..g.k()].fill(pad);
        }
        for &(d, src, len) in &self.runs[self.starts[pos]..self.starts[pos + 1]] {
            let (d, src, len) = (d as usize, src as usize, len as usize);
            row[d..d + len].copy_from_slice(&xs[src..src + len]);
        }
    }
}

/// Runs a layer: one GEMM per group of `packed` over `x` (`n` samples; channels last for a
/// conv, `rows × in` for a linear), each row read in place when it is one (a linear whose
/// input length is the GEMM's row length, a conv without patch `runs`) and built otherwise
/// (conv patches with `pad` in the padding taps). `epilogue(gi)` turns group `gi`'s
/// accumulators into its columns of the `[rows, out]` output and must write every one of them.
pub fn run_layer<P, E>(shape: &LayerShape, packed: &[P], runs: Option<&PatchRuns>, x: &[P::A], pad: P::A, n: usize, epilogue: impl Fn(usize) -> E) -> Vec<f32>
where
    P: Panels,
    E: Fn(&[P::Acc], usize, &mut [MaybeUninit<f32>]) + Sync,
{
    let o = shape.out_channels();
    let rows = match *shape {
        LayerShape::Linear { inp, .. } => x.len() / inp,
        LayerShape::Conv(g) => n * g.ho * g.wo,
    };
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
                let fill = |i: usize, row: &mut [P::A]| runs.fill(x, &g, gi, pad, i, row);
                gemm(&Rows::Built(&fill), rows, p, out, o, &epi)
            }
        }
    }
    // SAFETY: each group's GEMM ran its epilogue on every row, writing the group's columns;
    // the groups partition all `o` columns (a linear has one group).
    unsafe { y.set_len(rows * o) };
    y
}
