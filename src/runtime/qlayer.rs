//! One quantised layer (conv or linear) prepared for the compiled runtime: weights reordered to
//! the channels-last patch order `(ky, kx, c)` and packed per group, and the epilogue constants.
//! Running it takes the input's codes (channels last), runs the packed GEMM over the patch rows
//! (each tap's codes read where they lie, or the codes in place when a row *is* a pixel), or a
//! depthwise conv's direct kernel (`depthwise.rs`: one input channel per group, any channel
//! multiplier, a one-channel input's conv included; its sums exact in f32), and dequantises
//! in the epilogue: `y = (acc − zp·Σw_c) · (s_in · s_c) + b_c`, then `max(y, 0)` when a ReLU was
//! fused into it, or the activation that was (`zp·Σw_c` computed once per layer). When the plan
//! fuses a residual add into the layer, the add (and a ReLU after it) follows in the same loop
//! ([`Residual`]).

use super::coded::Coded;
use super::depthwise;
use super::epilogue::{act_in_row, activate, clamp, finish_tile, with_flags, FinishRow, Residual};
use super::kernels::{code_shift, quantize_codes, quantize_to, Code};
use super::layout::{run_layer, ConvShape, LayerShape, PatchRuns};
use crate::artifact::QuantLayer;
use crate::matmul::blocked::Panels;
use crate::matmul::int8::{PairPanels, QuadPanels};
use crate::matmul::isa::Isa;
use crate::model::act_op::Act;
use crate::model::vmath::over_row;
use crate::model::vmath::Lanes;
use crate::quant::{ActType, InputQuant, QParams};
use std::mem::MaybeUninit;

/// A quantised layer ready to run.
pub struct QLayer {
    pub input: InputQuant,
    /// The shifted input zero point (`zero_point + 128` for i8 inputs): the padding code (0 for
    /// a per-token input, whose rows carry their own).
    zp: i32,
    pub shape: LayerShape,
    /// One packed weight per group, for the kernel this layer runs.
    packed: Packed,
    /// Where each output position's patch row reads (convs).
    runs: Option<PatchRuns>,
    /// `zp·Σ_k w_c[k]` per output channel (`zp` the shifted input zero point, fixed per layer):
    /// the zero-point correction, exact in i32; for a per-token input `Σ_k w_c[k]` alone
    /// (times each row's zero point in the epilogue).
    zp_wsum: Vec<i32>,
    /// `s_in · s_c` per output channel (`s_c` for a per-token input: see
    /// `QuantLayer::multipliers`).
    mult: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// A ReLU applied in the epilogue.
    pub relu: bool,
    /// Another activation applied in the epilogue.
    pub act: Option<Act>,
}

impl QLayer {
    /// Prepares `q` as a layer of shape `shape` with its float bias; `None` for a conv with a
    /// per-token input.
    pub fn new(q: &QuantLayer, shape: LayerShape, bias: Option<Vec<f32>>) -> Option<QLayer> {
        let w = &q.weight;
        // 7-bit inputs may take a kernel that is exact on 7-bit codes only.
        if q.input.fixed().is_none() && !matches!(shape, LayerShape::Linear { .. }) {
            return None;
        }
        let isa = Isa::detect_for(q.input.act() == ActType::U7);
        // The codes are the GEMM's rows as they are when every patch row is one pixel whose
        // channels fill a whole row of the kernel's layout (pairs or quads); other convs gather
        // their patches tap by tap, in segments of whole pairs or quads (`layout::run_layer`).
        let group = if isa.quads() { QuadPanels::GROUP } else { PairPanels::GROUP };
        let runs = match shape {
            LayerShape::Conv(g) if !(direct(&g) || g.pointwise() && g.c.is_multiple_of(group)) => Some(PatchRuns::new(&g)),
            _ => None,
        };
        // Each group's weights `[n, k]` in the channels-last patch order, each tap's channels
        // padded to its segment where patches are gathered.
        let groups: Vec<(Vec<i8>, usize, usize)> = match shape {
            LayerShape::Linear { inp, out } => vec![(w.values.clone(), out, inp)],
            LayerShape::Conv(g) => {
                let seg = if runs.is_some() { g.seg(group) } else { g.cg() };
                (0..g.groups).map(|gi| (g.patch_order_in(&w.values, gi, seg), g.o / g.groups, g.kh * g.kw * seg)).collect()
            }
        };
        let packed = match (shape, isa.quads()) {
            (LayerShape::Conv(g), _) if direct(&g) => Packed::Depthwise(depthwise::tap_major(&g, &w.values).into_iter().map(f32::from).collect()),
            (_, true) => Packed::Quads(groups.iter().map(|(w, n, k)| QuadPanels::pack(w, *n, *k, isa)).collect()),
            (_, false) => Packed::Pairs(groups.iter().map(|(w, n, k)| PairPanels::pack(w, *n, *k, isa)).collect()),
        };
        let zp = q.input.fixed().map_or(0, |p| p.zero_point + code_shift(&p));
        let zp_wsum = q.weight_sums().iter().map(|&s| if q.input.fixed().is_some() { zp * s } else { s }).collect();
        Some(QLayer { input: q.input, zp, shape, packed, zp_wsum, mult: q.multipliers(), bias, relu: false, act: None, runs })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.shape.out_channels()
    }

