//! The element-wise and data-movement kernels of the compiled plans: global average pooling,
//! the add, ReLU and product steps, concatenation and its inverse (a run of each row), constant
//! padding, two axes swapped, the mean or maximum along one axis, and an embedding's rows.

use super::Value;
use crate::runtime::epilogue::add_relu;

/// `[N, C, spatial…] → [N, C]`: `mean = (Σ_p x[c][p]) · (1/P)`, summed in position order.
pub(super) fn global_avg_pool(v: &Value) -> Value {
    let (n, c) = (v.dims[0], v.dims[1]);
    let s: usize = v.dims[2..].iter().product();
    let mut out = vec![0f32; n * c];
    average_positions(&v.data, c, s, v.channels_last, &mut out);
    Value { data: out, dims: vec![n, c], channels_last: false }
}

crate::wide_f32_fn!(
    /// [`global_avg_pool`]'s sums into `out` (zeroed, `[N, C]`), on the widest vectors the CPU
    /// has: channels-last rows are added position by position across the channels, which the
    /// compiler vectorises; each channel's sum is the same chain of adds at every width.
    fn average_positions(x: &[f32], c: usize, s: usize, channels_last: bool, out: &mut [f32]) => sum_positions
);

#[inline(always)]
fn sum_positions(x: &[f32], c: usize, s: usize, channels_last: bool, out: &mut [f32]) {
    if c * s == 0 {
        return;
    }
    let scale = (1.0 / s as f64) as f32;
    for (src, dst) in x.chunks_exact(c * s).zip(out.chunks_exact_mut(c)) {
        if channels_last {
            for row in src.chunks_exact(c) {
                for (d, &x) in dst.iter_mut().zip(row) {
                    *d += x;
                }
            }
        } else {
            for (d, ch) in dst.iter_mut().zip(src.chunks_exact(s)) {
                *d = ch.iter().sum();
            }
        }
        for d in dst.iter_mut() {
            *d *= scale;
        }
    }
}

/// [`add_relu`] for the add and ReLU steps, compiled for 8-wide vectors where the CPU has AVX2
/// (the arithmetic is the same either way).
pub(super) fn add_relu_in_place(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn wide(a: &mut [f32], b: Option<&[f32]>, relu: bool) {
                add_relu(a, b, relu)
            }
            // SAFETY: the CPU has AVX2.
            return unsafe { wide(a, b, relu) };
        }
    }
    add_relu(a, b, relu)
}

crate::wide_f32_fn!(
    /// `a[i] = a[i] · b[i]`, on the widest vectors the CPU has (one product per value at every
    /// width).
    pub(super) fn mul_in_place(a: &mut [f32], b: &[f32]) => mul_values
);

#[inline(always)]
fn mul_values(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(x, &y)| *x *= y);
}

crate::wide_f32_fn!(
    /// `x[n, c, p] = x[n, c, p] · gate[n, c]` over `x` of `n` samples and `c` channels (channels
    /// last, `[N, P, C]`, when `channels_last`, else `[N, C, P]`), on the widest vectors the CPU
    /// has.
    pub(super) fn scale_channels(x: &mut [f32], gate: &[f32], n: usize, c: usize, channels_last: bool) => scale_values
);

#[inline(always)]
fn scale_values(x: &mut [f32], gate: &[f32], n: usize, c: usize, channels_last: bool) {
    if n * c == 0 {
        return;
    }
    let per_sample = x.len() / n;
    for (xs, g) in x.chunks_exact_mut(per_sample).zip(gate.chunks_exact(c)) {
        match channels_last {
            true => xs.chunks_exact_mut(c).for_each(|row| row.iter_mut().zip(g).for_each(|(v, &k)| *v *= k)),
            false => xs.chunks_exact_mut(per_sample / c).zip(g).for_each(|(plane, &k)| plane.iter_mut().for_each(|v| *v *= k)),
        }
    }
}

/// `out = [in₀ row 0, in₁ row 0, …, in₀ row 1, …]`: `rows` rows, input `i`'s rows `widths[i]`
/// long.
pub(super) fn concat_rows(ins: &[&[f32]], rows: usize, widths: &[usize]) -> Vec<f32> {
    let total: usize = widths.iter().sum();
    let mut out = Vec::with_capacity(rows * total);
    let mut at = 0;
    for (x, &w) in ins.iter().zip(widths) {
        copy_runs(&x[..rows * w], w, 0, w, &mut out.spare_capacity_mut()[..rows * total], total, at);
        at += w;
    }
    // SAFETY: the inputs' runs side by side fill every row.
    unsafe { out.set_len(rows * total) };
    out
}

