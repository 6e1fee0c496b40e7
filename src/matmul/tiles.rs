//! The SIMD register tiles of the packed GEMMs, one macro for all six: a tile of `MR` rows ×
//! `NV` panels keeps `MR·NV` vector accumulators over the whole depth; per depth step it loads
//! `NV` weight vectors, broadcasts each row's group of activations (an i16 pair or a u8 quad,
//! read as one i32; or one f32) and applies the multiply-accumulate `op`. The rows count is
//! dispatched to a const generic so the accumulators live in registers: up to 6 rows on the ymm
//! tiles (12 of 16 registers), up to 14 on the zmm ones (28 of 32, `blocked::MR_ZMM`).
//!
//! - AVX2 (`pairs_avx2`): i16 pairs × i16 pairs, `vpmaddwd` then `vpaddd` — 16 multiply-adds.
//! - AVX-VNNI (`quads_avxvnni`, ymm) and AVX-512 VNNI (`quads_avx512`, zmm): u8 quads × i8
//!   quads, `vpdpbusd` — 32 and 64 multiply-adds, summed straight into i32.
//! - AVX2 on 7-bit activations (`quads_avx2_u7`): u8 quads × i8 quads, `vpmaddubsw` then
//!   `vpmaddwd` by ones and `vpaddd` — 32 multiply-adds per three instructions.
//! - FMA (`f32_fma`, ymm) and AVX-512 (`f32_avx512`, zmm): f32 × f32, `vfmadd231ps` — 8 and 16
//!   multiply-adds, the float runtime's tiles.
//!
//! The integer ones are exact: no intermediate saturates (unlike `vpmaddubsw`).
//!
//! A tile reads its rows as `segs` segments of `seg_steps` groups each, segment `s` of row `r`
//! starting at `a[r·segs + s]` (`blocked::TileRows`): one segment per row when the rows lie in
//! memory as rows, one per kernel tap when a conv's patch rows are gathered from the input
//! where they lie (so nothing is copied). Segment `s` meets depth steps
//! `s·seg_steps..(s + 1)·seg_steps` of the panels.
//!
//! Safety contract of every generated `dispatch`: the CPU has the named features; `a` holds
//! `rows·segs` pointers, each valid for `seg_steps` groups; `b`
//! holds `NV` panels of `segs·seg_steps` steps at `panel_len` elements; `dst` holds `rows` rows
//! of `np ≥ NV·panel` accumulators.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

macro_rules! tile_kernel {
    ($name:ident, $feat:literal, $a:ty, $b:ty, $grp:ty => $acc_t:ty, group = $group:literal, panel = $panel:expr,
     rows = [$($r:literal),+], $zero:path, $load:path, $set1:path, $store:path, |$acc:ident, $av:ident, $bv:ident| $op:expr) => {
        pub mod $name {
            use super::*;

            /// Columns per panel.
            pub const PANEL: usize = $panel;

            /// Computes a tile of `rows` rows (one of the module's row counts) × `NV` panels into
            /// `dst`.
            ///
            /// # Safety
            /// The CPU has the features this module is compiled for, and the pointers cover what
            /// the module docs of `tiles` list.
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn dispatch<const NV: usize>(a: *const *const $a, segs: usize, seg_steps: usize, rows: usize, b: *const $b, panel_len: usize, dst: *mut $acc_t, np: usize) {
                match rows {
                    $($r => tile::<$r, NV>(a, segs, seg_steps, b, panel_len, dst, np),)+
                    _ => unreachable!("a tile of {rows} rows"),
                }
            }

            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            #[inline]
            unsafe fn tile<const MR: usize, const NV: usize>(a: *const *const $a, segs: usize, seg_steps: usize, b: *const $b, panel_len: usize, dst: *mut $acc_t, np: usize) {
                let mut acc = [[$zero(); NV]; MR];
                for s in 0..segs {
                    // This segment's start in each row, and its depth steps in the panels.
                    let mut row = [std::ptr::null::<$a>(); MR];
                    for (r, row) in row.iter_mut().enumerate() {
                        *row = *a.add(r * segs + s);
                    }
                    let b = b.add(s * seg_steps * $group * PANEL);
                    for t in 0..seg_steps {
                        let mut bv = [$zero(); NV];
                        for (v, bv) in bv.iter_mut().enumerate() {
                            *bv = $load(b.add(v * panel_len + t * $group * PANEL) as *const _);
                        }
                        for (acc, row) in acc.iter_mut().zip(&row) {
                            let $av = $set1(std::ptr::read_unaligned(row.add($group * t) as *const $grp));
                            for v in 0..NV {
                                let ($acc, $bv) = (acc[v], bv[v]);
                                acc[v] = $op;
                            }
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    for (v, acc) in acc.iter().enumerate() {
                        $store(dst.add(r * np + v * PANEL) as *mut _, *acc);
                    }
                }
            }
        }
    };
}

tile_kernel!(pairs_avx2, "avx2", i16, i16, i32 => i32, group = 2, panel = 8, rows = [1, 2, 3, 4, 5, 6],
    _mm256_setzero_si256, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256,
    |acc, av, bv| _mm256_add_epi32(acc, _mm256_madd_epi16(av, bv)));

tile_kernel!(quads_avxvnni, "avx2,avxvnni", u8, i8, i32 => i32, group = 4, panel = 8, rows = [1, 2, 3, 4, 5, 6],
    _mm256_setzero_si256, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256,
    |acc, av, bv| _mm256_dpbusd_avx_epi32(acc, av, bv));

tile_kernel!(quads_avx512, "avx512f,avx512bw,avx512vnni", u8, i8, i32 => i32, group = 4, panel = 16, rows = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    _mm512_setzero_si512, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_storeu_si512,
    |acc, av, bv| _mm512_dpbusd_epi32(acc, av, bv));

// Quad sums from u8 × i8 pairs summed into i16 (`vpmaddubsw`), then pairs of those into i32
// (`vpmaddwd` by ones): exact while `|a₀w₀ + a₁w₁| < 2¹⁵`, i.e. for activations ≤ 127.
tile_kernel!(quads_avx2_u7, "avx2", u8, i8, i32 => i32, group = 4, panel = 8, rows = [1, 2, 3, 4, 5, 6],
    _mm256_setzero_si256, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256,
    |acc, av, bv| _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(av, bv), _mm256_set1_epi16(1))));

tile_kernel!(f32_fma, "avx2,fma", f32, f32, f32 => f32, group = 1, panel = 8, rows = [1, 2, 3, 4, 5, 6],
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps,
    |acc, av, bv| _mm256_fmadd_ps(av, bv, acc));

tile_kernel!(f32_avx512, "avx512f", f32, f32, f32 => f32, group = 1, panel = 16, rows = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps,
    |acc, av, bv| _mm512_fmadd_ps(av, bv, acc));
