//! Channel dependency analysis, Torch-Pruning's idea made explicit. Every node's output channel
//! axis is described as a list of *channel ids*, one per position. A conv/linear output (or the
//! model input) creates fresh ids; channel-wise ops (BatchNorm, activations, pools, dropout,
//! global average pooling, depthwise conv, a narrow of another axis) pass their input's list on;
//! concat along channels joins lists; a narrow of the channels takes its run of the list; flatten (and a reshape whose first axis is a multiple of the channels) repeats
//! each channel id over its H×W (or L) features; a residual add, and a product of two values
//! with the same channels (a squeeze-and-excitation gate), ties its inputs' ids position by
//! position. Tied ids form a *unit* (union-find): pruning a
//! unit removes its channel from every tensor that carries it. Units that reach the model input
//! or output, or pass through an op whose channels cannot be removed exactly (LayerNorm over
//! channels, softmax over channels, grouped non-depthwise convs), are frozen. A GRU or LSTM
//! creates one id per hidden unit, tracked on its output's last axis (`Deps::feature_last`)
//! through element-wise ops, `select` and `mean` into the next layer's columns; so does a linear
//! over a multi-axis input (every step or token), whose columns read that axis, and a token
//! embedding, whose table's columns are its features; a narrow of that axis takes its run of
//! ids (q, k or v of a packed projection), and an attention over such q, k and v ties each
//! head's features of all three into one unit, a head, whose ids its output carries on. A `transpose`
//! of a value's first and last sample axes moves its ids between the two (a conv's channels
//! into a recurrent op's input features, and back); one that moves them to a middle axis, or a
//! mean across them, keeps them whole. A *group* is a
//! set of units that share producing layers (and lie in the same channel narrows' runs): they are
//! ranked together, and each keeps at least one unit.

use crate::model::arch::{NarrowCfg, Op, ReduceCfg, SelectCfg, TransposeCfg};
use crate::model::graph::sample_dim;
use crate::model::Model;
use std::collections::{BTreeMap, BTreeSet};

/// The channel structure of a model.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Per node (and the input): channel id of each position along its channel axis.
    pub channels: BTreeMap<String, Vec<usize>>,
    /// Unit of every channel id.
    pub unit_of: Vec<usize>,
    /// Units that must not be pruned.
    pub frozen: BTreeSet<usize>,
    /// Groups of prunable units, each with the layers that produce them.
    pub groups: Vec<Group>,
    /// Nodes whose tracked axis is the last one (a recurrent op's hidden units, carried on
    /// through element-wise ops and `select`), not the first.
    pub feature_last: BTreeSet<String>,
}

/// Units ranked together: the channels of one set of coupled layers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Group {
    /// Conv/linear layers whose output channels are these units (a residual group has several).
    pub producers: Vec<String>,
    /// The units, in the channel order of the first producer.
    pub units: Vec<usize>,
    /// Whether each unit is an attention head (its q, k and v features), not one channel.
    pub heads: bool,
}

