//! Convolution geometry and patch extraction shared by the float training conv
//! (`conv_op.rs`) and the integer reference executor: `Geom` describes one unfolding, `patch_row`
//! copies one output position's patch (taps ordered like the weight, `(c, ky, kx)`),
//! `unfold_tap_major` / `fold_tap_major_into` build and scatter back the whole patch matrix in the
//! tap-major layout `cols[t][s·L + l]` the training GEMMs use.

use crate::parallel::{build_chunks, for_chunks, zeroed};
use std::mem::MaybeUninit;

/// Geometry of one unfolding.
#[derive(Debug, Clone, Copy)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    /// `(along h, along w)`.
    pub stride: (usize, usize),
    pub ph: usize,
    pub pw: usize,
    /// `(along h, along w)`.
    pub dil: (usize, usize),
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// The unfolding of `n` samples of `c × h × w` by a `kh × kw` kernel, with output size
    /// `⌊(len + 2·pad − dil·(k − 1) − 1) / stride⌋ + 1` per axis, each axis with its own stride
    /// and dilation (shapes already validated by the graph).
    #[allow(clippy::too_many_arguments)]
    pub fn new(n: usize, c: usize, (h, w): (usize, usize), (kh, kw): (usize, usize), stride: (usize, usize), (ph, pw): (usize, usize), dil: (usize, usize)) -> Geom {
        let out = |len: usize, k: usize, p: usize, s: usize, d: usize| (len + 2 * p - d * (k - 1) - 1) / s + 1;
        Geom { n, c, h, w, kh, kw, stride, ph, pw, dil, ho: out(h, kh, ph, stride.0, dil.0), wo: out(w, kw, pw, stride.1, dil.1) }
    }

    /// Taps per position: `C·kh·kw`.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output positions: `Ho·Wo`.
    pub fn l(&self) -> usize {
        self.ho * self.wo
    }
}

/// Calls `f(t, i)` for every tap `t` of position `(oy, ox)` that reads input pixel `i` (taps in
/// the zero padding are skipped). Row and column offsets are computed once per kernel row.
#[inline(always)]
pub fn for_taps(g: &Geom, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    let (h, w) = (g.h as isize, g.w as isize);
    let y0 = (oy * g.stride.0) as isize - g.ph as isize;
    let x0 = (ox * g.stride.1) as isize - g.pw as isize;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let iy = y0 + (ky * g.dil.0) as isize;
            if iy < 0 || iy >= h {
                continue;
            }
            let base = (ci * g.h + iy as usize) * g.w;
            let t0 = (ci * g.kh + ky) * g.kw;
            for kx in 0..g.kw {
                let ix = x0 + (kx * g.dil.1) as isize;
                if ix >= 0 && ix < w {
                    f(t0 + kx, base + ix as usize);
                }
            }
        }
    }
}

/// Writes the patch of position `(oy, ox)` into `row` (`K` values; padding taps are left as
/// they are). With dilation 1 along w each kernel row is one contiguous run of the input, copied
/// whole.
#[inline]
pub fn patch_row<T: Copy>(g: &Geom, x: &[T], oy: usize, ox: usize, row: &mut [T]) {
    if g.dil.1 != 1 {
        for_taps(g, oy, ox, |t, i| row[t] = x[i]);
        return;
    }
    let (h, w) = (g.h as isize, g.w as isize);
    let y0 = (oy * g.stride.0) as isize - g.ph as isize;
    let x0 = (ox * g.stride.1) as isize - g.pw as isize;
    // Kernel columns inside the image: kx in [lo, hi).
    let lo = (-x0).clamp(0, g.kw as isize) as usize;
    let hi = (w - x0).clamp(0, g.kw as isize) as usize;
    if lo >= hi {
        return;
    }
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let iy = y0 + (ky * g.dil.0) as isize;
            if iy < 0 || iy >= h {
                continue;
            }
            let src = (ci * g.h + iy as usize) * g.w + (x0 + lo as isize) as usize;
            let t0 = (ci * g.kh + ky) * g.kw;
            // Kernel rows are short: spelled-out moves for up to 3 taps (a copy loop would be
            // turned into a memmove call, which costs more than the copy).
            let (d, s) = (&mut row[t0 + lo..t0 + hi], &x[src..src + (hi - lo)]);
            match d.len() {
                1 => d[0] = s[0],
                2 => {
                    d[0] = s[0];
                    d[1] = s[1];
                }
                3 => {
                    d[0] = s[0];
                    d[1] = s[1];
                    d[2] = s[2];
                }
                _ => d.copy_from_slice(s),
            }
        }
    }
}

