//! Data sets: a safetensors file with `x` (inputs, f32/f16/bf16, `[N, …]`) and `y` (integer
//! labels `[N]`). Uses `tensor_file`, `error`.

use crate::error::{Result, WickError};
use crate::tensor_file::{self, TensorFile};
use candle_core::Tensor;
use std::path::Path;

/// A labelled data set in memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    /// Inputs, `[N, …]`, f32.
    pub x: Tensor,
    /// Labels, one per sample.
    pub y: Vec<u32>,
    /// Hex sha256 of the file it was read from.
    pub sha256: String,
}

/// The inputs `x` as f32: float tensors as they are, integer ones (token ids, categories)
/// converted, each exact since f32 holds every integer of magnitude up to 2²⁴.
fn inputs(xt: &tensor_file::RawTensor, file: &str) -> Result<Vec<f32>> {
    if matches!(xt.dtype, safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16) {
        return tensor_file::to_f32(xt, file, "x");
    }
    let ids =
        tensor_file::to_i64(xt, file, "x").map_err(|_| WickError::BadDtype { file: file.into(), tensor: "x".into(), dtype: format!("{:?}", xt.dtype), role: "inputs (float, or integer ids)" })?;
    const EXACT: i64 = 1 << 24;
    if let Some((i, v)) = ids.iter().enumerate().find(|(_, v)| v.abs() > EXACT) {
        return Err(WickError::data(file, format!("tensor 'x' holds the integer {v} at flat index {i}, beyond ±2^24, which f32 cannot hold exactly")));
    }
    Ok(ids.into_iter().map(|v| v as f32).collect())
}

impl Dataset {
    /// Reads `x` and `y` from a safetensors file.
    pub fn read(path: &Path) -> Result<Dataset> {
        let file = TensorFile::read(path)?;
        let name = file.name();
        let xt = file.tensors.get("x").ok_or_else(|| WickError::data(&name, "tensor 'x' (the inputs) is missing"))?;
        let yt = file.tensors.get("y").ok_or_else(|| WickError::data(&name, "tensor 'y' (the labels) is missing"))?;
        let xv = inputs(xt, &name)?;
        if xt.shape.len() < 2 {
            return Err(WickError::data(&name, format!("tensor 'x' has shape {:?}; expected [N, ...] with at least one feature dim", xt.shape)));
        }
        let n = xt.shape[0];
        let yv = tensor_file::to_i64(yt, &name, "y")?;
        if yt.shape.len() != 1 || yv.len() != n {
            return Err(WickError::data(&name, format!("tensor 'y' has shape {:?}; expected [{n}] to match 'x'", yt.shape)));
        }
        if n == 0 {
            return Err(WickError::data(&name, "the data set is empty (0 samples)"));
        }
        if let Some((i, v)) = xv.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(WickError::data(&name, format!("tensor 'x' holds a non-finite value {v} at flat index {i}")));
        }
        if let Some((i, v)) = yv.iter().enumerate().find(|(_, &v)| v < 0 || v > u32::MAX as i64) {
            return Err(WickError::data(&name, format!("label y[{i}] = {v} is negative or too large")));
        }
        let x = Tensor::from_vec(xv, xt.shape.clone(), &crate::model::device())?;
        Ok(Dataset { name, x, y: yv.into_iter().map(|v| v as u32).collect(), sha256: file.sha256.clone() })
    }

    /// Reads a data set and checks it fits a model input of `shape` with `classes` classes.
    pub fn read_fitting(path: &Path, shape: &[usize], classes: usize) -> Result<Dataset> {
        let d = Dataset::read(path)?;
        d.check_fits(shape, classes)?;
        Ok(d)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Per-sample input shape.
    pub fn sample_shape(&self) -> &[usize] {
        &self.x.dims()[1..]
    }

    /// Checks that the inputs fit a model input of `shape` and the labels lie in `0..classes`.
    pub fn check_fits(&self, shape: &[usize], classes: usize) -> Result<()> {
        if self.sample_shape() != shape {
            return Err(WickError::data(&self.name, format!("tensor 'x' has samples of shape {:?}, but the model's input is {:?}", self.sample_shape(), shape)));
        }
        if let Some((i, &v)) = self.y.iter().enumerate().find(|(_, &v)| v as usize >= classes) {
            return Err(WickError::data(&self.name, format!("label y[{i}] = {v} is outside the model's {classes} classes (0..{})", classes - 1)));
        }
        Ok(())
    }

    /// Rows `idx` as a batch `(x, y)`.
    pub fn batch(&self, idx: &[usize]) -> Result<(Tensor, Vec<u32>)> {
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let t = Tensor::from_vec(ids, idx.len(), self.x.device())?;
        Ok((self.x.index_select(&t, 0)?, idx.iter().map(|&i| self.y[i]).collect()))
    }

    /// Contiguous rows `start..start+len`.
    pub fn slice(&self, start: usize, len: usize) -> Result<(Tensor, Vec<u32>)> {
        Ok((self.x.narrow(0, start, len)?, self.y[start..start + len].to_vec()))
    }

    /// The first `n` samples (all if fewer).
    pub fn head(&self, n: usize) -> Result<Dataset> {
        let n = n.min(self.len());
        Ok(Dataset { name: self.name.clone(), x: self.x.narrow(0, 0, n)?, y: self.y[..n].to_vec(), sha256: self.sha256.clone() })
    }
}
