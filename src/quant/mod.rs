//! The numeric core of INT8 quantisation: schemes, quantisation parameters, the scalar reference
//! quantise/dequantise every fast path is checked against, per-channel weight quantisation, and
//! fake-quant with a straight-through estimator for QAT. Uses candle and `error` only.

pub mod fake;

use serde::{Deserialize, Serialize};

/// Integer type of quantised activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActType {
    /// Asymmetric uint8, 0..255 with a zero point (what x86 integer dot products want).
    U8,
    /// Asymmetric 7-bit, 0..127 with a zero point, stored as u8 (ONNX Runtime's `reduce_range`):
    /// one bit of activation resolution traded for AVX2's `vpmaddubsw`, which is exact only on
    /// 7-bit operands and faster than the exact 8-bit AVX2 kernel.
    U7,
    /// Symmetric int8, −128..127, zero point 0.
    I8,
}

impl ActType {
    /// `(qmin, qmax)` of the type.
    pub fn range(self) -> (i32, i32) {
        match self {
            ActType::U8 => (0, 255),
            ActType::U7 => (0, 127),
            ActType::I8 => (-128, 127),
        }
    }
}

impl std::str::FromStr for ActType {
    type Err = crate::WickError;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "u8" => Ok(ActType::U8),
            "u7" => Ok(ActType::U7),
            "i8" => Ok(ActType::I8),
            o => Err(crate::WickError::invalid("--activations", format!("'{o}' is not one of u8, u7, i8"))),
        }
    }
}

/// Affine quantisation parameters: `q = clamp(round(x · (1/scale)) + zero_point, qmin, qmax)`
/// for activations (see [`QParams::quantize`]), `x̂ = (q − zero_point) · scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
    pub act: ActType,
}

/// Smallest scale used, so an all-zero range never divides by zero.
pub const MIN_SCALE: f32 = 1e-8;

impl QParams {
    /// Parameters covering `[lo, hi]` (widened to include 0, so zero is exact):
    /// u8 and u7: `scale = (hi − lo) / qmax`, `zp = round(−lo / scale)` clamped to `0..=qmax`
    /// (`qmax` 255 or 127); i8: `scale = max(|lo|, |hi|) / 127.5`, zp 0.
    pub fn from_range(lo: f32, hi: f32, act: ActType) -> QParams {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        match act {
            ActType::U8 | ActType::U7 => {
                let qmax = act.range().1 as f32;
                let scale = ((hi - lo) / qmax).max(MIN_SCALE);
                let zp = (-lo / scale).round().clamp(0.0, qmax) as i32;
                QParams { scale, zero_point: zp, act }
            }
            ActType::I8 => {
                let scale = (lo.abs().max(hi) / 127.5).max(MIN_SCALE);
                QParams { scale, zero_point: 0, act }
            }
        }
    }

    /// The per-token parameters of one row: [`QParams::from_range`] over the row's least and
    /// greatest finite value (a row with none: the range `[0, 0]`).
    pub fn of_row(row: &[f32], act: ActType) -> QParams {
        let (lo, hi) = finite_range(row);
        QParams::from_range(lo, hi, act)
    }

    /// Scalar reference quantisation of one activation value, PyTorch's (FBGEMM's) formula:
    /// `q = clamp(round_half_even(x · r) + zp, qmin, qmax)` with `r = 1/scale` rounded to f32,
    /// computed as `round_half_even(clamp(x · r, qmin − zp, qmax − zp)) + zp` (the same code:
    /// the bounds are integers). A multiply and a rounding the CPU does in one instruction keep
    /// the vector quantisers at half the instructions of a division and a rounding half away
    /// from zero; ONNX's `QuantizeLinear` (`x / scale`, half to even) can differ only for `x·r`
    /// within an ulp of a tie. A NaN gives `zp` (callers report non-finite inputs).
    #[inline]
    pub fn quantize(&self, x: f32) -> i32 {
        let (lo, hi) = self.code_bounds();
        (x * (1.0 / self.scale)).clamp(lo, hi).round_ties_even() as i32 + self.zero_point
    }

