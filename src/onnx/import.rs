//! An ONNX graph to a wick architecture and its parameters. Nodes are read in the file's
//! (topological) order; each value is a constant (initializers, `Constant`, and everything
//! computed from constants alone, such as the exporters' `Shape`/`Gather`/`Concat` chains), a
//! wick node's output, or a step of a decomposed activation (`x·sigmoid(x)`,
//! `0.5·x·(1 + erf(x/√2))`) that becomes one wick node when the pattern completes.

use super::arranged::{batch_multiple, batch_times, shown, Arrangement, Heads};
use super::proto::{attr_type, GraphProto, NodeProto, TensorProto};
use super::tensor::{self, Const, Values};
use crate::artifact::QuantLayer;
use crate::model::act_op::{SELU_ALPHA, SELU_SCALE};
use crate::model::arch::{self, Arch, InputSpec, Node, Op, Pair};
use crate::model::graph::infer;
use crate::quant::{ActType, InputQuant, QParams, QWeight};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The ONNX op types wick reads (default domain), for the unsupported-op message.
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Expand",
    "Flatten",
    "GRU",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LSTM",
    "LayerNormalization",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mish",
    "Mod",
    "Mul",
    "PRelu",
    "Pad",
    "QuantizeLinear",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Selu",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// The batch dim in a constant computed by `Shape`: unknown until run time, so arithmetic on it
/// is refused but for products with sizes, and `Reshape` reads it as "keep the batch".
const BATCH: i64 = batch_times(1);

/// Integer codes behind a constant computed by `DequantizeLinear`: `value = (code − zp)·scale`
/// with one scale and zero point per index along `axis` (one for all when per-tensor).
#[derive(Debug, Clone)]
struct Codes {
    codes: Vec<i64>,
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    axis: usize,
}

/// The imported model: architecture, f32 parameters `(shape, values)` keyed `node.suffix`, and
/// the layers a QDQ graph quantises (their parameters hold the dequantised weights).
pub struct Imported {
    pub arch: Arch,
    pub params: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub layers: BTreeMap<String, QuantLayer>,
    /// Lookup tables dequantised from int8 codes per row, by node.
    pub tables: BTreeMap<String, QWeight>,
}

/// A wick value: the node (or model input) that computes it, its per-sample shape, and the
/// shape ONNX gives it, which differs where ONNX keeps reduced dims as 1s.
#[derive(Debug, Clone)]
struct Dyn {
    name: String,
    shape: Vec<usize>,
    onnx_shape: Vec<usize>,
}

/// A value during import.
#[derive(Debug, Clone)]
enum Val {
    Const(Const),
    Dyn(Dyn),
    /// `k·x`: a step of exact GELU (`x/√2`, or `0.5·x`).
    Scaled(Dyn, f32),
    /// `erf(x/√2)`.
    ErfOf(Dyn),
    /// `coef · (x if times_x) · (1 + erf(x/√2))`; exact GELU when `times_x` and `coef = 0.5`.
    OnePlusErf {
        x: Dyn,
        coef: f32,
        times_x: bool,
    },
    /// `Softplus(k·x)` before its division by `k` (`nn.Softplus(beta = k)`).
    SoftplusOf(Dyn, f32),
    /// `k·x > t` (`Greater`): softplus's switch to the identity where `Where` reads it.
    Above(Dyn, f32, f32),
    /// `|x|`, a step of softsign's `x / (1 + |x|)`.
    AbsOf(Dyn),
    /// `1 + |x|`.
    OnePlusAbs(Dyn),
    /// A constant dequantised from integer codes (a QDQ graph's weights and biases).
    Dequantized(Const, Codes),
    /// `Clip(x, lo, hi)` other than ReLU/ReLU6: read only before `QuantizeLinear` (7-bit input).
    Clipped(Dyn, f32, f32),
    /// `QuantizeLinear(x)`.
    Quantized(Dyn, QParams),
    /// `DequantizeLinear(QuantizeLinear(x))`: `x` as a quantised layer's input.
    FakeQuant(Dyn, QParams),
    /// A batch-first sequence `[N, T, F]` seen time-major, `[T, N, F]` (what ONNX's GRU and
    /// LSTM take), after `Transpose(perm = [1, 0, 2])`.
    TimeMajor(Dyn),
    /// A GRU/LSTM output `Y` `[T, D, N, H]` of wick's batch-first `[N, T, D·H]` value.
    RnnOutput(Dyn, usize),
    /// A `Y` of `D` directions with its direction and batch axes swapped, `[T, N, D, H]`: a
    /// `Reshape` to `[T, N, D·H]` makes it the time-major output sequence.
    RnnOutputByStep(Dyn, usize),
    /// Zeros whose shape holds the batch size (`ConstantOfShape` of a `Shape` chain): a zero
    /// initial state.
    ZeroState,
    /// The final hidden states `Y_h` `[L, N, H]` of `L` stacked one-direction layers (one
    /// `GRU`/`LSTM` node each, the states joined by `Concat` along axis 0): layer `l`'s is the
    /// last step of its output sequence, the batch-first value held here.
    FinalStates(Vec<Dyn>),
    /// A computed value's elements rearranged with the batch axis moved or merged
    /// (`onnx::arranged`): attention's heads, time-major rows.
    Arranged(Dyn, Arrangement),
    /// A constant `[R, D]` repeated for every sample (`Expand` to `[N, R, D]`), named after the
    /// ONNX value it came from: rows a `Concat` puts before a sequence.
    BatchRows(Const, String),
    /// `s·q·kᵀ` of attention, per head, over the `[N, L, D]` values `q` and `k` (`probs` once a
    /// softmax over the keys took it).
    Scores {
        q: Dyn,
        k: Dyn,
        heads: Heads,
        scale: f32,
        probs: bool,
    },
}

type R<T> = std::result::Result<T, String>;

/// Constants of one rank joined along `axis` (shape arithmetic, or the dynamo exporter's gate
/// blocks of a recurrent layer's weights, reordered): every other dim equal; f32 unless all
/// hold integers.
fn concat_consts(vals: &[Val], axis: i64) -> R<Const> {
    let cs: Vec<&Const> = vals.iter().filter_map(|v| if let Val::Const(c) = v { Some(c) } else { None }).collect();
    let first = cs.first().ok_or("Concat has no inputs")?;
    let rank = first.dims.len();
    let axis = usize::try_from(from_end(axis, rank as i64)).ok().filter(|&a| a < rank).ok_or(format!("axis {axis} is out of range for rank {rank}"))?;
    let same_but_axis = |c: &Const| c.dims.len() == rank && c.dims.iter().zip(&first.dims).enumerate().all(|(k, (a, b))| k == axis || a == b);
    if !cs.iter().all(|c| same_but_axis(c)) {
        return Err(format!("constants of shapes {:?} do not join along axis {axis}", cs.iter().map(|c| c.dims.clone()).collect::<Vec<_>>()));
    }
    // Each input contributes `outer` runs of `dims[axis]·inner` values, interleaved in order.
    let outer: usize = first.dims[..axis].iter().product();
    let inner: usize = first.dims[axis + 1..].iter().product();
    let all_int = cs.iter().all(|c| matches!(c.values, Values::I64(_)));
    let mut dims = first.dims.clone();
    dims[axis] = cs.iter().map(|c| c.dims[axis]).sum();
    let floats: Vec<Vec<f32>> = cs.iter().map(|c| c.f32s()).collect();
    let (mut ints, mut reals) = (vec![], vec![]);
    for o in 0..outer {
        for (k, c) in cs.iter().enumerate() {
            let run = c.dims[axis] * inner;
            match (all_int, c.i64s()) {
                (true, Some(v)) => ints.extend_from_slice(&v[o * run..(o + 1) * run]),
                _ => reals.extend_from_slice(&floats[k][o * run..(o + 1) * run]),
            }
        }
    }
    let values = if all_int { Values::I64(ints) } else { Values::F32(reals) };
    Ok(Const { dims, values })
}

/// `value` in every place of shape `dims` (`ConstantOfShape`, `Expand`): a zero initial state
/// when the shape holds the batch size, else a constant.
fn filled(dims: &[i64], value: f32) -> R<Val> {
    if dims.iter().any(|&d| batch_multiple(d).is_some()) {
        return if value == 0.0 { Ok(Val::ZeroState) } else { Err("a non-zero constant whose shape holds the batch size".into()) };
    }
    let dims: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).ok().filter(|&d| d <= 1 << 24)).collect::<Option<_>>().ok_or(format!("shape {dims:?} is not a small non-negative shape"))?;
    let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&v| v <= 1 << 24).ok_or("the constant is too large")?;
    Ok(Val::Const(Const { dims, values: Values::F32(vec![value; numel]) }))
}

/// Imports `graph` (from `file`, whose external data lives in `dir`) at default-domain `opset`.
pub fn import(graph: &GraphProto, opset: i64, file: &str, dir: &Path) -> crate::error::Result<Imported> {
    let onnx_err = |node: &str, op_type: &str, msg: String| crate::error::WickError::Onnx { file: file.into(), node: node.into(), op_type: op_type.into(), msg };
    let mut im = Importer::new(opset, dir);
    for t in &graph.initializer {
        let c = tensor::read(t, &format!("{file}: initializer '{}'", t.name), dir)?;
        if t.data_type == super::proto::data_type::INT8 {
            im.int8_values.insert(t.name.clone());
        }
        im.vals.insert(t.name.clone(), Val::Const(c));
    }
    let input = im.input(graph).map_err(|m| onnx_err("(graph input)", "input", m))?;
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *im.uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *im.uses.entry(o.name.clone()).or_default() += 1;
    }
    for (k, n) in graph.node.iter().enumerate() {
        let label = if n.name.is_empty() { format!("#{k}") } else { n.name.clone() };
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(onnx_err(&label, &format!("{}::{}", n.domain, n.op_type), unsupported()));
        }
        let out = im.node(n).map_err(|m| onnx_err(&label, &n.op_type, m))?;
        let int8_constant = n.op_type == "Constant" && n.attribute.iter().any(|a| a.t.as_ref().is_some_and(|t| t.data_type == super::proto::data_type::INT8));
        if int8_constant || (n.op_type == "QuantizeLinear" && n.input.get(2).is_some_and(|z| im.int8_values.contains(z))) {
            im.int8_values.extend(n.output.first().cloned());
        }
        let first = n.output.first().ok_or_else(|| onnx_err(&label, &n.op_type, "has no output".into()))?;
        im.vals.insert(first.clone(), out);
    }
    let [out] = graph.output.as_slice() else {
        return Err(onnx_err("(graph output)", "output", format!("the graph has {} outputs; wick models have one", graph.output.len())));
    };
    let output = match im.vals.get(&out.name) {
        Some(Val::Dyn(d)) if d.name != input.name => d.name.clone(),
        Some(Val::Dyn(_)) => return Err(onnx_err(&out.name, "output", "the output is the model input itself".into())),
        Some(_) => return Err(onnx_err(&out.name, "output", "the output does not depend on the input, or ends inside an unrecognised pattern".into())),
        None => return Err(onnx_err(&out.name, "output", "no node computes the graph output".into())),
    };
    let nodes = live_nodes(std::mem::take(&mut im.nodes), &output);
    let live: HashSet<String> = nodes.iter().flat_map(|n| n.op.param_suffixes().into_iter().map(|(s, _)| n.param(s))).collect();
    im.params.retain(|k, _| live.contains(k));
    im.layers.retain(|k, _| live.contains(&format!("{k}.weight")));
    let arch = Arch {
        format: arch::ARCH_FORMAT.into(),
        version: arch::ARCH_VERSION,
        input: InputSpec { name: input.name, shape: input.shape, preprocessing: None },
        nodes,
        output: Some(output),
        origin: format!("{file} (ONNX)"),
    };
    Ok(Imported { arch, params: im.params, layers: im.layers, tables: im.tables })
}

/// The nodes the output depends on, in their order (a `Sigmoid` merged into a SiLU drops out).
fn live_nodes(nodes: Vec<Node>, output: &str) -> Vec<Node> {
    let mut live: HashSet<String> = HashSet::from([output.to_string()]);
    for n in nodes.iter().rev() {
        if live.contains(&n.name) {
            live.extend(n.inputs.iter().cloned());
        }
    }
    nodes.into_iter().filter(|n| live.contains(&n.name)).collect()
}

fn unsupported() -> String {
    format!("wick does not support this op; it reads these ONNX ops: {}", SUPPORTED_OPS.join(", "))
}

/// Whether an initializer's name is a PyTorch `state_dict` name (the dynamo exporter keeps
/// them; the legacy exporter renames folded weights `onnx::Conv_67`).
fn looks_like_state_dict(name: &str) -> bool {
    !name.contains("::") && !name.contains('/') && (name.ends_with(".weight") || name.ends_with(".bias"))
}

/// The module path in a legacy-exporter node name: `/layer1/layer1.0/conv1/Conv` →
/// `layer1.0.conv1` (each scope repeats its parent's path when it is a container's child).
fn scope_path(node_name: &str) -> Option<String> {
    let rest = node_name.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let mut parts: Vec<String> = vec![];
    for seg in &segments[..segments.len().saturating_sub(1)] {
        match parts.last() {
            Some(last) if seg.starts_with(&format!("{last}.")) => *parts.last_mut().expect("non-empty") = seg.to_string(),
            _ if !seg.is_empty() => parts.push(seg.to_string()),
            _ => {}
        }
    }
    (!parts.is_empty()).then(|| parts.join("."))
}

struct Importer<'a> {
    opset: i64,
    dir: &'a Path,
    vals: HashMap<String, Val>,
    /// How many node inputs and graph outputs read each ONNX value.
    uses: HashMap<String, usize>,
    nodes: Vec<Node>,
    params: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    layers: BTreeMap<String, QuantLayer>,
    tables: BTreeMap<String, QWeight>,
    names: HashSet<String>,
    /// Values of ONNX type int8 (a `QuantizeLinear` zero point's type is its output's).
    int8_values: HashSet<String>,
    /// The per-sample shape of every wick node's output and of the model input.
    shapes: HashMap<String, Vec<usize>>,
}

