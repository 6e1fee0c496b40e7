//! Element-wise activations as one op each with a one-pass backward `dx = dy · f'(x)`: candle
//! differentiates them through several temporary tensors per op. Each states `f` and `f'`:
//! - relu6: `min(max(x, 0), 6)`, `f' = [0 < x < 6]` (PyTorch's hardtanh convention at the ends);
//! - silu: `x·σ(x)` (in the compiled plans `x / (1 + e^(−x))`, PyTorch's form), `f' = σ(x)·(1 + x·(1 − σ(x)))`;
//! - sigmoid: `σ(x) = 1 / (1 + e^(−x))`, `f' = σ(x)·(1 − σ(x))`;
//! - tanh: `f' = 1 − tanh²(x)`;
//! - gelu (exact): `x·Φ(x)`, `Φ(x) = ½(1 + erf(x/√2))`, `f' = Φ(x) + x·e^(−x²/2)/√(2π)`;
//! - gelu (tanh): `½x(1 + tanh u)`, `u = √(2/π)(x + 0.044715x³)`,
//!   `f' = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)`;
//! - leaky_relu: `max(x, 0) + a·min(x, 0)` (`x` where `x > 0`, else `a·x`), `f' = [x > 0] + a·[x ≤ 0]`;
//! - hardsigmoid: `h/6` with `h = min(max(x + 3, 0), 6)`, `f' = [−3 < x < 3] · (1/6)`;
//! - hardswish: `x·h/6` (in the compiled plans `x·(h/6)`, within an ulp), `f' = 0` below −3,
//!   `x/3 + ½` on [−3, 3], 1 above (PyTorch's CPU kernels, rounding for rounding).

use super::arch::{GeluApprox, Op};
use super::conv_op::{f32_slice, with_f32};
use super::vmath::{erf, erf_by, exp, exp_by, exp_neg_fused, ln_1p_unit_by, map_in_place, tanh, tanh_by, Fused, Horner, Lanes, Split};
#[cfg(target_arch = "x86_64")]
use super::vmath::{F32x16, F32x8};
use crate::error::Result;
use crate::parallel::build_chunks;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Which activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Relu6,
    Silu,
    Sigmoid,
    Tanh,
    GeluErf,
    GeluTanh,
    /// With its negative slope.
    LeakyRelu(f32),
    /// Clamped to `[lo, hi]`.
    Hardtanh(f32, f32),
    /// With its alpha.
    Elu(f32),
    Selu,
    /// With its alpha.
    Celu(f32),
    /// With its beta and threshold.
    Softplus(f32, f32),
    Mish,
    Softsign,
    Hardsigmoid,
    Hardswish,
}

/// Elements per task.
const CHUNK: usize = 1 << 14;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1/√(2π)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;
const GELU_C: f32 = 0.044_715;
/// SELU's constants, PyTorch's (and ONNX's defaults) rounded to f32.
pub const SELU_ALPHA: f32 = 1.673_263_2;
pub const SELU_SCALE: f32 = 1.050_701;

/// ELU, `max(x, 0) + α·(exp(min(x, 0)) − 1)`; a function of its own rather than a call of
/// `Act::eval_by` from SELU's arm, which would make that function recursive and so never inlined
/// into the kernels (whose intrinsics then run as calls).
#[inline(always)]
fn elu_by<V: Lanes, H: Horner>(x: V, a: f32) -> V {
    x.relu() + V::splat(a) * (exp_by::<V, H>(x.at_most(0.0)) - V::splat(1.0))
}

/// Softplus, `ln(1 + e^(βx))/β` where `βx ≤ threshold`, else `x` (PyTorch's switch to the
/// identity), computed as `(max(βx, 0) + ln(1 + e^(−|βx|)))/β` so that `e^·` never overflows.
#[inline(always)]
fn softplus_by<V: Lanes, H: Horner>(x: V, beta: f32, threshold: f32) -> V {
    let y = x * V::splat(beta);
    let soft = (y.relu() + ln_1p_unit_by::<V, H>(exp_by::<V, H>(y.at_most(0.0) - y.relu()))) / V::splat(beta);
    let linear = y.between(threshold, f32::INFINITY);
    linear * x + (V::splat(1.0) - linear) * soft
}

