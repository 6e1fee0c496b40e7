//! Integer kernels shared by both executors: activation quantisation (scalar reference, and
//! AVX2 for the compiled runtime's i16 or u8 codes), and the reference executor's im2col over u8 (the
//! zero point as padding) and scalar u8 × i8 → i32 GEMM — the oracle the packed GEMM
//! (`matmul::int8`, `matmul::vnni`) is tested against bit for bit.

use crate::model::im2col::{patch_row, Geom};
use rayon::prelude::*;

/// Which integer executor runs an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The float executor with each quantised layer replaced by plain loops: the oracle.
    Reference,
    /// The compiled runtime (`plan.rs`) with the packed GEMM on the best instruction set.
    Fast,
}

/// `q = clamp(round_half_even(x · (1/s)) + zp, qmin, qmax)` (`QParams::quantize`), stored as
/// u8: an i8 code `q` is stored as
/// `q + 128` with zero point `zp + 128`, so one u8 kernel serves both activation types.
/// Returns the codes and the u8 zero point.
pub fn quantize_u8(x: &[f32], q: &crate::quant::QParams) -> (Vec<u8>, i32) {
    let mut codes = vec![0u8; x.len()];
    let zp = quantize_into(x, q, &mut codes, |c| c as u8);
    (codes, zp)
}

/// A code type the compiled runtime's GEMMs read: i16 (the `vpmaddwd` pair kernels) or u8
/// (the quad kernels).
pub trait Code: Copy + Default + Send + Sync + 'static {
    /// A shifted code (0..=255) as this type.
    fn from_code(c: i32) -> Self;
    /// Stores 8 shifted codes (i32 lanes, each 0..=255) at `dst`.
    ///
    /// # Safety
    /// The CPU has AVX2 and `dst` has room for 8 values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store8(dst: *mut Self, c: std::arch::x86_64::__m256i);
    /// Stores 16 shifted codes (i32 lanes, each 0..=255) at `dst`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `dst` has room for 16 values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store16(dst: *mut Self, c: std::arch::x86_64::__m512i);
    /// Stores the lanes of `mask` among 16 shifted codes at `dst` (a masked `vpmovdb`/`vpmovdw`).
    ///
    /// # Safety
    /// The CPU has AVX-512F and `dst` has room for the lanes up to `mask`'s highest.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store16_masked(dst: *mut Self, c: std::arch::x86_64::__m512i, mask: u16);
    /// `out` as bytes when the codes are bytes.
    fn bytes(_out: &mut [std::mem::MaybeUninit<Self>]) -> Option<&mut [std::mem::MaybeUninit<u8>]> {
        None
    }
}

