//! Convolutions whose groups each read one input channel in the compiled plans: depthwise
//! convs (as many groups as input channels, `m` output channels each, `m` the channel
//! multiplier) and convs of a one-channel input (one group, `m = O`). A direct kernel over
//! channels-last input, vectorised across output channels, where a GEMM per one-channel group,
//! or a GEMM whose patch rows are a few taps long, would be all overhead. For sample `s`, output
//! position `(oy, ox)` and output channel `c`, reading input channel `c / m`:
//! `acc[c] = Σ_{ky, kx} x[s, oy·sy − py + ky·dy, ox·sx − px + kx·dx, c / m] · w[ky, kx, c]`,
//! a tap in the padding reading `pad` (0.0, or an integer layer's zero-point code), taps summed
//! in `(ky, kx)` order, in f32, each a fused multiply-add (one rounding per tap, where a multiply
//! and an add round twice and take two instructions). An integer layer's codes and weights are
//! whole numbers, and so is every partial sum of up to [`MAX_EXACT_TAPS`] taps, below 2²⁴ where
//! f32 is exact: its sums are the i32 ones, fused or not. Each output row then goes through the layer's own epilogue row, the same as after
//! its GEMM, so the integer kernel is bit-identical to the reference GEMM.

use super::epilogue::{finish_phases, FinishRow};
use super::layout::ConvShape;
use crate::model::vmath::Lanes;
#[cfg(target_arch = "x86_64")]
use crate::model::vmath::{F32x16, F32x8};

/// Whether a conv runs on this kernel: each group reads one input channel, and the conv is
/// depthwise (several groups) or has more than one tap (a one-channel pointwise conv is a
/// scaling the GEMM does as well).
pub fn one_input_per_group(g: &ConvShape) -> bool {
    g.groups == g.c && g.o.is_multiple_of(g.c) && (g.groups > 1 || g.kh * g.kw > 1)
}

/// Weights `[O, 1, kh, kw]` (row-major) reordered tap-major, `[kh·kw][O]`, so that each tap's
/// weights for all output channels are contiguous.
pub fn tap_major<T: Copy>(g: &ConvShape, values: &[T]) -> Vec<T> {
    let taps = g.kh * g.kw;
    (0..taps).flat_map(|t| (0..g.o).map(move |c| values[c * taps + t])).collect()
}

/// Runs the depthwise conv over `x` (`n` samples, channels last) with tap-major weights `w`;
/// `finish.rows` writes each sample's output rows (one position's channels each) from their
/// accumulators (inlined here, so it runs on the instruction set picked here) and must write
/// all of `out`; the activation then runs over each sample's rows at once, and `finish.after`
/// on each row. The input (f32 values or u8 codes) is held in the padded plane as f32, `pad` in
/// the padding. Returns `[n·ho·wo, O]`.
pub fn run<A: Copy + Into<f32>, O, F: FinishRow<f32, O>>(g: &ConvShape, w: &[f32], x: &[A], pad: f32, n: usize, finish: &F) -> Vec<O> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::model::vmath::has_f32x16() {
            #[target_feature(enable = "avx512f")]
            unsafe fn widest<A: Copy + Into<f32>, O, F: FinishRow<f32, O>>(g: &ConvShape, w: &[f32], x: &[A], pad: f32, n: usize, finish: &F) -> Vec<O> {
                rows::<F32x16, A, O, F>(g, w, x, pad, n, finish)
            }
            // SAFETY: `has_f32x16` found AVX-512F.
            return unsafe { widest(g, w, x, pad, n, finish) };
        }
        if crate::model::vmath::has_f32x8_fma() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide<A: Copy + Into<f32>, O, F: FinishRow<f32, O>>(g: &ConvShape, w: &[f32], x: &[A], pad: f32, n: usize, finish: &F) -> Vec<O> {
                rows::<F32x8, A, O, F>(g, w, x, pad, n, finish)
            }
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { wide(g, w, x, pad, n, finish) };
        }
    }
    // SAFETY: scalars need no CPU feature.
    unsafe { rows::<f32, A, O, F>(g, w, x, pad, n, finish) }
}

/// The most taps an integer layer's conv may sum on this kernel: `taps · 255 · 128 < 2²⁴`, so
/// every partial sum of `u8 × i8` products is a whole number f32 holds exactly. Such sums cost a
/// tap one fused multiply-add, where 32-bit integer lanes take a widening and `vpmulld` (two
/// micro-ops).
pub const MAX_EXACT_TAPS: usize = (1 << 24) / (255 * 128);

/// Channels summed together in registers.
const BLOCK: usize = 16;

