//! The architecture file: a versioned JSON description of a model as a DAG of typed nodes.
//! A parametric node `n` owns the tensors `n.weight`, `n.bias`, … named exactly as in a PyTorch
//! `state_dict`, so a state_dict saved as safetensors loads unchanged. Uses only `error`.

use crate::error::{Result, WickError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The version of the architecture format this build reads and writes.
pub const ARCH_VERSION: u32 = 1;
/// The `format` tag of an architecture file.
pub const ARCH_FORMAT: &str = "wick-arch";

/// A whole architecture: input description, nodes in any order, and the output node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    pub format: String,
    pub version: u32,
    pub input: InputSpec,
    pub nodes: Vec<Node>,
    /// The node whose value is the model's output (logits). Defaults to the last node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Where the architecture was read from, for error messages (not part of the format).
    #[serde(skip)]
    pub origin: String,
}

/// The model input: per-sample shape (no batch dimension) and, for people, its preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name nodes use to refer to the input. Default `input`.
    #[serde(default = "default_input_name")]
    pub name: String,
    /// Shape of one sample, e.g. `[1, 8, 8]` for a one-channel 8x8 image (NCHW without N).
    pub shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<String>,
}

fn default_input_name() -> String {
    "input".to_string()
}

/// One node: a unique name, the names of its inputs (other nodes or the model input), and its op.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub inputs: Vec<String>,
    pub op: Op,
}

/// An integer or a pair, as PyTorch accepts for kernel sizes, strides and paddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pair {
    One(usize),
    Two([usize; 2]),
}

impl Pair {
    /// `(height, width)`.
    pub fn hw(self) -> (usize, usize) {
        match self {
            Pair::One(v) => (v, v),
            Pair::Two([h, w]) => (h, w),
        }
    }
}

fn one() -> usize {
    1
}
fn pair_one() -> Pair {
    Pair::One(1)
}
fn pair_zero() -> Pair {
    Pair::One(0)
}
fn yes() -> bool {
    true
}
fn bn_eps() -> f64 {
    1e-5
}
fn bn_momentum() -> f64 {
    0.1
}
fn neg_one() -> i64 {
    -1
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn is_pair_one(p: &Pair) -> bool {
    p.hw() == (1, 1)
}
fn is_pair_zero(p: &Pair) -> bool {
    p.hw() == (0, 0)
}
fn is_bn_eps(v: &f64) -> bool {
    *v == bn_eps()
}
fn is_bn_momentum(v: &f64) -> bool {
    *v == bn_momentum()
}
fn is_one_i64(v: &i64) -> bool {
    *v == 1
}
fn is_neg_one(v: &i64) -> bool {
    *v == -1
}

/// Linear: `y = x · Wᵀ + b`, weight `[out, in]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearCfg {
    pub in_features: usize,
    pub out_features: usize,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
}

/// Conv1d: weight `[out, in/groups, k]`, cross-correlation as in PyTorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1dCfg {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: usize,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub stride: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub padding: usize,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub dilation: usize,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub groups: usize,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
}

/// Conv2d: weight `[out, in/groups, kh, kw]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dCfg {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: Pair,
    #[serde(default = "pair_one", skip_serializing_if = "is_pair_one")]
    pub stride: Pair,
    #[serde(default = "pair_zero", skip_serializing_if = "is_pair_zero")]
    pub padding: Pair,
    #[serde(default = "pair_one", skip_serializing_if = "is_pair_one")]
    pub dilation: Pair,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub groups: usize,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
}

/// BatchNorm over channel axis 1: `y = (x − μ) / √(σ² + eps) · γ + β`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormCfg {
    pub num_features: usize,
    #[serde(default = "bn_eps", skip_serializing_if = "is_bn_eps")]
    pub eps: f64,
    /// PyTorch semantics: `running = (1 − momentum) · running + momentum · batch`.
    #[serde(default = "bn_momentum", skip_serializing_if = "is_bn_momentum")]
    pub momentum: f64,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub affine: bool,
}

/// Fixed per-channel arithmetic over channel axis 1: `y = x · weight_c + bias_c` (`weight`, `bias`
/// `[num_features]` buffers, not trained): a model's own input normalisation `(x − mean) / std`
/// (`weight = 1/std`, `bias = −mean/std`), or arithmetic on constants such as `x · 2 − 1`. With
/// `dim` −1 over the last axis instead, as PyTorch broadcasts a `[D]` constant: a layer scale
/// (ConvNeXt's `γ · x` on channels-last values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelAffineCfg {
    pub num_features: usize,
    /// The axis the features lie on, counted with the batch: 1 (a sample's first) or −1 (its last).
    #[serde(default = "one_i64", skip_serializing_if = "is_one_i64")]
    pub dim: i64,
}