impl Code for i16 {
    fn from_code(c: i32) -> i16 {
        c as i16
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn store8(dst: *mut i16, c: std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        // 8 i32 → 8 i16 (values fit): packs within lanes, then gather the two halves.
        let p = _mm256_permute4x64_epi64(_mm256_packs_epi32(c, c), 0b00_00_10_00);
        _mm_storeu_si128(dst as *mut __m128i, _mm256_castsi256_si128(p));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn store16(dst: *mut i16, c: std::arch::x86_64::__m512i) {
        use std::arch::x86_64::*;
        _mm256_storeu_si256(dst as *mut __m256i, _mm512_cvtepi32_epi16(c));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn store16_masked(dst: *mut i16, c: std::arch::x86_64::__m512i, mask: u16) {
        std::arch::x86_64::_mm512_mask_cvtepi32_storeu_epi16(dst, mask, c);
    }
}

impl Code for u8 {
    fn from_code(c: i32) -> u8 {
        c as u8
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn store8(dst: *mut u8, c: std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        // 8 i32 → 8 i16 → 8 u8 (values fit both), the low 8 bytes stored.
        let p = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packs_epi32(c, c), 0b00_00_10_00));
        _mm_storel_epi64(dst as *mut __m128i, _mm_packus_epi16(p, p));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn store16(dst: *mut u8, c: std::arch::x86_64::__m512i) {
        use std::arch::x86_64::*;
        _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtepi32_epi8(c));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn store16_masked(dst: *mut u8, c: std::arch::x86_64::__m512i, mask: u16) {
        std::arch::x86_64::_mm512_mask_cvtepi32_storeu_epi8(dst as *mut i8, mask, c);
    }
    fn bytes(out: &mut [std::mem::MaybeUninit<u8>]) -> Option<&mut [std::mem::MaybeUninit<u8>]> {
        Some(out)
    }
}

/// The codes of [`quantize_u8`] as the compiled runtime's code type `T`, and whether every
/// value of `x` is finite (a non-finite one has no meaningful code; the caller reports it).
pub fn quantize_codes<T: Code>(x: &[f32], q: &crate::quant::QParams) -> (Vec<T>, bool) {
    let mut codes = Vec::with_capacity(x.len());
    let out = &mut codes.spare_capacity_mut()[..x.len()];
    const CHUNK: usize = 1 << 16;
    let finite = if x.len() > 2 * CHUNK && crate::parallel::may_split() {
        x.par_chunks(CHUNK).zip(out.par_chunks_mut(CHUNK)).map(|(x, o)| quantize_to(x, q, o)).reduce(|| true, |a, b| a & b)
    } else {
        quantize_to(x, q, out)
    };
    // SAFETY: `quantize_to` wrote every entry.
    unsafe { codes.set_len(x.len()) };
    (codes, finite)
}

/// Writes the shifted codes of `x` (see [`quantize_u8`]) into `out` (as long as `x`), sixteen
/// at a time with AVX-512 where the f32 kernels use it (`vmath::has_f32x16`), else eight with
/// AVX2 where the CPU has it (u8 codes 32 at a time; each bit-identical to the scalar formula:
/// tested); returns whether every value of `x` is finite.
#[inline]
pub fn quantize_to<T: Code>(x: &[f32], q: &crate::quant::QParams, out: &mut [std::mem::MaybeUninit<T>]) -> bool {
    assert_eq!(x.len(), out.len(), "codes for every value");
    #[cfg(target_arch = "x86_64")]
    {
        if crate::model::vmath::has_f32x16() {
            if std::is_x86_feature_detected!("avx512bw") {
                if let Some(bytes) = T::bytes(out) {
                    // SAFETY: the CPU has AVX-512F and BW; the slices have equal lengths.
                    return unsafe { quantize_avx512bw(x, q, code_shift(q), bytes) };
                }
            }
            // SAFETY: the CPU has AVX-512F; the slices have equal lengths.
            return unsafe { quantize_avx512(x, q, code_shift(q), out) };
        }
        if std::is_x86_feature_detected!("avx2") {
            if let Some(bytes) = T::bytes(out) {
                // SAFETY: the CPU has AVX2; the slices have equal lengths.
                return unsafe { quantize_avx2_bytes(x, q, code_shift(q), bytes) };
            }
            // SAFETY: the CPU has AVX2; the slices have equal lengths.
            return unsafe { quantize_avx2(x, q, code_shift(q), out) };
        }
    }
    let shift = code_shift(q);
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(T::from_code(q.quantize(v) + shift));
    }
    x.iter().all(|v| v.is_finite())
}

/// What is added to a code so that both activation types are held as u8 values: 0 for u8, 128
/// for i8.
pub fn code_shift(q: &crate::quant::QParams) -> i32 {
    match q.act {
        crate::quant::ActType::U8 | crate::quant::ActType::U7 => 0,
        crate::quant::ActType::I8 => 128,
    }
}

/// Writes the shifted codes of `x` into `out` (see [`quantize_u8`]); returns the shifted zero
/// point.
fn quantize_into<T: Copy, F: Fn(i32) -> T>(x: &[f32], q: &crate::quant::QParams, out: &mut [T], cast: F) -> i32 {
    let shift = code_shift(q);
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

/// `QParams::quantize(x) + shift` for 8 lanes at a time, the same operations in the same order:
/// `v = x · r` (`r = 1/s` in f32), clamped to `[qmin − zp, qmax − zp]`, converted by
/// `cvtps2dq` (round half to even: the default rounding mode, which Rust code never changes),
/// plus `zp + shift`. Returns whether every `x` is finite (`x − x` is NaN exactly for ±∞ and
/// NaN).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2<T: Code>(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [std::mem::MaybeUninit<T>]) -> bool {
    use std::arch::x86_64::*;
    let (lo, hi) = q.code_bounds();
    let n8 = x.len() / 8 * 8;
    let r = _mm256_set1_ps(1.0 / q.scale);
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let offset = _mm256_set1_epi32(q.zero_point + shift);
    let mut bad = _mm256_setzero_ps();
    let mut i = 0;
    while i < n8 {
        let xv = _mm256_loadu_ps(x.as_ptr().add(i));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(xv, xv), _mm256_setzero_ps(), _CMP_NEQ_UQ));
        let v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(xv, r), lo), hi);
        T::store8(out.as_mut_ptr().add(i) as *mut T, _mm256_add_epi32(_mm256_cvtps_epi32(v), offset));
        i += 8;
    }
    for (o, &v) in out[n8..].iter_mut().zip(&x[n8..]) {
        o.write(T::from_code(q.quantize(v) + shift));
    }
    _mm256_movemask_ps(bad) == 0 && x[n8..].iter().all(|v| v.is_finite())
}

