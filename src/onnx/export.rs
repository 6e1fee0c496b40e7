//! A wick model as an ONNX graph (opset 17, or 20 for a tanh GELU; dynamic batch). A float model maps node by node onto
//! standard ops. An INT8 artifact becomes a QDQ graph, which is how ONNX Runtime, TensorRT and
//! OpenVINO take pre-quantised models: each quantised layer reads
//! `DequantizeLinear(QuantizeLinear(x, s_in, zp))` and a weight `DequantizeLinear(int8 W, s_c,
//! axis 0)` with the artifact's exact codes and scales, and an int32 bias
//! `round(b / (s_in·s_c))` at scale `s_in·s_c`, the form runtimes fuse into integer kernels.

use super::proto::{attr_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto};
use super::tensor::{byte_tensor, f32_tensor, i32_tensor, i64_tensor};
use crate::artifact::{Int8Model, QuantLayer};
use crate::error::{Result, WickError};
use crate::model::arch::{GeluApprox, Node, Op, Pair, PoolCfg, PositionEmbeddingCfg, RnnCfg};
use crate::model::graph::sample_dim;
use crate::model::qunit::node_units;
use crate::model::Model;
use crate::quant::{ActType, QWeight};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

/// The opset wick writes: the first with `LayerNormalization`, read by every current runtime.
pub const OPSET: i64 = 17;
/// The opset of a model with a tanh-form GELU: the first with the `Gelu` op (opset 17 would
/// need the tanh polynomial spelled out in eight nodes).
pub const OPSET_TANH_GELU: i64 = 20;

/// A float model as an ONNX graph.
pub fn float_model(model: &Model) -> Result<ModelProto> {
    build(model, &BTreeMap::new(), &BTreeMap::new())
}

/// An INT8 artifact as a QDQ graph.
pub fn int8_model(q: &Int8Model) -> Result<ModelProto> {
    build(&q.model, &q.layers, &q.tables)
}

/// The file bytes of `model`.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes `model` to `path` atomically.
pub fn write(model: &ModelProto, path: &Path) -> Result<()> {
    crate::tensor_file::write_atomic(path, &encode(model))
}

fn build(model: &Model, layers: &BTreeMap<String, QuantLayer>, tables: &BTreeMap<String, QWeight>) -> Result<ModelProto> {
    let arch = &model.arch;
    let mut g = Builder::default();
    for &i in &model.graph.order {
        let node = &arch.nodes[i];
        if matches!(node.op, Op::Gru(_) | Op::Lstm(_)) && node_units(node).iter().any(|u| layers.contains_key(&u.key)) {
            let why = "its GRU and LSTM ops take float weights and keep the hidden state in float, so INT8 recurrent matrices have no ONNX form; export the float model, or quantise with this node in --exclude";
            return Err(WickError::node(&node.name, format!("ONNX export: {why}")));
        }
        let done = match &node.op {
            Op::Embedding(_) => g.embedding(model, node, tables.get(&node.name)),
            Op::PositionEmbedding(c) => g.position_embedding(model, node, c, tables.get(&node.name)),
            _ => g.node(model, node, layers.get(&node.name)),
        };
        done.map_err(|m| WickError::node(&node.name, format!("ONNX export: {m}")))?;
    }
    let tensor_type = |name: &str, shape: &[usize], elem_type: i32| {
        let dim = std::iter::once(Dimension { dim_value: None, dim_param: Some("batch".into()) }).chain(shape.iter().map(|&d| Dimension { dim_value: Some(d as i64), dim_param: None })).collect();
        ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type, shape: Some(TensorShapeProto { dim }) }) }) }
    };
    // Token ids, which an embedding reads, are integers in ONNX (PyTorch's exports take int64).
    let ids = arch.nodes.iter().any(|n| matches!(n.op, Op::Embedding(_)));
    let input_type = if ids { super::proto::data_type::INT64 } else { super::proto::data_type::FLOAT };
    let out = arch.output_name();
    let graph = GraphProto {
        node: g.nodes,
        name: "wick".into(),
        initializer: g.inits,
        input: vec![tensor_type(&arch.input.name, &arch.input.shape, input_type)],
        output: vec![tensor_type(out, &model.graph.shapes[out], super::proto::data_type::FLOAT)],
        value_info: vec![],
    };
    let opset = if arch.nodes.iter().any(|n| matches!(&n.op, Op::Gelu(c) if c.approximate == GeluApprox::Tanh)) { OPSET_TANH_GELU } else { OPSET };
    Ok(ModelProto {
        // IR version 8 goes with opset 17, 9 with opset 20.
        ir_version: if opset == OPSET { 8 } else { 9 },
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        producer_name: "wick".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: vec![],
    })
}

#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::INTS, ints: v.iter().map(|&x| x as i64).collect(), ..Default::default() }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::INT, i: v, ..Default::default() }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::FLOAT, f: v, ..Default::default() }
}