impl ChannelAffineCfg {
    /// Whether the features lie on the last axis of a sample of `rank` dims, and not also on the
    /// first (`rank` 1).
    pub fn on_last_axis(&self, rank: usize) -> bool {
        rank > 1 && crate::model::graph::sample_dim(self.dim, rank) == Ok(rank - 1)
    }
}

/// PReLU, `max(x, 0) + weight_c·min(x, 0)`: a learned negative slope per channel (axis 1; a
/// linear's features), or one for all (`num_parameters` 1, PyTorch's default). `weight`
/// `[num_parameters]` is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreluCfg {
    #[serde(default = "one")]
    pub num_parameters: usize,
}

/// LayerNorm over the trailing `normalized_shape` dims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerNormCfg {
    pub normalized_shape: Vec<usize>,
    #[serde(default = "bn_eps", skip_serializing_if = "is_bn_eps")]
    pub eps: f64,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub elementwise_affine: bool,
}

/// GroupNorm: a sample's channels in `num_groups` groups of consecutive channels, each group
/// normalised over its channels and positions, `y = (x − μ_g)/√(σ²_g + eps)`, then
/// `y·weight_c + bias_c` when `affine` (σ² the biased variance, as PyTorch's); InstanceNorm is
/// `num_groups = num_channels`. Statistics come from each sample, in training and in eval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupNormCfg {
    pub num_groups: usize,
    pub num_channels: usize,
    #[serde(default = "bn_eps", skip_serializing_if = "is_bn_eps")]
    pub eps: f64,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub affine: bool,
}

/// GELU: exact `x·Φ(x)` (approximate = "none") or the tanh form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GeluCfg {
    #[serde(default, skip_serializing_if = "GeluApprox::is_none")]
    pub approximate: GeluApprox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GeluApprox {
    #[default]
    None,
    Tanh,
}

impl GeluApprox {
    fn is_none(&self) -> bool {
        *self == GeluApprox::None
    }
}

/// Max or average pooling; `stride` defaults to `kernel_size` as in PyTorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolCfg {
    pub kernel_size: Pair,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Pair>,
    #[serde(default = "pair_zero", skip_serializing_if = "is_pair_zero")]
    pub padding: Pair,
    /// Average pooling only: count padded zeros in the divisor (PyTorch's default).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub count_include_pad: bool,
    /// PyTorch's `ceil_mode`: the output length rounds up (`pool_op::pool_len`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ceil_mode: bool,
}

/// Flatten dims `start_dim..=end_dim` (dims counted with the batch, as in PyTorch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlattenCfg {
    #[serde(default = "one_i64", skip_serializing_if = "is_one_i64")]
    pub start_dim: i64,
    #[serde(default = "neg_one", skip_serializing_if = "is_neg_one")]
    pub end_dim: i64,
}
fn one_i64() -> i64 {
    1
}

/// An op that works along one dim (concat, softmax); dims count the batch, negatives from the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimCfg {
    pub dim: i64,
}

/// Dropout: identity at eval; at training, zero with probability `p` and scale by `1/(1−p)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutCfg {
    #[serde(default)]
    pub p: f64,
}

/// GRU or LSTM over a batch-first sequence `[N, T, input_size] → [N, T, D·hidden_size]` (D = 2
/// when bidirectional), zero initial state, PyTorch's semantics and tensor names
/// (`weight_ih_l{k}[_reverse]`, `weight_hh_l{k}…`, `bias_ih_l{k}…`, `bias_hh_l{k}…`; gate row
/// blocks r, z, n for GRU and i, f, g, o for LSTM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RnnCfg {
    pub input_size: usize,
    pub hidden_size: usize,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub num_layers: usize,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
    /// wick's tensors are batch-first; the field exists so PyTorch's constructor arguments
    /// carry over, and `false` is refused.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub batch_first: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub bidirectional: bool,
}

impl RnnCfg {
    /// Directions: 2 when bidirectional.
    pub fn dirs(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }
}

/// The most stacked layers a GRU or LSTM may have (its tensor names are a fixed table).
pub const MAX_RNN_LAYERS: usize = 8;

