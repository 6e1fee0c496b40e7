//! Element-wise activations as one op each with a one-pass backward `dx = dy · f'(x)`: candle
//! differentiates them through several temporary tensors per op. Each states `f` and `f'`:
//! - relu6: `min(max(x, 0), 6)`, `f' = [0 < x < 6]` (PyTorch's hardtanh convention at the ends);
//! - silu: `x·σ(x)`, `f' = σ(x)·(1 + x·(1 − σ(x)))`;
//! - sigmoid: `σ(x) = 1 / (1 + e^(−x))`, `f' = σ(x)·(1 − σ(x))`;
//! - tanh: `f' = 1 − tanh²(x)`;
//! - gelu (exact): `x·Φ(x)`, `Φ(x) = ½(1 + erf(x/√2))`, `f' = Φ(x) + x·e^(−x²/2)/√(2π)`;
//! - gelu (tanh): `½x(1 + tanh u)`, `u = √(2/π)(x + 0.044715x³)`,
//!   `f' = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)`.

use super::arch::{GeluApprox, Op};
use super::conv_op::{f32_slice, with_f32};
use crate::error::Result;
use crate::parallel::build_chunks;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Which activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Relu6,
    Silu,
    Sigmoid,
    Tanh,
    GeluErf,
    GeluTanh,
}

/// Elements per task.
const CHUNK: usize = 1 << 14;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1/√(2π)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;
const GELU_C: f32 = 0.044_715;

/// `erf(x)` from the complementary error function's Chebyshev fit (Numerical Recipes `erfcc`,
/// fractional error below 1.2e-7 everywhere): `erfc(z) = t·exp(−z² + P(t))`, `t = 1/(1 + z/2)`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_2
        + t * (1.000_023_7 + t * (0.374_091_96 + t * (0.096_784_18 + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_204 + t * (1.488_516 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp(-z * z + p);
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

/// `e^x` without a library call, so that loops over it vectorise: `x = n·ln 2 + r` with
/// `|r| ≤ ln 2 / 2` (ln 2 split in two for an exact `n·ln 2`), `e^r` by Cephes' `expf`
/// polynomial (relative error about 1e-7), and `2^n` built in the exponent bits. Inputs are
/// clamped to [−87.3, 88.7], where f32 neither overflows nor goes subnormal.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by adding and subtracting 1.5·2²³ (a library call on the baseline x86-64
    // target otherwise, which would stop the loops from vectorising); |x·log2 e| < 2²².
    const ROUND: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // `t`'s low mantissa bits hold `n` (`t` stays in ROUND's binade): an integer without a
    // float-to-int conversion, whose saturating Rust semantics do not vectorise.
    let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// `tanh(x) ≈ x·P(x²)/Q(x²)` on `x` clamped to [−9, 9] (beyond, tanh is ±1 in f32): the
/// rational minimax fit ONNX Runtime's MLAS and Eigen use, within 4e-7 of the library's tanh
/// (3.6e-7 measured near ±6, a few ulp of 1; the unit test), and vectorisable where the
/// library call is not.
// The coefficients as published, some with digits past f32's precision.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let x = x.clamp(-9.0, 9.0);
    let x2 = x * x;
    let p = -2.760_768_5e-16;
    let p = p * x2 + 2.000_187_9e-13;
    let p = p * x2 - 8.604_671_5e-11;
    let p = p * x2 + 5.122_297e-8;
    let p = p * x2 + 1.485_722_4e-5;
    let p = p * x2 + 6.372_619_3e-4;
    let p = p * x2 + 4.893_524_6e-3;
    let q = 1.198_258_4e-6;
    let q = q * x2 + 1.185_347_1e-4;
    let q = q * x2 + 2.268_434_6e-3;
    let q = q * x2 + 4.893_525_2e-3;
    // Near ±9 the fit overshoots 1 by a few ulp.
    (x * p / q).clamp(-1.0, 1.0)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

impl Act {
    /// `f(x)`.
    #[inline(always)]
    pub fn f(self, x: f32) -> f32 {
        match self {
            Act::Relu6 => x.clamp(0.0, 6.0),
            Act::Silu => x * sigmoid(x),
            Act::Sigmoid => sigmoid(x),
            Act::Tanh => tanh(x),
            Act::GeluErf => 0.5 * x * (1.0 + erf(x * INV_SQRT_2)),
            Act::GeluTanh => 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x))),
        }
    }

    /// `f'(x)`.
    #[inline(always)]
    fn df(self, x: f32) -> f32 {
        match self {
            Act::Relu6 => f32::from(u8::from(x > 0.0 && x < 6.0)),
            Act::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            Act::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Act::Tanh => {
                let t = tanh(x);
                1.0 - t * t
            }
            Act::GeluErf => 0.5 * (1.0 + erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x),
            Act::GeluTanh => {
                let t = tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
            }
        }
    }
}

impl Act {
    /// The activation an op computes, if it is one of these.
    pub fn of(op: &Op) -> Option<Act> {
        Some(match op {
            Op::Relu6(_) => Act::Relu6,
            Op::Gelu(c) if c.approximate == GeluApprox::Tanh => Act::GeluTanh,
            Op::Gelu(_) => Act::GeluErf,
            Op::Silu(_) => Act::Silu,
            Op::Sigmoid(_) => Act::Sigmoid,
            Op::Tanh(_) => Act::Tanh,
            _ => return None,
        })
    }
}

/// Whether f32 element-wise loops use AVX-512: where the f32 kernels do
/// (`matmul::isa::F32Isa`; `WICK_F32_ISA` caps it). Detected once.
pub fn f32_avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| crate::matmul::isa::F32Isa::detect() == crate::matmul::isa::F32Isa::Avx512)
}

