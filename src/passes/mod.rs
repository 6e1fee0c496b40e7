//! Compression passes, one file each: `fold_batchnorm`, `ptq` (calibrate + convert to INT8),
//! `qat` (quantisation-aware training, then convert). Uses `model`, `quant`, `calibrate`,
//! `train`, `artifact`.

pub mod fold_batchnorm;
pub mod prune_channels;
pub mod ptq;
pub mod qat;