/// `[weight_ih, weight_hh, bias_ih, bias_hh]` names of layer `k` (index `2k`) and of its
/// reverse direction (`2k + 1`).
const RNN_PARAMS: [[&str; 4]; 2 * MAX_RNN_LAYERS] = [
    ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"],
    ["weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse"],
    ["weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"],
    ["weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse", "bias_hh_l1_reverse"],
    ["weight_ih_l2", "weight_hh_l2", "bias_ih_l2", "bias_hh_l2"],
    ["weight_ih_l2_reverse", "weight_hh_l2_reverse", "bias_ih_l2_reverse", "bias_hh_l2_reverse"],
    ["weight_ih_l3", "weight_hh_l3", "bias_ih_l3", "bias_hh_l3"],
    ["weight_ih_l3_reverse", "weight_hh_l3_reverse", "bias_ih_l3_reverse", "bias_hh_l3_reverse"],
    ["weight_ih_l4", "weight_hh_l4", "bias_ih_l4", "bias_hh_l4"],
    ["weight_ih_l4_reverse", "weight_hh_l4_reverse", "bias_ih_l4_reverse", "bias_hh_l4_reverse"],
    ["weight_ih_l5", "weight_hh_l5", "bias_ih_l5", "bias_hh_l5"],
    ["weight_ih_l5_reverse", "weight_hh_l5_reverse", "bias_ih_l5_reverse", "bias_hh_l5_reverse"],
    ["weight_ih_l6", "weight_hh_l6", "bias_ih_l6", "bias_hh_l6"],
    ["weight_ih_l6_reverse", "weight_hh_l6_reverse", "bias_ih_l6_reverse", "bias_hh_l6_reverse"],
    ["weight_ih_l7", "weight_hh_l7", "bias_ih_l7", "bias_hh_l7"],
    ["weight_ih_l7_reverse", "weight_hh_l7_reverse", "bias_ih_l7_reverse", "bias_hh_l7_reverse"],
];

/// The parameter suffixes `[weight_ih, weight_hh, bias_ih, bias_hh]` of a GRU or LSTM layer
/// `k < MAX_RNN_LAYERS` and direction.
pub fn rnn_params(k: usize, reverse: bool) -> [&'static str; 4] {
    RNN_PARAMS[2 * k + reverse as usize]
}

/// One index along a dim (counted with the batch, negatives from the end), which is removed:
/// PyTorch's `x.select(dim, index)`, e.g. the last time step of a recurrent output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectCfg {
    pub dim: i64,
    pub index: i64,
}

impl SelectCfg {
    /// The position `index` names in a dim of `len` (negatives from the end), if it lies in it.
    pub fn position(&self, len: usize) -> Option<usize> {
        let i = if self.index < 0 { self.index.checked_add(len as i64)? } else { self.index };
        usize::try_from(i).ok().filter(|&i| i < len)
    }
}

/// `length` consecutive positions from `start` along a dim (counted with the batch, negatives
/// from the end, as `start`): PyTorch's `x.narrow(dim, start, length)`, and each piece of
/// `x.chunk(k, dim)` or `x.split(sizes, dim)` (a GLU's two halves, a ShuffleNet block's split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NarrowCfg {
    pub dim: i64,
    pub start: i64,
    pub length: usize,
}

impl NarrowCfg {
    /// The first position kept in a dim of `len` (a negative `start` counts from the end), if
    /// `length ≥ 1` positions from it lie in the dim; else what is wrong.
    pub fn first(&self, len: usize) -> std::result::Result<usize, String> {
        let s = if self.start < 0 { self.start.checked_add(len as i64) } else { Some(self.start) };
        s.and_then(|s| usize::try_from(s).ok())
            .filter(|&s| self.length >= 1 && s + self.length <= len)
            .ok_or_else(|| format!("start {} and length {} do not lie in dim {} of size {len}", self.start, self.length, self.dim))
    }
}

/// Two dims swapped (counted with the batch, negatives from the end; the batch dim stays):
/// PyTorch's `x.transpose(dim0, dim1)`, e.g. a conv's `[N, C, T]` to a recurrent op's `[N, T, C]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransposeCfg {
    pub dim0: i64,
    pub dim1: i64,
}

/// Constant padding of the trailing sample dims: PyTorch's `F.pad(x, padding, value=value)` and
/// its modules (`nn.ConstantPad1d`, `nn.ZeroPad2d`, …). `padding` holds (before, after) pairs
/// from the last dim backwards, `[left, right, top, bottom, …]`, each side its own width (a
/// causal conv's `[d·(k − 1), 0]`); the dims it does not reach are not padded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PadCfg {
    pub padding: Vec<usize>,
    #[serde(default)]
    pub value: f64,
}

impl PadCfg {
    /// The pad of `(before, after)` on each sample dim, first dim first (the inverse of
    /// [`PadCfg::per_dim`]): the pairs from the last dim back to the first padded one.
    pub fn from_per_dim(per_dim: &[(usize, usize)], value: f64) -> PadCfg {
        let first = per_dim.iter().position(|&p| p != (0, 0)).unwrap_or(per_dim.len());
        PadCfg { padding: per_dim[first..].iter().rev().flat_map(|&(b, e)| [b, e]).collect(), value }
    }

