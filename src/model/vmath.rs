//! Element-wise math on f32 lanes: `exp`, `tanh` and `erf` written once over [`Lanes`] and
//! evaluated on one scalar, on 8 AVX2 lanes or on 16 AVX-512 lanes. Every width runs the same
//! IEEE operations in the same order (no fused multiply-add unless asked for by [`Fused`], which
//! rounds as the scalar `f32::mul_add` does), so the results are bit-identical whichever the CPU
//! picks; the compiled runtimes' integer layers, whose fused activations must
//! equal the reference executor's, rely on that. Explicit vectors, rather than loops the
//! compiler may vectorise, keep a short row (one 16-channel pixel) on full vectors and keep
//! several independent polynomials in flight.

use std::ops::{Add, Div, Mul, Sub};

/// A vector of f32 lanes with the operations the functions here need.
pub trait Lanes: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> {
    /// Lanes per vector.
    const N: usize;
    /// The vector of half as many lanes (`f32` for the narrowest), which the CPU that runs
    /// `Self` runs too: rows shorter than `N` use it (`over_row`).
    type Half: Lanes;
    fn splat(v: f32) -> Self;
    /// Lane-wise `self·a + b` rounded once (`vfmadd`; `f32::mul_add` on a scalar). The vectors'
    /// form needs FMA: AVX-512F has it, and an AVX2 caller enables `fma` after checking for it.
    fn fused_mul_add(self, a: Self, b: Self) -> Self;
    /// Lane-wise `b − self·a` rounded once (`vfnmadd`), `(−self)·a + b`.
    fn fused_neg_mul_add(self, a: Self, b: Self) -> Self;
    /// Lane-wise `self·a − b` rounded once (`vfmsub`), `self·a + (−b)`.
    fn fused_mul_sub(self, a: Self, b: Self) -> Self;
    /// Lane-wise `if lo > x { lo } else { x }` (`vmaxps(lo, x)`): a NaN in `x` stays NaN.
    fn at_least(self, lo: f32) -> Self;
    /// Lane-wise `if hi < x { hi } else { x }` (`vminps(hi, x)`): a NaN in `x` stays NaN.
    fn at_most(self, hi: f32) -> Self;
    /// Lane-wise `if x > 0 { x } else { 0 }` (`vmaxps(x, 0)`): a NaN becomes 0, as with
    /// `f32::max(x, 0.0)`.
    fn relu(self) -> Self;
    /// Lane-wise `1.0` where `lo < x < hi`, else `0.0` (NaN included).
    fn between(self, lo: f32, hi: f32) -> Self;
    /// Lane-wise `if v > x || v.is_nan() { v } else { x }`: a running maximum that keeps the
    /// first of equal values and lets a NaN win (PyTorch's max pooling).
    fn max_first(self, v: Self) -> Self;
    /// Lane-wise `2^n` for `t = n + round` with `round`'s binade holding `t` (so the low
    /// mantissa bits of `t` are `n`): `from_bits(((bits(t) − bits(round)) + 127) << 23)`.
    fn pow2_of_rounded(self, round: f32) -> Self;
    /// Lane-wise `self·2^n` for integral `n` with `t = n + round` as in
    /// [`Lanes::pow2_of_rounded`], `2^n` a normal number: `vscalefps` on 16 lanes, a multiply
    /// by `pow2_of_rounded(t)` otherwise (the same exact product).
    fn mul_pow2(self, n: Self, t: Self, round: f32) -> Self;
    /// Reads `N` values.
    ///
    /// # Safety
    /// `p` is valid for `N` reads; the CPU has the vector's features.
    unsafe fn load(p: *const f32) -> Self;
    /// Reads `N` i32 values as f32 (`cvtdq2ps`: round to nearest even, as `as f32` rounds).
    ///
    /// # Safety
    /// As [`Lanes::load`].
    unsafe fn load_i32(p: *const i32) -> Self;
    /// Reads `N` i32 values `a` and `z` and converts `a − z` (wrapping) to f32, as
    /// [`Lanes::load_i32`] does.
    ///
    /// # Safety
    /// As [`Lanes::load`], for both.
    unsafe fn load_i32_diff(a: *const i32, z: *const i32) -> Self;
    /// Writes `N` values.
    ///
    /// # Safety
    /// `p` is valid for `N` writes; the CPU has the vector's features.
    unsafe fn store(self, p: *mut f32);
    /// Reads the first `len` (below `N`) values, the other lanes 0.0: a masked load, where a
    /// copy through a buffer on the stack costs a call and a store-forwarding stall.
    ///
    /// # Safety
    /// `p` is valid for `len` reads; the CPU has the vector's features.
    unsafe fn load_part(p: *const f32, len: usize) -> Self;
    /// Writes the first `len` (below `N`) lanes.
    ///
    /// # Safety
    /// `p` is valid for `len` writes; the CPU has the vector's features.
    unsafe fn store_part(self, p: *mut f32, len: usize);
}

