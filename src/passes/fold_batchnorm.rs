//! `fold_batchnorm`: a conv or linear followed by a BatchNorm that only it feeds becomes one
//! layer. The arithmetic lives in the model IR (`model::fold`) because the compiled float
//! runtime folds the same way when it loads a model; this is the pass's name for it.

pub use crate::model::fold::{fold_batchnorm, FoldReport};