    /// `(before, after)` for each of the `rank` sample dims, first dim first; an error when
    /// `padding` is not pairs or reaches past the first dim.
    pub fn per_dim(&self, rank: usize) -> std::result::Result<Vec<(usize, usize)>, String> {
        if self.padding.len() % 2 == 1 || self.padding.len() > 2 * rank {
            return Err(format!("padding {:?} must hold (before, after) pairs for at most the {rank} dims of a sample", self.padding));
        }
        let mut dims = vec![(0, 0); rank];
        for (k, pair) in self.padding.chunks(2).enumerate() {
            dims[rank - 1 - k] = (pair[0], pair[1]);
        }
        Ok(dims)
    }
}

/// A reduction along one dim (counted with the batch, negatives from the end), which is removed
/// unless `keepdim`: PyTorch's `x.mean(dim, keepdim)` (`mean`), e.g. a recurrent output averaged
/// over time, `x.amax(dim, keepdim)` (`amax`), its maximum over time, and `x.sum(dim, keepdim)`
/// (`sum`), an attention-weighted sequence pooled by its weights' sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReduceCfg {
    pub dim: i64,
    #[serde(default)]
    pub keepdim: bool,
}

/// A token embedding: ids `[L]` (integers, stored as f32) → their rows of
/// `weight [num_embeddings, embedding_dim]`, `[L, embedding_dim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingCfg {
    pub num_embeddings: usize,
    pub embedding_dim: usize,
}

/// Absolute positions added to a sequence `[L, embedding_dim]`: `y[t] = x[t] + weight[offset +
/// t]`, `weight [num_positions, embedding_dim]` (RoBERTa's positions start after its pad id:
/// `offset` = pad id + 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionEmbeddingCfg {
    pub num_positions: usize,
    pub embedding_dim: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: usize,
}

/// Learned rows put before the positions: `y = [weight; x]` along the first axis of `x [L, D]`,
/// `[num_rows + L, D]` (a vision transformer's class token, `torch.cat([cls.expand(n, -1, -1),
/// x], 1)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrependRowsCfg {
    pub num_rows: usize,
    pub embedding_dim: usize,
}

/// One row of an embedding table added at every position: `y[t] = x[t] + weight[index]` (BERT's
/// token type 0 of a single sentence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRowCfg {
    pub num_embeddings: usize,
    pub embedding_dim: usize,
    #[serde(default)]
    pub index: usize,
}

/// Multi-head scaled dot-product attention, with a padding mask when given token ids. Inputs
/// `q, k, v [L, D]`, optionally the token ids `[L]`, and after them optionally a bias
/// `b [num_heads, L, L]` (`relative_position_bias`); per head (`d = D / num_heads` consecutive
/// features): `softmax(s·q_h·k_hᵀ + b_h + m)·v_h`, `s` = `scale` or by default `1/√d`, `m` = the
/// most negative f32 on keys whose id is `pad_id` (as Hugging Face's BERT), 0 without ids; the
/// heads' outputs side by side, `[L, D]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionCfg {
    pub num_heads: usize,
    #[serde(default)]
    pub pad_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
}

impl AttentionCfg {
    /// The scores' factor `s` for inputs of `width` features: `scale`, else `1/√(width/num_heads)`.
    pub fn score_scale(&self, width: usize) -> f64 {
        self.scale.unwrap_or_else(|| 1.0 / ((width / self.num_heads.max(1)) as f64).sqrt())
    }
}

/// MPNet's relative position bias (T5's, bidirectional), one table shared by every layer's
/// attention: input the token ids `[L]` (only their length is read), output `[num_heads, L, L]`
/// with `y[h, i, j] = weight[bucket(i − j), h]`, `weight [num_buckets, num_heads]`. As Hugging
/// Face's `relative_position_bucket`, with `b = num_buckets / 2` buckets per sign and `e = b / 2`
/// exact ones: `bucket(n) = b·[n < 0] + |n|` for `|n| < e`, else
/// `b·[n < 0] + min(e + ⌊ln(|n|/e) / ln(max_distance/e) · (b − e)⌋, b − 1)` (in f32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelativePositionBiasCfg {
    pub num_buckets: usize,
    pub max_distance: usize,
    pub num_heads: usize,
}

impl RelativePositionBiasCfg {
    /// The bucket of query position `i` attending to key position `j` (see the type's docs).
    pub fn bucket(&self, i: usize, j: usize) -> usize {
        let (half, n) = (self.num_buckets / 2, i as i64 - j as i64);
        let exact = half / 2;
        let base = if n < 0 { half } else { 0 };
        let m = n.unsigned_abs() as usize;
        if m < exact {
            return base + m;
        }
        // PyTorch's f32 arithmetic: `log(m / e) / log(max_distance / e) · (b − e)`, truncated.
        let scaled = (m as f32 / exact as f32).ln() / ((self.max_distance as f64 / exact as f64).ln() as f32) * (half - exact) as f32;
        base + (exact + scaled as usize).min(half - 1)
    }

