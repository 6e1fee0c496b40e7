//! 2-d convolution as one GEMM, for speed in training and float inference: `im2col` unfolds the
//! input into patches `[N·L, K]` (`L = Ho·Wo` positions, `K = C·kh·kw` taps ordered like the
//! weight), then `Yᵀ = cols · Wᵀ` is a single matrix product over all `N·L` rows (the `gemm`
//! crate candle itself uses). Backward is two more GEMMs and `col2im` (the adjoint of im2col:
//! each patch gradient is added back to the pixels it read). Candle's built-in conv runs a
//! small GEMM per sample and a direct-loop transposed conv in backward; this path is several
//! times faster on these shapes (see bench/README.md).

use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of one unfolding.
#[derive(Debug, Clone, Copy)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub ph: usize,
    pub pw: usize,
    pub dil: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// Taps per position: `C·kh·kw`.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output positions: `Ho·Wo`.
    pub fn l(&self) -> usize {
        self.ho * self.wo
    }
}

/// Calls `f(t, i)` for every tap `t` of position `(oy, ox)` that reads input pixel `i` (taps in
/// the zero padding are skipped). Row and column offsets are computed once per kernel row.
#[inline(always)]
pub fn for_taps(g: &Geom, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    let (h, w) = (g.h as isize, g.w as isize);
    let y0 = (oy * g.stride) as isize - g.ph as isize;
    let x0 = (ox * g.stride) as isize - g.pw as isize;
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let iy = y0 + (ky * g.dil) as isize;
            if iy < 0 || iy >= h {
                continue;
            }
            let base = (ci * g.h + iy as usize) * g.w;
            let t0 = (ci * g.kh + ky) * g.kw;
            for kx in 0..g.kw {
                let ix = x0 + (kx * g.dil) as isize;
                if ix >= 0 && ix < w {
                    f(t0 + kx, base + ix as usize);
                }
            }
        }
    }
}

/// Writes the patch of position `(oy, ox)` into `row` (`K` values; padding taps are left as
/// they are). With dilation 1 each kernel row is one contiguous run of the input, copied whole.
#[inline]
pub fn patch_row<T: Copy>(g: &Geom, x: &[T], oy: usize, ox: usize, row: &mut [T]) {
    if g.dil != 1 {
        for_taps(g, oy, ox, |t, i| row[t] = x[i]);
        return;
    }
    let (h, w) = (g.h as isize, g.w as isize);
    let y0 = (oy * g.stride) as isize - g.ph as isize;
    let x0 = (ox * g.stride) as isize - g.pw as isize;
    // Kernel columns inside the image: kx in [lo, hi).
    let lo = (-x0).clamp(0, g.kw as isize) as usize;
    let hi = (w - x0).clamp(0, g.kw as isize) as usize;
    if lo >= hi {
        return;
    }
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let iy = y0 + ky as isize;
            if iy < 0 || iy >= h {
                continue;
            }
            let src = (ci * g.h + iy as usize) * g.w + (x0 + lo as isize) as usize;
            let t0 = (ci * g.kh + ky) * g.kw;
            // Kernel rows are short: spelled-out moves for up to 3 taps (a copy loop would be
            // turned into a memmove call, which costs more than the copy).
            let (d, s) = (&mut row[t0 + lo..t0 + hi], &x[src..src + (hi - lo)]);
            match d.len() {
                1 => d[0] = s[0],
                2 => {
                    d[0] = s[0];
                    d[1] = s[1];
                }
                3 => {
                    d[0] = s[0];
                    d[1] = s[1];
                    d[2] = s[2];
                }
                _ => d.copy_from_slice(s),
            }
        }
    }
}

/// `[n, a, b] → [n, b, a]`: per sample, `out[j][i] = x[i][j]` (channels first ↔ channels last).
pub fn transpose_batched(x: &[f32], n: usize, a: usize, b: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (src, dst) in x.chunks(a * b).zip(out.chunks_mut(a * b)).take(n) {
        for i in 0..a {
            for j in 0..b {
                dst[j * a + i] = src[i * b + j];
            }
        }
    }
    out
}

fn unfold(x: &[f32], g: &Geom) -> Vec<f32> {
    let (k, l, plane) = (g.k(), g.l(), g.c * g.h * g.w);
    let mut out = vec![0f32; g.n * l * k];
    out.par_chunks_mut(l * k).enumerate().for_each(|(s, o)| {
        let xs = &x[s * plane..(s + 1) * plane];
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                patch_row(g, xs, oy, ox, &mut o[(oy * g.wo + ox) * k..(oy * g.wo + ox + 1) * k]);
            }
        }
    });
    out
}

/// The adjoint of `unfold`: `dx[pixel] = Σ over (position, tap) reading it of dcols`.
fn fold(cols: &[f32], g: &Geom) -> Vec<f32> {
    let (k, l, plane) = (g.k(), g.l(), g.c * g.h * g.w);
    let mut out = vec![0f32; g.n * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(s, o)| {
        let cs = &cols[s * l * k..(s + 1) * l * k];
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let row = &cs[(oy * g.wo + ox) * k..(oy * g.wo + ox + 1) * k];
                for_taps(g, oy, ox, |t, i| o[i] += row[t]);
            }
        }
    });
    out
}

