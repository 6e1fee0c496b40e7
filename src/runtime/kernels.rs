//! Integer kernels: activation quantisation to u8, im2col over u8 with the zero point as
//! padding, and the u8 × i8 → i32 dot-product GEMM, in a scalar reference form (the oracle) and
//! a fast form (rayon over rows, AVX2 `vpmaddwd` chosen at run time). Integer sums are exact, so
//! the two agree bit for bit; tests check it.

use rayon::prelude::*;

/// Which implementation computes the GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain loops on one thread: the oracle.
    Reference,
    /// rayon over output rows, AVX2 when the CPU has it.
    Fast,
}

/// `q = clamp(round(x / s) + zp, qmin, qmax)`, stored as u8: an i8 code `q` is stored as
/// `q + 128` with zero point `zp + 128`, so one u8 kernel serves both activation types.
/// Returns the codes and the u8 zero point.
pub fn quantize_u8(x: &[f32], q: &crate::quant::QParams) -> (Vec<u8>, i32) {
    let shift = match q.act {
        crate::quant::ActType::U8 => 0,
        crate::quant::ActType::I8 => 128,
    };
    let codes = x.iter().map(|&v| (q.quantize(v) + shift) as u8).collect();
    (codes, q.zero_point + shift)
}

/// Patches of one group of one sample for a 2-d convolution, `[positions, k]` row-major with
/// `k = cg·kh·kw` ordered like the weight `[out, cg, kh, kw]`; out-of-image taps read `pad`
/// (the zero point, i.e. real 0).
#[allow(clippy::too_many_arguments)]
pub fn im2col(
    x: &[u8], c0: usize, cg: usize, h: usize, w: usize, kh: usize, kw: usize, stride: usize,
    pad: (usize, usize), dil: usize, ho: usize, wo: usize, padv: u8,
) -> Vec<u8> {
    let k = cg * kh * kw;
    let mut out = vec![padv; ho * wo * k];
    for oy in 0..ho {
        for ox in 0..wo {
            let row = &mut out[(oy * wo + ox) * k..(oy * wo + ox + 1) * k];
            for c in 0..cg {
                let plane = &x[(c0 + c) * h * w..(c0 + c + 1) * h * w];
                for ky in 0..kh {
                    let iy = (oy * stride + ky * dil) as isize - pad.0 as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * stride + kx * dil) as isize - pad.1 as isize;
                        if ix >= 0 && ix < w as isize {
                            row[(c * kh + ky) * kw + kx] = plane[iy as usize * w + ix as usize];
                        }
                    }
                }
            }
        }
    }
    out
}

/// `c[m][n] = Σ_k a[m][k] · b[n][k]` (a u8 `[M, K]`, b i8 `[N, K]`, both row-major), i32 exact.
pub fn gemm_u8i8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize, kernel: Kernel) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    match kernel {
        Kernel::Reference => {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0i32;
                    for t in 0..k {
                        acc += a[i * k + t] as i32 * b[j * k + t] as i32;
                    }
                    c[i * n + j] = acc;
                }
            }
        }
        Kernel::Fast => {
            let dot = dot_fn();
            c.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
                let ai = &a[i * k..(i + 1) * k];
                for (j, out) in row.iter_mut().enumerate() {
                    *out = dot(ai, &b[j * k..(j + 1) * k]);
                }
            });
        }
    }
    c
}

type DotFn = fn(&[u8], &[i8]) -> i32;

/// The fastest dot product this CPU supports.
fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            return |a, b| unsafe { dot_avx2(a, b) };
        }
    }
    dot_scalar
}

fn dot_scalar(a: &[u8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// AVX2: widen 16 u8 and 16 i8 to i16 and multiply-add pairs into i32 (`vpmaddwd`): exact,
/// unlike `vpmaddubsw`, whose i16 pair sums saturate at 255·127·2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[u8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let k = a.len().min(b.len());
    let mut acc = _mm256_setzero_si256();
    let mut t = 0;
    while t + 16 <= k {
        let va = _mm256_cvtepu8_epi16(_mm_loadu_si128(a.as_ptr().add(t) as *const __m128i));
        let vb = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(t) as *const __m128i));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(va, vb));
        t += 16;
    }
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
    let mut s: i32 = lanes.iter().sum();
    while t < k {
        s += a[t] as i32 * b[t] as i32;
        t += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gemm_equals_reference_bit_for_bit() {
        // Extreme codes included: 255 · 127 pairs would saturate vpmaddubsw.
        let (m, n, k) = (7, 5, 83);
        let a: Vec<u8> = (0..m * k).map(|i| if i % 3 == 0 { 255 } else { ((i * 37) % 256) as u8 }).collect();
        let b: Vec<i8> = (0..n * k).map(|i| if i % 4 == 0 { 127 } else { ((i * 53) % 255) as i32 - 127 } as i8).collect();
        let r = gemm_u8i8(&a, &b, m, n, k, Kernel::Reference);
        let f = gemm_u8i8(&a, &b, m, n, k, Kernel::Fast);
        assert_eq!(r, f);
        assert_eq!(r[0], (0..k).map(|t| a[t] as i32 * b[t] as i32).sum::<i32>());
    }

    #[test]
    fn im2col_pads_with_the_zero_point() {
        // 1 channel 2x2 image, 3x3 kernel, pad 1: the centre tap of position (0,0) is x[0].
        let x = [1u8, 2, 3, 4];
        let cols = im2col(&x, 0, 1, 2, 2, 3, 3, 1, (1, 1), 1, 2, 2, 9);
        assert_eq!(&cols[..9], &[9, 9, 9, 9, 1, 2, 9, 3, 4]);
    }
}