/// Parameter `name`'s values, row-major.
fn values(model: &Model, name: &str) -> std::result::Result<Vec<f32>, String> {
    model.p(name).flatten_all().and_then(|t| t.to_vec1()).map_err(|e| e.to_string())
}

/// `v` (`[rows, cols]` row-major) as `[cols, rows]`: `out[c·rows + r] = v[r·cols + c]`.
fn transposed<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| v[r * cols + c])).collect()
}

fn hw(p: Pair, spatial: usize) -> Vec<usize> {
    let (h, w) = p.hw();
    if spatial == 1 {
        vec![h]
    } else {
        vec![h, w]
    }
}

impl Builder {
    /// Appends ONNX node `name` computing value `output`.
    fn op(&mut self, op_type: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto { input: inputs.iter().map(|s| s.to_string()).collect(), output: vec![output.into()], name: name.into(), op_type: op_type.into(), domain: String::new(), attribute });
    }

    fn init(&mut self, t: TensorProto) -> String {
        let name = t.name.clone();
        self.inits.push(t);
        name
    }

    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.init(f32_tensor(name, &[], &[v]))
    }

    /// `Clip(x, lo, hi)` named `n`, its bounds initializers `n.min` and `n.max`.
    fn clip(&mut self, n: &str, x: &str, lo: f32, hi: f32) {
        let (lo, hi) = (self.scalar(&format!("{n}.min"), lo), self.scalar(&format!("{n}.max"), hi));
        self.op("Clip", n, &[x, &lo, &hi], n, vec![]);
    }

    /// Softplus named `n`: `Softplus(β·x)/β`, then `Where(β·x > t, x, ·)` unless `t` is PyTorch's
    /// default 20, where the switch changes no f32 value (ONNX's Softplus has none).
    fn softplus(&mut self, n: &str, x: &str, beta: f32, threshold: f32) {
        let switch = threshold != 20.0;
        let y = match beta {
            1.0 => x.to_string(),
            _ => {
                let (y, b) = (format!("{n}.scaled"), self.scalar(&format!("{n}.beta"), beta));
                self.op("Mul", &y, &[x, &b], &y, vec![]);
                y
            }
        };
        let soft = if switch { format!("{n}.soft") } else { n.to_string() };
        let sp = if beta == 1.0 { soft.clone() } else { format!("{n}.softplus") };
        self.op("Softplus", &sp, &[&y], &sp, vec![]);
        if beta != 1.0 {
            let b = format!("{n}.beta");
            self.op("Div", &soft, &[&sp, &b], &soft, vec![]);
        }
        if switch {
            let (above, t) = (format!("{n}.above"), self.scalar(&format!("{n}.threshold"), threshold));
            self.op("Greater", &above, &[&y, &t], &above, vec![]);
            self.op("Where", n, &[&above, x, &soft], n, vec![]);
        }
    }

    /// One wick node as ONNX nodes whose final output is named after it.
    fn node(&mut self, model: &Model, node: &Node, quant: Option<&QuantLayer>) -> std::result::Result<(), String> {
        let n = node.name.as_str();
        let x = node.inputs.first().map(String::as_str).unwrap_or("");
        let in_shape = model.graph.shapes.get(x).cloned().unwrap_or_default();
        let x = match quant {
            Some(q) => self.quantize_input(n, x, q)?,
            None => x.to_string(),
        };
        let x = x.as_str();
        let param = |s: &str| node.param(s);
        match &node.op {
            Op::Linear(c) => {
                // Gemm takes `[N, in]`; a linear over more dims is MatMul with `[in, out]`.
                let gemm = in_shape.len() == 1;
                let w = self.weight(model, node, quant.map(|q| &q.weight), !gemm)?;
                let b = if c.bias { Some(self.bias(model, node, quant)?) } else { None };
                if gemm {
                    let mut ins = vec![x, w.as_str()];
                    ins.extend(b.as_deref());
                    self.op("Gemm", n, &ins, n, vec![int("transB", 1)]);
                } else if let Some(b) = b {
                    let mm = format!("{n}.matmul");
                    self.op("MatMul", n, &[x, &w], &mm, vec![]);
                    self.op("Add", &format!("{n}.bias_add"), &[&mm, &b], n, vec![]);
                } else {
                    self.op("MatMul", n, &[x, &w], n, vec![]);
                }
            }
            Op::Conv1d(c) => {
                let w = self.weight(model, node, quant.map(|q| &q.weight), false)?;
                let b = if c.bias { Some(self.bias(model, node, quant)?) } else { None };
                let mut ins = vec![x, w.as_str()];
                ins.extend(b.as_deref());
                let attrs =
                    vec![ints("kernel_shape", &[c.kernel_size]), ints("strides", &[c.stride]), ints("pads", &[c.padding, c.padding]), ints("dilations", &[c.dilation]), int("group", c.groups as i64)];
                self.op("Conv", n, &ins, n, attrs);
            }
            Op::Conv2d(c) => {
                let w = self.weight(model, node, quant.map(|q| &q.weight), false)?;
                let b = if c.bias { Some(self.bias(model, node, quant)?) } else { None };
                let mut ins = vec![x, w.as_str()];
                ins.extend(b.as_deref());
                let (ph, pw) = c.padding.hw();
                let attrs = vec![
                    ints("kernel_shape", &hw(c.kernel_size, 2)),
                    ints("strides", &hw(c.stride, 2)),
                    ints("pads", &[ph, pw, ph, pw]),
                    ints("dilations", &hw(c.dilation, 2)),
                    int("group", c.groups as i64),
                ];
                self.op("Conv", n, &ins, n, attrs);
            }
            Op::BatchNorm1d(c) | Op::BatchNorm2d(c) => {
                let f = |s: &str| values(model, &param(s));
                let (scale, bias) = if c.affine { (f("weight")?, f("bias")?) } else { (vec![1.0; c.num_features], vec![0.0; c.num_features]) };
                let names =
                    [("weight", scale), ("bias", bias), ("running_mean", f("running_mean")?), ("running_var", f("running_var")?)].map(|(s, v)| self.init(f32_tensor(&param(s), &[c.num_features], &v)));
                let ins: Vec<&str> = std::iter::once(x).chain(names.iter().map(String::as_str)).collect();
                self.op("BatchNormalization", n, &ins, n, vec![float("epsilon", c.eps as f32), float("momentum", (1.0 - c.momentum) as f32)]);
            }
            Op::ChannelAffine(c) => {
                // `[C, 1, …]`: broadcast along the channel axis of `[N, C, …]`; `[C]` along the
                // last axis.
                let rank = model.graph.shapes[node.inputs[0].as_str()].len();
                let mut dims = vec![1; if c.on_last_axis(rank) { 1 } else { rank }];
                dims[0] = c.num_features;
                let [w, b] = ["weight", "bias"].map(|s| values(model, &param(s)).map(|v| f32_tensor(&param(s), &dims, &v)));
                let (w, b) = (self.init(w?), self.init(b?));
                let m = format!("{n}.scaled");
                self.op("Mul", &m, &[x, &w], &m, vec![]);
                self.op("Add", n, &[&m, &b], n, vec![]);
            }
            Op::Prelu(c) => {
                // `[C, 1, …]` along the channel axis (ONNX broadcasts the slope from the last
                // axis), or `[1]`.
                let mut dims = vec![1; model.graph.shapes[node.inputs[0].as_str()].len()];
                dims[0] = c.num_parameters;
                if c.num_parameters == 1 {
                    dims = vec![1];
                }
                let w = self.init(f32_tensor(&param("weight"), &dims, &values(model, &param("weight"))?));
                self.op("PRelu", n, &[x, &w], n, vec![]);
            }
            Op::GroupNorm(c) => {
                // `[C, 1, …]` on the channel axis.
                let sample = model.graph.shapes[node.inputs[0].as_str()].clone();
                let mut dims = vec![1; sample.len()];
                dims[0] = c.num_channels;
                let (w, b) = match c.affine {
                    true => (values(model, &param("weight"))?, values(model, &param("bias"))?),
                    false => (vec![1.0; c.num_channels], vec![0.0; c.num_channels]),
                };
                let eps = float("epsilon", c.eps as f32);
                if c.num_groups == c.num_channels {
                    let (w, b) = (self.init(f32_tensor(&param("weight"), &[c.num_channels], &w)), self.init(f32_tensor(&param("bias"), &[c.num_channels], &b)));
                    self.op("InstanceNormalization", n, &[x, &w, &b], n, vec![eps]);
                } else {
                    // PyTorch's own form: each group one instance of `[N, G, C/G·…]`, normalised
                    // without an affine map, reshaped back, then the per-channel one.
                    let g = c.num_groups;
                    let grouped_shape = self.init(i64_tensor(&format!("{n}.grouped_shape"), &[3], &[0, g as i64, -1]));
                    let back: Vec<i64> = std::iter::once(0).chain(sample.iter().map(|&d| d as i64)).collect();
                    let back = self.init(i64_tensor(&format!("{n}.shape"), &[back.len()], &back));
                    let (ones, zeros) = (self.init(f32_tensor(&format!("{n}.unit_scale"), &[g], &vec![1.0; g])), self.init(f32_tensor(&format!("{n}.zero_bias"), &[g], &vec![0.0; g])));
                    let (grouped, normalized, ungrouped) = (format!("{n}.grouped"), format!("{n}.normalized"), format!("{n}.ungrouped"));
                    self.op("Reshape", &grouped, &[x, &grouped_shape], &grouped, vec![]);
                    self.op("InstanceNormalization", &normalized, &[&grouped, &ones, &zeros], &normalized, vec![eps]);
                    self.op("Reshape", &ungrouped, &[&normalized, &back], &ungrouped, vec![]);
                    let (w, b) = (self.init(f32_tensor(&param("weight"), &dims, &w)), self.init(f32_tensor(&param("bias"), &dims, &b)));
                    let scaled = format!("{n}.scaled");
                    self.op("Mul", &scaled, &[&ungrouped, &w], &scaled, vec![]);
                    self.op("Add", n, &[&scaled, &b], n, vec![]);
                }
            }
            Op::LayerNorm(c) => {
                let numel: usize = c.normalized_shape.iter().product();
                let (w, b) = if c.elementwise_affine {
                    (self.param_init(model, &param("weight"))?, self.param_init(model, &param("bias"))?)
                } else {
                    (self.init(f32_tensor(&param("weight"), &c.normalized_shape, &vec![1.0; numel])), self.init(f32_tensor(&param("bias"), &c.normalized_shape, &vec![0.0; numel])))
                };
                self.op("LayerNormalization", n, &[x, &w, &b], n, vec![int("axis", -(c.normalized_shape.len() as i64)), float("epsilon", c.eps as f32)]);
            }
            Op::Relu(_) => self.op("Relu", n, &[x], n, vec![]),
            Op::Sigmoid(_) => self.op("Sigmoid", n, &[x], n, vec![]),
            Op::Tanh(_) => self.op("Tanh", n, &[x], n, vec![]),
            Op::Relu6(_) => self.clip(n, x, 0.0, 6.0),
            Op::Silu(_) => {
                let s = format!("{n}.sigmoid");
                self.op("Sigmoid", &s, &[x], &s, vec![]);
                self.op("Mul", n, &[x, &s], n, vec![]);
            }
            Op::Gelu(c) => self.gelu(n, x, c.approximate),
            Op::LeakyRelu(c) => self.op("LeakyRelu", n, &[x], n, vec![float("alpha", c.negative_slope as f32)]),
            Op::Elu(c) => self.op("Elu", n, &[x], n, vec![float("alpha", c.alpha as f32)]),
            Op::Selu(_) => self.op("Selu", n, &[x], n, vec![]),
            Op::Celu(c) => self.op("Celu", n, &[x], n, vec![float("alpha", c.alpha as f32)]),
            Op::Hardtanh(c) => self.clip(n, x, c.min_val as f32, c.max_val as f32),
            Op::Softplus(c) => self.softplus(n, x, c.beta as f32, c.threshold as f32),
            Op::Mish(_) => {
                // Opset 17 has no Mish: x·tanh(softplus(x)), as PyTorch writes it there.
                let (sp, t) = (format!("{n}.softplus"), format!("{n}.tanh"));
                self.op("Softplus", &sp, &[x], &sp, vec![]);
                self.op("Tanh", &t, &[&sp], &t, vec![]);
                self.op("Mul", n, &[x, &t], n, vec![]);
            }
            Op::Softsign(_) => self.op("Softsign", n, &[x], n, vec![]),
            Op::Hardsigmoid(_) => self.op("HardSigmoid", n, &[x], n, vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)]),
            Op::Hardswish(_) => self.op("HardSwish", n, &[x], n, vec![]),
            Op::MaxPool1d(c) | Op::AvgPool1d(c) => self.pool(n, x, c, 1, matches!(node.op, Op::MaxPool1d(_))),
            Op::MaxPool2d(c) | Op::AvgPool2d(c) => self.pool(n, x, c, 2, matches!(node.op, Op::MaxPool2d(_))),
            Op::GlobalAvgPool(_) => {
                // ONNX keeps the pooled dims as 1s; wick's op drops them.
                let p = format!("{n}.pooled");
                self.op("GlobalAveragePool", n, &[x], &p, vec![]);
                self.op("Flatten", &format!("{n}.flatten"), &[&p], n, vec![int("axis", 1)]);
            }
            Op::Flatten(_) => {
                let out = &model.graph.shapes[n];
                if out.len() == 1 {
                    self.op("Flatten", n, &[x], n, vec![int("axis", 1)]);
                } else {
                    let dims: Vec<i64> = std::iter::once(0).chain(out.iter().map(|&d| d as i64)).collect();
                    let s = self.init(i64_tensor(&format!("{n}.shape"), &[dims.len()], &dims));
                    self.op("Reshape", n, &[x, &s], n, vec![]);
                }
            }
            Op::Reshape(_) => {
                let dims: Vec<i64> = std::iter::once(0).chain(model.graph.shapes[n].iter().map(|&d| d as i64)).collect();
                let s = self.init(i64_tensor(&format!("{n}.shape"), &[dims.len()], &dims));
                self.op("Reshape", n, &[x, &s], n, vec![]);
            }
            Op::Mul(_) => self.op("Mul", n, &[&node.inputs[0], &node.inputs[1]], n, vec![]),
            Op::Add(_) => {
                let mut acc = node.inputs[0].clone();
                for (k, other) in node.inputs.iter().enumerate().skip(1) {
                    let out = if k + 1 == node.inputs.len() { n.to_string() } else { format!("{n}.partial{k}") };
                    self.op("Add", &out, &[&acc, other], &out, vec![]);
                    acc = out;
                }
            }
            Op::Concat(c) => {
                let ins: Vec<&str> = node.inputs.iter().map(String::as_str).collect();
                self.op("Concat", n, &ins, n, vec![int("axis", c.dim)]);
            }
            Op::Dropout(_) => self.op("Identity", n, &[x], n, vec![]),
            Op::Softmax(c) => self.op("Softmax", n, &[x], n, vec![int("axis", c.dim)]),
            Op::LogSoftmax(c) => self.op("LogSoftmax", n, &[x], n, vec![int("axis", c.dim)]),
            Op::Select(c) => {
                let i = self.init(i64_tensor(&format!("{n}.index"), &[], &[c.index]));
                self.op("Gather", n, &[x, &i], n, vec![int("axis", c.dim)]);
            }
            Op::Narrow(c) => {
                let d = sample_dim(c.dim, in_shape.len())?;
                let first = c.first(in_shape[d])? as i64;
                let mut bound = |what: &str, v: i64| self.init(i64_tensor(&format!("{n}.{what}"), &[1], &[v]));
                let (starts, ends, axes) = (bound("starts", first), bound("ends", first + c.length as i64), bound("axes", d as i64 + 1));
                self.op("Slice", n, &[x, &starts, &ends, &axes], n, vec![]);
            }
            Op::Transpose(c) => {
                let rank = in_shape.len();
                let (a, b) = (sample_dim(c.dim0, rank)? + 1, sample_dim(c.dim1, rank)? + 1);
                let mut perm: Vec<usize> = (0..=rank).collect();
                perm.swap(a, b);
                self.op("Transpose", n, &[x], n, vec![ints("perm", &perm)]);
            }
            Op::Pad(c) => {
                // ONNX's pads: each axis's begin, then each axis's end, the batch's none.
                let per = c.per_dim(in_shape.len())?;
                let side = |end: bool| std::iter::once(0).chain(per.iter().map(move |p| if end { p.1 } else { p.0 } as i64));
                let pads: Vec<i64> = side(false).chain(side(true)).collect();
                let p = self.init(i64_tensor(&format!("{n}.pads"), &[pads.len()], &pads));
                let v = self.scalar(&format!("{n}.value"), c.value as f32);
                self.op("Pad", n, &[x, &p, &v], n, vec![]);
            }
            Op::Sum(c) => {
                // ReduceSum takes its axes as an input from opset 13 on.
                let d = sample_dim(c.dim, in_shape.len())? + 1;
                let axes = self.init(i64_tensor(&format!("{n}.axes"), &[1], &[d as i64]));
                self.op("ReduceSum", n, &[x, &axes], n, vec![int("keepdims", c.keepdim as i64)]);
            }
            Op::Mean(c) | Op::Amax(c) => {
                let d = sample_dim(c.dim, in_shape.len())? + 1;
                let op = if matches!(node.op, Op::Mean(_)) { "ReduceMean" } else { "ReduceMax" };
                self.op(op, n, &[x], n, vec![ints("axes", &[d]), int("keepdims", c.keepdim as i64)]);
            }
            Op::Gru(c) | Op::Lstm(c) => self.recurrent(model, node, x, c, matches!(node.op, Op::Gru(_)))?,
            Op::PrependRows(c) => {
                // `torch.cat([rows.expand(n, -1, -1), x], 1)` as PyTorch's dynamo export writes it.
                let rows = self.init(f32_tensor(&param("weight"), &[1, c.num_rows, c.embedding_dim], &values(model, &param("weight"))?));
                let (batch, shape, expanded) = (format!("{n}.batch"), format!("{n}.shape"), format!("{n}.expanded"));
                self.op("Shape", &batch, &[x], &batch, vec![int("start", 0), int("end", 1)]);
                let rest = self.init(i64_tensor(&format!("{n}.row_shape"), &[2], &[c.num_rows as i64, c.embedding_dim as i64]));
                self.op("Concat", &shape, &[&batch, &rest], &shape, vec![int("axis", 0)]);
                self.op("Expand", &expanded, &[&rows, &shape], &expanded, vec![]);
                self.op("Concat", n, &[&expanded, x], n, vec![int("axis", 1)]);
            }
            Op::Attention(c) if node.inputs.len() == 3 => self.attention(n, &node.inputs, in_shape[1], c.num_heads, c.score_scale(in_shape[1]) as f32),
            Op::Attention(_) => return Err("attention masked by token ids has no ONNX form in this wick yet".into()),
            op @ (Op::Embedding(_) | Op::PositionEmbedding(_) | Op::EmbeddingRow(_) | Op::RelativePositionBias(_) | Op::MaskedMean(_) | Op::MaskedPool(_) | Op::L2Normalize(_)) => {
                return Err(format!("the {} op has no ONNX form in this wick yet", op.name()));
            }
        }
        Ok(())
    }

    /// A GRU or LSTM as ONNX's time-major ops, one node per layer: `Transpose` to `[T, N, F]`,
    /// each layer's `Y [T, D, N, H]` made the next layer's `[T, N, D·H]` (a `Squeeze` of the
    /// direction axis, or for two directions a `Transpose` to `[T, N, 2, H]` and a `Reshape`),
    /// `Transpose` back. Gate blocks go back to ONNX's order (GRU z, r, h with
    /// `linear_before_reset = 1`; LSTM i, o, f, c); a missing bias is written as zeros.
    fn recurrent(&mut self, model: &Model, node: &Node, x: &str, c: &RnnCfg, gru: bool) -> std::result::Result<(), String> {
        let n = node.name.as_str();
        let gates = if gru { 3 } else { 4 };
        let (h, dirs) = (c.hidden_size, c.dirs());
        let rows = gates * h;
        let reorder = |v: &[f32], cols: usize| super::reorder_gates(v, gru, true, h, cols);
        let values = |name: String| values(model, &name);
        let mut cur = format!("{n}.time_major");
        self.op("Transpose", &cur, &[x], &cur, vec![ints("perm", &[1, 0, 2])]);
        // The direction axis to squeeze (one direction), or the shape merging two directions.
        let (axes, by_step) = match dirs {
            1 => (Some(self.init(i64_tensor(&format!("{n}.direction_axis"), &[1], &[1]))), None),
            _ => (None, Some(self.init(i64_tensor(&format!("{n}.by_step_shape"), &[3], &[0, 0, -1])))),
        };
        for layer in 0..c.num_layers {
            let input = if layer == 0 { c.input_size } else { dirs * h };
            let (mut w, mut r, mut b) = (vec![], vec![], vec![]);
            for reverse in (0..dirs).map(|d| d == 1) {
                let [w_ih, w_hh, b_ih, b_hh] = crate::model::arch::rnn_params(layer, reverse);
                w.extend(reorder(&values(node.param(w_ih))?, input));
                r.extend(reorder(&values(node.param(w_hh))?, h));
                match c.bias {
                    true => {
                        b.extend(reorder(&values(node.param(b_ih))?, 1));
                        b.extend(reorder(&values(node.param(b_hh))?, 1));
                    }
                    false => b.extend(vec![0.0; 2 * rows]),
                }
            }
            let w = self.init(f32_tensor(&format!("{n}.W_l{layer}"), &[dirs, rows, input], &w));
            let r = self.init(f32_tensor(&format!("{n}.R_l{layer}"), &[dirs, rows, h], &r));
            let b = self.init(f32_tensor(&format!("{n}.B_l{layer}"), &[dirs, 2 * rows], &b));
            let y = format!("{n}.Y_l{layer}");
            let mut attrs = vec![int("hidden_size", h as i64)];
            if gru {
                attrs.push(int("linear_before_reset", 1));
            }
            if dirs == 2 {
                attrs.push(AttributeProto { name: "direction".into(), r#type: attr_type::STRING, s: b"bidirectional".to_vec(), ..Default::default() });
            }
            let node_name = if c.num_layers == 1 { n.to_string() } else { format!("{n}.l{layer}") };
            self.op(if gru { "GRU" } else { "LSTM" }, &node_name, &[&cur, &w, &r, &b], &y, attrs);
            let seq = format!("{n}.seq_l{layer}");
            match (&axes, &by_step) {
                (Some(axes), _) => self.op("Squeeze", &seq, &[&y, axes], &seq, vec![]),
                (None, Some(shape)) => {
                    let swapped = format!("{n}.by_step_l{layer}");
                    self.op("Transpose", &swapped, &[&y], &swapped, vec![ints("perm", &[0, 2, 1, 3])]);
                    self.op("Reshape", &seq, &[&swapped, shape], &seq, vec![]);
                }
                (None, None) => unreachable!("one of the two is set"),
            }
            cur = seq;
        }
        self.op("Transpose", &format!("{n}.batch_first"), &[&cur], n, vec![ints("perm", &[1, 0, 2])]);
        Ok(())
    }

    fn pool(&mut self, n: &str, x: &str, c: &PoolCfg, spatial: usize, max: bool) {
        let k = hw(c.kernel_size, spatial);
        let s = hw(c.stride.unwrap_or(c.kernel_size), spatial);
        let p = hw(c.padding, spatial);
        let pads: Vec<usize> = p.iter().chain(p.iter()).copied().collect();
        let mut attrs = vec![ints("kernel_shape", &k), ints("strides", &s), ints("pads", &pads)];
        if !max {
            attrs.push(int("count_include_pad", c.count_include_pad as i64));
        }
        if c.ceil_mode {
            attrs.push(int("ceil_mode", 1));
        }
        self.op(if max { "MaxPool" } else { "AveragePool" }, n, &[x], n, attrs);
    }

    /// Exact GELU as `x · (1 + erf(x / √2)) · 0.5` (the legacy exporter's nodes); the tanh
    /// form as opset 20's `Gelu`.
    fn gelu(&mut self, n: &str, x: &str, approx: GeluApprox) {
        if approx == GeluApprox::Tanh {
            let a = AttributeProto { name: "approximate".into(), r#type: attr_type::STRING, s: b"tanh".to_vec(), ..Default::default() };
            return self.op("Gelu", n, &[x], n, vec![a]);
        }
        let one = self.scalar(&format!("{n}.one"), 1.0);
        let half = self.scalar(&format!("{n}.half"), 0.5);
        let sqrt2 = self.scalar(&format!("{n}.sqrt2"), std::f32::consts::SQRT_2);
        let [d, e, p1, xp] = ["div", "erf", "plus1", "xtimes"].map(|s| format!("{n}.{s}"));
        self.op("Div", &d, &[x, &sqrt2], &d, vec![]);
        self.op("Erf", &e, &[&d], &e, vec![]);
        self.op("Add", &p1, &[&e, &one], &p1, vec![]);
        self.op("Mul", &xp, &[x, &p1], &xp, vec![]);
        self.op("Mul", n, &[&xp, &half], n, vec![]);
    }

    fn param_init(&mut self, model: &Model, name: &str) -> std::result::Result<String, String> {
        Ok(self.init(f32_tensor(name, model.p(name).dims(), &values(model, name)?)))
    }

    /// `QuantizeLinear` then `DequantizeLinear` of the layer's input with its static
    /// parameters; a 7-bit input is clipped to its range first (ONNX's uint8 saturates at 255).
    /// A per-token input has no static parameters, and ONNX's quantisers no per-row form.
    fn quantize_input(&mut self, n: &str, x: &str, q: &QuantLayer) -> std::result::Result<String, String> {
        let Some(p) = q.input.fixed() else { return Err("has a per-token (dynamic) input quantisation, which ONNX's QuantizeLinear cannot express".into()) };
        let scale = self.scalar(&format!("{n}.input_scale"), p.scale);
        let signed = p.act == ActType::I8;
        let zp_byte = if signed { p.zero_point as i8 as u8 } else { p.zero_point as u8 };
        let zp = self.init(byte_tensor(&format!("{n}.input_zero_point"), &[], &[zp_byte], signed));
        let mut src = x.to_string();
        if p.act == ActType::U7 {
            let (lo, hi) = p.real_range();
            let (lo, hi) = (self.scalar(&format!("{n}.input_min"), lo), self.scalar(&format!("{n}.input_max"), hi));
            let clipped = format!("{n}.input_clipped");
            self.op("Clip", &clipped, &[x, &lo, &hi], &clipped, vec![]);
            src = clipped;
        }
        let [qn, dq] = ["input_quantized", "input_dequantized"].map(|s| format!("{n}.{s}"));
        self.op("QuantizeLinear", &qn, &[&src, &scale, &zp], &qn, vec![]);
        self.op("DequantizeLinear", &dq, &[&qn, &scale, &zp], &dq, vec![]);
        Ok(dq)
    }

    /// An embedding lookup: `Gather` of the table's rows (float, or an INT8 table's codes
    /// dequantised per row) at the model's int64 token ids.
    fn embedding(&mut self, model: &Model, node: &Node, table: Option<&QWeight>) -> std::result::Result<(), String> {
        let ids = &node.inputs[0];
        if ids != &model.arch.input.name {
            return Err(format!("an embedding reads the model input's token ids in ONNX; this one reads '{ids}'"));
        }
        let w = self.weight(model, node, table, false)?;
        self.op("Gather", &node.name, &[&w, ids], &node.name, vec![int("axis", 0)]);
        Ok(())
    }

    /// `x + table[offset..offset + L]` for `x [N, L, D]`: the table's rows as an `Add` of a
    /// constant (dequantised from its int8 rows in an INT8 artifact), as PyTorch exports a
    /// learned position table.
    fn position_embedding(&mut self, model: &Model, node: &Node, c: &PositionEmbeddingCfg, table: Option<&QWeight>) -> std::result::Result<(), String> {
        let (n, x) = (node.name.as_str(), node.inputs[0].as_str());
        let len = model.graph.shapes[x][0];
        let w = self.weight(model, node, table, false)?;
        let rows = if c.offset == 0 && len == c.num_positions {
            w
        } else {
            let mut bound = |what: &str, v: usize| self.init(i64_tensor(&format!("{n}.{what}"), &[1], &[v as i64]));
            let (starts, ends, axes) = (bound("starts", c.offset), bound("ends", c.offset + len), bound("axes", 0));
            let rows = format!("{n}.rows");
            self.op("Slice", &rows, &[&w, &starts, &ends, &axes], &rows, vec![]);
            rows
        };
        self.op("Add", n, &[x, &rows], n, vec![]);
        Ok(())
    }

    /// Attention without a mask (`AttentionCfg`) over `q, k, v [N, L, d]` named `n`, as PyTorch
    /// writes it: each split into heads `[N, H, L, d/H]` (`k` as `[N, H, d/H, L]`),
    /// `softmax(q·kᵀ · s)·v` (`s` the node's scale), the heads joined back.
    fn attention(&mut self, n: &str, ins: &[String], d: usize, heads: usize, scale: f32) {
        let e = d / heads;
        let split = self.init(i64_tensor(&format!("{n}.heads_shape"), &[4], &[0, 0, heads as i64, e as i64]));
        let mut split_heads = |input: &str, part: &str, perm: &[usize]| {
            let (r, t) = (format!("{n}.{part}_split"), format!("{n}.{part}_heads"));
            self.op("Reshape", &r, &[input, &split], &r, vec![]);
            self.op("Transpose", &t, &[&r], &t, vec![ints("perm", perm)]);
            t
        };
        let (q, kt, v) = (split_heads(&ins[0], "q", &[0, 2, 1, 3]), split_heads(&ins[1], "k", &[0, 2, 3, 1]), split_heads(&ins[2], "v", &[0, 2, 1, 3]));
        let [scores, scaled, probs, mixed, joined] = ["scores", "scaled", "probs", "mixed", "joined"].map(|s| format!("{n}.{s}"));
        let scale = self.scalar(&format!("{n}.scale"), scale);
        self.op("MatMul", &scores, &[&q, &kt], &scores, vec![]);
        self.op("Mul", &scaled, &[&scores, &scale], &scaled, vec![]);
        self.op("Softmax", &probs, &[&scaled], &probs, vec![int("axis", -1)]);
        self.op("MatMul", &mixed, &[&probs, &v], &mixed, vec![]);
        self.op("Transpose", &joined, &[&mixed], &joined, vec![ints("perm", &[0, 2, 1, 3])]);
        let merged = self.init(i64_tensor(&format!("{n}.shape"), &[3], &[0, 0, d as i64]));
        self.op("Reshape", n, &[&joined, &merged], n, vec![]);
    }

    /// The layer's weight, named `node.weight`: the float tensor, or the int8 codes dequantised
    /// per output channel; `transpose` writes a 2-D weight as `[in, out]` (for MatMul).
    fn weight(&mut self, model: &Model, node: &Node, quant: Option<&QWeight>, transpose: bool) -> std::result::Result<String, String> {
        let name = node.param("weight");
        let dims = model.p(&name).dims().to_vec();
        let Some(qw) = quant else {
            let v = values(model, &name)?;
            if !transpose {
                return Ok(self.init(f32_tensor(&name, &dims, &v)));
            }
            return Ok(self.init(f32_tensor(&name, &[dims[1], dims[0]], &transposed(&v, dims[0], dims[1]))));
        };
        let out = qw.shape[0];
        let codes: Vec<u8> = qw.values.iter().map(|&v| v as u8).collect();
        let (codes, shape, axis) = if transpose { (transposed(&codes, dims[0], dims[1]), vec![dims[1], dims[0]], 1) } else { (codes, qw.shape.clone(), 0) };
        let w = self.init(byte_tensor(&format!("{name}_quantized"), &shape, &codes, true));
        let s = self.init(f32_tensor(&format!("{name}_scale"), &[out], &qw.scales));
        let zp = self.init(byte_tensor(&format!("{name}_zero_point"), &[out], &vec![0; out], true));
        self.op("DequantizeLinear", &name, &[&w, &s, &zp], &name, vec![int("axis", axis)]);
        Ok(name)
    }

    /// The layer's bias: float, or int32 at scale `s_in·s_c` for a quantised layer (whose bias
    /// the artifact already holds on that grid, so the codes are exact).
    fn bias(&mut self, model: &Model, node: &Node, quant: Option<&QuantLayer>) -> std::result::Result<String, String> {
        let name = node.param("bias");
        let Some(q) = quant else { return self.param_init(model, &name) };
        let b = values(model, &name)?;
        let scales = q.multipliers();
        let codes: Vec<i32> = b.iter().zip(&scales).map(|(&b, &s)| crate::artifact::bias_code(b, s)).collect();
        let out = b.len();
        let bq = self.init(i32_tensor(&format!("{name}_quantized"), &[out], &codes));
        let s = self.init(f32_tensor(&format!("{name}_scale"), &[out], &scales));
        let zp = self.init(i32_tensor(&format!("{name}_zero_point"), &[out], &vec![0; out]));
        self.op("DequantizeLinear", &name, &[&bq, &s, &zp], &name, vec![int("axis", 0)]);
        Ok(name)
    }
}
