//! Max and average pooling over `[N, C, H, W]` (1-d pooling is the same over a height of 1),
//! with PyTorch's semantics (floor or ceil mode) and backward passes. Window `(oy, ox)` covers
//! rows `oy·sh − ph + ky` and columns `ox·sw − pw + kx`; positions in the padding are skipped.
//! - max: `y = max` over the window, the first maximum in `(ky, kx)` order (a NaN wins, as in
//!   PyTorch); `dx` receives `dy` at that position.
//! - average: `y = Σ x / d` with `d` the count of the window's positions inside the image, or
//!   with `count_include_pad` inside the padded image (`kh·kw`, except where a ceil-mode window
//!   runs past the padding); `dx` receives `dy / d` at every position of the window.
//!
//! Uses `parallel`.

use super::conv_op::{f32_slice, with_f32};
use super::vmath::{over_row, Lanes};
use crate::error::Result;
use crate::parallel::{build_chunks, for_chunks};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Per output index along one axis, the in-image input span `[start, end)` and the count of
/// the window's positions inside the padded input.
type Spans = Vec<(usize, usize, usize)>;

/// Which pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg { count_include_pad: bool },
}

/// A pooling op's geometry on one `h × w` plane.
#[derive(Debug, Clone, Copy)]
pub struct PoolGeom {
    pub kind: PoolKind,
    pub k: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    /// PyTorch's `ceil_mode`: the output size rounds up ([`pool_len`]).
    pub ceil: bool,
    pub h: usize,
    pub w: usize,
}

/// A pool's output length along one axis, PyTorch's: `⌊(len + 2·pad − k) / stride⌋ + 1`, or
/// with `ceil` `⌈(len + 2·pad − k) / stride⌉ + 1`, less one where that last window would start
/// past the input (at or after `len + pad` in padded coordinates), so every window reads at
/// least one input position. The graph checks `k ≤ len + 2·pad` and `2·pad ≤ k` first.
pub fn pool_len(len: usize, k: usize, stride: usize, pad: usize, ceil: bool) -> usize {
    let span = len + 2 * pad - k;
    match ceil {
        false => span / stride + 1,
        true => {
            let out = span.div_ceil(stride) + 1;
            out - usize::from((out - 1) * stride >= len + pad)
        }
    }
}

impl PoolGeom {
    /// Output size per axis ([`pool_len`]).
    pub fn out(&self) -> (usize, usize) {
        (pool_len(self.h, self.k.0, self.stride.0, self.pad.0, self.ceil), pool_len(self.w, self.k.1, self.stride.1, self.pad.1, self.ceil))
    }

    /// Each output index's in-image input span `[start, end)` along one axis, and how many of
    /// the window's positions lie inside the padded input `[−p, len + p)`.
    fn spans(out: usize, s: usize, p: usize, k: usize, len: usize) -> Spans {
        (0..out)
            .map(|o| {
                let start = (o * s) as isize - p as isize;
                let padded_end = (start + k as isize).min((len + p) as isize);
                (start.max(0) as usize, ((start + k as isize).min(len as isize)).max(0) as usize, (padded_end - start) as usize)
            })
            .collect()
    }

    /// The row spans and column spans of every window, computed once per call.
    fn windows(&self) -> (Spans, Spans) {
        let (ho, wo) = self.out();
        (Self::spans(ho, self.stride.0, self.pad.0, self.k.0, self.h), Self::spans(wo, self.stride.1, self.pad.1, self.k.1, self.w))
    }

    /// The average's divisor of the window over `rows` and `cols`: its positions inside the
    /// padded input (`count_include_pad`) or inside the image.
    fn divisor(&self, rows: (usize, usize, usize), cols: (usize, usize, usize)) -> f32 {
        match self.kind {
            PoolKind::Avg { count_include_pad: true } => (rows.2 * cols.2) as f32,
            _ => ((rows.1 - rows.0) * (cols.1 - cols.0)).max(1) as f32,
        }
    }
}

