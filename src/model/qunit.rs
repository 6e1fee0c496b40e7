//! The matmuls INT8 quantisation works on ("units"): every conv and linear node, and each weight
//! matrix of a GRU or LSTM node (`W_ih` and `W_hh` of every layer and direction). A unit's key
//! is the node's name for a conv or linear, and the weight tensor's name (`rnn.weight_hh_l0`)
//! for a recurrent matrix, so that artifacts, reports and `--exclude` lists name what a user
//! can find in the state dict. Uses `model::arch`.

use super::arch::{rnn_params, Node, Op};
use super::forward::is_weight_layer;
use super::Model;

/// What a unit's matmul reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitInput {
    /// The output of this node (or the model input): calibrated on data.
    Node(String),
    /// A recurrent hidden state (`h_{t−1}`, or the previous layer's outputs), which lies in
    /// [`HIDDEN_RANGE`] for every input.
    Hidden,
}

/// The range of every GRU and LSTM hidden state, whatever the weights and inputs: an LSTM's
/// `h = o ⊙ tanh(c)` with `o ∈ (0, 1)`; a GRU's `h' = (1 − z) ⊙ n + z ⊙ h` is a convex
/// combination of `n = tanh(…)` and the previous state, which starts at 0. So its quantisation
/// is fixed by the op, not calibrated, and a step never clips.
pub const HIDDEN_RANGE: (f32, f32) = (-1.0, 1.0);

/// One quantised matmul of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub key: String,
    /// The node it belongs to.
    pub node: String,
    /// Its weight's and bias's parameter names.
    pub weight: String,
    pub bias: String,
    pub input: UnitInput,
}

/// The units of `node`, in execution order (none for an op without weights to quantise).
pub fn node_units(node: &Node) -> Vec<Unit> {
    match &node.op {
        op if is_weight_layer(op) => {
            vec![Unit { key: node.name.clone(), node: node.name.clone(), weight: node.param("weight"), bias: node.param("bias"), input: UnitInput::Node(node.inputs[0].clone()) }]
        }
        Op::Gru(c) | Op::Lstm(c) => {
            let mut units = vec![];
            for k in 0..c.num_layers {
                for reverse in (0..c.dirs()).map(|d| d == 1) {
                    let [w_ih, w_hh, b_ih, b_hh] = rnn_params(k, reverse);
                    let first = if k == 0 { UnitInput::Node(node.inputs[0].clone()) } else { UnitInput::Hidden };
                    for (w, b, input) in [(w_ih, b_ih, first), (w_hh, b_hh, UnitInput::Hidden)] {
                        units.push(Unit { key: node.param(w), node: node.name.clone(), weight: node.param(w), bias: node.param(b), input });
                    }
                }
            }
            units
        }
        _ => vec![],
    }
}

/// Every unit of `model`, in graph order.
pub fn units(model: &Model) -> Vec<Unit> {
    model.graph.order.iter().flat_map(|&i| node_units(&model.arch.nodes[i])).collect()
}

/// Whether `op` has units.
pub fn has_units(op: &Op) -> bool {
    is_weight_layer(op) || matches!(op, Op::Gru(_) | Op::Lstm(_))
}

/// The weight and bias tensor names of unit `key`, told apart by whether `key` is itself a
/// tensor (`is_tensor`): a recurrent matrix `n.weight_hh_l0` has the bias `n.bias_hh_l0`; a
/// layer `n` has `n.weight` and `n.bias`.
pub fn tensors_of(key: &str, is_tensor: impl Fn(&str) -> bool) -> (String, String) {
    if is_tensor(key) {
        let (node, param) = key.rsplit_once('.').unwrap_or(("", key));
        let bias = param.replacen("weight", "bias", 1);
        (key.to_string(), if node.is_empty() { bias } else { format!("{node}.{bias}") })
    } else {
        (format!("{key}.weight"), format!("{key}.bias"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_of_layers_and_recurrent_matrices() {
        let is = |k: &str| k == "rnn.weight_hh_l1_reverse";
        assert_eq!(tensors_of("rnn.weight_hh_l1_reverse", is), ("rnn.weight_hh_l1_reverse".into(), "rnn.bias_hh_l1_reverse".into()));
        assert_eq!(tensors_of("block.weight_proj", is), ("block.weight_proj.weight".into(), "block.weight_proj.bias".into()));
    }
}