/// `|x| = max(x, 0) − min(x, 0)`.
#[inline(always)]
fn abs<V: Lanes>(x: V) -> V {
    x.relu() - x.at_most(0.0)
}

/// ELU's derivative, `1` for `x > 0`, else `α·exp(x)`.
#[inline(always)]
fn elu_df<V: Lanes>(x: V, a: f32) -> V {
    let pos = x.between(0.0, f32::INFINITY);
    pos + (V::splat(1.0) - pos) * V::splat(a) * exp(x.at_most(0.0))
}

#[inline(always)]
fn sigmoid<V: Lanes>(x: V) -> V {
    sigmoid_by::<V, Split>(x)
}

#[inline(always)]
fn sigmoid_by<V: Lanes, H: Horner>(x: V) -> V {
    V::splat(1.0) / (V::splat(1.0) + exp_neg_by::<V, H>(x))
}

/// `e^(−x)` as `exp_by(0 − x)` computes it; [`Fused`]'s without the subtraction
/// (`vmath::exp_neg_fused`, the same bits).
#[inline(always)]
fn exp_neg_by<V: Lanes, H: Horner>(x: V) -> V {
    match H::FUSED {
        true => exp_neg_fused(x),
        false => exp_by::<V, H>(V::splat(0.0) - x),
    }
}

impl Act {
    /// `f(x)`.
    #[inline(always)]
    pub fn f(self, x: f32) -> f32 {
        self.eval(x)
    }

    /// `f(x)` on every lane of `x`, the same operations at every width (`model::vmath`).
    #[inline(always)]
    pub fn eval<V: Lanes>(self, x: V) -> V {
        self.eval_by::<V, Split>(x)
    }

    /// [`Act::eval`] with the polynomials' steps rounded as `H` says (`vmath::Horner`).
    #[inline(always)]
    pub fn eval_by<V: Lanes, H: Horner>(self, x: V) -> V {
        let s = V::splat;
        match self {
            Act::Relu6 => x.at_least(0.0).at_most(6.0),
            // One division where `x·σ(x)` takes a division and a multiply (PyTorch's own
            // form, and one rounding fewer).
            Act::Silu if H::FUSED => x / (s(1.0) + exp_neg_by::<V, H>(x)),
            Act::Silu => x * sigmoid_by::<V, H>(x),
            Act::Sigmoid => sigmoid_by::<V, H>(x),
            Act::Tanh => tanh_by::<V, H>(x),
            Act::GeluErf => s(0.5) * x * (s(1.0) + erf_by::<V, H>(x * s(INV_SQRT_2))),
            Act::GeluTanh => s(0.5) * x * (s(1.0) + tanh_by::<V, H>(s(SQRT_2_OVER_PI) * (x + s(GELU_C) * x * x * x))),
            Act::LeakyRelu(a) => x.relu() + s(a) * x.at_most(0.0),
            Act::Hardtanh(lo, hi) => x.at_least(lo).at_most(hi),
            Act::Elu(a) => elu_by::<V, H>(x, a),
            Act::Selu => s(SELU_SCALE) * elu_by::<V, H>(x, SELU_ALPHA),
            Act::Celu(a) => x.relu() + s(a) * (exp_by::<V, H>(x.at_most(0.0) / s(a)) - s(1.0)),
            Act::Softplus(b, t) => softplus_by::<V, H>(x, b, t),
            Act::Mish => x * tanh_by::<V, H>(softplus_by::<V, H>(x, 1.0, f32::INFINITY)),
            Act::Softsign => x / (s(1.0) + abs(x)),
            Act::Hardsigmoid => H::div_const((x + s(3.0)).at_least(0.0).at_most(6.0), 6.0),
            Act::Hardswish => H::mul_div_const(x, (x + s(3.0)).at_least(0.0).at_most(6.0), 6.0),
        }
    }

    /// `f'(x)`.
    #[cfg(test)]
    fn df(self, x: f32) -> f32 {
        self.eval_df(x)
    }