/// Visits a row of `n` values in vectors of `V` lanes: `$vector` with `$j` at each whole
/// vector, then at `n − V::N` for the rest, one more whole vector overlapping finished values
/// (which it writes again, equal, where every output depends on its own inputs only). A row
/// shorter than a vector goes the same way in vectors of `V::Half` (`$half`) when it holds one,
/// else `$scalar` runs with `$j` at each value. A macro, so that the bodies inline into the
/// caller's instruction set.
macro_rules! over_row {
    ($v:ty, $n:expr, |$j:ident| $vector:expr, $half:expr, $scalar:expr) => {{
        let n = $n;
        let lanes = <$v as $crate::model::vmath::Lanes>::N;
        let half = <<$v as $crate::model::vmath::Lanes>::Half as $crate::model::vmath::Lanes>::N;
        let mut $j = 0;
        while $j + lanes <= n {
            $vector;
            $j += lanes;
        }
        if $j < n && n >= lanes {
            let $j = n - lanes;
            $vector;
        } else if half > 1 && n >= half {
            while $j + half <= n {
                $half;
                $j += half;
            }
            if $j < n {
                let $j = n - half;
                $half;
            }
        } else {
            for $j in $j..n {
                $scalar;
            }
        }
    }};
}
pub(crate) use over_row;

impl Lanes for f32 {
    const N: usize = 1;
    type Half = f32;
    #[inline(always)]
    fn splat(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn fused_neg_mul_add(self, a: f32, b: f32) -> f32 {
        (-self).mul_add(a, b)
    }
    #[inline(always)]
    fn fused_mul_sub(self, a: f32, b: f32) -> f32 {
        self.mul_add(a, -b)
    }
    #[inline(always)]
    fn fused_mul_add(self, a: f32, b: f32) -> f32 {
        f32::mul_add(self, a, b)
    }
    #[inline(always)]
    fn at_least(self, lo: f32) -> f32 {
        if lo > self {
            lo
        } else {
            self
        }
    }
    #[inline(always)]
    fn at_most(self, hi: f32) -> f32 {
        if hi < self {
            hi
        } else {
            self
        }
    }
    #[inline(always)]
    fn relu(self) -> f32 {
        if self > 0.0 {
            self
        } else {
            0.0
        }
    }
    #[inline(always)]
    fn between(self, lo: f32, hi: f32) -> f32 {
        f32::from(u8::from(lo < self && self < hi))
    }
    #[inline(always)]
    fn max_first(self, v: f32) -> f32 {
        if v > self || v.is_nan() {
            v
        } else {
            self
        }
    }
    #[inline(always)]
    fn mul_pow2(self, _n: f32, t: f32, round: f32) -> f32 {
        self * t.pow2_of_rounded(round)
    }
    #[inline(always)]
    fn pow2_of_rounded(self, round: f32) -> f32 {
        let n = (self.to_bits() as i32).wrapping_sub(round.to_bits() as i32);
        f32::from_bits((n.wrapping_add(127) as u32) << 23)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn load_i32(p: *const i32) -> f32 {
        *p as f32
    }
    #[inline(always)]
    unsafe fn load_i32_diff(a: *const i32, z: *const i32) -> f32 {
        (*a).wrapping_sub(*z) as f32
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        *p = self
    }
    #[inline(always)]
    unsafe fn load_part(_: *const f32, _: usize) -> f32 {
        // One lane: a part of it is empty.
        0.0
    }
    #[inline(always)]
    unsafe fn store_part(self, _: *mut f32, _: usize) {}
}

#[cfg(target_arch = "x86_64")]
pub use x86::{F32x16, F32x8};

/// Whether [`F32x16`] runs here: AVX-512F, where the f32 kernels use it
/// (`matmul::isa::F32Isa`; `WICK_F32_ISA` caps it). Detected once.
#[cfg(target_arch = "x86_64")]
pub fn has_f32x16() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| crate::matmul::isa::F32Isa::detect() == crate::matmul::isa::F32Isa::Avx512)
}

