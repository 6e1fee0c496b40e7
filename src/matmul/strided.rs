//! Products of f32 matrices given by strides, the GEMMs of training (conv and linear, forward
//! and backward): `C[i][j] = Σ_t A[i][t]·B[t][j]`, with `A[i][t] = a[i·rs + t·cs]` and
//! `B[t][j]` likewise. The results have exactly the bits of the `gemm` crate's FMA kernel,
//! which computed them before and still does where this module's tile cannot:
//!
//! - in the crate's blocked path every output is a chain of fused multiply-adds in depth order
//!   starting from +0, over depth blocks of `kc` steps whose chains are added in block order
//!   (`dst = dst + chain`, one rounding); `kc` is `min(k, 512)` when both sides are at most 64,
//!   else the crate's cache-derived `kernel_params`;
//! - where the CPU has AVX-512, the same chains run on the float runtime's zmm tile
//!   (`tiles::f32_avx512`: 16 lanes where the crate's FMA kernel has 8, and 14 rows of
//!   accumulators), over the same depth blocks. The crate's own AVX-512 kernels (its `x86-v4`
//!   feature) have other microkernel sizes, hence other depth blocks, and would change
//!   training's results on AVX-512 CPUs;
//! - shapes the crate sends to other kernels (outputs of at most 256 entries, a depth of at
//!   most 2, a single row or column: dot-product and matrix-vector kernels with other
//!   summation orders) run on the crate.

use super::blocked::{gemm as blocked_gemm, Rows};
use super::f32::PackedF32;
use super::isa::F32Isa;
use super::transpose::columns_to_rows;
use crate::parallel::{may_split, PARALLEL_MIN_MACS};
use std::mem::MaybeUninit;

/// A matrix read through strides: entry `(r, c)` is `data[r·rs + c·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Strided<'a> {
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Strided<'a> {
        Strided { data, rs, cs }
    }

    /// The transpose: the same values with the strides swapped.
    pub fn t(self) -> Strided<'a> {
        Strided { data: self.data, rs: self.cs, cs: self.rs }
    }

    /// Elements a `rows × cols` view spans from the start.
    fn reach(&self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.rs + (cols - 1) * self.cs + 1
    }
}

/// How the product is laid out in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `C` row-major: `out[i·n + j]`.
    RowMajor,
    /// `C` column-major (`Cᵀ` row-major): `out[j·m + i]`.
    ColMajor,
}

/// The gemm crate's FMA f32 microkernel: 2 vectors of 8 rows by 6 columns (`gemm_f32`'s
/// `fma::f32::{MR_DIV_N, NR}`), which its depth blocking is derived from.
const CRATE_MR: usize = 16;
const CRATE_NR: usize = 6;

/// Depth steps per block in the crate's blocked path for an `m × n` output (either
/// orientation: the rule is symmetric in `m` and `n`, and `kernel_params`' depth depends only
/// on `k` and the L1 cache's geometry, so a depth above 512 may be split elsewhere on another
/// CPU, by the crate as by this module).
fn crate_depth_block(m: usize, n: usize, k: usize) -> usize {
    if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(m, n, k, CRATE_MR, CRATE_NR, size_of::<f32>()).kc.max(1)
    }
}

/// Whether the zmm tile runs products: the CPU has AVX-512 and `WICK_F32_ISA` does not cap it.
fn tile_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| F32Isa::detect() == F32Isa::Avx512)
}

/// Whether an `m × n` product of depth `k` takes the crate's blocked path (see the module docs).
fn blocked_path(m: usize, n: usize, k: usize) -> bool {
    m > 1 && n > 1 && m * n > 256 && k > 2
}

