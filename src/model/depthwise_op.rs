//! Depthwise convolution (`groups = in_channels`, weight `[m·C, 1, kh, kw]`) as a direct
//! kernel with its backward pass: memory-bound, so a GEMM of one-channel groups would be all
//! overhead. Output channel `o` reads input channel `o / m` (`m` the channel multiplier):
//! forward  `y[s, o, oy, ox] = Σ_{ky,kx} w[o, ky, kx] · x[s, o/m, oy·sh − ph + ky·dh, ox·sw − pw + kx·dw]`;
//! backward `dx[s, c, iy, ix] = Σ w[o, ky, kx] · dy[s, o, oy, ox]` over the `o` of channel `c` and the
//! taps and positions that read `(iy, ix)`, and `dw[o, ky, kx] = Σ_{s, oy, ox} dy[s, o, oy, ox] · x[…]`.
//! Padding is read as 0. Uses `im2col` (geometry), `parallel`.

use super::conv_op::{f32_slice, with_f32};
use super::im2col::{inside, Geom};
use crate::error::Result;
use crate::parallel::{build_chunks, for_chunks, zeroed};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// One kernel tap's reach: output rows `[ylo, yhi)` and columns `[xlo, xhi)` read inside the
/// image, and the input row and column offsets of output `(0, 0)` (may be negative).
struct Tap {
    index: usize,
    ylo: usize,
    yhi: usize,
    xlo: usize,
    xhi: usize,
    dy: isize,
    dx: isize,
}

/// The taps of `g` that read any pixel inside the image.
fn taps(g: &Geom) -> Vec<Tap> {
    let mut v = vec![];
    for ky in 0..g.kh {
        let (ylo, yhi) = inside(g.h, g.ho, g.stride.0, g.ph, ky * g.dil.0);
        for kx in 0..g.kw {
            let (xlo, xhi) = inside(g.w, g.wo, g.stride.1, g.pw, kx * g.dil.1);
            if ylo < yhi && xlo < xhi {
                v.push(Tap { index: ky * g.kw + kx, ylo, yhi, xlo, xhi, dy: (ky * g.dil.0) as isize - g.ph as isize, dx: (kx * g.dil.1) as isize - g.pw as isize });
            }
        }
    }
    v
}

/// Calls `f(o, i, n)` for each output row tap `t` reads inside the image: outputs `o..o + n`
/// read inputs `i, i + sw, …` (`n` of them).
#[inline(always)]
fn for_rows(g: &Geom, t: &Tap, mut f: impl FnMut(usize, usize, usize)) {
    let n = t.xhi - t.xlo;
    for oy in t.ylo..t.yhi {
        let iy = ((oy * g.stride.0) as isize + t.dy) as usize;
        let ix = ((t.xlo * g.stride.1) as isize + t.dx) as usize;
        f(oy * g.wo + t.xlo, iy * g.w + ix, n);
    }
}

/// `out[j] += w·src[j·stride]` for `j < out.len()` (contiguous at stride 1, so it vectorises).
#[inline(always)]
fn axpy(out: &mut [f32], w: f32, src: &[f32], stride: usize) {
    if stride == 1 {
        let n = out.len();
        out.iter_mut().zip(&src[..n]).for_each(|(o, &x)| *o += w * x);
    } else {
        out.iter_mut().zip(src.iter().step_by(stride)).for_each(|(o, &x)| *o += w * x);
    }
}

/// `dst[j·stride] += w·src[j]` for `j < src.len()`.
#[inline(always)]
fn scatter_axpy(dst: &mut [f32], w: f32, src: &[f32], stride: usize) {
    if stride == 1 {
        dst[..src.len()].iter_mut().zip(src).for_each(|(d, &x)| *d += w * x);
    } else {
        dst.iter_mut().step_by(stride).zip(src).for_each(|(d, &x)| *d += w * x);
    }
}