/// `out[r][j] = x[r·width + from + j]` for `j < len`: the same run of each of the `width`-long
/// rows of `x` (a narrow along an axis whose positions, each `inner` values, make up a row).
pub(super) fn narrow_rows(x: &[f32], width: usize, from: usize, len: usize) -> Vec<f32> {
    let rows = x.len() / width.max(1);
    let mut out = Vec::with_capacity(rows * len);
    copy_runs(&x[..rows * width], width, from, len, &mut out.spare_capacity_mut()[..rows * len], len, 0);
    // SAFETY: every row's run was written.
    unsafe { out.set_len(rows * len) };
    out
}

crate::wide_f32_fn!(
    /// `dst[r·dw + at..][..len] = src[r·sw + from..][..len]` for every row `r` of `src`
    /// (`sw` values each; `dst` holds as many rows of `dw`), in whole vectors and a masked last
    /// one: a narrow or concat of a channels-last value's channels copies runs of a few dozen
    /// values, where a `memcpy` call per run cost more than it moved (a fifth of a
    /// ShuffleNet's batch, value by value a quarter).
    fn copy_runs(src: &[f32], sw: usize, from: usize, len: usize, dst: &mut [std::mem::MaybeUninit<f32>], dw: usize, at: usize) => copy_runs_by::<Lanes>
);

/// [`copy_runs`] in vectors of `V`.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn copy_runs_by<V: crate::model::vmath::Lanes>(src: &[f32], sw: usize, from: usize, len: usize, dst: &mut [std::mem::MaybeUninit<f32>], dw: usize, at: usize) {
    let rows = src.len() / sw.max(1);
    assert!(from + len <= sw && at + len <= dw && rows * dw <= dst.len(), "runs of {len} from {from} of {sw}, to {at} of {dw}");
    let (src, dst) = (src.as_ptr(), dst.as_mut_ptr() as *mut f32);
    // SAFETY: each row's run lies in both rows (the assertion), and the CPU has `V`'s features.
    unsafe {
        for r in 0..rows {
            let (p, q) = (src.add(r * sw + from), dst.add(r * dw + at));
            let mut j = 0;
            while j + V::N <= len {
                V::load(p.add(j)).store(q.add(j));
                j += V::N;
            }
            if j < len {
                V::load_part(p.add(j), len - j).store_part(q.add(j), len - j);
            }
        }
    }
}

/// `x` of dims `dims` (as stored) padded by `(before, after)` on each axis with `value`:
/// `y[i₀ + b₀, i₁ + b₁, …] = x[i₀, i₁, …]`, `value` elsewhere. The axes after the last padded
/// one are as long in `y` as in `x`, so each run over the last padded axis and those after it is
/// one copy (a sample's whole `[L, C]` when only its time axis is padded).
pub(super) fn pad_constant(x: &[f32], dims: &[usize], pads: &[(usize, usize)], value: f32) -> Vec<f32> {
    let out: Vec<usize> = dims.iter().zip(pads).map(|(&d, &(b, e))| d + b + e).collect();
    let mut y = vec![value; out.iter().product()];
    let last = pads.iter().rposition(|&p| p != (0, 0)).unwrap_or(0);
    let run: usize = dims[last..].iter().product();
    if x.is_empty() || run == 0 {
        return y;
    }
    let mut stride = vec![1usize; dims.len()];
    for k in (0..dims.len() - 1).rev() {
        stride[k] = stride[k + 1] * out[k + 1];
    }
    let first: usize = pads.iter().zip(&stride).map(|(p, s)| p.0 * s).sum();
    // The run's index over the axes before `last`, counted like an odometer.
    let mut at = vec![0usize; last];
    for src in x.chunks_exact(run) {
        let start = first + at.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        y[start..start + run].copy_from_slice(src);
        for k in (0..last).rev() {
            at[k] += 1;
            if at[k] < dims[k] {
                break;
            }
            at[k] = 0;
        }
    }
    y
}

