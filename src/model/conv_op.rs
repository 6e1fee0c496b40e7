//! 2-d convolution (`groups = 1`) as GEMMs over parts of the batch, for training and candle's
//! reference executor. Patches are unfolded tap-major, `cols[K, N·L]` (`K = C·kh·kw` taps
//! ordered like the weight, `L = Ho·Wo` positions per sample), so that, per part of the batch,
//! forward:  `Yᵀ[N·L, O] = colsᵀ · Wᵀ`, then per sample `[L, O] → [O, L]`;
//! backward: `dY[O, N·L]` from `[N, O, L]`, `dWᵀ = cols · dYᵀ`, `dcols = Wᵀ · dY`,
//! `dx = col2im(dcols)`, with `N` the part's samples and `dWᵀ` summed over the parts. (Each
//! GEMM in the orientation the `gemm` crate ran fastest on the ResNet fixture's shapes;
//! bench/README.md.)
//! Candle's built-in conv runs a small GEMM per sample and a direct-loop transposed conv in
//! backward; the tap-major layout makes every unfold copy and col2im add a whole output row
//! (bench/README.md has the measurements).

use super::im2col::{fold_tap_major_into, swap_outer, transpose_batched, transpose_into, unfold_tap_major, Geom};
use crate::error::Result;
use crate::parallel::{map_parts, may_split, PARALLEL_MIN_MACS};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};
use std::sync::Mutex;

/// A new `m×n` row-major matrix `lhs · rhs`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(m: usize, n: usize, k: usize, lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], rhs_rs: usize, rhs_cs: usize) -> Vec<f32> {
    matmul_in(Vec::new(), m, n, k, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs)
}

/// [`matmul`] into `dst`'s allocation (its contents are dropped; it grows if too small).
#[allow(clippy::too_many_arguments)]
fn matmul_in(mut dst: Vec<f32>, m: usize, n: usize, k: usize, lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], rhs_rs: usize, rhs_cs: usize) -> Vec<f32> {
    // Elements a strided `rows × cols` operand spans.
    let reach = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
    dst.clear();
    if m == 0 || n == 0 || k == 0 {
        dst.resize(m * n, 0.0);
        return dst;
    }
    assert!(lhs.len() >= reach(m, k, lhs_rs, lhs_cs) && rhs.len() >= reach(k, n, rhs_rs, rhs_cs));
    // The product overwrites every element (the GEMM does not read `dst`), so the buffer is
    // not zeroed first: that memset was ~1 % of a training epoch.
    dst.reserve(m * n);
    // Small products stay on the calling thread (the bound the integer GEMM uses too).
    let par = match rayon::current_num_threads() {
        t if m * n * k >= PARALLEL_MIN_MACS && may_split() => gemm::Parallelism::Rayon(t),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the assertion above keeps every index the strides reach inside the slices; dst
    // is an empty allocation of at least m·n elements, which the GEMM (read_dst = false) writes
    // without reading.
    unsafe {
        gemm::gemm(m, n, k, dst.as_mut_ptr(), 1, n as isize, false, lhs.as_ptr(), lhs_cs as isize, lhs_rs as isize, rhs.as_ptr(), rhs_cs as isize, rhs_rs as isize, 0.0, 1.0, false, false, false, par);
        dst.set_len(m * n);
    }
    dst
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
///
/// The batch is cut into parts of `part_samples` samples and each part runs unfold, GEMMs and
/// transposes start to finish on one thread (`map_parts`): one fork-join per pass instead of
/// one per step, and each part's patches stay in that core's cache. The parts depend only on
/// the shapes, never on the thread count, so results do not either (`dW` adds the parts'
/// sums in part order).
struct Conv {
    g: Geom,
    out_channels: usize,
    keep_cols: bool,
    /// Each part's patches, kept from forward for backward.
    cols: Mutex<Vec<Option<Vec<f32>>>>,
}

/// Output positions per part. Measured on the ResNet fixture (training epoch, batch 64, median
/// ratio over 8 alternating pairs against one part per batch): 2 threads 128 rows 0.96x,
/// 256 1.10x, 512 1.15x, 1024 1.10x; 1 thread 128 rows 0.91x, 512 0.97x (within noise).
const PART_ROWS: usize = 512;

impl Conv {
    /// Samples per part: enough for `PART_ROWS` output positions.
    fn part_samples(&self) -> usize {
        PART_ROWS.div_ceil(self.g.l().max(1)).clamp(1, self.g.n.max(1))
    }

    /// The geometry of a part of `ns` samples.
    fn part(&self, ns: usize) -> Geom {
        Geom { n: ns, ..self.g }
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    /// Per part of `ns` samples: `cols = unfold(x_part)` (`[K, ns·L]`), `Yᵀ[ns·L, O] = colsᵀ·Wᵀ`,
    /// then per sample `[L, O] → [O, L]`.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, o, k, l) = (&self.g, self.out_channels, self.g.k(), self.g.l());
        let (x, w) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (in_len, out_len, ps) = (g.c * g.h * g.w, o * l, self.part_samples());
        let mut y: Vec<f32> = Vec::with_capacity(g.n * out_len);
        let cols = map_parts(&mut y.spare_capacity_mut()[..g.n * out_len], ps * out_len, |i, out| {
            let ns = out.len() / out_len;
            let cols = unfold_tap_major(&x[i * ps * in_len..][..ns * in_len], &self.part(ns));
            let yt = matmul(ns * l, o, k, &cols, 1, ns * l, w, 1, k);
            transpose_into(&yt, l, o, out);
            cols
        });
        // SAFETY: every part's `transpose_into` wrote its whole chunk, and the chunks cover y.
        unsafe { y.set_len(g.n * out_len) };
        if self.keep_cols {
            *self.cols.lock().expect("conv cols lock") = cols.into_iter().map(Some).collect();
        }
        Ok((CpuStorage::F32(y), Shape::from((g.n, o, g.ho, g.wo))))
    }

    /// Per part: `dY[O, ns·L]` from `[ns, O, L]`, `dWᵀ_part = cols · dYᵀ`,
    /// `dcols = Wᵀ · dY`, `dx_part = col2im(dcols)`; then `dW = (Σ_parts dWᵀ_part)ᵀ`.
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, o, k, l) = (&self.g, self.out_channels, self.g.k(), self.g.l());
        let (in_len, out_len, ps) = (g.c * g.h * g.w, o * l, self.part_samples());
        let kept: Vec<Mutex<Option<Vec<f32>>>> = std::mem::take(&mut *self.cols.lock().expect("conv cols lock")).into_iter().map(Mutex::new).collect();
        let (x_t, w_t, dy_t) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let mut dx: Vec<f32> = Vec::with_capacity(g.n * in_len);
        let dwts = with_f32(&x_t, self.name(), |xs| {
            with_f32(&w_t, self.name(), |ws| {
                with_f32(&dy_t, self.name(), |dys| {
                    map_parts(&mut dx.spare_capacity_mut()[..g.n * in_len], ps * in_len, |i, out| {
                        let ns = out.len() / in_len;
                        let gp = self.part(ns);
                        let kept = kept.get(i).and_then(|c| c.lock().expect("conv cols lock").take());
                        let cols = kept.unwrap_or_else(|| unfold_tap_major(&xs[i * ps * in_len..][..ns * in_len], &gp));
                        let nl = ns * l;
                        let dy = swap_outer(&dys[i * ps * out_len..][..ns * out_len], ns, o, l);
                        // dWᵀ[K, O] = cols · dYᵀ: the gemm crate runs this orientation up to 2x
                        // faster than dW = dY · colsᵀ on these shapes (small O, long N·L).
                        let dwt = matmul(k, o, nl, &cols, nl, 1, &dy, 1, nl);
                        // The patch gradient takes the patches' buffer (same size, no longer read).
                        let dcols = matmul_in(cols, k, nl, o, ws, 1, k, &dy, nl, 1);
                        fold_tap_major_into(dcols, &gp, out);
                        dwt
                    })
                })
            })
        })???;
        // SAFETY: every part's `fold_tap_major_into` wrote its whole chunk, and the chunks cover dx.
        unsafe { dx.set_len(g.n * in_len) };
        let mut dwt = vec![0f32; k * o];
        for part in &dwts {
            dwt.iter_mut().zip(part).for_each(|(s, &v)| *s += v);
        }
        let dw = transpose_batched(&dwt, 1, k, o);
        Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), Some(Tensor::from_vec(dw, w.dims(), w.device())?)))
    }
}