/// `Σ_j a[j]·b[j·stride]` over `j < a.len()`; at stride 1 in eight partial sums (so the
/// reduction vectorises; the order is fixed, so the result does not depend on the machine).
#[inline(always)]
fn dot(a: &[f32], b: &[f32], stride: usize) -> f32 {
    if stride != 1 {
        return a.iter().zip(b.iter().step_by(stride)).map(|(&x, &y)| x * y).sum();
    }
    let b = &b[..a.len()];
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, &y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The op: `g.c` input channels, `out_channels = m·g.c`.
struct Depthwise {
    g: Geom,
    out_channels: usize,
}

impl Depthwise {
    fn multiplier(&self) -> usize {
        self.out_channels / self.g.c
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "conv-depthwise"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, o, m) = (&self.g, self.out_channels, self.multiplier());
        let (x, w) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (plane, l, kk) = (g.h * g.w, g.l(), g.kh * g.kw);
        let taps = taps(g);
        let len = g.n * o * l;
        // SAFETY: each task zeroes its output plane before accumulating into it.
        let y = unsafe {
            build_chunks(len, l, len * kk, |p, out| {
                let out = zeroed(out);
                let (s, oc) = (p / o, p % o);
                let src = &x[(s * g.c + oc / m) * plane..][..plane];
                let wk = &w[oc * kk..][..kk];
                for t in &taps {
                    let wv = wk[t.index];
                    for_rows(g, t, |o, i, n| axpy(&mut out[o..o + n], wv, &src[i..], g.stride.1));
                }
            })
        };
        Ok((CpuStorage::F32(y), Shape::from((g.n, o, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, o, m) = (&self.g, self.out_channels, self.multiplier());
        let (plane, l, kk) = (g.h * g.w, g.l(), g.kh * g.kw);
        let taps = taps(g);
        let work = g.n * o * l * kk;
        let (dx, dw) = with_f32(x, self.name(), |xs| {
            with_f32(w, self.name(), |ws| {
                with_f32(grad, self.name(), |dys| {
                    // dx: one task per input plane, which only its own output channels feed.
                    let mut dx = vec![0f32; g.n * g.c * plane];
                    for_chunks(&mut dx, plane, work, |p, out| {
                        let (s, c) = (p / g.c, p % g.c);
                        for oc in c * m..(c + 1) * m {
                            let dy = &dys[(s * o + oc) * l..][..l];
                            let wk = &ws[oc * kk..][..kk];
                            for t in &taps {
                                let wv = wk[t.index];
                                for_rows(g, t, |o, i, n| scatter_axpy(&mut out[i..], wv, &dy[o..o + n], g.stride.1));
                            }
                        }
                    });
                    // dw: one task per output channel, summing over the samples in order.
                    let mut dw = vec![0f32; o * kk];
                    for_chunks(&mut dw, kk, work, |oc, out| {
                        let c = oc / m;
                        for s in 0..g.n {
                            let dy = &dys[(s * o + oc) * l..][..l];
                            let src = &xs[(s * g.c + c) * plane..][..plane];
                            for t in &taps {
                                let mut acc = 0f32;
                                for_rows(g, t, |o, i, n| acc += dot(&dy[o..o + n], &src[i..], g.stride.1));
                                out[t.index] += acc;
                            }
                        }
                    });
                    (dx, dw)
                })
            })
        })???;
        Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), Some(Tensor::from_vec(dw, w.dims(), w.device())?)))
    }
}

/// `y = conv(x, w)` with one input channel per group: `x` `[N, C, H, W]`, `w` `[m·C, 1, kh, kw]`,
/// `g` the geometry with `g.c = C`.
pub fn depthwise(x: &Tensor, w: &Tensor, g: Geom) -> Result<Tensor> {
    let op = Depthwise { g, out_channels: w.dim(0)? };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::super::op_test_support::{grad_diffs, max_diff, rnd};
    use super::*;
    use candle_core::Var;

    #[test]
    fn matches_candle_grouped_conv_forward_and_backward() {
        // Square inputs and equal paddings: candle's own conv (the comparison) handles those.
        for (mult, stride, pad, dil, k) in [(1, 1, 1, 1, 3), (1, 2, 1, 1, 3), (2, 1, 2, 2, 3), (1, 3, 0, 1, 2), (3, 1, 0, 1, 1)] {
            let x = Var::from_tensor(&rnd(&[3, 4, 7, 7], 1)).unwrap();
            let w = Var::from_tensor(&rnd(&[4 * mult, 1, k, k], 2)).unwrap();
            let g = Geom::new(3, 4, (7, 7), (k, k), (stride, stride), (pad, pad), (dil, dil));
            let ours = depthwise(x.as_tensor(), w.as_tensor(), g).unwrap();
            let theirs = x.as_tensor().conv2d(w.as_tensor(), pad, stride, dil, 4).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-5, "forward at mult {mult} stride {stride} pad {pad} dil {dil}");
            for d in grad_diffs(&ours, &theirs, &rnd(ours.dims(), 3), &[&x, &w]) {
                assert!(d < 1e-4, "backward {d} at mult {mult} stride {stride} pad {pad} dil {dil}");
            }
        }
    }
}
