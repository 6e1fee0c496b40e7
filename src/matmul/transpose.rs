//! Copying a matrix stored by columns into rows: `dst[r·ld + c] = src[c·cs + r]` for
//! `r < rows`, `c < cols` (column `c` is a run of `rows` values at `src[c·cs..]`). Training's
//! products (`strided.rs`) need it whenever an operand's depth steps are not adjacent: packing
//! weight panels from rows of the weight, copying a gradient read across its rows. Where the CPU
//! has AVX-512 it moves 16 × 16 blocks through registers (16 loads, 64 shuffles, 16 stores)
//! instead of one strided store per value; either way it only moves values, so the results are
//! the same bits.

use std::mem::MaybeUninit;

/// See the module docs. `dst` needs `(rows − 1)·ld + cols` entries, and `src` what the
/// columns reach.
pub fn columns_to_rows(src: &[f32], rows: usize, cols: usize, cs: usize, dst: &mut [MaybeUninit<f32>], ld: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src.len() >= (cols - 1) * cs + rows && dst.len() >= (rows - 1) * ld + cols && ld >= cols, "columns_to_rows out of range");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        let (full_r, full_c) = (rows / 16 * 16, cols / 16 * 16);
        for r in (0..full_r).step_by(16) {
            for c in (0..full_c).step_by(16) {
                // SAFETY: the CPU has AVX-512F; the block's 16 columns of 16 rows lie in src and
                // its 16 rows of 16 columns in dst (asserted bounds, full blocks only).
                unsafe { block16(src.as_ptr().add(c * cs + r), cs, dst.as_mut_ptr().add(r * ld + c).cast(), ld) };
            }
        }
        // The rest: the rows below the full blocks, and the columns right of them.
        scalar(src, full_r..rows, 0..cols, cs, dst, ld);
        scalar(src, 0..full_r, full_c..cols, cs, dst, ld);
        return;
    }
    scalar(src, 0..rows, 0..cols, cs, dst, ld);
}

/// The plain copy of rows `rs` × columns `cs_range`, column by column (each read in order).
fn scalar(src: &[f32], rs: std::ops::Range<usize>, cs_range: std::ops::Range<usize>, cs: usize, dst: &mut [MaybeUninit<f32>], ld: usize) {
    for c in cs_range {
        for r in rs.clone() {
            dst[r * ld + c].write(src[c * cs + r]);
        }
    }
}

/// One 16 × 16 block: the 16 column vectors are loaded, interleaved in three rounds (32-bit
/// pairs, 64-bit pairs, then 128-bit lanes twice), and stored as 16 row vectors.
///
/// # Safety
/// AVX-512F; `src + c·cs` is valid for 16 reads and `dst + r·ld` for 16 writes, `c, r < 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block16(src: *const f32, cs: usize, dst: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    let mut v = [_mm512_setzero_ps(); 16];
    for (c, v) in v.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(src.add(c * cs));
    }
    // Round 1: t[2i] holds v[2i], v[2i+1] interleaved at even element pairs, t[2i+1] at odd.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    // Round 2: per group of four columns g, u[4g + e] holds element e (mod 4) of each 128-bit
    // lane of the four columns.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
    }
    // Rounds 3 and 4: 128-bit lanes of the four groups brought together; element e of the
    // groups' lane l becomes row 4l + e.
    for e in 0..4 {
        let (g0, g1, g2, g3) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
        let lo01 = _mm512_shuffle_f32x4::<0x88>(g0, g1);
        let hi01 = _mm512_shuffle_f32x4::<0xdd>(g0, g1);
        let lo23 = _mm512_shuffle_f32x4::<0x88>(g2, g3);
        let hi23 = _mm512_shuffle_f32x4::<0xdd>(g2, g3);
        _mm512_storeu_ps(dst.add(e * ld), _mm512_shuffle_f32x4::<0x88>(lo01, lo23));
        _mm512_storeu_ps(dst.add((4 + e) * ld), _mm512_shuffle_f32x4::<0x88>(hi01, hi23));
        _mm512_storeu_ps(dst.add((8 + e) * ld), _mm512_shuffle_f32x4::<0xdd>(lo01, lo23));
        _mm512_storeu_ps(dst.add((12 + e) * ld), _mm512_shuffle_f32x4::<0xdd>(hi01, hi23));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry lands where the formula says, for whole blocks, ragged edges on either side
    /// and a destination wider than the columns.
    #[test]
    fn columns_become_rows() {
        for (rows, cols, cs, ld) in [(16, 16, 16, 16), (35, 40, 37, 41), (5, 3, 9, 3), (64, 16, 100, 16), (17, 33, 17, 40)] {
            let src: Vec<f32> = (0..(cols - 1) * cs + rows).map(|i| i as f32).collect();
            let mut dst = vec![MaybeUninit::new(-1.0f32); (rows - 1) * ld + cols];
            columns_to_rows(&src, rows, cols, cs, &mut dst, ld);
            for r in 0..rows {
                for c in 0..cols {
                    // SAFETY: initialised above.
                    let got = unsafe { dst[r * ld + c].assume_init() };
                    assert_eq!(got, src[c * cs + r], "rows {rows} cols {cols}: ({r}, {c})");
                }
            }
        }
    }
}
