//! 2-d convolution (`groups = 1`) as one GEMM over the whole batch, for training and float
//! inference. Patches are unfolded tap-major, `cols[K, N·L]` (`K = C·kh·kw` taps ordered like
//! the weight, `L = Ho·Wo` positions per sample), so that
//! forward:  `Yᵀ[N·L, O] = colsᵀ · Wᵀ`, then per sample `[L, O] → [O, L]`;
//! backward: `dY[O, N·L]` from `[N, O, L]`, `dWᵀ = cols · dYᵀ`, `dcols = Wᵀ · dY`,
//! `dx = col2im(dcols)`. (Each GEMM in the orientation the `gemm` crate ran fastest on the
//! ResNet fixture's shapes; bench/README.md.)
//! Candle's built-in conv runs a small GEMM per sample and a direct-loop transposed conv in
//! backward; the tap-major layout makes every unfold copy and col2im add a whole output row
//! (bench/README.md has the measurements).

use super::im2col::{fold_tap_major, swap_outer, transpose_batched, unfold_tap_major, Geom};
use crate::error::Result;
use crate::parallel::PARALLEL_MIN_MACS;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};
use std::sync::Mutex;

/// `dst[m×n]` (row-major) `= lhs · rhs`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], rhs_rs: usize, rhs_cs: usize) {
    // Elements a strided `rows × cols` operand spans.
    let reach = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    assert!(dst.len() >= m * n && lhs.len() >= reach(m, k, lhs_rs, lhs_cs) && rhs.len() >= reach(k, n, rhs_rs, rhs_cs));
    // Small products stay on the calling thread (the bound the integer GEMM uses too).
    let par = match rayon::current_num_threads() {
        t if t > 1 && m * n * k >= PARALLEL_MIN_MACS => gemm::Parallelism::Rayon(t),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the assertion above keeps every index the strides reach inside the slices, and
    // dst (a &mut) cannot alias the operands.
    unsafe {
        gemm::gemm(m, n, k, dst.as_mut_ptr(), 1, n as isize, false, lhs.as_ptr(), lhs_cs as isize, lhs_rs as isize, rhs.as_ptr(), rhs_cs as isize, rhs_rs as isize, 0.0, 1.0, false, false, false, par);
    }
}

/// The f32 values of a contiguous CPU tensor handed to custom op `op`.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: f32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{op}: contiguous tensors only") };
    Ok(&v[a..b])
}

/// Runs `f` on the f32 values of a CPU tensor without copying them (after making it
/// contiguous, which copies only a strided view).
pub(crate) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*s else { candle_core::bail!("{op}: CPU tensors only") };
    Ok(f(f32_slice(cpu, l, op)?))
}

/// The fused op. im2col and the GEMMs happen inside, so candle's gradient store never holds
/// the large patch matrix. In training the forward pass keeps its patches for the backward
/// pass (which otherwise unfolds the same input again).
struct Conv {
    g: Geom,
    out_channels: usize,
    keep_cols: bool,
    cols: Mutex<Option<Vec<f32>>>,
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, o) = (&self.g, self.out_channels);
        let (x, w) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let nl = g.n * g.l();
        let cols = unfold_tap_major(x, g);
        // Yᵀ[N·L, O] = colsᵀ · Wᵀ, then per sample [L, O] → [O, L].
        let mut yt = vec![0f32; nl * o];
        matmul(nl, o, g.k(), &mut yt, &cols, 1, nl, w, 1, g.k());
        if self.keep_cols {
            *self.cols.lock().expect("conv cols lock") = Some(cols);
        }
        Ok((CpuStorage::F32(transpose_batched(&yt, g.n, g.l(), o)), Shape::from((g.n, o, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, o) = (&self.g, self.out_channels);
        let (k, nl) = (g.k(), g.n * g.l());
        let cols = match self.cols.lock().expect("conv cols lock").take() {
            Some(c) => c,
            None => with_f32(x, self.name(), |x| unfold_tap_major(x, g))?,
        };
        let dy = with_f32(grad, self.name(), |d| swap_outer(d, g.n, o, g.l()))?;
        // dWᵀ[K, O] = cols · dYᵀ, then transposed: the gemm crate runs this orientation up to
        // 2x faster than dW = dY · colsᵀ on these shapes (small O, long N·L).
        let mut dwt = vec![0f32; k * o];
        matmul(k, o, nl, &mut dwt, &cols, nl, 1, &dy, 1, nl);
        let dw = transpose_batched(&dwt, 1, k, o);
        // dcols has the patches' shape and the GEMM overwrites every element: reuse their buffer.
        let mut dcols = cols;
        with_f32(w, self.name(), |w| matmul(k, nl, o, &mut dcols, w, 1, k, &dy, nl, 1))?;
        let dx = fold_tap_major(dcols, g);
        Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), Some(Tensor::from_vec(dw, w.dims(), w.device())?)))
    }
}

/// `y = conv2d(x, w)` for `groups = 1`. `x` is `[N, C, H, W]`, `w` `[O, C, kh, kw]`. With
/// `train`, the patches are kept for the backward pass.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: (usize, usize), dil: usize, train: bool) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, _, kh, kw) = w.dims4()?;
    let g = Geom::new(n, c, (h, wd), (kh, kw), stride, pad, dil);
    let op = Conv { g, out_channels: o, keep_cols: train, cols: Mutex::new(None) };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::super::op_test_support::{grad_diffs, max_diff, rnd};
    use super::*;
    use candle_core::Var;

    #[test]
    fn matches_candle_conv_forward_and_backward() {
        // Square inputs: candle's own conv backward (the comparison) mishandles non-square ones.
        for train in [false, true] {
            for (stride, pad, dil) in [(1, (1, 1), 1), (2, (1, 1), 1), (1, (2, 2), 2), (2, (0, 0), 1)] {
                let x = Var::from_tensor(&rnd(&[3, 4, 7, 7], 1)).unwrap();
                let w = Var::from_tensor(&rnd(&[5, 4, 3, 3], 2)).unwrap();
                let ours = conv2d(x.as_tensor(), w.as_tensor(), stride, pad, dil, train).unwrap();
                let theirs = x.as_tensor().pad_with_zeros(2, pad.0, pad.0).unwrap().pad_with_zeros(3, pad.1, pad.1).unwrap().conv2d(w.as_tensor(), 0, stride, dil, 1).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                assert!(max_diff(&ours, &theirs) < 1e-4, "forward at stride {stride} pad {pad:?} dil {dil}");
                // Same loss, same gradients: Σ y·r for a fixed r.
                for d in grad_diffs(&ours, &theirs, &rnd(ours.dims(), 3), &[&x, &w]) {
                    assert!(d < 1e-3, "backward {d} at stride {stride} pad {pad:?} dil {dil} (train {train})");
                }
            }
        }
    }

    #[test]
    fn unequal_padding_on_a_non_square_input_matches_forward() {
        let x = rnd(&[2, 3, 7, 6], 4);
        let w = rnd(&[4, 3, 3, 2], 5);
        let ours = conv2d(&x, &w, 1, (0, 2), 2, false).unwrap();
        let theirs = x.pad_with_zeros(3, 2, 2).unwrap().conv2d(&w, 0, 1, 2, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-4);
    }
}