/// `[n, a, b] → [n, b, a]`: per sample, `out[j][i] = x[i][j]` (channels first ↔ channels last).
pub fn transpose_batched(x: &[f32], n: usize, a: usize, b: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * a * b);
    transpose_into(&x[..n * a * b], a, b, &mut out.spare_capacity_mut()[..n * a * b]);
    // SAFETY: `transpose_into` writes every element.
    unsafe { out.set_len(n * a * b) };
    out
}

/// `dst = xᵀ` for each of the `[a, b]` matrices in `x` (`dst` as long as `x`), one task per
/// matrix: writes every element of `dst`.
pub fn transpose_into(x: &[f32], a: usize, b: usize, dst: &mut [MaybeUninit<f32>]) {
    assert!(x.len() == dst.len() && x.len().is_multiple_of((a * b).max(1)));
    for_chunks(dst, a * b, x.len(), |s, dst| {
        let src = &x[s * a * b..(s + 1) * a * b];
        for i in 0..a {
            for j in 0..b {
                dst[j * a + i].write(src[i * b + j]);
            }
        }
    });
}

/// Output indices `o` in `[lo, hi)` (clamped to `out`) whose input index
/// `i = o·stride − pad + offset` lies in `[0, len)`: the positions a kernel tap at `offset`
/// (`k·dilation`) reads inside the image rather than in the padding.
pub(crate) fn inside(len: usize, out: usize, stride: usize, pad: usize, offset: usize) -> (usize, usize) {
    // o·s ≥ pad − offset  and  o·s < len + pad − offset.
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let hi = (len + pad).saturating_sub(offset).div_ceil(stride);
    let hi = hi.min(out);
    (lo.min(hi), hi)
}

/// What one kernel tap `(ky, kx)` reads: output rows `[ylo, yhi)` and columns `[xlo, xhi)` read
/// inside the image, output `(oy, ox)` reading input row `oy·sh + ky·dh − ph` and column
/// `ix0 + (ox − xlo)·sw` (`stride = (sh, sw)`, `dil = (dh, dw)`). Computed once per call for the `kh·kw` taps (the divisions in
/// `inside` cost more than the copies when repeated per sample and channel).
struct TapSpan {
    ylo: usize,
    yhi: usize,
    xlo: usize,
    xhi: usize,
    ix0: usize,
    ky_off: usize,
    flat: Option<FlatRun>,
}

/// With stride 1 and `Wo = W`, output position `q = oy·Wo + ox` of a tap reads input pixel
/// `q − a + from` for one offset: the tap's whole block is one run over output indices
/// `[a, b)`, except for the entries in `pads`, which read padding columns.
struct FlatRun {
    a: usize,
    b: usize,
    from: usize,
    pads: Vec<usize>,
}

impl TapSpan {
    /// The spans of every tap, indexed `ky·kw + kx`; `None` for a tap that reads only padding.
    fn all(g: &Geom) -> Vec<Option<TapSpan>> {
        (0..g.kh * g.kw).map(|i| TapSpan::new(g, i / g.kw, i % g.kw)).collect()
    }

    fn new(g: &Geom, ky: usize, kx: usize) -> Option<TapSpan> {
        let (ylo, yhi) = inside(g.h, g.ho, g.stride.0, g.ph, ky * g.dil.0);
        let (xlo, xhi) = inside(g.w, g.wo, g.stride.1, g.pw, kx * g.dil.1);
        if ylo >= yhi || xlo >= xhi {
            return None;
        }
        let mut span = TapSpan { ylo, yhi, xlo, xhi, ix0: xlo * g.stride.1 + kx * g.dil.1 - g.pw, ky_off: ky * g.dil.0, flat: None };
        if g.stride == (1, 1) && g.wo == g.w {
            let (a, b) = (ylo * g.wo + xlo, (yhi - 1) * g.wo + xhi);
            let pads = (ylo..yhi).flat_map(|oy| (0..xlo).chain(xhi..g.wo).map(move |ox| oy * g.wo + ox)).filter(|q| (a..b).contains(q)).collect();
            span.flat = Some(FlatRun { a, b, from: span.iy(g, ylo) * g.w + span.ix0, pads });
        }
        Some(span)
    }

    /// Input row of output row `oy`.
    fn iy(&self, g: &Geom, oy: usize) -> usize {
        oy * g.stride.0 + self.ky_off - g.ph
    }
}