/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn rows<V: Lanes, A: Copy + Into<f32>, O, F: FinishRow<f32, O>>(g: &ConvShape, w: &[f32], x: &[A], pad: f32, n: usize, finish: &F) -> Vec<O> {
    // `c` output channels, each reading input channel `c / m`.
    let (c, m) = (g.o, g.o / g.c);
    let (positions, taps) = (g.ho * g.wo, g.kh * g.kw);
    let rows = n * positions;
    assert!(w.len() == taps * c && x.len() >= n * g.h * g.w * g.c, "direct conv weights of {} values, input of {}", w.len(), x.len());
    let mut y: Vec<O> = Vec::with_capacity(rows * c);
    let out = &mut y.spare_capacity_mut()[..rows * c];
    // Each sample is copied into a plane with its padding filled in, and each input channel
    // repeated for its `m` output channels, so that every tap of every position reads all
    // output channels' inputs at `position base + tap offset` without a test for the border.
    // A one-channel input's plane holds that channel once (`pc = 1` value a pixel): every output
    // reads it, so a tap's one value is broadcast to the block's lanes instead.
    let one = g.c == 1 && m > 1;
    // Fewer than 8 output channels are held 8 apart, and 9 to 15 (a pruned 16-channel layer)
    // 16 apart (planes, weights and sums; the extra lanes read the pad value and zero weights,
    // and are never written out), so that they sum in one vector as a whole block does: summed
    // one by one, each waits on its previous multiply-add, and in two blocks of 8 each position
    // is visited twice.
    let cs = match c {
        c if c <= BLOCK / 2 => BLOCK / 2,
        c if c < BLOCK => BLOCK,
        c => c,
    };
    let wide_w: Vec<f32>;
    let w = match cs == c {
        true => w,
        false => {
            wide_w = (0..taps).flat_map(|t| (0..cs).map(move |j| if j < c { w[t * c + j] } else { 0.0 })).collect();
            &wide_w
        }
    };
    let pc = if one { 1 } else { cs };
    let (hp, wp) = (g.pad.0 + g.h + g.pad_end.0, g.pad.1 + g.w + g.pad_end.1);
    let (mut kept, mut acc) = SCRATCH.with_borrow_mut(std::mem::take);
    // The plane starts on a 64-byte line, so that a block's 16 inputs (a pixel's channels at a
    // multiple of 16) are one line, not two: a zmm load split over two lines costs Zen 4 two.
    kept.resize(hp * wp * pc + 15, pad);
    let start = kept.as_ptr().align_offset(64).min(15);
    let plane = &mut kept[start..start + hp * wp * pc];
    // Each sample overwrites the plane's interior; its border (and, where a pixel holds more
    // lanes than it writes, the whole plane) reads `pad`.
    if one || pc == c {
        let (top, bottom) = (g.pad.0 * wp * pc, (g.pad.0 + g.h) * wp * pc);
        plane[..top].fill(pad);
        plane[bottom..].fill(pad);
        for row in plane[top..bottom].chunks_exact_mut(wp * pc) {
            row[..g.pad.1 * pc].fill(pad);
            row[(g.pad.1 + g.w) * pc..].fill(pad);
        }
    } else {
        plane.fill(pad);
    }
    let tap_at: Vec<usize> = (0..taps).map(|t| ((t / g.kw) * g.dil.0 * wp + (t % g.kw) * g.dil.1) * pc).collect();
    // Each position's base offset in the plane. Every tap lies in the plane: the last one of the
    // last position reads row `(ho − 1)·sy + (kh − 1)·dy < hp` and column
    // `(wo − 1)·sx + (kw − 1)·dx < wp`.
    let bases: Vec<usize> = (0..positions).map(|p| ((p / g.wo) * g.stride.0 * wp + (p % g.wo) * g.stride.1) * pc).collect();
    debug_assert!(bases[positions - 1] + tap_at[taps - 1] + pc <= plane.len());
    // One sample's accumulators, `[positions, cs]`, each written by its block before it is read.
    acc.resize(positions * cs, 0.0);
    for s in 0..n {
        let sample = &x[s * g.h * g.w * g.c..(s + 1) * g.h * g.w * g.c];
        for (iy, line) in sample.chunks_exact(g.w * g.c).enumerate() {
            let at = ((iy + g.pad.0) * wp + g.pad.1) * pc;
            let dst = &mut plane[at..at + g.w * pc];
            if (m == 1 && pc == c) || one {
                dst.iter_mut().zip(line).for_each(|(d, &v)| *d = v.into());
            } else if m == 1 {
                for (px, d) in line.chunks_exact(c).zip(dst.chunks_exact_mut(pc)) {
                    d.iter_mut().zip(px).for_each(|(d, &v)| *d = v.into());
                }
            } else {
                for (px, d) in line.chunks_exact(g.c).zip(dst.chunks_exact_mut(pc)) {
                    for (&v, d) in px.iter().zip(d.chunks_exact_mut(m)) {
                        d.fill(v.into());
                    }
                }
            }
        }
        // Channels in blocks of 16, each over every position, then what is left as the last 16
        // (more than 8 left: a pruned 29-channel layer) or the last 8 (a 24- or 40-channel
        // layer stays in vectors), overlapping finished channels where fewer are left (their
        // sums come out equal). `cs` is at least 8, and at least 16 where more than 8 are left.
        let mut c0 = 0;
        // SAFETY (each block): every tap lies in the plane (above) and `c0 + B ≤ cs`.
        while c0 + BLOCK <= cs {
            match one {
                true => sum_block::<BLOCK, true>(plane, w, &bases, &tap_at, cs, c0, &mut acc),
                false => sum_block::<BLOCK, false>(plane, w, &bases, &tap_at, cs, c0, &mut acc),
            }
            c0 += BLOCK;
        }
        if cs - c0 > BLOCK / 2 {
            match one {
                true => sum_block::<BLOCK, true>(plane, w, &bases, &tap_at, cs, cs - BLOCK, &mut acc),
                false => sum_block::<BLOCK, false>(plane, w, &bases, &tap_at, cs, cs - BLOCK, &mut acc),
            }
        } else if c0 < cs {
            match one {
                true => sum_block::<{ BLOCK / 2 }, true>(plane, w, &bases, &tap_at, cs, cs - BLOCK / 2, &mut acc),
                false => sum_block::<{ BLOCK / 2 }, false>(plane, w, &bases, &tap_at, cs, cs - BLOCK / 2, &mut acc),
            }
        }
        // The sample's rows lie together: the activation runs over all of them at once.
        let first = s * positions;
        finish_phases::<V, f32, O, F>(finish, &acc, cs, first, c, 0, c, &mut out[first * c..(first + positions) * c]);
    }
    SCRATCH.with_borrow_mut(|scratch| *scratch = (kept, acc));
    // SAFETY: `finish` wrote every output row.
    unsafe { y.set_len(rows * c) };
    y
}

