//! The packed u8 × i8 → i32 GEMM of the compiled runtime: `acc[m][j] = Σ_t a[m][t] · w[j][t]`,
//! exact in i32. Activation codes arrive as i16 rows (`a`, one row per output position, the
//! depth padded to an even length), weights are packed once at load time into panels of 8
//! output columns holding depth *pairs* (`[t/2][col][t%2]`), so one AVX2 `vpmaddwd` multiplies
//! a broadcast pair of activations with 8 columns' weight pairs and sums each pair into an i32
//! lane — 16 multiply-adds per instruction, exact (a `vpmaddubsw` path would be twice as wide
//! but its i16 pair sums saturate at 255·127·2). A register tile of `MR` rows (`MR_ZMM` on the
//! 512-bit VNNI tile) × 8·`NV` columns stays in registers over the whole depth. The blocking,
//! threading and epilogue calls are the shared driver's (`blocked.rs`); this file is the integer
//! [`Panels`].

use super::blocked::{Panels, TileRows};
use super::isa::Isa;
use super::pack_panels;

/// Columns per packed panel (one 256-bit vector of i32 lanes).
pub const PANEL: usize = 8;

/// Weights packed for the pair kernels (scalar, AVX2 `vpmaddwd`), which read i16 rows.
#[derive(Debug, Clone)]
pub struct PairPanels {
    /// Real output columns.
    pub n: usize,
    /// Real depth.
    pub k: usize,
    /// Depth rounded up to even: the row length the activations must provide.
    pub kp: usize,
    isa: Isa,
    /// Panels of 8 columns, panel `p` holding `kp/2` pairs of 16 i16 each.
    pairs: Vec<i16>,
}

/// Weights packed for the quad kernels (AVX2 on 7-bit codes, VNNI), which read u8 rows.
#[derive(Debug, Clone)]
pub struct QuadPanels {
    /// Real output columns.
    pub n: usize,
    /// Real depth.
    pub k: usize,
    /// Depth rounded up to whole quads: the row length the activations must provide.
    pub kq: usize,
    isa: Isa,
    /// Depth per column as packed: `kq`, or whole 64-byte blocks for AMX.
    depth: usize,
    /// Panels of 8 or 16 columns holding depth quads of i8.
    quads: Vec<i8>,
}

impl QuadPanels {
    /// Packs row-major `w[j·k + t]` for quad kernel `isa`; columns past `n` and depth past `k`
    /// hold zeros, so they add nothing whatever the activations hold there.
    pub fn pack(w: &[i8], n: usize, k: usize, isa: Isa) -> QuadPanels {
        assert!(w.len() == n * k && isa.quads(), "weight length and a quad kernel");
        let kq = k.div_ceil(4) * 4;
        let isa = if isa == Isa::Amx && !super::amx::pays(n, kq) { Isa::Avx512Vnni } else { isa };
        if isa == Isa::Amx {
            // AMX reads the depth in whole blocks: the weights gain zero columns up to one.
            let depth = super::amx::packed_depth(kq);
            let wide: Vec<i8> = w.chunks(k.max(1)).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0, depth - k))).collect();
            return QuadPanels { n, k, kq, isa, depth, quads: pack_panels(&wide, n, depth, 4, panel(isa), |v| v) };
        }
        QuadPanels { n, k, kq, isa, depth: kq, quads: pack_panels(w, n, k, 4, panel(isa), |v| v) }
    }
}

impl PairPanels {
    /// Packs row-major `w[j·k + t]` for pair kernel `isa` (zeros past `n` and `k`, as above).
    pub fn pack(w: &[i8], n: usize, k: usize, isa: Isa) -> PairPanels {
        assert!(w.len() == n * k && !isa.quads(), "weight length and a pair kernel");
        PairPanels { n, k, kp: k.div_ceil(2) * 2, isa, pairs: pack_panels(w, n, k, 2, PANEL, i16::from) }
    }

    fn panel_len(&self) -> usize {
        self.kp * PANEL
    }
}

impl Panels for PairPanels {
    type A = i16;
    type Acc = i32;
    type Scratch = ();
    const GROUP: usize = 2;