/// Defines `fn $name(args)` running the `#[inline(always)]` function `$body` compiled for
/// 16-wide vectors where [`f32_avx512`], else 8-wide where the CPU has AVX2. Without FMA the
/// arithmetic is the same at every width, so the results are bit-identical.
#[macro_export]
macro_rules! wide_f32_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) => $body:path) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::model::act_op::f32_avx512() {
                    #[target_feature(enable = "avx512f")]
                    unsafe fn widest($($a: $t),*) {
                        $body($($a),*)
                    }
                    // SAFETY: `f32_avx512` found AVX-512F.
                    return unsafe { widest($($a),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    #[target_feature(enable = "avx2")]
                    unsafe fn wide($($a: $t),*) {
                        $body($($a),*)
                    }
                    // SAFETY: the CPU has AVX2.
                    return unsafe { wide($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}

wide_f32_fn!(
    /// `a[i] = f(a[i])` in place on the calling thread (the compiled plans run each part of a
    /// batch on its own thread), with the match hoisted out of the loop as in `map`.
    pub fn apply_in_place(a: &mut [f32], act: Act) => apply
);

/// `a[i] = f(a[i])`, inlined into the caller (which picks the instruction set).
#[inline(always)]
pub fn apply(a: &mut [f32], act: Act) {
    #[inline(always)]
    fn each<G: Fn(f32) -> f32>(a: &mut [f32], g: G) {
        a.iter_mut().for_each(|v| *v = g(*v));
    }
    match act {
        Act::Relu6 => each(a, |x| Act::Relu6.f(x)),
        Act::Silu => each(a, |x| Act::Silu.f(x)),
        Act::Sigmoid => each(a, |x| Act::Sigmoid.f(x)),
        Act::Tanh => each(a, |x| Act::Tanh.f(x)),
        Act::GeluErf => each(a, |x| Act::GeluErf.f(x)),
        Act::GeluTanh => each(a, |x| Act::GeluTanh.f(x)),
    }
}

/// `out[i] = g(a[i])` over chunks of the pool; the match on the activation is hoisted out of
/// the loop by monomorphising `g` per activation.
fn map<G: Fn(f32) -> f32 + Sync + Send>(a: &[f32], g: G) -> Vec<f32> {
    // SAFETY: each chunk writes every element (`a` reaches every chunk's end).
    unsafe { build_chunks(a.len(), CHUNK, a.len(), |i, out| out.iter_mut().zip(&a[i * CHUNK..]).for_each(|(o, &v)| _ = o.write(g(v)))) }
}

/// `out[i] = d[i]·g(x[i])`.
fn map_grad<G: Fn(f32) -> f32 + Sync + Send>(d: &[f32], x: &[f32], g: G) -> Vec<f32> {
    assert_eq!(d.len(), x.len());
    // SAFETY: each chunk writes every element; `d` and `x` have the chunks' total length.
    unsafe { build_chunks(d.len(), CHUNK, d.len(), |i, out| out.iter_mut().zip(&d[i * CHUNK..]).zip(&x[i * CHUNK..]).for_each(|((o, &d), &v)| _ = o.write(d * g(v)))) }
}

/// Calls `$body` with `$g` bound to the activation's `f` or `f'` as a concrete closure.
macro_rules! per_act {
    ($act:expr, $method:ident, |$g:ident| $body:expr) => {
        match $act {
            Act::Relu6 => {
                let $g = |v: f32| Act::Relu6.$method(v);
                $body
            }
            Act::Silu => {
                let $g = |v: f32| Act::Silu.$method(v);
                $body
            }
            Act::Sigmoid => {
                let $g = |v: f32| Act::Sigmoid.$method(v);
                $body
            }
            Act::Tanh => {
                let $g = |v: f32| Act::Tanh.$method(v);
                $body
            }
            Act::GeluErf => {
                let $g = |v: f32| Act::GeluErf.$method(v);
                $body
            }
            Act::GeluTanh => {
                let $g = |v: f32| Act::GeluTanh.$method(v);
                $body
            }
        }
    };
}

struct Activation(Act);

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let y = per_act!(self.0, f, |g| map(x, g));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_f32(grad, self.name(), |d| with_f32(x, self.name(), |x| per_act!(self.0, df, |g| map_grad(d, x, g))))??;
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

/// `f(x)` with the one-pass backward.
pub fn activation(x: &Tensor, act: Act) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Activation(act))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        // erf at 0, ±0.5, 1, 2, 3 (Abramowitz & Stegun table 7.1).
        for (x, e) in [(0f32, 0f32), (0.5, 0.520_499_9), (-0.5, -0.520_499_9), (1.0, 0.842_700_8), (2.0, 0.995_322_3), (3.0, 0.999_977_9)] {
            assert!((erf(x) - e).abs() < 2e-7, "erf({x}) = {} vs {e}", erf(x));
        }
    }

    #[test]
    fn tanh_is_within_4e7_of_the_library_tanh() {
        for i in -12000..=12000 {
            let x = i as f32 / 1000.0;
            let (a, b) = (tanh(x), x.tanh());
            assert!((a - b).abs() <= 4e-7, "tanh({x}) = {a} vs {b}");
        }
        assert_eq!(tanh(0.0), 0.0);
        assert!(tanh(1e-6) > 0.0 && (tanh(1e-6) - 1e-6).abs() < 1e-12);
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= 2.5e-7 * b, "exp({x}) = {a} vs {b}");
        }
    }

    #[test]
    fn derivatives_match_central_differences() {
        for act in [Act::Silu, Act::Sigmoid, Act::Tanh, Act::GeluErf, Act::GeluTanh, Act::Relu6] {
            for x in [-3.1f64, -0.7, 0.3, 1.9, 5.2, 6.5] {
                let h = 1e-3;
                let num = (act.f((x + h) as f32) as f64 - act.f((x - h) as f32) as f64) / (2.0 * h);
                let d = act.df(x as f32) as f64;
                assert!((num - d).abs() < 2e-3, "{act:?} at {x}: {d} vs numeric {num}");
            }
        }
    }
}
