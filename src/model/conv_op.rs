//! 2-d and 1-d convolution as GEMMs over parts of the batch, for training and candle's
//! reference executor. Patches are unfolded tap-major, `cols[K, N·L]` (`K = C·kh·kw` taps
//! ordered like the weight, `L = Ho·Wo` positions per sample), so that, per part of the batch,
//! forward:  `Yᵀ[N·L, O] = colsᵀ · Wᵀ`, written column-major (`Y[O, N·L]`), then per sample and
//! channel a run of `L` into `[N, O, L]`;
//! backward: `dY[O, N·L]` from `[N, O, L]`, `dWᵀ = cols · dYᵀ`, `dcols = Wᵀ · dY`,
//! `dx = col2im(dcols)`, with `N` the part's samples and `dWᵀ` summed over the parts (the
//! GEMMs in `matmul::strided`). The tap-major layout makes every unfold copy and col2im add a
//! whole output row, where candle's own conv runs a small GEMM per sample and a direct-loop
//! transposed conv in backward.

use super::im2col::{fold_tap_major_into, swap_outer, unfold_tap_major, Geom};
use crate::error::Result;
use crate::matmul::strided::{product, product_into, Order, Strided};
use crate::matmul::transpose::columns_to_rows;
use crate::parallel::map_parts;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::Mutex;

/// A new `m×n` row-major matrix `lhs · rhs`, each operand given by its row and column strides
/// (`matmul::strided`: the training GEMMs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(m: usize, n: usize, k: usize, lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], rhs_rs: usize, rhs_cs: usize) -> Vec<f32> {
    matmul_in(Vec::new(), m, n, k, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs)
}

/// [`matmul`] into `dst`'s allocation (its contents are dropped; it grows if too small).
#[allow(clippy::too_many_arguments)]
fn matmul_in(dst: Vec<f32>, m: usize, n: usize, k: usize, lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], rhs_rs: usize, rhs_cs: usize) -> Vec<f32> {
    product_into(dst, m, n, k, Strided::new(lhs, lhs_rs, lhs_cs), Strided::new(rhs, rhs_rs, rhs_cs), Order::RowMajor)
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
///
/// With `groups > 1` each group is its own unfold and GEMMs over its slice of the channels
/// (`g.c` is the channels per group), in group order within a part.
struct Conv {
    g: Geom,
    out_channels: usize,
    groups: usize,
    keep_cols: bool,
    /// Each part's patches (one matrix per group), kept from forward for backward.
    cols: Mutex<Vec<Option<Vec<Vec<f32>>>>>,
}

/// Output positions per part: enough rows for the GEMM to run at speed, few enough that a
/// part's patches stay in its core's cache and that a batch makes parts for every thread.
const PART_ROWS: usize = 512;

impl Conv {
    /// Samples per part: enough for `PART_ROWS` output positions.
    fn part_samples(&self) -> usize {
        PART_ROWS.div_ceil(self.g.l().max(1)).clamp(1, self.g.n.max(1))
    }

    /// The geometry of a part of `ns` samples (one group's channels).
    fn part(&self, ns: usize) -> Geom {
        Geom { n: ns, ..self.g }
    }

    /// Output channels per group.
    fn og(&self) -> usize {
        self.out_channels / self.groups
    }
}

/// Group `gi`'s channels of `ns` samples of `groups · plane_len` values each:
/// `out[s][j] = x[s][gi·plane_len + j]` (borrowed as is when there is one group).
fn group_slice(x: &[f32], ns: usize, groups: usize, plane_len: usize, gi: usize) -> Cow<'_, [f32]> {
    if groups == 1 {
        return Cow::Borrowed(&x[..ns * plane_len]);
    }
    let mut out = Vec::with_capacity(ns * plane_len);
    for s in 0..ns {
        out.extend_from_slice(&x[(s * groups + gi) * plane_len..][..plane_len]);
    }
    Cow::Owned(out)
}