    /// `f'(x)` on every lane of `x`, the same operations at every width.
    #[inline(always)]
    fn eval_df<V: Lanes>(self, x: V) -> V {
        let s = V::splat;
        match self {
            Act::Relu6 => x.between(0.0, 6.0),
            Act::Silu => {
                let g = sigmoid(x);
                g * (s(1.0) + x * (s(1.0) - g))
            }
            Act::Sigmoid => {
                let g = sigmoid(x);
                g * (s(1.0) - g)
            }
            Act::Tanh => {
                let t = tanh(x);
                s(1.0) - t * t
            }
            Act::GeluErf => s(0.5) * (s(1.0) + erf(x * s(INV_SQRT_2))) + x * s(INV_SQRT_2PI) * exp(s(-0.5) * x * x),
            Act::GeluTanh => {
                let t = tanh(s(SQRT_2_OVER_PI) * (x + s(GELU_C) * x * x * x));
                s(0.5) * (s(1.0) + t) + s(0.5) * x * (s(1.0) - t * t) * s(SQRT_2_OVER_PI) * (s(1.0) + s(3.0 * GELU_C) * x * x)
            }
            Act::LeakyRelu(a) => {
                let pos = x.between(0.0, f32::INFINITY);
                pos + (s(1.0) - pos) * s(a)
            }
            Act::Hardtanh(lo, hi) => x.between(lo, hi),
            Act::Elu(a) => elu_df(x, a),
            Act::Selu => s(SELU_SCALE) * elu_df(x, SELU_ALPHA),
            Act::Celu(a) => {
                let pos = x.between(0.0, f32::INFINITY);
                pos + (s(1.0) - pos) * exp(x.at_most(0.0) / s(a))
            }
            Act::Softplus(b, t) => {
                let linear = (x * s(b)).between(t, f32::INFINITY);
                linear + (s(1.0) - linear) * sigmoid(x * s(b))
            }
            Act::Mish => {
                let t = tanh(softplus_by::<V, Split>(x, 1.0, f32::INFINITY));
                t + x * (s(1.0) - t * t) * sigmoid(x)
            }
            Act::Softsign => {
                let d = s(1.0) + abs(x);
                s(1.0) / (d * d)
            }
            Act::Hardsigmoid => x.between(-3.0, 3.0) * s(1.0 / 6.0),
            // Closed at ±3 as PyTorch's `x < −3`, `x ≤ 3` tests (`between` is open).
            Act::Hardswish => {
                let mid = s(1.0) - x.between(f32::NEG_INFINITY, -3.0) - x.between(3.0, f32::INFINITY);
                mid * (x / s(3.0) + s(0.5)) + x.between(3.0, f32::INFINITY)
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
            Op::LeakyRelu(c) => Act::LeakyRelu(c.negative_slope as f32),
            Op::Hardtanh(c) => Act::Hardtanh(c.min_val as f32, c.max_val as f32),
            Op::Elu(c) => Act::Elu(c.alpha as f32),
            Op::Selu(_) => Act::Selu,
            Op::Celu(c) => Act::Celu(c.alpha as f32),
            Op::Softplus(c) => Act::Softplus(c.beta as f32, c.threshold as f32),
            Op::Mish(_) => Act::Mish,
            Op::Softsign(_) => Act::Softsign,
            Op::Hardsigmoid(_) => Act::Hardsigmoid,
            Op::Hardswish(_) => Act::Hardswish,
            _ => return None,
        })
    }
}

