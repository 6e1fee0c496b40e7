//! Structural checks of an architecture: unique names, no dangling inputs, no cycles, and shape
//! inference end to end. Every error names the node at fault. Uses `model::arch` and `error`.

use super::arch::{Arch, Op, Pair};
use crate::error::{Result, WickError};
use std::collections::{BTreeMap, BTreeSet};

/// An architecture checked for structure, with its nodes in execution order and every node's
/// per-sample output shape (no batch dimension).
#[derive(Debug, Clone)]
pub struct Graph {
    /// Node indices into `arch.nodes`, each after all of its inputs.
    pub order: Vec<usize>,
    /// Per-sample output shape of every node, and of the model input under its name.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

/// The most values one sample's activation at a node may hold, and one parameter tensor:
/// bounds far above any model wick runs, checked with overflow-free arithmetic so that no
/// architecture can make wick allocate absurd memory or wrap a size around.
pub const MAX_SAMPLE_VALUES: usize = 1 << 28;
pub const MAX_PARAM_VALUES: usize = 1 << 31;

/// The product of `dims`, or `None` past `limit` (or on overflow).
fn product_within(dims: &[usize], limit: usize) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d).filter(|&p| p <= limit))
}

/// Checks structure and infers shapes; `origin` names the architecture's source in errors.
pub fn analyse(arch: &Arch, origin: &str) -> Result<Graph> {
    let bad = |msg: String| WickError::Arch { path: origin.to_string(), msg };
    if arch.nodes.is_empty() {
        return Err(bad("field 'nodes' is empty".into()));
    }
    if arch.input.shape.is_empty() {
        return Err(bad("field 'input.shape' is empty".into()));
    }
    let mut index = BTreeMap::new();
    for (i, n) in arch.nodes.iter().enumerate() {
        if n.name == arch.input.name {
            return Err(bad(format!("node '{}' has the same name as the model input", n.name)));
        }
        if index.insert(n.name.as_str(), i).is_some() {
            return Err(bad(format!("node name '{}' is used twice", n.name)));
        }
    }
    for n in &arch.nodes {
        for i in &n.inputs {
            if i != &arch.input.name && !index.contains_key(i.as_str()) {
                return Err(bad(format!("node '{}' reads '{}', which is neither a node nor the input '{}'", n.name, i, arch.input.name)));
            }
        }
    }
    let order = topological_order(arch, &index).map_err(bad)?;
    let out = arch.output_name();
    if !index.contains_key(out) {
        return Err(bad(format!("field 'output' names '{out}', which is not a node")));
    }
    let within = |s: &[usize]| s.iter().all(|&d| d > 0) && product_within(s, MAX_SAMPLE_VALUES).is_some();
    if !within(&arch.input.shape) {
        return Err(bad(format!("field 'input.shape' {:?} must have dims of at least 1 and at most {MAX_SAMPLE_VALUES} values", arch.input.shape)));
    }
    let mut shapes = BTreeMap::new();
    shapes.insert(arch.input.name.clone(), arch.input.shape.clone());
    for &i in &order {
        let n = &arch.nodes[i];
        let at = |m: String| WickError::Arch { path: origin.to_string(), msg: format!("node '{}' ({}): {m}", n.name, n.op.name()) };
        check_fields(&n.op).map_err(at)?;
        for (suffix, _) in n.op.param_suffixes() {
            let shape = n.op.param_shape(suffix);
            if product_within(&shape, MAX_PARAM_VALUES).is_none() {
                return Err(at(format!("tensor '{}' would have shape {shape:?}, more than {MAX_PARAM_VALUES} values", n.param(suffix))));
            }
        }
        let ins: Vec<&Vec<usize>> = n.inputs.iter().map(|x| &shapes[x]).collect();
        let s = infer(&n.op, &ins).map_err(at)?;
        if !within(&s) {
            let fields = match n.op {
                Op::Conv1d(_) | Op::Conv2d(_) | Op::MaxPool1d(_) | Op::MaxPool2d(_) | Op::AvgPool1d(_) | Op::AvgPool2d(_) => " (its kernel_size, stride, padding and dilation set that size)",
                _ => "",
            };
            return Err(at(format!("its output per sample would have shape {s:?}: empty, or more than {MAX_SAMPLE_VALUES} values{fields}")));
        }
        shapes.insert(n.name.clone(), s);
    }
    Ok(Graph { order, shapes })
}

