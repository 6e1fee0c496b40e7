//! The compiled runtime: a model turned once into a list of steps over plain buffers, without
//! candle in the hot path, for an INT8 artifact (`Plan::int8`) and for a float model
//! (`Plan::float`). Activations flow channels last (`[N, H, W, C]`), so a conv's patch row is a
//! run of whole pixels and its GEMM output is already the next layer's layout; a ReLU that is
//! the only reader of a weight layer runs inside that layer's epilogue, and so does a two-input
//! add that is the only reader of a weight layer whose other input is already computed (a
//! residual shortcut: `max(y + shortcut, 0)` with the ReLU after it). Ops without a kernel
//! here run through the float executor on a logical-layout tensor, so every model runs.
//!
//! - INT8: each quantised layer's input is quantised once per distinct set of parameters (two
//!   layers reading one value with the same parameters share the codes), in one pass over the
//!   value. The arithmetic is the hook executor's (`runtime::IntegerHook`): the
//!   same codes, the same exact integer sums, the same f32 epilogue; only float reductions
//!   outside the layers (global average pooling) may sum in another order.
//! - Float: every BatchNorm that only a conv or linear feeds is folded into it at compile time
//!   (`model::fold`), and every conv and linear runs the packed f32 GEMM. Outputs equal the
//!   candle executor's up to float rounding (sums in another order, folded weights).

use super::epilogue::add_relu;
use super::flayer::FloatLayer;
use super::qlayer::{Codes, QLayer};
use crate::artifact::Int8Model;
use crate::error::{Result, WickError};
use crate::model::arch::{Node, Op};
use crate::model::forward::is_weight_layer;
use crate::model::im2col::transpose_batched;
use crate::model::Model;
use crate::quant::QParams;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Samples per part below which a batch is not cut across threads (see [`Plan::predict`]).
const SPLIT_MIN_SAMPLES: usize = 8;

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
    Flatten,
    Identity,
    /// Any other op (or a weight layer left in float by an INT8 model): the float executor.
    Float,
}

