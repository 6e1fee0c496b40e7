//! Seeded random initialisation of a model from its architecture alone, as PyTorch initialises
//! fresh modules: conv/linear weights and biases `U(−1/√fan_in, 1/√fan_in)` (kaiming-uniform with
//! a = √5), GRU/LSTM tensors `U(−1/√hidden, 1/√hidden)`, norm scales 1 and shifts 0, running
//! mean 0 and variance 1. Uses `model`.

use super::arch::{Arch, Op};
use super::Model;
use crate::error::Result;
use candle_core::Tensor;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// A freshly initialised model; the same seed gives the same weights.
pub fn init_model(arch: Arch, seed: u64) -> Result<Model> {
    // Sizes are checked before any tensor is allocated.
    super::graph::analyse(&arch, &arch.origin)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dev = super::device();
    let mut tensors = BTreeMap::new();
    for node in &arch.nodes {
        for (suffix, _) in node.op.param_suffixes() {
            let shape = node.op.param_shape(suffix);
            let n: usize = shape.iter().product();
            let values: Vec<f32> = match (&node.op, suffix) {
                (Op::Linear(_) | Op::Conv1d(_) | Op::Conv2d(_), _) => {
                    let w = node.op.param_shape("weight");
                    let fan_in: usize = w[1..].iter().product();
                    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                }
                (Op::Gru(c) | Op::Lstm(c), _) => {
                    let bound = 1.0 / (c.hidden_size.max(1) as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                }
                (Op::Embedding(_) | Op::PositionEmbedding(_) | Op::PrependRows(_) | Op::EmbeddingRow(_) | Op::RelativePositionBias(_), _) => (0..n).map(|_| rng.random_range(-0.1..0.1)).collect(),
                (_, "weight" | "running_var") => vec![1.0; n],
                _ => vec![0.0; n],
            };
            tensors.insert(node.param(suffix), Tensor::from_vec(values, shape, &dev)?);
        }
    }
    Model::new(arch, tensors, &format!("random init (seed {seed})"))
}