/// `y = conv2d(x, w)` for `groups = 1`. `x` is `[N, C, H, W]`, `w` `[O, C, kh, kw]`. With
/// `train`, the patches are kept for the backward pass.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: (usize, usize), dil: usize, train: bool) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, _, kh, kw) = w.dims4()?;
    let g = Geom::new(n, c, (h, wd), (kh, kw), stride, pad, dil);
    let op = Conv { g, out_channels: o, keep_cols: train, cols: Mutex::new(vec![]) };
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
    fn a_batch_cut_into_parts_matches_candle_and_is_the_same_on_any_thread_count() {
        // 20 samples of 7×7 outputs: parts of ⌈512 / 49⌉ = 11 and 9 samples.
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let x = Var::from_tensor(&rnd(&[20, 3, 7, 7], 6)).unwrap();
                let w = Var::from_tensor(&rnd(&[4, 3, 3, 3], 7)).unwrap();
                let ours = conv2d(x.as_tensor(), w.as_tensor(), 1, (1, 1), 1, true).unwrap();
                let theirs = x.as_tensor().pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap().conv2d(w.as_tensor(), 0, 1, 1, 1).unwrap();
                assert!(max_diff(&ours, &theirs) < 1e-4);
                for d in grad_diffs(&ours, &theirs, &rnd(ours.dims(), 8), &[&x, &w]) {
                    assert!(d < 1e-3, "backward {d} at {threads} threads");
                }
                let g = (&ours * rnd(ours.dims(), 8)).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (flat(&ours), flat(g.get(x.as_tensor()).unwrap()), flat(g.get(w.as_tensor()).unwrap()))
            })
        };
        assert_eq!(run(1), run(2));
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