impl Kind {
    /// The flag of a step that can apply a following ReLU itself: a weight layer's epilogue, an
    /// add's summing loop.
    fn fused_relu(&mut self) -> Option<&mut bool> {
        match self {
            Kind::Quant(q) => Some(&mut q.relu),
            Kind::Dense(f) => Some(&mut f.relu),
            Kind::Add { relu } => Some(relu),
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
}

/// A value: f32 data with its logical dims (with the batch) and its physical layout.
struct Value {
    data: Vec<f32>,
    dims: Vec<usize>,
    /// Stored as `[N, spatial…, C]` instead of `[N, C, spatial…]` (rank ≥ 3 only).
    channels_last: bool,
}

impl Plan {
    /// Compiles INT8 model `m`: its quantised layers run the integer GEMM, the rest in float.
    pub fn int8(m: &Int8Model) -> Result<Plan> {
        let fingerprint = if cfg!(debug_assertions) { crate::audit::fingerprint_int8(m) } else { 0 };
        crate::audit::record(|| crate::audit::Event::Compiled { model: fingerprint, int8: true });
        Plan::compile(m.model.clone(), fingerprint, |node, in_shape| {
            let Some(q) = m.layers.get(&node.name) else { return Ok(Kind::Float) };
            match QLayer::new(q, &node.op, in_shape, m.bias(&node.name)?) {
                Some(l) => Ok(Kind::Quant(Box::new(l))),
                None => Err(WickError::node(&node.name, "has a shape the integer runtime cannot lay out")),
            }
        })
    }

    /// Compiles float model `m` for inference (eval mode): BatchNorm folded, every conv and
    /// linear on the packed f32 GEMM.
    pub fn float(m: &Model) -> Result<Plan> {
        let fingerprint = if cfg!(debug_assertions) { crate::audit::fingerprint(m) } else { 0 };
        crate::audit::record(|| crate::audit::Event::Compiled { model: fingerprint, int8: false });
        let (folded, _) = crate::model::fold::fold_batchnorm(m)?;
        let vec = |name: &str| -> Result<Vec<f32>> { Ok(folded.p(name).flatten_all()?.to_vec1()?) };
        let layers = |node: &Node, in_shape: &[usize]| -> Result<Kind> {
            let bias = match folded.params.contains_key(&node.param("bias")) {
                true => Some(vec(&node.param("bias"))?),
                false => None,
            };
            Ok(match FloatLayer::new(&node.op, in_shape, &vec(&node.param("weight"))?, bias) {
                Some(l) => Kind::Dense(Box::new(l)),
                None => Kind::Float,
            })
        };
        Plan::compile(folded.clone(), fingerprint, layers)
    }

    /// Compiles the steps of `model`, asking `weight_layer(node, per-sample input shape)` what
    /// each conv and linear runs.
    fn compile(model: Model, fingerprint: u64, weight_layer: impl Fn(&Node, &[usize]) -> Result<Kind>) -> Result<Plan> {
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
        let mut steps: Vec<Step> = vec![];
        let mut slots = 1;
        for &ni in &model.graph.order {
            let node = &arch.nodes[ni];
            let inputs: Vec<usize> = node.inputs.iter().map(|i| slot_of[i.as_str()]).collect();
            // A ReLU whose input is a weight layer or an add read by nothing else joins it.
            if matches!(node.op, Op::Relu(_)) {
                let src = node.inputs[0].as_str();
                if let Some(last) = steps.last_mut() {
                    let single = readers.get(src) == Some(&1) && src != out_name && arch.nodes[last.node].name == src;
                    if let Some(relu) = last.kind.fused_relu().filter(|r| single && !**r) {
                        *relu = true;
                        slot_of.insert(node.name.as_str(), last.output);
                        continue;
                    }
                }
            }
            let kind = match &node.op {
                op if is_weight_layer(op) => weight_layer(node, &model.graph.shapes[node.inputs[0].as_str()])?,
                Op::Relu(_) => Kind::Relu,
                Op::Add(_) => Kind::Add { relu: false },
                Op::GlobalAvgPool(_) => Kind::GlobalAvgPool,
                Op::Flatten(_) => Kind::Flatten,
                Op::Dropout(_) => Kind::Identity,
                _ => Kind::Float,
            };
            steps.push(Step { node: ni, kind, inputs, output: slots, residual: None });
            slot_of.insert(node.name.as_str(), slots);
            slots += 1;
        }
        let output = slot_of[out_name];
        fuse_residual_adds(&mut steps, output);
        let mut last_use = vec![usize::MAX; slots];
        for (si, s) in steps.iter().enumerate() {
            for i in s.reads() {
                last_use[i] = si;
            }
        }
        last_use[output] = usize::MAX;
        Ok(Plan { model, steps, slots, output, last_use, fingerprint })
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

    /// Logits for a batch `[N, …]`. With more than one thread and at least
    /// `2·SPLIT_MIN_SAMPLES` samples, the batch is cut into one contiguous part per thread and
    /// the parts run the whole plan side by side: one fork and join per batch instead of one per
    /// layer, and the steps between the GEMMs (adds, layout changes, quantisation) run in
    /// parallel too. Every output row depends on its own sample only (static quantisation, each
    /// GEMM row summed alone), so the logits are bit-identical to one pass over the batch.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        self.predict_in_parts(x, rayon::current_num_threads().min(n / SPLIT_MIN_SAMPLES))
    }

    /// [`Plan::predict`] with the batch cut into `parts` contiguous parts (at most one per
    /// sample), run side by side on the pool's threads, each start to finish on one thread
    /// (bit-identical for any `parts`): to measure part sizes against each other.
    pub fn predict_in_parts(&self, x: &Tensor, parts: usize) -> Result<Tensor> {
        self.model.check_input(x)?;
        let n = x.dim(0)?;
        let parts = parts.min(n);
        if parts < 2 {
            return self.predict_all(x);
        }
        // One part per thread, nothing inside a part split further (`map_parts`): the other
        // threads are busy with their own parts.
        let mut ids: Vec<usize> = (0..parts).collect();
        let outs = crate::parallel::map_parts(&mut ids, 1, |p, _| {
            let (start, end) = (p * n / parts, (p + 1) * n / parts);
            self.predict_all(&x.narrow(0, start, end - start)?)
        });
        let outs = outs.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// Logits for a batch, every step over the whole batch.
    fn predict_all(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut vals: Vec<Option<Value>> = (0..self.slots).map(|_| None).collect();
        vals[0] = Some(Value { data: x.flatten_all()?.to_vec1()?, dims: x.dims().to_vec(), channels_last: false });
        let mut codes: Vec<Quantised> = vec![];
        for (si, step) in self.steps.iter().enumerate() {
            let node = &self.model.arch.nodes[step.node];
            let y = match &step.kind {
                Kind::Quant(q) => {
                    let conv = matches!(q.shape, super::layout::LayerShape::Conv(_));
                    let src = step.inputs[0];
                    let v = vals[src].as_mut().expect("input computed");
                    set_layout(v, conv);
                    let dims = v.dims.clone();
                    let form = (v.channels_last, q.reads_bytes());
                    let at = match codes.iter().position(|c| c.0 == src && c.1 == q.input && c.2 == form) {
                        Some(i) => i,
                        None => {
                            let Some(c) = q.quantize(&v.data) else {
                                let bad = v.data.iter().find(|f| !f.is_finite()).expect("quantize found one");
                                return Err(WickError::node(&node.name, format!("input holds a non-finite value ({bad})")));
                            };
                            codes.push((src, q.input, form, c));
                            codes.len() - 1
                        }
                    };
                    let out_dims = out_dims(&self.model.graph.shapes[node.name.as_str()], n);
                    let channels_last = conv && out_dims.len() >= 3;
                    set_residual_layout(&mut vals, step, channels_last);
                    let residual = residual_of(&vals, step);
                    let data = q.run(&codes[at].3, n, residual);
                    debug_assert_eq!(data.len(), out_dims.iter().product::<usize>(), "{} {:?}", node.name, dims);
                    Value { data, dims: out_dims, channels_last }
                }
                Kind::Dense(f) => {
                    let conv = matches!(f.shape, super::layout::LayerShape::Conv(_));
                    let v = vals[step.inputs[0]].as_mut().expect("input computed");
                    set_layout(v, conv);
                    let cl = conv && v.dims.len() >= 3;
                    let dims = out_dims(&self.model.graph.shapes[node.name.as_str()], n);
                    set_residual_layout(&mut vals, step, cl);
                    let x = &vals[step.inputs[0]].as_ref().expect("input computed").data;
                    Value { data: f.run(x, n, residual_of(&vals, step)), dims, channels_last: cl }
                }
                Kind::Relu => {
                    let mut v = self.owned(&mut vals, step, si);
                    add_relu_in_place(&mut v.data, None, true);
                    v
                }
                Kind::Identity => self.owned(&mut vals, step, si),
                Kind::Add { relu } => {
                    let cl = vals[step.inputs[0]].as_ref().expect("input computed").channels_last;
                    for &i in &step.inputs[1..] {
                        set_layout(vals[i].as_mut().expect("input computed"), cl);
                    }
                    // Summed in input order, as the float executor does; the ReLU in the last
                    // input's loop.
                    let mut acc = self.owned(&mut vals, step, si);
                    let last = step.inputs.len() - 1;
                    for (k, &i) in step.inputs.iter().enumerate().skip(1) {
                        add_relu_in_place(&mut acc.data, Some(&vals[i].as_ref().expect("input computed").data), *relu && k == last);
                    }
                    if *relu && last == 0 {
                        add_relu_in_place(&mut acc.data, None, true);
                    }
                    acc
                }
                Kind::GlobalAvgPool => global_avg_pool(vals[step.inputs[0]].as_ref().expect("input computed")),
                Kind::Flatten => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let v = self.owned(&mut vals, step, si);
                    Value { data: v.data, dims: out_dims(&self.model.graph.shapes[node.name.as_str()], n), channels_last: false }
                }
                Kind::Float => {
                    let mut ins = vec![];
                    for &i in &step.inputs {
                        let v = vals[i].as_mut().expect("input computed");
                        set_layout(v, false);
                        ins.push(Tensor::from_slice(&v.data, v.dims.as_slice(), x.device())?);
                    }
                    let refs: Vec<&Tensor> = ins.iter().collect();
                    let y = self.model.node_eval(node, &refs)?;
                    Value { data: y.flatten_all()?.to_vec1()?, dims: y.dims().to_vec(), channels_last: false }
                }
            };
            vals[step.output] = Some(y);
            for i in step.reads() {
                if self.last_use[i] == si {
                    vals[i] = None;
                }
            }
            codes.retain(|c| vals[c.0].is_some());
        }
        let mut out = vals[self.output].take().expect("output computed");
        set_layout(&mut out, false);
        Ok(Tensor::from_vec(out.data, out.dims, x.device())?)
    }
}

impl Plan {
    /// The first input of `step` as an owned value: moved out when this step is its last reader
    /// (and reads it once), copied otherwise, so element-wise ops work in place.
    fn owned(&self, vals: &mut [Option<Value>], step: &Step, si: usize) -> Value {
        let slot = step.inputs[0];
        let once = step.inputs.iter().filter(|&&i| i == slot).count() == 1;
        if self.last_use[slot] == si && once {
            return vals[slot].take().expect("input computed");
        }
        let v = vals[slot].as_ref().expect("input computed");
        Value { data: v.data.clone(), dims: v.dims.clone(), channels_last: v.channels_last }
    }
}

impl Step {
    /// The slots this step reads: its inputs, then a fused residual.
    fn reads(&self) -> impl Iterator<Item = usize> + '_ {
        self.inputs.iter().copied().chain(self.residual.map(|r| r.0))
    }
}

/// Stores the fused residual of `step` (if any) in the layout of the step's output.
fn set_residual_layout(vals: &mut [Option<Value>], step: &Step, channels_last: bool) {
    if let Some((r, _)) = step.residual {
        set_layout(vals[r].as_mut().expect("residual computed"), channels_last);
    }
}

/// The fused residual of `step` as its layer's output loop takes it: `(shortcut, relu)`.
fn residual_of<'a>(vals: &'a [Option<Value>], step: &Step) -> Option<(&'a [f32], bool)> {
    step.residual.map(|(r, relu)| (vals[r].as_ref().expect("residual computed").data.as_slice(), relu))
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

/// Codes of a slot under a quantiser, in a layout and a code type (`(channels last, bytes)`);
/// kept while the slot lives.
type Quantised = (usize, QParams, (bool, bool), Codes);

/// `[n] ++ per-sample shape`.
fn out_dims(per_sample: &[usize], n: usize) -> Vec<usize> {
    std::iter::once(n).chain(per_sample.iter().copied()).collect()
}

/// Stores `v` channels last (`true`) or in logical order (`false`); values of rank ≤ 2 are the
/// same either way.
fn set_layout(v: &mut Value, channels_last: bool) {
    if v.dims.len() < 3 {
        v.channels_last = false;
        return;
    }
    if v.channels_last == channels_last {
        return;
    }
    let (n, c) = (v.dims[0], v.dims[1]);
    let s: usize = v.dims[2..].iter().product();
    v.data = match channels_last {
        true => transpose_batched(&v.data, n, c, s),
        false => transpose_batched(&v.data, n, s, c),
    };
    v.channels_last = channels_last;
}

/// `[N, C, spatial…] → [N, C]`: `mean = (Σ_p x[c][p]) · (1/P)`, summed in position order.
fn global_avg_pool(v: &Value) -> Value {
    let (n, c) = (v.dims[0], v.dims[1]);
    let s: usize = v.dims[2..].iter().product();
    let scale = (1.0 / s as f64) as f32;
    let mut out = vec![0f32; n * c];
    for b in 0..n {
        let src = &v.data[b * c * s..(b + 1) * c * s];
        let dst = &mut out[b * c..(b + 1) * c];
        if v.channels_last {
            for p in 0..s {
                for (d, &x) in dst.iter_mut().zip(&src[p * c..(p + 1) * c]) {
                    *d += x;
                }
            }
        } else {
            for (ci, d) in dst.iter_mut().enumerate() {
                *d = src[ci * s..(ci + 1) * s].iter().sum();
            }
        }
        for d in dst.iter_mut() {
            *d *= scale;
        }
    }
    Value { data: out, dims: vec![n, c], channels_last: false }
}

/// [`add_relu`] for the add and ReLU steps, compiled for 8-wide vectors where the CPU has AVX2
/// (the arithmetic is the same either way).
fn add_relu_in_place(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn wide(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
                add_relu(a, b, relu)
            }
            // SAFETY: the CPU has AVX2.
            return unsafe { wide(a, b, relu) };
        }
    }
    add_relu(a, b, relu)
}
