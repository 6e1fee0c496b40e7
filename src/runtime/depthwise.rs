//! Depthwise convolutions (as many groups as input channels, one output channel each) in the
//! compiled plans: a direct kernel over channels-last input, vectorised across channels, where
//! a GEMM per one-channel group would be all overhead. For sample `s`, output position
//! `(oy, ox)` and channel `c`:
//! `acc[c] = Σ_{ky, kx} x[s, oy·sy − py + ky·dy, ox·sx − px + kx·dx, c] · w[ky, kx, c]`,
//! a tap in the padding reading `pad` (0.0, or an integer layer's zero-point code), taps summed
//! in `(ky, kx)` order. Each output row then goes through the layer's own epilogue row, the same
//! as after its GEMM, so the integer kernel is exact and bit-identical to the reference GEMM.

use super::epilogue::FinishRow;
use super::layout::ConvShape;
use crate::model::vmath::Lanes;
#[cfg(target_arch = "x86_64")]
use crate::model::vmath::{F32x16, F32x8};
use std::ops::{AddAssign, Mul};

/// Whether a conv is depthwise (multiplier 1): one input and one output channel per group.
pub fn is_depthwise(g: &ConvShape) -> bool {
    g.groups > 1 && g.groups == g.c && g.o == g.c
}

/// Weights `[C, 1, kh, kw]` (row-major) reordered tap-major, `[kh·kw][C]`, so that each tap's
/// weights for all channels are contiguous.
pub fn tap_major<T: Copy>(g: &ConvShape, values: &[T]) -> Vec<T> {
    let taps = g.kh * g.kw;
    (0..taps).flat_map(|t| (0..g.c).map(move |c| values[c * taps + t])).collect()
}

/// Runs the depthwise conv over `x` (`n` samples, channels last) with tap-major weights `w`;
/// `finish.row(acc, row, 0, out)` writes output row `row` (one position's channels) from its
/// accumulators (inlined here, so it runs on the instruction set picked here) and must write
/// all of `out`; the activation then runs over each sample's rows at once, and `finish.after`
/// on each row. Returns `[n·ho·wo, C]`.
pub fn run<A, W, Acc, O, F: FinishRow<Acc, O>>(g: &ConvShape, w: &[W], x: &[A], pad: A, n: usize, finish: &F) -> Vec<O>
where
    A: Copy + Into<Acc>,
    W: Copy + Into<Acc>,
    Acc: Copy + Default + Mul<Output = Acc> + AddAssign,
{
    #[cfg(target_arch = "x86_64")]
    {
        if crate::model::vmath::has_f32x16() {
            #[target_feature(enable = "avx512f")]
            unsafe fn widest<A, W, Acc, O, F: FinishRow<Acc, O>>(g: &ConvShape, w: &[W], x: &[A], pad: A, n: usize, finish: &F) -> Vec<O>
            where
                A: Copy + Into<Acc>,
                W: Copy + Into<Acc>,
                Acc: Copy + Default + Mul<Output = Acc> + AddAssign,
            {
                rows::<F32x16, A, W, Acc, O, F>(g, w, x, pad, n, finish)
            }
            // SAFETY: `has_f32x16` found AVX-512F.
            return unsafe { widest(g, w, x, pad, n, finish) };
        }
        if crate::model::vmath::has_f32x8() {
            #[target_feature(enable = "avx2")]
            unsafe fn wide<A, W, Acc, O, F: FinishRow<Acc, O>>(g: &ConvShape, w: &[W], x: &[A], pad: A, n: usize, finish: &F) -> Vec<O>
            where
                A: Copy + Into<Acc>,
                W: Copy + Into<Acc>,
                Acc: Copy + Default + Mul<Output = Acc> + AddAssign,
            {
                rows::<F32x8, A, W, Acc, O, F>(g, w, x, pad, n, finish)
            }
            // SAFETY: the CPU has AVX2.
            return unsafe { wide(g, w, x, pad, n, finish) };
        }
    }
    // SAFETY: scalars need no CPU feature.
    unsafe { rows::<f32, A, W, Acc, O, F>(g, w, x, pad, n, finish) }
}

/// Channels summed together in registers.
const BLOCK: usize = 16;