    /// `(qmin − zp, qmax − zp)`, the range of `round(x · r)` that no clamp changes, as f32.
    #[inline]
    pub fn code_bounds(&self) -> (f32, f32) {
        let (qmin, qmax) = self.act.range();
        ((qmin - self.zero_point) as f32, (qmax - self.zero_point) as f32)
    }

    /// Scalar reference dequantisation.
    #[inline]
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }

    /// The real interval representable: `[(qmin − zp)·s, (qmax − zp)·s]`.
    pub fn real_range(&self) -> (f32, f32) {
        let (qmin, qmax) = self.act.range();
        (self.dequantize(qmin), self.dequantize(qmax))
    }
}

/// How a quantised unit's input becomes codes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum InputQuant {
    /// One calibrated set of parameters for every value.
    Static(QParams),
    /// Dynamic, per token: each row (the last dim's values of one position) gets its own
    /// parameters at run time from its own range ([`QParams::of_row`]), so a token whose
    /// activations are large does not coarsen every other token's codes.
    PerToken(ActType),
}

impl InputQuant {
    /// The activation type of the codes.
    pub fn act(&self) -> ActType {
        match self {
            InputQuant::Static(q) => q.act,
            InputQuant::PerToken(a) => *a,
        }
    }

    /// The static parameters, if the input has them.
    pub fn fixed(&self) -> Option<QParams> {
        match self {
            InputQuant::Static(q) => Some(*q),
            InputQuant::PerToken(_) => None,
        }
    }

    /// The parameters of each row of `x` (rows of `width` values): the static ones repeated,
    /// or each row's own.
    pub fn rows(&self, x: &[f32], width: usize) -> Vec<QParams> {
        match self {
            InputQuant::Static(q) => vec![*q; x.len() / width.max(1)],
            InputQuant::PerToken(a) => x.chunks(width.max(1)).map(|r| QParams::of_row(r, *a)).collect(),
        }
    }
}