/// Whether [`F32x8`] runs here: AVX2.
#[cfg(target_arch = "x86_64")]
pub fn has_f32x8() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Whether [`F32x8`] runs here with FMA too, as [`Fused`] steps and fused kernels need.
#[cfg(target_arch = "x86_64")]
pub fn has_f32x8_fma() -> bool {
    has_f32x8() && std::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;
    use std::ops::{Add, Div, Mul, Sub};

    /// 8 lanes in a ymm register (AVX2).
    #[derive(Clone, Copy)]
    pub struct F32x8(__m256);
    /// 16 lanes in a zmm register (AVX-512F).
    #[derive(Clone, Copy)]
    pub struct F32x16(__m512);

    // The methods are `#[inline(always)]` without target features of their own: they inline into
    // the `#[target_feature]` function that runs them, where the intrinsics then inline too.
    // SAFETY (every `unsafe` block below): a value of these types exists only inside code that
    // runs on a CPU with the features (made by `splat` or `load` there).
    macro_rules! lanes {
        ($t:ident, $n:literal, $half:ty, $add:ident, $sub:ident, $mul:ident, $div:ident, $fmadd:ident, $fnmadd:ident, $fmsub:ident, $set1:ident, $max:ident, $min:ident,
         $cast_i:ident, $cast_f:ident, $sub_i:ident, $add_i:ident, $set1_i:ident, $slli:ident, $loadu:ident, $storeu:ident, $loadu_i:ident, $cvt_i:ident) => {
            impl Add for $t {
                type Output = $t;
                #[inline(always)]
                fn add(self, o: $t) -> $t {
                    $t(unsafe { $add(self.0, o.0) })
                }
            }
            impl Sub for $t {
                type Output = $t;
                #[inline(always)]
                fn sub(self, o: $t) -> $t {
                    $t(unsafe { $sub(self.0, o.0) })
                }
            }
            impl Mul for $t {
                type Output = $t;
                #[inline(always)]
                fn mul(self, o: $t) -> $t {
                    $t(unsafe { $mul(self.0, o.0) })
                }
            }
            impl Div for $t {
                type Output = $t;
                #[inline(always)]
                fn div(self, o: $t) -> $t {
                    $t(unsafe { $div(self.0, o.0) })
                }
            }
            impl Lanes for $t {
                const N: usize = $n;
                type Half = $half;
                #[inline(always)]
                fn splat(v: f32) -> $t {
                    $t(unsafe { $set1(v) })
                }
                #[inline(always)]
                fn fused_mul_add(self, a: $t, b: $t) -> $t {
                    $t(unsafe { $fmadd(self.0, a.0, b.0) })
                }
                #[inline(always)]
                fn fused_neg_mul_add(self, a: $t, b: $t) -> $t {
                    $t(unsafe { $fnmadd(self.0, a.0, b.0) })
                }
                #[inline(always)]
                fn fused_mul_sub(self, a: $t, b: $t) -> $t {
                    $t(unsafe { $fmsub(self.0, a.0, b.0) })
                }
                #[inline(always)]
                fn at_least(self, lo: f32) -> $t {
                    $t(unsafe { $max($set1(lo), self.0) })
                }
                #[inline(always)]
                fn at_most(self, hi: f32) -> $t {
                    $t(unsafe { $min($set1(hi), self.0) })
                }
                #[inline(always)]
                fn relu(self) -> $t {
                    $t(unsafe { $max(self.0, $set1(0.0)) })
                }
                #[inline(always)]
                fn between(self, lo: f32, hi: f32) -> $t {
                    self.between_impl(lo, hi)
                }
                #[inline(always)]
                fn max_first(self, v: $t) -> $t {
                    self.max_first_impl(v)
                }
                #[inline(always)]
                fn mul_pow2(self, n: $t, t: $t, round: f32) -> $t {
                    self.mul_pow2_impl(n, t, round)
                }
                #[inline(always)]
                fn pow2_of_rounded(self, round: f32) -> $t {
                    unsafe {
                        let n = $sub_i($cast_i(self.0), $set1_i(round.to_bits() as i32));
                        $t($cast_f($slli::<23>($add_i(n, $set1_i(127)))))
                    }
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> $t {
                    $t($loadu(p))
                }
                #[inline(always)]
                unsafe fn load_i32(p: *const i32) -> $t {
                    $t($cvt_i($loadu_i(p as *const _)))
                }
                #[inline(always)]
                unsafe fn load_i32_diff(a: *const i32, z: *const i32) -> $t {
                    $t($cvt_i($sub_i($loadu_i(a as *const _), $loadu_i(z as *const _))))
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    $storeu(p, self.0)
                }
                #[inline(always)]
                unsafe fn load_part(p: *const f32, len: usize) -> $t {
                    $t::load_part_impl(p, len)
                }
                #[inline(always)]
                unsafe fn store_part(self, p: *mut f32, len: usize) {
                    self.store_part_impl(p, len)
                }
            }
        };
    }

    impl F32x8 {
        #[inline(always)]
        fn between_impl(self, lo: f32, hi: f32) -> F32x8 {
            unsafe {
                let inside = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_set1_ps(lo), self.0), _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, _mm256_set1_ps(hi)));
                F32x8(_mm256_and_ps(inside, _mm256_set1_ps(1.0)))
            }
        }
        #[inline(always)]
        fn mul_pow2_impl(self, _n: F32x8, t: F32x8, round: f32) -> F32x8 {
            self * t.pow2_of_rounded(round)
        }
        #[inline(always)]
        fn max_first_impl(self, v: F32x8) -> F32x8 {
            unsafe {
                let take = _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v.0, self.0), _mm256_cmp_ps::<_CMP_UNORD_Q>(v.0, v.0));
                F32x8(_mm256_blendv_ps(self.0, v.0, take))
            }
        }
    }
    impl F32x8 {
        /// Lanes below `len` set (all bits), the others clear.
        #[inline(always)]
        unsafe fn first_lanes(len: usize) -> __m256i {
            _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
        }
        #[inline(always)]
        unsafe fn load_part_impl(p: *const f32, len: usize) -> F32x8 {
            F32x8(_mm256_maskload_ps(p, Self::first_lanes(len)))
        }
        #[inline(always)]
        unsafe fn store_part_impl(self, p: *mut f32, len: usize) {
            _mm256_maskstore_ps(p, Self::first_lanes(len), self.0)
        }
    }
    impl F32x16 {
        #[inline(always)]
        unsafe fn load_part_impl(p: *const f32, len: usize) -> F32x16 {
            F32x16(_mm512_maskz_loadu_ps(((1u32 << len) - 1) as u16, p))
        }
        #[inline(always)]
        unsafe fn store_part_impl(self, p: *mut f32, len: usize) {
            _mm512_mask_storeu_ps(p, ((1u32 << len) - 1) as u16, self.0)
        }
        #[inline(always)]
        fn between_impl(self, lo: f32, hi: f32) -> F32x16 {
            unsafe {
                let inside = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_set1_ps(lo), self.0) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, _mm512_set1_ps(hi));
                F32x16(_mm512_maskz_mov_ps(inside, _mm512_set1_ps(1.0)))
            }
        }
        #[inline(always)]
        fn mul_pow2_impl(self, n: F32x16, _t: F32x16, _round: f32) -> F32x16 {
            F32x16(unsafe { _mm512_scalef_ps(self.0, n.0) })
        }
        #[inline(always)]
        fn max_first_impl(self, v: F32x16) -> F32x16 {
            unsafe {
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v.0, self.0) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v.0, v.0);
                F32x16(_mm512_mask_blend_ps(take, self.0, v.0))
            }
        }
    }

    lanes!(
        F32x8,
        8,
        f32,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_div_ps,
        _mm256_fmadd_ps,
        _mm256_fnmadd_ps,
        _mm256_fmsub_ps,
        _mm256_set1_ps,
        _mm256_max_ps,
        _mm256_min_ps,
        _mm256_castps_si256,
        _mm256_castsi256_ps,
        _mm256_sub_epi32,
        _mm256_add_epi32,
        _mm256_set1_epi32,
        _mm256_slli_epi32,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_loadu_si256,
        _mm256_cvtepi32_ps
    );
    lanes!(
        F32x16,
        16,
        F32x8,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_div_ps,
        _mm512_fmadd_ps,
        _mm512_fnmadd_ps,
        _mm512_fmsub_ps,
        _mm512_set1_ps,
        _mm512_max_ps,
        _mm512_min_ps,
        _mm512_castps_si512,
        _mm512_castsi512_ps,
        _mm512_sub_epi32,
        _mm512_add_epi32,
        _mm512_set1_epi32,
        _mm512_slli_epi32,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_loadu_si512,
        _mm512_cvtepi32_ps
    );
}

