//! The compiled runtime: a model turned once into a list of steps over plain buffers, without
//! candle in the hot path, for an INT8 artifact (`Plan::int8`) and for a float model
//! (`Plan::float`). Activations flow channels last (`[N, H, W, C]`), so a conv's patch row is a
//! run of whole pixels and its GEMM output is already the next layer's layout; a ReLU that is
//! the only reader of a weight layer runs inside that layer's epilogue, and so does a two-input
//! add that is the only reader of a weight layer whose other input is already computed (a
//! residual shortcut: `max(y + shortcut, 0)` with the ReLU after it). Every op of the
//! architecture format has a step but the text-encoder ops other than attention (embeddings,
//! masked mean, L2 normalisation); those, and a layer the packed kernels cannot lay out, run
//! through the float executor on a logical-layout tensor, so every model runs.
//!
//! - INT8: each quantised layer's input is quantised once per distinct set of parameters (two
//!   layers reading one value with the same parameters share the codes), in one pass over the
//!   value, or, where that layer is the value's only reader, by the layer computing the value,
//!   tile by tile in its epilogue (`runtime::coded`). The arithmetic is the hook executor's
//!   (`runtime::IntegerHook`): the same codes, the same exact integer sums, the same f32
//!   epilogue; only float reductions outside the layers (global average pooling) may sum in
//!   another order.
//! - Float: every BatchNorm that only a conv or linear feeds is folded into it at compile time
//!   (`model::fold`), and every conv and linear runs the packed f32 GEMM. Outputs equal the
//!   candle executor's up to float rounding (sums in another order, folded weights).

mod elementwise;
mod normalize;
mod run;

use super::flayer::FloatLayer;
use super::layout::LayerShape;
use super::qlayer::QLayer;
use super::recurrent::{Projection, RecurrentLayer};
use crate::artifact::Int8Model;
use crate::error::{Result, WickError};
use crate::model::act_op::Act;
use crate::model::arch::{AttentionCfg, Node, Op};
use crate::model::forward::is_weight_layer;
use crate::model::ops::pool_geom;
use crate::model::pool_op::PoolGeom;
use crate::model::Model;
use std::collections::BTreeMap;

/// Samples per part below which a batch is not cut across threads (see [`Plan::predict`]).
const SPLIT_MIN_SAMPLES: usize = 8;

/// What a `Kind::Reduce` step computes along its axis.
#[derive(Clone, Copy)]
enum Reduction {
    Mean,
    Max,
    Sum,
}

