//! The packed f32 GEMM of the compiled float runtime: `acc[m][j] = Σ_t a[m][t] · w[j][t]`,
//! summed in depth order with fused multiply-adds. Weights are packed once at load time (and
//! training's operands once per product, `strided.rs`) into panels of one vector of output
//! columns (`[j/P][t][j%P]`, `P` = 16 with AVX-512, else 8), so each depth step is one weight
//! load per panel and one broadcast activation per row; a tile of 6 rows × 2 panels (14 with
//! AVX-512's 32 registers) keeps 12 (28) accumulators over the whole depth (`tiles::f32_avx512`,
//! `tiles::f32_fma`; the same bits either way). Without AVX2+FMA a plain loop computes the same
//! sums (rounded after each multiply). The choice: `isa::F32Isa`. Blocking and threads:
//! `blocked.rs`.

use super::blocked::{Panels, TileRows};
use super::isa::F32Isa;
use super::pack_panels;

/// Weights `[n, k]` (f32) packed for [`crate::matmul::blocked::gemm`].
#[derive(Debug, Clone)]
pub struct PackedF32 {
    /// Output columns.
    pub n: usize,
    /// Depth.
    pub k: usize,
    /// Panels of `isa.panel()` columns, each `k` steps of that many values; columns past `n`
    /// hold zeros.
    panels: Vec<f32>,
    /// The tile it runs.
    isa: F32Isa,
}

impl PackedF32 {
    /// Packs row-major `w[j·k + t]`.
    pub fn pack(w: &[f32], n: usize, k: usize) -> PackedF32 {
        PackedF32::pack_for(w, n, k, F32Isa::detect())
    }

    /// Packs for a given tile (at most what the CPU has: to test the tiles against each other).
    pub fn pack_for(w: &[f32], n: usize, k: usize, isa: F32Isa) -> PackedF32 {
        assert_eq!(w.len(), n * k, "weight length");
        PackedF32 { n, k, panels: pack_panels(w, n, k, 1, isa.panel(), |v| v), isa }
    }

    /// Packs `w[j][t] = src[j·js + t·ts]` (`n × k`), a matrix read through strides, into
    /// `panels`' allocation (its contents are dropped; it grows if too small;
    /// [`PackedF32::into_buffer`] gives it back): training's operands, once per product
    /// (`strided.rs`). Where the columns are adjacent (`js = 1`) a panel's depth step is one
    /// contiguous copy; where each column's depth steps are (`ts = 1`) the panel is a transpose
    /// of `panel` columns (`transpose.rs`).
    #[allow(clippy::too_many_arguments)]
    pub fn pack_strided_in(mut panels: Vec<f32>, src: &[f32], n: usize, k: usize, js: usize, ts: usize, isa: F32Isa) -> PackedF32 {
        assert!(n > 0 && k > 0 && src.len() > (n - 1) * js + (k - 1) * ts, "strided weights too short");
        let panel = isa.panel();
        let len = n.div_ceil(panel) * k * panel;
        panels.clear();
        panels.reserve(len);
        for (p, dst) in panels.spare_capacity_mut()[..len].chunks_mut(k * panel).enumerate() {
            let (j0, cols) = (p * panel, panel.min(n - p * panel));
            if js != 1 && ts == 1 {
                // Columns that are rows of the source: a transpose into the panel.
                super::transpose::columns_to_rows(&src[j0 * js..], k, cols, js, dst, panel);
            } else {
                for (t, step) in dst.chunks_mut(panel).enumerate() {
                    let at = j0 * js + t * ts;
                    if js == 1 && cols == 16 {
                        // A whole zmm panel: a fixed-size copy (one vector move, not a call).
                        let run: [f32; 16] = src[at..at + 16].try_into().expect("16 entries");
                        assert_eq!(step.len(), 16);
                        // SAFETY: `step` holds 16 entries (asserted), which the array fills.
                        unsafe { std::ptr::write_unaligned(step.as_mut_ptr().cast::<[f32; 16]>(), run) };
                    } else if js == 1 {
                        step[..cols].write_copy_of_slice(&src[at..at + cols]);
                    } else {
                        step[..cols].iter_mut().enumerate().for_each(|(c, d)| {
                            d.write(src[at + c * js]);
                        });
                    }
                }
            }
            // The last panel's columns past n.
            if cols < panel {
                for step in dst.chunks_mut(panel) {
                    step[cols..].iter_mut().for_each(|d| {
                        d.write(0.0);
                    });
                }
            }
        }
        // SAFETY: every step of every panel was written, its columns past n with zeros.
        unsafe { panels.set_len(len) };
        PackedF32 { n, k, panels, isa }
    }

