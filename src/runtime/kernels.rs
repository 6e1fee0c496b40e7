//! Integer kernels: activation quantisation to u8, im2col over u8 with the zero point as
//! padding, and the u8 × i8 → i32 GEMM, in a scalar reference form (the oracle) and a fast form
//! (rayon over row blocks; AVX2 `vpmaddwd` over 4 weight rows at a time, chosen at run time). Integer sums are exact, so
//! the two agree bit for bit; tests check it.

use crate::model::im2col::{patch_row, Geom};
use rayon::prelude::*;

/// Which implementation computes the GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain loops on one thread: the oracle.
    Reference,
    /// rayon over output rows, AVX2 when the CPU has it.
    Fast,
}

/// `q = clamp(round(x / s) + zp, qmin, qmax)`, stored as u8: an i8 code `q` is stored as
/// `q + 128` with zero point `zp + 128`, so one u8 kernel serves both activation types.
/// Returns the codes and the u8 zero point.
pub fn quantize_u8(x: &[f32], q: &crate::quant::QParams) -> (Vec<u8>, i32) {
    let mut codes = vec![0u8; x.len()];
    let zp = quantize_into(x, q, &mut codes, |c| c as u8);
    (codes, zp)
}

/// The codes of [`quantize_u8`] held as i16, the operand type of the compiled runtime's GEMM;
/// AVX2 eight at a time where the CPU has it (bit-identical to the scalar formula: tested).
pub fn quantize_i16(x: &[f32], q: &crate::quant::QParams) -> (Vec<i16>, i32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            let shift = if q.act == crate::quant::ActType::I8 { 128 } else { 0 };
            let mut codes = Vec::with_capacity(x.len());
            let out = &mut codes.spare_capacity_mut()[..x.len()];
            let run = |x: &[f32], out: &mut [std::mem::MaybeUninit<i16>]| {
                // SAFETY: the CPU has AVX2; the slices have equal lengths.
                unsafe { quantize_i16_avx2(x, q, shift, out) }
            };
            const CHUNK: usize = 1 << 16;
            if x.len() > 2 * CHUNK && rayon::current_num_threads() > 1 {
                x.par_chunks(CHUNK).zip(out.par_chunks_mut(CHUNK)).for_each(|(x, o)| run(x, o));
            } else {
                run(x, out);
            }
            // SAFETY: `quantize_i16_avx2` wrote every entry.
            unsafe { codes.set_len(x.len()) };
            return (codes, q.zero_point + shift);
        }
    }
    let mut codes = vec![0i16; x.len()];
    let zp = quantize_into(x, q, &mut codes, |c| c as i16);
    (codes, zp)
}

/// Writes the shifted codes of `x` into `out` (see [`quantize_u8`]); returns the shifted zero
/// point.
fn quantize_into<T: Copy, F: Fn(i32) -> T>(x: &[f32], q: &crate::quant::QParams, out: &mut [T], cast: F) -> i32 {
    let shift = match q.act {
        crate::quant::ActType::U8 => 0,
        crate::quant::ActType::I8 => 128,
    };
    fn encode<T, F: Fn(i32) -> T>(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [T], cast: &F) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = cast(q.quantize(v) + shift);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("sse4.1") {
            // The same scalar formula compiled with SSE4.1 (monomorphised and inlined here), where
            // rounding is an instruction sequence instead of a libm call; the results are identical.
            #[target_feature(enable = "sse4.1")]
            unsafe fn with_sse41<T, F: Fn(i32) -> T>(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [T], cast: &F) {
                encode(x, q, shift, out, cast)
            }
            // SAFETY: the CPU has SSE4.1.
            unsafe { with_sse41(x, q, shift, out, &cast) };
            return q.zero_point + shift;
        }
    }
    encode(x, q, shift, out, &cast);
    q.zero_point + shift
}

/// `clamp(round(x / s) + zp, qmin, qmax) + shift` for 8 lanes at a time. `round` is Rust's
/// (half away from zero): `t = trunc(v)`, `t + sign(v)` when `|v − t| ≥ 0.5` (`v − t` is exact).
/// `v` is clamped to ±2³⁰ before the integer conversion, which changes no clamped code but keeps
/// huge values from wrapping (`as i32` saturates; `cvttps2dq` does not).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_i16_avx2(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [std::mem::MaybeUninit<i16>]) {
    use std::arch::x86_64::*;
    let (qmin, qmax) = q.act.range();
    let n8 = x.len() / 8 * 8;
    let scale = _mm256_set1_ps(q.scale);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let sign_mask = _mm256_set1_ps(-0.0);
    let big = _mm256_set1_ps((1u32 << 30) as f32);
    let nbig = _mm256_set1_ps(-((1u32 << 30) as f32));
    let zp = _mm256_set1_epi32(q.zero_point);
    let (lo, hi) = (_mm256_set1_epi32(qmin + shift), _mm256_set1_epi32(qmax + shift));
    let sh = _mm256_set1_epi32(shift);
    let mut i = 0;
    while i < n8 {
        let v = _mm256_div_ps(_mm256_loadu_ps(x.as_ptr().add(i)), scale);
        let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(v, t));
        let step = _mm256_or_ps(_mm256_and_ps(v, sign_mask), one);
        let r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), step));
        let r = _mm256_min_ps(_mm256_max_ps(r, nbig), big);
        let c = _mm256_add_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(r), zp), sh);
        let c = _mm256_min_epi32(_mm256_max_epi32(c, lo), hi);
        // Pack 8 i32 → 8 i16 (values fit): packs within lanes, then gather the two halves.
        let p = _mm256_packs_epi32(c, c);
        let p = _mm256_permute4x64_epi64(p, 0b00_00_10_00);
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm256_castsi256_si128(p));
        i += 8;
    }
    for (o, &v) in out[n8..].iter_mut().zip(&x[n8..]) {
        o.write((q.quantize(v) + shift) as i16);
    }
}