/// What one step computes.
enum Kind {
    Quant(Box<QLayer>),
    Dense(Box<FloatLayer>),
    Relu,
    /// Element-wise sum of the inputs, then `max(·, 0)` when a ReLU was fused into it.
    Add {
        relu: bool,
    },
    GlobalAvgPool,
    /// An element-wise activation, in place in either layout.
    Act(Act),
    /// Max or average pooling over each channel's plane, in the layout its input has (`h`, `w`
    /// set).
    Pool(PoolGeom),
    /// A flatten or a reshape: the data in logical order under the output's dims; with
    /// `stored`, a flatten `[N, C, spatial…] → [N, F]` in the order a channels-last input is
    /// stored (`[N, spatial…, C]`) for the one linear that reads it, whose weight columns are
    /// permuted to that order ([`storage_order_columns`]): no transpose.
    Flatten {
        stored: bool,
    },
    /// Element-wise product of two inputs: of one shape (`gate` None), or input `gate` holding
    /// one value per sample and channel (`[N, C, 1, …]`, a squeeze-and-excitation gate) that
    /// scales the other's channels, in the other's layout.
    Mul {
        gate: Option<usize>,
    },
    /// Inputs joined along full-tensor dim `dim` (≥ 1): channels last when every input is and
    /// `dim` is the channel axis, in logical order otherwise.
    Concat {
        dim: usize,
    },
    Identity,
    /// A GRU or LSTM, each matrix on the f32 or the integer GEMM (`runtime::recurrent`).
    Recurrent(Box<RecurrentLayer>),
    /// One index along full-tensor dim `dim` (≥ 1), removed; in logical order.
    Select {
        dim: usize,
        index: usize,
    },
    /// `length` positions from `start` along full-tensor dim `dim` (≥ 1): channels last when
    /// the input is and `dim` is the channel axis, in logical order otherwise.
    Narrow {
        dim: usize,
        start: usize,
        length: usize,
    },
    /// Full-tensor axes swapped pair by pair, in order: one transpose node, or a run of them
    /// each read only by the next (one ONNX `Transpose` of several axes, such as
    /// `permute(0, 2, 3, 1)`), done as one step (`run::permute`).
    Transpose {
        swaps: Vec<(usize, usize)>,
    },
    /// Output channel `j` is input channel `perm[j]`, every position kept, in the input's
    /// layout: a reshape, transpose and reshape back that only move whole channels (a
    /// ShuffleNet's channel shuffle), done as one step (`run::permute_channels`).
    PermuteChannels {
        perm: Vec<usize>,
    },
    /// `value` added before and after each full-tensor axis (`pads[0]`, the batch's, is none),
    /// in the layout the input has unless the channels are padded.
    Pad {
        pads: Vec<(usize, usize)>,
        value: f32,
    },
    /// The mean, maximum or sum along full-tensor axis `dim`; in logical order (a kept unit dim
    /// changes no data).
    Reduce {
        dim: usize,
        how: Reduction,
    },
    /// LayerNorm over each row of `inner` values (logical layout), `(γ, β)` when affine.
    LayerNorm {
        inner: usize,
        eps: f64,
        affine: Option<(Vec<f32>, Vec<f32>)>,
    },
    /// Softmax along full-tensor dim `dim` (≥ 1), in logical order; with `log`, log-softmax.
    Softmax {
        log: bool,
        dim: usize,
    },
    /// Multi-head attention over `q, k, v [N, L, D]`, masked by the token ids when the node has
    /// a fourth input, plus a bias `[1, H, L, L]` when it has a fifth (`runtime::attention`).
    Attention(AttentionCfg),
    /// `x [N, L, D]` plus table rows: row `t` at position `t` (`position_embedding`, the
    /// table from its offset on), or `rows`' one row at every position (`embedding_row`).
    AddRows {
        rows: Vec<f32>,
        per_position: bool,
    },
    /// `[rows; x]` along the positions of `x [N, L, D]` (`prepend_rows`): `[N, R + L, D]`.
    PrependRows {
        rows: Vec<f32>,
    },
    /// Rows of `table` (`[V, D]` row-major) at the token ids `[N, L]`: `[N, L, D]`.
    Embedding {
        table: Vec<f32>,
        dim: usize,
    },
    /// The relative position bias `[1, H, L, L]` of the token ids' length `L`, one for every
    /// sample (`runtime::attention::relative_position_bias`).
    RelativeBias {
        weight: Vec<f32>,
        cfg: crate::model::arch::RelativePositionBiasCfg,
    },
    /// A BatchNorm no conv or linear absorbed, or a `channel_affine`: `x·scale_c + shift_c` on
    /// channel axis 1, or with `last` on the last axis (in logical order).
    ChannelAffine {
        scale: Vec<f32>,
        shift: Vec<f32>,
        last: bool,
    },
    /// GroupNorm: LayerNorm of each sample's groups of `inner` values (channels first), then
    /// the per-channel affine map when it has one.
    GroupNorm {
        inner: usize,
        eps: f64,
        affine: Option<(Vec<f32>, Vec<f32>)>,
    },
    /// PReLU: `x` where `x > 0`, else `x·slope_c` on channel axis 1 (one slope for all when
    /// it holds one).
    Prelu {
        slope: Vec<f32>,
    },
    /// Any other op: the float executor.
    Float,
}

impl Kind {
    /// The flag of a step that can apply a following ReLU itself: a weight layer's epilogue, an
    /// add's summing loop.
    fn fused_relu(&mut self) -> Option<&mut bool> {
        match self {
            Kind::Quant(q) if q.act.is_none() => Some(&mut q.relu),
            Kind::Dense(f) if f.act.is_none() => Some(&mut f.relu),
            Kind::Add { relu } => Some(relu),
            _ => None,
        }
    }

    /// The activation slot of a weight layer whose epilogue can apply a following activation
    /// (none fused yet, ReLU included, so that each output goes through one function).
    fn fused_act(&mut self) -> Option<&mut Option<Act>> {
        match self {
            Kind::Quant(q) if !q.relu && q.act.is_none() => Some(&mut q.act),
            Kind::Dense(f) if !f.relu && f.act.is_none() => Some(&mut f.act),
            _ => None,
        }
    }
}

struct Step {
    node: usize,
    kind: Kind,
    inputs: Vec<usize>,
    output: usize,
    /// For a weight layer: the other input of a two-input add fused into its output loop (the
    /// add read this layer's output only), and whether a ReLU follows the add.
    residual: Option<(usize, bool)>,
    /// For an integer layer whose only reader is an integer layer with a static input: that
    /// reader's input, whose codes this layer writes instead of its f32 output.
    codes_for: Option<Reader>,
}

/// The integer layer that reads a step's output (see `Step::codes_for`).
struct Reader {
    node: usize,
    input: crate::quant::InputQuant,
    /// It reads u8 codes (else i16).
    bytes: bool,
}

/// A compiled model.
pub struct Plan {
    /// The float model whose graph the steps follow (BatchNorm folded for a float plan); its
    /// parameters serve the steps the float executor runs.
    model: Model,
    steps: Vec<Step>,
    slots: usize,
    output: usize,
    /// Per slot, the index of the last step that reads it (freed after it).
    last_use: Vec<usize>,
    /// The compiled model's `audit::fingerprint` (debug builds; 0 in release builds).
    fingerprint: u64,
    /// Whether the model reads token ids and every step works on any sequence length (a text
    /// encoder: linears over rows, LayerNorm, activations, adds and the text ops), so that a
    /// batch of shorter sequences runs without compiling again.
    length_free: bool,
    /// The most samples one pass over the steps takes (`chunk_samples`).
    chunk_samples: usize,
    /// The pads folded into the conv that reads each, as `(pad node, conv node)`.
    folded_pads: Vec<(usize, usize)>,
}

