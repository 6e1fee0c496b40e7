#![no_main]
//! Fuzz target: see `fuzz/parsers.rs`.

#[allow(dead_code)]
#[path = "../parsers.rs"]
mod parsers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| parsers::onnx(data));