    /// The bucket of every pair `(i, j)` of `l` positions, row-major (`[L, L]`).
    pub fn buckets(&self, l: usize) -> Vec<usize> {
        (0..l * l).map(|p| self.bucket(p / l, p % l)).collect()
    }
}

/// The mean over the positions whose token id is not `pad_id`: inputs `x [L, D]` and the ids
/// `[L]`, output `[D]`: `Σ_t m_t·x_t / max(Σ_t m_t, 1e-9)` (sentence-transformers' pooling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskedMeanCfg {
    #[serde(default)]
    pub pad_id: i64,
}

/// sentence-transformers' other poolings over the positions whose token id is not `pad_id`
/// (mask `m_t`): inputs `x [L, D]` and the ids `[L]`, output `[D]`. Padding is appended, so the
/// kept positions come first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskedPoolCfg {
    pub mode: PoolMode,
    #[serde(default)]
    pub pad_id: i64,
}

/// The pooling of [`MaskedPoolCfg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// `max_t` of `x_t` over the kept positions, per feature (−∞ when none is kept).
    Max,
    /// `Σ_t m_t·x_t / √max(Σ_t m_t, 1e-9)`.
    MeanSqrtLen,
    /// `Σ_t w_t·x_t / max(Σ_t w_t, 1e-9)` with `w_t = m_t·(t + 1)`: later tokens weigh more.
    WeightedMean,
    /// `x_t` of the last kept position (0 when none is kept).
    Last,
}

/// `y = x / max(‖x‖₂, eps)` over the last dim (PyTorch's `F.normalize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2NormalizeCfg {
    #[serde(default = "l2_eps")]
    pub eps: f64,
}

fn l2_eps() -> f64 {
    1e-12
}

/// LeakyReLU: `y = x` where `x > 0`, else `negative_slope·x` (PyTorch's default slope 0.01).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakyReluCfg {
    #[serde(default = "leaky_slope")]
    pub negative_slope: f64,
}

fn leaky_slope() -> f64 {
    0.01
}

/// Hardtanh: `y = min(max(x, min_val), max_val)` (PyTorch's defaults −1 and 1; ReLU6 is
/// `[0, 6]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardtanhCfg {
    #[serde(default = "hardtanh_min")]
    pub min_val: f64,
    #[serde(default = "hardtanh_max")]
    pub max_val: f64,
}

/// ELU, `x` where `x > 0`, else `alpha·(eˣ − 1)`; CELU, `max(0, x) + min(0, alpha·(e^(x/alpha) − 1))`
/// (PyTorch's default alpha 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EluCfg {
    #[serde(default = "elu_alpha")]
    pub alpha: f64,
}

fn elu_alpha() -> f64 {
    1.0
}

/// Softplus, `ln(1 + e^(beta·x))/beta`, and `x` itself where `beta·x > threshold` (PyTorch's
/// defaults beta 1, threshold 20).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftplusCfg {
    #[serde(default = "softplus_beta")]
    pub beta: f64,
    #[serde(default = "softplus_threshold")]
    pub threshold: f64,
}

fn softplus_beta() -> f64 {
    1.0
}

fn softplus_threshold() -> f64 {
    20.0
}

fn hardtanh_min() -> f64 {
    -1.0
}

fn hardtanh_max() -> f64 {
    1.0
}

/// A reshape of each sample, the batch kept: PyTorch's `x.reshape(n, *shape)` (as `x.view(n, c,
/// 1, 1)` or `nn.Unflatten(1, shape)`); one entry may be −1, the rest of the elements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshapeCfg {
    pub shape: Vec<i64>,
}