/// `x` (logical layout, `dims` with the batch) with full-tensor axes `a < b` swapped: viewed as
/// `[outer, A, mid, B, inner]`, `out[o, j, m, i, r] = x[o, i, m, j, r]`.
pub(super) fn swap_axes(x: &[f32], dims: &[usize], a: usize, b: usize) -> Vec<f32> {
    let (a, b) = (a.min(b), a.max(b));
    let (outer, inner) = (dims[..a].iter().product::<usize>(), dims[b + 1..].iter().product::<usize>());
    let (len_a, len_b, mid) = (dims[a], dims[b], dims[a + 1..b].iter().product::<usize>());
    let mut out = Vec::with_capacity(x.len());
    for o in 0..outer {
        let block = &x[o * len_a * mid * len_b * inner..][..len_a * mid * len_b * inner];
        for j in 0..len_b {
            for m in 0..mid {
                // Single values are gathered: a copy call per value would cost more than it moves.
                match inner {
                    1 => out.extend((0..len_a).map(|i| block[(i * mid + m) * len_b + j])),
                    _ => (0..len_a).for_each(|i| out.extend_from_slice(&block[((i * mid + m) * len_b + j) * inner..][..inner])),
                }
            }
        }
    }
    out
}

/// `x` (`n` samples of `perm.len()` channels) with output channel `j` holding input channel
/// `perm[j]`: in each channels-last row `out[r·C + j] = x[r·C + perm[j]]`, in logical order
/// each sample's planes of `S` values, `out[(s·C + j)·S..] = x[(s·C + perm[j])·S..]`.
pub(super) fn permute_channels(x: &[f32], perm: &[usize], n: usize, channels_last: bool) -> Vec<f32> {
    let c = perm.len();
    let mut out = Vec::with_capacity(x.len());
    match channels_last {
        true => {
            assert!(perm.iter().all(|&p| p < c), "a permutation of {c} channels");
            for row in x.chunks_exact(c) {
                // SAFETY: every `p < c`, the row's length (checked above).
                out.extend(perm.iter().map(|&p| unsafe { *row.get_unchecked(p) }));
            }
        }
        false => {
            let plane = x.len() / (n * c).max(1);
            for sample in x.chunks_exact(c * plane) {
                perm.iter().for_each(|&p| out.extend_from_slice(&sample[p * plane..][..plane]));
            }
        }
    }
    out
}

/// The mean of `x` (logical layout) along full-tensor axis `d`: viewed as `[outer, len, inner]`,
/// `out[o, r] = (Σ_j x[o, j, r]) · (1/len)`, summed in `j` order (candle's mean: a sum, then one
/// product by the reciprocal).
pub(super) fn mean_axis(x: &[f32], dims: &[usize], d: usize) -> Vec<f32> {
    let scale = (1.0 / dims[d] as f64) as f32;
    let mut out = sum_axis(x, dims, d);
    out.iter_mut().for_each(|o| *o *= scale);
    out
}

/// The sum of `x` (logical layout) along full-tensor axis `d`: viewed as `[outer, len, inner]`,
/// `out[o, r] = Σ_j x[o, j, r]`, summed in `j` order.
pub(super) fn sum_axis(x: &[f32], dims: &[usize], d: usize) -> Vec<f32> {
    let (outer, len, inner) = (dims[..d].iter().product::<usize>(), dims[d], dims[d + 1..].iter().product::<usize>());
    if inner == 1 {
        // The last axis: each output is one contiguous run's sum, in order.
        return x.chunks_exact(len.max(1)).map(|run| run.iter().fold(0.0, |s, &v| s + v)).collect();
    }
    let mut out = vec![0f32; outer * inner];
    for (src, dst) in x.chunks_exact((len * inner).max(1)).zip(out.chunks_exact_mut(inner.max(1))) {
        for row in src.chunks_exact(inner.max(1)) {
            dst.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
        }
    }
    out
}

/// The maximum of `x` (logical layout) along full-tensor axis `d`: viewed as `[outer, len,
/// inner]`, `out[o, r] = max_j x[o, j, r]`, a NaN winning (PyTorch's `amax`).
pub(super) fn max_axis(x: &[f32], dims: &[usize], d: usize) -> Vec<f32> {
    let (len, inner) = (dims[d], dims[d + 1..].iter().product::<usize>());
    let max = |m: f32, v: f32| if v > m || v.is_nan() { v } else { m };
    if inner == 1 {
        // The last axis: each output is one contiguous run's maximum.
        return x.chunks_exact(len.max(1)).map(|run| run.iter().fold(run[0], |m, &v| max(m, v))).collect();
    }
    let mut out = Vec::with_capacity(x.len() / len.max(1));
    for src in x.chunks_exact((len * inner).max(1)) {
        let start = out.len();
        out.extend_from_slice(&src[..inner]);
        for row in src.chunks_exact(inner.max(1)).skip(1) {
            out[start..].iter_mut().zip(row).for_each(|(m, &v)| *m = max(*m, v));
        }
    }
    out
}

