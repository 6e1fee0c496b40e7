//! The encoder families wick reads, one architecture under each family's names: BERT (and
//! RoBERTa, XLM-RoBERTa, CamemBERT, which differ only where their positions start), DistilBERT
//! (other names and `config.json` fields, no token types) and MPNet (other names, no token
//! types, and a relative position bias added to every layer's attention scores). A family says which
//! `config.json` field holds what, what each layer's nodes are called (the weights' own names),
//! and the prefix of its task classes' checkpoints (`BertForX`: `bert.`).

use crate::error::{Result, WickError};
use serde_json::Value;
use std::path::Path;

/// The stacks of layers of every family: layer `k`'s tensors are `{stack}.{k}.…`.
pub const LAYER_STACKS: [&str; 2] = ["encoder.layer", "transformer.layer"];

/// The stack, the layer and the rest of `name` when it lies inside an encoder layer.
pub fn split_layer(name: &str) -> Option<(&'static str, usize, &str)> {
    LAYER_STACKS.iter().find_map(|&stack| {
        let (i, rest) = name.strip_prefix(stack)?.strip_prefix('.')?.split_once('.')?;
        Some((stack, i.parse().ok()?, rest))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    /// RoBERTa, XLM-RoBERTa, CamemBERT: a sentence's positions start at the pad id + 1 (Hugging
    /// Face's `create_position_ids_from_input_ids`, padding never being inside a sentence).
    Roberta,
    DistilBert,
    /// MPNet: positions start at 2 (its code fixes the padding index at 1), and one relative
    /// position bias table (`encoder.relative_attention_bias`) serves every layer.
    Mpnet,
}

/// The relative position bias of MPNet: transformers computes 32 buckets up to a distance of 128
/// whatever `relative_attention_num_buckets` says (that field sizes the table only).
pub const MPNET_BUCKETS: usize = 32;
pub const MPNET_MAX_DISTANCE: usize = 128;
/// The node of MPNet's relative position bias, its weight's own name less `.weight`.
pub const MPNET_BIAS_NODE: &str = "encoder.relative_attention_bias";

/// The nodes of one encoder layer: `x → q, k, v → attention → attn_out (+ x) → attn_norm →
/// ffn_in → act → ffn_out (+ attn_norm) → ffn_norm`.
pub struct LayerNames {
    pub q: String,
    pub k: String,
    pub v: String,
    pub attention: String,
    pub attn_out: String,
    pub attn_residual: String,
    pub attn_norm: String,
    pub ffn_in: String,
    pub act: String,
    pub ffn_out: String,
    pub ffn_residual: String,
    pub ffn_norm: String,
}

impl Family {
    /// The family `config.json`'s `model_type` names.
    pub fn of(config: &Value, path: &Path) -> Result<Family> {
        match config.get("model_type").and_then(Value::as_str).unwrap_or("") {
            "bert" => Ok(Family::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Ok(Family::Roberta),
            "distilbert" => Ok(Family::DistilBert),
            "mpnet" => Ok(Family::Mpnet),
            other => Err(WickError::invalid(
                format!("{}: field 'model_type'", path.display()),
                format!("is \"{other}\"; wick reads BERT-family encoders (\"bert\", \"roberta\", \"xlm-roberta\", \"camembert\", \"distilbert\", \"mpnet\")"),
            )),
        }
    }

    /// The task classes' prefix of the encoder's tensor names.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
            Family::DistilBert => "distilbert.",
            Family::Mpnet => "mpnet.",
        }
    }

    /// The `config.json` field of the number of layers.
    pub fn layers_field(self) -> &'static str {
        match self {
            Family::DistilBert => "n_layers",
            _ => "num_hidden_layers",
        }
    }

    /// The `config.json` fields of the hidden size, the heads, the feed-forward size and its
    /// activation.
    pub fn fields(self) -> [&'static str; 4] {
        match self {
            Family::DistilBert => ["dim", "n_heads", "hidden_dim", "activation"],
            _ => ["hidden_size", "num_attention_heads", "intermediate_size", "hidden_act"],
        }
    }

    /// Whether the embeddings add a token-type row (`token_type_embeddings`).
    pub fn token_types(self) -> bool {
        !matches!(self, Family::DistilBert | Family::Mpnet)
    }

    /// `pad_token_id`, else the family's own (`[PAD]` 0, RoBERTa's and MPNet's `<pad>` 1).
    pub fn pad_id(self, config: &Value) -> i64 {
        config.get("pad_token_id").and_then(Value::as_i64).unwrap_or(if matches!(self, Family::Roberta | Family::Mpnet) { 1 } else { 0 })
    }

    /// The row of the position table of a sentence's first token.
    pub fn position_offset(self, config: &Value) -> usize {
        match self {
            Family::Roberta => self.pad_id(config) as usize + 1,
            Family::Mpnet => 2,
            _ => 0,
        }
    }

    /// The LayerNorms' epsilon: `layer_norm_eps`, else 1e-12 (DistilBERT's, fixed in its code).
    pub fn eps(self, config: &Value) -> f64 {
        match self {
            Family::DistilBert => 1e-12,
            _ => config.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12),
        }
    }

    /// The nodes of layer `l`.
    pub fn layer(self, l: usize) -> LayerNames {
        match self {
            Family::DistilBert => {
                let p = format!("transformer.layer.{l}");
                LayerNames {
                    q: format!("{p}.attention.q_lin"),
                    k: format!("{p}.attention.k_lin"),
                    v: format!("{p}.attention.v_lin"),
                    attention: format!("{p}.attention"),
                    attn_out: format!("{p}.attention.out_lin"),
                    attn_residual: format!("{p}.attention.residual"),
                    attn_norm: format!("{p}.sa_layer_norm"),
                    ffn_in: format!("{p}.ffn.lin1"),
                    act: format!("{p}.ffn.act"),
                    ffn_out: format!("{p}.ffn.lin2"),
                    ffn_residual: format!("{p}.ffn.residual"),
                    ffn_norm: format!("{p}.output_layer_norm"),
                }
            }
            _ => {
                let (p, a) = (format!("encoder.layer.{l}"), format!("encoder.layer.{l}.attention"));
                // BERT's and MPNet's layers differ only in their attention's names.
                let [q, k, v, attention, attn_out, attn_residual, attn_norm] = match self {
                    Family::Mpnet => ["attn.q", "attn.k", "attn.v", "attn", "attn.o", "residual", "LayerNorm"],
                    _ => ["self.query", "self.key", "self.value", "self", "output.dense", "output.residual", "output.LayerNorm"],
                }
                .map(|part| format!("{a}.{part}"));
                LayerNames {
                    q,
                    k,
                    v,
                    attention,
                    attn_out,
                    attn_residual,
                    attn_norm,
                    ffn_in: format!("{p}.intermediate.dense"),
                    act: format!("{p}.intermediate.act"),
                    ffn_out: format!("{p}.output.dense"),
                    ffn_residual: format!("{p}.output.residual"),
                    ffn_norm: format!("{p}.output.LayerNorm"),
                }
            }
        }
    }
}
