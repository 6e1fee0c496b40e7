//! The one integration-test binary: CLI end-to-end runs and library checks on real fixtures.

mod arithmetic;
mod axis_strides;
mod bad_input;
mod bench;
mod common;
mod compress;
mod distillation;
mod float_runtime;
mod foundation;
mod fuzz_regressions;
mod gradients;
mod interrupts;
mod mnist_example;
mod mobile_blocks;
mod narrow;
mod norms;
mod onnx;
mod padding;
mod pruning;
mod quantization;
mod recipes;
mod recurrent;
mod token_models;
mod transformer;
mod vision_transformer;
