//! The part of a compiled layer's GEMM epilogue that does not depend on the layer's kind:
//! walking a register tile's rows, and compiling the layer's per-row arithmetic for 8-wide
//! vectors where the CPU has AVX2 (the arithmetic is identical either way).

use std::mem::MaybeUninit;

/// What a layer writes for one output row: `out[j]` from the accumulator `acc[j]` of channel
/// `c0 + j`, for every `j < acc.len()` (f32 values, or the next layer's codes when the
/// requantisation is fused in).
pub trait FinishRow<A, O> {
    /// Implementations are `#[inline(always)]`, so that [`finish_tile`]'s AVX2 copy vectorises
    /// them.
    fn row(&self, acc: &[A], c0: usize, out: &mut [MaybeUninit<O>]);
}

/// For each row `r` of a tile (`out.len() / ldo` rows): `layer.row` on `acc[r·stride..][..n]`
/// into `out[r·ldo + c0..][..n]`, the columns of channels `c0..c0 + n`.
#[inline]
pub fn finish_tile<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
    #[inline(always)]
    fn rows<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
        for (r, o) in out.chunks_mut(ldo).enumerate() {
            layer.row(&acc[r * stride..r * stride + n], c0, &mut o[c0..c0 + n]);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn wide<A, O, F: FinishRow<A, O>>(layer: &F, acc: &[A], stride: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<O>]) {
                rows(layer, acc, stride, ldo, c0, n, out)
            }
            // SAFETY: the CPU has AVX2.
            unsafe { wide(layer, acc, stride, ldo, c0, n, out) };
            return;
        }
    }
    rows(layer, acc, stride, ldo, c0, n, out)
}