/// A value: f32 data with its logical dims (with the batch) and its physical layout.
struct Value {
    data: Vec<f32>,
    dims: Vec<usize>,
    /// Stored as `[N, spatial…, C]` instead of `[N, C, spatial…]` (rank ≥ 3 only).
    channels_last: bool,
}

impl Plan {
    /// Compiles INT8 model `m`: its quantised layers run the integer GEMM, its float layers the
    /// f32 one.
    pub fn int8(m: &Int8Model) -> Result<Plan> {
        let fingerprint = if cfg!(debug_assertions) { crate::audit::fingerprint_int8(m) } else { 0 };
        crate::audit::record(|| crate::audit::Event::Compiled { model: fingerprint, int8: true });
        Plan::compile(m.model.deep_clone()?, fingerprint, Some(m))
    }

    /// Compiles float model `m` for inference (eval mode): BatchNorm folded, every conv and
    /// linear on the packed f32 GEMM.
    pub fn float(m: &Model) -> Result<Plan> {
        let fingerprint = if cfg!(debug_assertions) { crate::audit::fingerprint(m) } else { 0 };
        crate::audit::record(|| crate::audit::Event::Compiled { model: fingerprint, int8: false });
        let (folded, _) = crate::model::fold::fold_batchnorm(m)?;
        Plan::compile(folded, fingerprint, None)
    }

    /// The nodes that run through the candle executor (ops without a compiled step).
    pub fn candle_steps(&self) -> Vec<&str> {
        self.steps.iter().filter(|s| matches!(s.kind, Kind::Float)).map(|s| self.model.arch.nodes[s.node].name.as_str()).collect()
    }