    /// Runs the layer on `codes` from [`QLayer::quantize`] (channels last for a conv; `rows × in`
    /// for a linear) of `n` samples; returns `[rows, out]` f32 (channels last for a conv).
    /// With `residual = (shortcut, relu)`, a residual add (and a ReLU) follows in the output
    /// loop: `max(y + shortcut, 0)` ([`Residual`]; `shortcut` in the output's layout).
    pub fn run(&self, codes: &Codes, n: usize, residual: Option<(&[f32], bool)>) -> Vec<f32> {
        if let (Packed::Depthwise(w), CodeBuf::Bytes(c), LayerShape::Conv(g)) = (&self.packed, &codes.buf, self.shape) {
            // The direct kernel sums in f32 (exact: `depthwise::MAX_EXACT_TAPS`), read by the
            // f32 form of this layer's epilogue.
            let pad = f32::from(self.zp as u8);
            return match residual {
                None => depthwise::run(&g, w, c, pad, n, self),
                Some((shortcut, relu)) => depthwise::run(&g, w, c, pad, n, &Residual { layer: self, shortcut, ldo: self.out_channels(), relu }),
            };
        }
        if let Some(rows) = &codes.rows {
            let layer = PerToken { layer: self, rows };
            return match residual {
                None => self.run_with(codes, n, &layer),
                Some((shortcut, relu)) => self.run_with(codes, n, &Residual { layer: &layer, shortcut, ldo: self.out_channels(), relu }),
            };
        }
        match residual {
            None => self.run_with(codes, n, self),
            Some((shortcut, relu)) => self.run_with(codes, n, &Residual { layer: self, shortcut, ldo: self.out_channels(), relu }),
        }
    }

    /// [`QLayer::run`] writing, instead of its f32 outputs, their codes under `params` (its only
    /// reader's static input parameters: `coded.rs`); `None` when an output was not finite.
    /// The layer's own input is static (`codes` has no per-row parameters).
    pub fn run_coded<T: Code>(&self, codes: &Codes, n: usize, residual: Option<(&[f32], bool)>, params: QParams) -> Option<Vec<T>> {
        assert!(codes.rows.is_none(), "a layer with a per-token input writes f32 outputs");
        match residual {
            None => self.coded_with(codes, n, &Coded::new(self, params)),
            Some((shortcut, relu)) => self.coded_with(codes, n, &Coded::new(&Residual { layer: self, shortcut, ldo: self.out_channels(), relu }, params)),
        }
    }

    fn coded_with<T: Code, F: FinishRow<i32, f32> + FinishRow<f32, f32> + Sync>(&self, codes: &Codes, n: usize, coded: &Coded<F, T>) -> Option<Vec<T>> {
        let out = match (&self.packed, &codes.buf, self.shape) {
            (Packed::Depthwise(w), CodeBuf::Bytes(c), LayerShape::Conv(g)) => depthwise::run(&g, w, c, f32::from(self.zp as u8), n, coded),
            _ => self.run_with(codes, n, coded),
        };
        coded.finite().then_some(out)
    }

