//! Multi-head scaled-dot-product attention, with a padding mask, as a step of the compiled plan
//! (the op `attention`, `model::text_ops::attention` in the executor): for each sample and head
//! `h` (columns `h·e..(h+1)·e` of `q`, `k`, `v [N, L, D]`, `e = D / heads`),
//! `s_ij = s·q_i·k_j + b_hij` (`s` the node's scale, by default `1/√e`) over the keys `j` whose token id is not the pad id (every key
//! when the node has no ids; `b` the optional bias `[H, L, L]`, shared by the samples;
//! `relative_position_bias`),
//! `p_ij = exp(s_ij − max_j s_ij) / Σ_j exp(s_ij − max_j s_ij)` and `out_i = Σ_j p_ij v_j`.
//! The executor adds `f32::MIN` to the scores of padded keys instead, which makes their
//! `exp` exactly 0: the same weights. When every key of a sample is padding, the executor's
//! scores are all `f32::MIN` and its weights uniform; so are these.
//!
//! Per sample and head the kept keys are copied once, `k` transposed to `[e, keys]` and `v` as
//! `[keys, e]` rows, so that both products run as vector multiply-adds along contiguous rows
//! (the scores of one query along the keys, its output along `e`), with no horizontal sums.

use crate::model::arch::RelativePositionBiasCfg;
use crate::model::vmath::{exp, map_in_place, Lanes};

/// The attention output `[N, L, D]` (see the module docs); `ids`, if any, holds each sample's
/// `L` token ids as f32 (without them no key is masked), `bias` the `[H, L, L]` bias, if any.
#[allow(clippy::too_many_arguments)] // three matrices, their shape, the mask and the bias
pub fn attention(q: &[f32], k: &[f32], v: &[f32], ids: Option<&[f32]>, bias: Option<&[f32]>, n: usize, l: usize, d: usize, heads: usize, scale: f32, pad_id: f32) -> Vec<f32> {
    assert!(heads > 0 && d.is_multiple_of(heads) && [q.len(), k.len(), v.len()].iter().all(|&x| x == n * l * d) && ids.is_none_or(|i| i.len() == n * l), "attention operands");
    assert!(bias.is_none_or(|b| b.len() == heads * l * l), "attention bias");
    let mut out = vec![0f32; n * l * d];
    heads_into(q, k, v, ids, bias, (n, l, d), heads, scale, pad_id, &mut out);
    out
}

/// `b[h, i, j] = weight[bucket(i, j), h]` for `L = l` positions (`RelativePositionBiasCfg`;
/// `weight [buckets, H]`): `[H, L, L]`.
pub fn relative_position_bias(weight: &[f32], c: &RelativePositionBiasCfg, l: usize) -> Vec<f32> {
    let h = c.num_heads;
    assert_eq!(weight.len(), c.num_buckets * h, "relative position bias table");
    let mut out = vec![0f32; h * l * l];
    for (pair, bucket) in c.buckets(l).into_iter().enumerate() {
        for (head, &b) in weight[bucket * h..][..h].iter().enumerate() {
            out[head * l * l + pair] = b;
        }
    }
    out
}

crate::wide_f32_fn!(
    /// [`run`] at the CPU's vector width.
    #[allow(clippy::too_many_arguments)]
    fn heads_into(q: &[f32], k: &[f32], v: &[f32], ids: Option<&[f32]>, bias: Option<&[f32]>, shape: (usize, usize, usize), heads: usize, scale: f32, pad_id: f32, out: &mut [f32]) => run::<Lanes>
);

/// Vectors per register block: 4 × 16 lanes cover 64 keys or head dims at a time.
const BLOCK: usize = 4;

