//! The blocked GEMM driver shared by the integer and the float runtime:
//! `acc[m][j] = Σ_t a[m][t] · w[j][t]` for weights packed once at load time ([`Panels`]). Rows
//! come either as a slice or built a block at a time right before they are used (conv patches:
//! the unfolded matrix is never materialised and each block is still in cache for the GEMM).
//! Per block, register tiles of up to `MR` rows run over every panel into a row buffer, and the
//! caller's epilogue turns each finished tile into output rows while they are still in cache.
//! Rows are split over rayon tasks of whole tiles when the product is large enough to pay.

use crate::parallel::PARALLEL_MIN_MACS;
use rayon::prelude::*;

/// Rows of a register tile: 6 rows × 2 panels is 12 accumulators of the 16 ymm registers.
pub const MR: usize = 6;

/// Rows built per block: a multiple of the tile height, small enough to stay in L1/L2.
const BLOCK_ROWS: usize = 8 * MR;

/// A weight matrix `[n, k]` packed for one of the runtime's register tiles.
pub trait Panels: Sync {
    /// Activation element (i16 codes, f32 values).
    type A: Copy + Default + Send + Sync;
    /// Accumulator element.
    type Acc: Copy + Default;
    /// Per-call scratch a tile may need (the VNNI kernels' byte rows).
    type Scratch: Default;
    /// Entries each activation row must provide (the depth, rounded up as the layout needs;
    /// entries past the real depth meet zero weights).
    fn row_len(&self) -> usize;
    /// Multiply-adds per row, `n·k`: what decides whether threads pay.
    fn macs_per_row(&self) -> usize;
    /// Accumulators per tile row: the columns rounded up to whole panels.
    fn acc_stride(&self) -> usize;
    /// Accumulates `rows ≤ MR` rows of `a` (at `lda`) against every panel into `buf`
    /// (`acc_stride()` entries per row).
    fn tile(&self, a: &[Self::A], lda: usize, rows: usize, scratch: &mut Self::Scratch, buf: &mut [Self::Acc]);
}

/// Where the GEMM's left-hand rows come from.
pub enum Rows<'a, A> {
    /// Row `i` is `a[i·lda..i·lda + row_len]`: values that are already rows (a linear layer, a
    /// pointwise conv).
    Slice { a: &'a [A], lda: usize },
    /// Row `i` is written by `fill(i, row)` into a `row_len`-long scratch row (entries past the
    /// real depth may hold anything): conv patches.
    Built(&'a (dyn Fn(usize, &mut [A]) + Sync)),
}

/// Computes `acc = a · wᵀ` for `m` rows and hands every tile to `epilogue(acc, stride, rows)`:
/// row `r` of the tile has its accumulators at `acc[r·stride..]` and its output at
/// `rows[r·ldo..]` (rows of `out`, `ldo` entries each).
pub fn gemm<P, T, E>(rows: &Rows<P::A>, m: usize, w: &P, out: &mut [T], ldo: usize, epilogue: &E)
where
    P: Panels,
    T: Send,
    E: Fn(&[P::Acc], usize, &mut [T]) + Sync,
{
    if let Rows::Slice { a, lda } = rows {
        assert!(*lda >= w.row_len() && (m == 0 || a.len() >= (m - 1) * lda + w.row_len()), "activation rows too short");
    }
    assert!(out.len() >= m * ldo, "output too short");
    let run = |first: usize, out: &mut [T]| block_rows(rows, first, out.len() / ldo, w, out, ldo, epilogue);
    let threads = rayon::current_num_threads();
    if threads == 1 || m * w.macs_per_row() < PARALLEL_MIN_MACS {
        run(0, &mut out[..m * ldo]);
        return;
    }
    // Tasks of whole register tiles, about four per thread so uneven cores even out.
    let per_task = (m.div_ceil(4 * threads)).div_ceil(MR) * MR;
    out[..m * ldo].par_chunks_mut(per_task * ldo).enumerate().for_each(|(i, o)| run(i * per_task, o));
}

/// Runs rows `first..first + count`: per block, the rows (built if need be), tiles of `MR` rows
/// over all panels into a row buffer, then the epilogue per tile.
fn block_rows<P, T, E>(rows: &Rows<P::A>, first: usize, count: usize, w: &P, out: &mut [T], ldo: usize, epilogue: &E)
where
    P: Panels,
    E: Fn(&[P::Acc], usize, &mut [T]),
{
    let (np, kp) = (w.acc_stride(), w.row_len());
    let mut buf = vec![P::Acc::default(); MR * np];
    let mut built = match rows {
        // Only as many rows as this call builds: a small product (batch 1) would otherwise zero a
        // whole block of long rows it never uses (10 % of the ResNet's FP32 time at batch 1).
        Rows::Built(_) => vec![P::A::default(); count.min(BLOCK_ROWS) * kp],
        Rows::Slice { .. } => vec![],
    };
    let mut scratch = P::Scratch::default();
    let mut b0 = 0;
    while b0 < count {
        let block = (count - b0).min(BLOCK_ROWS);
        let (a, lda): (&[P::A], usize) = match rows {
            Rows::Slice { a, lda } => (&a[(first + b0) * lda..], *lda),
            Rows::Built(fill) => {
                for (r, row) in built.chunks_mut(kp).take(block).enumerate() {
                    fill(first + b0 + r, row);
                }
                (&built, kp)
            }
        };
        let mut i = 0;
        while i < block {
            let tile = (block - i).min(MR);
            w.tile(&a[i * lda..], lda, tile, &mut scratch, &mut buf);
            let o = b0 + i;
            epilogue(&buf[..tile * np], np, &mut out[o * ldo..(o + tile) * ldo]);
            i += tile;
        }
        b0 += block;
    }
}