/// `(min(x ∪ {0}), max(x ∪ {0}))` over the finite values of `x`. Sixteen independent
/// compare-and-select lanes (a NaN compares false, so it is skipped), which the compiler turns
/// into vector min/max; an infinite value, which only a failing input has, takes the filtered
/// scalar fold instead.
pub fn finite_range(x: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let (mut lo, mut hi) = ([0f32; LANES], [0f32; LANES]);
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let (mut l, mut h) = (0f32, 0f32);
    for &v in lo.iter().chain(tail) {
        l = if v < l { v } else { l };
    }
    for &v in hi.iter().chain(tail) {
        h = if v > h { v } else { h };
    }
    if l.is_finite() && h.is_finite() {
        return (l, h);
    }
    x.iter().filter(|v| v.is_finite()).fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Weights quantised symmetrically per output channel (axis 0), −127..127.
#[derive(Debug, Clone, PartialEq)]
pub struct QWeight {
    pub shape: Vec<usize>,
    pub values: Vec<i8>,
    /// One scale per output channel: `scale_c = max|w_c| / 127` (1 for an all-zero channel).
    pub scales: Vec<f32>,
}

/// Per-output-channel symmetric quantisation of `w` (`[out, …]` row-major):
/// `q = clamp(round(w / s_c), −127, 127)`, `s_c = max|w_c| / 127`.
pub fn quantize_weight(w: &[f32], shape: &[usize]) -> QWeight {
    let out = shape[0];
    let per = w.len() / out.max(1);
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(out);
    for c in 0..out {
        let row = &w[c * per..(c + 1) * per];
        let m = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
        // An all-zero channel gets scale 1: its codes are 0 and nothing divides by zero.
        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
        scales.push(s);
        values.extend(row.iter().map(|&v| (v / s).round().clamp(-127.0, 127.0) as i8));
    }
    QWeight { shape: shape.to_vec(), values, scales }
}

impl QWeight {
    /// `ŵ = q · s_c`.
    pub fn dequantize(&self) -> Vec<f32> {
        let per = self.values.len() / self.scales.len().max(1);
        self.values.iter().enumerate().map(|(i, &q)| q as f32 * self.scales[i / per]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_range_includes_zero_exactly() {
        let q = QParams::from_range(-1.0, 3.0, ActType::U8);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-9);
        assert_eq!(q.zero_point, 64); // round(1 / (4/255)) = round(63.75)
        assert_eq!(q.dequantize(q.quantize(0.0)), 0.0);
        assert_eq!(q.quantize(100.0), 255);
        assert_eq!(q.quantize(-100.0), 0);
        let r = QParams::from_range(0.5, 2.0, ActType::U8);
        assert_eq!(r.zero_point, 0, "a positive range widens to include 0");
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let q = QParams::from_range(-2.0, 5.0, ActType::U8);
        for i in 0..1000 {
            let x = -2.0 + 7.0 * i as f32 / 999.0;
            assert!((q.dequantize(q.quantize(x)) - x).abs() <= q.scale / 2.0 + 1e-6, "{x}");
        }
        let s = QParams::from_range(-2.0, 5.0, ActType::I8);
        assert_eq!(s.zero_point, 0);
        assert!((s.scale - 5.0 / 127.5).abs() < 1e-9);
    }

    #[test]
    fn finite_range_matches_the_filtered_fold() {
        let fold = |x: &[f32]| x.iter().filter(|v| v.is_finite()).fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let mut x: Vec<f32> = (0..53).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
        assert_eq!(finite_range(&x), fold(&x));
        assert_eq!(finite_range(&x[..5]), fold(&x[..5]));
        assert_eq!(finite_range(&[2.0, 3.0]), (0.0, 3.0), "the range includes 0");
        x[7] = f32::NAN;
        x[40] = f32::INFINITY;
        x[41] = f32::NEG_INFINITY;
        assert_eq!(finite_range(&x), fold(&x), "non-finite values are skipped");
    }

    /// PyTorch's (FBGEMM's) activation formula: `x · (1/s)` rounded half to even. FBGEMM's own
    /// example: with s = 0.00214854861, 0.273939937 · (1/s) is 127.5 (while `x / s` is
    /// 127.499992) and rounds to 128; halves go to the even neighbour; the clamp bounds apply
    /// after the zero point.
    #[test]
    fn activation_codes_follow_pytorch() {
        let u8q = |scale: f32, zero_point: i32| QParams { scale, zero_point, act: ActType::U8 };
        assert_eq!(u8q(0.002_148_548_6, 0).quantize(0.273_939_94), 128);
        let q = u8q(1.0, 10);
        let codes: Vec<i32> = [2.5f32, 3.5, -2.5, -0.5, 0.5, 1.4999999, 245.0, 246.0, -10.0, -11.0, 1e30, -1e30].iter().map(|&x| q.quantize(x)).collect();
        assert_eq!(codes, vec![12, 14, 8, 10, 10, 11, 255, 255, 0, 0, 255, 0]);
        let i8q = QParams { scale: 0.5, zero_point: 0, act: ActType::I8 };
        assert_eq!([63.75f32, 64.0, -64.25, -70.0].map(|x| i8q.quantize(x)), [127, 127, -128, -128]);
        assert_eq!(i8q.quantize(f32::NAN), 0, "a NaN gives the zero point");
    }

    #[test]
    fn weights_per_channel_and_zero_channel() {
        let w = [1.0, -0.5, 0.25, 0.0, 0.0, 0.0, -4.0, 2.0, 1.0];
        let q = quantize_weight(&w, &[3, 3]);
        assert_eq!(q.scales, vec![1.0 / 127.0, 1.0, 4.0 / 127.0]);
        assert_eq!(&q.values[..3], &[127, -64, 32]); // round(−63.5) = −64 (away from zero)
        assert_eq!(&q.values[3..6], &[0, 0, 0]);
        assert_eq!(&q.values[6..], &[-127, 64, 32]);
        for (a, b) in q.dequantize().iter().zip(&w) {
            assert!((a - b).abs() <= 4.0 / 127.0 / 2.0 + 1e-7);
        }
    }
}