    /// The panels' allocation, for the next [`PackedF32::pack_strided_in`].
    pub fn into_buffer(self) -> Vec<f32> {
        self.panels
    }
}

impl Panels for PackedF32 {
    type A = f32;
    type Acc = f32;
    type Scratch = ();
    const GROUP: usize = 1;

    fn row_len(&self) -> usize {
        self.k
    }

    fn macs_per_row(&self) -> usize {
        self.n * self.k
    }

    fn acc_stride(&self) -> usize {
        self.panels() * self.isa.panel()
    }

    fn tile_rows(&self) -> usize {
        if self.isa == F32Isa::Avx512 {
            super::blocked::MR_ZMM
        } else {
            super::blocked::MR
        }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(self.isa.panel())
    }

    fn panel_bytes(&self) -> usize {
        self.k * self.isa.panel() * size_of::<f32>()
    }

    fn tile(&self, a: &TileRows<f32>, _: &mut (), buf: &mut [f32], part: std::ops::Range<usize>) {
        let panel = self.isa.panel();
        let (np, panels, panel_len, rows) = (self.acc_stride(), part.end, self.k * panel, a.rows());
        assert!(rows >= 1 && a.segs() * a.seg_len() == self.k && buf.len() >= rows * np && panels <= self.panels());
        let mut p = part.start;
        while p < panels {
            let two = p + 1 < panels;
            let (b, dst) = (&self.panels[p * panel_len..], &mut buf[p * panel..]);
            #[cfg(target_arch = "x86_64")]
            if self.isa != F32Isa::Plain {
                use super::tiles::{f32_avx512, f32_fma};
                let (ptrs, segs, seg_len, b, dst) = (a.ptrs(), a.segs(), a.seg_len(), b.as_ptr(), dst.as_mut_ptr());
                // SAFETY: `isa` is at most what `F32Isa::detect` found on this CPU; `a` covers
                // `rows` rows of `k` entries in segments (`TileRows`), `b` one or two whole panels
                // of `k` steps, `dst` rows of `np` (asserted above).
                unsafe {
                    match (self.isa, two) {
                        (F32Isa::Avx512, true) => f32_avx512::dispatch::<2>(ptrs, segs, seg_len, rows, b, panel_len, dst, np),
                        (F32Isa::Avx512, false) => f32_avx512::dispatch::<1>(ptrs, segs, seg_len, rows, b, panel_len, dst, np),
                        (_, true) => f32_fma::dispatch::<2>(ptrs, segs, seg_len, rows, b, panel_len, dst, np),
                        (_, false) => f32_fma::dispatch::<1>(ptrs, segs, seg_len, rows, b, panel_len, dst, np),
                    }
                }
                p += if two { 2 } else { 1 };
                continue;
            }
            for r in 0..rows {
                for col in 0..panel {
                    dst[r * np + col] = (0..self.k).fold(0.0, |acc, t| acc + a.at(r, t) * b[t * panel + col]);
                }
            }
            p += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::blocked::{gemm, gemm_in_parts, Rows};
    use crate::parallel::PARALLEL_MIN_MACS;

    /// Every tile this CPU has equals an f64 reference within f32 rounding (relative 1e-5 of the sum of
    /// absolute products), over partial tiles, a single or partial panel, odd depths, rows read
    /// in place or built, weights whole or in parts, and sizes on both sides of the threading
    /// threshold.
    #[test]
    fn packed_f32_gemm_matches_reference() {
        for (m, n, k) in [(1, 1, 1), (7, 7, 83), (13, 16, 9), (300, 37, 83), (64, 24, 288), (700, 40, 83), (100, 520, 140), (4, 96, 800), (40, 16, 500)] {
            assert_eq!(m * n * k >= PARALLEL_MIN_MACS, m == 700 || n == 520);
            // On more threads, (4, 96, 800) splits by panels, and 64·24·288, 300·37·83 and
            // 40·16·500 by rows (too few panels).
            assert_eq!(m * n * k >= crate::parallel::SPLIT_MIN_MACS && m * n * k < PARALLEL_MIN_MACS, [(64, 24), (300, 37), (4, 96), (40, 16)].contains(&(m, n)));
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0).collect();
            let (mut want, mut scale) = (vec![0f64; m * n], vec![0f64; m * n]);
            for i in 0..m {
                for j in 0..n {
                    for t in 0..k {
                        let p = a[i * k + t] as f64 * w[j * k + t] as f64;
                        want[i * n + j] += p;
                        scale[i * n + j] += p.abs();
                    }
                }
            }
            let tiles = [F32Isa::Plain, F32Isa::Fma, F32Isa::Avx512].into_iter().filter(|&i| i <= F32Isa::detect());
            let mut fused: Option<Vec<f32>> = None;
            for packed in tiles.map(|i| PackedF32::pack_for(&w, n, k, i)) {
                let copy = |acc: &[f32], stride: usize, _: usize, o: &mut [f32]| {
                    for (r, row) in o.chunks_mut(n).enumerate() {
                        row.copy_from_slice(&acc[r * stride..r * stride + n]);
                    }
                };
                let lda = k + 3;
                let padded: Vec<f32> = (0..m * lda).map(|i| if i % lda < k { a[i / lda * k + i % lda] } else { f32::NAN }).collect();
                let fill = |i: usize, row: &mut [f32]| row.copy_from_slice(&a[i * k..(i + 1) * k]);
                for rows in [Rows::Slice { a: &padded, lda }, Rows::Built(&fill)] {
                    let mut got = vec![0f32; m * n];
                    gemm(&rows, m, &packed, &mut got, n, &copy);
                    // The weights in parts of two panels give the same sums.
                    let mut parted = vec![0f32; m * n];
                    gemm_in_parts(&rows, m, &packed, &mut parted, n, &copy, 2 * packed.panel_bytes());
                    assert_eq!(parted, got, "m={m} n={n} k={k} {:?}, in parts", packed.isa);
                    // On two and three threads a small product is split by panels or by rows,
                    // and every sum is the same.
                    for threads in [2, 3] {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let split = pool.install(|| {
                            let mut out = vec![0f32; m * n];
                            gemm(&rows, m, &packed, &mut out, n, &copy);
                            out
                        });
                        assert_eq!(split, got, "m={m} n={n} k={k} {:?}, {threads} threads", packed.isa);
                    }
                    for i in 0..m * n {
                        let err = (got[i] as f64 - want[i]).abs();
                        assert!(err <= 1e-5 * scale[i].max(1.0), "m={m} n={n} k={k} {:?} entry {i}: {} vs {}", packed.isa, got[i], want[i]);
                    }
                    // The FMA tiles (ymm and zmm) give the same bits.
                    if packed.isa != F32Isa::Plain {
                        match &fused {
                            Some(f) => assert_eq!(f, &got, "m={m} n={n} k={k} {:?}", packed.isa),
                            None => fused = Some(got),
                        }
                    }
                }
            }
        }
    }
}