/// Patches of one sample for a 2-d convolution, `[positions, stride]` row-major: the first
/// `k = C·kh·kw` entries of a row are ordered like the weight `[out, C, kh, kw]`, the rest (up to
/// `stride ≥ k`, padding to the fast kernel's 16-byte steps) meet zero weights. `x` holds the
/// `g.c` channels the patches read (one group's); out-of-image taps read `padv` (the zero point,
/// i.e. real 0).
pub fn im2col(x: &[u8], g: &Geom, padv: u8, stride: usize) -> Vec<u8> {
    let k = g.k();
    let mut out = vec![padv; g.l() * stride];
    for oy in 0..g.ho {
        for ox in 0..g.wo {
            let r = (oy * g.wo + ox) * stride;
            patch_row(g, x, oy, ox, &mut out[r..r + k]);
        }
    }
    out
}

/// GEMMs smaller than this run on the calling thread.
pub const PARALLEL_MIN_MACS: usize = 1 << 18;

/// `c[m][n] = Σ_{t<k} a[m][t] · b[n][t]` (a u8 rows of `stride ≥ k` bytes, b i8 `[N, K]`),
/// i32 exact. The fast path reads `b16`, `b` widened to i16 with rows of `stride` (entries past
/// `k` zero), packed once per layer; padding lets it run whole 16-wide steps.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8i8(a: &[u8], stride: usize, b: &[i8], b16: &[i16], m: usize, n: usize, k: usize, kernel: Kernel) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    match kernel {
        Kernel::Reference => {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0i32;
                    for t in 0..k {
                        acc += a[i * stride + t] as i32 * b[j * k + t] as i32;
                    }
                    c[i * n + j] = acc;
                }
            }
        }
        Kernel::Fast => {
            let row = row_fn();
            // Below ~256k multiply-adds, or with one thread, handing work to the pool costs more
            // than it saves.
            if m * n * k < PARALLEL_MIN_MACS || rayon::current_num_threads() == 1 {
                for (i, o) in c.chunks_mut(n).enumerate() {
                    row(&a[i * stride..(i + 1) * stride], b16, stride, o);
                }
                return c;
            }
            // Rows in chunks big enough to amortise scheduling, small enough to share the cores.
            let rows_per_task = (m / (4 * rayon::current_num_threads())).clamp(1, 64);
            c.par_chunks_mut(n * rows_per_task).enumerate().for_each(|(ci, out)| {
                for (r, o) in out.chunks_mut(n).enumerate() {
                    let i = ci * rows_per_task + r;
                    row(&a[i * stride..(i + 1) * stride], b16, stride, o);
                }
            });
        }
    }
    c
}

/// Computes one output row: `out[j] = Σ_t a[t] · b[j][t]`.
type RowFn = fn(&[u8], &[i16], usize, &mut [i32]);

/// The fastest row kernel this CPU supports.
fn row_fn() -> RowFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            return |a, b, k, o| unsafe { row_avx2(a, b, k, o) };
        }
    }
    row_scalar
}

fn row_scalar(a: &[u8], b: &[i16], k: usize, out: &mut [i32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = a.iter().zip(&b[j * k..(j + 1) * k]).map(|(&x, &y)| x as i32 * y as i32).sum();
    }
}