/// How a polynomial's Horner step `p·x + c` rounds: [`Split`] (a multiply and an add, two
/// roundings: what training and float evaluation use, identical at every width and on any
/// x86-64 CPU) or [`Fused`] (one fused multiply-add, a third fewer operations: the compiled
/// plans' activations and recurrent cells, float and integer, and the integer reference
/// executor's; vectors where the CPU has FMA, `f32::mul_add` elsewhere). [`exp_by`] narrows
/// its range for [`Fused`] (see there).
pub trait Horner {
    /// Whether this is [`Fused`].
    const FUSED: bool;
    fn step<V: Lanes>(p: V, x: V, c: V) -> V;
    /// `x / d` for a constant `d` whose reciprocal rounds correctly from f64 (6 does): [`Split`]
    /// divides; [`Fused`] multiplies by `c = 1/d` and corrects once, `q + (x − q·d)·c` with
    /// `q = x·c`, which is the correctly rounded quotient where `x − q·d` is exact (Markstein;
    /// tested for `d = 6` on quotients above 2⁻¹⁰⁰), and takes three multiply-adds where a
    /// division blocks the divider for about ten cycles. An infinite `x` gives NaN.
    fn div_const<V: Lanes>(x: V, d: f32) -> V;
    /// `x·h/d` for a finite `h` (hardswish's): [`Split`] rounds `x·h` and divides, as PyTorch
    /// does; [`Fused`] takes `x·(h/d)` with [`Horner::div_const`] (within an ulp of it, and
    /// infinite where `x` is).
    fn mul_div_const<V: Lanes>(x: V, h: V, d: f32) -> V;
}

/// `p·x + c` rounded twice.
pub struct Split;
/// `p·x + c` rounded once.
pub struct Fused;

impl Horner for Split {
    const FUSED: bool = false;
    #[inline(always)]
    fn step<V: Lanes>(p: V, x: V, c: V) -> V {
        p * x + c
    }
    #[inline(always)]
    fn div_const<V: Lanes>(x: V, d: f32) -> V {
        x / V::splat(d)
    }
    #[inline(always)]
    fn mul_div_const<V: Lanes>(x: V, h: V, d: f32) -> V {
        x * h / V::splat(d)
    }
}

impl Horner for Fused {
    const FUSED: bool = true;
    #[inline(always)]
    fn step<V: Lanes>(p: V, x: V, c: V) -> V {
        p.fused_mul_add(x, c)
    }
    #[inline(always)]
    fn div_const<V: Lanes>(x: V, d: f32) -> V {
        let c = V::splat((1.0 / f64::from(d)) as f32);
        let q = x * c;
        q.fused_mul_add(V::splat(-d), x).fused_mul_add(c, q)
    }
    #[inline(always)]
    fn mul_div_const<V: Lanes>(x: V, h: V, d: f32) -> V {
        x * Self::div_const(h, d)
    }
}