/// Rows of `table` (`[V, dim]` row-major) at `ids` (integers held as f32): `out[i] =
/// table[ids[i]]`, `[ids.len(), dim]`. An id that is not an integer in `0..V` is an error (the
/// text of it).
pub(super) fn gather_rows(table: &[f32], dim: usize, ids: &[f32]) -> std::result::Result<Vec<f32>, String> {
    let rows = table.len() / dim.max(1);
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        if !(id >= 0.0 && id.fract() == 0.0 && (id as usize) < rows) {
            return Err(format!("token id {id} is not an integer in 0..{rows}"));
        }
        let r = id as usize;
        out.extend_from_slice(&table[r * dim..(r + 1) * dim]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{gather_rows, max_axis, mean_axis, pad_constant, sum_axis};

    #[test]
    fn reductions_along_the_last_axis_and_others_agree_with_their_definition() {
        // [2, 3, 4]: x[o, j, r] = o·100 + j·10 + r, one NaN at [1, 2, 0].
        let mut x: Vec<f32> = (0..2).flat_map(|o| (0..3).flat_map(move |j| (0..4).map(move |r| (o * 100 + j * 10 + r) as f32))).collect();
        x[20] = f32::NAN;
        let dims = [2, 3, 4];
        let at = |o: usize, j: usize, r: usize| x[(o * 3 + j) * 4 + r];
        for d in 1..3 {
            let (len, inner) = (dims[d], dims[d + 1..].iter().product::<usize>());
            let expect = |f: &dyn Fn(&mut dyn Iterator<Item = f32>) -> f32| -> Vec<f32> {
                let outer: usize = dims[..d].iter().product();
                (0..outer)
                    .flat_map(|o| (0..inner).map(move |r| (o, r)))
                    .map(|(o, r)| {
                        let idx = |j: usize| if d == 2 { at(o / 3, o % 3, j) } else { at(o, j, r) };
                        f(&mut (0..len).map(idx))
                    })
                    .collect()
            };
            let same = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            let sums = expect(&|it| it.fold(0.0, |s, v| s + v));
            assert!(same(&sum_axis(&x, &dims, d), &sums), "sum along {d}");
            let scale = (1.0 / len as f64) as f32;
            assert!(same(&mean_axis(&x, &dims, d), &sums.iter().map(|s| s * scale).collect::<Vec<_>>()), "mean along {d}");
            let maxima = expect(&|it| it.fold(f32::NEG_INFINITY, |m, v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v) }));
            assert!(same(&max_axis(&x, &dims, d), &maxima), "max along {d}: {:?} {maxima:?}", max_axis(&x, &dims, d));
        }
    }

    #[test]
    fn gathered_rows_follow_the_ids_and_bad_ids_are_named() {
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        assert_eq!(gather_rows(&table, 2, &[2.0, 0.0, 2.0]).unwrap(), [20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
        for bad in [3.0, -1.0, 1.5, f32::NAN] {
            assert!(gather_rows(&table, 2, &[0.0, bad]).unwrap_err().contains("is not an integer in 0..3"), "{bad}");
        }
    }

    /// Every value lands where its definition puts it, `y[i + b] = x[i]` on each axis, and every
    /// other value is `value`: pads on the last axis, on a middle one only (runs of whole rows)
    /// and on none.
    #[test]
    fn pad_puts_each_value_at_its_index_plus_the_pad() {
        let dims = [2, 3, 4, 5];
        let x: Vec<f32> = (0..dims.iter().product::<usize>()).map(|i| i as f32).collect();
        for pads in [[(0, 0), (1, 2), (0, 0), (3, 1)], [(0, 0), (0, 1), (2, 0), (0, 0)], [(0, 0); 4]] {
            let y = pad_constant(&x, &dims, &pads, -1.0);
            let out: Vec<usize> = dims.iter().zip(&pads).map(|(&d, &(b, e))| d + b + e).collect();
            let mut want = vec![-1.0f32; out.iter().product()];
            for (i, &v) in x.iter().enumerate() {
                let (mut rem, mut at, mut stride) = (i, 0, 1);
                for k in (0..4).rev() {
                    at += (rem % dims[k] + pads[k].0) * stride;
                    rem /= dims[k];
                    stride *= out[k];
                }
                want[at] = v;
            }
            assert_eq!(y, want, "{pads:?}");
        }
    }
}
