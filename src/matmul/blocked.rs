//! The blocked GEMM driver shared by the integer and the float runtime:
//! `acc[m][j] = Σ_t a[m][t] · w[j][t]` for weights packed once at load time ([`Panels`]). Rows
//! come as a slice, gathered segment by segment from where they lie (conv patches, one segment
//! per kernel tap: nothing is copied), or built a block at a time right before they are used
//! (conv patches whose taps are too short to gather). The unfolded matrix is never
//! materialised.
//! Per block, tiles of up to `Panels::tile_rows` rows run over every panel into a row buffer, and the
//! caller's epilogue turns each finished tile into output rows while they are still in cache.
//! Rows are split over rayon tasks of whole tiles when the product is large enough to pay, and
//! a small product over one part of panels or rows per thread.

use crate::parallel::{may_split, PARALLEL_MIN_MACS, SPLIT_MIN_MACS};
use rayon::prelude::*;

/// Rows of a register tile: 6 rows × 2 panels is 12 accumulators of the 16 ymm registers.
pub const MR: usize = 6;

/// Rows of a zmm register tile: 14 rows × 2 panels is 28 accumulators of the 32 zmm registers,
/// which reads each weight vector once per 14 rows instead of 6.
pub const MR_ZMM: usize = 14;

/// Rows built per block (rounded up to whole tiles): small enough to stay in L1/L2.
const BLOCK_ROWS: usize = 8 * MR;

/// Packed weights a block of rows runs over before the next part of the columns: half the
/// L2 cache, so that one part stays there while every tile of the block reads it, next to the
/// block's rows and accumulators. Weights that fit run whole.
fn panel_chunk_bytes() -> usize {
    l2_bytes() / 2
}

/// The L2 cache's size as Linux reports it for CPU 0, else 1 MiB (the least of the AVX-512
/// Xeons').
pub fn l2_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let size = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index2/size").ok();
        let kib = size.as_deref().map(str::trim).and_then(|s| s.strip_suffix('K')).and_then(|s| s.parse::<usize>().ok());
        kib.map_or(1 << 20, |k| k << 10)
    })
}

/// A weight matrix `[n, k]` packed for one of the runtime's register tiles.
pub trait Panels: Sync {
    /// Activation element (i16 codes, f32 values).
    type A: Copy + Default + Send + Sync;
    /// Accumulator element.
    type Acc: Copy + Default + Send;
    /// Per-call scratch a tile may need (the VNNI kernels' byte rows).
    type Scratch: Default;
    /// Activations the tile reads per depth step (1 for f32, a pair, a quad): every row
    /// segment holds a whole number of them.
    const GROUP: usize;
    /// Entries each activation row must provide (the depth, rounded up as the layout needs;
    /// entries past the real depth meet zero weights).
    fn row_len(&self) -> usize;
    /// Multiply-adds per row, `n·k`: what decides whether threads pay.
    fn macs_per_row(&self) -> usize;
    /// Accumulators per tile row: the columns rounded up to whole panels.
    fn acc_stride(&self) -> usize;
    /// The most rows one [`Panels::tile`] call takes: `MR` for the register tiles, more for a
    /// matrix unit whose tiles are taller.
    fn tile_rows(&self) -> usize {
        MR
    }
    /// Packed panels, and the bytes of one (what decides how many a block of rows runs over at
    /// a time).
    fn panels(&self) -> usize;
    fn panel_bytes(&self) -> usize;
    /// Accumulates the rows of `a` against panels `panels` into `buf` (`acc_stride()` entries
    /// per row; panel `p`'s columns at `p·(acc_stride() / panels())`).
    fn tile(&self, a: &TileRows<Self::A>, scratch: &mut Self::Scratch, buf: &mut [Self::Acc], panels: std::ops::Range<usize>);
}