    /// The GEMM over `codes` with `finish` writing each tile row's outputs.
    fn run_with<O: Send, F: FinishRow<i32, O> + Sync>(&self, codes: &Codes, n: usize, finish: &F) -> Vec<O> {
        let zp = self.zp;
        let (o, og) = (self.out_channels(), self.out_channels() / self.groups());
        let epilogue = |gi: usize| move |acc: &[i32], stride: usize, first: usize, out: &mut [MaybeUninit<O>]| finish_tile(finish, acc, stride, first, o, gi * og, og, out);
        match (&self.packed, &codes.buf, self.shape) {
            (Packed::Pairs(p), CodeBuf::Wide(c), _) => run_layer(&self.shape, p, self.runs.as_ref(), c, zp as i16, n, epilogue),
            (Packed::Quads(p), CodeBuf::Bytes(c), _) => run_layer(&self.shape, p, self.runs.as_ref(), c, zp as u8, n, epilogue),
            _ => unreachable!("codes come from this layer's `quantize`, in the type its kernel reads"),
        }
    }

    /// The input's shifted codes in the type this layer's kernel reads (u8 for the quad
    /// kernels, i16 for the pair ones), a per-token input's row by row with each row's
    /// parameters; `None` when a value of `x` is not finite.
    pub fn quantize(&self, x: &[f32]) -> Option<Codes> {
        let LayerShape::Linear { inp, .. } = self.shape else { return self.quantize_static(x) };
        let InputQuant::PerToken(act) = self.input else { return self.quantize_static(x) };
        let params: Vec<QParams> = x.chunks(inp).map(|r| QParams::of_row(r, act)).collect();
        let rows = Some(params.iter().map(|p| (p.zero_point + code_shift(p), p.scale)).collect());
        let buf = match self.packed {
            Packed::Pairs(_) => CodeBuf::Wide(quantize_rows::<i16>(x, inp, &params)?),
            Packed::Quads(_) | Packed::Depthwise(_) => CodeBuf::Bytes(quantize_rows::<u8>(x, inp, &params)?),
        };
        Some(Codes { buf, rows })
    }

    fn quantize_static(&self, x: &[f32]) -> Option<Codes> {
        let p = self.input.fixed().expect("QLayer::new took a per-token input for a linear only");
        let buf = match self.packed {
            Packed::Pairs(_) => {
                let (codes, finite) = quantize_codes::<i16>(x, &p);
                finite.then_some(CodeBuf::Wide(codes))?
            }
            Packed::Quads(_) | Packed::Depthwise(_) => {
                let (codes, finite) = quantize_codes::<u8>(x, &p);
                finite.then_some(CodeBuf::Bytes(codes))?
            }
        };
        Some(Codes { buf, rows: None })
    }

    /// Whether this layer reads u8 codes (else i16): layers that read one value share its codes
    /// only when they read the same type.
    pub fn reads_bytes(&self) -> bool {
        matches!(self.packed, Packed::Quads(_) | Packed::Depthwise(_))
    }

    fn groups(&self) -> usize {
        match &self.packed {
            Packed::Pairs(p) => p.len(),
            Packed::Quads(p) => p.len(),
            Packed::Depthwise(_) => self.out_channels(),
        }
    }
}

