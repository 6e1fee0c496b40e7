//! The instruction-level ceiling of the INT8 speed-up on this CPU: the register tiles of the
//! packed GEMMs (`gemm::tiles`) run alone on operands that stay in L1, 6 rows × 16 columns over
//! a depth of 256, so nothing but the tile's own instructions limits them
//! (`cargo run --release --example tile_ceiling -- [SECONDS]`). It prints each tile's
//! multiply-adds per nanosecond, measured in turns within one run (median of 7 turns), and the
//! integer tiles' ratio to the f32 FMA tile: the most an INT8 layer can gain over the FP32 one
//! when both are bound by their tiles.
//!
//! - f32 FMA: 12 `vfmadd231ps` per depth step, 96 multiply-adds.
//! - 8-bit (`vpmaddwd` over i16 pairs): 12 `vpmaddwd` + 12 `vpaddd` per depth pair, 192.
//! - 7-bit (`vpmaddubsw` over u8 quads): 12 × 3 instructions per depth quad, 384.
use std::time::Instant;

const ROWS: usize = 6;
const NV: usize = 2;
const DEPTH: usize = 256;

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            println!("this CPU has no AVX2 + FMA: no SIMD tiles to measure");
            return;
        }
        let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.3);
        let mut rates: [Vec<f64>; 3] = Default::default();
        for _ in 0..7 {
            for (kind, rate) in rates.iter_mut().enumerate() {
                rate.push(x86::macs_per_ns(kind, seconds));
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [f, p, q] = rates.map(|mut v| med(&mut v));
        println!("f32 FMA tile:              {f:6.1} multiply-adds/ns");
        println!("8-bit vpmaddwd pair tile:  {p:6.1} multiply-adds/ns  ({:.2}x f32)", p / f);
        println!("7-bit vpmaddubsw quad tile: {q:5.1} multiply-adds/ns  ({:.2}x f32)", q / f);
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("the SIMD tiles are x86-64 only");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use wick::gemm::tiles::{f32_fma, pairs_avx2, quads_avx2_u7};

    /// Multiply-adds per nanosecond of tile `kind` (0 f32, 1 pairs, 2 u7 quads) run back to back
    /// for about `seconds`: `ROWS · 8·NV · DEPTH` per call.
    pub fn macs_per_ns(kind: usize, seconds: f64) -> f64 {
        let macs = (ROWS * 8 * NV * DEPTH) as f64;
        let mut calls = 0u64;
        let t = Instant::now();
        let mut sink = 0i64;
        while t.elapsed().as_secs_f64() < seconds {
            for _ in 0..1000 {
                sink = sink.wrapping_add(one_call(kind));
            }
            calls += 1000;
        }
        std::hint::black_box(sink);
        calls as f64 * macs / t.elapsed().as_nanos() as f64
    }

    /// One tile call on fixed operands; returns an accumulator so the call is not optimised out.
    fn one_call(kind: usize) -> i64 {
        thread_local! {
            static F: (Vec<f32>, Vec<f32>) = (vec![0.5; ROWS * DEPTH], vec![0.25; NV * 8 * DEPTH]);
            static P: (Vec<i16>, Vec<i16>) = (vec![3; ROWS * DEPTH], vec![-2; NV * 8 * DEPTH]);
            static Q: (Vec<u8>, Vec<i8>) = (vec![3; ROWS * DEPTH], vec![-2; NV * 8 * DEPTH]);
        }
        let np = NV * 8;
        // SAFETY: the CPU has AVX2 and FMA (checked in `main`); each of the `ROWS` row pointers
        // covers one segment of `DEPTH` values, the weights hold `NV` panels of `DEPTH` values
        // at `8·DEPTH` each, and `dst` holds `ROWS` rows of `np` accumulators (the contract in
        // `gemm::tiles`).
        unsafe {
            match kind {
                0 => F.with(|(a, b)| {
                    let rows: [*const f32; ROWS] = std::array::from_fn(|r| a[r * DEPTH..].as_ptr());
                    let mut dst = [0f32; ROWS * 16];
                    f32_fma::dispatch::<NV>(rows.as_ptr(), 1, DEPTH, ROWS, b.as_ptr(), 8 * DEPTH, dst.as_mut_ptr(), np);
                    dst[0] as i64
                }),
                1 => P.with(|(a, b)| {
                    let rows: [*const i16; ROWS] = std::array::from_fn(|r| a[r * DEPTH..].as_ptr());
                    let mut dst = [0i32; ROWS * 16];
                    pairs_avx2::dispatch::<NV>(rows.as_ptr(), 1, DEPTH / 2, ROWS, b.as_ptr(), 8 * DEPTH, dst.as_mut_ptr(), np);
                    dst[0] as i64
                }),
                _ => Q.with(|(a, b)| {
                    let rows: [*const u8; ROWS] = std::array::from_fn(|r| a[r * DEPTH..].as_ptr());
                    let mut dst = [0i32; ROWS * 16];
                    quads_avx2_u7::dispatch::<NV>(rows.as_ptr(), 1, DEPTH / 4, ROWS, b.as_ptr(), 8 * DEPTH, dst.as_mut_ptr(), np);
                    dst[0] as i64
                }),
            }
        }
    }
}