/// The patch matrix in tap-major layout: `cols[t][s·L + oy·Wo + ox] = x[s, c, iy, ix]` with
/// `t = (c·kh + ky)·kw + kx`, `iy = oy·sh − ph + ky·dh`, `ix = ox·sw − pw + kx·dw`, and
/// 0 where `(iy, ix)` falls in the padding. A stride-1 "same-width" tap is one copy per sample
/// (then its padding columns are zeroed); otherwise each output row is one run.
pub fn unfold_tap_major(x: &[f32], g: &Geom) -> Vec<f32> {
    let (nl, l, plane, taps) = (g.n * g.l(), g.l(), g.h * g.w, g.kh * g.kw);
    let spans = TapSpan::all(g);
    let len = g.k() * nl;
    // Only the entries that read padding are zeroed, each by the task that fills its row: the
    // rest is overwritten, and a memset of the whole matrix would be a serial pass over it.
    // SAFETY: `unfold_row` initialises its whole row.
    unsafe { build_chunks(len, nl, len, |t, row| unfold_row(x, g, spans[t % taps].as_ref(), t / taps, plane, l, row)) }
}

/// Row `(ci, tap)` of the patch matrix: for each sample, the `L` values the tap reads from
/// channel `ci`, 0 where it reads padding. Writes every element of `row`.
fn unfold_row(x: &[f32], g: &Geom, span: Option<&TapSpan>, ci: usize, plane: usize, l: usize, row: &mut [MaybeUninit<f32>]) {
    let zero = MaybeUninit::new(0.0);
    let Some(span) = span else {
        row.fill(zero);
        return;
    };
    for s in 0..g.n {
        let src = &x[(s * g.c + ci) * plane..][..plane];
        let dst = &mut row[s * l..(s + 1) * l];
        if let Some(f) = &span.flat {
            dst[..f.a].fill(zero);
            dst[f.a..f.b].write_copy_of_slice(&src[f.from..f.from + (f.b - f.a)]);
            dst[f.b..].fill(zero);
            for &q in &f.pads {
                dst[q] = zero;
            }
            continue;
        }
        dst[..span.ylo * g.wo].fill(zero);
        dst[span.yhi * g.wo..].fill(zero);
        for oy in span.ylo..span.yhi {
            let src_row = &src[span.iy(g, oy) * g.w..][..g.w];
            let out = &mut dst[oy * g.wo..(oy + 1) * g.wo];
            out[..span.xlo].fill(zero);
            out[span.xhi..].fill(zero);
            for (j, d) in out[span.xlo..span.xhi].iter_mut().enumerate() {
                d.write(src_row[span.ix0 + j * g.stride.1]);
            }
        }
    }
}

/// The adjoint of `unfold_tap_major` (col2im) into `dx` (`N·C·H·W` long, every element of
/// which it writes): `dx[s, c, iy, ix] = Σ cols[t][s·L + oy·Wo + ox]` over the taps and
/// positions that read pixel `(iy, ix)`. One task per `(sample, channel)` plane, which only its
/// own channel's taps write. Consumes `cols`: in stride-1 same-width taps the entries that read
/// padding are zeroed first so that the whole block adds as one run.
pub fn fold_tap_major_into(mut cols: Vec<f32>, g: &Geom, dx: &mut [MaybeUninit<f32>]) {
    let (nl, l, plane, taps) = (g.n * g.l(), g.l(), g.h * g.w, g.kh * g.kw);
    assert!(dx.len() == g.n * g.c * plane && cols.len() == g.k() * nl);
    let spans = TapSpan::all(g);
    let work = cols.len();
    for_chunks(&mut cols, nl, work, |t, row| {
        if let Some(TapSpan { flat: Some(f), .. }) = &spans[t % taps] {
            for s in 0..g.n {
                for &q in &f.pads {
                    row[s * l + q] = 0.0;
                }
            }
        }
    });
    // Each plane is zeroed by the task that accumulates into it, not by the calling thread.
    for_chunks(dx, plane, work, |p, out| fold_plane(&cols, g, &spans, p, zeroed(out)));
}