/// `e^x`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 split in two for an exact `n·ln 2`),
/// `e^r` by Cephes' `expf` polynomial (relative error about 1e-7), and `2^n` built in the
/// exponent bits. Inputs are clamped to [−87.3, 88.7], where f32 neither overflows nor goes
/// subnormal. [`Fused`] clamps to [−87.3, 88.37] instead, so that `n ≤ 127` and `2^n` is a
/// normal number, and scales by it with one `vscalefps` on 16 lanes (`Lanes::mul_pow2`), where
/// a multiply by the built power takes three instructions.
#[inline(always)]
pub fn exp<V: Lanes>(x: V) -> V {
    exp_by::<V, Split>(x)
}

/// [`exp`] with its polynomials' steps rounded as `H` says.
#[inline(always)]
pub fn exp_by<V: Lanes, H: Horner>(x: V) -> V {
    let s = V::splat;
    let x = x.at_least(-87.3).at_most(if H::FUSED { 88.37 } else { 88.7 });
    // Round to nearest by adding and subtracting 1.5·2²³; |x·log2 e| < 2²², so `t` stays in
    // ROUND's binade and its low mantissa bits hold `n`.
    const ROUND: f32 = 12_582_912.0;
    let t = H::step(x, s(std::f32::consts::LOG2_E), s(ROUND));
    let n = t - s(ROUND);
    let r = H::step(n, s(2.121_944_4e-4), H::step(n, s(-0.693_359_4), x));
    let p = s(1.987_569_1e-4);
    let p = H::step(p, r, s(1.398_199_9e-3));
    let p = H::step(p, r, s(8.333_452e-3));
    let p = H::step(p, r, s(4.166_579_6e-2));
    let p = H::step(p, r, s(0.166_666_65));
    let p = H::step(p, r, s(0.5));
    let er = H::step(p * r, r, r) + s(1.0);
    match H::FUSED {
        true => er.mul_pow2(n, t, ROUND),
        false => er * t.pow2_of_rounded(ROUND),
    }
}

/// `e^(−x)`, bit for bit [`exp_by`]`::<V, Fused>(0 − x)` one subtraction fewer: with
/// `x' = clamp(x, −88.37, 87.3)`, that function's reduced argument is `r = −u` for
/// `u = x' + n·ln 2` (both parts of ln 2 taken with their signs flipped), and each of its steps
/// on `r` is the same rounding of the negated step on `u` (`fma(p, −u, c) = fnmadd(p, u, c)`,
/// `fma(−pu, −u, −u) = fmsub(pu, u, u)`): negation is exact.
#[inline(always)]
pub fn exp_neg_fused<V: Lanes>(x: V) -> V {
    let s = V::splat;
    let x = x.at_least(-88.37).at_most(87.3);
    const ROUND: f32 = 12_582_912.0;
    let t = x.fused_mul_add(s(-std::f32::consts::LOG2_E), s(ROUND));
    let n = t - s(ROUND);
    let u = n.fused_mul_add(s(-2.121_944_4e-4), n.fused_mul_add(s(0.693_359_4), x));
    let p = s(1.987_569_1e-4);
    let p = p.fused_neg_mul_add(u, s(1.398_199_9e-3));
    let p = p.fused_neg_mul_add(u, s(8.333_452e-3));
    let p = p.fused_neg_mul_add(u, s(4.166_579_6e-2));
    let p = p.fused_neg_mul_add(u, s(0.166_666_65));
    let p = p.fused_neg_mul_add(u, s(0.5));
    let er = (p * u).fused_mul_sub(u, u) + s(1.0);
    er.mul_pow2(n, t, ROUND)
}

/// `ln(1 + u)` for `u` in [0, 1] (softplus's `ln(1 + e^(−|x|))`): `2·atanh(z)` with
/// `z = u/(2 + u)` ≤ 1/3, as the series `2z·Σₖ z²ᵏ/(2k + 1)` to `k = 8`, whose tail is below
/// `(1/9)⁹/19` relative (3e-10), so the result is within rounding of the exact value. Needs
/// no exponent bits, so every vector width computes the scalar's bits.
#[inline(always)]
pub fn ln_1p_unit_by<V: Lanes, H: Horner>(u: V) -> V {
    let s = V::splat;
    let z = u / (s(2.0) + u);
    let z2 = z * z;
    let mut p = s(1.0 / 17.0);
    for k in (0..8).rev() {
        p = H::step(p, z2, s(1.0 / (2 * k + 1) as f32));
    }
    s(2.0) * z * p
}

/// `tanh(x) ≈ x·P(x²)/Q(x²)` on `x` clamped to [−9, 9] (beyond, tanh is ±1 in f32): the
/// rational minimax fit ONNX Runtime's MLAS and Eigen use, within 4e-7 of the library's tanh.
#[inline(always)]
pub fn tanh<V: Lanes>(x: V) -> V {
    tanh_by::<V, Split>(x)
}

/// [`tanh`] with its polynomials' steps rounded as `H` says.
// The coefficients as published, some with digits past f32's precision.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn tanh_by<V: Lanes, H: Horner>(x: V) -> V {
    let s = V::splat;
    let x = x.at_least(-9.0).at_most(9.0);
    let x2 = x * x;
    let p = s(-2.760_768_5e-16);
    let p = H::step(p, x2, s(2.000_187_9e-13));
    let p = H::step(p, x2, s(-8.604_671_5e-11));
    let p = H::step(p, x2, s(5.122_297e-8));
    let p = H::step(p, x2, s(1.485_722_4e-5));
    let p = H::step(p, x2, s(6.372_619_3e-4));
    let p = H::step(p, x2, s(4.893_524_6e-3));
    let q = s(1.198_258_4e-6);
    let q = H::step(q, x2, s(1.185_347_1e-4));
    let q = H::step(q, x2, s(2.268_434_6e-3));
    let q = H::step(q, x2, s(4.893_525_2e-3));
    // Near ±9 the fit overshoots 1 by a few ulp.
    (x * p / q).at_least(-1.0).at_most(1.0)
}