/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn rows<V: Lanes, A, W, Acc, O, F: FinishRow<Acc, O>>(g: &ConvShape, w: &[W], x: &[A], pad: A, n: usize, finish: &F) -> Vec<O>
where
    A: Copy + Into<Acc>,
    W: Copy + Into<Acc>,
    Acc: Copy + Default + Mul<Output = Acc> + AddAssign,
{
    let c = g.c;
    let (positions, taps) = (g.ho * g.wo, g.kh * g.kw);
    let rows = n * positions;
    assert!(w.len() == taps * c && x.len() >= n * g.h * g.w * c, "depthwise weights of {} values, input of {}", w.len(), x.len());
    let mut y: Vec<O> = Vec::with_capacity(rows * c);
    let out = &mut y.spare_capacity_mut()[..rows * c];
    // Each sample is copied into a plane with its padding filled in, so that every tap of every
    // position reads at `position base + tap offset` without a test for the border.
    let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
    let mut plane = vec![pad; hp * wp * c];
    let tap_at: Vec<usize> = (0..taps).map(|t| ((t / g.kw) * g.dil.0 * wp + (t % g.kw) * g.dil.1) * c).collect();
    let mut acc = vec![Acc::default(); c];
    for s in 0..n {
        let sample = &x[s * g.h * g.w * c..(s + 1) * g.h * g.w * c];
        for (iy, line) in sample.chunks_exact(g.w * c).enumerate() {
            let at = ((iy + g.pad.0) * wp + g.pad.1) * c;
            plane[at..at + g.w * c].copy_from_slice(line);
        }
        for p in 0..positions {
            let (oy, ox) = (p / g.wo, p % g.wo);
            let base = (oy * g.stride.0 * wp + ox * g.stride.1) * c;
            // Every tap lies in the plane: the last one of the last position reads row
            // `(ho − 1)·sy + (kh − 1)·dy < hp` and column `(wo − 1)·sx + (kw − 1)·dx < wp`.
            debug_assert!(base + tap_at[taps - 1] + c <= plane.len());
            let mut c0 = 0;
            while c0 + BLOCK <= c {
                let mut a = [Acc::default(); BLOCK];
                for (t, &d) in tap_at.iter().enumerate() {
                    // SAFETY: in the plane (above) and in the tap-major weights `[taps][c]`.
                    let src: &[A; BLOCK] = &*(plane.as_ptr().add(base + d + c0) as *const [A; BLOCK]);
                    let wt: &[W; BLOCK] = &*(w.as_ptr().add(t * c + c0) as *const [W; BLOCK]);
                    for j in 0..BLOCK {
                        a[j] += src[j].into() * wt[j].into();
                    }
                }
                acc[c0..c0 + BLOCK].copy_from_slice(&a);
                c0 += BLOCK;
            }
            if c0 < c {
                let rest = &mut acc[c0..];
                rest.fill(Acc::default());
                for (t, &d) in tap_at.iter().enumerate() {
                    let (src, wt) = (&plane[base + d + c0..base + d + c], &w[t * c + c0..(t + 1) * c]);
                    for ((a, &xv), &wv) in rest.iter_mut().zip(src).zip(wt) {
                        *a += xv.into() * wv.into();
                    }
                }
            }
            let row = s * positions + p;
            finish.row(&acc, row, 0, &mut out[row * c..(row + 1) * c]);
        }
        // The sample's rows lie together: the activation runs over all of them at once.
        let sample = s * positions..(s + 1) * positions;
        if finish.has_act() {
            finish.activate::<V>(&mut out[sample.start * c..sample.end * c]);
        }
        if finish.has_after() {
            for row in sample {
                finish.after(row, 0, &mut out[row * c..(row + 1) * c]);
            }
        }
    }
    // SAFETY: `finish` wrote every output row.
    unsafe { y.set_len(rows * c) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::layout::conv_shape;
    use std::mem::MaybeUninit;

    /// A strided, dilated, padded depthwise conv over 2 samples, in integers: every output equals
    /// the sum by definition, padding taps reading the pad code.
    #[test]
    fn integer_depthwise_equals_its_definition() {
        let g = conv_shape(&[5, 6, 7], 5, (3, 2), (2, 1), (1, 1), (1, 2), 5).unwrap();
        assert!(is_depthwise(&g));
        let n = 2;
        let x: Vec<u8> = (0..n * g.h * g.w * g.c).map(|i| (i * 37 % 251) as u8).collect();
        let w: Vec<i8> = (0..g.c * g.kh * g.kw).map(|i| (i as i32 * 53 % 255 - 127) as i8).collect();
        let pad = 9u8;
        struct Copy;
        impl FinishRow<i32, i32> for Copy {
            fn row(&self, acc: &[i32], _: usize, _: usize, out: &mut [MaybeUninit<i32>]) {
                out.iter_mut().zip(acc).for_each(|(o, &a)| _ = o.write(a));
            }
        }
        let y: Vec<i32> = run(&g, &tap_major(&g, &w), &x, pad, n, &Copy);
        for s in 0..n {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    for c in 0..g.c {
                        let mut want = 0i32;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride.0 + ky * g.dil.0) as isize - g.pad.0 as isize;
                                let ix = (ox * g.stride.1 + kx * g.dil.1) as isize - g.pad.1 as isize;
                                let v = if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize { pad } else { x[((s * g.h + iy as usize) * g.w + ix as usize) * g.c + c] };
                                want += i32::from(v) * i32::from(w[(c * g.kh + ky) * g.kw + kx]);
                            }
                        }
                        assert_eq!(y[((s * g.ho + oy) * g.wo + ox) * g.c + c], want, "s {s} oy {oy} ox {ox} c {c}");
                    }
                }
            }
        }
    }
}