    fn row_len(&self) -> usize {
        self.kp
    }

    fn macs_per_row(&self) -> usize {
        self.n * self.k
    }

    fn acc_stride(&self) -> usize {
        self.panels() * PANEL
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    fn panel_bytes(&self) -> usize {
        self.panel_len() * size_of::<i16>()
    }

    fn tile(&self, a: &TileRows<i16>, _: &mut (), buf: &mut [i32], part: std::ops::Range<usize>) {
        tile_rows(a, self, buf, self.acc_stride(), part)
    }
}

impl Panels for QuadPanels {
    type A = u8;
    type Acc = i32;
    type Scratch = super::amx::Scratch;
    const GROUP: usize = 4;

    fn row_len(&self) -> usize {
        self.kq
    }

    fn macs_per_row(&self) -> usize {
        self.n * self.k
    }

    fn acc_stride(&self) -> usize {
        self.panels() * panel(self.isa)
    }

    fn tile_rows(&self) -> usize {
        match self.isa {
            Isa::Amx => super::amx::ROWS,
            Isa::Avx512Vnni => super::blocked::MR_ZMM,
            _ => super::blocked::MR,
        }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(panel(self.isa))
    }

    fn panel_bytes(&self) -> usize {
        self.depth * panel(self.isa)
    }

    fn tile(&self, a: &TileRows<u8>, scratch: &mut super::amx::Scratch, buf: &mut [i32], part: std::ops::Range<usize>) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => super::amx::tile_rows(a, self.kq, self.depth, &self.quads, part, buf, self.acc_stride(), scratch),
            _ => super::vnni::tile_rows(a, self.kq, self.depth * panel(self.isa), &self.quads, part, buf, self.acc_stride(), self.isa),
        }
    }
}

/// Panels `part` for the tile's rows into `buf` (`np` i32 per row).
fn tile_rows(a: &TileRows<i16>, w: &PairPanels, buf: &mut [i32], np: usize, part: std::ops::Range<usize>) {
    let (panels, rows) = (part.end, a.rows());
    assert!(a.segs() * a.seg_len() == w.kp && a.seg_len().is_multiple_of(2) && buf.len() >= rows * np && np >= w.panels() * PANEL && panels <= w.panels());
    let mut p = part.start;
    while p < panels {
        let two = p + 1 < panels;
        let b = &w.pairs[p * w.panel_len()..];
        let dst = &mut buf[p * PANEL..];
        #[cfg(target_arch = "x86_64")]
        {
            if w.isa == Isa::Avx2 {
                // SAFETY: the CPU has AVX2; `a` covers `rows` rows of `kp` entries in segments of
                // whole pairs (`TileRows`, asserted above), `b` one or two whole panels, `dst`
                // rows of `np ≥ p·8 + 16` (or `+ 8` for one panel) entries.
                unsafe {
                    use crate::matmul::tiles::pairs_avx2::dispatch;
                    let steps = a.seg_len() / 2;
                    if two {
                        dispatch::<2>(a.ptrs(), a.segs(), steps, rows, b.as_ptr(), w.panel_len(), dst.as_mut_ptr(), np);
                    } else {
                        dispatch::<1>(a.ptrs(), a.segs(), steps, rows, b.as_ptr(), w.panel_len(), dst.as_mut_ptr(), np);
                    }
                }
                p += if two { 2 } else { 1 };
                continue;
            }
        }
        scalar_panel(a, b, w.kp / 2, dst, np);
        p += 1;
    }
}

/// One panel for the tile's rows in plain code: the fallback without AVX2.
fn scalar_panel(a: &TileRows<i16>, b: &[i16], kpairs: usize, dst: &mut [i32], np: usize) {
    for r in 0..a.rows() {
        for col in 0..PANEL {
            let mut acc = 0i32;
            for t in 0..kpairs {
                let (a0, a1) = (a.at(r, 2 * t) as i32, a.at(r, 2 * t + 1) as i32);
                acc += a0 * b[t * 2 * PANEL + col * 2] as i32 + a1 * b[t * 2 * PANEL + col * 2 + 1] as i32;
            }
            dst[r * np + col] = acc;
        }
    }
}