/// The index in the plane `x` (`w` wide) of the first maximum over rows `ys` and columns `xs`:
/// `v > best` or a NaN takes the place, as in PyTorch. Windows are never empty (the graph keeps
/// the padding at most half the kernel, and [`pool_len`] drops a window past the input).
#[inline(always)]
fn argmax(x: &[f32], w: usize, (y0, y1, _): (usize, usize, usize), (x0, x1, _): (usize, usize, usize)) -> usize {
    let (mut bi, mut bv) = (y0 * w + x0, x[y0 * w + x0]);
    for iy in y0..y1 {
        let start = iy * w + x0;
        for (j, &v) in x[start..iy * w + x1].iter().enumerate() {
            if v > bv || v.is_nan() {
                (bi, bv) = (start + j, v);
            }
        }
    }
    bi
}

/// Planes per task: enough for a few thousand outputs, so that small planes (a 1-d signal's)
/// do not cost a task each.
fn planes_per_task(outputs_per_plane: usize) -> usize {
    (4096 / outputs_per_plane.max(1)).max(1)
}

impl PoolGeom {
    /// Pools one plane `src` into `out`.
    fn plane(&self, src: &[f32], rows: &Spans, cols: &Spans, out: &mut [std::mem::MaybeUninit<f32>]) {
        let wo = cols.len();
        for (oy, &ry) in rows.iter().enumerate() {
            for (ox, &rx) in cols.iter().enumerate() {
                let v = match self.kind {
                    PoolKind::Max => src[argmax(src, self.w, ry, rx)],
                    PoolKind::Avg { .. } => {
                        let sum: f32 = (ry.0..ry.1).map(|iy| src[iy * self.w + rx.0..iy * self.w + rx.1].iter().sum::<f32>()).sum();
                        sum / self.divisor(ry, rx)
                    }
                };
                out[oy * wo + ox].write(v);
            }
        }
    }

    /// Adds the gradient `dy` of one plane's outputs into `out`, the gradient of its input `src`.
    fn plane_grad(&self, src: &[f32], dy: &[f32], rows: &Spans, cols: &Spans, out: &mut [f32]) {
        let wo = cols.len();
        for (oy, &ry) in rows.iter().enumerate() {
            for (ox, &rx) in cols.iter().enumerate() {
                let d = dy[oy * wo + ox];
                match self.kind {
                    PoolKind::Max => out[argmax(src, self.w, ry, rx)] += d,
                    PoolKind::Avg { .. } => {
                        let share = d / self.divisor(ry, rx);
                        for iy in ry.0..ry.1 {
                            out[iy * self.w + rx.0..iy * self.w + rx.1].iter_mut().for_each(|v| *v += share);
                        }
                    }
                }
            }
        }
    }
}