/// [`quantize_avx2`] to u8 codes, 32 at a time: four vectors of codes narrowed together by
/// `vpackssdw` and `vpackuswb` and put back in order by one `vpermd`, where narrowing each
/// vector alone takes three shuffles for 8 codes; as in [`quantize_avx512bw`], the saturation
/// is the clamp below the range where the codes span all of 0..=255. The rest go through
/// [`quantize_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2_bytes(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [std::mem::MaybeUninit<u8>]) -> bool {
    let (qmin, qmax) = q.act.range();
    let n32 = x.len() / 32 * 32;
    let finite = match qmin + shift == 0 && qmax + shift == 255 {
        true => bytes32::<true>(&x[..n32], q, shift, &mut out[..n32]),
        false => bytes32::<false>(&x[..n32], q, shift, &mut out[..n32]),
    };
    finite & quantize_avx2(&x[n32..], q, shift, &mut out[n32..])
}

/// [`quantize_avx2_bytes`]'s blocks of 32 (`x.len()` a multiple of 32), the f32 clamp below
/// the range left to the saturation when `WHOLE_BYTE`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn bytes32<const WHOLE_BYTE: bool>(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [std::mem::MaybeUninit<u8>]) -> bool {
    use std::arch::x86_64::*;
    let (lo, hi) = q.code_bounds();
    let r = _mm256_set1_ps(1.0 / q.scale);
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let offset = _mm256_set1_epi32(q.zero_point + shift);
    // After the two packs, 128-bit lane `l` holds codes `4l..4l + 4` of each of the four
    // vectors in turn.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // The bits of every `x − x`: all zero exactly when every `x` was finite.
    let mut bad = _mm256_setzero_ps();
    for (x, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(32)) {
        let mut codes = [_mm256_setzero_si256(); 4];
        for (k, c) in codes.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(x.as_ptr().add(8 * k));
            bad = _mm256_or_ps(bad, _mm256_sub_ps(xv, xv));
            let v = _mm256_mul_ps(xv, r);
            let v = _mm256_min_ps(if WHOLE_BYTE { v } else { _mm256_max_ps(v, lo) }, hi);
            *c = _mm256_add_epi32(_mm256_cvtps_epi32(v), offset);
        }
        let b = _mm256_packus_epi16(_mm256_packs_epi32(codes[0], codes[1]), _mm256_packs_epi32(codes[2], codes[3]));
        _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(b, order));
    }
    _mm256_testz_si256(_mm256_castps_si256(bad), _mm256_castps_si256(bad)) == 1
}

/// [`quantize_avx2`] sixteen lanes at a time, the rounding mode given in the conversion, the
/// codes narrowed by `vpmovdb`/`vpmovdw` (they fit).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_avx512<T: Code>(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [std::mem::MaybeUninit<T>]) -> bool {
    use std::arch::x86_64::*;
    let (lo, hi) = q.code_bounds();
    let n16 = x.len() / 16 * 16;
    let r = _mm512_set1_ps(1.0 / q.scale);
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let offset = _mm512_set1_epi32(q.zero_point + shift);
    let mut bad: __mmask16 = 0;
    let codes = |xv: __m512| {
        let v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(xv, r), lo), hi);
        _mm512_add_epi32(_mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v), offset)
    };
    let mut i = 0;
    while i < n16 {
        let xv = _mm512_loadu_ps(x.as_ptr().add(i));
        bad |= _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(_mm512_sub_ps(xv, xv), _mm512_setzero_ps());
        T::store16(out.as_mut_ptr().add(i) as *mut T, codes(xv));
        i += 16;
    }
    if n16 < x.len() {
        // The rest in one masked vector (a row of 29 channels ends in 13): the other lanes read
        // zeros and are not stored.
        let mask = ((1u32 << (x.len() - n16)) - 1) as u16;
        let xv = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(n16));
        bad |= _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(_mm512_sub_ps(xv, xv), _mm512_setzero_ps());
        T::store16_masked(out.as_mut_ptr().add(n16) as *mut T, codes(xv), mask);
    }
    bad == 0
}