/// AVX2: 16 u8 of the row widened to i16 once, multiplied with 4 weight rows at a time by
/// `vpmaddwd` (i16 pairs summed into i32: exact, unlike `vpmaddubsw`, whose i16 pair sums
/// saturate at 255·127·2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(a: &[u8], b: &[i16], k: usize, out: &mut [i32]) {
    use std::arch::x86_64::*;
    #[inline(always)]
    unsafe fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
    let n = out.len();
    let k16 = k / 16 * 16;
    let mut j = 0;
    while j + 4 <= n {
        let (b0, b1, b2, b3) = (b.as_ptr().add(j * k), b.as_ptr().add((j + 1) * k), b.as_ptr().add((j + 2) * k), b.as_ptr().add((j + 3) * k));
        let (mut c0, mut c1, mut c2, mut c3) = (_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256());
        let mut t = 0;
        while t < k16 {
            let va = _mm256_cvtepu8_epi16(_mm_loadu_si128(a.as_ptr().add(t) as *const __m128i));
            c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(va, _mm256_loadu_si256(b0.add(t) as *const __m256i)));
            c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(va, _mm256_loadu_si256(b1.add(t) as *const __m256i)));
            c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(va, _mm256_loadu_si256(b2.add(t) as *const __m256i)));
            c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(va, _mm256_loadu_si256(b3.add(t) as *const __m256i)));
            t += 16;
        }
        let mut s = [hsum(c0), hsum(c1), hsum(c2), hsum(c3)];
        #[allow(clippy::needless_range_loop)] // indexes a and four raw pointers alike
        for t in k16..k {
            let x = a[t] as i32;
            s[0] += x * *b0.add(t) as i32;
            s[1] += x * *b1.add(t) as i32;
            s[2] += x * *b2.add(t) as i32;
            s[3] += x * *b3.add(t) as i32;
        }
        out[j..j + 4].copy_from_slice(&s);
        j += 4;
    }
    while j < n {
        let bj = b.as_ptr().add(j * k);
        let mut c0 = _mm256_setzero_si256();
        let mut t = 0;
        while t < k16 {
            let va = _mm256_cvtepu8_epi16(_mm_loadu_si128(a.as_ptr().add(t) as *const __m128i));
            c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(va, _mm256_loadu_si256(bj.add(t) as *const __m256i)));
            t += 16;
        }
        let mut s = hsum(c0);
        #[allow(clippy::needless_range_loop)]
        for t in k16..k {
            s += a[t] as i32 * *bj.add(t) as i32;
        }
        out[j] = s;
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gemm_equals_reference_bit_for_bit() {
        // Extreme codes included: 255 · 127 pairs would saturate vpmaddubsw. n = 7 and 37
        // exercise the 4-wide blocks and the remainder; k = 83 the 16-wide steps and the tail;
        // the second size is above PARALLEL_MIN_MACS, so the threaded path runs too.
        for (m, n, k) in [(7, 7, 83), (300, 37, 83)] {
            assert_eq!((m * n * k) >= PARALLEL_MIN_MACS, m == 300);
            let a: Vec<u8> = (0..m * k).map(|i| if i % 3 == 0 { 255 } else { ((i * 37) % 256) as u8 }).collect();
            let b: Vec<i8> = (0..n * k).map(|i| if i % 4 == 0 { 127 } else { ((i * 53) % 255) as i32 - 127 } as i8).collect();
            let b16: Vec<i16> = b.iter().map(|&v| v as i16).collect();
            let r = gemm_u8i8(&a, k, &b, &b16, m, n, k, Kernel::Reference);
            let f = gemm_u8i8(&a, k, &b, &b16, m, n, k, Kernel::Fast);
            assert_eq!(r, f);
            // Rows padded to a multiple of 16 with any activation bytes and zero weights.
            let kp = k.div_ceil(16) * 16;
            let ap: Vec<u8> = (0..m * kp).map(|i| if i % kp < k { a[i / kp * k + i % kp] } else { 200 }).collect();
            let bp: Vec<i16> = (0..n * kp).map(|i| if i % kp < k { b16[i / kp * k + i % kp] } else { 0 }).collect();
            assert_eq!(gemm_u8i8(&ap, kp, &b, &bp, m, n, k, Kernel::Fast), r);
            assert_eq!(gemm_u8i8(&ap, kp, &b, &bp, m, n, k, Kernel::Reference), r);
            assert_eq!(r[0], (0..k).map(|t| a[t] as i32 * b[t] as i32).sum::<i32>());
        }
    }

    #[test]
    fn vector_quantisation_equals_the_scalar_formula() {
        use crate::quant::{ActType, QParams};
        // Halves (ties round away from zero), negatives, values far outside the range, ±0.
        let mut x: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.25 * 0.1).collect();
        x.extend([0.05, -0.05, 0.15, -0.15, 1e30, -1e30, 3e9, -3e9, 0.0, -0.0, 12.75, -12.75, 0.1 * 127.5, -0.1 * 128.5]);
        for act in [ActType::U8, ActType::I8] {
            for q in [QParams { scale: 0.1, zero_point: if act == ActType::U8 { 37 } else { 0 }, act }, QParams { scale: 0.0123, zero_point: 0, act }] {
                let (want, zw) = quantize_u8(&x, &q);
                let (got, zg) = quantize_i16(&x, &q);
                assert_eq!(zw, zg);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(*g, *w as i16, "x = {} under {q:?}", x[i]);
                }
            }
        }
    }

    #[test]
    fn im2col_pads_with_the_zero_point() {
        // 1 channel 2x2 image, 3x3 kernel, pad 1: the centre tap of position (0,0) is x[0].
        let x = [1u8, 2, 3, 4];
        let g = Geom { n: 1, c: 1, h: 2, w: 2, kh: 3, kw: 3, stride: 1, ph: 1, pw: 1, dil: 1, ho: 2, wo: 2 };
        let cols = im2col(&x, &g, 9, 9);
        assert_eq!(&cols[..9], &[9, 9, 9, 9, 1, 2, 9, 3, 4]);
    }
}