/// Adds into plane `p` (`sample·C + channel`) of `dx` every patch entry that reads it.
fn fold_plane(cols: &[f32], g: &Geom, spans: &[Option<TapSpan>], p: usize, out: &mut [f32]) {
    let (nl, l, taps) = (g.n * g.l(), g.l(), g.kh * g.kw);
    let (s, ci) = (p / g.c, p % g.c);
    for (i, span) in spans.iter().enumerate() {
        let Some(span) = span else { continue };
        let row = &cols[(ci * taps + i) * nl + s * l..][..l];
        if let Some(f) = &span.flat {
            for (d, v) in out[f.from..f.from + (f.b - f.a)].iter_mut().zip(&row[f.a..f.b]) {
                *d += v;
            }
            continue;
        }
        for oy in span.ylo..span.yhi {
            let dst = &mut out[span.iy(g, oy) * g.w..][..g.w];
            for (j, v) in row[oy * g.wo + span.xlo..oy * g.wo + span.xhi].iter().enumerate() {
                dst[span.ix0 + j * g.stride.1] += v;
            }
        }
    }
}

/// `[a, b, inner] → [b, a, inner]`: swaps the two outer axes, moving `inner`-long runs.
pub fn swap_outer(x: &[f32], a: usize, b: usize, inner: usize) -> Vec<f32> {
    assert_eq!(x.len(), a * b * inner);
    // SAFETY: chunk `j` is `a` runs of `inner`, each copied whole.
    unsafe {
        build_chunks(x.len(), a * inner, x.len(), |j, dst| {
            for i in 0..a {
                dst[i * inner..(i + 1) * inner].write_copy_of_slice(&x[(i * b + j) * inner..][..inner]);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `(stride, padding, dilation)` case the conv ops allow, each axis with its own
    /// stride and dilation, on a non-square input.
    fn geoms() -> Vec<Geom> {
        let mut v = vec![];
        for (stride, ph, pw, dil, kh, kw) in [
            ((1, 1), 1, 1, (1, 1), 3, 3),
            ((2, 2), 1, 1, (1, 1), 3, 3),
            ((1, 1), 2, 0, (2, 2), 3, 2),
            ((2, 2), 0, 0, (1, 1), 1, 1),
            ((3, 3), 2, 1, (1, 1), 3, 3),
            ((1, 1), 0, 0, (1, 1), 5, 4),
            ((1, 1), 2, 2, (2, 2), 3, 3),
            ((1, 1), 3, 1, (1, 1), 3, 3),
            ((2, 1), 1, 0, (1, 1), 3, 1),
            ((1, 2), 0, 2, (1, 2), 1, 3),
            ((1, 1), 2, 1, (2, 1), 3, 3),
            ((1, 1), 1, 2, (1, 2), 3, 3),
            ((3, 2), 1, 2, (2, 1), 2, 3),
        ] {
            v.push(Geom::new(2, 3, (7, 6), (kh, kw), stride, (ph, pw), dil));
        }
        v
    }

    #[test]
    fn tap_major_unfold_matches_patch_rows() {
        for g in geoms() {
            let x: Vec<f32> = (0..g.n * g.c * g.h * g.w).map(|i| i as f32 + 1.0).collect();
            let cols = unfold_tap_major(&x, &g);
            let (k, l) = (g.k(), g.l());
            let mut row = vec![0f32; k];
            for s in 0..g.n {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        row.fill(0.0);
                        patch_row(&g, &x[s * g.c * g.h * g.w..], oy, ox, &mut row);
                        for (t, &v) in row.iter().enumerate() {
                            assert_eq!(cols[t * g.n * l + s * l + oy * g.wo + ox], v, "{g:?} tap {t} at ({s}, {oy}, {ox})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tap_major_fold_is_the_adjoint_of_unfold() {
        // <unfold(x), c> = <x, fold(c)> for any x, c (small integers: the sums are exact).
        for g in geoms() {
            let x: Vec<f32> = (0..g.n * g.c * g.h * g.w).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            let c: Vec<f32> = (0..g.k() * g.n * g.l()).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
            let lhs: f32 = unfold_tap_major(&x, &g).iter().zip(&c).map(|(a, b)| a * b).sum();
            // NaN where the fold would write nothing, so a missed element shows in the sum.
            let mut dx = vec![std::mem::MaybeUninit::new(f32::NAN); x.len()];
            fold_tap_major_into(c.clone(), &g, &mut dx);
            // SAFETY: every element was initialised (NaN) before the fold.
            let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * unsafe { b.assume_init() }).sum();
            assert_eq!(lhs, rhs, "{g:?}");
        }
    }

    #[test]
    fn swap_outer_moves_runs() {
        let x: Vec<f32> = (0..2 * 3 * 2).map(|i| i as f32).collect();
        assert_eq!(swap_outer(&x, 2, 3, 2), [0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
    }
}