/// [`quantize_avx512`] to u8 codes, 64 at a time: four vectors of codes narrowed together by
/// `vpackssdw` and `vpackuswb` (saturating to 0..=255) and put back in order by one `vpermd`,
/// where four `vpmovdb` take twice the shuffle work. Where the codes span all of 0..=255 (u8
/// and i8 activations), the saturation is the clamp below the range, and only the clamp above it
/// (where the conversion would overflow) runs in f32. The rest go through [`quantize_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512bw(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [std::mem::MaybeUninit<u8>]) -> bool {
    let (qmin, qmax) = q.act.range();
    let n64 = x.len() / 64 * 64;
    let finite = match qmin + shift == 0 && qmax + shift == 255 {
        true => bytes64::<true>(&x[..n64], q, shift, &mut out[..n64]),
        false => bytes64::<false>(&x[..n64], q, shift, &mut out[..n64]),
    };
    finite & quantize_avx512(&x[n64..], q, shift, &mut out[n64..])
}

/// [`quantize_avx512bw`]'s blocks of 64 (`x.len()` a multiple of 64), the f32 clamp below the
/// range left to the saturation when `WHOLE_BYTE`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn bytes64<const WHOLE_BYTE: bool>(x: &[f32], q: &crate::quant::QParams, shift: i32, out: &mut [std::mem::MaybeUninit<u8>]) -> bool {
    use std::arch::x86_64::*;
    let (lo, hi) = q.code_bounds();
    let r = _mm512_set1_ps(1.0 / q.scale);
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let offset = _mm512_set1_epi32(q.zero_point + shift);
    // After the two packs, 128-bit lane `l` holds dwords `l` of the four vectors in turn.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    // The bits of every `x − x`: all zero exactly when every `x` was finite.
    let mut bad = _mm512_setzero_si512();
    for (x, o) in x.chunks_exact(64).zip(out.chunks_exact_mut(64)) {
        let mut codes = [_mm512_setzero_si512(); 4];
        for (k, c) in codes.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.as_ptr().add(16 * k));
            bad = _mm512_or_si512(bad, _mm512_castps_si512(_mm512_sub_ps(xv, xv)));
            let v = _mm512_mul_ps(xv, r);
            let v = _mm512_min_ps(if WHOLE_BYTE { v } else { _mm512_max_ps(v, lo) }, hi);
            *c = _mm512_add_epi32(_mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v), offset);
        }
        let b = _mm512_packus_epi16(_mm512_packs_epi32(codes[0], codes[1]), _mm512_packs_epi32(codes[2], codes[3]));
        _mm512_storeu_si512(o.as_mut_ptr() as *mut _, _mm512_permutexvar_epi32(order, b));
    }
    _mm512_test_epi32_mask(bad, bad) == 0
}

/// Patches of one sample for a 2-d convolution, `[positions, K]` row-major, `K = C·kh·kw`
/// ordered like the weight `[out, C, kh, kw]`. `x` holds the `g.c` channels the patches read
/// (one group's); out-of-image taps read `padv` (the zero point, i.e. real 0).
pub fn im2col(x: &[u8], g: &Geom, padv: u8) -> Vec<u8> {
    let k = g.k();
    let mut out = vec![padv; g.l() * k];
    for oy in 0..g.ho {
        for ox in 0..g.wo {
            let r = (oy * g.wo + ox) * k;
            patch_row(g, x, oy, ox, &mut out[r..r + k]);
        }
    }
    out
}