/// `C = A·B` (`A` is `m × k`, `B` is `k × n`) in `order`, in `out`'s allocation (its contents
/// are dropped; it grows if too small).
pub fn product_into(mut out: Vec<f32>, m: usize, n: usize, k: usize, a: Strided, b: Strided, order: Order) -> Vec<f32> {
    out.clear();
    if m == 0 || n == 0 || k == 0 {
        out.resize(m * n, 0.0);
        return out;
    }
    assert!(a.data.len() >= a.reach(m, k) && b.data.len() >= b.reach(k, n), "operands shorter than their strides reach");
    if tile_available() && blocked_path(m, n, k) {
        match order {
            Order::RowMajor => tile_product(&mut out, m, n, k, a, b),
            Order::ColMajor => tile_product(&mut out, n, m, k, b.t(), a.t()),
        }
        return out;
    }
    out.reserve(m * n);
    // Small products stay on the calling thread (the bound the packed GEMMs use too).
    let par = match rayon::current_num_threads() {
        t if m * n * k >= PARALLEL_MIN_MACS && may_split() => gemm::Parallelism::Rayon(t),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the assertion above keeps every index the strides reach inside the slices; out
    // is an empty allocation of at least m·n elements, which the GEMM (read_dst = false)
    // writes, every one of them, without reading.
    unsafe {
        crate_gemm(out.as_mut_ptr(), m, n, k, a, b, order, par);
        out.set_len(m * n);
    }
    out
}

/// The `gemm` crate's `C = A·B` into `dst` in `order` (overwritten, not read).
///
/// # Safety
/// `dst` is valid for `m·n` writes and the operands hold what their strides reach.
#[allow(clippy::too_many_arguments)]
unsafe fn crate_gemm(dst: *mut f32, m: usize, n: usize, k: usize, a: Strided, b: Strided, order: Order, par: gemm::Parallelism) {
    let (dst_rs, dst_cs) = match order {
        Order::RowMajor => (n, 1),
        Order::ColMajor => (1, m),
    };
    gemm::gemm(m, n, k, dst, dst_cs as isize, dst_rs as isize, false, a.data.as_ptr(), a.cs as isize, a.rs as isize, b.data.as_ptr(), b.cs as isize, b.rs as isize, 0.0, 1.0, false, false, false, par);
}

/// A new `C = A·B` in `order` (see [`product_into`]).
pub fn product(m: usize, n: usize, k: usize, a: Strided, b: Strided, order: Order) -> Vec<f32> {
    product_into(Vec::new(), m, n, k, a, b, order)
}

/// Row-major `C` into `out` (cleared) on the zmm tile, depth block by depth block: `B`'s block
/// packed into panels, `A`'s rows read where they lie when their depth steps are adjacent (else
/// copied so), the first block's chains stored and every later block's added.
fn tile_product(out: &mut Vec<f32>, m: usize, n: usize, k: usize, a: Strided, b: Strided) {
    let kc = crate_depth_block(m, n, k);
    out.clear();
    out.reserve(m * n);
    let (mut panels_buf, mut copied) = SCRATCH.take();
    let mut t0 = 0;
    while t0 < k {
        let kb = kc.min(k - t0);
        let panels = PackedF32::pack_strided_in(panels_buf, &b.data[t0 * b.rs..], n, kb, b.cs, b.rs, F32Isa::Avx512);
        let rows = if a.cs == 1 && a.rs >= kb {
            Rows::Slice { a: &a.data[t0..], lda: a.rs }
        } else {
            copied.clear();
            copied.reserve(m * kb);
            let dst = &mut copied.spare_capacity_mut()[..m * kb];
            if a.rs == 1 {
                columns_to_rows(&a.data[t0 * a.cs..], m, kb, a.cs, dst, kb);
            } else {
                for i in 0..m {
                    for (t, d) in dst[i * kb..][..kb].iter_mut().enumerate() {
                        d.write(a.data[i * a.rs + (t0 + t) * a.cs]);
                    }
                }
            }
            // SAFETY: the loops wrote all m·kb entries.
            unsafe { copied.set_len(m * kb) };
            Rows::Slice { a: &copied, lda: kb }
        };
        if t0 == 0 {
            let store = |acc: &[f32], stride: usize, _: usize, o: &mut [MaybeUninit<f32>]| {
                for (r, row) in o.chunks_mut(n).enumerate() {
                    row.write_copy_of_slice(&acc[r * stride..][..n]);
                }
            };
            blocked_gemm(&rows, m, &panels, &mut out.spare_capacity_mut()[..m * n], n, &store);
            // SAFETY: the driver hands every row of the m rows to the epilogue, which writes all
            // n entries of each.
            unsafe { out.set_len(m * n) };
        } else {
            let add = |acc: &[f32], stride: usize, _: usize, o: &mut [f32]| {
                for (r, row) in o.chunks_mut(n).enumerate() {
                    row.iter_mut().zip(&acc[r * stride..][..n]).for_each(|(o, a)| *o += a);
                }
            };
            blocked_gemm(&rows, m, &panels, out, n, &add);
        }
        panels_buf = panels.into_buffer();
        t0 += kb;
    }
    SCRATCH.set((panels_buf, copied));
}

thread_local! {
    /// Each thread's packed panels and copied rows, kept between products: training asks for
    /// thousands of products an epoch, and fresh allocations of their size come back from the
    /// kernel as newly zeroed pages.
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with many significant bits and both signs, so that a different summation order
    /// shows in the last bits.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104_729) % 10_007) as f32 / 3_001.7 - 1.6).collect()
    }

    /// The crate's product with the same operands: row-major or column-major output.
    fn crate_product(m: usize, n: usize, k: usize, a: Strided, b: Strided, order: Order) -> Vec<f32> {
        let mut out = vec![f32::NAN; m * n];
        // SAFETY: the test's operands hold what their strides reach; out holds m·n entries.
        unsafe { crate_gemm(out.as_mut_ptr(), m, n, k, a, b, order, gemm::Parallelism::None) };
        out
    }

    /// The products training asks for (conv forward, weight and patch gradients; linear
    /// forward, input and weight gradients), at shapes on both sides of the crate's path
    /// choices and depth blocks (k > 512 with small and large outputs), give the crate's bits
    /// in either order; on a CPU without AVX-512 this checks the crate against itself.
    #[test]
    fn products_have_the_crate_bits() {
        // (m, n, k, a row stride, a column stride, b row stride, b column stride): `0` in a
        // stride stands for "the other dimension" (filled in below).
        let shapes = [(512, 32, 288), (300, 70, 700), (40, 50, 1100), (64, 128, 1152), (9, 40, 3), (12, 20, 30), (5, 1, 40), (100, 100, 2), (129, 17, 513)];
        for (m, n, k) in shapes {
            let a_data = values(m * k, 1);
            let b_data = values(k * n, 2);
            let a_orders = [Strided::new(&a_data, k, 1), Strided::new(&a_data, 1, m)];
            let b_orders = [Strided::new(&b_data, n, 1), Strided::new(&b_data, 1, k)];
            for a in a_orders {
                for b in b_orders {
                    for order in [Order::RowMajor, Order::ColMajor] {
                        let want = crate_product(m, n, k, a, b, Order::RowMajor);
                        let got = product(m, n, k, a, b, order);
                        let got_rows: Vec<f32> = match order {
                            Order::RowMajor => got,
                            Order::ColMajor => (0..m * n).map(|e| got[(e % n) * m + e / n]).collect(),
                        };
                        let same = want.iter().zip(&got_rows).all(|(w, g)| w.to_bits() == g.to_bits());
                        assert!(same, "m={m} n={n} k={k} a=({}, {}) b=({}, {}) {order:?}", a.rs, a.cs, b.rs, b.cs);
                        if order == Order::ColMajor {
                            // The crate's own column-major output agrees as well (what the
                            // fallback computes).
                            let cols = crate_product(m, n, k, a, b, Order::ColMajor);
                            assert!(cols.iter().zip(&product(m, n, k, a, b, Order::ColMajor)).all(|(w, g)| w.to_bits() == g.to_bits()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_products_are_zeros() {
        let a = [1.0f32; 6];
        assert_eq!(product(2, 3, 0, Strided::new(&a, 0, 1), Strided::new(&a, 3, 1), Order::RowMajor), vec![0.0; 6]);
        assert!(product(0, 3, 2, Strided::new(&a, 2, 1), Strided::new(&a, 3, 1), Order::ColMajor).is_empty());
    }
}
