//! Execution of an INT8 artifact with integer arithmetic: each quantised layer quantises its
//! input with the stored static parameters, accumulates u8 × i8 products in i32, and
//! dequantises with `y = (acc − zp·Σw_c) · (s_in · s_c) + b_c`. Ops without an integer kernel run
//! in f32 between these explicit dequantise/quantise steps. Two executors compute exactly that:
//! the compiled runtime (`plan.rs`, the fast path) and the float executor with a hook replacing
//! each quantised layer by plain loops (this file, the oracle). `Simulate` runs the fake-quant
//! float model instead, so the two can be compared. Uses `artifact`, `model`, `quant`.

pub mod attention;
pub mod coded;
pub mod depthwise;
pub mod epilogue;
pub mod flayer;
pub mod kernels;
pub mod layout;
pub mod plan;
pub mod qlayer;
pub mod recurrent;
pub mod winograd;

use crate::artifact::{Int8Model, QuantLayer};
use crate::error::{Result, WickError};
use crate::model::arch::{Node, Op, RnnCfg};
use crate::model::forward::{Hook, Mode, Run};
use crate::model::im2col::Geom;
use crate::model::recurrent::Cell;
use crate::quant::fake::fake_quant_act;
use crate::quant::InputQuant;
use candle_core::Tensor;
use kernels::{gemm_u8i8, im2col, quantize_u8, Kernel};
use std::collections::BTreeMap;

/// How an INT8 model is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// Integer arithmetic with the given GEMM kernel.
    Integer(Kernel),
    /// The fake-quant float simulation.
    Simulate,
}

/// Integer data of one unit prepared for the reference execution.
#[derive(Clone)]
struct Prepared {
    q: QuantLayer,
    /// `Σ_k w_c[k]` per output channel, for the zero-point correction.
    wsum: Vec<i32>,
    /// `s_in · s_c` per output channel.
    mult: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// The reference integer-execution hook over an INT8 model: the float executor with each
/// quantised layer replaced by plain integer loops.
pub struct IntegerHook<'a> {
    model: &'a Int8Model,
    layers: BTreeMap<&'a str, Prepared>,
}

impl<'a> IntegerHook<'a> {
    /// Prepares every quantised layer of `m`.
    pub fn new(m: &'a Int8Model) -> Result<IntegerHook<'a>> {
        let mut layers = BTreeMap::new();
        for (name, q) in &m.layers {
            layers.insert(name.as_str(), Prepared { q: q.clone(), wsum: q.weight_sums(), mult: q.multipliers(), bias: m.bias(name)? });
        }
        Ok(IntegerHook { model: m, layers })
    }
}

impl Prepared {
    /// A linear layer on rows of `in` values of `x`: quantised with [`quantize_u8`] (a
    /// per-token input row by row, each row with its own parameters), the scalar GEMM, then the
    /// epilogue of every output.
    fn linear(&self, x: &[f32]) -> Vec<f32> {
        let (out, inp) = (self.q.weight.shape[0], self.q.weight.shape[1]);
        let w = &self.q.weight.values;
        match self.q.input {
            InputQuant::Static(p) => {
                let (codes, zp) = quantize_u8(x, &p);
                let acc = gemm_u8i8(&codes, w, codes.len() / inp, out, inp);
                acc.chunks(out).flat_map(|row| row.iter().enumerate().map(|(c, &a)| self.epilogue(a, zp, c, None))).collect()
            }
            InputQuant::PerToken(act) => x
                .chunks(inp)
                .flat_map(|row| {
                    let p = crate::quant::QParams::of_row(row, act);
                    let (codes, zp) = quantize_u8(row, &p);
                    let acc = gemm_u8i8(&codes, w, 1, out, inp);
                    acc.into_iter().enumerate().map(move |(c, a)| self.epilogue(a, zp, c, Some(p.scale)))
                })
                .collect(),
        }
    }

    /// `y = (acc − zp·Σw_c) · m_c + b_c` with `m_c = mult_c`, or `s_row · mult_c` for a
    /// per-token input row of scale `s_row`.
    #[inline]
    fn epilogue(&self, acc: i32, zp: i32, c: usize, row_scale: Option<f32>) -> f32 {
        let m = match row_scale {
            Some(s) => s * self.mult[c],
            None => self.mult[c],
        };
        let v = (acc - zp * self.wsum[c]) as f32 * m;
        match &self.bias {
            Some(b) => v + b[c],
            None => v,
        }
    }
}

impl recurrent::Project for Prepared {
    /// The linear case of [`IntegerHook::layer`] on rows of `in` values: `x` quantised with
    /// [`quantize_u8`], the scalar GEMM, the epilogue.
    fn project(&self, x: &[f32], _n: usize) -> Option<Vec<f32>> {
        if x.iter().any(|v| !v.is_finite()) {
            return None;
        }
        Some(self.linear(x))
    }