/// Kahn's algorithm; a leftover node lies on a cycle.
fn topological_order(arch: &Arch, index: &BTreeMap<&str, usize>) -> std::result::Result<Vec<usize>, String> {
    let n = arch.nodes.len();
    let mut indeg = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![vec![]; n];
    for (i, node) in arch.nodes.iter().enumerate() {
        for inp in &node.inputs {
            if let Some(&j) = index.get(inp.as_str()) {
                indeg[i] += 1;
                users[j].push(i);
            }
        }
    }
    // Ready nodes are taken in file order so the execution order is deterministic.
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < n {
        // Every leftover node has a leftover input, so walking inputs from one must revisit a node:
        // the nodes from that revisit on form a cycle.
        let left: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] > 0).collect();
        let mut path = vec![*left.first().expect("leftover node")];
        loop {
            let cur = *path.last().unwrap();
            let next = arch.nodes[cur].inputs.iter().filter_map(|x| index.get(x.as_str()).copied()).find(|j| left.contains(j)).expect("leftover input");
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut cyc: Vec<&str> = path[pos..].iter().rev().map(|&i| arch.nodes[i].name.as_str()).collect();
                cyc.push(cyc[0]);
                return Err(format!("the graph has a cycle: {}", cyc.join(" -> ")));
            }
            path.push(next);
        }
    }
    Ok(order)
}

/// Output length of a window op: `⌊(len + 2·pad − dil·(k − 1) − 1) / stride⌋ + 1`, in checked
/// arithmetic (a kernel, stride or dilation of 0 is an error, and so is a padded length past
/// [`MAX_SAMPLE_VALUES`], which bounds every position a kernel computes).
pub fn window_out(len: usize, k: usize, stride: usize, pad: usize, dil: usize) -> std::result::Result<usize, String> {
    if k == 0 || stride == 0 || dil == 0 {
        return Err(format!("kernel_size {k}, stride {stride} and dilation {dil} must each be at least 1"));
    }
    let overflow = || format!("padding {pad} or dilation {dil} is too large");
    let span = dil.checked_mul(k - 1).and_then(|s| s.checked_add(1)).ok_or_else(overflow)?;
    let padded = pad.checked_mul(2).and_then(|p| p.checked_add(len)).filter(|&p| p <= MAX_SAMPLE_VALUES).ok_or_else(overflow)?;
    if padded < span {
        return Err(format!("window {span} is larger than the padded input {padded}"));
    }
    Ok((padded - span) / stride + 1)
}