/// `acc[c] = Σ_t a[t] · b[t·ldb + c]` for the `NV·V::N` columns `c` of one block, the sums in
/// registers: `a` broadcast, `b`'s rows read once.
///
/// # Safety
/// The CPU has `V`'s features; `b` holds `a.len()` rows of `ldb ≥ NV·V::N` values.
#[inline(always)]
unsafe fn block<V: Lanes, const NV: usize>(a: &[f32], b: *const f32, ldb: usize, acc: *mut f32) {
    let mut s = [V::splat(0.0); NV];
    for (t, &x) in a.iter().enumerate() {
        let xv = V::splat(x);
        for (c, s) in s.iter_mut().enumerate() {
            *s = *s + xv * V::load(b.add(t * ldb + c * V::N));
        }
    }
    for (c, s) in s.iter().enumerate() {
        s.store(acc.add(c * V::N));
    }
}

/// `acc[c] = Σ_t a[t] · b[t·ldb + c]` for every column `c < ldb` (`ldb` a multiple of `V::N`),
/// in blocks of up to [`BLOCK`] vectors.
///
/// # Safety
/// The CPU has `V`'s features; `b` holds `a.len()` rows of `ldb` values, `acc` `ldb` values.
#[inline(always)]
unsafe fn row_times<V: Lanes>(a: &[f32], b: &[f32], ldb: usize, acc: &mut [f32]) {
    debug_assert!(ldb.is_multiple_of(V::N) && b.len() >= a.len() * ldb && acc.len() >= ldb);
    let mut c = 0;
    while c < ldb {
        let (bp, ap) = (b.as_ptr().add(c), acc.as_mut_ptr().add(c));
        match ((ldb - c) / V::N).min(BLOCK) {
            1 => block::<V, 1>(a, bp, ldb, ap),
            2 => block::<V, 2>(a, bp, ldb, ap),
            3 => block::<V, 3>(a, bp, ldb, ap),
            _ => block::<V, BLOCK>(a, bp, ldb, ap),
        }
        c += BLOCK.min((ldb - c) / V::N) * V::N;
    }
}