/// `erf(x) ≈ x·P(x²)/Q(x²)` on `x` clamped to [−4, 4] (beyond, erf is ±1 in f32), with `P` of
/// degree 6 and `Q` of degree 4: the rational fit Eigen, XLA and TVM use, within 4.5e-7 of
/// erf (measured against float64 on a grid of 2·10⁶ points in [−6, 6]), clamped to [−1, 1].
/// It costs half the operations of an `erfc`-and-`exp` form and needs no branch on the sign.
#[inline(always)]
pub fn erf<V: Lanes>(x: V) -> V {
    erf_by::<V, Split>(x)
}

/// [`erf`] with its polynomials' steps rounded as `H` says.
// The coefficients as published, some with digits past f32's precision.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn erf_by<V: Lanes, H: Horner>(x: V) -> V {
    let s = V::splat;
    let x = x.at_least(-4.0).at_most(4.0);
    let x2 = x * x;
    let p = s(-2.726_142_258_013_06e-10);
    let p = H::step(p, x2, s(2.770_681_424_959_02e-8));
    let p = H::step(p, x2, s(-2.101_024_020_825_08e-6));
    let p = H::step(p, x2, s(-5.692_506_394_623_46e-5));
    let p = H::step(p, x2, s(-7.349_906_303_268_55e-4));
    let p = H::step(p, x2, s(-2.954_599_808_540_25e-3));
    let p = H::step(p, x2, s(-1.609_603_332_624_15e-2));
    let q = s(-1.456_607_184_649_96e-5);
    let q = H::step(q, x2, s(-2.133_740_552_789_05e-4));
    let q = H::step(q, x2, s(-1.682_826_974_382_03e-3));
    let q = H::step(q, x2, s(-7.373_329_167_204_68e-3));
    let q = H::step(q, x2, s(-1.426_473_905_141_89e-2));
    (x * p / q).at_least(-1.0).at_most(1.0)
}