/// Defines `fn $name(args) [-> R]` running the `#[inline(always)]` function `$body` compiled for
/// 16-wide vectors where `vmath::has_f32x16`, else 8-wide where the CPU has AVX2. Without FMA
/// the arithmetic is the same at every width, so the results are bit-identical. `$body` is
/// either a plain function (whose loops the compiler vectorises) or, written `body::<Lanes>`,
/// an `unsafe` one generic over the vector type (`vmath::Lanes`), given `F32x16`, `F32x8` or
/// `f32`.
#[macro_export]
macro_rules! wide_f32_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? => $body:ident::<Lanes>) => {
        $crate::wide_f32_fn!(@make $(#[$m])* $vis fn $name($($a: $t),*) -> ($($r)?)
            [$body::<$crate::model::vmath::F32x16>] [$body::<$crate::model::vmath::F32x8>] [$body::<f32>]);
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? => $body:path) => {
        $crate::wide_f32_fn!(@make $(#[$m])* $vis fn $name($($a: $t),*) -> ($($r)?) [$body] [$body] [$body]);
    };
    (@make $(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) -> ($($r:ty)?) [$($w16:tt)*] [$($w8:tt)*] [$($w1:tt)*]) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::model::vmath::has_f32x16() {
                    #[target_feature(enable = "avx512f")]
                    unsafe fn widest($($a: $t),*) $(-> $r)? {
                        $($w16)*($($a),*)
                    }
                    // SAFETY: `has_f32x16` found AVX-512F.
                    return unsafe { widest($($a),*) };
                }
                if $crate::model::vmath::has_f32x8() {
                    #[target_feature(enable = "avx2")]
                    unsafe fn wide($($a: $t),*) $(-> $r)? {
                        $($w8)*($($a),*)
                    }
                    // SAFETY: the CPU has AVX2.
                    return unsafe { wide($($a),*) };
                }
            }
            // SAFETY: scalars need no CPU feature (a plain body is safe to call anyway).
            #[allow(unused_unsafe)]
            unsafe {
                $($w1)*($($a),*)
            }
        }
    };
}

/// `a[i] = f(a[i])` in place on the calling thread (the compiled plans run each part of a
/// batch on its own thread), in 16 lanes where `vmath::has_f32x16`, else 8 where the CPU has
/// AVX2: bit-identical to [`Act::f`] at every width (`model::vmath`).
pub fn apply_in_place(a: &mut [f32], act: Act) {
    in_place::<Split, false>(a, act)
}

/// [`apply_in_place`] with the polynomials' steps fused ([`Fused`]), bit-identical at every
/// width: the compiled plans' activations (float and integer) and the integer reference
/// executor's, which the integer plans equal bit for bit.
pub fn apply_in_place_fused(a: &mut [f32], act: Act) {
    in_place::<Fused, false>(a, act)
}

/// `a[i] = f(a[i])`, or `f'(a[i])` when `DF`, its steps rounded as `H` says, on the widest
/// vectors the CPU has. The AVX2 vectors need FMA for `Fused`; `Split` compiled with FMA enabled
/// still rounds every multiply and add on its own (Rust does not contract them).
fn in_place<H: Horner, const DF: bool>(a: &mut [f32], act: Act) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::model::vmath::has_f32x16() {
            #[target_feature(enable = "avx512f")]
            unsafe fn widest<H: Horner, const DF: bool>(a: &mut [f32], act: Act) {
                on_vectors::<F32x16, H, DF>(a, act)
            }
            // SAFETY: `has_f32x16` found AVX-512F.
            return unsafe { widest::<H, DF>(a, act) };
        }
        if crate::model::vmath::has_f32x8_fma() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide<H: Horner, const DF: bool>(a: &mut [f32], act: Act) {
                on_vectors::<F32x8, H, DF>(a, act)
            }
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { wide::<H, DF>(a, act) };
        }
    }
    // SAFETY: scalars need no CPU feature (`f32::mul_add` is exact without FMA too).
    unsafe { on_vectors::<f32, H, DF>(a, act) }
}

/// [`apply_in_place`] on vectors of `V`, for a caller that picks the width (the compiled layers'
/// epilogues), with the polynomials' steps rounded as `H` says: `vmath::Fused` for the compiled
/// plans' epilogues, as [`apply_in_place_fused`].
///
/// One copy per vector width, out of line: inlined, every activation's code was copied into
/// each of the kernels' epilogues, which doubled the build time for one call per row or tile.
///
/// # Safety
/// The CPU has `V`'s features, and FMA for 8-lane vectors and for `Fused`.
#[inline(always)]
pub unsafe fn activate_by<V: Lanes, H: Horner>(a: &mut [f32], act: Act) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn on_f32x16<H: Horner>(a: &mut [f32], act: Act) {
            on_vectors::<F32x16, H, false>(a, act)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn on_f32x8<H: Horner>(a: &mut [f32], act: Act) {
            on_vectors::<F32x8, H, false>(a, act)
        }
        // SAFETY (both): the caller's CPU features for `V`, which is `F32x16` or `F32x8` here.
        match V::N {
            16 => return on_f32x16::<H>(a, act),
            8 => return on_f32x8::<H>(a, act),
            _ => {}
        }
    }
    on_vectors::<f32, H, false>(a, act)
}