/// `dst[m×n]` (row-major) `= lhs · rhs`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], rhs_rs: usize, rhs_cs: usize) {
    debug_assert!(dst.len() >= m * n);
    let par = match rayon::current_num_threads() {
        1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: every index the strides reach lies inside the slices (m·n, m·k and k·n elements
    // laid out as described), and dst does not alias the operands.
    unsafe {
        gemm::gemm(m, n, k, dst.as_mut_ptr(), 1, n as isize, false, lhs.as_ptr(), lhs_cs as isize, lhs_rs as isize, rhs.as_ptr(), rhs_cs as isize, rhs_rs as isize, 0.0, 1.0, false, false, false, par);
    }
}

/// The fused convolution op: im2col and the GEMMs happen inside, so candle's gradient store
/// never holds the large patch matrix (accumulating its gradient was a quarter of training time).
/// Forward: `Yᵀ[NL, O] = cols[NL, K] · Wᵀ`. Backward: `dW = dYᵀᵀ · cols`,
/// `dcols = dYᵀ · W`, `dx = col2im(dcols)`.
struct Conv(Geom, usize);

/// The f32 values of a contiguous CPU tensor handed to custom op `op`.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: f32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{op}: contiguous tensors only") };
    Ok(&v[a..b])
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, o) = (&self.0, self.1);
        let (x, w) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (k, l) = (g.k(), g.l());
        let cols = unfold(x, g);
        let mut yt = vec![0f32; g.n * l * o];
        matmul(g.n * l, o, k, &mut yt, &cols, k, 1, w, 1, k);
        let y = transpose_batched(&yt, g.n, l, o);
        Ok((CpuStorage::F32(y), Shape::from((g.n, o, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, o) = (&self.0, self.1);
        let (k, l) = (g.k(), g.l());
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let ws: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let dy: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let dyt = transpose_batched(&dy, g.n, o, l);
        let cols = unfold(&xs, g);
        let mut dw = vec![0f32; o * k];
        matmul(o, k, g.n * l, &mut dw, &dyt, 1, o, &cols, k, 1);
        let mut dcols = vec![0f32; g.n * l * k];
        matmul(g.n * l, k, o, &mut dcols, &dyt, o, 1, &ws, k, 1);
        let dx = fold(&dcols, g);
        Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), Some(Tensor::from_vec(dw, w.dims(), w.device())?)))
    }
}

/// `y = conv2d(x, w)` for `groups = 1` as im2col + one GEMM. `x` is `[N, C, H, W]`, `w`
/// `[O, C, kh, kw]`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: (usize, usize), dil: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, _, kh, kw) = w.dims4()?;
    let out = |len: usize, k: usize, p: usize| (len + 2 * p - dil * (k - 1) - 1) / stride + 1;
    let g = Geom { n, c, h, w: wd, kh, kw, stride, ph: pad.0, pw: pad.1, dil, ho: out(h, kh, pad.0), wo: out(wd, kw, pad.1) };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Conv(g, o))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_candle_conv_forward_and_backward() {
        // Square inputs: candle's own conv backward (the comparison) mishandles non-square ones.
        for (stride, pad, dil) in [(1, (1, 1), 1), (2, (1, 1), 1), (1, (2, 2), 2), (2, (0, 0), 1)] {
            let x = Var::from_tensor(&rnd(&[3, 4, 7, 7], 1)).unwrap();
            let w = Var::from_tensor(&rnd(&[5, 4, 3, 3], 2)).unwrap();
            let ours = conv2d(x.as_tensor(), w.as_tensor(), stride, pad, dil).unwrap();
            let theirs = x.as_tensor().pad_with_zeros(2, pad.0, pad.0).unwrap().pad_with_zeros(3, pad.1, pad.1).unwrap().conv2d(w.as_tensor(), 0, stride, dil, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let d = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "forward {d}");
            // Same loss, same gradients: Σ y·r for a fixed r.
            let r = rnd(ours.dims(), 3);
            let ga = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w] {
                let a = ga.get(v.as_tensor()).unwrap();
                let b = gb.get(v.as_tensor()).unwrap();
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-3, "backward {d} at stride {stride} pad {pad:?} dil {dil}");
            }
        }
    }

    #[test]
    fn unequal_padding_on_a_non_square_input_matches_forward() {
        let x = rnd(&[2, 3, 7, 6], 4);
        let w = rnd(&[4, 3, 3, 2], 5);
        let ours = conv2d(&x, &w, 1, (0, 2), 2).unwrap();
        let theirs = x.pad_with_zeros(3, 2, 2).unwrap().conv2d(&w, 0, 1, 2, 1).unwrap();
        let d = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        // <unfold(x), c> = <x, fold(c)> for any x, c.
        let g = Geom { n: 2, c: 3, h: 5, w: 4, kh: 3, kw: 2, stride: 2, ph: 1, pw: 1, dil: 1, ho: 3, wo: 3 };
        let x: Vec<f32> = (0..2 * 3 * 5 * 4).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let c: Vec<f32> = (0..2 * 9 * 18).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        let lhs: f32 = unfold(&x, &g).iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&fold(&c, &g)).map(|(a, b)| a * b).sum();
        assert_eq!(lhs, rhs);
    }
}
