//! The VNNI tiles of the packed GEMM: `vpdpbusd` multiplies 4 adjacent u8 activations with 4
//! i8 weights and adds the four products straight into an i32 lane — exact (unlike
//! `vpmaddubsw`, there is no saturating i16 step) and 4 multiply-adds per lane per instruction,
//! four times `vpmaddwd`'s. Two encodings: AVX-512 VNNI (zmm, 16 columns per panel: Xeon since
//! Cascade Lake, Zen 4) and AVX-VNNI (ymm, 8 columns: Alder Lake and later client CPUs, Zen 5).
//! Weights are packed in panels holding depth *quads* (`[t/4][col][t%4]`); a tile of `MR` rows
//! × `NV` panels keeps `MR·NV` accumulators over the whole depth. Chosen at run time
//! (`packed::Isa`).

/// Columns per panel of the AVX-512 tile (one zmm of i32 lanes).
pub const PANEL_512: usize = 16;
/// Columns per panel of the AVX-VNNI tile (one ymm of i32 lanes).
pub const PANEL_256: usize = 8;

/// Packs row-major `w[j·k + t]` (`n × k`) into quad panels of `panel` columns, zero past `n`
/// and `k`.
pub fn pack(w: &[i8], n: usize, k: usize, panel: usize) -> Vec<i8> {
    let kq = k.div_ceil(4) * 4;
    let per_panel = kq * panel;
    let mut data = vec![0i8; n.div_ceil(panel) * per_panel];
    for j in 0..n {
        let (p, col) = (j / panel, j % panel);
        for t in 0..k {
            data[p * per_panel + (t / 4) * 4 * panel + col * 4 + t % 4] = w[j * k + t];
        }
    }
    data
}

/// All panels for `rows ≤ 6` u8 rows (`lda = kq` bytes each, zero past `k`) into `buf` (`np`
/// i32 per row), with the 512-bit tile (`wide`) or the 256-bit one.
#[allow(clippy::too_many_arguments)]
pub fn tile_rows(a: &[u8], lda: usize, rows: usize, quads: &[i8], n: usize, buf: &mut [i32], np: usize, wide: bool) {
    let panel = if wide { PANEL_512 } else { PANEL_256 };
    let panels = n.div_ceil(panel);
    let panel_len = lda * panel;
    assert!(a.len() >= rows * lda && quads.len() >= panels * panel_len && buf.len() >= rows * np && np >= panels * panel);
    let mut p = 0;
    while p < panels {
        let two = p + 1 < panels;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512Vnni` (wide) is only chosen when the CPU has AVX-512 F/BW/VNNI,
        // `Isa::AvxVnni` when it has AVX2 and AVX-VNNI; the bounds are asserted above.
        unsafe {
            let (b, dst) = (quads.as_ptr().add(p * panel_len), buf.as_mut_ptr().add(p * panel));
            match (wide, two) {
                (true, true) => imp::tile_dispatch_512::<2>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
                (true, false) => imp::tile_dispatch_512::<1>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
                (false, true) => imp::tile_dispatch_256::<2>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
                (false, false) => imp::tile_dispatch_256::<1>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("VNNI is x86-64 only");
        p += if two { 2 } else { 1 };
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{PANEL_256, PANEL_512 as PANEL};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_dispatch_512<const NV: usize>(a: *const u8, lda: usize, rows: usize, b: *const i8, panel_len: usize, kquads: usize, dst: *mut i32, np: usize) {
        macro_rules! go {
            ($mr:literal) => {
                tile::<$mr, NV>(a, lda, b, panel_len, kquads, dst, np)
            };
        }
        match rows {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            _ => go!(6),
        }
    }

    /// `MR` rows × `NV` panels: per depth quad, `NV` weight loads, `MR` broadcasts of the
    /// row's 4 activation bytes, `MR·NV` `vpdpbusd`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn tile<const MR: usize, const NV: usize>(a: *const u8, lda: usize, b: *const i8, panel_len: usize, kquads: usize, dst: *mut i32, np: usize) {
        let mut acc = [[_mm512_setzero_si512(); NV]; MR];
        for t in 0..kquads {
            let mut bv = [_mm512_setzero_si512(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_loadu_si512(b.add(v * panel_len + t * 4 * PANEL) as *const __m512i);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let quad = std::ptr::read_unaligned(a.add(r * lda + 4 * t) as *const i32);
                let av = _mm512_set1_epi32(quad);
                for v in 0..NV {
                    acc[v] = _mm512_dpbusd_epi32(acc[v], av, bv[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                _mm512_storeu_si512(dst.add(r * np + v * PANEL) as *mut __m512i, *acc);
            }
        }
    }

    #[target_feature(enable = "avx2,avxvnni")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_dispatch_256<const NV: usize>(a: *const u8, lda: usize, rows: usize, b: *const i8, panel_len: usize, kquads: usize, dst: *mut i32, np: usize) {
        macro_rules! go {
            ($mr:literal) => {
                tile_256::<$mr, NV>(a, lda, b, panel_len, kquads, dst, np)
            };
        }
        match rows {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            _ => go!(6),
        }
    }

    /// The AVX-VNNI (VEX, ymm) form of [`tile`].
    #[target_feature(enable = "avx2,avxvnni")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn tile_256<const MR: usize, const NV: usize>(a: *const u8, lda: usize, b: *const i8, panel_len: usize, kquads: usize, dst: *mut i32, np: usize) {
        let mut acc = [[_mm256_setzero_si256(); NV]; MR];
        for t in 0..kquads {
            let mut bv = [_mm256_setzero_si256(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm256_loadu_si256(b.add(v * panel_len + t * 4 * PANEL_256) as *const __m256i);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let quad = std::ptr::read_unaligned(a.add(r * lda + 4 * t) as *const i32);
                let av = _mm256_set1_epi32(quad);
                for v in 0..NV {
                    acc[v] = _mm256_dpbusd_avx_epi32(acc[v], av, bv[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                _mm256_storeu_si256(dst.add(r * np + v * PANEL_256) as *mut __m256i, *acc);
            }
        }
    }
}