/// Global average pooling over every dim after the channel axis: `[N, C, …] → [N, C]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The node ops wick knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Linear(LinearCfg),
    Conv1d(Conv1dCfg),
    Conv2d(Conv2dCfg),
    #[serde(rename = "batchnorm1d")]
    BatchNorm1d(BatchNormCfg),
    #[serde(rename = "batchnorm2d")]
    BatchNorm2d(BatchNormCfg),
    #[serde(rename = "layernorm")]
    LayerNorm(LayerNormCfg),
    Relu(Empty),
    Relu6(Empty),
    Gelu(GeluCfg),
    Silu(Empty),
    Sigmoid(Empty),
    Tanh(Empty),
    LeakyRelu(LeakyReluCfg),
    Hardtanh(HardtanhCfg),
    Elu(EluCfg),
    Selu(Empty),
    Celu(EluCfg),
    Softplus(SoftplusCfg),
    /// Mish, `x·tanh(softplus(x))`.
    Mish(Empty),
    /// Softsign, `x/(1 + |x|)`.
    Softsign(Empty),
    Hardswish(Empty),
    Hardsigmoid(Empty),
    #[serde(rename = "maxpool1d")]
    MaxPool1d(PoolCfg),
    #[serde(rename = "maxpool2d")]
    MaxPool2d(PoolCfg),
    #[serde(rename = "avgpool1d")]
    AvgPool1d(PoolCfg),
    #[serde(rename = "avgpool2d")]
    AvgPool2d(PoolCfg),
    GlobalAvgPool(Empty),
    Flatten(FlattenCfg),
    Reshape(ReshapeCfg),
    Add(Empty),
    Mul(Empty),
    Concat(DimCfg),
    Dropout(DropoutCfg),
    Softmax(DimCfg),
    LogSoftmax(DimCfg),
    ChannelAffine(ChannelAffineCfg),
    Prelu(PreluCfg),
    #[serde(rename = "groupnorm")]
    GroupNorm(GroupNormCfg),
    Gru(RnnCfg),
    Lstm(RnnCfg),
    Select(SelectCfg),
    Narrow(NarrowCfg),
    Transpose(TransposeCfg),
    Pad(PadCfg),
    Mean(ReduceCfg),
    Amax(ReduceCfg),
    Sum(ReduceCfg),
    Embedding(EmbeddingCfg),
    PositionEmbedding(PositionEmbeddingCfg),
    PrependRows(PrependRowsCfg),
    EmbeddingRow(EmbeddingRowCfg),
    Attention(AttentionCfg),
    RelativePositionBias(RelativePositionBiasCfg),
    MaskedMean(MaskedMeanCfg),
    MaskedPool(MaskedPoolCfg),
    L2Normalize(L2NormalizeCfg),
}

/// The op names, for error messages.
pub const OP_NAMES: &[&str] = &[
    "linear",
    "conv1d",
    "conv2d",
    "batchnorm1d",
    "batchnorm2d",
    "layernorm",
    "relu",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "leaky_relu",
    "hardtanh",
    "elu",
    "selu",
    "celu",
    "softplus",
    "mish",
    "softsign",
    "hardswish",
    "hardsigmoid",
    "maxpool1d",
    "maxpool2d",
    "avgpool1d",
    "avgpool2d",
    "global_avg_pool",
    "flatten",
    "reshape",
    "add",
    "mul",
    "concat",
    "dropout",
    "softmax",
    "log_softmax",
    "channel_affine",
    "prelu",
    "groupnorm",
    "gru",
    "lstm",
    "select",
    "narrow",
    "transpose",
    "pad",
    "mean",
    "amax",
    "sum",
    "embedding",
    "position_embedding",
    "embedding_row",
    "attention",
    "relative_position_bias",
    "masked_mean",
    "masked_pool",
    "l2_normalize",
    "prepend_rows",
];