/// Checks of an op's fields that its shape does not catch.
fn check_fields(op: &Op) -> std::result::Result<(), String> {
    let positive = |what: &str, v: usize| if v == 0 { Err(format!("{what} must be at least 1")) } else { Ok(()) };
    match op {
        Op::Linear(c) => {
            positive("in_features", c.in_features)?;
            positive("out_features", c.out_features)
        }
        Op::Conv1d(c) => positive("out_channels", c.out_channels),
        Op::Conv2d(c) => positive("out_channels", c.out_channels),
        Op::BatchNorm1d(c) | Op::BatchNorm2d(c) => {
            if !(c.eps > 0.0 && c.eps.is_finite()) {
                return Err(format!("eps is {}; it must be a positive number", c.eps));
            }
            if !(0.0..=1.0).contains(&c.momentum) {
                return Err(format!("momentum is {}, outside [0, 1]", c.momentum));
            }
            positive("num_features", c.num_features)
        }
        Op::LayerNorm(c) if !(c.eps > 0.0 && c.eps.is_finite()) => Err(format!("eps is {}; it must be a positive number", c.eps)),
        Op::Dropout(c) if !(0.0..1.0).contains(&c.p) => Err(format!("p is {}, outside [0, 1)", c.p)),
        Op::Embedding(c) => {
            positive("num_embeddings", c.num_embeddings)?;
            positive("embedding_dim", c.embedding_dim)
        }
        Op::PositionEmbedding(c) => positive("num_positions", c.num_positions),
        Op::PrependRows(c) => positive("num_rows", c.num_rows),
        Op::ChannelAffine(c) => positive("num_features", c.num_features),
        Op::Prelu(c) => positive("num_parameters", c.num_parameters),
        Op::GroupNorm(c) if !(c.eps > 0.0 && c.eps.is_finite()) => Err(format!("eps is {}; it must be a positive number", c.eps)),
        Op::GroupNorm(c) => {
            positive("num_groups", c.num_groups)?;
            positive("num_channels", c.num_channels)?;
            match c.num_channels % c.num_groups {
                0 => Ok(()),
                _ => Err(format!("num_channels {} is not a multiple of num_groups {}", c.num_channels, c.num_groups)),
            }
        }
        Op::Attention(c) => positive("num_heads", c.num_heads),
        Op::RelativePositionBias(c) => {
            positive("num_heads", c.num_heads)?;
            if c.num_buckets < 4 || !c.num_buckets.is_multiple_of(2) {
                return Err(format!("num_buckets is {}; it must be an even number of at least 4 (half for each sign, half of those exact)", c.num_buckets));
            }
            match c.max_distance > c.num_buckets / 4 {
                true => Ok(()),
                false => Err(format!("max_distance {} must exceed the {} exact buckets per sign", c.max_distance, c.num_buckets / 4)),
            }
        }
        Op::L2Normalize(c) if !(c.eps > 0.0 && c.eps.is_finite()) => Err(format!("eps is {}; it must be a positive number", c.eps)),
        Op::Gru(c) | Op::Lstm(c) => {
            positive("input_size", c.input_size)?;
            positive("hidden_size", c.hidden_size)?;
            if !(1..=super::arch::MAX_RNN_LAYERS).contains(&c.num_layers) {
                return Err(format!("num_layers is {}; wick takes 1 to {}", c.num_layers, super::arch::MAX_RNN_LAYERS));
            }
            if !c.batch_first {
                return Err("batch_first is false; wick's tensors are batch-first ([N, T, features]): export or describe the model with batch_first = true".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn expect_rank(s: &[usize], rank: usize, what: &str) -> std::result::Result<(), String> {
    if s.len() != rank {
        return Err(format!("expects a {what} input of {rank} dims per sample, got shape {s:?}"));
    }
    Ok(())
}

fn one_input<'a>(ins: &[&'a Vec<usize>]) -> std::result::Result<&'a Vec<usize>, String> {
    if ins.len() != 1 {
        return Err(format!("takes exactly 1 input, got {}", ins.len()));
    }
    Ok(ins[0])
}

/// Resolves a dim counted with the batch (PyTorch style, negatives from the end) to a
/// per-sample dim index.
pub fn sample_dim(dim: i64, rank: usize) -> std::result::Result<usize, String> {
    let full = rank as i64 + 1;
    let d = if dim < 0 { dim + full } else { dim };
    if d < 1 || d >= full {
        return Err(format!("dim {dim} is out of range (or is the batch dim) for a {rank}-dim sample"));
    }
    Ok(d as usize - 1)
}

/// The per-sample shape a reshape to `shape` (one entry may be −1: the rest) gives a sample of
/// `numel` elements.
pub fn reshape_target(shape: &[i64], numel: usize) -> std::result::Result<Vec<usize>, String> {
    let known: i64 = shape.iter().filter(|&&d| d != -1).product();
    let free = shape.iter().filter(|&&d| d == -1).count();
    if shape.iter().any(|&d| d < -1 || d == 0) || free > 1 || (free == 1 && (known == 0 || numel as i64 % known != 0)) {
        return Err(format!("shape {shape:?} is not a shape of {numel} elements (positive sizes, at most one -1)"));
    }
    let out: Vec<usize> = shape.iter().map(|&d| if d == -1 { numel / known as usize } else { d as usize }).collect();
    if out.iter().product::<usize>() != numel {
        return Err(format!("shape {shape:?} holds {} elements but the input has {numel} per sample", out.iter().product::<usize>()));
    }
    Ok(out)
}

/// Per-sample shape of PyTorch's broadcast `a · b` for inputs of one rank: each dim equal, or 1
/// in one of them.
fn broadcast(a: &[usize], b: &[usize]) -> std::result::Result<Vec<usize>, String> {
    if a.len() != b.len() || a.iter().zip(b).any(|(&x, &y)| x != y && x != 1 && y != 1) {
        return Err(format!("inputs of shapes {a:?} and {b:?} do not broadcast (one rank; each dim equal, or 1 in one of them)"));
    }
    Ok(a.iter().zip(b).map(|(&x, &y)| x.max(y)).collect())
}

/// Per-sample output shape of `op` given its inputs' shapes.
pub fn infer(op: &Op, ins: &[&Vec<usize>]) -> std::result::Result<Vec<usize>, String> {
    match op {
        Op::Add(_) => {
            if ins.len() < 2 {
                return Err(format!("takes at least 2 inputs, got {}", ins.len()));
            }
            if ins.iter().any(|s| s != &ins[0]) {
                return Err(format!("inputs have different shapes {ins:?}"));
            }
            Ok(ins[0].clone())
        }
        Op::Mul(_) => match ins {
            [a, b] => broadcast(a, b),
            _ => Err(format!("takes 2 inputs, got {}", ins.len())),
        },
        Op::Concat(c) => {
            if ins.is_empty() {
                return Err("takes at least 1 input".into());
            }
            let d = sample_dim(c.dim, ins[0].len())?;
            let mut out = ins[0].clone();
            for s in &ins[1..] {
                let same_rest = s.len() == out.len() && s.iter().zip(out.iter()).enumerate().all(|(i, (a, b))| i == d || a == b);
                if !same_rest {
                    return Err(format!("inputs {ins:?} differ outside dim {}", c.dim));
                }
                out[d] += s[d];
            }
            Ok(out)
        }
        Op::Attention(c) => {
            let ([q, k, v] | [q, k, v, _] | [q, k, v, _, _]) = ins else {
                return Err(format!("takes 3 inputs (q, k, v), 4 (and token ids) or 5 (and a bias), got {}", ins.len()));
            };
            expect_rank(q, 2, "[L, D]")?;
            if k != q || v != q {
                return Err(format!("q, k and v must have one shape; got {q:?}, {k:?}, {v:?}"));
            }
            if let Some(ids) = ins.get(3).filter(|ids| ids.as_slice() != [q[0]]) {
                return Err(format!("the token ids {ids:?} must be [L] for q of shape {q:?}"));
            }
            if c.num_heads == 0 || q[1] % c.num_heads != 0 {
                return Err(format!("num_heads {} does not divide the width {}", c.num_heads, q[1]));
            }
            if let Some(b) = ins.get(4).filter(|b| b.as_slice() != [c.num_heads, q[0], q[0]]) {
                return Err(format!("the bias {b:?} must be [num_heads, L, L] = [{}, {}, {}]", c.num_heads, q[0], q[0]));
            }
            Ok(q.to_vec())
        }
        Op::RelativePositionBias(c) => {
            let [ids] = ins else { return Err(format!("takes 1 input (token ids), got {}", ins.len())) };
            expect_rank(ids, 1, "[L]")?;
            Ok(vec![c.num_heads, ids[0], ids[0]])
        }
        Op::MaskedMean(_) | Op::MaskedPool(_) => {
            let [x, ids] = ins else { return Err(format!("takes 2 inputs (values, token ids), got {}", ins.len())) };
            expect_rank(x, 2, "[L, D]")?;
            if ids.as_slice() != [x[0]] {
                return Err(format!("the token ids {ids:?} must be [L] for values of shape {x:?}"));
            }
            Ok(vec![x[1]])
        }
        _ => infer_unary(op, one_input(ins)?),
    }
}

fn infer_unary(op: &Op, s: &Vec<usize>) -> std::result::Result<Vec<usize>, String> {
    match op {
        Op::Linear(c) => {
            if s.last() != Some(&c.in_features) {
                return Err(format!("in_features is {} but the input's last dim is {:?} (shape {s:?})", c.in_features, s.last()));
            }
            let mut o = s.clone();
            *o.last_mut().unwrap() = c.out_features;
            Ok(o)
        }
        Op::Conv1d(c) => {
            expect_rank(s, 2, "[C, L]")?;
            check_channels(s[0], c.in_channels, c.out_channels, c.groups)?;
            Ok(vec![c.out_channels, window_out(s[1], c.kernel_size, c.stride, c.padding, c.dilation)?])
        }
        Op::Conv2d(c) => {
            expect_rank(s, 3, "[C, H, W]")?;
            check_channels(s[0], c.in_channels, c.out_channels, c.groups)?;
            let (kh, kw) = c.kernel_size.hw();
            let (sh, sw) = c.stride.hw();
            let (ph, pw) = c.padding.hw();
            let (dh, dw) = c.dilation.hw();
            Ok(vec![c.out_channels, window_out(s[1], kh, sh, ph, dh)?, window_out(s[2], kw, sw, pw, dw)?])
        }
        Op::BatchNorm1d(c) => {
            if s.is_empty() || s.len() > 2 || s[0] != c.num_features {
                return Err(format!("expects [{}] or [{}, L] per sample, got {s:?}", c.num_features, c.num_features));
            }
            Ok(s.clone())
        }
        Op::BatchNorm2d(c) => {
            expect_rank(s, 3, "[C, H, W]")?;
            if s[0] != c.num_features {
                return Err(format!("num_features is {} but the input has {} channels", c.num_features, s[0]));
            }
            Ok(s.clone())
        }
        Op::GroupNorm(c) => {
            if s.first() != Some(&c.num_channels) {
                return Err(format!("num_channels is {} but the input's channel axis (the first of a sample) is {:?} (shape {s:?})", c.num_channels, s.first()));
            }
            Ok(s.clone())
        }
        Op::Prelu(c) => {
            if c.num_parameters != 1 && s.first() != Some(&c.num_parameters) {
                return Err(format!("num_parameters is {} but the input's channel axis (the first of a sample) is {:?} (shape {s:?}); it must be 1 or that", c.num_parameters, s.first()));
            }
            Ok(s.clone())
        }
        Op::ChannelAffine(c) => {
            let d = sample_dim(c.dim, s.len())?;
            if d != 0 && d + 1 != s.len() {
                return Err(format!("dim {} is neither a sample's first axis (1) nor its last (-1) (shape {s:?})", c.dim));
            }
            if s[d] != c.num_features {
                return Err(format!("num_features is {} but the input's axis {} is {} (shape {s:?})", c.num_features, c.dim, s[d]));
            }
            Ok(s.clone())
        }
        Op::LayerNorm(c) => {
            if c.normalized_shape.is_empty() || !s.ends_with(&c.normalized_shape) {
                return Err(format!("normalized_shape {:?} is not the trailing shape of the input {s:?}", c.normalized_shape));
            }
            Ok(s.clone())
        }
        Op::Softplus(c) if !(c.beta.is_finite() && c.beta != 0.0 && !c.threshold.is_nan()) => {
            Err(format!("softplus needs a finite, non-zero beta and a threshold that is a number (beta {}, threshold {})", c.beta, c.threshold))
        }
        Op::Relu(_)
        | Op::Relu6(_)
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
        | Op::Hardswish(_)
        | Op::Dropout(_) => Ok(s.clone()),
        Op::Reshape(c) => reshape_target(&c.shape, s.iter().product()),
        Op::Softmax(c) | Op::LogSoftmax(c) => {
            sample_dim(c.dim, s.len())?;
            Ok(s.clone())
        }
        Op::MaxPool1d(c) | Op::AvgPool1d(c) => {
            expect_rank(s, 2, "[C, L]")?;
            let (k, st, p) = pool_params(c.kernel_size, c.stride, c.padding);
            check_pool_pad(k.0, p.0)?;
            Ok(vec![s[0], pool_out(s[1], k.0, st.0, p.0, c.ceil_mode)?])
        }
        Op::MaxPool2d(c) | Op::AvgPool2d(c) => {
            expect_rank(s, 3, "[C, H, W]")?;
            let (k, st, p) = pool_params(c.kernel_size, c.stride, c.padding);
            check_pool_pad(k.0, p.0)?;
            check_pool_pad(k.1, p.1)?;
            Ok(vec![s[0], pool_out(s[1], k.0, st.0, p.0, c.ceil_mode)?, pool_out(s[2], k.1, st.1, p.1, c.ceil_mode)?])
        }
        Op::GlobalAvgPool(_) => {
            if s.len() < 2 {
                return Err(format!("expects [C, ...] with at least one spatial dim, got {s:?}"));
            }
            Ok(vec![s[0]])
        }
        Op::Flatten(c) => {
            let a = sample_dim(c.start_dim, s.len())?;
            let b = sample_dim(c.end_dim, s.len())?;
            if b < a {
                return Err(format!("end_dim {} comes before start_dim {}", c.end_dim, c.start_dim));
            }
            let mut o: Vec<usize> = s[..a].to_vec();
            o.push(s[a..=b].iter().product());
            o.extend_from_slice(&s[b + 1..]);
            Ok(o)
        }
        Op::Gru(c) | Op::Lstm(c) => {
            expect_rank(s, 2, "[T, input_size]")?;
            if s[1] != c.input_size {
                return Err(format!("input_size is {} but the input has {} features per step (shape {s:?})", c.input_size, s[1]));
            }
            Ok(vec![s[0], c.dirs() * c.hidden_size])
        }
        Op::Select(c) => {
            let d = sample_dim(c.dim, s.len())?;
            if c.position(s[d]).is_none() {
                return Err(format!("index {} is out of range for dim {} of size {}", c.index, c.dim, s[d]));
            }
            let mut o = s.clone();
            o.remove(d);
            Ok(o)
        }
        Op::Narrow(c) => {
            let d = sample_dim(c.dim, s.len())?;
            c.first(s[d])?;
            let mut o = s.clone();
            o[d] = c.length;
            Ok(o)
        }
        Op::Transpose(c) => {
            let (a, b) = (sample_dim(c.dim0, s.len())?, sample_dim(c.dim1, s.len())?);
            let mut o = s.clone();
            o.swap(a, b);
            Ok(o)
        }
        Op::Pad(c) => {
            let pads = c.per_dim(s.len())?;
            if !c.value.is_finite() {
                return Err(format!("value {} is not a finite number", c.value));
            }
            Ok(s.iter().zip(&pads).map(|(&d, &(b, e))| d + b + e).collect())
        }
        Op::Mean(c) | Op::Amax(c) | Op::Sum(c) => {
            let d = sample_dim(c.dim, s.len())?;
            if s.len() == 1 && !c.keepdim {
                return Err(format!("{} over the only dim of a sample of shape {s:?} leaves no values per sample (keepdim keeps one)", op.name()));
            }
            let mut o = s.clone();
            if c.keepdim {
                o[d] = 1;
            } else {
                o.remove(d);
            }
            Ok(o)
        }
        Op::Embedding(c) => {
            expect_rank(s, 1, "[L] token ids")?;
            Ok(vec![s[0], c.embedding_dim])
        }
        Op::PositionEmbedding(c) => {
            expect_rank(s, 2, "[L, D]")?;
            if s[1] != c.embedding_dim || s[0] + c.offset > c.num_positions {
                return Err(format!("expects at most {} positions of {} features, got {s:?}", c.num_positions.saturating_sub(c.offset), c.embedding_dim));
            }
            Ok(s.clone())
        }
        Op::PrependRows(c) => {
            expect_rank(s, 2, "[L, D]")?;
            if s[1] != c.embedding_dim {
                return Err(format!("puts rows of {} features before {s:?}", c.embedding_dim));
            }
            Ok(vec![c.num_rows + s[0], s[1]])
        }
        Op::EmbeddingRow(c) => {
            if s.last() != Some(&c.embedding_dim) || c.index >= c.num_embeddings {
                return Err(format!("row {} of {} rows of {} features, added to {s:?}", c.index, c.num_embeddings, c.embedding_dim));
            }
            Ok(s.clone())
        }
        Op::L2Normalize(_) => {
            if s.is_empty() {
                return Err("expects at least one dim".into());
            }
            Ok(s.clone())
        }
        Op::Add(_) | Op::Mul(_) | Op::Concat(_) | Op::Attention(_) | Op::RelativePositionBias(_) | Op::MaskedMean(_) | Op::MaskedPool(_) => unreachable!("handled in infer"),
    }
}

/// `(kernel, stride, padding)` as `(h, w)` pairs, stride defaulting to the kernel.
pub fn pool_params(k: Pair, s: Option<Pair>, p: Pair) -> ((usize, usize), (usize, usize), (usize, usize)) {
    (k.hw(), s.unwrap_or(k).hw(), p.hw())
}

/// A pool's output length ([`crate::model::pool_op::pool_len`]) once [`window_out`] has checked
/// the window fits the padded input.
fn pool_out(len: usize, k: usize, stride: usize, pad: usize, ceil: bool) -> std::result::Result<usize, String> {
    window_out(len, k, stride, pad, 1)?;
    Ok(crate::model::pool_op::pool_len(len, k, stride, pad, ceil))
}

fn check_pool_pad(k: usize, p: usize) -> std::result::Result<(), String> {
    if 2 * p > k {
        return Err(format!("padding {p} is more than half the kernel {k}"));
    }
    Ok(())
}

fn check_channels(c: usize, cin: usize, cout: usize, groups: usize) -> std::result::Result<(), String> {
    if c != cin {
        return Err(format!("in_channels is {cin} but the input has {c} channels"));
    }
    if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
        return Err(format!("groups {groups} must divide in_channels {cin} and out_channels {cout}"));
    }
    Ok(())
}