    /// Compiles the steps of `model`, whose units in `int8` (when given) run the integer GEMM.
    fn compile(model: Model, fingerprint: u64, int8: Option<&Int8Model>) -> Result<Plan> {
        let arch = &model.arch;
        let mut slot_of: BTreeMap<&str, usize> = BTreeMap::new();
        slot_of.insert(arch.input.name.as_str(), 0);
        let mut readers: BTreeMap<&str, usize> = BTreeMap::new();
        for node in &arch.nodes {
            for i in &node.inputs {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
        let out_name = arch.output_name();
        // Zero pads of spatial dims folded into the one conv that reads each: per conv node, the
        // pad node and the conv's shape with the pad folded in.
        let mut folded: BTreeMap<usize, (usize, LayerShape)> = BTreeMap::new();
        let mut steps: Vec<Step> = vec![];
        let mut slots = 1;
        for &ni in &model.graph.order {
            let node = &arch.nodes[ni];
            let inputs: Vec<usize> = node.inputs.iter().map(|i| slot_of[i.as_str()]).collect();
            let (act, relu) = (Act::of(&node.op), matches!(node.op, Op::Relu(_)));
            // An activation whose input is the previous step's output, read by nothing else,
            // joins that step: a ReLU a weight layer's epilogue or an add's loop, another
            // activation a weight layer's epilogue (each output row while it is in cache).
            if let Some(last) = steps.last_mut().filter(|_| relu || act.is_some()) {
                let src = node.inputs[0].as_str();
                let single = readers.get(src) == Some(&1) && src != out_name && arch.nodes[last.node].name == src;
                let fused = match (single, act) {
                    (false, _) => false,
                    (true, Some(a)) => match last.kind.fused_act() {
                        Some(slot) => {
                            *slot = Some(a);
                            true
                        }
                        None => false,
                    },
                    (true, None) => match last.kind.fused_relu() {
                        Some(r) if !*r => {
                            *r = true;
                            true
                        }
                        _ => false,
                    },
                };
                if fused {
                    slot_of.insert(node.name.as_str(), last.output);
                    continue;
                }
            }
            // A transpose of the previous step's transpose, read by nothing else, joins it: the
            // run is one permutation, which a channels-last value may need no copy for.
            if let (Op::Transpose(c), Some(last)) = (&node.op, steps.last_mut()) {
                let src = node.inputs[0].as_str();
                let rank = model.graph.shapes[src].len();
                let single = readers.get(src) == Some(&1) && src != out_name && arch.nodes[last.node].name == src;
                if let (true, Kind::Transpose { swaps }, Ok(a), Ok(b)) = (single, &mut last.kind, crate::model::graph::sample_dim(c.dim0, rank), crate::model::graph::sample_dim(c.dim1, rank)) {
                    swaps.push((a + 1, b + 1));
                    slot_of.insert(node.name.as_str(), last.output);
                    continue;
                }
            }
            // A reshape back to the shape that a reshape-and-transpose run started from, where
            // the run only moved whole channels, replaces the run by one permutation of them.
            if let Some(perm) = channel_permutation(&model, node, &steps, &readers) {
                let run = steps.len() - 2;
                let source = steps[run].inputs[0];
                steps.truncate(run);
                steps.push(Step { node: ni, kind: Kind::PermuteChannels { perm }, inputs: vec![source], output: slots, residual: None, codes_for: None });
                slot_of.insert(node.name.as_str(), slots);
                slots += 1;
                continue;
            }
            // A pad that only a conv reads becomes that conv's padding taps: no copy of the input.
            if let Some((conv, shape)) = foldable_pad(&model, node, &readers) {
                slot_of.insert(node.name.as_str(), slot_of[node.inputs[0].as_str()]);
                folded.insert(conv, (ni, shape));
                continue;
            }
            // The full-tensor axis (batch first) of sample dim `d` of the node's first input.
            let axis = |d: i64| crate::model::graph::sample_dim(d, model.graph.shapes[node.inputs[0].as_str()].len()).map(|d| d + 1).map_err(|m| WickError::node(&node.name, m));
            let kind = match (&node.op, act, pool_geom(&node.op)) {
                (op, ..) if is_weight_layer(op) => {
                    let shape = match folded.get(&ni) {
                        Some(&(_, shape)) => Some(shape),
                        None => LayerShape::of(op, &model.graph.shapes[node.inputs[0].as_str()]),
                    };
                    // Only a layer the kernels lay out takes permuted columns (the float
                    // executor reads a value in logical order).
                    let columns = shape.and_then(|_| storage_order_columns(&model, node, &steps, &readers));
                    if let Some((flatten, _)) = &columns {
                        steps[*flatten].kind = Kind::Flatten { stored: true };
                    }
                    weight_layer(&model, node, shape, int8, columns.as_ref().map(|c| c.1.as_slice()))?
                }
                (Op::Relu(_), ..) => Kind::Relu,
                (Op::Add(_), ..) => Kind::Add { relu: false },
                (Op::GlobalAvgPool(_), ..) => Kind::GlobalAvgPool,
                (_, Some(a), _) => Kind::Act(a),
                (_, _, Some(g)) => {
                    let s = &model.graph.shapes[node.inputs[0].as_str()];
                    let (h, w) = if s.len() == 3 { (s[1], s[2]) } else { (1, s[1]) };
                    Kind::Pool(PoolGeom { h, w, ..g })
                }
                (Op::Flatten(_) | Op::Reshape(_), ..) => Kind::Flatten { stored: false },
                (Op::Mul(_), ..) => {
                    let s = |k: usize| &model.graph.shapes[node.inputs[k].as_str()];
                    let per_channel = |k: usize| s(k)[1..].iter().all(|&d| d == 1) && s(k)[0] == s(1 - k)[0] && s(k).len() == s(1 - k).len();
                    match () {
                        _ if s(0) == s(1) => Kind::Mul { gate: None },
                        _ if per_channel(1) => Kind::Mul { gate: Some(1) },
                        _ if per_channel(0) => Kind::Mul { gate: Some(0) },
                        _ => Kind::Float,
                    }
                }
                (Op::Concat(c), ..) => {
                    let rank = model.graph.shapes[node.inputs[0].as_str()].len();
                    Kind::Concat { dim: crate::model::graph::sample_dim(c.dim, rank).map_err(|m| WickError::node(&node.name, m))? + 1 }
                }
                (Op::Dropout(_), ..) => Kind::Identity,
                (Op::Gru(c) | Op::Lstm(c), ..) => {
                    let cell = if matches!(node.op, Op::Gru(_)) { crate::model::recurrent::Cell::Gru } else { crate::model::recurrent::Cell::Lstm };
                    match RecurrentLayer::new(&model, node, c, cell, &model.graph.shapes[node.inputs[0].as_str()], |unit, op, shape| recurrent_unit(int8, unit, op, shape))? {
                        Some(r) => Kind::Recurrent(Box::new(r)),
                        None => Kind::Float,
                    }
                }
                (Op::LayerNorm(c), ..) => {
                    let vec = |s: &str| model.values(&node.param(s));
                    let affine = if c.elementwise_affine { Some((vec("weight")?, vec("bias")?)) } else { None };
                    Kind::LayerNorm { inner: c.normalized_shape.iter().product(), eps: c.eps, affine }
                }
                (Op::Softmax(c) | Op::LogSoftmax(c), ..) => {
                    let rank = model.graph.shapes[node.inputs[0].as_str()].len();
                    let log = matches!(node.op, Op::LogSoftmax(_));
                    Kind::Softmax { dim: crate::model::graph::sample_dim(c.dim, rank).map_err(|m| WickError::node(&node.name, m))? + 1, log }
                }
                (Op::Attention(c), ..) => Kind::Attention(c.clone()),
                (Op::Embedding(c), ..) => Kind::Embedding { table: model.values(&node.param("weight"))?, dim: c.embedding_dim },
                (Op::PositionEmbedding(c), ..) => Kind::AddRows { rows: model.values(&node.param("weight"))?.split_off(c.offset * c.embedding_dim), per_position: true },
                (Op::PrependRows(_), ..) => Kind::PrependRows { rows: model.values(&node.param("weight"))? },
                (Op::EmbeddingRow(c), ..) => Kind::AddRows { rows: model.values(&node.param("weight"))?[c.index * c.embedding_dim..][..c.embedding_dim].to_vec(), per_position: false },
                (Op::RelativePositionBias(c), ..) => Kind::RelativeBias { weight: model.values(&node.param("weight"))?, cfg: c.clone() },
                (Op::BatchNorm1d(c) | Op::BatchNorm2d(c), ..) => {
                    let vec = |s: &str| model.values(&node.param(s));
                    let (mean, var) = (vec("running_mean")?, vec("running_var")?);
                    let (gamma, beta) = if c.affine { (vec("weight")?, vec("bias")?) } else { (vec![1.0; mean.len()], vec![0.0; mean.len()]) };
                    let scale: Vec<f32> = gamma.iter().zip(&var).map(|(&g, &v)| (g as f64 / (v as f64 + c.eps).sqrt()) as f32).collect();
                    let shift = beta.iter().zip(&mean).zip(&scale).map(|((&b, &m), &s)| b - m * s).collect();
                    Kind::ChannelAffine { scale, shift, last: false }
                }
                (Op::ChannelAffine(c), ..) => {
                    let last = c.on_last_axis(model.graph.shapes[node.inputs[0].as_str()].len());
                    Kind::ChannelAffine { scale: model.values(&node.param("weight"))?, shift: model.values(&node.param("bias"))?, last }
                }
                (Op::Prelu(_), ..) => Kind::Prelu { slope: model.values(&node.param("weight"))? },
                (Op::GroupNorm(c), ..) => {
                    let numel: usize = model.graph.shapes[node.inputs[0].as_str()].iter().product();
                    let affine = match c.affine {
                        true => Some((model.values(&node.param("weight"))?, model.values(&node.param("bias"))?)),
                        false => None,
                    };
                    Kind::GroupNorm { inner: numel / c.num_groups, eps: c.eps, affine }
                }
                (Op::Select(c), ..) => {
                    let dim = axis(c.dim)?;
                    let len = model.graph.shapes[node.inputs[0].as_str()][dim - 1];
                    let index = c.position(len).ok_or_else(|| WickError::node(&node.name, format!("index {} is out of range", c.index)))?;
                    Kind::Select { dim, index }
                }
                (Op::Narrow(c), ..) => {
                    let dim = axis(c.dim)?;
                    let len = model.graph.shapes[node.inputs[0].as_str()][dim - 1];
                    let start = c.first(len).map_err(|m| WickError::node(&node.name, m))?;
                    match c.length == len {
                        true => Kind::Identity,
                        false => Kind::Narrow { dim, start, length: c.length },
                    }
                }
                (Op::Transpose(c), ..) => {
                    let (a, b) = (axis(c.dim0)?, axis(c.dim1)?);
                    if a == b {
                        Kind::Identity
                    } else {
                        Kind::Transpose { swaps: vec![(a.min(b), a.max(b))] }
                    }
                }
                (Op::Pad(c), ..) => {
                    let rank = model.graph.shapes[node.inputs[0].as_str()].len();
                    let pads = c.per_dim(rank).map_err(|m| WickError::node(&node.name, m))?;
                    Kind::Pad { pads: std::iter::once((0, 0)).chain(pads).collect(), value: c.value as f32 }
                }
                (Op::Mean(c), ..) => Kind::Reduce { dim: axis(c.dim)?, how: Reduction::Mean },
                (Op::Amax(c), ..) => Kind::Reduce { dim: axis(c.dim)?, how: Reduction::Max },
                (Op::Sum(c), ..) => Kind::Reduce { dim: axis(c.dim)?, how: Reduction::Sum },
                _ => Kind::Float,
            };
            steps.push(Step { node: ni, kind, inputs, output: slots, residual: None, codes_for: None });
            slot_of.insert(node.name.as_str(), slots);
            slots += 1;
        }
        let output = slot_of[out_name];
        fuse_residual_adds(&mut steps, output);
        code_outputs(&mut steps, output);
        let mut last_use = vec![usize::MAX; slots];
        for (si, s) in steps.iter().enumerate() {
            for i in s.reads() {
                last_use[i] = si;
            }
        }
        last_use[output] = usize::MAX;
        // Token models only: a plain vector input keeps its one shape.
        let tokens = arch.nodes.iter().any(|n| matches!(n.op, Op::Embedding(_)) && n.inputs[0] == arch.input.name);
        let length_free = tokens && model.input_shape().len() == 1 && arch.nodes.iter().all(|n| length_free_op(&n.op));
        let chunk_samples = chunk_samples(&model, int8.is_some(), length_free);
        let folded_pads = folded.into_iter().map(|(conv, (pad, _))| (pad, conv)).collect();
        Ok(Plan { model, steps, slots, output, last_use, fingerprint, length_free, chunk_samples, folded_pads })
    }

    /// Sets the most samples one pass over the steps takes (chosen at compile time from the L2
    /// cache, see `chunk_samples`), returning the previous value: to measure chunk sizes
    /// against each other, and to check that chunks change no bit of the logits.
    pub fn set_chunk_samples(&mut self, samples: usize) -> usize {
        std::mem::replace(&mut self.chunk_samples, samples.max(1))
    }

    /// The compiled model's `audit::fingerprint` (0 in release builds).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The weight layers with a residual add fused into their output loop, as
    /// `(layer, node computing the add's other input, ReLU after the add)`; the model input is
    /// named by the architecture's input name (see `Step::residual`).
    pub fn residual_adds(&self) -> Vec<(&str, &str, bool)> {
        let name = |slot: usize| match self.steps.iter().find(|s| s.output == slot) {
            Some(s) => self.model.arch.nodes[s.node].name.as_str(),
            None => self.model.arch.input.name.as_str(),
        };
        let layer = |s: &Step| self.model.arch.nodes[s.node].name.as_str();
        self.steps.iter().filter_map(|s| s.residual.map(|(r, relu)| (layer(s), name(r), relu))).collect()
    }

    /// The nodes whose step permutes whole channels (the last node of each reshape, transpose
    /// and reshape-back run), with the permutation.
    pub fn channel_permutations(&self) -> Vec<(&str, &[usize])> {
        let name = |node: usize| self.model.arch.nodes[node].name.as_str();
        self.steps.iter().filter_map(|s| if let Kind::PermuteChannels { perm } = &s.kind { Some((name(s.node), perm.as_slice())) } else { None }).collect()
    }

    /// The flattens that hand their input to the linear reading them as it is stored, channels
    /// last (see `Kind::Flatten`).
    pub fn stored_order_flattens(&self) -> Vec<&str> {
        self.steps.iter().filter(|s| matches!(s.kind, Kind::Flatten { stored: true })).map(|s| self.model.arch.nodes[s.node].name.as_str()).collect()
    }

    /// The pads that run as padding taps of the conv reading them, as `(pad, conv)`.
    pub fn folded_pads(&self) -> Vec<(&str, &str)> {
        let name = |node: usize| self.model.arch.nodes[node].name.as_str();
        self.folded_pads.iter().map(|&(p, c)| (name(p), name(c))).collect()
    }

    /// The integer layers that write their only reader's input codes instead of f32 outputs,
    /// as `(layer, reader)` (see `Step::codes_for`).
    pub fn coded_outputs(&self) -> Vec<(&str, &str)> {
        let name = |node: usize| self.model.arch.nodes[node].name.as_str();
        self.steps.iter().filter_map(|s| s.codes_for.as_ref().map(|r| (name(s.node), name(r.node)))).collect()
    }
}

/// When `node` is a flatten or reshape of the output of the last step, a transpose, whose input
/// is the step before it, a flatten or reshape (each read only by the next), and `node`'s shape
/// is the shape that reshape read: the permutation of the channels the three make, if they move
/// whole channels only. Found by running the transposes over each value's own index: output
/// channel `j` must hold the `S` positions `perm[j]·S..(perm[j] + 1)·S` in order (`S` values a
/// channel).
fn channel_permutation(model: &Model, node: &Node, steps: &[Step], readers: &BTreeMap<&str, usize>) -> Option<Vec<usize>> {
    let [.., reshape, transpose] = steps else { return None };
    let (Kind::Flatten { stored: false }, Kind::Transpose { swaps }) = (&reshape.kind, &transpose.kind) else { return None };
    let (nodes, shapes) = (&model.arch.nodes, &model.graph.shapes);
    let (first, moved) = (&nodes[reshape.node], &nodes[transpose.node]);
    let single = |n: &Node| readers.get(n.name.as_str()) == Some(&1) && n.name != model.arch.output_name();
    let chained = matches!(node.op, Op::Flatten(_) | Op::Reshape(_)) && node.inputs[0] == moved.name && moved.inputs[0] == first.name && transpose.inputs[0] == reshape.output;
    let shape = &shapes[first.inputs[0].as_str()];
    if !chained || !single(first) || !single(moved) || shape.len() < 2 || &shapes[node.name.as_str()] != shape {
        return None;
    }
    let values: usize = shape.iter().product();
    if values >= 1 << 24 {
        return None;
    }
    // Each value's index, exact in f32 below 2²⁴, through the transposes (batch of one first).
    let mut dims: Vec<usize> = std::iter::once(1).chain(shapes[first.name.as_str()].iter().copied()).collect();
    let mut index: Vec<f32> = (0..values).map(|i| i as f32).collect();
    for &(a, b) in swaps {
        index = elementwise::swap_axes(&index, &dims, a, b);
        dims.swap(a, b);
    }
    let per = values / shape[0];
    let perm: Vec<usize> = index.chunks_exact(per).map(|c| c[0] as usize / per).collect();
    let whole = index.chunks_exact(per).zip(&perm).all(|(c, &p)| c.iter().enumerate().all(|(s, &i)| i as usize == p * per + s));
    whole.then_some(perm)
}

/// The index of the conv reading `node` and that conv's shape with `node` folded in, when `node`
/// is a zero `pad` of a conv's spatial dims (not its channels) read by that conv alone, which
/// can take it as padding taps of its own (`LayerShape::with_pad_folded`).
fn foldable_pad(model: &Model, node: &Node, readers: &BTreeMap<&str, usize>) -> Option<(usize, LayerShape)> {
    let Op::Pad(c) = &node.op else { return None };
    let in_shape = &model.graph.shapes[node.inputs[0].as_str()];
    let pads = c.per_dim(in_shape.len()).ok()?;
    if c.value != 0.0 || pads[0] != (0, 0) || !(2..=3).contains(&in_shape.len()) || readers.get(node.name.as_str()) != Some(&1) || node.name == model.arch.output_name() {
        return None;
    }
    let ri = model.arch.nodes.iter().position(|n| n.inputs.contains(&node.name))?;
    let reader = &model.arch.nodes[ri];
    if !matches!(reader.op, Op::Conv1d(_) | Op::Conv2d(_)) {
        return None;
    }
    let shape = LayerShape::of(&reader.op, &model.graph.shapes[node.name.as_str()])?.with_pad_folded(&pads[1..])?;
    Some((ri, shape))
}

/// Whether `op`'s step computes the same for any sequence length of a rank-1 (token) input:
/// per-row and per-token ops, the text ops that read the length from their input, a join
/// (which takes its widths from the shapes of the length it is given), and a position counted
/// from the start (a `[CLS]` pooling).
fn length_free_op(op: &Op) -> bool {
    op.is_elementwise()
        || matches!(
            op,
            Op::Linear(_)
                | Op::LayerNorm(_)
                | Op::Add(_)
                | Op::Embedding(_)
                | Op::PositionEmbedding(_)
                | Op::EmbeddingRow(_)
                | Op::Attention(_)
                | Op::RelativePositionBias(_)
                | Op::MaskedMean(_)
                | Op::MaskedPool(_)
                | Op::L2Normalize(_)
                | Op::Concat(_)
        )
        || matches!(op, Op::Select(c) if c.index >= 0)
}

/// Unit `unit` of `int8` as a layer of shape `shape` on the integer GEMM, when `int8` quantises
/// it; a linear's weight columns in the order `columns` (column `j` the stored one
/// `columns[j]`) when given.
fn quantised(int8: Option<&Int8Model>, unit: &str, shape: Option<LayerShape>, columns: Option<&[usize]>) -> Result<Option<QLayer>> {
    let Some((m, q)) = int8.and_then(|m| m.layers.get(unit).map(|q| (m, q))) else { return Ok(None) };
    let bias = m.bias(unit)?;
    let reordered;
    let q = match columns {
        Some(c) => {
            let mut r = q.clone();
            r.weight.values = permute_columns(&q.weight.values, c);
            reordered = r;
            &reordered
        }
        None => q,
    };
    shape.and_then(|s| QLayer::new(q, s, bias)).map(Some).ok_or_else(|| WickError::node(unit, "has a shape the integer runtime cannot lay out"))
}

/// Each row of `w` (rows of `columns.len()` values) with its values in the order `columns`:
/// `out[r][j] = w[r][columns[j]]`.
fn permute_columns<T: Copy>(w: &[T], columns: &[usize]) -> Vec<T> {
    w.chunks_exact(columns.len()).flat_map(|row| columns.iter().map(|&c| row[c])).collect()
}

/// For a linear `node` whose input is a flatten of a `[C, spatial…]` value (per sample, `S > 1`
/// positions) that only it reads: that flatten's step and the linear's weight columns in the
/// channels-last storage order, column `s·C + c` being the logical column `c·S + s`. The flatten
/// then hands over its input as it is stored, without the transpose to logical order
/// (an integer layer's sums are the same integers in any order; a float layer's sum in another
/// order, as every compiled GEMM may).
fn storage_order_columns(model: &Model, node: &Node, steps: &[Step], readers: &BTreeMap<&str, usize>) -> Option<(usize, Vec<usize>)> {
    if !matches!(node.op, Op::Linear(_)) {
        return None;
    }
    let src = node.inputs[0].as_str();
    let fi = steps.iter().position(|s| model.arch.nodes[s.node].name == src && matches!(s.kind, Kind::Flatten { .. }))?;
    let flatten = &model.arch.nodes[steps[fi].node];
    let shape = &model.graph.shapes[flatten.inputs[0].as_str()];
    let (c, s) = (*shape.first()?, shape[1..].iter().product::<usize>());
    let single = readers.get(src) == Some(&1) && src != model.arch.output_name();
    if !single || shape.len() < 2 || s < 2 || c < 2 || model.graph.shapes[src].as_slice() != [c * s] {
        return None;
    }
    Some((fi, (0..c * s).map(|j| (j % c) * s + j / c).collect()))
}

/// The most samples one pass over the steps should take: enough that the largest value of a
/// chunk is twice the L2 cache, `⌈2·L2 / largest value per sample⌉`, so that each step reads
/// its input from the caches rather than from memory (a 32×32 MobileNetV2's 64-channel planes
/// take 64 KiB a sample, 4 MiB a batch of 64). Twice, not once: each chunk is one more pass
/// over the steps, which a net whose batch nearly fits does not repay. Weights are read again
/// for every chunk, so a model whose weights do not fit in half of L2 (the ResNet, a text
/// encoder) runs whole batches. Values are f32 in a float plan and mostly 8-bit codes in an
/// INT8 one.
fn chunk_samples(model: &Model, int8: bool, length_free: bool) -> usize {
    let bytes = if int8 { 1 } else { 4 };
    let weight_bytes = model.params.values().map(|v| v.elem_count()).sum::<usize>() * bytes;
    let l2 = crate::matmul::blocked::l2_bytes();
    let largest = model.graph.shapes.values().map(|s| s.iter().product::<usize>() * bytes).max().unwrap_or(1).max(1);
    match length_free || weight_bytes > l2 / 2 {
        true => usize::MAX,
        false => (2 * l2).div_ceil(largest),
    }
}

/// A conv or linear of shape `shape` (`None`: one the packed kernels cannot lay out):
/// quantised when `int8` quantises it, else [`dense`].
fn weight_layer(model: &Model, node: &Node, shape: Option<LayerShape>, int8: Option<&Int8Model>, columns: Option<&[usize]>) -> Result<Kind> {
    match quantised(int8, &node.name, shape, columns)? {
        Some(l) => Ok(Kind::Quant(Box::new(l))),
        None => dense(model, node, shape, columns),
    }
}

/// A recurrent matrix's projection on the integer GEMM when `int8` quantises unit `unit`.
fn recurrent_unit(int8: Option<&Int8Model>, unit: &str, op: &Op, in_shape: &[usize]) -> Result<Option<Projection>> {
    Ok(quantised(int8, unit, LayerShape::of(op, in_shape), None)?.map(|l| Box::new(l) as Projection))
}

/// A float weight layer on the packed f32 GEMM (or the depthwise kernel); the float executor
/// where the kernels cannot lay it out.
fn dense(model: &Model, node: &Node, shape: Option<LayerShape>, columns: Option<&[usize]>) -> Result<Kind> {
    let Some(shape) = shape else { return Ok(Kind::Float) };
    let bias = match model.params.contains_key(&node.param("bias")) {
        true => Some(model.values(&node.param("bias"))?),
        false => None,
    };
    let weight = model.values(&node.param("weight"))?;
    let weight = match columns {
        Some(c) => permute_columns(&weight, c),
        None => weight,
    };
    Ok(Kind::Dense(Box::new(FloatLayer::new(shape, &weight, bias))))
}

impl Step {
    /// The slots this step reads: its inputs, then a fused residual.
    fn reads(&self) -> impl Iterator<Item = usize> + '_ {
        self.inputs.iter().copied().chain(self.residual.map(|r| r.0))
    }
}

/// Folds each two-input add into the weight layer that computes one of its inputs
/// (`Step::residual`) when the add is that layer's only reader and the other input is the
/// model's input or computed by an earlier step (so it exists when the layer runs). The layer
/// then writes the add's output slot and the add step is gone.
fn fuse_residual_adds(steps: &mut Vec<Step>, model_output: usize) {
    let producer = |steps: &[Step], slot: usize| steps.iter().position(|s| s.output == slot);
    let reads = |steps: &[Step], slot: usize| steps.iter().map(|s| s.reads().filter(|&i| i == slot).count()).sum::<usize>();
    let mut si = 0;
    while si < steps.len() {
        let Kind::Add { relu } = steps[si].kind else {
            si += 1;
            continue;
        };
        let ins = steps[si].inputs.clone();
        let fusable = |k: usize| {
            let (mine, other) = (ins[k], ins[1 - k]);
            let li = producer(steps, mine)?;
            let layer = matches!(steps[li].kind, Kind::Quant(_) | Kind::Dense(_)) && steps[li].residual.is_none();
            let before = producer(steps, other).is_none_or(|oi| oi < li);
            (layer && mine != other && mine != model_output && reads(steps, mine) == 1 && before).then_some((li, other))
        };
        match (ins.len() == 2).then(|| fusable(0).or_else(|| fusable(1))).flatten() {
            Some((li, other)) => {
                steps[li].residual = Some((other, relu));
                steps[li].output = steps[si].output;
                steps.remove(si);
            }
            None => si += 1,
        }
    }
}

/// Marks each integer layer with a static input whose output only one step reads, an integer
/// layer with a static input in the same layout (both convs, or both linears), to write that
/// reader's codes itself (`Step::codes_for`): its f32 output is then never stored, and the
/// reader finds its codes already made.
fn code_outputs(steps: &mut [Step], model_output: usize) {
    let conv = |q: &QLayer| matches!(q.shape, super::layout::LayerShape::Conv(_));
    for pi in 0..steps.len() {
        let (slot, Kind::Quant(p)) = (steps[pi].output, &steps[pi].kind) else { continue };
        let reads: Vec<usize> = steps.iter().enumerate().flat_map(|(i, s)| s.reads().filter(move |&r| r == slot).map(move |_| i)).collect();
        let &[ri] = reads.as_slice() else { continue };
        if slot == model_output || p.input.fixed().is_none() {
            continue;
        }
        let reader = match &steps[ri].kind {
            Kind::Quant(c) if steps[ri].inputs[0] == slot && c.input.fixed().is_some() && conv(c) == conv(p) => Reader { node: steps[ri].node, input: c.input, bytes: c.reads_bytes() },
            _ => continue,
        };
        steps[pi].codes_for = Some(reader);
    }
}