/// A parameter a new wick node owns: suffix, shape, values.
type Param = (&'static str, Vec<usize>, Vec<f32>);

impl<'a> Importer<'a> {
    /// An importer with nothing read yet, at default-domain `opset`, external data in `dir`.
    fn new(opset: i64, dir: &'a Path) -> Importer<'a> {
        Importer {
            opset,
            dir,
            vals: HashMap::new(),
            uses: HashMap::new(),
            nodes: vec![],
            params: BTreeMap::new(),
            layers: BTreeMap::new(),
            tables: BTreeMap::new(),
            names: HashSet::new(),
            int8_values: HashSet::new(),
            shapes: HashMap::new(),
        }
    }

    /// The one graph input that is not an initializer: batch first, the other dims fixed.
    fn input(&mut self, g: &GraphProto) -> R<Dyn> {
        let inputs: Vec<_> = g.input.iter().filter(|i| !self.vals.contains_key(&i.name)).collect();
        let [i] = inputs.as_slice() else { return Err(format!("the graph has {} inputs besides its initializers; wick models have one", inputs.len())) };
        let dims = i.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.shape.as_ref()).map(|s| s.dim.as_slice()).ok_or_else(|| format!("input '{}' has no tensor shape", i.name))?;
        let mut shape = vec![];
        for (k, d) in dims.iter().enumerate().skip(1) {
            match d.dim_value {
                Some(v) if v > 0 => shape.push(v as usize),
                _ => return Err(format!("input '{}' dim {k} is not a fixed size ({:?}); wick needs every dim but the batch fixed", i.name, d.dim_param.as_deref().unwrap_or("unknown"))),
            }
        }
        if dims.is_empty() {
            return Err(format!("input '{}' is a scalar; wick needs a batch dim", i.name));
        }
        let d = Dyn { name: i.name.clone(), shape: shape.clone(), onnx_shape: shape };
        self.shapes.insert(i.name.clone(), d.shape.clone());
        self.names.insert(i.name.clone());
        self.vals.insert(i.name.clone(), Val::Dyn(d.clone()));
        Ok(d)
    }

    fn get(&self, name: &str) -> R<&Val> {
        self.vals.get(name).ok_or_else(|| format!("input '{name}' is not computed by an earlier node, an initializer or the graph input"))
    }

    /// Input `k` of `n`, or `None` when absent or empty (an omitted optional input).
    fn opt_in(&self, n: &NodeProto, k: usize) -> R<Option<&Val>> {
        match n.input.get(k) {
            Some(s) if !s.is_empty() => self.get(s).map(Some),
            _ => Ok(None),
        }
    }

    fn input_val(&self, n: &NodeProto, k: usize) -> R<&Val> {
        self.opt_in(n, k)?.ok_or_else(|| format!("input {k} is missing"))
    }

    /// Input `k` as a wick value whose shape is ONNX's too (ops that address dims by position).
    /// Input `k` as a computed tensor in the shape ONNX gives it: a value wick computes without
    /// the unit dims ONNX keeps (a pooled `[C]` that ONNX holds as `[C, 1, 1]`) gets a `reshape`.
    fn exact_in(&mut self, n: &NodeProto, k: usize) -> R<Dyn> {
        let d = self.dyn_in(n, k)?;
        self.in_onnx_shape(d)
    }

    /// `d` as ONNX shapes it: through a `reshape` when wick computes it without unit dims.
    fn in_onnx_shape(&mut self, d: Dyn) -> R<Dyn> {
        if d.shape == d.onnx_shape {
            return Ok(d);
        }
        let name = self.fresh(&format!("{}.reshape", d.name));
        let shape = d.onnx_shape.iter().map(|&s| s as i64).collect();
        self.emit(name, &[&d], Op::Reshape(arch::ReshapeCfg { shape }), vec![])
    }

    fn dyn_in(&mut self, n: &NodeProto, k: usize) -> R<Dyn> {
        match self.input_val(n, k)? {
            Val::Dyn(d) => Ok(d.clone()),
            // A Clip no 7-bit input took: a `hardtanh` node, shared by every later reader.
            Val::Clipped(x, lo, hi) => {
                let (x, cfg) = (x.clone(), arch::HardtanhCfg { min_val: *lo as f64, max_val: *hi as f64 });
                let name = self.fresh(scope_path(&n.input[k]).as_deref().unwrap_or("hardtanh"));
                let y = self.emit(name, &[&x], Op::Hardtanh(cfg), vec![])?;
                self.vals.insert(n.input[k].clone(), Val::Dyn(y.clone()));
                Ok(y)
            }
            // A product by a constant no pattern took: a `channel_affine` node, which every later
            // reader of the value shares.
            Val::Scaled(x, s) => {
                let (x, s) = (x.clone(), *s);
                let ch = x.shape.first().copied().unwrap_or(1);
                let Val::Dyn(y) = self.channel_affine(&n.input[k], &x, (vec![s; ch], false), vec![0.0; ch])? else { unreachable!("an affine node's value") };
                self.vals.insert(n.input[k].clone(), Val::Dyn(y.clone()));
                Ok(y)
            }
            Val::Const(_) => Err(format!("input {k} ('{}') is a constant; wick reads it only as a computed tensor", n.input[k])),
            Val::Arranged(d, a) => Err(format!(
                "input {k} ('{}') holds the elements of '{}' rearranged, heads split or the batch moved (shape [{}], N the batch); wick reads such a value in attention, in a linear over its last axis, or reshaped back to '{}'",
                n.input[k],
                d.name,
                shown(&a.dims()),
                d.name
            )),
            Val::TimeMajor(d) => Err(format!(
                "input {k} ('{}') holds '{}' time-major ([T, N, …], Transpose(perm [1, 0, 2])); wick reads it in a GRU or LSTM, in attention, in a linear over its last axis, or transposed back",
                n.input[k], d.name
            )),
            Val::Scores { .. } => Err(format!("input {k} ('{}') is attention's q·kᵀ, which wick reads only through Softmax over the keys and the MatMul with v", n.input[k])),
            _ => Err(pattern_err(&n.input[k])),
        }
    }

    fn const_in(&self, n: &NodeProto, k: usize) -> R<Const> {
        match self.input_val(n, k)? {
            Val::Const(c) | Val::Dequantized(c, _) => Ok(c.clone()),
            _ => Err(format!("input {k} ('{}') must be a constant (an initializer), not computed from the model input", n.input[k])),
        }
    }

    fn opt_const(&self, n: &NodeProto, k: usize) -> R<Option<Const>> {
        match self.opt_in(n, k)? {
            None => Ok(None),
            Some(_) => self.const_in(n, k).map(Some),
        }
    }

    /// A fresh wick node name from `base`.
    fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "node" } else { base };
        let mut name = base.to_string();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// The name of a parametric node: the `state_dict` prefix of its weight's name where the
    /// exporter kept it, else the module path in the node's name, else the node's name.
    fn param_node_name(&mut self, n: &NodeProto, op: &str) -> String {
        let from_weight = n.input.get(1).filter(|w| looks_like_state_dict(w)).and_then(|w| w.strip_suffix(".weight")).map(str::to_string);
        match from_weight {
            Some(base) => self.fresh(&base),
            None => self.plain_node_name(n, op),
        }
    }

    fn plain_node_name(&mut self, n: &NodeProto, op: &str) -> String {
        let base = scope_path(&n.name).unwrap_or_else(|| if n.name.is_empty() || n.name.contains('/') { op.to_string() } else { n.name.clone() });
        self.fresh(&base)
    }

    /// Appends a wick node named `name` over `inputs` and returns its value.
    fn emit(&mut self, name: String, inputs: &[&Dyn], op: Op, params: Vec<Param>) -> R<Dyn> {
        let shapes: Vec<&Vec<usize>> = inputs.iter().map(|d| &d.shape).collect();
        let shape = infer(&op, &shapes).map_err(|m| format!("as wick op '{}': {m}", op.name()))?;
        for (suffix, dims, values) in params {
            self.params.insert(format!("{name}.{suffix}"), (dims, values));
        }
        self.nodes.push(Node { name: name.clone(), inputs: inputs.iter().map(|d| d.name.clone()).collect(), op });
        self.shapes.insert(name.clone(), shape.clone());
        Ok(Dyn { name, shape: shape.clone(), onnx_shape: shape })
    }

    fn unary(&mut self, n: &NodeProto, op: Op) -> R<Val> {
        let x = self.dyn_in(n, 0)?;
        let name = self.plain_node_name(n, &op.name());
        Ok(Val::Dyn(self.emit(name, &[&x], op, vec![])?))
    }

    fn node(&mut self, n: &NodeProto) -> R<Val> {
        let e = arch::Empty {};
        match n.op_type.as_str() {
            "Constant" => constant(n, self.dir).map(Val::Const),
            "Identity" | "Dropout" => self.input_val(n, 0).cloned(),
            "Cast" => self.cast(n),
            "Shape" => self.shape(n),
            "Gather" => self.gather(n),
            "Slice" => self.slice(n),
            "Split" => self.split(n),
            "Concat" => self.concat(n),
            "Squeeze" | "Unsqueeze" => self.squeeze(n),
            "Transpose" => self.transpose(n),
            "ConstantOfShape" => self.constant_of_shape(n),
            "Expand" => self.expand(n),
            "GRU" | "LSTM" => self.recurrent(n),
            "Reshape" => self.reshape(n),
            "Flatten" => self.flatten(n),
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n),
            "Mod" => match (self.input_val(n, 0)?, self.input_val(n, 1)?) {
                (Val::Const(x), Val::Const(y)) => fold(if attr_i(n, "fmod")? == Some(1) { "Fmod" } else { "Mod" }, x, y).map(Val::Const),
                _ => Err("Mod is read only on constants (shape arithmetic)".into()),
            },
            "Sqrt" => match self.input_val(n, 0)? {
                Val::Const(c) => Ok(Val::Const(Const { dims: c.dims.clone(), values: Values::F32(c.f32s().iter().map(|v| v.sqrt()).collect()) })),
                _ => Err("Sqrt is read only on constants (attention's scale)".into()),
            },
            "Erf" => match self.input_val(n, 0)? {
                Val::Scaled(x, k) if close(*k, std::f32::consts::FRAC_1_SQRT_2) => Ok(Val::ErfOf(x.clone())),
                _ => Err("Erf is read only as part of exact GELU, 0.5·x·(1 + erf(x/√2))".into()),
            },
            "Relu" => self.unary(n, Op::Relu(e)),
            "Sigmoid" => self.unary(n, Op::Sigmoid(e)),
            "Tanh" => self.unary(n, Op::Tanh(e)),
            "Mish" => self.unary(n, Op::Mish(e)),
            "Softsign" => self.unary(n, Op::Softsign(e)),
            // ONNX's Softplus has no switch to the identity; PyTorch's default one, at 20, changes
            // no f32 result (there `ln(1 + eˣ) − x < e⁻²⁰`, below an ulp of `x`).
            "Softplus" => match self.input_val(n, 0)? {
                Val::Scaled(x, k) => Ok(Val::SoftplusOf(x.clone(), *k)),
                _ => self.unary(n, Op::Softplus(arch::SoftplusCfg { beta: 1.0, threshold: 20.0 })),
            },
            "PRelu" => self.prelu(n),
            "Abs" => Ok(Val::AbsOf(self.dyn_in(n, 0)?)),
            "Greater" => match (self.input_val(n, 0)?, self.input_val(n, 1)?) {
                (a @ (Val::Dyn(x) | Val::Scaled(x, _)), Val::Const(t)) if t.scalar().is_some() => Ok(Val::Above(x.clone(), factor(a), t.scalar().expect("checked"))),
                _ => Err("Greater is read only as softplus's switch, `Where(beta·x > threshold, x, softplus)`, with a scalar threshold".into()),
            },
            "Equal" => match (self.input_val(n, 0)?, self.input_val(n, 1)?) {
                (Val::Const(x), Val::Const(y)) => fold("Equal", x, y).map(Val::Const),
                _ => Err("Equal is read only on constants (shape arithmetic)".into()),
            },
            "Where" => match (self.input_val(n, 0)?, self.input_val(n, 1)?, self.input_val(n, 2)?) {
                (Val::Const(c), Val::Const(a), Val::Const(b)) => pick_where(c, a, b).map(Val::Const),
                _ => self.softplus_switch(n),
            },
            "LeakyRelu" => self.unary(n, Op::LeakyRelu(arch::LeakyReluCfg { negative_slope: attr_f(n, "alpha")?.unwrap_or(0.01) as f64 })),
            "HardSwish" => self.unary(n, Op::Hardswish(e)),
            "Elu" => self.unary(n, Op::Elu(arch::EluCfg { alpha: attr_f(n, "alpha")?.unwrap_or(1.0) as f64 })),
            "Celu" => self.unary(n, Op::Celu(arch::EluCfg { alpha: attr_f(n, "alpha")?.unwrap_or(1.0) as f64 })),
            "Selu" => match (attr_f(n, "alpha")?.unwrap_or(SELU_ALPHA), attr_f(n, "gamma")?.unwrap_or(SELU_SCALE)) {
                (a, g) if a == SELU_ALPHA && g == SELU_SCALE => self.unary(n, Op::Selu(e)),
                (a, g) => Err(format!("Selu with alpha {a} and gamma {g}; wick reads PyTorch's SELU (alpha {SELU_ALPHA}, gamma {SELU_SCALE})")),
            },
            "HardSigmoid" => match (attr_f(n, "alpha")?.unwrap_or(0.2), attr_f(n, "beta")?.unwrap_or(0.5)) {
                (a, b) if close(a, 1.0 / 6.0) && b == 0.5 => self.unary(n, Op::Hardsigmoid(e)),
                (a, b) => Err(format!("HardSigmoid with alpha {a} and beta {b}; wick reads PyTorch's Hardsigmoid, alpha 1/6 and beta 0.5")),
            },
            "Gelu" => {
                let approximate = match attr_s(n, "approximate")?.as_deref() {
                    None | Some("none") => arch::GeluApprox::None,
                    Some("tanh") => arch::GeluApprox::Tanh,
                    Some(o) => return Err(format!("attribute 'approximate' is '{o}'; ONNX allows 'none' and 'tanh'")),
                };
                self.unary(n, Op::Gelu(arch::GeluCfg { approximate }))
            }
            "Clip" => self.clip(n),
            "Softmax" | "LogSoftmax" => self.softmax(n),
            "QuantizeLinear" => self.quantize(n),
            "DequantizeLinear" => self.dequantize(n),
            "Conv" => self.conv(n),
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n),
            "BatchNormalization" => self.batchnorm(n),
            "LayerNormalization" => self.layernorm(n),
            "InstanceNormalization" => self.instance_norm(n),
            "MaxPool" | "AveragePool" => self.pool(n),
            "Pad" => self.pad(n),
            "GlobalAveragePool" => self.global_pool(n, true),
            "GlobalMaxPool" => self.each_spatial_axis(n, true),
            "ReduceMean" | "ReduceMax" | "ReduceSum" => self.reduce(n),
            _ => Err(unsupported()),
        }
    }

    fn cast(&self, n: &NodeProto) -> R<Val> {
        let to = attr_i(n, "to")?.ok_or("attribute 'to' is missing")?;
        match (self.input_val(n, 0)?, to as i32) {
            (Val::Const(c), super::proto::data_type::FLOAT | super::proto::data_type::DOUBLE | super::proto::data_type::FLOAT16) => {
                if c.i64s().is_some_and(|v| v.iter().any(|&d| batch_multiple(d).is_some())) {
                    return Err("casts the batch size to float; wick needs values that do not depend on it".into());
                }
                Ok(Val::Const(Const { dims: c.dims.clone(), values: Values::F32(c.f32s()) }))
            }
            (Val::Const(c), _) => Ok(Val::Const(Const {
                dims: c.dims.clone(),
                values: Values::I64(match &c.values {
                    Values::I64(v) => v.clone(),
                    Values::F32(v) => v.iter().map(|&x| x as i64).collect(),
                }),
            })),
            (Val::Dyn(d), super::proto::data_type::FLOAT) => Ok(Val::Dyn(d.clone())),
            (Val::Dyn(_), t) => Err(format!("casts the model's float tensor to ONNX type {t}; wick computes in float")),
            _ => Err(pattern_err(&n.input[0])),
        }
    }

    /// `Shape(x)`: a constant whose batch entry is [`BATCH`].
    fn shape(&mut self, n: &NodeProto) -> R<Val> {
        let full: Vec<i64> = match self.input_val(n, 0)? {
            // `[T, N, F…]`: a batch-first `[N, T, F…]` seen time-major.
            Val::TimeMajor(x) => [x.onnx_shape[0] as i64, BATCH].into_iter().chain(x.onnx_shape[1..].iter().map(|&d| d as i64)).collect(),
            // `[T, N, D, H]`: a batch-first `[N, T, D·H]` output by step, directions apart.
            &Val::RnnOutputByStep(ref x, dirs) => vec![x.onnx_shape[0] as i64, BATCH, dirs as i64, (x.onnx_shape[1] / dirs) as i64],
            Val::Arranged(_, a) => a.dims(),
            Val::Const(c) => c.dims.iter().map(|&d| d as i64).collect(),
            _ => {
                let x = self.dyn_in(n, 0)?;
                std::iter::once(BATCH).chain(x.onnx_shape.iter().map(|&d| d as i64)).collect()
            }
        };
        let r = full.len() as i64;
        let clamp = |v: i64| from_end(v, r).clamp(0, r) as usize;
        let start = clamp(attr_i(n, "start")?.unwrap_or(0));
        let end = clamp(attr_i(n, "end")?.unwrap_or(r)).max(start);
        let v = full[start..end].to_vec();
        Ok(Val::Const(Const { dims: vec![v.len()], values: Values::I64(v) }))
    }

    fn gather(&mut self, n: &NodeProto) -> R<Val> {
        let scalar_index = |idx: &Const| idx.i64s().filter(|v| v.len() == 1 && idx.dims.is_empty()).map(|v| v[0]);
        match self.input_val(n, 0)?.clone() {
            // One step of a time-major sequence: `select` along the batch-first value's time dim.
            Val::TimeMajor(x) if attr_i(n, "axis")?.unwrap_or(0) == 0 => {
                let index = scalar_index(&self.const_in(n, 1)?).ok_or("Gather of a sequence's steps is read with one scalar index")?;
                let name = self.plain_node_name(n, "select");
                return Ok(Val::Dyn(self.emit(name, &[&x], Op::Select(arch::SelectCfg { dim: 1, index }), vec![])?));
            }
            // One layer's final state (`h[-1]`): that layer's last step.
            Val::FinalStates(layers) if attr_i(n, "axis")?.unwrap_or(0) == 0 => {
                let index = scalar_index(&self.const_in(n, 1)?).ok_or("Gather of final states is read with one scalar index")?;
                let l = usize::try_from(from_end(index, layers.len() as i64))
                    .ok()
                    .filter(|&l| l < layers.len())
                    .ok_or(format!("index {index} is out of range for {} layers' final states", layers.len()))?;
                return self.last_step(n, &layers[l]).map(Val::Dyn);
            }
            Val::TimeMajor(_) | Val::FinalStates(_) => return Err("Gather of a time-major sequence or of final states is read along axis 0 (a step, a layer)".into()),
            Val::Arranged(d, a) => {
                let index = scalar_index(&self.const_in(n, 1)?).ok_or("Gather of a rearranged tensor is read with one scalar index")?;
                return self.settle(d, a.select(attr_i(n, "axis")?.unwrap_or(0), index)?);
            }
            _ => {}
        }
        if let (Val::Const(table) | Val::Dequantized(table, _), Val::Dyn(_)) = (self.input_val(n, 0)?, self.input_val(n, 1)?) {
            // Rows of a constant table at computed ids: an embedding lookup; a table dequantised
            // from int8 codes per row is an INT8 table.
            let codes = self.codes_in(n, 0);
            let (table, ids) = (table.clone(), self.exact_in(n, 1)?);
            let &[num_embeddings, embedding_dim] = table.dims.as_slice() else {
                return Err(format!("Gather of a constant at computed indices is read as an embedding lookup, of a 2-D table; this one has shape {:?}", table.dims));
            };
            if attr_i(n, "axis")?.unwrap_or(0) != 0 {
                return Err("Gather of a constant table at computed indices is read as an embedding lookup, along axis 0 (rows)".into());
            }
            let name = match n.input[0].strip_suffix(".weight").filter(|_| looks_like_state_dict(&n.input[0])) {
                Some(base) => self.fresh(base),
                None => self.plain_node_name(n, "embedding"),
            };
            if let Some(c) = codes {
                self.tables.insert(name.clone(), qweight(&c, &table.dims, 0)?);
            }
            let op = Op::Embedding(arch::EmbeddingCfg { num_embeddings, embedding_dim });
            return Ok(Val::Dyn(self.emit(name, &[&ids], op, vec![("weight", vec![num_embeddings, embedding_dim], table.f32s())])?));
        }
        if let Val::Dyn(_) = self.input_val(n, 0)? {
            // One index of a computed tensor along a dim after the batch: `select`.
            let x = self.exact_in(n, 0)?;
            let idx = self.const_in(n, 1)?;
            let index = idx.i64s().filter(|v| v.len() == 1 && idx.dims.is_empty()).map(|v| v[0]).ok_or("Gather of a computed tensor is read with one scalar index (select)")?;
            let dim = attr_i(n, "axis")?.unwrap_or(0);
            let name = self.plain_node_name(n, "select");
            return Ok(Val::Dyn(self.emit(name, &[&x], Op::Select(arch::SelectCfg { dim, index }), vec![])?));
        }
        let data = self.const_in(n, 0)?;
        let idx = self.const_in(n, 1)?;
        let axis = attr_i(n, "axis")?.unwrap_or(0);
        if data.dims.len() != 1 || axis != 0 {
            return Err("Gather is read only on 1-D constants (shape arithmetic)".into());
        }
        let len = data.dims[0] as i64;
        let ix = idx.i64s().ok_or("indices must be integers")?;
        let mut pick = vec![];
        for &i in ix {
            let j = from_end(i, len);
            if !(0..len).contains(&j) {
                return Err(format!("index {i} is out of range for {len} values"));
            }
            pick.push(j as usize);
        }
        Ok(Val::Const(Const { dims: idx.dims.clone(), values: data.values.pick(pick.into_iter()) }))
    }

    /// `Expand` of a one-value constant (the dynamo exporter's `zeros(L·D, N, H)`): a zero
    /// initial state when the target shape holds the batch size, else that value in the shape;
    /// or of a `[1, R, D]` constant to `[N, R, D]` (a class token, `cls.expand(n, -1, -1)`).
    fn expand(&self, n: &NodeProto) -> R<Val> {
        let data = self.const_in(n, 0)?;
        let shape = self.const_in(n, 1)?;
        let dims = shape.i64s().ok_or("the shape must hold integers")?;
        if let (Some(_), &[1, rows, width], &[batch, r, w]) = (data.scalar().is_none().then_some(()), data.dims.as_slice(), dims) {
            if batch == BATCH && [(r, rows), (w, width)].iter().all(|&(t, d)| t == 1 || t == d as i64) {
                let name = n.input[0].clone();
                return Ok(Val::BatchRows(Const { dims: vec![rows, width], values: data.values.clone() }, name));
            }
        }
        let value = data.scalar().ok_or("Expand is read only of a one-value constant (a zero initial state) or of a [1, R, D] constant to [N, R, D] (a class token)")?;
        filled(dims, value)
    }
    fn slice(&mut self, n: &NodeProto) -> R<Val> {
        if let Val::ZeroState = self.input_val(n, 0)? {
            return Ok(Val::ZeroState);
        }
        let ints = |k: usize, attr: &str| -> R<Option<Vec<i64>>> {
            if self.opset >= 10 {
                Ok(match self.opt_const(n, k)? {
                    Some(c) => Some(c.i64s().ok_or_else(|| format!("input {k} must hold integers"))?.to_vec()),
                    None => None,
                })
            } else {
                attr_ints(n, attr)
            }
        };
        let starts = ints(1, "starts")?.ok_or("'starts' is missing")?;
        let ends = ints(2, "ends")?.ok_or("'ends' is missing")?;
        let axes = ints(3, "axes")?.unwrap_or((0..starts.len() as i64).collect());
        let steps = ints(4, "steps")?.unwrap_or(vec![1; starts.len()]);
        if let Val::Dyn(_) = self.input_val(n, 0)? {
            return self.narrow_slice(n, &starts, &ends, &axes, &steps);
        }
        if let Some((d, mut a)) = self.arranged_in(n, 0) {
            // One position of an axis (`unbind`'s parts): that index, as a unit axis.
            for (((&start, &end), &axis), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
                let len = a.dims()[from_end(axis, a.axes.len() as i64) as usize];
                let first = from_end(start, len).clamp(0, len);
                if step != 1 || from_end(end, len).clamp(0, len) != first + 1 {
                    return Err(format!("Slice of a rearranged tensor is read one position at a time (start {start}, end {end}, step {step})"));
                }
                a = a.pick(axis, first)?;
            }
            return self.settle(d, a);
        }
        // A constant of any rank: shape arithmetic, or the dynamo exporter cutting a recurrent
        // layer's weights into gate blocks.
        let data = self.const_in(n, 0)?;
        let rank = data.dims.len() as i64;
        if [ends.len(), axes.len(), steps.len()].iter().any(|&l| l != starts.len()) || steps.contains(&0) || axes.iter().any(|&a| !(-rank..rank).contains(&a)) {
            return Err(format!(
                "Slice of a constant of rank {rank} needs as many starts, ends, axes and steps, axes in range and non-zero steps (starts {starts:?}, ends {ends:?}, axes {axes:?}, steps {steps:?})"
            ));
        }
        // The indices kept along each axis.
        let mut picks: Vec<Vec<usize>> = data.dims.iter().map(|&d| (0..d).collect()).collect();
        for (((&start, &end), &axis), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
            let axis = from_end(axis, rank) as usize;
            let len = data.dims[axis] as i64;
            if len == 0 {
                continue;
            }
            let (mut i, end) =
                if step > 0 { (from_end(start, len).clamp(0, len), from_end(end, len).clamp(0, len)) } else { (from_end(start, len).clamp(0, len - 1), from_end(end, len).clamp(-1, len - 1)) };
            let mut pick = vec![];
            while (step > 0 && i < end) || (step < 0 && i > end) {
                pick.push(i as usize);
                let Some(next) = i.checked_add(step) else { break };
                i = next;
            }
            picks[axis] = pick;
        }
        let dims: Vec<usize> = picks.iter().map(Vec::len).collect();
        let mut strides = vec![1usize; data.dims.len()];
        for k in (0..data.dims.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * data.dims[k + 1];
        }
        // Row-major over the kept indices: the flat input index of every output element.
        let mut at = vec![0usize];
        for (pick, stride) in picks.iter().zip(&strides) {
            at = at.iter().flat_map(|&a| pick.iter().map(move |&p| a + p * stride)).collect();
        }
        Ok(Val::Const(Const { dims, values: data.values.pick(at.into_iter()) }))
    }

    /// `Slice` of a computed tensor (PyTorch's `x[:, a:b]`, `narrow`, one half of `chunk` in the
    /// legacy exporter): a `narrow` for each axis it cuts, in step 1.
    fn narrow_slice(&mut self, n: &NodeProto, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> R<Val> {
        let mut x = self.exact_in(n, 0)?;
        if [ends.len(), axes.len(), steps.len()].iter().any(|&l| l != starts.len()) {
            return Err(format!("needs as many starts, ends, axes and steps (starts {starts:?}, ends {ends:?}, axes {axes:?}, steps {steps:?})"));
        }
        for (((&start, &end), &axis), &step) in starts.iter().zip(ends).zip(axes).zip(steps) {
            let a = sample_axis(axis, &x)?;
            if step != 1 {
                return Err(format!("step {step} along axis {axis}; wick's narrow takes consecutive positions (step 1)"));
            }
            let len = x.onnx_shape[a - 1] as i64;
            let (first, last) = (from_end(start, len).clamp(0, len), from_end(end, len).clamp(0, len));
            if last <= first {
                return Err(format!("starts {start} and ends {end} keep nothing of axis {axis} (size {len})"));
            }
            if last - first == len {
                continue;
            }
            let name = self.plain_node_name(n, "narrow");
            let cfg = arch::NarrowCfg { dim: a as i64, start: first, length: (last - first) as usize };
            x = self.emit(name, &[&x], Op::Narrow(cfg), vec![])?;
        }
        Ok(Val::Dyn(x))
    }

    /// `Split` of a computed tensor (`x.chunk(k, dim)`, `x.split(sizes, dim)`): a `narrow` for
    /// each output, `split`'s sizes or (without them) equal parts, the last one shorter when the
    /// axis does not divide (ONNX's rule, and `chunk`'s).
    fn split(&mut self, n: &NodeProto) -> R<Val> {
        let axis = attr_i(n, "axis")?.unwrap_or(0);
        if let Some((d, a)) = self.arranged_in(n, 0) {
            // `unbind` of a rearranged tensor: one position of the axis per output.
            let len = a.dims()[from_end(axis, a.axes.len() as i64).clamp(0, a.axes.len() as i64 - 1) as usize];
            if len != n.output.len() as i64 {
                return Err(format!("Split of a rearranged tensor is read one position per output; this one splits {len} positions into {} outputs", n.output.len()));
            }
            let mut outs = vec![];
            for k in 0..len {
                outs.push(self.settle(d.clone(), a.pick(axis, k)?)?);
            }
            for (out, v) in n.output.iter().zip(&outs).skip(1) {
                self.vals.insert(out.clone(), v.clone());
            }
            return Ok(outs.swap_remove(0));
        }
        let x = self.exact_in(n, 0)?;
        let a = sample_axis(axis, &x)?;
        let len = x.onnx_shape[a - 1];
        let given = match self.opset >= 13 {
            true => self.opt_const(n, 1)?.map(|c| c.i64s().map(<[i64]>::to_vec).ok_or("input 1 ('split') must hold integers")).transpose()?,
            false => attr_ints(n, "split")?,
        };
        let sizes: Vec<usize> = match given {
            Some(v) => v.iter().map(|&s| usize::try_from(s).ok().filter(|&s| s > 0).ok_or_else(|| format!("split size {s} is not positive"))).collect::<R<_>>()?,
            None => {
                let parts = attr_i(n, "num_outputs")?.map_or(n.output.len(), |k| k.max(1) as usize);
                let each = len.div_ceil(parts);
                (0..parts).map(|k| each.min(len.saturating_sub(k * each))).filter(|&s| s > 0).collect()
            }
        };
        if sizes.iter().sum::<usize>() != len || sizes.len() != n.output.len() {
            return Err(format!("sizes {sizes:?} for {} outputs do not cover axis {axis} of size {len}", n.output.len()));
        }
        let mut start = 0;
        let mut outs = vec![];
        for &length in &sizes {
            let name = self.plain_node_name(n, "narrow");
            let cfg = arch::NarrowCfg { dim: a as i64, start: start as i64, length };
            outs.push(Val::Dyn(self.emit(name, &[&x], Op::Narrow(cfg), vec![])?));
            start += length;
        }
        for (out, v) in n.output.iter().zip(&outs).skip(1) {
            self.vals.insert(out.clone(), v.clone());
        }
        Ok(outs.swap_remove(0))
    }

    fn concat(&mut self, n: &NodeProto) -> R<Val> {
        let axis = attr_i(n, "axis")?.ok_or("attribute 'axis' is missing")?;
        let vals: Vec<Val> = (0..n.input.len()).map(|k| self.input_val(n, k).cloned()).collect::<R<_>>()?;
        if vals.iter().any(|v| matches!(v, Val::FinalStates(_))) {
            // Stacked layers' final states, in layer order.
            return match axis {
                0 => vals
                    .into_iter()
                    .map(|v| if let Val::FinalStates(l) = v { Ok(l) } else { Err("final states are joined only with other final states".to_string()) })
                    .collect::<R<Vec<_>>>()
                    .map(|l| Val::FinalStates(l.concat())),
                _ => Err("final states are joined along axis 0 (the layers)".into()),
            };
        }
        if vals.iter().all(|v| matches!(v, Val::Const(_))) {
            return concat_consts(&vals, axis).map(Val::Const);
        }
        if let [Val::BatchRows(rows, from), Val::Dyn(_)] = vals.as_slice() {
            // Learned rows before the positions (a class token).
            let x = self.exact_in(n, 1)?;
            let (r, d) = (rows.dims[0], rows.dims[1]);
            if x.shape.len() != 2 || x.shape[1] != d || from_end(axis, 3) != 1 {
                return Err(format!("a [N, {r}, {d}] constant is joined only before the positions of an [N, L, {d}] value (axis 1); this one has shape {:?}, axis {axis}", x.shape));
            }
            let name = match from.contains("::") || from.contains('/') {
                true => self.plain_node_name(n, "prepend_rows"),
                false => self.fresh(from),
            };
            let op = Op::PrependRows(arch::PrependRowsCfg { num_rows: r, embedding_dim: d });
            return Ok(Val::Dyn(self.emit(name, &[&x], op, vec![("weight", vec![r, d], rows.f32s())])?));
        }
        let ins: Vec<Dyn> = (0..n.input.len()).map(|k| self.exact_in(n, k)).collect::<R<_>>()?;
        let name = self.plain_node_name(n, "concat");
        let refs: Vec<&Dyn> = ins.iter().collect();
        Ok(Val::Dyn(self.emit(name, &refs, Op::Concat(arch::DimCfg { dim: axis }), vec![])?))
    }

    fn squeeze(&mut self, n: &NodeProto) -> R<Val> {
        let axes: Option<Vec<i64>> = if self.opset >= 13 { self.opt_const(n, 1)?.map(|c| c.i64s().map(<[i64]>::to_vec).ok_or("axes must be integers")).transpose()? } else { attr_ints(n, "axes")? };
        let unsqueeze = n.op_type == "Unsqueeze";
        if let Val::FinalStates(layers) = self.input_val(n, 0)?.clone() {
            // `Y_h [1, N, H]` of one layer without its layer axis.
            return match (layers.as_slice(), axes.as_deref()) {
                ([y], Some([0])) if !unsqueeze => self.last_step(n, y).map(Val::Dyn),
                _ => Err("final states are read as Squeeze(axes = [0]) of one layer's Y_h, or one layer of them by Gather".into()),
            };
        }
        if let Val::RnnOutput(d, 1) = self.input_val(n, 0)? {
            // `Y [T, 1, N, H]` without its direction axis is the time-major output sequence.
            return match axes.as_deref() {
                Some([1]) if !unsqueeze => Ok(Val::TimeMajor(d.clone())),
                _ => Err("a GRU/LSTM output is read as Squeeze(axes = [1]) of a one-direction Y".into()),
            };
        }
        if let Some((d, a)) = self.arranged_in(n, 0) {
            let a = if unsqueeze { a.unsqueeze(axes.as_deref().ok_or("Unsqueeze needs axes")?)? } else { a.squeeze(axes.as_deref())? };
            return self.settle(d, a);
        }
        let (full, d) = match self.input_val(n, 0)? {
            Val::Const(c) => (c.dims.clone(), None),
            Val::Dyn(d) => (std::iter::once(0).chain(d.onnx_shape.iter().copied()).collect(), Some(d.clone())),
            _ => return Err(pattern_err(&n.input[0])),
        };
        let out = squeezed(&full, axes.as_deref(), unsqueeze)?;
        match d {
            None => {
                let Val::Const(c) = self.input_val(n, 0)? else { unreachable!("matched above") };
                Ok(Val::Const(Const { dims: out, values: c.values.clone() }))
            }
            Some(d) => {
                if out.first() != Some(&0) || axes.as_deref().is_some_and(|a| a.contains(&0)) {
                    return Err("squeezing or unsqueezing the batch dim is not supported".into());
                }
                self.view(n, d, out[1..].to_vec())
            }
        }
    }

    /// `ConstantOfShape`: a constant, or a zero state when its shape holds the batch size.
    fn constant_of_shape(&self, n: &NodeProto) -> R<Val> {
        let shape = self.const_in(n, 0)?;
        let dims = shape.i64s().ok_or("the shape must hold integers")?;
        let value = match n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
            Some(t) => tensor::read(t, "value", self.dir).map_err(|e| e.to_string())?.scalar().ok_or("value must hold one number")?,
            None => 0.0,
        };
        filled(dims, value)
    }

    /// ONNX `GRU` / `LSTM` (time-major, one layer per node) as wick's batch-first op with
    /// PyTorch's gate order: ONNX GRU blocks z, r, h become r, z, n (and `linear_before_reset`
    /// must be 1, PyTorch's formula); ONNX LSTM blocks i, o, f, c become i, f, g, o.
    fn recurrent(&mut self, n: &NodeProto) -> R<Val> {
        let gru = n.op_type == "GRU";
        let Val::TimeMajor(x) = self.input_val(n, 0)?.clone() else {
            return Err("X must be the model's batch-first sequence transposed to time-major (Transpose perm [1, 0, 2]); the layout attribute is not read".into());
        };
        if self.opt_in(n, 4)?.is_some() {
            return Err("input sequence_lens is given; wick runs every sequence to its full length".into());
        }
        for k in if gru { vec![5] } else { vec![5, 6] } {
            match self.opt_in(n, k)? {
                None | Some(Val::ZeroState) => {}
                Some(Val::Const(c)) if c.f32s().iter().all(|&v| v == 0.0) => {}
                Some(_) => return Err(format!("input {k} (an initial state) is not zero; wick's recurrent ops start from zeros")),
            }
        }
        if !gru && self.opt_in(n, 7)?.is_some() {
            return Err("peephole weights P are not read (PyTorch's LSTM has none)".into());
        }
        for a in ["activations", "activation_alpha", "activation_beta", "clip", "input_forget"] {
            if n.attribute.iter().any(|x| x.name == a) && !(a == "input_forget" && attr_i(n, a)? == Some(0)) {
                return Err(format!("attribute '{a}' is set; wick reads the default activations without clipping (PyTorch's)"));
            }
        }
        if attr_i(n, "layout")?.unwrap_or(0) != 0 {
            return Err("layout = 1 (batch-first X) is not read; PyTorch's exporters write layout 0".into());
        }
        if gru && attr_i(n, "linear_before_reset")?.unwrap_or(0) != 1 {
            return Err("linear_before_reset = 0 is not PyTorch's GRU (which applies the reset gate after W_hn h + b_hn)".into());
        }
        let dirs = match attr_s(n, "direction")?.as_deref().unwrap_or("forward") {
            "forward" => 1,
            "bidirectional" => 2,
            other => return Err(format!("direction '{other}' has no PyTorch counterpart wick reads (forward, bidirectional)")),
        };
        // Which of Y, Y_h and Y_c a later node reads.
        let read: [bool; 3] = std::array::from_fn(|k| n.output.get(k).is_some_and(|o| self.uses.get(o).is_some_and(|&u| u > 0)));
        if read[2] {
            return Err("output 2 (the LSTM's final cell state Y_c) is read; wick reads Y and, for one direction, Y_h".into());
        }
        if read[1] && dirs == 2 {
            return Err("output 1 (the final states Y_h) of a bidirectional layer is read; wick reads Y_h of one-direction layers (read Y instead)".into());
        }
        let hidden = usize::try_from(attr_i(n, "hidden_size")?.ok_or("attribute 'hidden_size' is missing")?).ok().filter(|&h| h > 0).ok_or("hidden_size must be positive")?;
        let gates = if gru { 3 } else { 4 };
        let input_size = x.shape[1];
        let (w, r, b) = (self.const_in(n, 1)?, self.const_in(n, 2)?, self.opt_const(n, 3)?);
        let rows = gates * hidden;
        if w.dims != [dirs, rows, input_size] || r.dims != [dirs, rows, hidden] || b.as_ref().is_some_and(|b| b.dims != [dirs, 2 * rows]) {
            return Err(format!("W {:?}, R {:?}, B {:?} do not fit {dirs} direction(s) of {gates} gates of {hidden} units over {input_size} inputs", w.dims, r.dims, b.as_ref().map(|b| &b.dims)));
        }
        let reorder = |v: &[f32], cols: usize| super::reorder_gates(v, gru, false, hidden, cols);
        let (wv, rv, bv) = (w.f32s(), r.f32s(), b.as_ref().map(Const::f32s));
        let mut params = vec![];
        for d in 0..dirs {
            let [w_ih, w_hh, b_ih, b_hh] = arch::rnn_params(0, d == 1);
            params.push((w_ih, vec![rows, input_size], reorder(&wv[d * rows * input_size..(d + 1) * rows * input_size], input_size)));
            params.push((w_hh, vec![rows, hidden], reorder(&rv[d * rows * hidden..(d + 1) * rows * hidden], hidden)));
            if let Some(bv) = &bv {
                let both = &bv[d * 2 * rows..(d + 1) * 2 * rows];
                params.push((b_ih, vec![rows], reorder(&both[..rows], 1)));
                params.push((b_hh, vec![rows], reorder(&both[rows..], 1)));
            }
        }
        let cfg = arch::RnnCfg { input_size, hidden_size: hidden, num_layers: 1, bias: b.is_some(), batch_first: true, bidirectional: dirs == 2 };
        let op = if gru { Op::Gru(cfg) } else { Op::Lstm(cfg) };
        let name = self.param_node_name(n, if gru { "gru" } else { "lstm" });
        let y = self.emit(name, &[&x], op, params)?;
        if read[1] {
            // A one-direction layer's final state is its output's last step.
            self.vals.insert(n.output[1].clone(), Val::FinalStates(vec![y.clone()]));
        }
        Ok(Val::RnnOutput(y, dirs))
    }

    /// `Transpose`: of a constant (an exporter's transposed weight), folded; of a sequence, the
    /// time-major view GRU and LSTM read and write (`perm [1, 0, 2]`; `[2, 0, 1]` reads a
    /// conv's `[N, C, T]` as steps of C features, `[1, 2, 0]` writes the steps back as
    /// `[N, H, T]`); of any other computed tensor with the batch kept first, wick `transpose`
    /// nodes, one per swap of the permutation.
    fn transpose(&mut self, n: &NodeProto) -> R<Val> {
        let perm = attr_ints(n, "perm")?;
        let is = |p: &[i64]| perm.as_deref() == Some(p);
        let exact = |d: &Dyn| d.shape == d.onnx_shape;
        if let (Some((d, a)), Some(p)) = (self.arranged_in(n, 0), &perm) {
            return self.settle(d, a.transpose(p)?);
        }
        match self.input_val(n, 0)?.clone() {
            Val::RnnOutput(d, dirs) if is(&[0, 2, 1, 3]) => return Ok(Val::RnnOutputByStep(d, dirs)),
            Val::Dyn(d) if is(&[1, 0, 2]) && d.shape.len() == 2 && exact(&d) => return Ok(Val::TimeMajor(d)),
            Val::Dyn(d) if is(&[2, 0, 1]) && d.shape.len() == 2 && exact(&d) => return Ok(Val::TimeMajor(self.swap_axes(n, &d, 1, 2)?)),
            Val::TimeMajor(d) if is(&[1, 0, 2]) => return Ok(Val::Dyn(d)),
            Val::TimeMajor(d) if is(&[1, 2, 0]) => return Ok(Val::Dyn(self.swap_axes(n, &d, 1, 2)?)),
            Val::Dyn(d) if exact(&d) && perm.as_ref().is_some_and(|p| p.first() == Some(&0) && is_permutation(p, d.shape.len() + 1)) => {
                // Swaps that turn the identity into `perm` (output axis k is input axis perm[k]).
                let perm = perm.expect("checked above");
                let mut cur: Vec<i64> = (0..perm.len() as i64).collect();
                let mut x = d;
                for k in 1..perm.len() {
                    if cur[k] != perm[k] {
                        let j = (k + 1..perm.len()).find(|&j| cur[j] == perm[k]).expect("a permutation holds every axis");
                        cur.swap(k, j);
                        x = self.swap_axes(n, &x, k, j)?;
                    }
                }
                return Ok(Val::Dyn(x));
            }
            // A perm that moves the batch: followed as a rearrangement until it comes back first.
            Val::Dyn(d) if perm.is_some() => {
                let d = self.in_onnx_shape(d)?;
                let (d, a) = self.traced(d);
                let a = a.transpose(perm.as_deref().expect("checked"))?;
                return self.settle(d, a);
            }
            Val::Dyn(_) | Val::TimeMajor(_) => return Err("Transpose of a computed tensor without perm reverses the batch with the other axes; wick reads an explicit perm".into()),
            _ => {}
        }
        let c = self.const_in(n, 0).map_err(|_| "Transpose is read only on constants (wick's ops fix their own layouts)".to_string())?;
        let rank = c.dims.len();
        let perm: Vec<usize> = match perm {
            None => (0..rank).rev().collect(),
            Some(p) if is_permutation(&p, rank) => p.iter().map(|&a| a as usize).collect(),
            Some(p) => return Err(format!("perm {p:?} is not a permutation of {rank} axes")),
        };
        // out[i] = in[j] where out index (o_0..) maps to in index with in[perm[k]] = o_k.
        let dims: Vec<usize> = perm.iter().map(|&a| c.dims[a]).collect();
        let mut in_strides = vec![1usize; rank];
        for k in (0..rank.saturating_sub(1)).rev() {
            in_strides[k] = in_strides[k + 1] * c.dims[k + 1];
        }
        let numel = c.numel();
        let src = |o: usize| {
            let (mut rem, mut at) = (o, 0);
            for k in (0..rank).rev() {
                at += (rem % dims[k]) * in_strides[perm[k]];
                rem /= dims[k];
            }
            at
        };
        let values = c.values.pick((0..numel).map(src));
        Ok(Val::Const(Const { dims, values }))
    }

    /// Input `k` as a rearrangement of a wick value: a rearranged value, or a sequence seen
    /// time-major.
    fn arranged_in(&self, n: &NodeProto, k: usize) -> Option<(Dyn, Arrangement)> {
        match self.opt_in(n, k).ok().flatten()? {
            Val::Arranged(d, a) => Some((d.clone(), a.clone())),
            Val::TimeMajor(d) if d.shape == d.onnx_shape => Some((d.clone(), Arrangement::of(&d.shape).transpose(&[1, 0, 2]).ok()?)),
            _ => None,
        }
    }

    /// Input `k` for attention: as [`Importer::arranged_in`], or a computed value (times a
    /// scalar) traced back through the `reshape`, `flatten` and `transpose` nodes that made it
    /// from another value, as heads split with the batch kept first (`view(N, L, H, d)` and
    /// `transpose(1, 2)`) are. Nodes the trace passes stay unless nothing else reads them.
    fn attention_in(&self, n: &NodeProto, k: usize) -> Option<(Dyn, Arrangement)> {
        if let Some(found) = self.arranged_in(n, k) {
            return Some(found);
        }
        let (d, scale) = match self.opt_in(n, k).ok().flatten()? {
            Val::Dyn(d) => (d.clone(), 1.0),
            Val::Scaled(d, s) => (d.clone(), *s),
            _ => return None,
        };
        let (d, a) = self.traced(d);
        Some((d, Arrangement { scale: a.scale * scale, ..a }))
    }

    /// `d` (held as ONNX shapes it) as a rearrangement of the value the `reshape`, `flatten` and
    /// `transpose` nodes that made it started from; `d` itself when there are none.
    fn traced(&self, d: Dyn) -> (Dyn, Arrangement) {
        let mut steps = vec![];
        let mut src = d.clone();
        while let Some(node) = self.nodes.iter().find(|m| m.name == src.name && matches!(m.op, Op::Reshape(_) | Op::Flatten(_) | Op::Transpose(_))) {
            let Some(shape) = self.shapes.get(&node.inputs[0]) else { break };
            steps.push((node.op.clone(), src.shape.clone()));
            src = Dyn { name: node.inputs[0].clone(), onnx_shape: shape.clone(), shape: shape.clone() };
        }
        let mut a = Arrangement::of(&src.shape);
        for (op, out) in steps.iter().rev() {
            let next = match op {
                Op::Transpose(c) => {
                    let mut perm: Vec<i64> = (0..a.axes.len() as i64).collect();
                    match (usize::try_from(c.dim0), usize::try_from(c.dim1)) {
                        (Ok(i), Ok(j)) if i < perm.len() && j < perm.len() => perm.swap(i, j),
                        _ => return (d.clone(), Arrangement::of(&d.shape)),
                    }
                    a.transpose(&perm)
                }
                _ => a.reshape(&std::iter::once(BATCH).chain(out.iter().map(|&v| v as i64)).collect::<Vec<_>>(), false),
            };
            match next {
                Ok(next) => a = next,
                Err(_) => return (d.clone(), Arrangement::of(&d.shape)),
            }
        }
        (src, a)
    }

    /// Rearrangement `a` of `d` as the value it is: `d` under the dims ONNX gives it when the
    /// batch is first again and the order the source's (a reader that needs those dims gets a
    /// `reshape`), a time-major sequence, else the rearrangement itself.
    fn settle(&mut self, d: Dyn, a: Arrangement) -> R<Val> {
        if let Some(onnx_shape) = a.batch_first() {
            return Ok(Val::Dyn(Dyn { onnx_shape, ..d }));
        }
        if d.shape.len() == 2 && Arrangement::of(&d.shape).transpose(&[1, 0, 2]).as_ref() == Ok(&a) {
            return Ok(Val::TimeMajor(d));
        }
        Ok(Val::Arranged(d, a))
    }

    /// The features `h` reads of its source `d` `[L, F]`: `d`, or a `narrow` of them.
    fn head_source(&mut self, d: &Dyn, h: &Heads) -> R<Dyn> {
        let width = h.heads() * h.head_dim();
        if h.start == 0 && width == d.shape[1] {
            return Ok(d.clone());
        }
        let name = self.fresh(&format!("{}.narrow", d.name));
        self.emit(name, &[d], Op::Narrow(arch::NarrowCfg { dim: 2, start: h.start as i64, length: width }), vec![])
    }

    /// `MatMul` of two computed tensors: attention's `q·kᵀ` per head, or its weights times `v`
    /// (then one `attention` node).
    fn attention_matmul(&mut self, n: &NodeProto) -> R<Val> {
        let not_attention = "MatMul of two computed tensors is read only as attention: q·kᵀ of [N, heads, L, head dim] views, softmax over the keys, times v";
        if let Val::Scores { q, k, heads, scale, probs: true } = self.input_val(n, 0)?.clone() {
            let (vd, va) = self.attention_in(n, 1).ok_or(not_attention)?;
            let hv = va.heads(false)?;
            if !heads.same_split(&hv) || hv.scale != 1.0 {
                return Err(format!("v's heads ({} of {} dims) differ from q's ({} of {})", hv.heads(), hv.head_dim(), heads.heads(), heads.head_dim()));
            }
            // PyTorch's default `1/√d` (computed from `Shape` by the legacy exporter, or split
            // between q and k) is the op's default; any other factor is its `scale`.
            let default = 1.0 / (heads.head_dim() as f32).sqrt();
            let scale = ((scale - default).abs() > 1e-6 * default).then_some(scale as f64);
            if scale.is_some_and(|s| !s.is_finite()) {
                return Err(format!("the attention scores are scaled by {scale:?}, not a finite number"));
            }
            let v = self.head_source(&vd, &hv)?;
            let name = self.plain_node_name(n, "attention");
            let o = self.emit(name, &[&q, &k, &v], Op::Attention(arch::AttentionCfg { num_heads: heads.heads(), pad_id: 0, scale }), vec![])?;
            return self.settle(o, heads.output());
        }
        let ((qd, qa), (kd, ka)) = (self.attention_in(n, 0).ok_or(not_attention)?, self.attention_in(n, 1).ok_or(not_attention)?);
        let (hq, hk) = (qa.heads(false)?, ka.heads(true)?);
        if !hq.same_split(&hk) {
            return Err(format!("k's heads ({} of {} dims) differ from q's ({} of {})", hk.heads(), hk.head_dim(), hq.heads(), hq.head_dim()));
        }
        let (q, k) = (self.head_source(&qd, &hq)?, self.head_source(&kd, &hk)?);
        Ok(Val::Scores { q, k, scale: hq.scale * hk.scale, heads: Heads { scale: 1.0, ..hq }, probs: false })
    }

    /// The last step of batch-first sequence `y` (`[N, T, H]` → `[N, H]`), named after node `n`.
    fn last_step(&mut self, n: &NodeProto, y: &Dyn) -> R<Dyn> {
        let name = self.plain_node_name(n, "last_step");
        self.emit(name, &[y], Op::Select(arch::SelectCfg { dim: 1, index: -1 }), vec![])
    }

    /// A wick `transpose` of full-tensor axes `a` and `b` of `x`, named `{module}.transpose`
    /// after node `n`'s module path (a GRU's own time-major transpose must not take the GRU's
    /// name).
    fn swap_axes(&mut self, n: &NodeProto, x: &Dyn, a: usize, b: usize) -> R<Dyn> {
        let name = self.fresh(&scope_path(&n.name).map_or("transpose".to_string(), |s| format!("{s}.transpose")));
        self.emit(name, &[x], Op::Transpose(arch::TransposeCfg { dim0: a as i64, dim1: b as i64 }), vec![])
    }

    /// `x` seen with per-sample shape `target`: the same node when wick already computes that
    /// shape, else a flatten of consecutive dims, else a `reshape`.
    fn view(&mut self, n: &NodeProto, x: Dyn, target: Vec<usize>) -> R<Val> {
        // Unit dims do not change the layout, so a target that only adds them to what wick
        // computes is the same node; ops that read dims by position check `exact` first.
        if x.shape == target || (!x.shape.contains(&1) && strip_ones(&target) == x.shape) {
            return Ok(Val::Dyn(Dyn { onnx_shape: target, ..x }));
        }
        // A flatten of dims a..=b: the target is the shape with those dims multiplied together.
        let s = &x.shape;
        for a in 0..s.len() {
            for b in a + 1..s.len() {
                let mut f: Vec<usize> = s[..a].to_vec();
                f.push(s[a..=b].iter().product());
                f.extend_from_slice(&s[b + 1..]);
                if f == target {
                    let name = self.plain_node_name(n, "flatten");
                    let op = Op::Flatten(arch::FlattenCfg { start_dim: a as i64 + 1, end_dim: b as i64 + 1 });
                    return Ok(Val::Dyn(self.emit(name, &[&x], op, vec![])?));
                }
            }
        }
        if x.shape.iter().product::<usize>() != target.iter().product::<usize>() {
            return Err(format!("reshapes {:?} to {target:?} per sample, which holds another number of elements", x.onnx_shape));
        }
        let name = self.plain_node_name(n, "reshape");
        let shape = target.iter().map(|&d| d as i64).collect();
        Ok(Val::Dyn(self.emit(name, &[&x], Op::Reshape(arch::ReshapeCfg { shape }), vec![])?))
    }

    /// `Reshape` of a constant (shape arithmetic, the dynamo exporter's `[D·H]` from `D · H`):
    /// the same values under the target dims (0 keeps a dim unless `allowzero`, one −1 takes the
    /// rest).
    fn reshape_const(&self, n: &NodeProto, c: Const) -> R<Val> {
        let spec = self.const_in(n, 1)?;
        let spec = spec.i64s().ok_or("the target shape must hold integers")?;
        let allowzero = attr_i(n, "allowzero")?.unwrap_or(0) != 0;
        let numel = c.numel();
        let dims: Vec<i64> = spec.iter().enumerate().map(|(i, &d)| if d == 0 && !allowzero { c.dims.get(i).map_or(0, |&v| v as i64) } else { d }).collect();
        let known =
            dims.iter().filter(|&&d| d != -1).try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d))).ok_or_else(|| format!("target shape {spec:?} holds an invalid dim"))?;
        let dims: Vec<usize> = match dims.iter().filter(|&&d| d == -1).count() {
            0 => dims.iter().map(|&d| d as usize).collect(),
            1 => infer_minus_one(&dims, numel, known)?,
            _ => return Err(format!("cannot reshape a constant of {numel} values to {spec:?}")),
        };
        if dims.iter().product::<usize>() != numel {
            return Err(format!("cannot reshape a constant of {numel} values to {spec:?}"));
        }
        Ok(Val::Const(Const { dims, values: c.values }))
    }
    fn reshape(&mut self, n: &NodeProto) -> R<Val> {
        if let Val::RnnOutputByStep(d, _) = self.input_val(n, 0)? {
            // [T, N, D, H] to [T, N, D·H]: the spec keeps the first two dims (0 or their sizes)
            // and merges the last two (-1 or D·H).
            let d = d.clone();
            let spec = self.const_in(n, 1)?;
            let spec = spec.i64s().ok_or("the target shape must hold integers")?;
            let width = d.shape[1] as i64;
            let ok = spec.len() == 3 && (spec[0] == 0 || spec[0] == d.shape[0] as i64) && matches!(spec[1], 0 | BATCH) && (spec[2] == -1 || spec[2] == width);
            return if ok { Ok(Val::TimeMajor(d)) } else { Err(format!("a GRU/LSTM output with its direction axis third is read reshaped to [T, N, D·H], not {spec:?}")) };
        }
        if let Val::Const(c) = self.input_val(n, 0)? {
            return self.reshape_const(n, c.clone());
        }
        let spec = self.const_in(n, 1)?;
        let spec = spec.i64s().ok_or("the target shape must hold integers")?.to_vec();
        let allowzero = attr_i(n, "allowzero")?.unwrap_or(0) != 0;
        if let Some((d, a)) = self.arranged_in(n, 0) {
            return self.settle(d, a.reshape(&spec, allowzero)?);
        }
        let x = self.dyn_in(n, 0)?;
        // A target that moves the batch or merges it with other dims: a rearrangement.
        let batch_inside = spec.iter().enumerate().any(|(i, &d)| batch_multiple(d).is_some_and(|k| i > 0 || k > 1));
        let sizes_after_first: Option<i64> = spec.get(1..).and_then(|r| r.iter().try_fold(1i64, |a, &d| (d > 0).then(|| a.saturating_mul(d))));
        let merges_batch = spec.first() == Some(&-1) && sizes_after_first.is_some_and(|p| p != x.onnx_shape.iter().product::<usize>() as i64);
        if batch_inside || merges_batch {
            let x = self.in_onnx_shape(x)?;
            let (x, a) = self.traced(x);
            let a = a.reshape(&spec, allowzero)?;
            return self.settle(x, a);
        }
        let full: Vec<i64> = std::iter::once(BATCH).chain(x.onnx_shape.iter().map(|&d| d as i64)).collect();
        let numel: usize = x.onnx_shape.iter().product();
        let dims: Vec<i64> = spec.iter().enumerate().map(|(i, &d)| if d == 0 && !allowzero { full.get(i).copied().unwrap_or(0) } else { d }).collect();
        let Some((&first, rest)) = dims.split_first() else { return Err("reshapes to a scalar".into()) };
        let known = |v: &[i64]| v.iter().filter(|&&d| d != -1).try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)));
        let rest_known = known(rest).ok_or_else(|| format!("target shape {spec:?} holds an invalid dim"))?;
        let minus_ones = rest.iter().filter(|&&d| d == -1).count();
        let target: Vec<usize> = match (first, minus_ones) {
            (BATCH, 0) => rest.iter().map(|&d| d as usize).collect(),
            (BATCH | -1, 1) if first == BATCH => infer_minus_one(rest, numel, rest_known)?,
            (-1, 0) if rest_known == numel => rest.iter().map(|&d| d as usize).collect(),
            (-1, _) => return Err(format!("target shape {spec:?} does not keep the batch dim first")),
            _ => return Err(format!("target shape {spec:?} fixes the batch dim to {first}; export with a dynamic batch")),
        };
        if target.iter().product::<usize>() != numel {
            return Err(format!("reshapes {:?} ({numel} values per sample) to {target:?}", x.onnx_shape));
        }
        self.view(n, x, target)
    }

    fn flatten(&mut self, n: &NodeProto) -> R<Val> {
        let x = self.dyn_in(n, 0)?;
        let rank = x.onnx_shape.len() as i64 + 1;
        let axis = attr_i(n, "axis")?.unwrap_or(1);
        let axis = from_end(axis, rank);
        if axis != 1 {
            return Err(format!("Flatten with axis {axis} merges the batch with other dims; wick reads axis 1"));
        }
        let numel = x.onnx_shape.iter().product();
        self.view(n, x, vec![numel])
    }

    fn binary(&mut self, n: &NodeProto) -> R<Val> {
        let op = n.op_type.as_str();
        // A clamp is never part of an arithmetic pattern: its `hardtanh` node, read as a tensor.
        for k in 0..2 {
            if matches!(self.input_val(n, k)?, Val::Clipped(..)) {
                self.dyn_in(n, k)?;
            }
        }
        let a = self.input_val(n, 0)?.clone();
        let b = self.input_val(n, 1)?.clone();
        let scalar = |v: &Val| match v {
            Val::Const(c) => c.scalar(),
            _ => None,
        };
        let val = match (op, &a, &b) {
            (_, Val::Const(x), Val::Const(y)) => Val::Const(fold(op, x, y)?),
            // Attention's scale, on q and k or on their product.
            ("Mul", Val::Arranged(d, r), c) | ("Mul", c, Val::Arranged(d, r)) if scalar(c).is_some() => Val::Arranged(d.clone(), Arrangement { scale: r.scale * scalar(c).expect("checked"), ..r.clone() }),
            ("Div", Val::Arranged(d, r), c) if scalar(c).is_some_and(|s| s != 0.0) => Val::Arranged(d.clone(), Arrangement { scale: r.scale / scalar(c).expect("checked"), ..r.clone() }),
            ("Mul" | "Div", Val::Scores { q, k, heads, scale, probs: false }, c) | ("Mul", c, Val::Scores { q, k, heads, scale, probs: false }) if scalar(c).is_some_and(|s| s != 0.0) => {
                let s = scalar(c).expect("checked");
                Val::Scores { q: q.clone(), k: k.clone(), heads: heads.clone(), scale: if op == "Div" { scale / s } else { scale * s }, probs: false }
            }
            // The bias of a linear whose rows ONNX holds in another order (time-major, heads).
            ("Add", Val::Arranged(..) | Val::TimeMajor(_), Val::Const(c)) | ("Add", Val::Const(c), Val::Arranged(..) | Val::TimeMajor(_)) => {
                let k = usize::from(matches!(a, Val::Const(_)));
                let (d, r) = self.arranged_in(n, k).ok_or_else(|| pattern_err(&n.input[k]))?;
                let width = *d.shape.last().unwrap_or(&1);
                if r.through_last_axis(width).is_none() {
                    return Err(format!("Add of a constant to a rearranged tensor {:?} is read only as a linear's bias over its last axis", r.dims()));
                }
                self.add_bias(&d, c)?;
                self.settle(d, r)?
            }
            ("Add", Val::Dyn(x), Val::Dyn(y)) => {
                let name = self.plain_node_name(n, "add");
                Val::Dyn(self.emit(name, &[x, y], Op::Add(arch::Empty {}), vec![])?)
            }
            // An int32 bias dequantised at `s_in·s_c` (a QDQ MatMul's, as wick writes it).
            ("Add", Val::Dyn(x), Val::Dequantized(c, codes)) | ("Add", Val::Dequantized(c, codes), Val::Dyn(x)) => match self.add_bias(x, c) {
                Ok(v) => v,
                // A position table dequantised from int8 rows (wick's QDQ export of one).
                Err(_) if is_position_table(x, c) => {
                    let v = self.add_positions(n, x, c)?;
                    if let Val::Dyn(y) = &v {
                        self.tables.insert(y.name.clone(), qweight(codes, &x.shape, 0)?);
                    }
                    v
                }
                Err(e) => return Err(e),
            },
            ("Add", Val::Dyn(x), Val::Const(c)) | ("Add", Val::Const(c), Val::Dyn(x)) => match self.add_bias(x, c) {
                Ok(v) => v,
                Err(_) if is_position_table(x, c) => self.add_positions(n, x, c)?,
                // Not a layer's bias: arithmetic on the value (an input's normalisation, `x + 1`).
                Err(bias) => self.shifted(&n.output[0], x, 1.0, 1.0, c).map_err(|m| format!("{bias}; as arithmetic: {m}"))?,
            },
            // `k·x ± c` or `c ± k·x` (`k` 1 for a plain tensor): one per-channel affine.
            ("Add" | "Sub", Val::Dyn(x) | Val::Scaled(x, _), Val::Const(c)) => {
                let sign = if op == "Sub" { -1.0 } else { 1.0 };
                self.shifted(&n.output[0], x, factor(&a), sign, c)?
            }
            ("Add" | "Sub", Val::Const(c), Val::Dyn(x) | Val::Scaled(x, _)) => {
                let sign = if op == "Sub" { -1.0 } else { 1.0 };
                self.shifted(&n.output[0], x, sign * factor(&b), 1.0, c)?
            }
            ("Add", Val::ErfOf(x), c) | ("Add", c, Val::ErfOf(x)) if scalar(c).is_some_and(|s| close(s, 1.0)) => Val::OnePlusErf { x: x.clone(), coef: 1.0, times_x: false },
            ("Div", Val::SoftplusOf(x, k), c) if scalar(c) == Some(*k) => {
                let name = self.plain_node_name(n, "softplus");
                Val::Dyn(self.emit(name, &[x], Op::Softplus(arch::SoftplusCfg { beta: *k as f64, threshold: 20.0 }), vec![])?)
            }
            ("Add", Val::AbsOf(x), c) | ("Add", c, Val::AbsOf(x)) if scalar(c) == Some(1.0) => Val::OnePlusAbs(x.clone()),
            ("Div", Val::Dyn(x), Val::OnePlusAbs(y)) if x.name == y.name => {
                let name = self.plain_node_name(n, "softsign");
                Val::Dyn(self.emit(name, &[x], Op::Softsign(arch::Empty {}), vec![])?)
            }
            ("Mul", Val::Dyn(x), Val::Dyn(y)) => match self.silu(n, x, y)?.map_or_else(|| self.mish(n, x, y), |v| Ok(Some(v)))? {
                Some(v) => v,
                None => {
                    let (x, y) = (self.exact_in(n, 0)?, self.exact_in(n, 1)?);
                    let name = self.plain_node_name(n, "mul");
                    Val::Dyn(self.emit(name, &[&x, &y], Op::Mul(arch::Empty {}), vec![])?)
                }
            },
            ("Mul", Val::Dyn(x), c) | ("Mul", c, Val::Dyn(x)) if scalar(c).is_some() => Val::Scaled(x.clone(), scalar(c).expect("checked")),
            ("Div", Val::Dyn(x), c) if scalar(c).is_some_and(|s| s != 0.0) => Val::Scaled(x.clone(), 1.0 / scalar(c).expect("checked")),
            ("Mul", Val::Dyn(x), Val::Const(c)) | ("Mul", Val::Const(c), Val::Dyn(x)) => {
                let scale = per_feature(c, x)?;
                let zeros = vec![0.0; scale.0.len()];
                self.channel_affine(&n.output[0], x, scale, zeros)?
            }
            ("Div", Val::Dyn(x), Val::Const(c)) => {
                let (scale, last) = per_feature(c, x)?;
                let zeros = vec![0.0; scale.len()];
                self.channel_affine(&n.output[0], x, (scale.iter().map(|v| 1.0 / v).collect(), last), zeros)?
            }
            ("Mul", Val::OnePlusErf { x, coef, times_x }, c) | ("Mul", c, Val::OnePlusErf { x, coef, times_x }) if scalar(c).is_some() => {
                Val::OnePlusErf { x: x.clone(), coef: coef * scalar(c).expect("checked"), times_x: *times_x }
            }
            ("Mul", Val::OnePlusErf { x, coef, times_x: false }, Val::Dyn(y)) | ("Mul", Val::Dyn(y), Val::OnePlusErf { x, coef, times_x: false }) if x.name == y.name => {
                Val::OnePlusErf { x: x.clone(), coef: *coef, times_x: true }
            }
            ("Mul", Val::OnePlusErf { x, coef, times_x: false }, Val::Scaled(y, k)) | ("Mul", Val::Scaled(y, k), Val::OnePlusErf { x, coef, times_x: false }) if x.name == y.name => {
                Val::OnePlusErf { x: x.clone(), coef: coef * k, times_x: true }
            }
            ("Add" | "Sub" | "Mul", Val::Scaled(..), _) | ("Add" | "Mul", _, Val::Scaled(..)) | ("Sub", Val::Dyn(_), Val::Scaled(..)) => {
                // A product by a constant read by arithmetic no pattern takes: its own node.
                let (x, y) = (self.dyn_in(n, 0)?, self.dyn_in(n, 1)?);
                let name = self.plain_node_name(n, &op.to_lowercase());
                match op {
                    "Add" => Val::Dyn(self.emit(name, &[&x, &y], Op::Add(arch::Empty {}), vec![])?),
                    "Mul" => Val::Dyn(self.emit(name, &[&x, &y], Op::Mul(arch::Empty {}), vec![])?),
                    _ => return Err("Sub of two computed tensors is not supported: wick reads Add and Mul of two tensors".into()),
                }
            }
            _ => {
                return Err(format!(
                    "{op} of these operands is not supported: wick reads Add and Mul of two tensors, a bias Add after MatMul or Conv, arithmetic with a scalar or a per-channel constant, x·sigmoid(x) (SiLU), the exact GELU pattern, and arithmetic on constants"
                ))
            }
        };
        if let Val::OnePlusErf { x, coef, times_x: true } = &val {
            if close(*coef, 0.5) {
                let name = self.plain_node_name(n, "gelu");
                return Ok(Val::Dyn(self.emit(name, &[x], Op::Gelu(arch::GeluCfg::default()), vec![])?));
            }
        }
        Ok(val)
    }

    /// `x·sigmoid(x)` as one SiLU node, if the product is one; the sigmoid node goes when this Mul
    /// is its only reader.
    fn silu(&mut self, n: &NodeProto, a: &Dyn, b: &Dyn) -> R<Option<Val>> {
        let is_sigmoid_of = |s: &Dyn, of: &Dyn| self.nodes.iter().any(|m| m.name == s.name && matches!(m.op, Op::Sigmoid(_)) && m.inputs == [of.name.clone()]);
        let (x, sigmoid) = if is_sigmoid_of(b, a) {
            (a, &b.name)
        } else if is_sigmoid_of(a, b) {
            (b, &a.name)
        } else {
            return Ok(None);
        };
        if self.producer_uses(sigmoid) == 1 {
            self.nodes.retain(|m| &m.name != sigmoid);
            self.names.remove(sigmoid);
        }
        let name = self.plain_node_name(n, "silu");
        Ok(Some(Val::Dyn(self.emit(name, &[x], Op::Silu(arch::Empty {}), vec![])?)))
    }

    /// `x·tanh(softplus(x))` as one Mish node, if the product is one (PyTorch's opset-17
    /// export); the tanh and softplus nodes go when each has no other reader.
    fn mish(&mut self, n: &NodeProto, a: &Dyn, b: &Dyn) -> R<Option<Val>> {
        let node = |name: &str| self.nodes.iter().find(|m| m.name == name);
        let is_mish_of = |t: &Dyn, x: &Dyn| match node(&t.name) {
            Some(tanh) if matches!(tanh.op, Op::Tanh(_)) => node(&tanh.inputs[0]).is_some_and(|sp| matches!(&sp.op, Op::Softplus(c) if c.beta == 1.0) && sp.inputs == [x.name.clone()]),
            _ => false,
        };
        let (x, tanh) = if is_mish_of(b, a) {
            (a, b.name.clone())
        } else if is_mish_of(a, b) {
            (b, a.name.clone())
        } else {
            return Ok(None);
        };
        let softplus = node(&tanh).expect("checked").inputs[0].clone();
        for step in [tanh, softplus] {
            if self.producer_uses(&step) == 1 {
                self.nodes.retain(|m| m.name != step);
                self.names.remove(&step);
            }
        }
        let name = self.plain_node_name(n, "mish");
        Ok(Some(Val::Dyn(self.emit(name, &[x], Op::Mish(arch::Empty {}), vec![])?)))
    }

    /// `PRelu(x, slope)` with a constant slope: one value, or one per channel (`[C, 1, …]`, as
    /// PyTorch writes `nn.PReLU(C)`).
    fn prelu(&mut self, n: &NodeProto) -> R<Val> {
        let x = self.dyn_in(n, 0)?;
        let slope = self.const_in(n, 1)?;
        let values = match slope.numel() {
            1 => slope.f32s(),
            _ => per_channel(&slope, &x).map_err(|m| format!("the slope: {m}"))?,
        };
        let (name, c) = (self.param_node_name(n, "prelu"), values.len());
        Ok(Val::Dyn(self.emit(name, &[&x], Op::Prelu(arch::PreluCfg { num_parameters: c }), vec![("weight", vec![c], values)])?))
    }

    /// `Where(beta·x > t, x, softplus_beta(x))`: the softplus node takes `t` as its threshold
    /// (PyTorch's dynamo export of `nn.Softplus`).
    fn softplus_switch(&mut self, n: &NodeProto) -> R<Val> {
        let err = || "Where is read only as softplus's switch to the identity, `Where(beta·x > threshold, x, softplus(x))`".to_string();
        let (Val::Above(x, k, t), Val::Dyn(y), Val::Dyn(sp)) = (self.input_val(n, 0)?.clone(), self.input_val(n, 1)?.clone(), self.input_val(n, 2)?.clone()) else { return Err(err()) };
        let uses = self.producer_uses(&sp.name);
        let node = self.nodes.iter_mut().find(|m| m.name == sp.name).ok_or_else(err)?;
        match &mut node.op {
            Op::Softplus(c) if c.beta == k as f64 && node.inputs == [x.name.clone()] && y.name == x.name && uses == 1 => c.threshold = t as f64,
            _ => return Err(err()),
        }
        Ok(Val::Dyn(sp))
    }

    /// `x + c` after a bias-free linear or conv (MatMul, or a Conv without bias) read only
    /// here: `c` becomes its bias.
    fn add_bias(&mut self, x: &Dyn, c: &Const) -> R<Val> {
        let producer_uses = self.producer_uses(&x.name);
        let Some(node) = self.nodes.iter_mut().find(|m| m.name == x.name) else { return Err("adding a constant to the model input is not supported".into()) };
        let channels = match &mut node.op {
            Op::Linear(cfg) if !cfg.bias => Some(cfg.out_features),
            Op::Conv1d(cfg) if !cfg.bias => Some(cfg.out_channels),
            Op::Conv2d(cfg) if !cfg.bias => Some(cfg.out_channels),
            _ => None,
        };
        let Some(channels) = channels.filter(|_| producer_uses == 1) else {
            return Err(format!("Add of a constant is read only as the bias of a MatMul or bias-free Conv whose output nothing else reads (node '{}' is {})", x.name, node.op.name()));
        };
        // The constant must broadcast along the channel axis only: [C], [1, C] for a linear;
        // [C, 1, …] or [1, C, 1, …] for a conv.
        let non_unit: Vec<usize> = c.dims.iter().copied().filter(|&d| d != 1).collect();
        let channel_axis_ok = match node.op {
            Op::Linear(_) => c.dims.last() == Some(&channels) || c.numel() == 1,
            _ => c.dims.len() <= x.shape.len() + 1 && c.dims.len() > x.shape.len() - 1 && c.dims[c.dims.len() - x.shape.len()] == channels,
        };
        if !(channel_axis_ok && (non_unit.len() <= 1)) {
            return Err(format!("the constant of shape {:?} is not a per-channel bias for {channels} channels", c.dims));
        }
        let v = c.f32s();
        let bias = if v.len() == 1 { vec![v[0]; channels] } else { v };
        match &mut node.op {
            Op::Linear(cfg) => cfg.bias = true,
            Op::Conv1d(cfg) => cfg.bias = true,
            Op::Conv2d(cfg) => cfg.bias = true,
            _ => unreachable!("checked above"),
        }
        self.params.insert(format!("{}.bias", x.name), (vec![channels], bias));
        Ok(Val::Dyn(x.clone()))
    }

    /// `x · scale_c + shift_c` per channel (per feature on the last axis when `scale.1`) as a
    /// `channel_affine` node named after `value`, or folded into `x`'s own `channel_affine` on
    /// the same axis when nothing else reads that node (`(x − mean) / std` is one node).
    fn channel_affine(&mut self, value: &str, x: &Dyn, scale: (Vec<f32>, bool), shift: Vec<f32>) -> R<Val> {
        let ((scale, last), uses, rank) = (scale, self.producer_uses(&x.name), x.shape.len());
        let same_axis = |m: &Node| matches!(&m.op, Op::ChannelAffine(c) if c.on_last_axis(rank) == last);
        if let Some(node) = self.nodes.iter().find(|m| m.name == x.name && same_axis(m)).filter(|_| uses == 1) {
            let [w, b] = ["weight", "bias"].map(|s| node.param(s));
            self.params.get_mut(&w).expect("an affine node's weight").1.iter_mut().zip(&scale).for_each(|(v, s)| *v *= s);
            let bv = &mut self.params.get_mut(&b).expect("an affine node's bias").1;
            bv.iter_mut().zip(scale.iter().zip(&shift)).for_each(|(v, (s, t))| *v = *v * s + t);
            return Ok(Val::Dyn(x.clone()));
        }
        let c = scale.len();
        let name = self.fresh(scope_path(value).as_deref().unwrap_or("affine"));
        let params = vec![("weight", vec![c], scale), ("bias", vec![c], shift)];
        let dim = if last { -1 } else { 1 };
        Ok(Val::Dyn(self.emit(name, &[x], Op::ChannelAffine(arch::ChannelAffineCfg { num_features: c, dim }), params)?))
    }

    /// `x · k + sign · c` with `c` a scalar or per-channel constant ([`Importer::channel_affine`]).
    fn shifted(&mut self, value: &str, x: &Dyn, k: f32, sign: f32, c: &Const) -> R<Val> {
        let (shift, last) = per_feature(c, x)?;
        let shift: Vec<f32> = shift.iter().map(|v| sign * v).collect();
        self.channel_affine(value, x, (vec![k; shift.len()], last), shift)
    }

    /// How many ONNX inputs read values computed by wick node `name` (as they are, time-major or
    /// rearranged).
    fn producer_uses(&self, name: &str) -> usize {
        self.vals.iter().filter(|(_, v)| matches!(v, Val::Dyn(d) | Val::TimeMajor(d) | Val::Arranged(d, _) if d.name == name)).map(|(k, _)| self.uses.get(k).copied().unwrap_or(0)).sum()
    }

    /// `x + c` for a position table `c` (see `is_position_table`): a `position_embedding` node.
    fn add_positions(&mut self, n: &NodeProto, x: &Dyn, c: &Const) -> R<Val> {
        let (l, d) = (x.shape[0], x.shape[1]);
        let table = n.input.iter().find(|i| matches!(self.vals.get(*i), Some(Val::Const(_)))).filter(|i| !i.contains("::") && !i.contains('/'));
        let name = match table {
            Some(t) => self.fresh(t.strip_suffix(".weight").unwrap_or(t)),
            None => self.plain_node_name(n, "position_embedding"),
        };
        let op = Op::PositionEmbedding(arch::PositionEmbeddingCfg { num_positions: l, embedding_dim: d, offset: 0 });
        Ok(Val::Dyn(self.emit(name, &[x], op, vec![("weight", vec![l, d], c.f32s())])?))
    }

    fn clip(&mut self, n: &NodeProto) -> R<Val> {
        let (lo, hi) = if self.opset >= 11 {
            (self.opt_const(n, 1)?.map(|c| c.scalar().ok_or("min must be a scalar")).transpose()?, self.opt_const(n, 2)?.map(|c| c.scalar().ok_or("max must be a scalar")).transpose()?)
        } else {
            (attr_f(n, "min")?, attr_f(n, "max")?)
        };
        let e = arch::Empty {};
        match (lo, hi) {
            (Some(l), Some(h)) if l == 0.0 && h == 6.0 => self.unary(n, Op::Relu6(e)),
            (Some(0.0), None) => self.unary(n, Op::Relu(e)),
            (Some(l), Some(h)) if l == 0.0 && h == f32::INFINITY => self.unary(n, Op::Relu(e)),
            (Some(l), Some(h)) if l < h => Ok(Val::Clipped(self.dyn_in(n, 0)?, l, h)),
            _ => Err(format!(
                "Clip to [{}, {}] is not supported; wick reads Clip(0, 6) as ReLU6, Clip(0) as ReLU, and a Clip before QuantizeLinear as a 7-bit input",
                lo.map_or("-inf".into(), |v| v.to_string()),
                hi.map_or("inf".into(), |v| v.to_string())
            )),
        }
    }

    fn softmax(&mut self, n: &NodeProto) -> R<Val> {
        if let Val::Scores { q, k, heads, scale, probs: false } = self.input_val(n, 0)?.clone() {
            let rank = heads.lead.len() as i64 + 2;
            let axis = attr_i(n, "axis")?.unwrap_or(if self.opset >= 13 { -1 } else { 1 });
            if from_end(axis, rank) != rank - 1 || n.op_type != "Softmax" {
                return Err(format!("attention scores are read through Softmax over the keys (the last axis), not {} over axis {axis}", n.op_type));
            }
            return Ok(Val::Scores { q, k, heads, scale, probs: true });
        }
        let x = self.exact_in(n, 0)?;
        let rank = x.shape.len() as i64 + 1;
        let default = if self.opset >= 13 { -1 } else { 1 };
        let axis = attr_i(n, "axis")?.unwrap_or(default);
        let axis = from_end(axis, rank);
        if self.opset < 13 && axis != rank - 1 {
            return Err(format!("before opset 13 {} flattens dims {axis}.. into one; wick reads it only over the last dim", n.op_type));
        }
        let cfg = arch::DimCfg { dim: axis };
        self.unary(n, if n.op_type == "LogSoftmax" { Op::LogSoftmax(cfg) } else { Op::Softmax(cfg) })
    }

    fn conv(&mut self, n: &NodeProto) -> R<Val> {
        let (x, input_q) = self.layer_in(n)?;
        let w = self.const_in(n, 1)?;
        let w_codes = self.codes_in(n, 1);
        let b = self.opt_const(n, 2)?;
        let spatial = w.dims.len().checked_sub(2).filter(|&s| s == 1 || s == 2).ok_or_else(|| format!("weight has shape {:?}; wick reads 1-D and 2-D convs", w.dims))?;
        let kernel: Vec<usize> = w.dims[2..].to_vec();
        if let Some(k) = attr_ints(n, "kernel_shape")? {
            if k.iter().map(|&v| v as usize).collect::<Vec<_>>() != kernel {
                return Err(format!("kernel_shape {k:?} disagrees with the weight's shape {:?}", w.dims));
            }
        }
        let strides = positive_list(n, "strides", spatial)?;
        let dilations = positive_list(n, "dilations", spatial)?;
        let in_len: Vec<usize> = x.onnx_shape.get(1..).map(<[usize]>::to_vec).unwrap_or_default();
        let sides = pads(n, spatial, &kernel, &strides, &dilations, &in_len)?;
        // Each dim's padding common to both sides stays the conv's; the rest is a `pad` before it.
        let pads: Vec<usize> = sides.iter().map(|&(b, e)| b.min(e)).collect();
        let extra: Vec<(usize, usize)> = sides.iter().zip(&pads).map(|(&(b, e), &p)| (b - p, e - p)).collect();
        let groups = attr_i(n, "group")?.unwrap_or(1);
        let groups = usize::try_from(groups).ok().filter(|&g| g > 0).ok_or_else(|| format!("group {groups} is not positive"))?;
        let out_channels = w.dims[0];
        let in_channels = w.dims[1].checked_mul(groups).ok_or_else(|| format!("group {groups} is too large"))?;
        if let Some(b) = &b {
            if b.numel() != out_channels {
                return Err(format!("bias has {} values for {out_channels} output channels", b.numel()));
            }
        }
        let bias = b.is_some();
        let op = if spatial == 1 {
            Op::Conv1d(arch::Conv1dCfg { in_channels, out_channels, kernel_size: kernel[0], stride: strides[0], padding: pads[0], dilation: dilations[0], groups, bias })
        } else {
            Op::Conv2d(arch::Conv2dCfg { in_channels, out_channels, kernel_size: pair(&kernel), stride: pair(&strides), padding: pair(&pads), dilation: pair(&dilations), groups, bias })
        };
        let mut params = vec![("weight", w.dims.clone(), w.f32s())];
        if let Some(b) = b {
            params.push(("bias", vec![out_channels], b.f32s()));
        }
        let name = self.param_node_name(n, "conv");
        let x = match extra.iter().any(|&p| p != (0, 0)) {
            true => {
                let pad = self.fresh(&format!("{name}.pad"));
                self.emit(pad, &[&x], Op::Pad(arch::PadCfg::from_per_dim(&extra, 0.0)), vec![])?
            }
            false => x,
        };
        if let Some(q) = input_q {
            let codes = w_codes.ok_or("the input is quantised (QuantizeLinear/DequantizeLinear) but the weight is not DequantizeLinear of int8 codes")?;
            self.layers.insert(name.clone(), QuantLayer { weight: qweight(&codes, &w.dims, 0)?, input: InputQuant::Static(q) });
        }
        Ok(Val::Dyn(self.emit(name, &[&x], op, params)?))
    }

    /// `Gemm`: `y = alpha·A·op(B) + beta·C` with `A` the input and `B`, `C` constants.
    fn gemm(&mut self, n: &NodeProto) -> R<Val> {
        if attr_i(n, "transA")?.unwrap_or(0) != 0 {
            return Err("transA = 1 transposes the batch; wick reads Gemm with transA = 0".into());
        }
        let b = self.const_in(n, 1)?;
        let c = self.opt_const(n, 2)?;
        let alpha = attr_f(n, "alpha")?.unwrap_or(1.0);
        let beta = attr_f(n, "beta")?.unwrap_or(1.0);
        let trans_b = attr_i(n, "transB")?.unwrap_or(0) != 0;
        self.linear(n, b, trans_b, alpha, c.map(|c| (c, beta)))
    }

    /// `MatMul(x, W)` with a constant `[in, out]` weight: a bias-free linear (a following `Add`
    /// of a constant becomes its bias).
    fn matmul(&mut self, n: &NodeProto) -> R<Val> {
        if !matches!(self.input_val(n, 1)?, Val::Const(_) | Val::Dequantized(..)) {
            return self.attention_matmul(n);
        }
        let w = self.const_in(n, 1)?;
        self.linear(n, w, false, 1.0, None)
    }

    /// A linear node over input 0 from a 2-D weight `b` (`[out, in]` if `trans_b`, else
    /// `[in, out]`).
    fn linear(&mut self, n: &NodeProto, b: Const, trans_b: bool, alpha: f32, c: Option<(Const, f32)>) -> R<Val> {
        let arranged = self.arranged_in(n, 0);
        let (x, input_q) = match &arranged {
            Some((d, _)) => (d.clone(), None),
            None => self.layer_in(n)?,
        };
        let w_codes = self.codes_in(n, 1);
        let [r, k] = b.dims[..] else { return Err(format!("weight has shape {:?}; wick reads a 2-D constant", b.dims)) };
        let (out_features, in_features) = if trans_b { (r, k) } else { (k, r) };
        let v = b.f32s();
        let weight: Vec<f32> =
            if trans_b { v.iter().map(|w| alpha * w).collect() } else { (0..out_features).flat_map(|o| (0..in_features).map(move |i| (o, i))).map(|(o, i)| alpha * v[i * out_features + o]).collect() };
        let mut params = vec![("weight", vec![out_features, in_features], weight)];
        if let Some((c, beta)) = &c {
            let cv = c.f32s();
            let bias: Vec<f32> = match cv.len() {
                1 => vec![beta * cv[0]; out_features],
                len if len == out_features && c.dims.iter().filter(|&&d| d != 1).count() <= 1 => cv.iter().map(|v| beta * v).collect(),
                _ => return Err(format!("C has shape {:?}; wick reads a bias of {out_features} values", c.dims)),
            };
            params.push(("bias", vec![out_features], bias));
        }
        let op = Op::Linear(arch::LinearCfg { in_features, out_features, bias: c.is_some() });
        let name = self.param_node_name(n, "linear");
        if let Some(q) = input_q {
            let codes = w_codes.filter(|_| alpha == 1.0).ok_or("the input is quantised (QuantizeLinear/DequantizeLinear) but the weight is not DequantizeLinear of int8 codes (with alpha 1)")?;
            self.layers.insert(name.clone(), QuantLayer { weight: qweight(&codes, &b.dims, if trans_b { 0 } else { 1 })?, input: InputQuant::Static(q) });
        }
        let y = self.emit(name, &[&x], op, params)?;
        match arranged {
            // Rows in another order (time-major, batch and positions merged): the same linear.
            Some((_, a)) => {
                let through =
                    a.through_last_axis(out_features).ok_or_else(|| format!("a linear over the last axis of a rearranged tensor {:?} whose last axis is not its value's last axis", a.dims()))?;
                self.settle(y, through)
            }
            None => Ok(Val::Dyn(y)),
        }
    }

    /// A layer's input: a computed tensor, or one quantised by a `QuantizeLinear` /
    /// `DequantizeLinear` pair (then the layer is a quantised layer with these parameters).
    fn layer_in(&mut self, n: &NodeProto) -> R<(Dyn, Option<QParams>)> {
        match self.input_val(n, 0)? {
            Val::FakeQuant(d, q) => {
                let (d, q) = (d.clone(), *q);
                Ok((self.in_onnx_shape(d)?, Some(q)))
            }
            _ => Ok((self.exact_in(n, 0)?, None)),
        }
    }

    fn codes_in(&self, n: &NodeProto, k: usize) -> Option<Codes> {
        match self.opt_in(n, k) {
            Ok(Some(Val::Dequantized(_, c))) => Some(c.clone()),
            _ => None,
        }
    }

    /// `QuantizeLinear(x, scale, zero_point)` with per-tensor parameters: uint8 (7-bit when a
    /// `Clip` to the 0..127 range precedes it) or symmetric int8.
    fn quantize(&self, n: &NodeProto) -> R<Val> {
        let (x, clip) = match self.input_val(n, 0)? {
            Val::Dyn(d) => (d.clone(), None),
            Val::Clipped(d, lo, hi) => (d.clone(), Some((*lo, *hi))),
            _ => return Err("QuantizeLinear is read on a computed tensor".into()),
        };
        let scale = self.const_in(n, 1)?.scalar().filter(|s| s.is_finite() && *s > 0.0).ok_or("the scale must be one positive number (per-tensor activations)")?;
        let zp = match self.opt_const(n, 2)? {
            Some(z) => z.i64s().filter(|v| v.len() == 1).map(|v| v[0]).ok_or("the zero point must be one integer")?,
            None => 0,
        };
        let signed = n.input.get(2).is_some_and(|z| self.int8_values.contains(z));
        let act = match (signed, clip) {
            (true, None) if zp == 0 => ActType::I8,
            (true, _) => return Err(format!("an int8 zero point {zp} (or a Clip before it); wick's int8 activations are symmetric")),
            (false, None) => ActType::U8,
            (false, Some((lo, hi))) => {
                let (l7, h7) = QParams { scale, zero_point: zp as i32, act: ActType::U7 }.real_range();
                if !(close(lo, l7) && close(hi, h7)) {
                    return Err(format!("the Clip before it bounds [{lo}, {hi}], not the 7-bit range [{l7}, {h7}] of this scale and zero point"));
                }
                ActType::U7
            }
        };
        let (qmin, qmax) = act.range();
        if !(qmin as i64..=qmax as i64).contains(&zp) {
            return Err(format!("zero point {zp} is outside {qmin}..={qmax}"));
        }
        Ok(Val::Quantized(x, QParams { scale, zero_point: zp as i32, act }))
    }

    /// `DequantizeLinear` of integer constants (weights, biases) folds to float values that
    /// keep their codes; after `QuantizeLinear` with the same parameters it marks a layer input.
    fn dequantize(&self, n: &NodeProto) -> R<Val> {
        let scale = self.const_in(n, 1)?;
        let zp = self.opt_const(n, 2)?;
        match self.input_val(n, 0)? {
            Val::Quantized(x, q) => {
                let zp = zp.and_then(|z| z.i64s().map(<[i64]>::to_vec)).unwrap_or(vec![0]);
                if scale.scalar() != Some(q.scale) || zp != [q.zero_point as i64] {
                    return Err("its scale and zero point differ from the QuantizeLinear's before it".into());
                }
                Ok(Val::FakeQuant(x.clone(), *q))
            }
            Val::Const(c) => {
                let codes = c.i64s().ok_or("DequantizeLinear of a float constant")?.to_vec();
                let scales = scale.f32s();
                let zero_points = match &zp {
                    Some(z) => z.i64s().ok_or("the zero point must hold integers")?.to_vec(),
                    None => vec![0; scales.len()],
                };
                let rank = c.dims.len() as i64;
                let axis = attr_i(n, "axis")?.unwrap_or(1);
                let axis = from_end(axis, rank);
                let per_tensor = scales.len() == 1 && zero_points.len() == 1;
                let channels = if per_tensor { 1 } else { usize::try_from(axis).ok().and_then(|a| c.dims.get(a)).copied().ok_or(format!("axis {axis} is out of range for shape {:?}", c.dims))? };
                if scales.len() != channels || zero_points.len() != channels {
                    return Err(format!("{} scales and {} zero points for {channels} channels along axis {axis}", scales.len(), zero_points.len()));
                }
                let inner: usize = if per_tensor { 1 } else { c.dims[axis as usize + 1..].iter().product() };
                let values = codes.iter().enumerate().map(|(i, &q)| {
                    let ch = (i / inner) % channels;
                    q.saturating_sub(zero_points[ch]) as f32 * scales[ch]
                });
                let value = Const { dims: c.dims.clone(), values: Values::F32(values.collect()) };
                Ok(Val::Dequantized(value, Codes { codes, scales, zero_points, axis: if per_tensor { 0 } else { axis as usize } }))
            }
            _ => Err("DequantizeLinear is read on integer constants and after QuantizeLinear".into()),
        }
    }

    fn batchnorm(&mut self, n: &NodeProto) -> R<Val> {
        let x = self.exact_in(n, 0)?;
        let [scale, bias, mean, var] = [1, 2, 3, 4].map(|k| self.const_in(n, k));
        let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
        let c = x.shape.first().copied().ok_or("the input has no channel dim")?;
        for (what, t) in [("scale", &scale), ("B", &bias), ("mean", &mean), ("var", &var)] {
            if t.numel() != c {
                return Err(format!("{what} has {} values for {c} channels", t.numel()));
            }
        }
        let cfg = arch::BatchNormCfg { num_features: c, eps: decimal(attr_f(n, "epsilon")?.unwrap_or(1e-5)), momentum: 1.0 - decimal(attr_f(n, "momentum")?.unwrap_or(0.9)), affine: true };
        let op = match x.shape.len() {
            1 | 2 => Op::BatchNorm1d(cfg),
            3 => Op::BatchNorm2d(cfg),
            r => return Err(format!("the input has {} dims; wick reads BatchNormalization on 2-, 3- and 4-D tensors", r + 1)),
        };
        let params = vec![("weight", vec![c], scale.f32s()), ("bias", vec![c], bias.f32s()), ("running_mean", vec![c], mean.f32s()), ("running_var", vec![c], var.f32s())];
        let name = self.param_node_name(n, "batchnorm");
        Ok(Val::Dyn(self.emit(name, &[&x], op, params)?))
    }

    fn layernorm(&mut self, n: &NodeProto) -> R<Val> {
        let x = self.exact_in(n, 0)?;
        let rank = x.shape.len() as i64 + 1;
        let axis = attr_i(n, "axis")?.unwrap_or(-1);
        let axis = from_end(axis, rank);
        if axis < 1 || axis >= rank {
            return Err(format!("axis {axis} normalises over the batch; wick reads axes after it"));
        }
        let normalized_shape = x.shape[axis as usize - 1..].to_vec();
        let numel: usize = normalized_shape.iter().product();
        let scale = self.const_in(n, 1)?;
        let bias = self.opt_const(n, 2)?;
        if scale.numel() != numel || bias.as_ref().is_some_and(|b| b.numel() != numel) {
            return Err(format!("Scale or B does not have the normalised shape {normalized_shape:?}"));
        }
        let cfg = arch::LayerNormCfg { normalized_shape: normalized_shape.clone(), eps: decimal(attr_f(n, "epsilon")?.unwrap_or(1e-5)), elementwise_affine: true };
        let params = vec![("weight", normalized_shape.clone(), scale.f32s()), ("bias", normalized_shape, bias.map(|b| b.f32s()).unwrap_or(vec![0.0; numel]))];
        let name = self.param_node_name(n, "layernorm");
        Ok(Val::Dyn(self.emit(name, &[&x], Op::LayerNorm(cfg), params)?))
    }

    /// `InstanceNormalization(x, scale, B)`: a `groupnorm` of one channel per group (PyTorch's
    /// `nn.InstanceNorm*d`; its `nn.GroupNorm` exports as one over `[N, G, C/G·…]` between two
    /// `Reshape`s, its affine map a `Mul` and an `Add` after).
    fn instance_norm(&mut self, n: &NodeProto) -> R<Val> {
        let x = self.exact_in(n, 0)?;
        let c = *x.shape.first().ok_or("InstanceNormalization of a value without a channel axis")?;
        let (scale, bias) = (self.const_in(n, 1)?, self.const_in(n, 2)?);
        if scale.numel() != c || bias.numel() != c {
            return Err(format!("scale and B must hold one value per channel ({c}); they hold {} and {}", scale.numel(), bias.numel()));
        }
        let cfg = arch::GroupNormCfg { num_groups: c, num_channels: c, eps: decimal(attr_f(n, "epsilon")?.unwrap_or(1e-5)), affine: true };
        let name = self.param_node_name(n, "instancenorm");
        Ok(Val::Dyn(self.emit(name, &[&x], Op::GroupNorm(cfg), vec![("weight", vec![c], scale.f32s()), ("bias", vec![c], bias.f32s())])?))
    }

    /// `Pad` of a computed tensor with a constant (mode `constant`): a wick `pad` of its sample
    /// dims. `pads` (each axis's begin, then each axis's end), the value and, from opset 18, the
    /// axes are constant inputs (attributes before opset 11); the batch axis is not padded.
    fn pad(&mut self, n: &NodeProto) -> R<Val> {
        if let Some(mode) = attr_s(n, "mode")?.filter(|m| m != "constant") {
            return Err(format!("mode '{mode}'; wick pads with a constant (mode 'constant')"));
        }
        let x = self.exact_in(n, 0)?;
        let rank = x.shape.len() + 1;
        let (pads, value) = match attr_ints(n, "pads")? {
            Some(p) => (p, attr_f(n, "value")?.unwrap_or(0.0)),
            None => {
                let p = self.const_in(n, 1)?.i64s().ok_or("pads must hold integers")?.to_vec();
                let value = match self.opt_const(n, 2)? {
                    Some(c) => c.scalar().ok_or("constant_value must be one value")?,
                    None => 0.0,
                };
                (p, value)
            }
        };
        let axes: Vec<usize> = match self.opt_const(n, 3)? {
            None => (0..rank).collect(),
            Some(c) => {
                let a = c.i64s().ok_or("axes must hold integers")?;
                a.iter().map(|&a| usize::try_from(from_end(a, rank as i64)).ok().filter(|&a| a < rank).ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))).collect::<R<_>>()?
            }
        };
        if pads.len() != 2 * axes.len() {
            return Err(format!("pads {pads:?} must hold a begin and an end for each of {} axes", axes.len()));
        }
        if pads.iter().any(|&p| p < 0) {
            return Err(format!("pads {pads:?} crop (negative values); wick's pad only adds"));
        }
        let (mut begin, mut end) = (vec![0usize; rank], vec![0usize; rank]);
        for (k, &a) in axes.iter().enumerate() {
            (begin[a], end[a]) = (pads[k] as usize, pads[k + axes.len()] as usize);
        }
        if begin[0] + end[0] > 0 {
            return Err(format!("pads {pads:?} pad the batch axis; wick pads the dims of each sample"));
        }
        let per_dim: Vec<(usize, usize)> = (1..rank).map(|a| (begin[a], end[a])).collect();
        if per_dim.iter().all(|&p| p == (0, 0)) {
            return Ok(Val::Dyn(x));
        }
        let name = self.plain_node_name(n, "pad");
        Ok(Val::Dyn(self.emit(name, &[&x], Op::Pad(arch::PadCfg::from_per_dim(&per_dim, decimal(value))), vec![])?))
    }

    fn pool(&mut self, n: &NodeProto) -> R<Val> {
        if n.output.len() > 1 && self.uses.get(&n.output[1]).is_some_and(|&u| u > 0) {
            return Err("the Indices output is read; wick's pools do not return indices".into());
        }
        let x = self.exact_in(n, 0)?;
        let kernel: Vec<usize> = attr_ints(n, "kernel_shape")?
            .ok_or("attribute 'kernel_shape' is missing")?
            .iter()
            .map(|&k| usize::try_from(k).ok().filter(|&k| k > 0).ok_or_else(|| format!("kernel size {k} is not positive")))
            .collect::<R<_>>()?;
        let spatial = kernel.len();
        if spatial != 1 && spatial != 2 {
            return Err(format!("a {spatial}-D pool; wick reads 1-D and 2-D pools"));
        }
        let strides = positive_list(n, "strides", spatial)?;
        let dilations = positive_list(n, "dilations", spatial)?;
        if dilations.iter().any(|&d| d != 1) {
            return Err(format!("dilations {dilations:?}; wick's pools are not dilated"));
        }
        let in_len: Vec<usize> = x.onnx_shape.get(1..).map(<[usize]>::to_vec).unwrap_or_default();
        let p: Vec<usize> = pads(n, spatial, &kernel, &strides, &dilations, &in_len)?
            .into_iter()
            .map(|(b, e)| if b == e { Ok(b) } else { Err(format!("pads {b} before and {e} after a dim; wick's pools pad both sides equally")) })
            .collect::<R<_>>()?;
        let count_include_pad = attr_i(n, "count_include_pad")?.unwrap_or(0) != 0;
        let ceil_mode = attr_i(n, "ceil_mode")?.unwrap_or(0) != 0;
        let cfg = arch::PoolCfg { kernel_size: pair(&kernel), stride: Some(pair(&strides)), padding: pair(&p), count_include_pad, ceil_mode };
        let max = n.op_type == "MaxPool";
        let op = match (max, spatial) {
            (true, 1) => Op::MaxPool1d(cfg),
            (true, _) => Op::MaxPool2d(cfg),
            (false, 1) => Op::AvgPool1d(cfg),
            (false, _) => Op::AvgPool2d(cfg),
        };
        self.unary(n, op)
    }

    /// The maximum (`GlobalMaxPool`, or `ReduceMax` over axes 2..) or the sum (`ReduceSum` over
    /// axes 2..) over every spatial axis: one `amax` or `sum` per axis, the last first.
    fn each_spatial_axis(&mut self, n: &NodeProto, keepdims: bool) -> R<Val> {
        let (name, op): (&str, fn(arch::ReduceCfg) -> Op) = if n.op_type == "ReduceSum" { ("sum", Op::Sum) } else { ("amax", Op::Amax) };
        let mut x = self.exact_in(n, 0)?;
        let spatial = x.shape.len().saturating_sub(1);
        if spatial == 0 {
            return Err(format!("the input has per-sample shape {:?}; wick pools [C, spatial…]", x.onnx_shape));
        }
        let c = x.shape[0];
        for d in (2..=spatial + 1).rev() {
            let name = self.plain_node_name(n, name);
            x = self.emit(name, &[&x], op(arch::ReduceCfg { dim: d as i64, keepdim: false }), vec![])?;
        }
        if keepdims {
            x.onnx_shape = std::iter::once(c).chain(std::iter::repeat_n(1, spatial)).collect();
        }
        Ok(Val::Dyn(x))
    }

    /// Global average pooling; ONNX keeps the pooled dims as 1s when `keepdims`.
    fn global_pool(&mut self, n: &NodeProto, keepdims: bool) -> R<Val> {
        let x = self.exact_in(n, 0)?;
        if x.shape.len() < 2 {
            return Err(format!("the input has per-sample shape {:?}; wick pools [C, spatial…]", x.onnx_shape));
        }
        let name = self.plain_node_name(n, "global_avg_pool");
        let mut d = self.emit(name, &[&x], Op::GlobalAvgPool(arch::Empty {}), vec![])?;
        if keepdims {
            d.onnx_shape = std::iter::once(x.shape[0]).chain(std::iter::repeat_n(1, x.shape.len() - 1)).collect();
        }
        Ok(Val::Dyn(d))
    }

    /// `ReduceMean` over every spatial axis is global average pooling, over one other axis
    /// `mean`; `ReduceMax` over one axis is `amax`, `ReduceSum` over one axis `sum`.
    fn reduce(&mut self, n: &NodeProto) -> R<Val> {
        let kind = n.op_type.as_str();
        let x = self.dyn_in(n, 0)?;
        // The axes are an input from opset 18 on (ReduceSum's from 13 on), an attribute before.
        let axes_input = self.opset >= 18 || (kind == "ReduceSum" && self.opset >= 13);
        let axes = if axes_input { self.opt_const(n, 1)?.map(|c| c.i64s().map(<[i64]>::to_vec).ok_or("axes must be integers")).transpose()? } else { attr_ints(n, "axes")? };
        let rank = x.onnx_shape.len() as i64 + 1;
        let mut axes: Vec<i64> = axes.ok_or_else(|| format!("reduces every axis, the batch too; wick reads {kind} over axes after the batch"))?.iter().map(|&a| from_end(a, rank)).collect();
        axes.sort_unstable();
        let keepdims = attr_i(n, "keepdims")?.unwrap_or(1) != 0;
        let spatial = axes == (2..rank).collect::<Vec<_>>();
        match kind {
            "ReduceMean" if spatial && rank >= 3 => return self.global_pool(n, keepdims),
            "ReduceMax" | "ReduceSum" if spatial && rank >= 4 => return self.each_spatial_axis(n, keepdims),
            _ => {}
        }
        let (name, op): (&str, fn(arch::ReduceCfg) -> Op) = match kind {
            "ReduceMax" => ("amax", Op::Amax),
            "ReduceSum" => ("sum", Op::Sum),
            _ => ("mean", Op::Mean),
        };
        match axes.as_slice() {
            &[d] if d >= 1 && d < rank => {
                let x = self.exact_in(n, 0)?;
                let name = self.plain_node_name(n, name);
                Ok(Val::Dyn(self.emit(name, &[&x], op(arch::ReduceCfg { dim: d, keepdim: keepdims }), vec![])?))
            }
            _ if kind == "ReduceMean" => {
                Err(format!("reduces axes {axes:?} of a {rank}-D tensor; wick reads ReduceMean over one axis after the batch (its `mean`), or over all spatial axes (2..) as global average pooling"))
            }
            _ => Err(format!("reduces axes {axes:?} of a {rank}-D tensor; wick reads {kind} over one axis after the batch (its `{name}`), or over all spatial axes (2..) as one `{name}` per axis")),
        }
    }
}

