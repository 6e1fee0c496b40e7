//! The compiled runtime: a model turned once into a list of steps over plain buffers, without
//! candle in the hot path, for an INT8 artifact (`Plan::int8`) and for a float model
//! (`Plan::float`). Activations flow channels last (`[N, H, W, C]`), so a conv's patch row is a
//! run of whole pixels and its GEMM output is already the next layer's layout; a ReLU that is
//! the only reader of a weight layer runs inside that layer's epilogue. Ops without a kernel
//! here run through the float executor on a logical-layout tensor, so every model runs.
//!
//! - INT8: each quantised layer's input is quantised once per distinct set of parameters (two
//!   layers reading one value with the same parameters share the codes). A quantised layer
//!   whose only readers are quantised layers with one quantiser writes their codes straight
//!   from its output loop (the requantisation fused in), so its f32 output is never stored.
//!   The arithmetic is the hook executor's (`runtime::IntegerHook`): the same codes, the same
//!   exact integer sums, the same f32 epilogue; only float reductions outside the layers
//!   (global average pooling) may sum in another order.
//! - Float: every BatchNorm that only a conv or linear feeds is folded into it at compile time
//!   (`model::fold`), and every conv and linear runs the packed f32 GEMM. Outputs equal the
//!   candle executor's up to float rounding (sums in another order, folded weights).

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
    Add { relu: bool },
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
    /// For a quantised layer whose output only quantised layers read, all with one quantiser
    /// and code type: the first of those steps. The layer then writes their codes straight
    /// from its output loop (`QLayer::run_requantised`) and no f32 output exists.
    requant: Option<usize>,
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
        Plan::compile(m.model.clone(), |node, in_shape| {
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
        Plan::compile(folded.clone(), layers)
    }

    /// Compiles the steps of `model`, asking `weight_layer(node, per-sample input shape)` what
    /// each conv and linear runs.
    fn compile(model: Model, weight_layer: impl Fn(&Node, &[usize]) -> Result<Kind>) -> Result<Plan> {
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
            steps.push(Step { node: ni, kind, inputs, output: slots, requant: None });
            slot_of.insert(node.name.as_str(), slots);
            slots += 1;
        }
        let output = slot_of[out_name];
        let mut last_use = vec![usize::MAX; slots];
        for (si, s) in steps.iter().enumerate() {
            for &i in &s.inputs {
                last_use[i] = si;
            }
        }
        last_use[output] = usize::MAX;
        for si in 0..steps.len() {
            steps[si].requant = requant_target(&steps, si, output);
        }
        Ok(Plan { model, steps, slots, output, last_use })
    }

    /// The quantised layers that write their readers' codes from their output loop, as
    /// `(layer, first reader)` node names (see `Step::requant`).
    pub fn requantised(&self) -> Vec<(&str, &str)> {
        let name = |s: &Step| self.model.arch.nodes[s.node].name.as_str();
        self.steps.iter().filter_map(|s| s.requant.map(|r| (name(s), name(&self.steps[r])))).collect()
    }

    /// Logits for a batch `[N, …]`. With more than one thread and at least
    /// `2·SPLIT_MIN_SAMPLES` samples, the batch is cut into one contiguous part per thread and
    /// the parts run the whole plan side by side: one fork and join per batch instead of one per
    /// layer, and the steps between the GEMMs (adds, layout changes, quantisation) run in
    /// parallel too. Every output row depends on its own sample only (static quantisation, each
    /// GEMM row summed alone), so the logits are bit-identical to one pass over the batch.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        self.model.check_input(x)?;
        let n = x.dim(0)?;
        let parts = rayon::current_num_threads().min(n / SPLIT_MIN_SAMPLES);
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
                    match step.requant.map(|ri| (&self.steps[ri], &self.steps[ri].kind)) {
                        Some((reader, Kind::Quant(next))) => {
                            let Some(c) = q.run_requantised(&codes[at].3, n, next) else {
                                let name = &self.model.arch.nodes[reader.node].name;
                                return Err(WickError::node(name, format!("input holds a non-finite value (computed by '{}')", node.name)));
                            };
                            // The readers find these codes under their own key (`form` above, for a
                            // value in this layout) and never read the f32 data, which stays empty.
                            codes.push((step.output, next.input, (channels_last, next.reads_bytes()), c));
                            Value { data: vec![], dims: out_dims, channels_last }
                        }
                        _ => {
                            let data = q.run(&codes[at].3, n);
                            debug_assert_eq!(data.len(), out_dims.iter().product::<usize>(), "{} {:?}", node.name, dims);
                            Value { data, dims: out_dims, channels_last }
                        }
                    }
                }
                Kind::Dense(f) => {
                    let conv = matches!(f.shape, super::layout::LayerShape::Conv(_));
                    let v = vals[step.inputs[0]].as_mut().expect("input computed");
                    set_layout(v, conv);
                    let cl = conv && v.dims.len() >= 3;
                    Value { data: f.run(&v.data, n), dims: out_dims(&self.model.graph.shapes[node.name.as_str()], n), channels_last: cl }
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
            for &i in &step.inputs {
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

/// The step whose codes step `si` can write from its output loop (see `Step::requant`): `si`
/// is a quantised layer, its output is not the model's, and every reader is a quantised layer
/// of the same kind (conv or linear, so the layout the readers want is the one written) with
/// the same input quantiser and code type.
fn requant_target(steps: &[Step], si: usize, model_output: usize) -> Option<usize> {
    let Kind::Quant(q) = &steps[si].kind else { return None };
    let out = steps[si].output;
    if out == model_output {
        return None;
    }
    let readers: Vec<(usize, &QLayer)> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.inputs.contains(&out))
        .map(|(ri, s)| match &s.kind {
            Kind::Quant(r) => Some((ri, r.as_ref())),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let conv = |l: &QLayer| matches!(l.shape, super::layout::LayerShape::Conv(_));
    let &(first, r0) = readers.first()?;
    readers.iter().all(|(_, r)| r.input == r0.input && r.reads_bytes() == r0.reads_bytes() && conv(r) == conv(q)).then_some(first)
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

/// `a[i] = a[i] + b[i]` (when `b` is given), then `max(·, 0)` when `relu`: the add and ReLU
/// steps. Compiled for 8-wide vectors where the CPU has AVX2 (the arithmetic is the same
/// either way).
fn add_relu_in_place(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
    #[inline(always)]
    fn plain(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
        match (b, relu) {
            (Some(b), true) => a.iter_mut().zip(b).for_each(|(a, b)| *a = (*a + b).max(0.0)),
            (Some(b), false) => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            (None, true) => a.iter_mut().for_each(|a| *a = a.max(0.0)),
            (None, false) => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn wide(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
                plain(a, b, relu)
            }
            // SAFETY: the CPU has AVX2.
            return unsafe { wide(a, b, relu) };
        }
    }
    plain(a, b, relu)
}
