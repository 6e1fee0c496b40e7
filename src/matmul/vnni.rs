//! The quad tiles of the packed GEMM (u8 × i8 in groups of four along the depth), VNNI's and
//! the 7-bit AVX2 one. VNNI: `vpdpbusd` multiplies 4 adjacent u8 activations with 4
//! i8 weights and adds the four products straight into an i32 lane — exact (unlike
//! `vpmaddubsw`, there is no saturating i16 step) and 4 multiply-adds per lane per instruction,
//! twice `vpmaddwd`'s 2. Two encodings: AVX-512 VNNI (zmm, 16 columns per panel: Xeon since
//! Cascade Lake, Zen 4) and AVX-VNNI (ymm, 8 columns: Alder Lake and later client CPUs, Zen 5).
//! AVX2 without VNNI reaches the same quad sums with `vpmaddubsw` then `vpmaddwd` by ones, exact
//! for 7-bit activations only. This file walks the quad-packed panels (`packed::pack_panels`); the register tiles are in
//! `tiles.rs`. Chosen at run time (`packed::Isa`).

/// Columns per panel of the AVX-512 tile (one zmm of i32 lanes).
pub const PANEL_512: usize = 16;
/// Columns per panel of the AVX-VNNI tile (one ymm of i32 lanes).
pub const PANEL_256: usize = 8;

use super::isa::Isa;
use crate::matmul::blocked::TileRows;
#[cfg(target_arch = "x86_64")]
use crate::matmul::tiles::{quads_avx2_u7, quads_avx512, quads_avxvnni};

/// Panels `part` for the tile's u8 rows of `kq` bytes (a multiple of 4, in segments of whole
/// quads) into `buf` (`np` i32 per row), with the quad tile of `isa`: the 512-bit VNNI one, the
/// 256-bit VNNI one, or AVX2's `vpmaddubsw` (7-bit rows only). Panels lie `panel_len` bytes
/// apart (at least `kq` per column; more where the depth is packed to AMX's blocks).
#[allow(clippy::too_many_arguments)] // the tile's rows, the panels' layout and the output's
pub fn tile_rows(a: &TileRows<u8>, kq: usize, panel_len: usize, quads: &[i8], part: std::ops::Range<usize>, buf: &mut [i32], np: usize, isa: Isa) {
    let wide = isa == Isa::Avx512Vnni;
    let panel = if wide { PANEL_512 } else { PANEL_256 };
    let (panels, rows) = (part.end, a.rows());
    assert!(a.segs() * a.seg_len() == kq && a.seg_len().is_multiple_of(4) && panel_len >= kq * panel && quads.len() >= panels * panel_len && buf.len() >= rows * np && np >= panels * panel);
    let (ptrs, segs, steps) = (a.ptrs(), a.segs(), a.seg_len() / 4);
    let mut p = part.start;
    while p < panels {
        let two = p + 1 < panels;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512Vnni` is only chosen when the CPU has AVX-512 F/BW/VNNI,
        // `Isa::AvxVnni` when it has AVX2 and AVX-VNNI, `Isa::Avx2U7` when it has AVX2; `a`
        // covers its rows in segments (`TileRows`); the other bounds are asserted above.
        unsafe {
            let (b, dst) = (quads.as_ptr().add(p * panel_len), buf.as_mut_ptr().add(p * panel));
            match (isa, two) {
                (Isa::Avx512Vnni, true) => quads_avx512::dispatch::<2>(ptrs, segs, steps, rows, b, panel_len, dst, np),
                (Isa::Avx512Vnni, false) => quads_avx512::dispatch::<1>(ptrs, segs, steps, rows, b, panel_len, dst, np),
                (Isa::AvxVnni, true) => quads_avxvnni::dispatch::<2>(ptrs, segs, steps, rows, b, panel_len, dst, np),
                (Isa::AvxVnni, false) => quads_avxvnni::dispatch::<1>(ptrs, segs, steps, rows, b, panel_len, dst, np),
                (Isa::Avx2U7, true) => quads_avx2_u7::dispatch::<2>(ptrs, segs, steps, rows, b, panel_len, dst, np),
                (Isa::Avx2U7, false) => quads_avx2_u7::dispatch::<1>(ptrs, segs, steps, rows, b, panel_len, dst, np),
                _ => unreachable!("{isa:?} has no quad tile"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("VNNI is x86-64 only");
        p += if two { 2 } else { 1 };
    }
}