impl QLayer {
    /// `o[j] = g((a[j] − zp_wsum[c]) · mult[c] (+ bias[c]))` for `j < n`, channel `c = c0 + j`,
    /// `g` the fused ReLU or the in-row activation ([`clamp`]), in vectors of `V` (`vmath::over_row`) with the same operations as one by one.
    ///
    /// # Safety
    /// The CPU has `V`'s features; `a` and `o` are valid for `n` values and `c0 + n` is at most
    /// the layer's output channels.
    #[inline(always)]
    unsafe fn finish_run<V: Lanes, A: Centred>(&self, a: *const A, c0: usize, o: *mut f32, n: usize) {
        /// One vector (or scalar) of the row; the flags are constants, so each of
        /// `finish_run`'s loops holds only its own arithmetic.
        #[inline(always)]
        unsafe fn lanes<V: Lanes, A: Centred, const BIAS: bool, const RELU: bool, const RELU6: bool>(a: *const A, z: *const i32, m: *const f32, b: *const f32, o: *mut f32) {
            // SAFETY: the caller's.
            unsafe {
                let v = A::centred_lanes::<V>(a, z) * V::load(m);
                let v = if BIAS { v + V::load(b) } else { v };
                clamp(v, RELU, RELU6).store(o);
            }
        }
        #[inline(always)]
        unsafe fn run<V: Lanes, A: Centred, const BIAS: bool, const RELU: bool, const RELU6: bool>(a: *const A, z: *const i32, m: *const f32, b: *const f32, o: *mut f32, n: usize) {
            // SAFETY: the caller's bounds and features.
            unsafe {
                over_row!(
                    V,
                    n,
                    |j| lanes::<V, A, BIAS, RELU, RELU6>(a.add(j), z.add(j), m.add(j), b.add(j), o.add(j)),
                    lanes::<V::Half, A, BIAS, RELU, RELU6>(a.add(j), z.add(j), m.add(j), b.add(j), o.add(j)),
                    lanes::<f32, A, BIAS, RELU, RELU6>(a.add(j), z.add(j), m.add(j), b.add(j), o.add(j))
                )
            }
        }
        // The fields are read once, before the loops (`with_flags`).
        // SAFETY: `c0 + n` is within the layer's channels (the caller's).
        let (z, m) = unsafe { (self.zp_wsum.as_ptr().add(c0), self.mult.as_ptr().add(c0)) };
        let b = self.bias.as_ref().map_or(std::ptr::null(), |b| b[c0..].as_ptr());
        // SAFETY: the caller's; `b` is read only with `BIAS`, when the layer has a bias.
        unsafe { with_flags!((self.bias.is_some(), self.relu, act_in_row(self.act)), run::<V, A>(a, z, m, b, o, n)) }
    }
}

impl<A: Centred> FinishRow<A, f32> for QLayer {
    /// `out[j] = (acc[j] − zp·Σw_c) · (s_in · s_c) + b_c` for channel `c = c0 + j`, then the
    /// fused ReLU or the in-row activation.
    #[inline(always)]
    fn row(&self, acc: &[A], _row: usize, c0: usize, out: &mut [MaybeUninit<f32>]) {
        let n = acc.len().min(out.len());
        assert!(c0 + n <= self.mult.len());
        // SAFETY: scalars need no CPU feature; the bounds are checked above.
        unsafe { self.finish_run::<f32, A>(acc.as_ptr(), c0, out.as_mut_ptr() as *mut f32, n) }
    }

    /// [`FinishRow::row`] on every row, in vectors of `V`.
    #[inline(always)]
    unsafe fn rows<V: Lanes>(&self, acc: &[A], stride: usize, _first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<f32>]) {
        assert!(c0 + n <= self.mult.len());
        for (r, o) in out.chunks_mut(ldo).enumerate() {
            let (a, o) = (&acc[r * stride..r * stride + n], &mut o[c0..c0 + n]);
            // SAFETY: the caller's CPU features; `a` and `o` hold `n` values, the channels are
            // checked above.
            unsafe { self.finish_run::<V, A>(a.as_ptr(), c0, o.as_mut_ptr() as *mut f32, n) };
        }
    }

    fn has_act(&self) -> bool {
        self.act.is_some() && !act_in_row(self.act)
    }

    #[inline(always)]
    unsafe fn activate<V: Lanes>(&self, out: &mut [MaybeUninit<f32>]) {
        activate::<V>(out, self.act)
    }
}

/// An integer sum as the epilogue takes it: i32 from the GEMMs, or f32 from the direct kernel
/// (whole numbers below 2²⁴).
pub trait Centred: Copy {
    /// `self − z` as f32.
    fn centred(self, z: i32) -> f32;
    /// `centred` on `V::N` consecutive sums `a` and corrections `z`.
    ///
    /// # Safety
    /// The CPU has `V`'s features; `a` and `z` are valid for `V::N` values.
    unsafe fn centred_lanes<V: Lanes>(a: *const Self, z: *const i32) -> V;
}

impl Centred for i32 {
    #[inline(always)]
    fn centred(self, z: i32) -> f32 {
        (self - z) as f32
    }
    #[inline(always)]
    unsafe fn centred_lanes<V: Lanes>(a: *const i32, z: *const i32) -> V {
        // SAFETY: the caller's.
        unsafe { V::load_i32_diff(a, z) }
    }
}