thread_local! {
    /// Each thread's padded plane and accumulators, kept between calls: zero-filling fresh ones
    /// took 7 % of a 32×32 MobileNet's batch of one.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// For every position `p`: `acc[p·c + c0 + j] = Σ_t plane[bases[p] + tap_at[t] + c0 + j] ·
/// w[t·c + c0 + j]` for `j < B`, summed in tap order; with `ONE` (a one-channel plane)
/// `plane[bases[p] + tap_at[t]]` for every `j`. The common tap counts (3, 5, 9) hold the
/// block's weights in registers across the positions.
///
/// # Safety
/// Every tap's `B` values (one with `ONE`) lie in `plane` (`bases[p] + tap_at[t] + c0 + B ≤
/// plane.len()`) and in the tap-major weights `[taps][c]` (`c0 + B ≤ c`).
#[inline(always)]
unsafe fn sum_block<const B: usize, const ONE: bool>(plane: &[f32], w: &[f32], bases: &[usize], tap_at: &[usize], c: usize, c0: usize, acc: &mut [f32]) {
    // SAFETY (each arm): the caller's bounds.
    unsafe {
        match *tap_at {
            [a, b, d] => sum_block_taps::<3, B, ONE>(plane, w, bases, [a, b, d], c, c0, acc),
            [a, b, d, e, f] => sum_block_taps::<5, B, ONE>(plane, w, bases, [a, b, d, e, f], c, c0, acc),
            [a, b, d, e, f, g, h, i, j] => sum_block_taps::<9, B, ONE>(plane, w, bases, [a, b, d, e, f, g, h, i, j], c, c0, acc),
            _ => {
                for (&base, a) in bases.iter().zip(acc.chunks_exact_mut(c)) {
                    let mut s = [0f32; B];
                    for (t, &d) in tap_at.iter().enumerate() {
                        let src = input::<B, ONE>(plane, base + d, c0);
                        let wt: &[f32; B] = &*(w.as_ptr().add(t * c + c0) as *const [f32; B]);
                        for j in 0..B {
                            s[j] = src[j].mul_add(wt[j], s[j]);
                        }
                    }
                    a[c0..c0 + B].copy_from_slice(&s);
                }
            }
        }
    }
}

/// A tap's `B` inputs at `plane[at + c0..]`, or with `ONE` the one value `plane[at]` in every
/// lane.
///
/// # Safety
/// They lie in `plane`.
#[inline(always)]
unsafe fn input<const B: usize, const ONE: bool>(plane: &[f32], at: usize, c0: usize) -> [f32; B] {
    // SAFETY: the caller's bounds.
    unsafe {
        match ONE {
            true => [*plane.get_unchecked(at); B],
            false => *(plane.as_ptr().add(at + c0) as *const [f32; B]),
        }
    }
}

/// [`sum_block`] for `T` taps, the block's weights converted once and kept in registers.
///
/// # Safety
/// As [`sum_block`].
#[inline(always)]
unsafe fn sum_block_taps<const T: usize, const B: usize, const ONE: bool>(plane: &[f32], w: &[f32], bases: &[usize], tap_at: [usize; T], c: usize, c0: usize, acc: &mut [f32]) {
    debug_assert!(w.len() >= T * c && c0 + B <= c);
    // SAFETY: the caller's bounds (whole blocks, converted as vectors).
    let wv: [[f32; B]; T] = std::array::from_fn(|t| unsafe { *(w.as_ptr().add(t * c + c0) as *const [f32; B]) });
    for (&base, a) in bases.iter().zip(acc.chunks_exact_mut(c)) {
        let mut s = [0f32; B];
        for t in 0..T {
            // SAFETY: the caller's bounds.
            let src = unsafe { input::<B, ONE>(plane, base + tap_at[t], c0) };
            for j in 0..B {
                s[j] = src[j].mul_add(wv[t][j], s[j]);
            }
        }
        a[c0..c0 + B].copy_from_slice(&s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::layout::{conv_shape, LayerShape};
    use std::mem::MaybeUninit;

    /// Strided, dilated, padded convs with one input channel per group over 2 samples, in
    /// integers: depthwise convs, with channel multipliers 3 and 16, one-channel convs; tap
    /// counts the kernel holds in registers (3, 5, 9) and one it does not (6); channel counts
    /// of whole 16-blocks, a block of 8, a block of 8 overlapping another (9, 15) and fewer than
    /// 8 held in a block of 8. Every output equals the sum by definition,
    /// padding taps reading the pad code.
    #[test]
    fn integer_direct_conv_equals_its_definition() {
        let cases = [
            (5, 5, 5, (3, 2)),
            (5, 15, 5, (3, 2)),
            (1, 4, 1, (3, 2)),
            (40, 40, 40, (3, 3)),
            (3, 48, 3, (1, 5)),
            (1, 24, 1, (1, 3)),
            (2, 32, 2, (3, 3)),
            (1, 9, 1, (1, 5)),
            (2, 6, 2, (3, 3)),
            (7, 7, 7, (3, 3)),
            (14, 14, 14, (3, 3)),
            (13, 26, 13, (1, 3)),
            (29, 29, 29, (3, 3)),
        ];
        for (c, o, groups, kernel) in cases {
            let g = conv_shape(&[c, 6, 7], o, kernel, (2, 1), (1, 1), (1, 2), groups).unwrap();
            assert!(one_input_per_group(&g));
            check_against_definition(&g);
            // A pad of 1 row after and 3 columns before each sample folded in: each side its own.
            let padded = conv_shape(&[c, 6 + 1, 7 + 3], o, kernel, (2, 1), (1, 1), (1, 2), groups).unwrap();
            let Some(LayerShape::Conv(g)) = LayerShape::Conv(padded).with_pad_folded(&[(0, 1), (3, 0)]) else { panic!("the pad folds") };
            check_against_definition(&g);
        }
    }

    fn check_against_definition(g: &ConvShape) {
        let m = g.o / g.c;
        let n = 2;
        let x: Vec<u8> = (0..n * g.h * g.w * g.c).map(|i| (i * 37 % 251) as u8).collect();
        let w: Vec<i8> = (0..g.o * g.kh * g.kw).map(|i| (i as i32 * 53 % 255 - 127) as i8).collect();
        let pad = 9u8;
        // The sums as an integer layer's epilogue reads them: whole numbers, exact in f32.
        struct Exact;
        impl FinishRow<f32, i32> for Exact {
            fn row(&self, acc: &[f32], _: usize, _: usize, out: &mut [MaybeUninit<i32>]) {
                out.iter_mut().zip(acc).for_each(|(o, &a)| _ = o.write(a as i32));
            }
        }
        let held: Vec<f32> = tap_major(g, &w).into_iter().map(f32::from).collect();
        let y: Vec<i32> = run(g, &held, &x, f32::from(pad), n, &Exact);
        for s in 0..n {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    for c in 0..g.o {
                        let mut want = 0i32;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride.0 + ky * g.dil.0) as isize - g.pad.0 as isize;
                                let ix = (ox * g.stride.1 + kx * g.dil.1) as isize - g.pad.1 as isize;
                                let v = if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize { pad } else { x[((s * g.h + iy as usize) * g.w + ix as usize) * g.c + c / m] };
                                want += i32::from(v) * i32::from(w[(c * g.kh + ky) * g.kw + kx]);
                            }
                        }
                        assert_eq!(y[((s * g.ho + oy) * g.wo + ox) * g.o + c], want, "{g:?}: s {s} oy {oy} ox {ox} c {c}");
                    }
                }
            }
        }
    }
}