/// A quantised layer's int8 weight (wick's layout, output channels first) from the codes of its
/// ONNX weight of shape `dims`, whose output channels lie along `out_axis` (1 for a MatMul's
/// `[in, out]`, transposed here).
fn qweight(c: &Codes, dims: &[usize], out_axis: usize) -> R<QWeight> {
    let out = dims[out_axis];
    if c.zero_points.iter().any(|&z| z != 0) {
        return Err("a weight zero point is not 0; wick's int8 weights are symmetric".into());
    }
    if !(c.scales.len() == 1 || (c.axis == out_axis && c.scales.len() == out)) {
        return Err(format!("the weight's {} scales along axis {} are neither per output channel nor per tensor", c.scales.len(), c.axis));
    }
    let scales = if c.scales.len() == 1 { vec![c.scales[0]; out] } else { c.scales.clone() };
    if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err("a weight scale is not a positive number".into());
    }
    let (codes, shape) = if out_axis == 0 {
        (c.codes.clone(), dims.to_vec())
    } else {
        let inn = dims[0];
        ((0..out).flat_map(|o| (0..inn).map(move |i| c.codes[i * out + o])).collect(), vec![out, inn])
    };
    let values = codes
        .iter()
        .map(|&q| i8::try_from(q).ok().filter(|&q| q != i8::MIN))
        .collect::<Option<Vec<i8>>>()
        .ok_or("the weight holds a code outside -127..=127, the range wick's integer kernels take")?;
    Ok(QWeight { shape, values, scales })
}

