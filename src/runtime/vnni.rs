//! The VNNI tiles of the packed GEMM: `vpdpbusd` multiplies 4 adjacent u8 activations with 4
//! i8 weights and adds the four products straight into an i32 lane — exact (unlike
//! `vpmaddubsw`, there is no saturating i16 step) and 4 multiply-adds per lane per instruction,
//! twice `vpmaddwd`'s 2. Two encodings: AVX-512 VNNI (zmm, 16 columns per panel: Xeon since
//! Cascade Lake, Zen 4) and AVX-VNNI (ymm, 8 columns: Alder Lake and later client CPUs, Zen 5).
//! This file walks the quad-packed panels (`packed::pack_panels`); the register tiles are in
//! `tiles.rs`. Chosen at run time (`packed::Isa`).

/// Columns per panel of the AVX-512 tile (one zmm of i32 lanes).
pub const PANEL_512: usize = 16;
/// Columns per panel of the AVX-VNNI tile (one ymm of i32 lanes).
pub const PANEL_256: usize = 8;

#[cfg(target_arch = "x86_64")]
use super::tiles::{quads_avx512, quads_avxvnni};

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
                (true, true) => quads_avx512::dispatch::<2>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
                (true, false) => quads_avx512::dispatch::<1>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
                (false, true) => quads_avxvnni::dispatch::<2>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
                (false, false) => quads_avxvnni::dispatch::<1>(a.as_ptr(), lda, rows, b, panel_len, lda / 4, dst, np),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("VNNI is x86-64 only");
        p += if two { 2 } else { 1 };
    }
}