impl Op {
    /// Whether the op maps each value on its own: ReLU, dropout, and every activation
    /// `act_op::Act` computes.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Relu(_) | Op::Dropout(_)) || super::act_op::Act::of(self).is_some()
    }

    /// The op's name as written in the file.
    pub fn name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m.get("op").and_then(Value::as_str).unwrap_or("?").to_string(),
            _ => "?".to_string(),
        }
    }

    /// Names of the parameter tensors this op owns (suffixes after `node.`), and whether each is
    /// trained by gradient descent (BatchNorm running statistics are buffers, not trained).
    pub fn param_suffixes(&self) -> Vec<(&'static str, bool)> {
        match self {
            Op::Linear(c) => with_bias(c.bias),
            Op::Conv1d(c) => with_bias(c.bias),
            Op::Conv2d(c) => with_bias(c.bias),
            Op::BatchNorm1d(c) | Op::BatchNorm2d(c) => {
                let mut v = if c.affine { vec![("weight", true), ("bias", true)] } else { vec![] };
                v.push(("running_mean", false));
                v.push(("running_var", false));
                v
            }
            Op::LayerNorm(c) if c.elementwise_affine => vec![("weight", true), ("bias", true)],
            Op::ChannelAffine(_) => vec![("weight", false), ("bias", false)],
            Op::Prelu(_) => vec![("weight", true)],
            Op::GroupNorm(c) if c.affine => vec![("weight", true), ("bias", true)],
            Op::Embedding(_) | Op::PositionEmbedding(_) | Op::PrependRows(_) | Op::EmbeddingRow(_) | Op::RelativePositionBias(_) => vec![("weight", true)],
            Op::Gru(c) | Op::Lstm(c) => {
                let rows = RNN_PARAMS.iter().enumerate().filter(|(i, _)| i / 2 < c.num_layers.min(MAX_RNN_LAYERS) && (i % 2 == 0 || c.bidirectional));
                rows.flat_map(|(_, names)| names[..if c.bias { 4 } else { 2 }].iter().map(|&n| (n, true))).collect()
            }
            _ => vec![],
        }
    }

    /// Expected shape of the parameter `suffix`.
    pub fn param_shape(&self, suffix: &str) -> Vec<usize> {
        match (self, suffix) {
            (Op::Linear(c), "weight") => vec![c.out_features, c.in_features],
            (Op::Linear(c), _) => vec![c.out_features],
            (Op::Conv1d(c), "weight") => vec![c.out_channels, c.in_channels / c.groups.max(1), c.kernel_size],
            (Op::Conv1d(c), _) => vec![c.out_channels],
            (Op::Conv2d(c), "weight") => {
                let (kh, kw) = c.kernel_size.hw();
                vec![c.out_channels, c.in_channels / c.groups.max(1), kh, kw]
            }
            (Op::Conv2d(c), _) => vec![c.out_channels],
            (Op::BatchNorm1d(c) | Op::BatchNorm2d(c), _) => vec![c.num_features],
            (Op::ChannelAffine(c), _) => vec![c.num_features],
            (Op::Prelu(c), _) => vec![c.num_parameters],
            (Op::GroupNorm(c), _) => vec![c.num_channels],
            (Op::LayerNorm(c), _) => c.normalized_shape.clone(),
            (Op::Embedding(c), _) => vec![c.num_embeddings, c.embedding_dim],
            (Op::PositionEmbedding(c), _) => vec![c.num_positions, c.embedding_dim],
            (Op::PrependRows(c), _) => vec![c.num_rows, c.embedding_dim],
            (Op::EmbeddingRow(c), _) => vec![c.num_embeddings, c.embedding_dim],
            (Op::RelativePositionBias(c), _) => vec![c.num_buckets, c.num_heads],
            (Op::Gru(c) | Op::Lstm(c), s) => {
                let gates = if matches!(self, Op::Gru(_)) { 3 } else { 4 };
                let layer: usize = s.split("_l").nth(1).and_then(|t| t.trim_end_matches("_reverse").parse().ok()).unwrap_or(0);
                let input = if layer == 0 { c.input_size } else { c.dirs() * c.hidden_size };
                match s.split('_').next() {
                    Some("weight") if s.starts_with("weight_ih") => vec![gates * c.hidden_size, input],
                    Some("weight") => vec![gates * c.hidden_size, c.hidden_size],
                    _ => vec![gates * c.hidden_size],
                }
            }
            _ => vec![],
        }
    }
}

fn with_bias(bias: bool) -> Vec<(&'static str, bool)> {
    if bias {
        vec![("weight", true), ("bias", true)]
    } else {
        vec![("weight", true)]
    }
}

impl Node {
    /// Full tensor name of parameter `suffix`: `node.suffix`.
    pub fn param(&self, suffix: &str) -> String {
        format!("{}.{}", self.name, suffix)
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(self.name.clone()));
        m.insert("inputs".into(), serde_json::to_value(&self.inputs).map_err(serde::ser::Error::custom)?);
        if let Value::Object(op) = serde_json::to_value(&self.op).map_err(serde::ser::Error::custom)? {
            m.extend(op);
        }
        Value::Object(m).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        node_from_value(v).map_err(serde::de::Error::custom)
    }
}

/// Parses one node, with errors that name it; unknown fields are errors.
fn node_from_value(v: Value) -> std::result::Result<Node, String> {
    let Value::Object(mut m) = v else { return Err("a node must be a JSON object".into()) };
    let name = match m.remove("name") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err("a node lacks a non-empty string field 'name'".into()),
    };
    let inputs: Vec<String> = match m.remove("inputs") {
        Some(v) => serde_json::from_value(v).map_err(|e| format!("node '{name}': field 'inputs': {e}"))?,
        None => return Err(format!("node '{name}': missing field 'inputs'")),
    };
    let op_name = match m.remove("op") {
        Some(Value::String(s)) => s,
        _ => return Err(format!("node '{name}': missing field 'op'")),
    };
    let op = op_from_fields(&op_name, Value::Object(m)).map_err(|e| format!("node '{name}' ({op_name}): {e}"))?;
    Ok(Node { name, inputs, op })
}