/// The activation rows of one register tile as the SIMD tiles read them (`tiles.rs`):
/// `rows ≤ Panels::tile_rows()` rows, each the concatenation of `segs` segments of `seg_len` entries, segment
/// `s` of row `r` starting at `ptrs[r·segs + s]`. Only the driver below makes one, from slices
/// it has checked to hold `seg_len` entries or from a [`Gather`] (whose contract says the
/// same), so every pointer is valid for that many reads while the value lives.
pub struct TileRows<'a, A> {
    ptrs: &'a [*const A],
    rows: usize,
    seg_len: usize,
    segs: usize,
}

impl<A: Copy> TileRows<'_, A> {
    /// Rows in the tile.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Entries per segment.
    pub fn seg_len(&self) -> usize {
        self.seg_len
    }
    /// Segments per row.
    pub fn segs(&self) -> usize {
        self.segs
    }
    /// The segment starts, `rows·segs` of them, for a SIMD tile (see the type's docs).
    pub fn ptrs(&self) -> *const *const A {
        self.ptrs.as_ptr()
    }
    /// Rows `first..first + rows` of the tile (in range) as a tile of their own.
    pub fn part(&self, first: usize, rows: usize) -> TileRows<'_, A> {
        assert!(first + rows <= self.rows, "rows {first}+{rows} of a tile of {}", self.rows);
        TileRows { ptrs: &self.ptrs[first * self.segs..(first + rows) * self.segs], rows, seg_len: self.seg_len, segs: self.segs }
    }
    /// Entry `t` of row `r` (`r < rows`, `t < segs·seg_len`): for plain-code tiles.
    pub fn at(&self, r: usize, t: usize) -> A {
        assert!(r < self.rows && t < self.segs * self.seg_len, "entry ({r}, {t}) outside the tile");
        // SAFETY: the pointer of segment `t / seg_len` of row `r` is valid for `seg_len` reads.
        unsafe { *self.ptrs[r * self.segs + t / self.seg_len].add(t % self.seg_len) }
    }
}

/// Rows read where they lie, segment by segment ([`Rows::Gathered`]): conv patches, one
/// segment per kernel tap, read straight from the input through an indirection table (as
/// XNNPACK does), so nothing is copied.
///
/// # Safety
/// For rows `first..first + rows` (at most a tile's) below the row count the GEMM is given,
/// `starts(first, rows, out)` writes `segs()` pointers per row, segment `s` of row `first + r`
/// to `out[r·segs() + s]`, each valid for `seg()` reads for as long as `self` is borrowed.
pub unsafe trait Gather<A>: Sync {
    /// Entries per segment: a whole number of the tile's groups; `seg()·segs()` is the row length.
    fn seg(&self) -> usize;
    /// Segments per row.
    fn segs(&self) -> usize;
    /// Writes the segment starts of a tile's rows (see the trait's safety contract): one call
    /// per tile, so that a row's position is found once and then stepped.
    fn starts(&self, first: usize, rows: usize, out: &mut [*const A]);
}

