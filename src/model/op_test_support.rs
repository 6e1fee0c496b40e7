//! What the custom-op tests share: deterministic inputs and the comparison of an op with
//! candle's composition of the same function, forward and backward.

use candle_core::{Device, Tensor, Var};

/// A `shape` tensor of values in [−1, 1) from a fixed hash of the index and `seed`.
pub fn rnd(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `max |a − b|`.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// For the loss `Σ y·r`, `max |∂/∂v ours − ∂/∂v theirs|` for each of `vars`: equal gradients
/// for every probe `r` mean equal backward passes.
pub fn grad_diffs(ours: &Tensor, theirs: &Tensor, r: &Tensor, vars: &[&Var]) -> Vec<f32> {
    let ga = (ours * r).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (theirs * r).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter().map(|v| max_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap())).collect()
}
