//! The one integration-test binary: CLI end-to-end runs and library checks on real fixtures.

mod common;
mod foundation;
mod bad_input;
mod compress;
mod distillation;
mod pruning;
mod quantization;
mod float_runtime;
mod bench;