/// `out[s, off + o, q] = y[o, s·L + q]` for `o < og`: one group's product `[Og, ns·L]` into the
/// part's `[ns, O, L]` output, a run of `L` per sample and channel.
fn channel_runs_into(y: &[f32], ns: usize, l: usize, og: usize, o_total: usize, off: usize, out: &mut [MaybeUninit<f32>]) {
    for s in 0..ns {
        for o in 0..og {
            out[(s * o_total + off + o) * l..][..l].write_copy_of_slice(&y[(o * ns + s) * l..][..l]);
        }
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    /// Per part of `ns` samples and per group: `cols = unfold(x_part,group)` (`[K, ns·L]`),
    /// `Yᵀ[ns·L, Og] = colsᵀ·W_groupᵀ` laid out as `[Og, ns·L]`, then per sample and channel
    /// into the group's output channels.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, o, k, l, og) = (&self.g, self.out_channels, self.g.k(), self.g.l(), self.og());
        let (x, w) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (in_len, out_len, ps) = (self.groups * g.c * g.h * g.w, o * l, self.part_samples());
        let mut y: Vec<f32> = Vec::with_capacity(g.n * out_len);
        let cols = map_parts(&mut y.spare_capacity_mut()[..g.n * out_len], ps * out_len, |i, out| {
            let ns = out.len() / out_len;
            let xp = &x[i * ps * in_len..][..ns * in_len];
            (0..self.groups)
                .map(|gi| {
                    let xg = group_slice(xp, ns, self.groups, g.c * g.h * g.w, gi);
                    let cols = unfold_tap_major(&xg, &self.part(ns));
                    let y = product(ns * l, og, k, Strided::new(&cols, 1, ns * l), Strided::new(&w[gi * og * k..], 1, k), Order::ColMajor);
                    channel_runs_into(&y, ns, l, og, o, gi * og, out);
                    cols
                })
                .collect::<Vec<_>>()
        });
        // SAFETY: every part's groups wrote their output channels of its whole chunk, and the
        // chunks cover y.
        unsafe { y.set_len(g.n * out_len) };
        if self.keep_cols {
            *self.cols.lock().expect("conv cols lock") = cols.into_iter().map(Some).collect();
        }
        Ok((CpuStorage::F32(y), Shape::from((g.n, o, g.ho, g.wo))))
    }

    /// Per part and group: `dY[Og, ns·L]` from the group's channels of `[ns, O, L]`,
    /// `dWᵀ_part = cols · dYᵀ`, `dcols = W_groupᵀ · dY`, `dx_group = col2im(dcols)`; then
    /// `dW = (Σ_parts dWᵀ_part)ᵀ` per group.
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, o, k, l, og, groups) = (&self.g, self.out_channels, self.g.k(), self.g.l(), self.og(), self.groups);
        let plane_len = g.c * g.h * g.w;
        let (in_len, out_len, ps) = (groups * plane_len, o * l, self.part_samples());
        let kept: Vec<Mutex<Option<Vec<Vec<f32>>>>> = std::mem::take(&mut *self.cols.lock().expect("conv cols lock")).into_iter().map(Mutex::new).collect();
        let (x_t, w_t, dy_t) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let mut dx: Vec<f32> = Vec::with_capacity(g.n * in_len);
        let dwts = with_f32(&x_t, self.name(), |xs| {
            with_f32(&w_t, self.name(), |ws| {
                with_f32(&dy_t, self.name(), |dys| {
                    map_parts(&mut dx.spare_capacity_mut()[..g.n * in_len], ps * in_len, |i, out| {
                        let ns = out.len() / in_len;
                        let gp = self.part(ns);
                        let xp = &xs[i * ps * in_len..][..ns * in_len];
                        let mut kept = kept.get(i).and_then(|c| c.lock().expect("conv cols lock").take()).map(Vec::into_iter);
                        let nl = ns * l;
                        // All of the part's output-channel gradients, `[O, ns·L]`.
                        let dy_all = swap_outer(&dys[i * ps * out_len..][..ns * out_len], ns, o, l);
                        let mut dwts = Vec::with_capacity(groups);
                        for gi in 0..groups {
                            let cols = kept.as_mut().and_then(Iterator::next).unwrap_or_else(|| unfold_tap_major(&group_slice(xp, ns, groups, plane_len, gi), &gp));
                            let dy = &dy_all[gi * og * nl..][..og * nl];
                            // dWᵀ[K, Og] = cols · dYᵀ: the patches are read where they lie and only
                            // the smaller dY is packed (dW = dY · colsᵀ would pack the patches).
                            dwts.push(matmul(k, og, nl, &cols, nl, 1, dy, 1, nl));
                            // The patch gradient takes the patches' buffer (same size, no longer read).
                            let dcols = matmul_in(cols, k, nl, og, &ws[gi * og * k..], 1, k, dy, nl, 1);
                            if groups == 1 {
                                fold_tap_major_into(dcols, &gp, out);
                                continue;
                            }
                            let mut dxg: Vec<f32> = Vec::with_capacity(ns * plane_len);
                            fold_tap_major_into(dcols, &gp, &mut dxg.spare_capacity_mut()[..ns * plane_len]);
                            // SAFETY: the fold writes every element of its destination.
                            unsafe { dxg.set_len(ns * plane_len) };
                            for s in 0..ns {
                                out[(s * groups + gi) * plane_len..][..plane_len].write_copy_of_slice(&dxg[s * plane_len..][..plane_len]);
                            }
                        }
                        dwts
                    })
                })
            })
        })???;
        // SAFETY: every part's groups wrote their channels of its whole chunk, and the chunks
        // cover dx.
        unsafe { dx.set_len(g.n * in_len) };
        // Per group, the parts' `dWᵀ[K, Og]` summed in part order where they lie, then
        // transposed into the group's rows of `dW[O, K]`.
        let mut parts = dwts.into_iter();
        let Some(mut sums) = parts.next() else {
            // No samples, no parts: a zero gradient.
            return Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), Some(Tensor::zeros(w.dims(), DType::F32, w.device())?)));
        };
        for part in parts {
            for (sum, dwt) in sums.iter_mut().zip(&part) {
                sum.iter_mut().zip(dwt).for_each(|(s, d)| *s += d);
            }
        }
        let mut dw: Vec<f32> = Vec::with_capacity(o * k);
        for (gi, sum) in sums.iter().enumerate() {
            columns_to_rows(sum, og, k, og, &mut dw.spare_capacity_mut()[gi * og * k..(gi + 1) * og * k], k);
        }
        // SAFETY: each group's transpose wrote its og·k entries, and the groups cover o·k.
        unsafe { dw.set_len(o * k) };
        Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), Some(Tensor::from_vec(dw, w.dims(), w.device())?)))
    }
}