impl Centred for f32 {
    /// The same value as the i32 form: `z` (`zp·Σw_c` of a conv of at most
    /// `depthwise::MAX_EXACT_TAPS` taps) is below 2²⁴ and exact, so the f32 difference rounds the
    /// exact one as the i32-to-f32 conversion does.
    #[inline(always)]
    fn centred(self, z: i32) -> f32 {
        self - z as f32
    }
    #[inline(always)]
    unsafe fn centred_lanes<V: Lanes>(a: *const f32, z: *const i32) -> V {
        // SAFETY: the caller's.
        unsafe { V::load(a) - V::load_i32(z) }
    }
}

/// A per-token layer's epilogue: row `r` with its own shifted zero point `z_r` and scale `s_r`.
struct PerToken<'a> {
    layer: &'a QLayer,
    rows: &'a [(i32, f32)],
}

impl FinishRow<i32, f32> for PerToken<'_> {
    /// `out[j] = (acc[j] − z_r·Σw_c) · (s_r · s_c) + b_c` for channel `c = c0 + j`, then the
    /// fused ReLU (the activation follows in `activate`).
    #[inline(always)]
    fn row(&self, acc: &[i32], row: usize, c0: usize, out: &mut [MaybeUninit<f32>]) {
        let l = self.layer;
        let (z, s) = self.rows[row];
        let cs = c0..c0 + acc.len();
        let it = out.iter_mut().zip(acc).zip(&l.zp_wsum[cs.clone()]).zip(&l.mult[cs.clone()]);
        match &l.bias {
            Some(b) => {
                for ((((o, &a), &w), &m), &b) in it.zip(&b[cs]) {
                    o.write((a - z * w) as f32 * (s * m) + b);
                }
            }
            None => {
                for (((o, &a), &w), &m) in it {
                    o.write((a - z * w) as f32 * (s * m));
                }
            }
        }
        if l.relu {
            // SAFETY: the loop above wrote every entry.
            let y = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
            super::epilogue::add_relu(y, None, true);
        }
    }

    fn has_act(&self) -> bool {
        self.layer.act.is_some()
    }

    #[inline(always)]
    unsafe fn activate<V: Lanes>(&self, out: &mut [MaybeUninit<f32>]) {
        activate::<V>(out, self.layer.act)
    }
}

/// The shifted codes of each row of `width` values of `x` under its own parameters
/// (`params[r]`); `None` when a value is not finite.
fn quantize_rows<T: super::kernels::Code>(x: &[f32], width: usize, params: &[QParams]) -> Option<Vec<T>> {
    let mut codes = Vec::with_capacity(x.len());
    let out = &mut codes.spare_capacity_mut()[..x.len()];
    let mut finite = true;
    for ((row, o), p) in x.chunks(width).zip(out.chunks_mut(width)).zip(params) {
        finite &= quantize_to(row, p, o);
    }
    // SAFETY: `quantize_to` wrote every entry of every row.
    unsafe { codes.set_len(x.len()) };
    finite.then_some(codes)
}

/// A layer's packed weights, one per group, for the kind of kernel it runs; a depthwise conv's
/// (one input channel per group) weights tap-major for its direct kernel (`depthwise.rs`, which
/// reads u8 codes).
enum Packed {
    Pairs(Vec<PairPanels>),
    Quads(Vec<QuadPanels>),
    /// The i8 weights as f32: the direct kernel's sums are exact in f32.
    Depthwise(Vec<f32>),
}

/// Shifted activation codes in the type a layer's kernel reads.
pub struct Codes {
    pub buf: CodeBuf,
    /// A per-token input's `(shifted zero point, scale)` of each row.
    pub rows: Option<Vec<(i32, f32)>>,
}

/// The codes themselves.
pub enum CodeBuf {
    Wide(Vec<i16>),
    Bytes(Vec<u8>),
}

/// Whether an integer conv runs the direct kernel: one input channel per group, and few enough
/// taps for exact f32 sums (a longer kernel takes the GEMM per group).
fn direct(g: &ConvShape) -> bool {
    depthwise::one_input_per_group(g) && g.kh * g.kw <= depthwise::MAX_EXACT_TAPS
}