struct Pool(PoolGeom);

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = f32_slice(s, l, self.name())?;
        let dims = l.shape().dims().to_vec();
        let planes = dims[0] * dims[1];
        let (plane, (ho, wo)) = (g.h * g.w, g.out());
        let len = planes * ho * wo;
        let (rows, cols) = g.windows();
        let per = planes_per_task(ho * wo);
        // SAFETY: every output of every plane is written.
        let y = unsafe {
            build_chunks(len, per * ho * wo, len * g.k.0 * g.k.1, |c, out| {
                for (j, out) in out.chunks_mut(ho * wo).enumerate() {
                    g.plane(&x[(c * per + j) * plane..][..plane], &rows, &cols, out);
                }
            })
        };
        Ok((CpuStorage::F32(y), Shape::from((dims[0], dims[1], ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = &self.0;
        let (plane, (ho, wo)) = (g.h * g.w, g.out());
        let grad = grad.contiguous()?;
        let dx = with_f32(x, self.name(), |xs| {
            with_f32(&grad, self.name(), |dys| {
                let mut dx = vec![0f32; xs.len()];
                let work = dx.len() * g.k.0 * g.k.1;
                let (rows, cols) = g.windows();
                let per = planes_per_task(ho * wo);
                for_chunks(&mut dx, per * plane, work, |c, out| {
                    for (j, out) in out.chunks_mut(plane).enumerate() {
                        let p = c * per + j;
                        g.plane_grad(&xs[p * plane..][..plane], &dys[p * ho * wo..][..ho * wo], &rows, &cols, out);
                    }
                });
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

/// Pools `planes` consecutive `h × w` planes of `x` on the calling thread (the compiled plans
/// run each part of a batch on its own thread).
pub fn pool_planes(g: &PoolGeom, x: &[f32], planes: usize) -> Vec<f32> {
    let (plane, (ho, wo)) = (g.h * g.w, g.out());
    let (rows, cols) = g.windows();
    let mut y = Vec::with_capacity(planes * ho * wo);
    for p in 0..planes {
        g.plane(&x[p * plane..][..plane], &rows, &cols, &mut y.spare_capacity_mut()[..ho * wo]);
        // SAFETY: `plane` wrote the plane's every output.
        unsafe { y.set_len(y.len() + ho * wo) };
    }
    y
}

crate::wide_f32_fn!(
    /// Pools channels-last `x` (`[N, H, W, C]`, `n` samples) into channels-last output,
    /// vectorised across channels, with the values [`PoolGeom::plane`] gives bit for bit: the
    /// max as `v > best` or a NaN (the first maximum's value), the average as the sum of each
    /// window row (in column order), summed over the rows, divided by the divisor.
    pub fn pool_channels_last(g: &PoolGeom, x: &[f32], n: usize, c: usize) -> Vec<f32> => channels_last::<Lanes>
);

/// [`pool_channels_last`], inlined into the caller that picks the instruction set. Each window
/// runs on explicit vectors of `V` across the channels (an update of the output in place
/// compiled to masked stores, several times slower), the last one overlapping, or of `V::Half`
/// for fewer channels than `V` holds (`over_row`).
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn channels_last<V: Lanes>(g: &PoolGeom, x: &[f32], n: usize, c: usize) -> Vec<f32> {
    let (ho, wo) = g.out();
    let (rows, cols) = g.windows();
    let len = n * ho * wo * c;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut y.spare_capacity_mut()[..len];
    for s in 0..n {
        let plane = &x[s * g.h * g.w * c..(s + 1) * g.h * g.w * c];
        for (oy, &ry @ (y0, y1, _)) in rows.iter().enumerate() {
            for (ox, &rx @ (x0, x1, _)) in cols.iter().enumerate() {
                let out = &mut spare[((s * ho + oy) * wo + ox) * c..][..c];
                let at = |iy: usize, ix: usize| (iy * g.w + ix) * c;
                assert!(y1 > y0 && x1 > x0 && at(y1 - 1, x1 - 1) + c <= plane.len(), "a window inside the plane");
                let win = Window { plane: plane.as_ptr(), at: &at, rows: (y0, y1), cols: (x0, x1) };
                let o = out.as_mut_ptr() as *mut f32;
                // SAFETY (every body): `c0 + W::N ≤ c` values from each window position
                // (asserted inside the plane) and into `out`; the CPU has `V`'s features, and so
                // `V::Half`'s.
                match g.kind {
                    PoolKind::Max => unsafe { over_row!(V, c, |c0| win.max::<V>(c0, o), win.max::<V::Half>(c0, o), win.max::<f32>(c0, o)) },
                    PoolKind::Avg { .. } => {
                        let d = g.divisor(ry, rx);
                        unsafe { over_row!(V, c, |c0| win.avg::<V>(c0, d, o), win.avg::<V::Half>(c0, d, o), win.avg::<f32>(c0, d, o)) }
                    }
                }
            }
        }
    }
    // SAFETY: every window wrote its `c` outputs, and the windows cover the output.
    unsafe { y.set_len(len) };
    y
}

/// One pooling window of a channels-last plane: `at(iy, ix)` is a position's first value.
struct Window<'a, F> {
    plane: *const f32,
    at: &'a F,
    rows: (usize, usize),
    cols: (usize, usize),
}

impl<F: Fn(usize, usize) -> usize> Window<'_, F> {
    /// `out[c0..c0 + W::N]` = the window's maximum of those channels, `max_first` from its
    /// first position in row order.
    ///
    /// # Safety
    /// Every position's `c0 + W::N` values lie in the plane and `out` holds them; the CPU has
    /// `W`'s features.
    #[inline(always)]
    unsafe fn max<W: Lanes>(&self, c0: usize, out: *mut f32) {
        // SAFETY: the caller's.
        unsafe {
            let mut best = W::load(self.plane.add((self.at)(self.rows.0, self.cols.0) + c0));
            for iy in self.rows.0..self.rows.1 {
                // The first position is `best` already.
                let from = if iy == self.rows.0 { self.cols.0 + 1 } else { self.cols.0 };
                for ix in from..self.cols.1 {
                    best = best.max_first(W::load(self.plane.add((self.at)(iy, ix) + c0)));
                }
            }
            best.store(out.add(c0));
        }
    }

    /// `out[c0..c0 + W::N]` = the sum of each window row (in column order), summed over the
    /// rows, divided by `d`; sums start from −0.0, as iterator sums of f32 do.
    ///
    /// # Safety
    /// As [`Window::max`].
    #[inline(always)]
    unsafe fn avg<W: Lanes>(&self, c0: usize, d: f32, out: *mut f32) {
        // SAFETY: the caller's.
        unsafe {
            let mut sum = W::splat(-0.0);
            for iy in self.rows.0..self.rows.1 {
                let mut row = W::splat(-0.0);
                for ix in self.cols.0..self.cols.1 {
                    row = row + W::load(self.plane.add((self.at)(iy, ix) + c0));
                }
                sum = sum + row;
            }
            (sum / W::splat(d)).store(out.add(c0));
        }
    }
}

/// Pools `x` (`[N, C, H, W]`) with `g` (whose `h`, `w` are set from `x`).
pub fn pool2d(x: &Tensor, g: PoolGeom) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    Ok(x.contiguous()?.apply_op1(Pool(PoolGeom { h, w, ..g }))?)
}

#[cfg(test)]
mod tests {
    use super::super::op_test_support::rnd;
    use super::*;

    #[test]
    fn max_pool_takes_the_first_maximum_and_routes_its_gradient() {
        // One 2x3 plane, window 2x2 stride 1: ties resolve to the first in scan order.
        let x = candle_core::Var::new(&[[[[1f32, 3., 3.], [2., 3., 0.]]]], &candle_core::Device::Cpu).unwrap();
        let g = PoolGeom { kind: PoolKind::Max, k: (2, 2), stride: (1, 1), pad: (0, 0), ceil: false, h: 0, w: 0 };
        let y = pool2d(x.as_tensor(), g).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [3., 3.]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, [0., 2., 0., 0., 0., 0.]);
    }

    #[test]
    fn average_pool_divisor_counts_padding_or_not() {
        // 1x3 plane [1, 2, 3], kernel 1x3, padding 1: windows [0, 1, 2], [2, 3, 0] (padded).
        let x = candle_core::Var::new(&[[[[1f32, 2., 3.]]]], &candle_core::Device::Cpu).unwrap();
        for (include, expect, dx) in [(true, [1f32, 5. / 3.], [1. / 3., 2. / 3., 1. / 3.]), (false, [1.5, 2.5], [0.5, 1., 0.5])] {
            let g = PoolGeom { kind: PoolKind::Avg { count_include_pad: include }, k: (1, 3), stride: (1, 2), pad: (0, 1), ceil: false, h: 0, w: 0 };
            let y = pool2d(x.as_tensor(), g).unwrap();
            let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(yv.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-6), "{yv:?} (include pad {include})");
            let grads = y.sum_all().unwrap().backward().unwrap();
            let d = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(d.iter().zip(dx).all(|(a, b)| (a - b).abs() < 1e-6), "{d:?} (include pad {include})");
        }
    }

    /// PyTorch's output lengths (`torch.nn.functional.max_pool1d(torch.zeros(1, 1, len), k,
    /// stride, pad, ceil_mode=True).shape[-1]`), the last case one whose last window would start
    /// in the right padding and is dropped.
    #[test]
    fn ceil_mode_lengths_are_pytorchs() {
        for (len, k, s, p, floor, ceil) in [(8, 3, 2, 0, 3, 4), (7, 3, 2, 0, 3, 3), (5, 2, 2, 0, 2, 3), (4, 3, 2, 1, 2, 3), (5, 2, 2, 1, 3, 3), (6, 3, 3, 1, 2, 3)] {
            assert_eq!((pool_len(len, k, s, p, false), pool_len(len, k, s, p, true)), (floor, ceil), "len {len} k {k} s {s} p {p}");
        }
    }

    /// A ceil-mode average whose last window runs past the padding divides by its positions
    /// inside the padded input (PyTorch's `count_include_pad`), or inside the image.
    #[test]
    fn a_ceil_mode_average_counts_the_padded_positions_it_covers() {
        // [1, 2, 3, 4], kernel 3, stride 2, padding 1, ceil: windows [0, 1, 2], [2, 3, 4], [4, 0, ·]
        // over the padded [0, 1, 2, 3, 4, 0]; the last covers one value and one padding.
        let x = candle_core::Tensor::new(&[[[[1f32, 2., 3., 4.]]]], &candle_core::Device::Cpu).unwrap();
        for (include, expect) in [(true, [1f32, 3., 2.]), (false, [1.5, 3., 4.])] {
            let g = PoolGeom { kind: PoolKind::Avg { count_include_pad: include }, k: (1, 3), stride: (1, 2), pad: (0, 1), ceil: true, h: 0, w: 0 };
            let y = pool2d(&x, g).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(y, expect, "include pad {include}");
        }
    }

    #[test]
    fn matches_candle_where_candle_is_right() {
        // Non-overlapping windows without padding: candle's avg pool and its backward agree.
        let x = candle_core::Var::from_tensor(&rnd(&[2, 3, 6, 4], 5)).unwrap();
        let g = PoolGeom { kind: PoolKind::Avg { count_include_pad: true }, k: (2, 2), stride: (2, 2), pad: (0, 0), ceil: false, h: 0, w: 0 };
        let ours = pool2d(x.as_tensor(), g).unwrap();
        let theirs = x.as_tensor().avg_pool2d(2).unwrap();
        let d = super::super::op_test_support::max_diff(&ours, &theirs);
        assert!(d < 1e-6, "{d}");
        for d in super::super::op_test_support::grad_diffs(&ours, &theirs, &rnd(ours.dims(), 6), &[&x]) {
            assert!(d < 1e-6, "{d}");
        }
    }

    /// The channels-last kernel of the compiled plans gives the plane kernel's values bit for
    /// bit, max and average (with and without the padding counted), strided and padded, on
    /// values with ties and a NaN, over 5 channels (one by one where vectors hold 8 or more),
    /// 11 (two overlapping half vectors of 8 on AVX-512; one by one on AVX2) and 21 (vectors of
    /// 16 or 8, the last overlapping).
    #[test]
    fn channels_last_pooling_equals_the_plane_kernel() {
        for c in [5, 11, 21] {
            channels_last_pooling_case(c);
        }
    }

    fn channels_last_pooling_case(c: usize) {
        let (n, h, w) = (2, 7, 6);
        let mut x: Vec<f32> = rnd(&[n, c, h, w], 3).flatten_all().unwrap().to_vec1().unwrap();
        // In channel 0 (a vector lane) and in the last channel (one by one).
        for at in [17, (c - 1) * h * w + 9] {
            x[at] = f32::NAN;
            x[at + 23] = x[at + 24];
        }
        // Ceil mode adds a last row of windows that runs past the padding (rows 6..9 of 7 + 1).
        for (kind, ceil) in [PoolKind::Max, PoolKind::Avg { count_include_pad: true }, PoolKind::Avg { count_include_pad: false }].into_iter().flat_map(|k| [(k, false), (k, true)]) {
            let g = PoolGeom { kind, k: (3, 2), stride: (2, 1), pad: (1, 1), ceil, h, w };
            let planes = pool_planes(&g, &x, n * c);
            let (ho, wo) = g.out();
            let cl_in: Vec<f32> = (0..n * h * w * c).map(|i| x[((i / (h * w * c)) * c + i % c) * h * w + (i / c) % (h * w)]).collect();
            let cl = pool_channels_last(&g, &cl_in, n, c);
            for (i, &v) in cl.iter().enumerate() {
                let (s, p, ch) = (i / (ho * wo * c), (i / c) % (ho * wo), i % c);
                let want = planes[(s * c + ch) * ho * wo + p];
                assert!(v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()), "{kind:?} (ceil {ceil}) at {i}: {v} vs {want}");
            }
        }
    }
}
