//! The candle executor: runs a model's nodes in topological order, in eval mode (running
//! statistics, no dropout) or train mode (batch statistics with running-statistic updates,
//! dropout), with taps that return intermediate activations and a hook through which
//! fake-quantisation rewrites layer inputs and weights. Uses `model`, `error`.

use super::act_op::{activation, activation_fused, Act};
use super::arch::{Node, Op};
use super::qunit::has_units;
use super::recurrent::{self, Cell, Weights};
use super::{ops, text_ops, Model};
use crate::error::{Result, WickError};
use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Eval or train semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train,
}

/// Rewrites what a layer sees: used by fake-quantisation (QAT and `--simulate`).
pub trait Hook {
    /// The input of quantisation unit `unit` (`model::qunit`) before its matmul reads it.
    fn input(&self, _unit: &str, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }
    /// The weight of quantisation unit `unit` before it is used.
    fn weight(&self, _unit: &str, w: Tensor) -> Result<Tensor> {
        Ok(w)
    }
    /// A replacement computation of a whole node with units (conv, linear, GRU, LSTM: the
    /// integer runtime); `None` keeps the float one.
    fn layer(&self, _node: &Node, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Whether the activation ops round their polynomials' steps fused (`vmath::Fused`), as the
    /// compiled plans do: the integer reference, which the integer plans equal bit for bit.
    /// Training and float evaluation keep split steps (`act_op::activation`).
    fn fused_activations(&self) -> bool {
        false
    }
}

/// Options of one forward run.
pub struct Run<'a> {
    pub mode: Mode,
    /// Names of nodes (or the input) whose values to return besides the output.
    pub taps: &'a [String],
    pub hook: Option<&'a dyn Hook>,
    /// Dropout's random stream in train mode.
    pub rng: Option<&'a RefCell<ChaCha8Rng>>,
}

impl<'a> Run<'a> {
    /// Plain eval: no taps, no hook.
    pub fn eval() -> Run<'static> {
        Run { mode: Mode::Eval, taps: &[], hook: None, rng: None }
    }
}

/// Whether `op` carries a weight that quantisation targets (conv and linear).
pub fn is_weight_layer(op: &Op) -> bool {
    matches!(op, Op::Linear(_) | Op::Conv1d(_) | Op::Conv2d(_))
}

