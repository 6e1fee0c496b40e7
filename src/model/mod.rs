//! The model IR: an architecture (a DAG of typed nodes) over a parameter store keyed by dotted
//! PyTorch-style names. Loading, saving, validation, statistics and the candle executor live in
//! the submodules. Uses `error`, `tensor_file` and candle.

pub mod act_op;
pub(crate) mod add_rows_op;
pub mod arch;
mod axis_ops;
mod bn_train;
mod conv_op;
mod depthwise_op;
pub mod fold;
pub mod forward;
pub mod graph;
pub mod pool_op;
pub(crate) use conv_op::with_f32;
pub use linear_op::linear;
pub mod im2col;
pub mod init;
pub(crate) mod layernorm_op;
mod linear_op;
pub mod load;
#[cfg(test)]
mod op_test_support;
pub mod ops;
pub mod qunit;
pub mod recurrent;
mod relu_train;
pub mod stats;
pub mod text_ops;
pub mod vmath;

use crate::error::{Result, WickError};
use arch::Arch;
use candle_core::{Device, Tensor, Var};
use graph::Graph;
use std::collections::BTreeMap;

/// A float model: architecture, checked graph and parameters (all f32 on the CPU).
#[derive(Debug)]
pub struct Model {
    pub arch: Arch,
    pub graph: Graph,
    /// Every parameter and buffer, keyed `node.suffix`. Buffers (BatchNorm running statistics)
    /// are `Var`s too so training can update them in place, but they get no gradient step.
    pub params: BTreeMap<String, Var>,
    /// Where the model came from, for messages.
    pub source: String,
}

impl Model {
    /// Builds a model from an architecture and named f32 tensors, checking that every tensor
    /// the architecture needs is present, of the right shape and finite.
    pub fn new(arch: Arch, tensors: BTreeMap<String, Tensor>, source: &str) -> Result<Model> {
        let origin = if arch.origin.is_empty() { source.to_string() } else { arch.origin.clone() };
        let graph = graph::analyse(&arch, &origin)?;
        let mut params = BTreeMap::new();
        for node in &arch.nodes {
            for (suffix, _) in node.op.param_suffixes() {
                let name = node.param(suffix);
                let t = tensors.get(&name).ok_or_else(|| WickError::MissingTensor { file: source.into(), tensor: name.clone(), node: node.name.clone() })?;
                let expected = node.op.param_shape(suffix);
                if t.dims() != expected.as_slice() {
                    return Err(WickError::ShapeMismatch { file: source.into(), tensor: name, node: node.name.clone(), expected, found: t.dims().to_vec() });
                }
                check_finite(t, source, &name)?;
                if suffix == "running_var" && t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?.iter().any(|&v| v < 0.0) {
                    return Err(WickError::invalid(format!("{source}: tensor '{name}'"), "a BatchNorm's running variance is negative"));
                }
                // Detached, so `Var::from_tensor` copies it even when it is another model's
                // parameter: no two models share a `Var` (a pruned model keeps unpruned tensors).
                params.insert(name, Var::from_tensor(&t.to_dtype(candle_core::DType::F32)?.detach())?);
            }
        }
        Ok(Model { arch, graph, params, source: source.to_string() })
    }

    /// The same model over inputs of per-sample shape `shape` (a text encoder's shorter
    /// sequences): the graph checked again for it, the parameters shared, not copied (training
    /// one trains both).
    pub fn with_input_shape(&self, shape: &[usize]) -> Result<Model> {
        let mut arch = self.arch.clone();
        arch.input.shape = shape.to_vec();
        let origin = if arch.origin.is_empty() { self.source.clone() } else { arch.origin.clone() };
        let graph = graph::analyse(&arch, &origin)?;
        Ok(Model { arch, graph, params: self.params.clone(), source: self.source.clone() })
    }

    /// Parameter or buffer `name` (must exist: the constructor checked it).
    pub fn p(&self, name: &str) -> &Tensor {
        self.params.get(name).map(|v| v.as_tensor()).unwrap_or_else(|| panic!("parameter '{name}' was checked at load"))
    }

    /// Parameter or buffer `name`'s values, flattened row-major (the compiled runtime's
    /// input).
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.p(name).flatten_all()?.to_vec1()?)
    }

    /// The names of the parameters trained by gradient descent (weights and biases, not
    /// running statistics), in node order.
    pub fn trainable_names(&self) -> Vec<String> {
        let mut v = vec![];
        for node in &self.arch.nodes {
            for (suffix, trained) in node.op.param_suffixes() {
                if trained {
                    v.push(node.param(suffix));
                }
            }
        }
        v
    }

    /// The variables trained by gradient descent, in the order of [`Model::trainable_names`].
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.trainable_names().iter().map(|n| self.params[n].clone()).collect()
    }

    /// A copy whose parameters are independent of this model's. It is the only way to copy a
    /// model (`Model` is not `Clone`), so two models never share a `Var` that training updates.
    pub fn deep_clone(&self) -> Result<Model> {
        let params = self.params.iter().map(|(k, v)| Ok((k.clone(), Var::from_tensor(&v.as_tensor().copy()?)?))).collect::<Result<_>>()?;
        Ok(Model { arch: self.arch.clone(), graph: self.graph.clone(), params, source: self.source.clone() })
    }

    /// Current values of every parameter, detached.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.params.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.arch.input.shape
    }

    /// Number of output classes: the last dim of the output node's shape.
    pub fn num_classes(&self) -> usize {
        self.graph.shapes[self.arch.output_name()].last().copied().unwrap_or(0)
    }
}

/// Fails with the tensor's name when it holds NaN or infinite values.
pub fn check_finite(t: &Tensor, file: &str, name: &str) -> Result<()> {
    let v: Vec<f32> = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    if v.iter().any(|x| x.is_nan()) {
        return Err(WickError::NonFinite { file: file.into(), tensor: name.into(), what: "NaN" });
    }
    if v.iter().any(|x| x.is_infinite()) {
        return Err(WickError::NonFinite { file: file.into(), tensor: name.into(), what: "infinite" });
    }
    Ok(())
}

/// The device wick computes on.
pub fn device() -> Device {
    Device::Cpu
}