/// [`attention`] on vectors of `V` into `out`.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run<V: Lanes>(q: &[f32], k: &[f32], v: &[f32], ids: Option<&[f32]>, bias: Option<&[f32]>, (n, l, d): (usize, usize, usize), heads: usize, scale: f32, pad_id: f32, out: &mut [f32]) {
    let e = d / heads;
    // Keys and head dims rounded up to whole vectors: the lanes past them hold whatever an
    // earlier head left (finite values of `k`, `v` or zeros), and their sums are dropped.
    let (lp, ep) = (l.div_ceil(V::N) * V::N, e.div_ceil(V::N) * V::N);
    let (mut kt, mut vh, mut w, mut o) = (vec![0f32; e * lp], vec![0f32; l * ep], vec![0f32; lp], vec![0f32; ep]);
    for sample in 0..n {
        let mut keys: Vec<usize> = (0..l).filter(|&j| ids.is_none_or(|ids| ids[sample * l + j] != pad_id)).collect();
        let none_kept = keys.is_empty();
        if none_kept {
            keys = (0..l).collect();
        }
        let (nk, nkp) = (keys.len(), keys.len().div_ceil(V::N) * V::N);
        // Head `h`'s columns of position `j` of this sample.
        let at = |j: usize, h: usize| (sample * l + j) * d + h * e..(sample * l + j) * d + (h + 1) * e;
        for h in 0..heads {
            for (c, &j) in keys.iter().enumerate() {
                for (t, &x) in k[at(j, h)].iter().enumerate() {
                    kt[t * nkp + c] = x;
                }
                vh[c * ep..c * ep + e].copy_from_slice(&v[at(j, h)]);
            }
            for i in 0..l {
                if none_kept {
                    w[..nk].fill(1.0);
                } else {
                    row_times::<V>(&q[at(i, h)], &kt, nkp, &mut w);
                    // With a bias the scores are scaled and biased here, so the exponent's scale is 1.
                    let scale = match bias {
                        Some(b) => {
                            let b = &b[(h * l + i) * l..][..l];
                            for (x, &j) in w.iter_mut().zip(&keys) {
                                *x = *x * scale + b[j];
                            }
                            1.0
                        }
                        None => scale,
                    };
                    let max = w[..nk].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                    // An `#[inline(always)]` closure inlines into the caller's instruction set.
                    map_in_place::<V, _>(
                        &mut w[..nk],
                        #[inline(always)]
                        |x: V| exp(x * V::splat(scale) - V::splat(max)),
                    );
                }
                let sum: f32 = w[..nk].iter().sum();
                w[..nk].iter_mut().for_each(|x| *x /= sum);
                row_times::<V>(&w[..nk], &vh, ep, &mut o);
                out[at(i, h)].copy_from_slice(&o[..e]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::AttentionCfg;
    use candle_core::{Device, Tensor};

    /// The compiled kernel equals the executor's op (`model::text_ops::attention`) up to
    /// summation order, at widths that are no multiple of the vector lanes (head dims of 6 and
    /// 20, 21 positions), with padded keys, a sample without padding and one all padding, without
    /// and with a relative position bias.
    #[test]
    fn matches_the_executor() {
        for (heads, d) in [(2, 12), (3, 60)] {
            let (n, l, pad) = (3, 21, 0.0f32);
            let val = |seed: usize| (0..n * l * d).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 250.0) - 2.0).collect::<Vec<f32>>();
            let (q, k, v) = (val(1), val(2), val(3));
            // Sample 0: the last 8 ids are padding; sample 1: none; sample 2: all.
            let ids: Vec<f32> = (0..n * l)
                .map(|i| match (i / l, i % l) {
                    (0, j) if j >= l - 8 => pad,
                    (2, _) => pad,
                    _ => 1.0 + (i % 5) as f32,
                })
                .collect();
            // 8 buckets, 2 exact per sign: positions 2 to 20 apart share log-spaced buckets.
            let rel = RelativePositionBiasCfg { num_buckets: 8, max_distance: 16, num_heads: heads };
            let table: Vec<f32> = (0..8 * heads).map(|i| ((i * 37) % 17) as f32 / 4.0 - 2.0).collect();
            for biased in [false, true] {
                let b = biased.then(|| relative_position_bias(&table, &rel, l));
                let cfg = AttentionCfg { num_heads: heads, pad_id: 0, scale: (heads == 3).then_some(0.2) };
                let got = attention(&q, &k, &v, Some(&ids), b.as_deref(), n, l, d, heads, cfg.score_scale(d) as f32, pad);
                let t = |x: &[f32]| Tensor::from_slice(x, (n, l, d), &Device::Cpu).unwrap();
                let ids_t = Tensor::from_slice(&ids, (n, l), &Device::Cpu).unwrap();
                let b_t = biased.then(|| crate::model::text_ops::relative_position_bias(&ids_t, &Tensor::from_slice(&table, (8, heads), &Device::Cpu).unwrap(), &rel).unwrap());
                let want = crate::model::text_ops::attention(&t(&q), &t(&k), &t(&v), Some(&ids_t), b_t.as_ref(), &cfg);
                let want: Vec<f32> = want.unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "heads {heads}, d {d}, bias {biased}: {worst}");
            }
        }
    }

    /// The buckets of MPNet's 32 buckets and distance 128 start where PyTorch's
    /// `MPNetEncoder.relative_position_bucket` (transformers 5.24) starts them, for keys before
    /// (`i > j`) and after the query: `|i − j|` below 8, then 8 at 8, 9 at 12, 10 at 16, 11 at
    /// 23, 12 at 32, 13 at 46, 14 at 64, 15 from 91 on; 16 more for keys after.
    #[test]
    fn mpnet_buckets_match_pytorch() {
        let c = RelativePositionBiasCfg { num_buckets: 32, max_distance: 128, num_heads: 1 };
        let starts = [(8, 8), (12, 9), (16, 10), (23, 11), (32, 12), (46, 13), (64, 14), (91, 15)];
        for m in 0..300usize {
            let want = if m < 8 { m } else { starts.iter().rev().find(|s| m >= s.0).unwrap().1 };
            assert_eq!(c.bucket(m + 5, 5), want, "key {m} before");
            assert_eq!(c.bucket(5, m + 5), if m == 0 { 0 } else { 16 + want }, "key {m} after");
        }
    }
}