impl Model {
    /// Eval or train forward pass to the output node.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(self.run(x, &Run { mode, taps: &[], hook: None, rng: None })?.0)
    }

    /// Fails unless `x` is a batch `[N, …]` of the model's input shape.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let expected = self.input_shape();
        if x.rank() != expected.len() + 1 || &x.dims()[1..] != expected {
            return Err(WickError::invalid("input", format!("shape {:?} does not fit the model input [N, {}]", x.dims(), join(expected))));
        }
        Ok(())
    }

    /// Forward pass returning the output and the tapped values.
    pub fn run(&self, x: &Tensor, r: &Run) -> Result<(Tensor, BTreeMap<String, Tensor>)> {
        self.check_input(x)?;
        let mut values: BTreeMap<&str, Tensor> = BTreeMap::new();
        values.insert(self.arch.input.name.as_str(), x.clone());
        let fallback = RefCell::new(ChaCha8Rng::seed_from_u64(0));
        let rng = r.rng.unwrap_or(&fallback);
        let fused = match r.mode {
            Mode::Train => self.relu_fusions(r.taps),
            Mode::Eval => vec![None; self.arch.nodes.len()],
        };
        let mut done = vec![false; self.arch.nodes.len()];
        for &i in &self.graph.order {
            if done[i] {
                continue;
            }
            let node = &self.arch.nodes[i];
            let ins: Vec<&Tensor> = node.inputs.iter().map(|n| &values[n.as_str()]).collect();
            let y = self.node_forward(node, &ins, r, rng, fused[i].is_some())?;
            // A fused ReLU's value is the node's output, under the ReLU's name.
            let name = match fused[i] {
                Some(j) => {
                    done[j] = true;
                    &self.arch.nodes[j].name
                }
                None => &node.name,
            };
            values.insert(name.as_str(), y);
        }
        let out = values[self.arch.output_name()].clone();
        let mut taps = BTreeMap::new();
        for t in r.taps {
            let v = values.get(t.as_str()).ok_or_else(|| WickError::invalid("tap", format!("no node or input named '{t}'")))?;
            taps.insert(t.clone(), v.clone());
        }
        Ok((out, taps))
    }

    /// For each node, the ReLU fused into it in train mode: a BatchNorm or two-input Add whose
    /// only consumer is a ReLU, unless its own value is the output or tapped (the ReLU's value
    /// stays available under the ReLU's name). Fused, the pair is one op with one backward
    /// pass, and candle keeps one gradient fewer (its accumulation runs on the calling thread
    /// alone).
    fn relu_fusions(&self, taps: &[String]) -> Vec<Option<usize>> {
        let nodes = &self.arch.nodes;
        let mut consumers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (j, n) in nodes.iter().enumerate() {
            for input in &n.inputs {
                consumers.entry(input.as_str()).or_default().push(j);
            }
        }
        let kept = |name: &str| name == self.arch.output_name() || taps.iter().any(|t| t == name);
        nodes
            .iter()
            .map(|n| {
                let fusable = matches!(n.op, Op::BatchNorm1d(_) | Op::BatchNorm2d(_)) || (matches!(n.op, Op::Add(_)) && n.inputs.len() == 2);
                match consumers.get(n.name.as_str()).map(Vec::as_slice) {
                    Some(&[j]) if fusable && matches!(nodes[j].op, Op::Relu(_)) && !kept(&n.name) => Some(j),
                    _ => None,
                }
            })
            .collect()
    }

    /// One node in eval mode on float inputs, without a hook: how the compiled integer runtime
    /// runs the ops it has no kernel of its own for.
    pub fn node_eval(&self, node: &Node, ins: &[&Tensor]) -> Result<Tensor> {
        let rng = RefCell::new(ChaCha8Rng::seed_from_u64(0));
        self.node_forward(node, ins, &Run::eval(), &rng, false)
    }

    /// One node (followed by a ReLU when `relu`, for the nodes `relu_fusions` picks); a
    /// tensor-library error is reported as an error of this node.
    fn node_forward(&self, node: &Node, ins: &[&Tensor], r: &Run, rng: &RefCell<ChaCha8Rng>, relu: bool) -> Result<Tensor> {
        self.compute_node(node, ins, r, rng, relu).map_err(|e| match e {
            WickError::Candle(c) => WickError::node(&node.name, c.to_string()),
            other => other,
        })
    }

    fn compute_node(&self, node: &Node, ins: &[&Tensor], r: &Run, rng: &RefCell<ChaCha8Rng>, relu: bool) -> Result<Tensor> {
        let train = r.mode == Mode::Train;
        let p = |s: &str| self.p(&node.param(s));
        let bias = |has: bool| if has { Some(self.p(&node.param("bias"))) } else { None };
        let x = ins[0];
        if let (Some(h), true) = (r.hook, has_units(&node.op)) {
            if let Some(y) = h.layer(node, x)? {
                return Ok(y);
            }
        }
        let (x, w) = if is_weight_layer(&node.op) {
            let x = match r.hook {
                Some(h) => h.input(&node.name, x.clone())?,
                None => x.clone(),
            };
            let w = match r.hook {
                Some(h) => h.weight(&node.name, p("weight").clone())?,
                None => p("weight").clone(),
            };
            (x, Some(w))
        } else {
            (x.clone(), None)
        };
        match &node.op {
            Op::Linear(c) => ops::linear(&x, w.as_ref().unwrap(), bias(c.bias)),
            Op::Conv1d(c) => ops::conv1d(&x, w.as_ref().unwrap(), bias(c.bias), c, train),
            Op::Conv2d(c) => ops::conv2d(&x, w.as_ref().unwrap(), bias(c.bias), c, train),
            Op::BatchNorm1d(c) | Op::BatchNorm2d(c) => {
                let bp = ops::BnParams {
                    weight: if c.affine { Some(p("weight")) } else { None },
                    bias: if c.affine { Some(p("bias")) } else { None },
                    running_mean: &self.params[&node.param("running_mean")],
                    running_var: &self.params[&node.param("running_var")],
                };
                ops::batchnorm(&x, bp, c, train, relu)
            }
            Op::LayerNorm(c) => {
                let (w, b) = if c.elementwise_affine { (Some(p("weight")), Some(p("bias"))) } else { (None, None) };
                ops::layernorm(&x, w, b, c)
            }
            Op::Relu(_) if train => super::relu_train::relu(&x),
            Op::Relu(_) => Ok(x.relu()?),
            op @ (Op::Relu6(_)
            | Op::Gelu(_)
            | Op::Silu(_)
            | Op::Sigmoid(_)
            | Op::Tanh(_)
            | Op::LeakyRelu(_)
            | Op::Hardtanh(_)
            | Op::Elu(_)
            | Op::Selu(_)
            | Op::Celu(_)
            | Op::Softplus(_)
            | Op::Mish(_)
            | Op::Softsign(_)
            | Op::Hardsigmoid(_)
            | Op::Hardswish(_)) => {
                let act = Act::of(op).expect("an activation");
                match r.hook.is_some_and(|h| h.fused_activations()) {
                    true => activation_fused(&x, act),
                    false => activation(&x, act),
                }
            }
            op @ (Op::MaxPool1d(_) | Op::MaxPool2d(_) | Op::AvgPool1d(_) | Op::AvgPool2d(_)) => ops::pool(&x, ops::pool_geom(op).expect("a pooling op")),
            Op::GlobalAvgPool(_) => ops::global_avg_pool(&x),
            Op::Flatten(c) => ops::flatten(&x, c),
            Op::Reshape(c) => {
                let target = super::graph::reshape_target(&c.shape, x.elem_count() / x.dim(0)?.max(1)).map_err(|m| WickError::node(&node.name, m))?;
                Ok(x.reshape(std::iter::once(x.dim(0)?).chain(target).collect::<Vec<_>>())?)
            }
            Op::Mul(_) => Ok(ins[0].broadcast_mul(ins[1])?),
            Op::Add(_) if relu => super::relu_train::add_relu(ins[0], ins[1]),
            Op::Add(_) => {
                let mut acc = ins[0].clone();
                for t in &ins[1..] {
                    acc = (acc + *t)?;
                }
                Ok(acc)
            }
            Op::Concat(c) => {
                let d = super::graph::sample_dim(c.dim, x.rank() - 1).map_err(|m| WickError::node(&node.name, m))? + 1;
                Ok(Tensor::cat(ins, d)?)
            }
            Op::Dropout(c) if train => ops::dropout(&x, c.p, &mut *rng.borrow_mut()),
            Op::Dropout(_) => Ok(x),
            Op::Softmax(c) => ops::softmax(&x, c.dim),
            Op::LogSoftmax(c) => ops::log_softmax(&x, c.dim),
            Op::ChannelAffine(c) => ops::channel_affine(&x, p("weight"), p("bias"), c.on_last_axis(x.rank() - 1)),
            Op::Prelu(_) => ops::prelu(&x, p("weight")),
            Op::GroupNorm(c) => ops::group_norm(&x, c.num_groups, c.eps, c.affine.then(|| (p("weight"), p("bias")))),
            Op::Gru(c) | Op::Lstm(c) => {
                let cell = if matches!(node.op, Op::Gru(_)) { Cell::Gru } else { Cell::Lstm };
                // The weights and matmul inputs pass through the hook as units (QAT, simulation).
                let weight = |s: &str| -> Result<Tensor> {
                    match r.hook {
                        Some(h) => h.weight(&node.param(s), p(s).clone()),
                        None => Ok(p(s).clone()),
                    }
                };
                let input = |s: &str, t: Tensor| -> Result<Tensor> {
                    match r.hook {
                        Some(h) => h.input(&node.param(s), t),
                        None => Ok(t),
                    }
                };
                recurrent::run(
                    cell,
                    &x,
                    c,
                    |layer, reverse| {
                        let [w_ih, w_hh, b_ih, b_hh] = super::arch::rnn_params(layer, reverse);
                        Ok(Weights { w_ih: weight(w_ih)?, w_hh: weight(w_hh)?, b_ih: c.bias.then(|| p(b_ih).clone()), b_hh: c.bias.then(|| p(b_hh).clone()) })
                    },
                    input,
                )
            }
            Op::Select(c) => recurrent::select(&x, c),
            Op::Narrow(c) => super::axis_ops::narrow(&x, c),
            Op::Transpose(c) => super::axis_ops::transpose(&x, c),
            Op::Pad(c) => super::axis_ops::pad(&x, c),
            Op::Mean(c) => super::axis_ops::mean(&x, c),
            Op::Amax(c) => super::axis_ops::amax(&x, c),
            Op::Sum(c) => super::axis_ops::sum(&x, c),
            Op::Embedding(c) => text_ops::embedding(&node.name, &x, p("weight"), c),
            Op::PositionEmbedding(c) => text_ops::add_positions(&x, p("weight"), c.offset),
            Op::PrependRows(_) => text_ops::prepend_rows(&x, p("weight")),
            Op::EmbeddingRow(c) => text_ops::add_row(&x, p("weight"), c.index),
            Op::Attention(c) => text_ops::attention(ins[0], ins[1], ins[2], ins.get(3).copied(), ins.get(4).copied(), c),
            Op::RelativePositionBias(c) => text_ops::relative_position_bias(&x, p("weight"), c),
            Op::MaskedMean(c) => text_ops::masked_mean(ins[0], ins[1], c.pad_id),
            Op::MaskedPool(c) => text_ops::masked_pool(ins[0], ins[1], c),
            Op::L2Normalize(c) => text_ops::l2_normalize(&x, c),
        }
    }
}

fn join(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}