/// Whether `p` orders the axes `0..rank`, each once.
fn is_permutation(p: &[i64], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    p.len() == rank && p.iter().all(|&a| usize::try_from(a).ok().filter(|&a| a < rank).is_some_and(|a| !std::mem::replace(&mut seen[a], true)))
}

/// A kernel, stride or padding as the architecture file writes it: one number when all dims
/// agree (so a saved and re-read architecture compares equal).
fn pair(v: &[usize]) -> Pair {
    match v {
        [h, w] if h != w => Pair::Two([*h, *w]),
        _ => Pair::One(v[0]),
    }
}

/// An f32 attribute as the f64 of its shortest decimal form (`1e-5`, not `9.99999974e-6`),
/// which is what the exporter was given.
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// The factor a value carries: `k` of a product by a scalar not yet emitted, 1 otherwise.
fn factor(v: &Val) -> f32 {
    match v {
        Val::Scaled(_, k) => *k,
        _ => 1.0,
    }
}

/// A constant's values per channel of `x` (`[N, C, …]`, `x` a sample's `[C, …]`): a scalar
/// repeated, or a tensor broadcast along axis 1 only (`[C]` for a `[N, C]` value, `[C, 1, 1]` or
/// `[1, C, 1, 1]` for an image's).
fn per_channel(c: &Const, x: &Dyn) -> R<Vec<f32>> {
    let ch = x.onnx_shape.first().copied().unwrap_or(1);
    if c.numel() == 1 {
        return Ok(vec![c.f32s()[0]; ch]);
    }
    let (d, full) = (&c.dims, x.onnx_shape.len() + 1);
    let along_channels = d.len() <= full && d.len() + 1 >= full && d[d.len() + 1 - full] == ch && d.iter().filter(|&&v| v != 1).count() == 1;
    if !along_channels {
        return Err(format!(
            "a constant of shape {d:?} on a value of shape [N, {}]; wick reads arithmetic with a scalar or with a constant along the channel axis ({ch} values)",
            x.onnx_shape.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(c.f32s())
}

/// A constant's values per channel of `x` ([`per_channel`]), or else per feature along its last
/// axis, where PyTorch broadcasts a `[D]` constant (`[D]`, `[1, …, 1, D]`): with whether they lie
/// on the last axis.
fn per_feature(c: &Const, x: &Dyn) -> R<(Vec<f32>, bool)> {
    let channels = per_channel(c, x);
    let last = x.onnx_shape.last().copied().unwrap_or(1);
    let d = &c.dims;
    let along_last = x.onnx_shape.len() > 1 && d.len() <= x.onnx_shape.len() + 1 && d.last() == Some(&last) && d.iter().filter(|&&v| v != 1).count() == 1;
    match channels {
        Ok(v) => Ok((v, false)),
        Err(_) if along_last => Ok((c.f32s(), true)),
        Err(m) => Err(format!("{m}, or along the last axis ({last} values)")),
    }
}

fn pattern_err(value: &str) -> String {
    format!("input '{value}' is a step of a pattern wick reads as one op (SiLU, exact GELU, Mish, softplus with its beta and threshold, softsign, a QuantizeLinear/DequantizeLinear pair before a Conv, Gemm or MatMul, a Clip before QuantizeLinear), and it is read elsewhere")
}

/// An ONNX axis or index counted from the end when negative: `a + n` for `a < 0`.
/// ONNX axis `axis` of `x` (negative from the end) as a full-tensor axis after the batch, which
/// a `narrow` cuts.
fn sample_axis(axis: i64, x: &Dyn) -> R<usize> {
    let rank = x.onnx_shape.len() as i64 + 1;
    let a = from_end(axis, rank);
    match (1..rank).contains(&a) {
        true => Ok(a as usize),
        false => Err(format!("axis {axis} of a rank-{rank} tensor; wick cuts the dims of each sample, not the batch")),
    }
}

fn from_end(a: i64, n: i64) -> i64 {
    if a < 0 {
        a.saturating_add(n)
    } else {
        a
    }
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

fn strip_ones(s: &[usize]) -> Vec<usize> {
    s.iter().copied().filter(|&d| d != 1).collect()
}

/// The one `-1` in a reshape's per-sample dims, from the sample's element count.
fn infer_minus_one(rest: &[i64], numel: usize, known: usize) -> R<Vec<usize>> {
    if known == 0 || !numel.is_multiple_of(known) {
        return Err(format!("cannot infer the -1 in {rest:?} from {numel} values per sample"));
    }
    Ok(rest.iter().map(|&d| if d == -1 { numel / known } else { d as usize }).collect())
}

/// The dims after `Squeeze` (`axes` or every 1) or `Unsqueeze` of `dims`.
fn squeezed(dims: &[usize], axes: Option<&[i64]>, unsqueeze: bool) -> R<Vec<usize>> {
    if unsqueeze {
        let axes = axes.ok_or("Unsqueeze needs axes")?;
        let rank = (dims.len() + axes.len()) as i64;
        let mut ax: Vec<usize> =
            axes.iter().map(|&a| from_end(a, rank)).map(|a| usize::try_from(a).ok().filter(|&a| (a as i64) < rank).ok_or(format!("axis out of range in {axes:?}"))).collect::<R<_>>()?;
        ax.sort_unstable();
        let mut out = dims.to_vec();
        for a in ax {
            out.insert(a, 1);
        }
        return Ok(out);
    }
    let rank = dims.len() as i64;
    match axes {
        None => Ok(dims.iter().copied().filter(|&d| d != 1).collect()),
        Some(axes) => {
            let ax: Vec<usize> = axes
                .iter()
                .map(|&a| from_end(a, rank))
                .map(|a| usize::try_from(a).ok().filter(|&a| a < dims.len() && dims[a] == 1).ok_or(format!("axes {axes:?} are not unit dims of {dims:?}")))
                .collect::<R<_>>()?;
            Ok(dims.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, &d)| d).collect())
        }
    }
}

/// Elementwise arithmetic on two constants of equal shape, or one of them a scalar.
fn fold(op: &str, x: &Const, y: &Const) -> R<Const> {
    let dims = if x.numel() == 1 && y.dims.len() >= x.dims.len() {
        y.dims.clone()
    } else if y.numel() == 1 || x.dims == y.dims {
        x.dims.clone()
    } else {
        return Err(format!("{op} of constants of shapes {:?} and {:?} (wick folds equal shapes or a scalar)", x.dims, y.dims));
    };
    let n: usize = dims.iter().product();
    let at = |c: &Const, i: usize| if c.numel() == 1 { 0 } else { i };
    match (&x.values, &y.values) {
        (Values::I64(a), Values::I64(b)) => {
            let f = |p: i64, q: i64| -> R<i64> {
                match (op, batch_multiple(p), batch_multiple(q)) {
                    ("Equal", ..) => Ok(i64::from(p == q)),
                    // `k·N · c` and `k·N / c`: a shape that holds the batch `k·c` (or `k/c`) times.
                    ("Mul", Some(k), None) if q > 0 => Ok(batch_times(k * q)),
                    ("Mul", None, Some(k)) if p > 0 => Ok(batch_times(k * p)),
                    ("Div", Some(k), None) if q > 0 && k % q == 0 => Ok(batch_times(k / q)),
                    (_, None, None) => match op {
                        "Add" => Ok(p.wrapping_add(q)),
                        "Sub" => Ok(p.wrapping_sub(q)),
                        "Mul" => Ok(p.wrapping_mul(q)),
                        _ if q == 0 => Err("integer division by zero".into()),
                        // ONNX's `Mod` takes the divisor's sign (Python's `%`), `fmod` the dividend's.
                        "Mod" => Ok(p.wrapping_rem(q).wrapping_add(q).wrapping_rem(q)),
                        "Fmod" => Ok(p.wrapping_rem(q)),
                        _ => Ok(p.wrapping_div(q)),
                    },
                    _ => Err(format!("{op} on the batch size; wick follows shapes that are the batch times a size")),
                }
            };
            Ok(Const { dims, values: Values::I64((0..n).map(|i| f(a[at(x, i)], b[at(y, i)])).collect::<R<_>>()?) })
        }
        _ if op == "Equal" => {
            let (a, b) = (x.f32s(), y.f32s());
            Ok(Const { dims, values: Values::I64((0..n).map(|i| i64::from(a[at(x, i)] == b[at(y, i)])).collect()) })
        }
        _ => {
            let (a, b) = (x.f32s(), y.f32s());
            let f = |p: f32, q: f32| match op {
                "Add" => p + q,
                "Sub" => p - q,
                "Mul" => p * q,
                "Mod" => ((p % q) + q) % q,
                "Fmod" => p % q,
                _ => p / q,
            };
            Ok(Const { dims, values: Values::F32((0..n).map(|i| f(a[at(x, i)], b[at(y, i)])).collect()) })
        }
    }
}

/// Whether `c` holds one value per element of a sample of `x` `[L, D]` (`[1, L, D]` or
/// `[L, D]`): a learned position table, as a ViT adds one to its patch embeddings.
fn is_position_table(x: &Dyn, c: &Const) -> bool {
    x.shape.len() == 2 && x.shape == x.onnx_shape && c.dims.strip_prefix(&[1]).unwrap_or(&c.dims) == x.shape.as_slice() && !x.shape.contains(&1)
}

/// `Where(c, a, b)` on constants of one shape (or one value each): `a` where `c` is non-zero.
fn pick_where(c: &Const, a: &Const, b: &Const) -> R<Const> {
    let n = [c, a, b].iter().map(|k| k.numel()).max().unwrap_or(0);
    if [c, a, b].iter().any(|k| k.numel() != n && k.numel() != 1) {
        return Err(format!("Where of constants of shapes {:?}, {:?} and {:?} (wick folds equal shapes or single values)", c.dims, a.dims, b.dims));
    }
    let dims = [c, a, b].iter().find(|k| k.numel() == n).map_or(vec![], |k| k.dims.clone());
    let at = |k: &Const, i: usize| if k.numel() == 1 { 0 } else { i };
    let cond = c.f32s();
    let take_a = |i: usize| cond[at(c, i)] != 0.0;
    // Integers when either side holds them (a shape picked from a `ConstantOfShape` of ones).
    let ints = |k: &Const| k.i64s().map_or_else(|| k.f32s().iter().map(|&v| v as i64).collect(), <[i64]>::to_vec);
    Ok(match a.i64s().is_some() || b.i64s().is_some() {
        true => {
            let (x, y) = (ints(a), ints(b));
            Const { dims, values: Values::I64((0..n).map(|i| if take_a(i) { x[at(a, i)] } else { y[at(b, i)] }).collect()) }
        }
        false => {
            let (x, y) = (a.f32s(), b.f32s());
            Const { dims, values: Values::F32((0..n).map(|i| if take_a(i) { x[at(a, i)] } else { y[at(b, i)] }).collect()) }
        }
    })
}

/// `(before, after)` padding of each spatial dim, from `pads` (begin…, end…) or `auto_pad`
/// (`SAME_UPPER` puts an odd total's extra one after, `SAME_LOWER` before).
fn pads(n: &NodeProto, spatial: usize, kernel: &[usize], strides: &[usize], dilations: &[usize], in_len: &[usize]) -> R<Vec<(usize, usize)>> {
    match attr_s(n, "auto_pad")?.as_deref().unwrap_or("NOTSET") {
        "NOTSET" => {}
        "VALID" => return Ok(vec![(0, 0); spatial]),
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            if in_len.len() != spatial {
                return Err(format!("auto_pad {mode} on an input of per-sample shape with {} spatial dims", in_len.len().saturating_sub(0)));
            }
            return (0..spatial)
                .map(|i| {
                    // total = (⌈L/s⌉ − 1)·s + (k − 1)·d + 1 − L, at least 0.
                    let out = in_len[i].div_ceil(strides[i]).max(1);
                    let span = (out - 1)
                        .checked_mul(strides[i])
                        .zip((kernel[i] - 1).checked_mul(dilations[i]))
                        .and_then(|(a, b)| a.checked_add(b))
                        .and_then(|v| v.checked_add(1))
                        .ok_or("auto_pad: the padded size overflows")?;
                    let total = span.saturating_sub(in_len[i]);
                    Ok(if mode == "SAME_UPPER" { (total / 2, total - total / 2) } else { (total - total / 2, total / 2) })
                })
                .collect();
        }
        other => return Err(format!("auto_pad '{other}' is not an ONNX padding mode")),
    }
    let Some(p) = attr_ints(n, "pads")? else { return Ok(vec![(0, 0); spatial]) };
    if p.len() != 2 * spatial || p.iter().any(|&v| v < 0) {
        return Err(format!("pads {p:?} must be {} non-negative values", 2 * spatial));
    }
    Ok((0..spatial).map(|i| (p[i] as usize, p[spatial + i] as usize)).collect())
}

/// An ints attribute of `len` positive values, default all 1.
fn positive_list(n: &NodeProto, name: &str, len: usize) -> R<Vec<usize>> {
    match attr_ints(n, name)? {
        None => Ok(vec![1; len]),
        Some(v) if v.len() == len && v.iter().all(|&x| x > 0) => Ok(v.iter().map(|&x| x as usize).collect()),
        Some(v) => Err(format!("{name} {v:?} must be {len} positive values")),
    }
}

fn attr<'n>(n: &'n NodeProto, name: &str, ty: i32, ty_name: &str) -> R<Option<&'n super::proto::AttributeProto>> {
    match n.attribute.iter().find(|a| a.name == name) {
        None => Ok(None),
        Some(a) if a.r#type == ty => Ok(Some(a)),
        Some(a) => Err(format!("attribute '{name}' has type {}, expected {ty_name}", a.r#type)),
    }
}

fn attr_i(n: &NodeProto, name: &str) -> R<Option<i64>> {
    Ok(attr(n, name, attr_type::INT, "int")?.map(|a| a.i))
}

fn attr_f(n: &NodeProto, name: &str) -> R<Option<f32>> {
    Ok(attr(n, name, attr_type::FLOAT, "float")?.map(|a| a.f))
}

fn attr_ints(n: &NodeProto, name: &str) -> R<Option<Vec<i64>>> {
    Ok(attr(n, name, attr_type::INTS, "ints")?.map(|a| a.ints.clone()))
}

fn attr_s(n: &NodeProto, name: &str) -> R<Option<String>> {
    Ok(attr(n, name, attr_type::STRING, "string")?.map(|a| String::from_utf8_lossy(&a.s).into_owned()))
}

/// A `Constant` node's value from whichever attribute holds it.
fn constant(n: &NodeProto, dir: &Path) -> R<Const> {
    if let Some(a) = attr(n, "value", attr_type::TENSOR, "tensor")? {
        let t: &TensorProto = a.t.as_ref().ok_or("attribute 'value' holds no tensor")?;
        return tensor::read(t, "value", dir).map_err(|e| e.to_string());
    }
    if let Some(f) = attr_f(n, "value_float")? {
        return Ok(Const { dims: vec![], values: Values::F32(vec![f]) });
    }
    if let Some(a) = attr(n, "value_floats", attr_type::FLOATS, "floats")? {
        return Ok(Const { dims: vec![a.floats.len()], values: Values::F32(a.floats.clone()) });
    }
    if let Some(i) = attr_i(n, "value_int")? {
        return Ok(Const { dims: vec![], values: Values::I64(vec![i]) });
    }
    if let Some(v) = attr_ints(n, "value_ints")? {
        return Ok(Const { dims: vec![v.len()], values: Values::I64(v) });
    }
    Err("has no value attribute wick reads (value, value_float(s), value_int(s))".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{Dimension, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto};
    use crate::onnx::tensor::f32_tensor;

    fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
        let dim = dims.iter().map(|d| Dimension { dim_value: *d, dim_param: d.is_none().then(|| "batch".to_string()) }).collect();
        ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type: 1, shape: Some(TensorShapeProto { dim }) }) }) }
    }

    fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<crate::onnx::proto::AttributeProto>) -> NodeProto {
        NodeProto { input: inputs.iter().map(|s| s.to_string()).collect(), output: vec![output.into()], name: String::new(), op_type: op.into(), domain: String::new(), attribute }
    }

    /// An importer with nothing read yet, at opset 17.
    fn empty_importer() -> Importer<'static> {
        Importer::new(17, Path::new("."))
    }

    fn perm(p: &[i64]) -> crate::onnx::proto::AttributeProto {
        crate::onnx::proto::AttributeProto { name: "perm".into(), r#type: attr_type::INTS, ints: p.to_vec(), ..Default::default() }
    }

    /// `auto_pad` `SAME_UPPER` puts an odd total padding's extra one after the dim, `SAME_LOWER`
    /// before it (ONNX's definition): a 3-wide kernel at stride 2 over 8 values pads 1 in all
    /// (`(⌈8/2⌉ − 1)·2 + 3 − 8`), over 7 values 2; `pads` keeps each side's own width.
    #[test]
    fn same_padding_puts_an_odd_extra_on_its_side() {
        use crate::onnx::proto::AttributeProto;
        let auto = |mode: &str| node("Conv", &[], "y", vec![AttributeProto { name: "auto_pad".into(), r#type: attr_type::STRING, s: mode.as_bytes().to_vec(), ..Default::default() }]);
        assert_eq!(pads(&auto("SAME_UPPER"), 2, &[3, 3], &[2, 2], &[1, 1], &[8, 7]).unwrap(), [(0, 1), (1, 1)]);
        assert_eq!(pads(&auto("SAME_LOWER"), 2, &[3, 3], &[2, 2], &[1, 1], &[8, 7]).unwrap(), [(1, 0), (1, 1)]);
        let explicit = node("Conv", &[], "y", vec![AttributeProto { name: "pads".into(), r#type: attr_type::INTS, ints: vec![2, 0, 0, 1], ..Default::default() }]);
        assert_eq!(pads(&explicit, 2, &[3, 3], &[1, 1], &[1, 1], &[8, 7]).unwrap(), [(2, 0), (0, 1)]);
    }

    /// The maximum over every spatial axis (`ReduceMax` over axes 2.. or `GlobalMaxPool` and a
    /// flatten) is one `amax` per axis, the last first.
    #[test]
    fn spatial_maxima_are_one_amax_per_axis() {
        let ints = |name: &str, v: &[i64]| crate::onnx::proto::AttributeProto { name: name.into(), r#type: attr_type::INTS, ints: v.to_vec(), ..Default::default() };
        let int = |name: &str, v: i64| crate::onnx::proto::AttributeProto { name: name.into(), r#type: attr_type::INT, i: v, ..Default::default() };
        for nodes in [vec![node("ReduceMax", &["x"], "y", vec![ints("axes", &[2, -1]), int("keepdims", 0)])], vec![node("GlobalMaxPool", &["x"], "g", vec![]), node("Flatten", &["g"], "y", vec![])]] {
            let graph = GraphProto {
                node: nodes,
                name: "g".into(),
                initializer: vec![],
                input: vec![value("x", &[None, Some(3), Some(4), Some(5)])],
                output: vec![value("y", &[None, Some(3)])],
                value_info: vec![],
            };
            let im = import(&graph, 17, "t.onnx", Path::new(".")).unwrap();
            let dims: Vec<i64> = im.arch.nodes.iter().map(|n| if let Op::Amax(c) = &n.op { c.dim } else { panic!("{:?}", n.op) }).collect();
            assert_eq!(dims, vec![3, 2]);
        }
    }

    /// `Transpose` of an initializer folds: `out[o0, o1, o2] = in[…]` with `in[perm[k]] = o_k`,
    /// so `MatMul(x, Transpose(W))` is the linear of weight `W`, and a 3-D transpose reorders
    /// values as NumPy's `transpose` does.
    #[test]
    fn transpose_of_a_constant_folds() {
        let w: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let t: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let graph = GraphProto {
            node: vec![node("Transpose", &["fc.weight"], "wt", vec![perm(&[1, 0])]), node("MatMul", &["x", "wt"], "y", vec![]), node("Transpose", &["t"], "t2", vec![perm(&[2, 0, 1])])],
            name: "g".into(),
            initializer: vec![f32_tensor("fc.weight", &[3, 4], &w), f32_tensor("t", &[2, 3, 4], &t)],
            input: vec![value("x", &[None, Some(4)])],
            output: vec![value("y", &[None, Some(3)])],
            value_info: vec![],
        };
        let im = import(&graph, 17, "t.onnx", Path::new(".")).unwrap();
        assert_eq!(im.params["linear.weight"], (vec![3, 4], w));
        // The folded 3-D transpose, checked through the importer's own evaluation.
        let mut i = empty_importer();
        i.vals.insert("t".into(), Val::Const(Const { dims: vec![2, 3, 4], values: Values::F32(t.clone()) }));
        let Val::Const(c) = i.transpose(&graph.node[2]).unwrap() else { panic!("a constant") };
        assert_eq!(c.dims, vec![4, 2, 3]);
        // out[o0, o1, o2] = t[o1, o2, o0] = 12·o1 + 4·o2 + o0.
        let expect: Vec<f32> = (0..4).flat_map(|o0| (0..2).flat_map(move |o1| (0..3).map(move |o2| (12 * o1 + 4 * o2 + o0) as f32))).collect();
        assert_eq!(c.values, Values::F32(expect));
    }

    /// `Slice` and `Concat` fold constants of any rank (the dynamo exporter's gate blocks of a
    /// recurrent layer's weights): `w[3, 4]` cut along axis 1 with step 2 and from the end along
    /// axis 0, then joined with itself along axis 1, as NumPy's `w[::-1, ::2]` and
    /// `concatenate(axis=1)`.
    #[test]
    fn slice_and_concat_fold_constants_of_any_rank() {
        let w: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let ints = |v: &[i64]| Val::Const(Const { dims: vec![v.len()], values: Values::I64(v.to_vec()) });
        let mut i = empty_importer();
        i.vals.insert("w".into(), Val::Const(Const { dims: vec![3, 4], values: Values::F32(w) }));
        for (name, v) in [("starts", &[0i64, -1][..]), ("ends", &[i64::MAX, i64::MIN]), ("axes", &[1, 0]), ("steps", &[2, -1])] {
            i.vals.insert(name.into(), ints(v));
        }
        let Val::Const(c) = i.slice(&node("Slice", &["w", "starts", "ends", "axes", "steps"], "s", vec![])).unwrap() else { panic!("a constant") };
        assert_eq!(c.dims, vec![3, 2]);
        assert_eq!(c.values, Values::F32(vec![8.0, 10.0, 4.0, 6.0, 0.0, 2.0]));
        i.vals.insert("s".into(), Val::Const(c));
        let axis = crate::onnx::proto::AttributeProto { name: "axis".into(), r#type: attr_type::INT, i: 1, ..Default::default() };
        let Val::Const(j) = i.concat(&node("Concat", &["s", "w"], "j", vec![axis])).unwrap() else { panic!("a constant") };
        assert_eq!(j.dims, vec![3, 6]);
        assert_eq!(j.values, Values::F32(vec![8.0, 10.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 4.0, 5.0, 6.0, 7.0, 0.0, 2.0, 8.0, 9.0, 10.0, 11.0]));
    }
}
