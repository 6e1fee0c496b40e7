//! The packed f32 GEMM of the compiled float runtime: `acc[m][j] = Σ_t a[m][t] · w[j][t]`,
//! summed in depth order with fused multiply-adds. Weights are packed once at load time into
//! panels of 8 output columns (`[j/8][t][j%8]`), so each depth step is one 8-wide weight load
//! per panel and one broadcast activation per row; a tile of 6 rows × 16 columns keeps 12 ymm
//! accumulators over the whole depth (`tiles::f32_fma`). Without AVX2+FMA a plain loop computes
//! the same sums (rounded after each multiply). Blocking and threads: `blocked.rs`.

use super::blocked::{Panels, TileRows};
use super::pack_panels;

/// Columns per panel (one ymm of f32 lanes).
const PANEL: usize = 8;

/// Weights `[n, k]` (f32) packed for [`crate::matmul::blocked::gemm`].
#[derive(Debug, Clone)]
pub struct PackedF32 {
    /// Output columns.
    pub n: usize,
    /// Depth.
    pub k: usize,
    /// Panels of 8 columns, each `k` steps of 8 values; columns past `n` hold zeros.
    panels: Vec<f32>,
    /// Whether the CPU runs the FMA tile.
    fma: bool,
}

impl PackedF32 {
    /// Packs row-major `w[j·k + t]`.
    pub fn pack(w: &[f32], n: usize, k: usize) -> PackedF32 {
        assert_eq!(w.len(), n * k, "weight length");
        PackedF32 { n, k, panels: pack_panels(w, n, k, 1, PANEL, |v| v), fma: has_fma() }
    }

    /// The same weights run by the plain loop (to test it against the FMA tile).
    #[cfg(test)]
    fn plain(mut self) -> PackedF32 {
        self.fma = false;
        self
    }

    fn count(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
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
        self.count() * PANEL
    }

    fn tile(&self, a: &TileRows<f32>, _: &mut (), buf: &mut [f32]) {
        let (np, panels, panel_len, rows) = (self.acc_stride(), self.count(), self.k * PANEL, a.rows());
        assert!(rows >= 1 && a.segs() * a.seg_len() == self.k && buf.len() >= rows * np);
        let mut p = 0;
        while p < panels {
            let two = p + 1 < panels;
            let (b, dst) = (&self.panels[p * panel_len..], &mut buf[p * PANEL..]);
            #[cfg(target_arch = "x86_64")]
            if self.fma {
                use super::tiles::f32_fma::dispatch;
                // SAFETY: `fma` is only set when the CPU has AVX2 and FMA; `a` covers `rows` rows
                // of `k` entries in segments (`TileRows`), `b` one or two whole panels of `k`
                // steps, `dst` rows of `np` (asserted above).
                unsafe {
                    match two {
                        true => dispatch::<2>(a.ptrs(), a.segs(), a.seg_len(), rows, b.as_ptr(), panel_len, dst.as_mut_ptr(), np),
                        false => dispatch::<1>(a.ptrs(), a.segs(), a.seg_len(), rows, b.as_ptr(), panel_len, dst.as_mut_ptr(), np),
                    }
                }
                p += if two { 2 } else { 1 };
                continue;
            }
            for r in 0..rows {
                for col in 0..PANEL {
                    dst[r * np + col] = (0..self.k).fold(0.0, |acc, t| acc + a.at(r, t) * b[t * PANEL + col]);
                }
            }
            p += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::blocked::{gemm, Rows};
    use crate::parallel::PARALLEL_MIN_MACS;

    /// Both tiles equal an f64 reference within f32 rounding (relative 1e-5 of the sum of
    /// absolute products), over partial tiles, a single or partial panel, odd depths, rows read
    /// in place or built, and sizes on both sides of the threading threshold.
    #[test]
    fn packed_f32_gemm_matches_reference() {
        for (m, n, k) in [(1, 1, 1), (7, 7, 83), (13, 16, 9), (300, 37, 83), (64, 24, 288), (700, 40, 83)] {
            assert_eq!(m * n * k >= PARALLEL_MIN_MACS, m == 700);
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
            for packed in [PackedF32::pack(&w, n, k), PackedF32::pack(&w, n, k).plain()] {
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
                    for i in 0..m * n {
                        let err = (got[i] as f64 - want[i]).abs();
                        assert!(err <= 1e-5 * scale[i].max(1.0), "m={m} n={n} k={k} fma={} entry {i}: {} vs {}", packed.fma, got[i], want[i]);
                    }
                }
            }
        }
    }
}