    /// `project` then `+ add[i]` on each output.
    fn project_add(&self, x: &[f32], n: usize, add: &[f32]) -> Option<Vec<f32>> {
        let mut y = self.project(x, n)?;
        y.iter_mut().zip(add).for_each(|(v, a)| *v += a);
        Some(y)
    }
}

impl IntegerHook<'_> {
    /// A GRU or LSTM with its quantised matrices on the scalar integer GEMM, the rest in f32
    /// (the gates in the compiled runtime's loops: see `recurrent`).
    fn recurrent(&self, node: &Node, c: &RnnCfg, x: &Tensor) -> Result<Tensor> {
        let cell = if matches!(node.op, Op::Gru(_)) { Cell::Gru } else { Cell::Lstm };
        let in_shape = &x.dims()[1..];
        let quantised = |unit: &str, _: &Op, _: &[usize]| -> Result<Option<recurrent::Projection>> { Ok(self.layers.get(unit).map(|p| Box::new(p.clone()) as recurrent::Projection)) };
        let layer = recurrent::RecurrentLayer::new(&self.model.model, node, c, cell, in_shape, quantised)?.ok_or_else(|| WickError::node(&node.name, "input is not a sequence [N, T, F]"))?;
        let n = x.dim(0)?;
        let y = layer.run(&x.flatten_all()?.to_vec1()?, n)?;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank 3") = y.len() / (n * in_shape[0]);
        Ok(Tensor::from_vec(y, dims, x.device())?)
    }
}

impl Hook for IntegerHook<'_> {
    fn fused_activations(&self) -> bool {
        true
    }

    fn layer(&self, node: &Node, x: &Tensor) -> Result<Option<Tensor>> {
        if let Op::Gru(c) | Op::Lstm(c) = &node.op {
            let quantised = crate::model::qunit::node_units(node).iter().any(|u| self.layers.contains_key(u.key.as_str()));
            return if quantised { Ok(Some(self.recurrent(node, c, x)?)) } else { Ok(None) };
        }
        let Some(p) = self.layers.get(node.name.as_str()) else { return Ok(None) };
        let dims = x.dims().to_vec();
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        if let Some(v) = xs.iter().find(|v| !v.is_finite()) {
            return Err(WickError::node(&node.name, format!("input holds a non-finite value ({v})")));
        }
        let (y, shape) = match &node.op {
            Op::Linear(c) => {
                let y = p.linear(&xs);
                let mut s = dims.clone();
                *s.last_mut().unwrap() = c.out_features;
                (y, s)
            }
            Op::Conv2d(_) | Op::Conv1d(_) if p.q.input.fixed().is_none() => {
                return Err(WickError::node(&node.name, "is a convolution with a per-token input quantisation; wick quantises conv inputs per tensor"))
            }
            Op::Conv2d(c) => {
                let (codes, zp) = quantize_u8(&xs, &p.q.input.fixed().expect("static"));
                let g = ConvGeom::new(&dims, c.out_channels, c.kernel_size.hw(), c.stride.hw(), c.padding.hw(), c.dilation.hw(), c.groups);
                (self.conv(p, &codes, zp, &g), vec![dims[0], c.out_channels, g.ho, g.wo])
            }
            Op::Conv1d(c) => {
                let (codes, zp) = quantize_u8(&xs, &p.q.input.fixed().expect("static"));
                let d2 = vec![dims[0], dims[1], 1, dims[2]];
                let g = ConvGeom::new(&d2, c.out_channels, (1, c.kernel_size), (1, c.stride), (0, c.padding), (1, c.dilation), c.groups);
                (self.conv(p, &codes, zp, &g), vec![dims[0], c.out_channels, g.wo])
            }
            _ => return Ok(None),
        };
        Ok(Some(Tensor::from_vec(y, shape, x.device())?))
    }
}

/// Geometry of a 2-d convolution over `[N, C, H, W]`.
struct ConvGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: (usize, usize),
    /// `(along h, along w)`, as are `pad` and `dil`.
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    groups: usize,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    fn new(d: &[usize], o: usize, k: (usize, usize), stride: (usize, usize), pad: (usize, usize), dil: (usize, usize), groups: usize) -> ConvGeom {
        let g = Geom::new(d[0], d[1], (d[2], d[3]), k, stride, pad, dil);
        ConvGeom { n: d[0], c: d[1], h: d[2], w: d[3], o, k, stride, pad, dil, groups, ho: g.ho, wo: g.wo }
    }
}