/// `a[i] = f(a[i])`, or `f'(a[i])` when `DF` (always with `Split` steps), on vectors of `V`,
/// `f`'s polynomial steps rounded as `H` says.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn on_vectors<V: Lanes, H: Horner, const DF: bool>(a: &mut [f32], act: Act) {
    // One loop per activation, so that the match is outside it; each through an
    // `#[inline(always)]` closure, so that it inlines into the caller's instruction set (a
    // function item passed instead is called through a shim that does not).
    macro_rules! each_act {
        ($($a:ident),*) => {
            match act {
                $(Act::$a => map_in_place(a, #[inline(always)] |v: V| if DF { Act::$a.eval_df(v) } else { Act::$a.eval_by::<V, H>(v) }),)*
                Act::LeakyRelu(k) => map_in_place(a, #[inline(always)] |v: V| if DF { Act::LeakyRelu(k).eval_df(v) } else { Act::LeakyRelu(k).eval_by::<V, H>(v) }),
                Act::Hardtanh(lo, hi) => map_in_place(a, #[inline(always)] |v: V| if DF { Act::Hardtanh(lo, hi).eval_df(v) } else { Act::Hardtanh(lo, hi).eval_by::<V, H>(v) }),
                Act::Elu(k) => map_in_place(a, #[inline(always)] |v: V| if DF { Act::Elu(k).eval_df(v) } else { Act::Elu(k).eval_by::<V, H>(v) }),
                Act::Celu(k) => map_in_place(a, #[inline(always)] |v: V| if DF { Act::Celu(k).eval_df(v) } else { Act::Celu(k).eval_by::<V, H>(v) }),
                Act::Softplus(b, t) => map_in_place(a, #[inline(always)] |v: V| if DF { Act::Softplus(b, t).eval_df(v) } else { Act::Softplus(b, t).eval_by::<V, H>(v) }),
            }
        };
    }
    each_act!(Relu6, Silu, Sigmoid, Tanh, GeluErf, GeluTanh, Hardsigmoid, Hardswish, Selu, Mish, Softsign)
}

/// `out[i] = f(a[i])` over chunks of the pool, each copied and then [`apply_in_place`] (or
/// [`apply_in_place_fused`] when `fused`).
fn map(a: &[f32], act: Act, fused: bool) -> Vec<f32> {
    // SAFETY: each chunk writes every element (`a` reaches every chunk's end).
    unsafe {
        build_chunks(a.len(), CHUNK, a.len(), |i, out| {
            out.iter_mut().zip(&a[i * CHUNK..]).for_each(|(o, &v)| _ = o.write(v));
            // SAFETY: every element was written just above; MaybeUninit<f32> has f32's layout.
            let out = &mut *(out as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]);
            match fused {
                true => apply_in_place_fused(out, act),
                false => apply_in_place(out, act),
            }
        })
    }
}

/// `out[i] = d[i]·f'(x[i])` over chunks of the pool, `f'` on vectors as in [`map`].
fn map_grad(d: &[f32], x: &[f32], act: Act) -> Vec<f32> {
    assert_eq!(d.len(), x.len());
    // SAFETY: each chunk writes every element; `d` and `x` have the chunks' total length.
    unsafe {
        build_chunks(d.len(), CHUNK, d.len(), |i, out| {
            out.iter_mut().zip(&x[i * CHUNK..]).for_each(|(o, &v)| _ = o.write(v));
            // SAFETY: every element was written just above; MaybeUninit<f32> has f32's layout.
            let out = &mut *(out as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]);
            in_place::<Split, true>(out, act);
            out.iter_mut().zip(&d[i * CHUNK..]).for_each(|(o, &d)| *o *= d);
        })
    }
}

/// An activation, its polynomials' steps fused or not.
struct Activation(Act, bool);

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let y = map(x, self.0, self.1);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_f32(grad, self.name(), |d| with_f32(x, self.name(), |x| map_grad(d, x, self.0)))??;
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

/// `f(x)` with the one-pass backward.
pub fn activation(x: &Tensor, act: Act) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Activation(act, false))?)
}

/// [`activation`] with the polynomials' steps fused, as [`apply_in_place_fused`].
pub fn activation_fused(x: &Tensor, act: Act) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Activation(act, true))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors this CPU runs compute every activation and derivative bit for bit as the
    /// scalar does, over lengths with and without a partial vector, and write nothing past the
    /// end (`WICK_F32_ISA=avx2` runs the 8-lane vectors on an AVX-512 CPU).
    #[test]
    fn vector_activations_equal_the_scalar() {
        let acts = [
            Act::Relu6,
            Act::Silu,
            Act::Sigmoid,
            Act::Tanh,
            Act::GeluErf,
            Act::GeluTanh,
            Act::LeakyRelu(0.01),
            Act::LeakyRelu(0.2),
            Act::Hardtanh(-1.0, 1.0),
            Act::Hardtanh(-0.5, 2.0),
            Act::Elu(1.0),
            Act::Elu(0.3),
            Act::Selu,
            Act::Celu(2.0),
            Act::Softplus(1.0, 20.0),
            Act::Softplus(2.0, 1.5),
            Act::Mish,
            Act::Softsign,
            Act::Hardsigmoid,
            Act::Hardswish,
        ];
        for len in [1usize, 5, 16, 37, 100] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.731 - 30.0) * if i % 4 == 0 { 0.1 } else { 1.0 }).collect();
            for act in acts {
                // A value past the end, which a partial vector's masked store must leave as is.
                let (mut y, mut dy) = ([&x[..], &[7.5]].concat(), [&x[..], &[7.5]].concat());
                apply_in_place(&mut y[..len], act);
                in_place::<Split, true>(&mut dy[..len], act);
                assert_eq!((y[len], dy[len]), (7.5, 7.5), "{act:?} wrote past {len} values");
                for (i, &v) in x.iter().enumerate() {
                    assert_eq!(y[i].to_bits(), act.f(v).to_bits(), "{act:?}({v})");
                    assert_eq!(dy[i].to_bits(), act.df(v).to_bits(), "{act:?}'({v})");
                }
            }
        }
    }

    #[test]
    fn softplus_mish_and_softsign_match_f64() {
        let softplus = |x: f64, b: f64, t: f64| if b * x > t { x } else { (b * x).exp().ln_1p() / b };
        for i in -400..=400 {
            let x = i as f64 * 0.25;
            let cases = [
                (Act::Softplus(1.0, 20.0), softplus(x, 1.0, 20.0)),
                (Act::Softplus(2.0, 1.5), softplus(x, 2.0, 1.5)),
                (Act::Mish, x * softplus(x, 1.0, f64::INFINITY).tanh()),
                (Act::Softsign, x / (1.0 + x.abs())),
            ];
            for (act, want) in cases {
                let got = act.f(x as f32) as f64;
                assert!((got - want).abs() <= 1e-6 * want.abs() + 1e-7, "{act:?}({x}) = {got}, want {want}");
            }
        }
    }

    #[test]
    fn derivatives_match_central_differences() {
        for act in [
            Act::Silu,
            Act::Sigmoid,
            Act::Tanh,
            Act::GeluErf,
            Act::GeluTanh,
            Act::Relu6,
            Act::LeakyRelu(0.1),
            Act::Hardtanh(-1.0, 1.0),
            Act::Elu(0.7),
            Act::Selu,
            Act::Celu(2.0),
            Act::Softplus(1.0, 20.0),
            Act::Softplus(2.0, 1.5),
            Act::Mish,
            Act::Softsign,
            Act::Hardsigmoid,
            Act::Hardswish,
        ] {
            for x in [-3.1f64, -0.7, 0.3, 1.9, 5.2, 6.5] {
                let h = 1e-3;
                let num = (act.f((x + h) as f32) as f64 - act.f((x - h) as f32) as f64) / (2.0 * h);
                let d = act.df(x as f32) as f64;
                assert!((num - d).abs() < 2e-3, "{act:?} at {x}: {d} vs numeric {num}");
            }
        }
    }
}