/// `c[m][n] = Σ_{t<k} a[m][t] · b[n][t]` (a u8 `[M, K]`, b i8 `[N, K]`), i32 exact, in plain
/// loops: the reference.
pub fn gemm_u8i8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|t| a[i * k + t] as i32 * b[j * k + t] as i32).sum();
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_gemm_by_hand() {
        // [255, 1] · [[127, -128+1], [2, 3]]ᵀ: exact sums past i16 range.
        let a = [255u8, 1, 0, 7];
        let b = [127i8, -127, 2, 3];
        assert_eq!(gemm_u8i8(&a, &b, 2, 2, 2), vec![255 * 127 - 127, 255 * 2 + 3, -7 * 127, 21]);
    }

    /// The i16 and u8 codes of `x` from every vector width this CPU runs (each asserting that
    /// it found every value finite).
    fn widths(x: &[f32], q: &crate::quant::QParams) -> Vec<(&'static str, Vec<i16>, Vec<u8>)> {
        type Width = unsafe fn(&[f32], &crate::quant::QParams, i32, &mut [std::mem::MaybeUninit<i16>]) -> bool;
        type WidthU8 = unsafe fn(&[f32], &crate::quant::QParams, i32, &mut [std::mem::MaybeUninit<u8>]) -> bool;
        let mut v: Vec<(&'static str, Width, WidthU8)> = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                v.push(("avx2", quantize_avx2::<i16>, quantize_avx2::<u8>));
                v.push(("avx2 bytes", quantize_avx2::<i16>, quantize_avx2_bytes));
            }
            if std::is_x86_feature_detected!("avx512f") {
                v.push(("avx512", quantize_avx512::<i16>, quantize_avx512::<u8>));
            }
            if std::is_x86_feature_detected!("avx512bw") {
                v.push(("avx512bw", quantize_avx512::<i16>, quantize_avx512bw));
            }
        }
        let run = |name, f: Width, g: WidthU8| {
            let (mut wide, mut bytes) = (Vec::with_capacity(x.len()), Vec::with_capacity(x.len()));
            // SAFETY: the CPU has the width's features (checked above); the outputs are as long as `x`.
            let finite = unsafe { f(x, q, code_shift(q), &mut wide.spare_capacity_mut()[..x.len()]) && g(x, q, code_shift(q), &mut bytes.spare_capacity_mut()[..x.len()]) };
            assert!(finite, "{name}");
            // SAFETY: each width writes every entry.
            unsafe { (wide.set_len(x.len()), bytes.set_len(x.len())) };
            (name, wide, bytes)
        };
        v.into_iter().map(|(name, f, g)| run(name, f, g)).collect()
    }

    #[test]
    fn vector_quantisation_equals_the_scalar_formula() {
        use crate::quant::{ActType, QParams};
        // Halves (ties round to even), negatives, values far outside the range, ±0; the last
        // ones both in the blocks of the widest kernels and in their scalar tails.
        let special = [0.05, -0.05, 0.15, -0.15, 1e30, -1e30, 3e9, -3e9, 0.0, -0.0, 12.75, -12.75, 0.1 * 127.5, -0.1 * 128.5];
        let mut x: Vec<f32> = special.to_vec();
        x.extend((-2000..2000).map(|i| i as f32 * 0.25 * 0.1));
        x.extend(special);
        for act in [ActType::U8, ActType::U7, ActType::I8] {
            for q in [QParams { scale: 0.1, zero_point: if act == ActType::I8 { 0 } else { 37 }, act }, QParams { scale: 0.0123, zero_point: 0, act }] {
                let (want, _) = quantize_u8(&x, &q);
                for (name, wide, bytes) in widths(&x, &q) {
                    assert_eq!(bytes, want, "{name} {q:?}");
                    for (i, (g, w)) in wide.iter().zip(&want).enumerate() {
                        assert_eq!(*g, *w as i16, "{name}: x = {} under {q:?}", x[i]);
                    }
                }
            }
        }
    }

    /// The finiteness flag: false for one NaN or ±∞ anywhere (in a block of 64, in a vector
    /// after the blocks, in the scalar tail), true for huge finite values.
    #[test]
    fn quantisation_reports_non_finite_values() {
        use crate::quant::{ActType, QParams};
        let q = QParams { scale: 0.1, zero_point: 3, act: ActType::U8 };
        for (len, places) in [(21, &[0, 7, 15, 20][..]), (150, &[0, 63, 64, 127, 128, 143, 144, 149][..])] {
            let x: Vec<f32> = (0..len).map(|i| (i % 21) as f32 * 1e37 - 1e38).collect();
            // The AVX2 byte kernel asked directly: `quantize_codes` takes AVX-512's where the CPU
            // has it.
            let avx2_bytes = |x: &[f32]| {
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    let mut out = vec![std::mem::MaybeUninit::<u8>::uninit(); x.len()];
                    // SAFETY: the CPU has AVX2; the slices have equal lengths.
                    return unsafe { quantize_avx2_bytes(x, &q, code_shift(&q), &mut out) };
                }
                x.iter().all(|v| v.is_finite())
            };
            assert!(quantize_codes::<i16>(&x, &q).1 && quantize_codes::<u8>(&x, &q).1 && avx2_bytes(&x));
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for &at in places {
                    let mut y = x.clone();
                    y[at] = bad;
                    assert!(!quantize_codes::<i16>(&y, &q).1 && !quantize_codes::<u8>(&y, &q).1 && !avx2_bytes(&y), "{bad} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn im2col_pads_with_the_zero_point() {
        // 1 channel 2x2 image, 3x3 kernel, pad 1: the centre tap of position (0,0) is x[0].
        let x = [1u8, 2, 3, 4];
        let g = Geom { n: 1, c: 1, h: 2, w: 2, kh: 3, kw: 3, stride: (1, 1), ph: 1, pw: 1, dil: (1, 1), ho: 2, wo: 2 };
        let cols = im2col(&x, &g, 9);
        assert_eq!(&cols[..9], &[9, 9, 9, 9, 1, 2, 9, 3, 4]);
    }
}