/// The op `name` from its fields, through the variant's own struct, which denies unknown
/// fields (an internally tagged enum would ignore them).
fn op_from_fields(name: &str, fields: Value) -> std::result::Result<Op, String> {
    fn cfg<T: serde::de::DeserializeOwned>(v: Value) -> std::result::Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
    Ok(match name {
        "linear" => Op::Linear(cfg(fields)?),
        "conv1d" => Op::Conv1d(cfg(fields)?),
        "conv2d" => Op::Conv2d(cfg(fields)?),
        "batchnorm1d" => Op::BatchNorm1d(cfg(fields)?),
        "batchnorm2d" => Op::BatchNorm2d(cfg(fields)?),
        "layernorm" => Op::LayerNorm(cfg(fields)?),
        "relu" => Op::Relu(cfg(fields)?),
        "relu6" => Op::Relu6(cfg(fields)?),
        "gelu" => Op::Gelu(cfg(fields)?),
        "silu" => Op::Silu(cfg(fields)?),
        "sigmoid" => Op::Sigmoid(cfg(fields)?),
        "tanh" => Op::Tanh(cfg(fields)?),
        "leaky_relu" => Op::LeakyRelu(cfg(fields)?),
        "hardtanh" => Op::Hardtanh(cfg(fields)?),
        "elu" => Op::Elu(cfg(fields)?),
        "selu" => Op::Selu(cfg(fields)?),
        "celu" => Op::Celu(cfg(fields)?),
        "softplus" => Op::Softplus(cfg(fields)?),
        "mish" => Op::Mish(cfg(fields)?),
        "softsign" => Op::Softsign(cfg(fields)?),
        "hardswish" => Op::Hardswish(cfg(fields)?),
        "hardsigmoid" => Op::Hardsigmoid(cfg(fields)?),
        "maxpool1d" => Op::MaxPool1d(cfg(fields)?),
        "maxpool2d" => Op::MaxPool2d(cfg(fields)?),
        "avgpool1d" => Op::AvgPool1d(cfg(fields)?),
        "avgpool2d" => Op::AvgPool2d(cfg(fields)?),
        "global_avg_pool" => Op::GlobalAvgPool(cfg(fields)?),
        "flatten" => Op::Flatten(cfg(fields)?),
        "reshape" => Op::Reshape(cfg(fields)?),
        "add" => Op::Add(cfg(fields)?),
        "mul" => Op::Mul(cfg(fields)?),
        "concat" => Op::Concat(cfg(fields)?),
        "dropout" => Op::Dropout(cfg(fields)?),
        "softmax" => Op::Softmax(cfg(fields)?),
        "log_softmax" => Op::LogSoftmax(cfg(fields)?),
        "channel_affine" => Op::ChannelAffine(cfg(fields)?),
        "prelu" => Op::Prelu(cfg(fields)?),
        "groupnorm" => Op::GroupNorm(cfg(fields)?),
        "gru" => Op::Gru(cfg(fields)?),
        "lstm" => Op::Lstm(cfg(fields)?),
        "select" => Op::Select(cfg(fields)?),
        "narrow" => Op::Narrow(cfg(fields)?),
        "transpose" => Op::Transpose(cfg(fields)?),
        "pad" => Op::Pad(cfg(fields)?),
        "mean" => Op::Mean(cfg(fields)?),
        "amax" => Op::Amax(cfg(fields)?),
        "sum" => Op::Sum(cfg(fields)?),
        "embedding" => Op::Embedding(cfg(fields)?),
        "position_embedding" => Op::PositionEmbedding(cfg(fields)?),
        "prepend_rows" => Op::PrependRows(cfg(fields)?),
        "embedding_row" => Op::EmbeddingRow(cfg(fields)?),
        "attention" => Op::Attention(cfg(fields)?),
        "relative_position_bias" => Op::RelativePositionBias(cfg(fields)?),
        "masked_mean" => Op::MaskedMean(cfg(fields)?),
        "masked_pool" => Op::MaskedPool(cfg(fields)?),
        "l2_normalize" => Op::L2Normalize(cfg(fields)?),
        other => return Err(format!("unknown op '{other}' (known: {})", OP_NAMES.join(", "))),
    })
}

impl Arch {
    /// Parses an architecture from JSON text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Arch> {
        let mut arch: Arch = serde_json::from_str(text).map_err(|e| WickError::Arch { path: origin.into(), msg: e.to_string() })?;
        arch.origin = origin.to_string();
        if arch.format != ARCH_FORMAT {
            return Err(WickError::Arch { path: origin.into(), msg: format!("field 'format' is '{}', expected '{ARCH_FORMAT}'", arch.format) });
        }
        if arch.version != ARCH_VERSION {
            return Err(WickError::Arch { path: origin.into(), msg: format!("field 'version' is {}, this wick reads version {ARCH_VERSION}", arch.version) });
        }
        Ok(arch)
    }

    /// Pretty JSON text of the architecture.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("architecture serialises")
    }

    /// The output node's name (explicit, else the last node).
    pub fn output_name(&self) -> &str {
        match &self.output {
            Some(o) => o,
            None => self.nodes.last().map(|n| n.name.as_str()).unwrap_or(""),
        }
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