/// Where the GEMM's left-hand rows come from.
pub enum Rows<'a, A> {
    /// Row `i` is `a[i·lda..i·lda + row_len]`: values that are already rows (a linear layer, a
    /// pointwise conv).
    Slice { a: &'a [A], lda: usize },
    /// Row `i` is written by `fill(i, row)` into a `row_len`-long scratch row (entries past the
    /// real depth may hold anything): conv patches whose taps are too short to gather.
    Built(&'a (dyn Fn(usize, &mut [A]) + Sync)),
    /// Row `i` is read where it lies, segment by segment ([`Gather`]).
    Gathered(&'a dyn Gather<A>),
}

/// Computes `acc = a · wᵀ` for `m` rows and hands every tile to
/// `epilogue(acc, stride, first, rows)`: row `r` of the tile (row `first + r` of the product)
/// has its accumulators at `acc[r·stride..]` and its output at `rows[r·ldo..]` (rows of `out`,
/// `ldo` entries each).
pub fn gemm<P, T, E>(rows: &Rows<P::A>, m: usize, w: &P, out: &mut [T], ldo: usize, epilogue: &E)
where
    P: Panels,
    T: Send,
    E: Fn(&[P::Acc], usize, usize, &mut [T]) + Sync,
{
    gemm_in_parts(rows, m, w, out, ldo, epilogue, panel_chunk_bytes())
}

/// [`gemm`] with weights run in parts of at most `part_bytes` (at least one panel each): for
/// tests, which run the parts on any machine.
pub fn gemm_in_parts<P, T, E>(rows: &Rows<P::A>, m: usize, w: &P, out: &mut [T], ldo: usize, epilogue: &E, part_bytes: usize)
where
    P: Panels,
    T: Send,
    E: Fn(&[P::Acc], usize, usize, &mut [T]) + Sync,
{
    match rows {
        Rows::Slice { a, lda } => assert!(*lda >= w.row_len() && (m == 0 || a.len() >= (m - 1) * lda + w.row_len()), "activation rows too short"),
        Rows::Gathered(g) => assert!(g.seg() * g.segs() == w.row_len() && g.seg() % P::GROUP == 0 && g.seg() > 0, "segments of {} × {} for rows of {}", g.seg(), g.segs(), w.row_len()),
        Rows::Built(_) => {}
    }
    assert!(out.len() >= m * ldo, "output too short");
    let all = 0..w.panels();
    let run = |first: usize, out: &mut [T]| block_rows(rows, first, out.len() / ldo, w, all.clone(), out, ldo, epilogue, part_bytes);
    let (macs, threads) = (m * w.macs_per_row(), rayon::current_num_threads());
    // Rows per task. Not inside a part of a job already split over the threads (a batch part of
    // `Plan::predict`). A large product: tasks of whole register tiles, about four per thread
    // so uneven cores even out. A small one (a batch of one's layer): one part per thread, of
    // at least two panels each (a one-panel tile reads an activation per multiply-add), else
    // of rows; if no other thread takes its part in time, rayon's join runs it here.
    let per_task = match may_split() {
        true if macs >= PARALLEL_MIN_MACS => (m.div_ceil(4 * threads)).div_ceil(w.tile_rows()) * w.tile_rows(),
        true if macs >= SPLIT_MIN_MACS * P::GROUP && w.panels() >= 2 * threads => return columns_in_parts(rows, m, w, out, ldo, epilogue, part_bytes),
        true if macs >= SPLIT_MIN_MACS * P::GROUP && m >= 2 * threads => m.div_ceil(threads),
        _ => return run(0, &mut out[..m * ldo]),
    };
    out[..m * ldo].par_chunks_mut(per_task * ldo).enumerate().for_each(|(i, o)| run(i * per_task, o));
}

/// [`gemm`] for a small product whose rows are too few to share out (a batch of one): the
/// panels are cut into one contiguous part per thread, each part runs over every row into an
/// accumulator matrix of its own, the parts' columns are gathered into the first, and the
/// epilogue runs on the calling thread a tile at a time. Each accumulator is summed as in one
/// pass, so the output is bit-identical to it.
fn columns_in_parts<P, T, E>(rows: &Rows<P::A>, m: usize, w: &P, out: &mut [T], ldo: usize, epilogue: &E, part_bytes: usize)
where
    P: Panels,
    T: Send,
    E: Fn(&[P::Acc], usize, usize, &mut [T]) + Sync,
{
    let (np, panels, tr) = (w.acc_stride(), w.panels(), w.tile_rows());
    let parts = rayon::current_num_threads().min(panels);
    let width = np / panels;
    let copy = |acc: &[P::Acc], stride: usize, _: usize, o: &mut [P::Acc]| {
        for (r, row) in o.chunks_mut(np).enumerate() {
            row.copy_from_slice(&acc[r * stride..r * stride + np]);
        }
    };
    // Part `p`'s panels.
    let part = |p: usize| p * panels / parts..(p + 1) * panels / parts;
    let mut accs: Vec<Vec<P::Acc>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut acc = vec![P::Acc::default(); m * np];
            block_rows(rows, 0, m, w, part(p), &mut acc, np, &copy, part_bytes);
            acc
        })
        .collect();
    let (first, rest) = accs.split_first_mut().expect("at least one part");
    for (p, acc) in rest.iter().enumerate() {
        let cols = part(p + 1).start * width..part(p + 1).end * width;
        for (to, from) in first.chunks_mut(np).zip(acc.chunks(np)) {
            to[cols.clone()].copy_from_slice(&from[cols.clone()]);
        }
    }
    for r0 in (0..m).step_by(tr) {
        let tile = (m - r0).min(tr);
        epilogue(&first[r0 * np..(r0 + tile) * np], np, r0, &mut out[r0 * ldo..(r0 + tile) * ldo]);
    }
}