/// A 2-d convolution's settings (PyTorch semantics; a 1-d one is one over a height of 1).
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// `(along h, along w)`, as are `pad` and `dil`.
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dil: (usize, usize),
    pub groups: usize,
}

/// `y = conv2d(x, w)`: `x` is `[N, C, H, W]`, `w` `[O, C/groups, kh, kw]`. Groups of one input
/// channel (depthwise) run the direct kernel of `depthwise_op.rs`, since a GEMM of one-channel
/// groups is all overhead; other groups run one unfold and GEMM each. With `train`, the GEMM
/// conv keeps its patches for the backward pass.
pub fn conv2d(x: &Tensor, w: &Tensor, spec: ConvSpec, train: bool) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, cg, kh, kw) = w.dims4()?;
    let g = Geom::new(n, cg, (h, wd), (kh, kw), spec.stride, spec.pad, spec.dil);
    if cg == 1 && spec.groups == c && spec.groups > 1 {
        return super::depthwise_op::depthwise(x, w, Geom { c, ..g });
    }
    let op = Conv { g, out_channels: o, groups: spec.groups, keep_cols: train, cols: Mutex::new(vec![]) };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?)
}

/// `y = conv1d(x, w)`: `x` `[N, C, L]`, `w` `[O, C/groups, k]`, as [`conv2d`] over `[N, C, 1, L]`.
pub fn conv1d(x: &Tensor, w: &Tensor, stride: usize, pad: usize, dil: usize, groups: usize, train: bool) -> Result<Tensor> {
    let (n, c, len) = x.dims3()?;
    let (o, cg, k) = w.dims3()?;
    let y = conv2d(&x.reshape((n, c, 1, len))?, &w.reshape((o, cg, 1, k))?, ConvSpec { stride: (1, stride), pad: (0, pad), dil: (1, dil), groups }, train)?;
    let lo = y.dim(3)?;
    Ok(y.reshape((n, o, lo))?)
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
                let ours = conv2d(x.as_tensor(), w.as_tensor(), ConvSpec { stride: (stride, stride), pad, dil: (dil, dil), groups: 1 }, train).unwrap();
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
                let ours = conv2d(x.as_tensor(), w.as_tensor(), ConvSpec { stride: (1, 1), pad: (1, 1), dil: (1, 1), groups: 1 }, true).unwrap();
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
        let ours = conv2d(&x, &w, ConvSpec { stride: (1, 1), pad: (0, 2), dil: (2, 2), groups: 1 }, false).unwrap();
        let theirs = x.pad_with_zeros(3, 2, 2).unwrap().conv2d(&w, 0, 1, 2, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-4);
    }
}