struct UnionFind(Vec<usize>);
impl UnionFind {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut c = x;
        while self.0[c] != r {
            let n = self.0[c];
            self.0[c] = r;
            c = n;
        }
        r
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// Whether a conv is depthwise (one input channel per group, channels tied in to out).
pub fn is_depthwise(op: &Op) -> bool {
    match op {
        Op::Conv1d(c) => c.groups > 1 && c.groups == c.in_channels && c.groups == c.out_channels,
        Op::Conv2d(c) => c.groups > 1 && c.groups == c.in_channels && c.groups == c.out_channels,
        _ => false,
    }
}

/// Whether `op` is a conv of one group, whose output channels do not depend on which axis of its
/// input carries units.
fn reads_channels_first(op: &Op) -> bool {
    match op {
        Op::Conv1d(c) => c.groups == 1,
        Op::Conv2d(c) => c.groups == 1,
        _ => false,
    }
}

/// Analyses `model`'s channel coupling.
pub fn analyse(model: &Model) -> Deps {
    let arch = &model.arch;
    let shapes = &model.graph.shapes;
    let mut next = 0usize;
    let fresh = |n: usize, next: &mut usize| -> Vec<usize> {
        let v: Vec<usize> = (*next..*next + n).collect();
        *next += n;
        v
    };
    let mut channels: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut freeze_ids: Vec<usize> = vec![];
    let mut ties: Vec<(usize, usize)> = vec![];
    let mut producers: BTreeMap<usize, String> = BTreeMap::new();
    let in_shape = &arch.input.shape;
    let input_ids = fresh(in_shape[0], &mut next);
    freeze_ids.extend(&input_ids);
    channels.insert(arch.input.name.clone(), input_ids);
    // An op whose inputs and output are kept whole: every input id frozen, the output fresh
    // frozen ids along its first axis.
    let kept_whole = |ins: &[Vec<usize>], out_shape: &[usize], next: &mut usize, freeze: &mut Vec<usize>| -> Vec<usize> {
        ins.iter().for_each(|i| freeze.extend(i));
        let o = fresh(out_shape.first().copied().unwrap_or(1), next);
        freeze.extend(&o);
        o
    };
    let mut feature_last: BTreeSet<String> = BTreeSet::new();
    // Each channel narrow and the ids of its run.
    let mut narrowed: Vec<(String, Vec<usize>)> = vec![];
    // One id of each attention head's unit.
    let mut head_firsts: Vec<usize> = vec![];
    for &i in &model.graph.order {
        let node = &arch.nodes[i];
        let ins: Vec<Vec<usize>> = node.inputs.iter().map(|n| channels[n].clone()).collect();
        let in_rank = shapes[&node.inputs[0]].len();
        let out_shape = &shapes[&node.name];
        let last_in: Vec<bool> = node.inputs.iter().map(|n| feature_last.contains(n)).collect();
        if last_in.iter().any(|&b| b) {
            // Hidden units on the last axis pass through element-wise ops, adds of such values,
            // a `select` of another axis, and into a recurrent op's input; any other reader
            // keeps them whole.
            let passes = match &node.op {
                op if op.is_elementwise() => true,
                // One slope per first-axis position does not follow units on the last axis.
                Op::Prelu(c) => c.num_parameters == 1,
                Op::Add(_) => last_in.iter().all(|&b| b),
                // Values of the output's shape carry the units (tied); one of a single value along
                // the last axis (an attention weight per step) scales them all and stays whole.
                Op::Mul(_) => node.inputs.iter().zip(&last_in).all(|(i, &last)| if &shapes[i] == out_shape { last } else { shapes[i].last() == Some(&1) }),
                Op::Select(SelectCfg { dim, .. }) | Op::Mean(ReduceCfg { dim, .. }) | Op::Amax(ReduceCfg { dim, .. }) | Op::Sum(ReduceCfg { dim, .. }) => {
                    sample_dim(*dim, in_rank).is_ok_and(|d| d + 1 != in_rank)
                }
                // A narrow of the units' axis takes their run (a packed projection's q, k or v).
                Op::Narrow(NarrowCfg { dim, .. }) => sample_dim(*dim, in_rank).is_ok(),
                // Heads of q, k and v each on its last axis; token ids after them are read as
                // a mask only, and a per-head bias (a sixth input) stays whole.
                Op::Attention(_) => node.inputs.len() <= 4 && last_in[..3].iter().all(|&b| b),
                Op::Transpose(c) => matches!(swapped(c, in_rank, in_rank - 1), Some(Swap::Untouched | Swap::FirstAndLast)),
                // A per-feature affine map scales each position of its axis on its own, the
                // units' axis or another.
                Op::Gru(_) | Op::Lstm(_) | Op::Linear(_) | Op::ChannelAffine(_) => true,
                Op::Pad(c) => c.per_dim(in_rank).is_ok_and(|p| p[in_rank - 1] == (0, 0)),
                _ => false,
            };
            if passes {
                // A transpose of the last axis with the first carries the units on to the first.
                let to_first = matches!(&node.op, Op::Transpose(c) if swapped(c, in_rank, in_rank - 1) == Some(Swap::FirstAndLast));
                if !matches!(node.op, Op::Gru(_) | Op::Lstm(_)) && out_shape.len() >= 2 && !to_first {
                    feature_last.insert(node.name.clone());
                }
            } else if reads_channels_first(&node.op) {
                // A conv's input channels are the first axis, which carries no units here (a
                // sequence's steps turned channels-first, say): its input is kept whole, and its
                // own output channels are pruned as any conv's.
                ins.iter().for_each(|i| freeze_ids.extend(i));
            } else {
                channels.insert(node.name.clone(), kept_whole(&ins, out_shape, &mut next, &mut freeze_ids));
                continue;
            }
        }
        let out: Vec<usize> = match &node.op {
            Op::Linear(c) => {
                // A linear reads its input's last axis: the tracked one of a rank-1 or
                // feature-last input, whose ids are then its columns. On a multi-axis input it
                // tracks its own features on the last axis (an MLP over every step or token); a
                // first axis that carried ids until here is kept whole.
                if in_rank != 1 && !last_in[0] {
                    freeze_ids.extend(&ins[0]);
                    feature_last.insert(node.name.clone());
                }
                let o = fresh(c.out_features, &mut next);
                for &id in &o {
                    producers.insert(id, node.name.clone());
                }
                o
            }
            Op::Conv1d(_) | Op::Conv2d(_) if is_depthwise(&node.op) => ins[0].clone(),
            Op::Conv1d(_) | Op::Conv2d(_) => {
                let groups = match &node.op {
                    Op::Conv1d(c) => c.groups,
                    Op::Conv2d(c) => c.groups,
                    _ => 1,
                };
                let o = fresh(out_shape[0], &mut next);
                if groups > 1 {
                    freeze_ids.extend(&ins[0]);
                    freeze_ids.extend(&o);
                }
                for &id in &o {
                    producers.insert(id, node.name.clone());
                }
                o
            }
            Op::Add(_) => {
                for other in &ins[1..] {
                    for (a, b) in ins[0].iter().zip(other) {
                        ties.push((*a, *b));
                    }
                }
                ins[0].clone()
            }
            Op::Mul(_) => {
                // Inputs with the output's channels (or, tracked on the last axis, its shape) are
                // tied position by position; one broadcast along them is kept whole.
                let (c, last) = (out_shape.first().copied().unwrap_or(1), feature_last.contains(&node.name));
                let carries = |k: &usize| if last { &shapes[&node.inputs[*k]] == out_shape } else { ins[*k].len() == c };
                let (full, spread): (Vec<usize>, Vec<usize>) = (0..ins.len()).partition(carries);
                spread.iter().for_each(|&k| freeze_ids.extend(&ins[k]));
                for &k in &full[1..] {
                    ties.extend(ins[full[0]].iter().copied().zip(ins[k].iter().copied()));
                }
                ins[full[0]].clone()
            }
            Op::Reshape(_) => {
                // Channel-major data: an output first axis that is a multiple of the channels
                // splits each channel's block; any other reshape mixes channels and keeps them whole.
                let d = out_shape.first().copied().unwrap_or(1);
                match d % ins[0].len().max(1) {
                    0 if in_rank >= 1 => ins[0].iter().flat_map(|&id| std::iter::repeat_n(id, d / ins[0].len())).collect(),
                    _ => kept_whole(&ins, out_shape, &mut next, &mut freeze_ids),
                }
            }
            Op::Concat(c) => match sample_dim(c.dim, in_rank) {
                Ok(0) => ins.concat(),
                _ => {
                    for other in &ins[1..] {
                        for (a, b) in ins[0].iter().zip(other) {
                            ties.push((*a, *b));
                        }
                    }
                    ins[0].clone()
                }
            },
            Op::Flatten(c) => {
                let a = sample_dim(c.start_dim, in_rank).unwrap_or(0);
                let b = sample_dim(c.end_dim, in_rank).unwrap_or(in_rank - 1);
                if a == 0 {
                    // Channel-major: each channel becomes a contiguous block of positions.
                    let in_shape = &shapes[&node.inputs[0]];
                    let block: usize = in_shape[1..=b].iter().product();
                    ins[0].iter().flat_map(|&id| std::iter::repeat_n(id, block)).collect()
                } else {
                    ins[0].clone()
                }
            }
            Op::LayerNorm(_) | Op::Softmax(_) | Op::LogSoftmax(_) | Op::GroupNorm(_) => {
                let touches_channels = match &node.op {
                    Op::LayerNorm(c) => c.normalized_shape.len() >= in_rank,
                    // A group's statistics mix its channels; InstanceNorm's (groups of one) do not.
                    Op::GroupNorm(c) => c.num_groups != c.num_channels,
                    Op::Softmax(c) | Op::LogSoftmax(c) => sample_dim(c.dim, in_rank) == Ok(0),
                    _ => false,
                };
                if touches_channels {
                    freeze_ids.extend(&ins[0]);
                }
                ins[0].clone()
            }
            Op::Gru(c) | Op::Lstm(c) => {
                // Hidden unit j of every layer and direction is one unit (the op has one
                // `hidden_size`, as PyTorch's); the output's last axis carries it once per
                // direction. An input whose features are not tracked on its last axis stays whole.
                if !last_in[0] {
                    freeze_ids.extend(&ins[0]);
                }
                let o = fresh(c.hidden_size, &mut next);
                for &id in &o {
                    producers.insert(id, node.name.clone());
                }
                feature_last.insert(node.name.clone());
                o.repeat(c.dirs())
            }
            Op::Embedding(c) => {
                // A token table's columns are features on its output's last axis, like a linear
                // over every token's; the ids it reads stay whole.
                freeze_ids.extend(&ins[0]);
                let o = fresh(c.embedding_dim, &mut next);
                for &id in &o {
                    producers.insert(id, node.name.clone());
                }
                feature_last.insert(node.name.clone());
                o
            }
            Op::Attention(c) if last_in[0] => {
                // Head h's features of q, k and v form one unit: removing them removes the
                // head's term of every score and its block of the output (v's ids).
                let d = ins[0].len() / c.num_heads.max(1);
                for h in 0..c.num_heads {
                    let first = ins[0][h * d];
                    for x in &ins[..3] {
                        ties.extend(x[h * d..(h + 1) * d].iter().map(|&id| (first, id)));
                    }
                    head_firsts.push(first);
                }
                ins[2].clone()
            }
            // A run of the axis that carries the units (the channels, or a feature-last value's
            // last axis: q, k or v of a packed projection) carries that run's ids (surgery
            // recounts its start and length); the groups below keep each run's units apart so
            // that none is emptied.
            Op::Narrow(c) if sample_dim(c.dim, in_rank) == Ok(if last_in[0] { in_rank - 1 } else { 0 }) => match c.first(ins[0].len()) {
                Ok(first) => {
                    let run = ins[0][first..first + c.length].to_vec();
                    narrowed.push((node.name.clone(), run.clone()));
                    run
                }
                Err(_) => kept_whole(&ins, out_shape, &mut next, &mut freeze_ids),
            },
            Op::PositionEmbedding(_) | Op::PrependRows(_) | Op::EmbeddingRow(_) | Op::Attention(_) | Op::RelativePositionBias(_) | Op::MaskedMean(_) | Op::MaskedPool(_) | Op::L2Normalize(_) => {
                // Text encoders' sequence axis comes first and their features are tied across
                // heads and positions: kept whole.
                kept_whole(&ins, out_shape, &mut next, &mut freeze_ids)
            }
            Op::Transpose(_) | Op::Mean(_) | Op::Amax(_) | Op::Sum(_) | Op::Select(_) | Op::Narrow(_) | Op::Pad(_) if last_in[0] => ins[0].clone(),
            // Padding the channel axis adds channels no producer owns: kept whole.
            Op::Pad(c) if c.per_dim(in_rank).map_or(true, |p| p[0] != (0, 0)) => kept_whole(&ins, out_shape, &mut next, &mut freeze_ids),
            Op::Transpose(c) => match swapped(c, in_rank, 0) {
                Some(Swap::Untouched) => ins[0].clone(),
                Some(Swap::FirstAndLast) => {
                    feature_last.insert(node.name.clone());
                    ins[0].clone()
                }
                _ => kept_whole(&ins, out_shape, &mut next, &mut freeze_ids),
            },
            // A mean, maximum or sum across the channels mixes them (a mean's divisor counts
            // them): kept whole.
            Op::Mean(c) | Op::Amax(c) | Op::Sum(c) if sample_dim(c.dim, in_rank) == Ok(0) => kept_whole(&ins, out_shape, &mut next, &mut freeze_ids),
            Op::Select(_) => {
                // Across the channel axis of a value whose channels are first: kept whole.
                kept_whole(&ins, out_shape, &mut next, &mut freeze_ids)
            }
            _ => ins[0].clone(),
        };
        channels.insert(node.name.clone(), out);
    }
    let mut uf = UnionFind((0..next).collect());
    for (a, b) in ties {
        uf.union(a, b);
    }
    let unit_of: Vec<usize> = (0..next).map(|i| uf.find(i)).collect();
    let mut frozen: BTreeSet<usize> = freeze_ids.iter().map(|&i| unit_of[i]).collect();
    frozen.extend(channels[arch.output_name()].iter().map(|&i| unit_of[i]));
    // Groups: units linked through shared producers (a residual add ties whole layers).
    let mut unit_producers: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (&id, p) in &producers {
        unit_producers.entry(unit_of[id]).or_default().insert(p.clone());
    }
    // The channel narrows whose run holds each unit: units of one producer in different runs
    // (the two halves of a chunk) are ranked as separate groups, and every group keeps a unit,
    // so no narrow is left without channels.
    let mut runs_of: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for (narrow, run) in &narrowed {
        for &id in run {
            runs_of.entry(unit_of[id]).or_default().insert(narrow.as_str());
        }
    }
    let heads: BTreeSet<usize> = head_firsts.iter().map(|&i| unit_of[i]).collect();
    // Keyed by producers, narrow runs and whether the units are heads.
    type GroupKey<'a> = (Vec<String>, Vec<&'a str>, bool);
    let mut by_producers: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for &id in producers.keys() {
        let u = unit_of[id];
        if frozen.contains(&u) || !seen.insert(u) {
            continue;
        }
        let key: Vec<String> = unit_producers[&u].iter().cloned().collect();
        let runs: Vec<&str> = runs_of.get(&u).map(|r| r.iter().copied().collect()).unwrap_or_default();
        by_producers.entry((key, runs, heads.contains(&u))).or_default().push(u);
    }
    let groups = by_producers.into_iter().map(|((producers, _, heads), units)| Group { producers, units, heads }).collect();
    Deps { channels, unit_of, frozen, groups, feature_last }
}

/// What a transpose does to the axis that carries a value's units.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Swap {
    /// It stays where it is.
    Untouched,
    /// It trades places with the other end (first with last): the units are carried there.
    FirstAndLast,
    /// It goes to a middle axis.
    Other,
}

/// Where transpose `c` on a sample of `rank` dims moves axis `tracked` (`None`: a dim is out of
/// range, which loading reports).
fn swapped(c: &TransposeCfg, rank: usize, tracked: usize) -> Option<Swap> {
    let (a, b) = (sample_dim(c.dim0, rank).ok()?, sample_dim(c.dim1, rank).ok()?);
    Some(if a == b || (a != tracked && b != tracked) {
        Swap::Untouched
    } else if a.min(b) == 0 && a.max(b) + 1 == rank {
        Swap::FirstAndLast
    } else {
        Swap::Other
    })
}

impl Deps {
    /// Unit of each position of `node`'s output channel axis (the last axis for the nodes in
    /// `feature_last`).
    pub fn units(&self, node: &str) -> Vec<usize> {
        self.channels[node].iter().map(|&i| self.unit_of[i]).collect()
    }
}