/// Columns per panel of `isa`'s layout.
fn panel(isa: Isa) -> usize {
    match isa {
        Isa::Avx512Vnni | Isa::Amx => super::vnni::PANEL_512,
        Isa::AvxVnni | Isa::Avx2U7 => super::vnni::PANEL_256,
        _ => PANEL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8-bit inputs never get the 7-bit kernel; 7-bit inputs get it exactly when it is the best
    /// this CPU has (AVX2 without VNNI), and otherwise the same kernel as 8-bit inputs.
    #[test]
    fn seven_bit_kernel_only_for_seven_bit_inputs() {
        let all = Isa::available();
        assert_ne!(Isa::detect_for(false), Isa::Avx2U7);
        assert!(!Isa::detect_for(false).quads() || matches!(Isa::detect_for(false), Isa::AvxVnni | Isa::Avx512Vnni | Isa::Amx));
        let vnni = all.iter().any(|&i| matches!(i, Isa::AvxVnni | Isa::Avx512Vnni | Isa::Amx));
        match (all.contains(&Isa::Avx2U7), vnni) {
            (true, false) => assert_eq!(Isa::detect_for(true), Isa::Avx2U7),
            _ => assert_eq!(Isa::detect_for(true), Isa::detect_for(false)),
        }
    }

    /// The panel layout by hand (it is what every kernel reads, including the VNNI ones that
    /// cannot run on every test machine): `[j / panel][t / group][j % panel][t % group]`.
    #[test]
    fn panel_layout() {
        // n = 3 columns, k = 5: w[j][t] = 10·j + t.
        let w: Vec<i8> = (0..3).flat_map(|j| (0..5).map(move |t| (10 * j + t) as i8)).collect();
        // Quads, panels of 2 columns: depth 5 → 8 (two quads); panel 0 holds columns 0 and 1.
        let q = pack_panels(&w, 3, 5, 4, 2, |v| v);
        assert_eq!(q.len(), 2 * 8 * 2);
        assert_eq!(&q[..8], &[0, 1, 2, 3, 10, 11, 12, 13]);
        assert_eq!(&q[8..16], &[4, 0, 0, 0, 14, 0, 0, 0]);
        assert_eq!(&q[16..24], &[20, 21, 22, 23, 0, 0, 0, 0]);
        // Pairs as i16, one panel of 4 columns: depth 5 → 6.
        let p = pack_panels(&w, 3, 5, 2, 4, i16::from);
        assert_eq!(&p[..8], &[0, 1, 10, 11, 20, 21, 0, 0]);
        assert_eq!(&p[16..24], &[4, 0, 14, 0, 24, 0, 0, 0]);
    }
    use crate::matmul::blocked::{gemm, gemm_in_parts, Rows};
    use crate::parallel::PARALLEL_MIN_MACS;
    use crate::runtime::kernels::gemm_u8i8;

    /// The packed GEMM equals the scalar reference bit for bit with every kernel this CPU runs
    /// (the 7-bit one on codes up to 127), over row counts that leave partial tiles, column
    /// counts that leave a single or partial panel, odd depths, extreme codes, and sizes on both
    /// sides of the threading threshold. The AMX shapes (`amx::pays`) have tiles of 32 rows
    /// and of 8 to 31 (halves stored past the caller's rows go through scratch), panel pairs and a
    /// single last panel, and 5-row tiles that take the VNNI tile over AMX's panels. Each runs
    /// with the weights whole and in parts of two panels (`gemm_in_parts`).
    #[test]
    fn packed_gemm_equals_reference() {
        for (m, n, k) in
            [(1, 1, 1), (7, 7, 83), (13, 16, 9), (300, 37, 83), (64, 24, 288), (700, 40, 83), (45, 80, 130), (13, 64, 64), (20, 72, 64), (5, 96, 70), (40, 1040, 300), (5, 128, 2000), (40, 16, 1800)]
        {
            // The last two are above PARALLEL_MIN_MACS, so the threaded path runs too.
            assert_eq!(m * n * k >= PARALLEL_MIN_MACS, m == 700 || n == 1040);
            // The last two split on more threads (quads' threshold): by panels, by rows.
            assert_eq!(m * n * k >= 4 * crate::parallel::SPLIT_MIN_MACS && m * n * k < PARALLEL_MIN_MACS, k >= 1800);
            // Weights at both extremes (−128 is the worst case of the 7-bit kernel's pair sums).
            let w: Vec<i8> = (0..n * k).map(|i| if i % 4 == 0 { 127 } else if i % 9 == 0 { -128 } else { ((i * 53) % 255) as i32 - 127 } as i8).collect();
            for isa in Isa::available() {
                // Codes at the top of the range the kernel serves: 255, or 127 for 7-bit inputs.
                let top = if isa == Isa::Avx2U7 { 127 } else { 255 };
                let a8: Vec<u8> = (0..m * k).map(|i| if i % 3 == 0 { top } else { ((i * 37) % (top as usize + 1)) as u8 }).collect();
                let want = gemm_u8i8(&a8, &w, m, n, k);
                let label = format!("m={m} n={n} k={k} {isa:?}");
                match isa.quads() {
                    true => {
                        let p = QuadPanels::pack(&w, n, k, isa);
                        // Each kernel is tested on shapes it runs: AMX on those large enough.
                        assert_eq!(p.isa == Isa::Amx, isa == Isa::Amx && super::super::amx::pays(n, k.div_ceil(4) * 4), "{label}");
                        check(&p, &a8, m, k, &want, |c| c, &label)
                    }
                    false => check(&PairPanels::pack(&w, n, k, isa), &a8, m, k, &want, i16::from, &label),
                }
            }
        }
    }

    /// `p`'s GEMM over `a8` (as its row type, each row padded past `k` with junk that must meet
    /// zero weights), rows read in place and built on demand, and on two and three threads (a
    /// small product split by panels or by rows), equals `want`; each tile's epilogue is told
    /// the product row its output rows start at.
    fn check<P: Panels<Acc = i32>>(p: &P, a8: &[u8], m: usize, k: usize, want: &[i32], cast: fn(u8) -> P::A, label: &str) {
        let n = want.len() / m;
        let lda = p.row_len() + 3;
        let a: Vec<P::A> = (0..m * lda).map(|i| cast(if i % lda < k { a8[i / lda * k + i % lda] } else { 77 })).collect();
        // `base`: where the output starts, to check the row index the epilogue is given.
        let copy = |base: usize| {
            move |acc: &[i32], stride: usize, first: usize, o: &mut [i32]| {
                assert_eq!((o.as_ptr() as usize - base) / size_of::<i32>(), first * n, "first row of a tile, {label}");
                for (r, row) in o.chunks_mut(n).enumerate() {
                    row.copy_from_slice(&acc[r * stride..r * stride + n]);
                }
            }
        };
        let mut got = vec![0i32; m * n];
        let base = got.as_ptr() as usize;
        gemm(&Rows::Slice { a: &a, lda }, m, p, &mut got, n, &copy(base));
        assert_eq!(got, want, "{label}");
        let mut parted = vec![0i32; m * n];
        let base = parted.as_ptr() as usize;
        gemm_in_parts(&Rows::Slice { a: &a, lda }, m, p, &mut parted, n, &copy(base), 2 * p.panel_bytes());
        assert_eq!(parted, want, "weights in parts of two panels, {label}");
        let fill = |i: usize, row: &mut [P::A]| row.copy_from_slice(&a[i * lda..i * lda + p.row_len()]);
        let mut built = vec![0i32; m * n];
        let base = built.as_ptr() as usize;
        gemm(&Rows::Built(&fill), m, p, &mut built, n, &copy(base));
        assert_eq!(built, want, "built rows, {label}");
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let split = pool.install(|| {
                let mut out = vec![0i32; m * n];
                let base = out.as_ptr() as usize;
                gemm(&Rows::Slice { a: &a, lda }, m, p, &mut out, n, &copy(base));
                out
            });
            assert_eq!(split, want, "{threads} threads, {label}");
        }
    }
}