/// Runs rows `first..first + count`: per block, the rows (built if need be), then tiles of
/// `tile_rows()` rows over all panels into a row buffer and the epilogue per tile. Weights
/// larger than `part_bytes` ([`panel_chunk_bytes`]) run in parts of that size instead, each over every tile of
/// the block (which then keeps the whole block's accumulators), so that a part is read from
/// L2 rather than memory by every tile; the epilogues follow the last part.
#[allow(clippy::too_many_arguments)] // the rows, the weights, the output and the part size
fn block_rows<P, T, E>(rows: &Rows<P::A>, first: usize, count: usize, w: &P, panels: std::ops::Range<usize>, out: &mut [T], ldo: usize, epilogue: &E, part_bytes: usize)
where
    P: Panels,
    E: Fn(&[P::Acc], usize, usize, &mut [T]),
{
    let (np, kp, tr) = (w.acc_stride(), w.row_len(), w.tile_rows());
    let block_rows = BLOCK_ROWS.div_ceil(tr) * tr;
    let chunk = (part_bytes / w.panel_bytes().max(1)).clamp(1, panels.len().max(1));
    let whole = chunk >= panels.len();
    let mut buf = vec![P::Acc::default(); if whole { tr } else { block_rows }.min(count) * np];
    let mut built = match rows {
        // Only as many rows as this call builds: a small product (batch 1) would otherwise zero a
        // whole block of long rows it never uses.
        Rows::Built(_) => vec![P::A::default(); count.min(block_rows) * kp],
        _ => vec![],
    };
    let segs = match rows {
        Rows::Gathered(g) => g.segs(),
        _ => 1,
    };
    let mut ptrs = vec![std::ptr::null(); segs * tr];
    let mut scratch = P::Scratch::default();
    let mut b0 = 0;
    while b0 < count {
        let block = (count - b0).min(block_rows);
        if let Rows::Built(fill) = rows {
            for (r, row) in built.chunks_mut(kp).take(block).enumerate() {
                fill(first + b0 + r, row);
            }
        }
        for c0 in panels.clone().step_by(chunk) {
            let part = c0..(c0 + chunk).min(panels.end);
            let mut i = 0;
            while i < block {
                let tile = (block - i).min(tr);
                let row0 = first + b0 + i;
                let seg_len = match rows {
                    Rows::Slice { a, lda } => {
                        for r in 0..tile {
                            ptrs[r] = a[(row0 + r) * lda..][..kp].as_ptr();
                        }
                        kp
                    }
                    Rows::Built(_) => {
                        for r in 0..tile {
                            ptrs[r] = built[(i + r) * kp..][..kp].as_ptr();
                        }
                        kp
                    }
                    Rows::Gathered(g) => {
                        g.starts(row0, tile, &mut ptrs);
                        g.seg()
                    }
                };
                let acc = if whole { &mut buf[..] } else { &mut buf[i * np..] };
                w.tile(&TileRows { ptrs: &ptrs, rows: tile, seg_len, segs }, &mut scratch, acc, part.clone());
                if whole {
                    let o = b0 + i;
                    epilogue(&buf[..tile * np], np, row0, &mut out[o * ldo..(o + tile) * ldo]);
                }
                i += tile;
            }
        }
        if !whole {
            for i in (0..block).step_by(tr) {
                let (tile, o) = ((block - i).min(tr), b0 + i);
                epilogue(&buf[i * np..(i + tile) * np], np, first + o, &mut out[o * ldo..(o + tile) * ldo]);
            }
        }
        b0 += block;
    }
}