impl IntegerHook<'_> {
    fn conv(&self, p: &Prepared, codes: &[u8], zp: i32, g: &ConvGeom) -> Vec<f32> {
        let (cg, og) = (g.c / g.groups, g.o / g.groups);
        let kg = cg * g.k.0 * g.k.1;
        let positions = g.ho * g.wo;
        let plane = g.c * g.h * g.w;
        let mut y = vec![0f32; g.n * g.o * positions];
        for gi in 0..g.groups {
            // Patches of every sample stacked: one GEMM of [N·positions, kg] × [og, kg]ᵀ.
            let geom = Geom::new(1, cg, (g.h, g.w), g.k, g.stride, g.pad, g.dil);
            let unfold = |s: usize| im2col(&codes[s * plane + gi * cg * g.h * g.w..s * plane + (gi + 1) * cg * g.h * g.w], &geom, zp as u8);
            let cols: Vec<u8> = (0..g.n).map(unfold).collect::<Vec<_>>().concat();
            let wg = &p.q.weight.values[gi * og * kg..(gi + 1) * og * kg];
            let acc = gemm_u8i8(&cols, wg, g.n * positions, og, kg);
            for s in 0..g.n {
                for o in 0..og {
                    let c = gi * og + o;
                    let dst = &mut y[(s * g.o + c) * positions..(s * g.o + c + 1) * positions];
                    for (pos, d) in dst.iter_mut().enumerate() {
                        *d = p.epilogue(acc[(s * positions + pos) * og + o], zp, c, None);
                    }
                }
            }
        }
        y
    }
}

/// The fake-quant simulation hook: each quantised layer's input is fake-quantised with its
/// stored parameters (the weights are already dequantised in the model).
pub struct SimulateHook<'a> {
    layers: &'a BTreeMap<String, QuantLayer>,
}

impl Hook for SimulateHook<'_> {
    fn input(&self, unit: &str, x: Tensor) -> Result<Tensor> {
        match self.layers.get(unit) {
            Some(q) => match q.input {
                InputQuant::Static(p) => fake_quant_act(&x, &p),
                InputQuant::PerToken(act) => crate::quant::fake::fake_quant_per_token(&x, act),
            },
            None => Ok(x),
        }
    }
}

/// A ready executor of an INT8 model.
pub struct Executor<'a> {
    model: &'a Int8Model,
    how: How<'a>,
}

enum How<'a> {
    /// The float executor with a hook replacing each quantised layer (the reference kernel and
    /// the simulation).
    Hooked(Box<dyn Hook + Sync + 'a>),
    /// The compiled runtime (the fast kernel).
    Compiled(Box<plan::Plan>),
}

impl<'a> Executor<'a> {
    /// Prepares `m` for execution with `exec`.
    pub fn new(m: &'a Int8Model, exec: Exec) -> Result<Executor<'a>> {
        let how = match exec {
            Exec::Integer(Kernel::Fast) => How::Compiled(Box::new(plan::Plan::int8(m)?)),
            Exec::Integer(Kernel::Reference) => How::Hooked(Box::new(IntegerHook::new(m)?)),
            Exec::Simulate => How::Hooked(Box::new(SimulateHook { layers: &m.layers })),
        };
        Ok(Executor { model: m, how })
    }

    /// Logits for a batch.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        match &self.how {
            How::Hooked(hook) => {
                let run = Run { mode: Mode::Eval, taps: &[], hook: Some(hook.as_ref()), rng: None };
                // A token model takes any shorter sequence (as its compiled plan does).
                let shorter = x.rank() == 2 && self.model.model.input_shape().len() == 1 && x.dim(1)? < self.model.model.input_shape()[0];
                match shorter {
                    true => Ok(self.model.model.with_input_shape(&x.dims()[1..])?.run(x, &run)?.0),
                    false => Ok(self.model.model.run(x, &run)?.0),
                }
            }
            How::Compiled(p) => p.predict(x),
        }
    }
}

/// The integer GEMM kernels `m`'s layers run on this CPU, by name (each distinct one once).
pub fn kernel_names(m: &Int8Model) -> String {
    let mut names: Vec<&str> = m.layers.values().map(|q| crate::matmul::isa::Isa::detect_for(q.input.act() == crate::quant::ActType::U7).name()).collect();
    names.sort();
    names.dedup();
    names.join(", ")
}