/// Runs `g` over `a` in vectors of `V::N` lanes, two per step while they last (so that two
/// independent evaluations overlap), the last partial one by a masked load that reads zeros into
/// the other lanes and a masked store that drops their results.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
pub unsafe fn map_in_place<V: Lanes, G: Fn(V) -> V>(a: &mut [f32], g: G) {
    let n = V::N;
    let mut pairs = a.chunks_exact_mut(2 * n);
    for b in &mut pairs {
        let p = b.as_mut_ptr();
        let (x, y) = (V::load(p), V::load(p.add(n)));
        let (x, y) = (g(x), g(y));
        x.store(p);
        y.store(p.add(n));
    }
    let mut singles = pairs.into_remainder().chunks_exact_mut(n);
    for b in &mut singles {
        g(V::load(b.as_ptr())).store(b.as_mut_ptr());
    }
    let b = singles.into_remainder();
    if !b.is_empty() {
        g(V::load_part(b.as_ptr(), b.len())).store_part(b.as_mut_ptr(), b.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partial vector of each width the CPU has reads its `len` values and zeros, and writes
    /// its `len` lanes and nothing past them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn partial_vectors_touch_only_their_lanes() {
        /// `dst[..len] = 2·src[..len]` through one partial vector; `full` gets the whole vector.
        unsafe fn twice<V: Lanes>(src: &[f32], dst: &mut [f32], full: &mut [f32; 16], len: usize) {
            let v = V::load_part(src.as_ptr(), len);
            (v + v).store_part(dst.as_mut_ptr(), len);
            v.store(full.as_mut_ptr());
        }
        #[target_feature(enable = "avx2")]
        unsafe fn twice8(src: &[f32], dst: &mut [f32], full: &mut [f32; 16], len: usize) {
            twice::<F32x8>(src, dst, full, len)
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn twice16(src: &[f32], dst: &mut [f32], full: &mut [f32; 16], len: usize) {
            twice::<F32x16>(src, dst, full, len)
        }
        type Twice = unsafe fn(&[f32], &mut [f32], &mut [f32; 16], usize);
        let widths: [(usize, bool, Twice); 2] = [(8, has_f32x8(), twice8), (16, std::is_x86_feature_detected!("avx512f"), twice16)];
        for (n, present, run) in widths {
            if !present {
                continue;
            }
            for len in 0..n {
                let src: Vec<f32> = (1..=len).map(|i| i as f32).collect();
                let (mut dst, mut full) = (vec![-1.0f32; len + 1], [9.0f32; 16]);
                // SAFETY: the CPU has the width's features; `src` holds `len` values, `dst` more.
                unsafe { run(&src, &mut dst, &mut full, len) };
                let want: Vec<f32> = src.iter().map(|v| 2.0 * v).chain([-1.0]).collect();
                assert_eq!(dst, want, "{n} lanes, {len} values");
                assert!(full[..len] == src[..] && full[len..n].iter().all(|&v| v == 0.0), "{n} lanes, {len} values: {full:?}");
            }
        }
    }

    #[test]
    fn erf_is_within_5e7_of_reference_values() {
        // erf at 0, ±0.5, 1, 2, 3, 5 (Abramowitz & Stegun table 7.1).
        for (x, e) in [(0f32, 0f32), (0.5, 0.520_499_9), (-0.5, -0.520_499_9), (1.0, 0.842_700_8), (2.0, 0.995_322_3), (3.0, 0.999_977_9), (-5.0, -1.0), (5.0, 1.0)] {
            let y = erf(x);
            assert!((y - e).abs() < 5e-7, "erf({x}) = {y} vs {e}");
        }
        assert_eq!(erf(0.0f32), 0.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_4e7_of_the_library_tanh() {
        for i in -12000..=12000 {
            let x = i as f32 / 1000.0;
            let (a, b) = (tanh(x), x.tanh());
            assert!((a - b).abs() <= 4e-7, "tanh({x}) = {a} vs {b}");
        }
        assert_eq!(tanh(0.0f32), 0.0);
        assert!(tanh(1e-6f32) > 0.0 && (tanh(1e-6f32) - 1e-6).abs() < 1e-12);
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let b = x.exp();
            for (form, a) in [("split", exp(x)), ("fused", exp_by::<f32, Fused>(x))] {
                assert!((a - b).abs() <= 2.5e-7 * b, "{form} exp({x}) = {a} vs {b}");
            }
        }
        assert!(exp(f32::NAN).is_nan() && exp_by::<f32, Fused>(f32::NAN).is_nan());
    }

    /// Fused `e^x` and `e^(−x)` at every width equal the scalar bit for bit, and
    /// `exp_neg_fused(x)` is `exp_by::<Fused>(0 − x)`, over every 97th bit pattern of every
    /// binade (both signs), the infinities, NaN and the values around the clamps (−88.37: the
    /// largest `n`, 127, where `vscalefps` and the built power must agree).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fused_exp_is_the_same_at_every_width_and_for_minus_x() {
        let mut xs: Vec<f32> = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        for e in 0u32..255 {
            for m in (0..1u32 << 23).step_by(97) {
                xs.extend([f32::from_bits(e << 23 | m), -f32::from_bits(e << 23 | m)]);
            }
        }
        for edge in [87.3f32, 88.37, 88.7, 88.72] {
            let b = edge.to_bits();
            xs.extend((b - 64..b + 64).flat_map(|u| [f32::from_bits(u), -f32::from_bits(u)]));
        }
        xs.truncate(xs.len() / 16 * 16);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let exp_s: Vec<f32> = xs.iter().map(|&x| exp_by::<f32, Fused>(x)).collect();
        let neg_s: Vec<f32> = xs.iter().map(|&x| exp_neg_fused(x)).collect();
        let minus: Vec<f32> = xs.iter().map(|&x| exp_by::<f32, Fused>(0.0 - x)).collect();
        assert!(bits(&neg_s) == bits(&minus), "{:?}", xs.iter().zip(neg_s.iter().zip(&minus)).find(|(_, (a, b))| a.to_bits() != b.to_bits()));
        /// # Safety
        /// The CPU has `V`'s features.
        #[inline(always)]
        unsafe fn lanes<V: Lanes>(xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
            let (mut e, mut n) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
            for i in (0..xs.len()).step_by(V::N) {
                let x = V::load(xs.as_ptr().add(i));
                exp_by::<V, Fused>(x).store(e.as_mut_ptr().add(i));
                exp_neg_fused(x).store(n.as_mut_ptr().add(i));
            }
            (e, n)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
            lanes::<F32x8>(xs)
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
            lanes::<F32x16>(xs)
        }
        if has_f32x8_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            let (e, neg) = unsafe { avx2(&xs) };
            assert!(bits(&e) == bits(&exp_s) && bits(&neg) == bits(&neg_s), "8 lanes");
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            let (e, neg) = unsafe { avx512(&xs) };
            assert!(bits(&e) == bits(&exp_s) && bits(&neg) == bits(&neg_s), "16 lanes");
        }
        // The narrowed range still reaches e^88.37 ≈ 2.4e38, within 2 ulp.
        let top = exp_by::<f32, Fused>(88.37);
        assert!((top - 88.37f32.exp()).abs() <= 2.5e-7 * top && exp_by::<f32, Fused>(1000.0) == top);
    }

    /// `max_first` at every width the CPU has equals the scalar's lane by lane: the larger
    /// value, the first of equal ones (−0 against +0 either way round), a NaN in either place
    /// (the new one wins; an old NaN stays until a NaN replaces it).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn max_first_equals_the_scalar_at_every_width() {
        let vals = [1.0f32, -2.0, 0.0, -0.0, f32::NAN, 3.5, f32::INFINITY, -0.5];
        let (mut a, mut b) = (vec![], vec![]);
        for &x in &vals {
            for &v in &vals {
                a.push(x);
                b.push(v);
            }
        }
        let want: Vec<u32> = a.iter().zip(&b).map(|(&x, &v)| x.max_first(v).to_bits()).collect();
        /// Lane by lane over whole vectors of `V`.
        ///
        /// # Safety
        /// The CPU has `V`'s features.
        #[inline(always)]
        unsafe fn lanes<V: Lanes>(a: &[f32], b: &[f32]) -> Vec<u32> {
            let mut out = vec![0f32; a.len()];
            for i in (0..a.len()).step_by(V::N) {
                V::load(a.as_ptr().add(i)).max_first(V::load(b.as_ptr().add(i))).store(out.as_mut_ptr().add(i));
            }
            out.iter().map(|v| v.to_bits()).collect()
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(a: &[f32], b: &[f32]) -> Vec<u32> {
            lanes::<F32x8>(a, b)
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(a: &[f32], b: &[f32]) -> Vec<u32> {
            lanes::<F32x16>(a, b)
        }
        // 64 pairs: whole vectors at both widths.
        if has_f32x8() {
            // SAFETY: the CPU has AVX2.
            assert_eq!(unsafe { avx2(&a, &b) }, want);
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            assert_eq!(unsafe { avx512(&a, &b) }, want);
        }
    }

    /// `Fused::div_const(x, 6)` is the correctly rounded `x / 6` for every quotient above 2⁻¹⁰⁰
    /// in magnitude tried (every 61st bit pattern of each binade of `x` from 2⁻⁹⁷ to 2¹²⁷, both
    /// signs, plus the significands next to each binade's ends), at every width.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fused_division_by_a_constant_is_the_division() {
        let mut xs = vec![];
        for e in 30u32..255 {
            for m in (0..1u32 << 23).step_by(61).chain([1, 2, (1 << 23) - 2, (1 << 23) - 1]) {
                for sign in [0, 1u32 << 31] {
                    xs.push(f32::from_bits(sign | e << 23 | m));
                }
            }
        }
        xs.truncate(xs.len() / 16 * 16);
        let want: Vec<u32> = xs.iter().map(|&x| (x / 6.0).to_bits()).collect();
        let scalar: Vec<u32> = xs.iter().map(|&x| Fused::div_const(x, 6.0).to_bits()).collect();
        assert!(scalar == want, "{:?}", xs.iter().zip(&scalar).zip(&want).find(|((_, a), b)| a != b));
        /// # Safety
        /// The CPU has `V`'s features.
        #[inline(always)]
        unsafe fn lanes<V: Lanes>(xs: &[f32]) -> Vec<u32> {
            let mut out = vec![0f32; xs.len()];
            for i in (0..xs.len()).step_by(V::N) {
                Fused::div_const(V::load(xs.as_ptr().add(i)), 6.0).store(out.as_mut_ptr().add(i));
            }
            out.iter().map(|v| v.to_bits()).collect()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(xs: &[f32]) -> Vec<u32> {
            lanes::<F32x8>(xs)
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(xs: &[f32]) -> Vec<u32> {
            lanes::<F32x16>(xs)
        }
        if has_f32x8_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            assert!(unsafe { avx2(&xs) } == want);
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            assert!(unsafe { avx512(&xs) } == want);
        }
    }

    /// Every width computes every lane bit for bit as the scalar does, the padded tail included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vectors_equal_the_scalar_bit_for_bit() {
        fn check<V: Lanes, H: Horner>(wide: unsafe fn(&mut [f32])) {
            for len in [1usize, 7, 8, 15, 16, 17, 31, 33, 100] {
                let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.377 - 9.5) * if i % 3 == 0 { 1.0 } else { 0.31 }).collect();
                let mut y = x.clone();
                // SAFETY: the caller checked the CPU.
                unsafe { wide(&mut y) };
                for (i, (&a, &v)) in y.iter().zip(&x).enumerate() {
                    let want = g::<f32, H>(v);
                    assert_eq!(a.to_bits(), want.to_bits(), "{} lanes, len {len}, element {i}", V::N);
                    // Fused steps round differently, not worse: both forms agree closely.
                    assert!((want - g::<f32, Split>(v)).abs() <= 1e-6, "element {i}: {want}");
                }
            }
        }
        #[inline(always)]
        fn g<V: Lanes, H: Horner>(v: V) -> V {
            erf_by::<V, H>(tanh_by::<V, H>(v) * V::splat(3.0) + exp_by::<V, H>(v * V::splat(0.1)))
        }
        // Closures rather than `g` itself: see `act_op`'s `on_vectors`.
        #[allow(clippy::redundant_closure)]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<H: Horner>(a: &mut [f32]) {
            map_in_place::<F32x8, _>(
                a,
                #[inline(always)]
                |v| g::<F32x8, H>(v),
            )
        }
        #[allow(clippy::redundant_closure)]
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<H: Horner>(a: &mut [f32]) {
            map_in_place::<F32x16, _>(
                a,
                #[inline(always)]
                |v| g::<F32x16, H>(v),
            )
        }
        if has_f32x8_fma() {
            check::<F32x8, Split>(avx2::<Split>);
            check::<F32x8, Fused>(avx2::<Fused>);
        }
        if std::is_x86_feature_detected!("avx512f") {
            check::<F32x16, Split>(avx512::<Split>);
            check::<F32x16, Fused>(avx512::<Fused>);
        }
    }
}
