//! The compiled step of multi-head attention with a padding mask (`model::text_ops::attention`
//! is the candle form and the oracle): over plain `[N, L, D]` buffers in place, head by head,
//! with no transposed copies. Per sample and head `h` (columns `h·d_h..(h+1)·d_h`):
//! `s_ij = q_i·k_j / √d_h + m_j`, `m_j = f32::MIN` for a padded key (Hugging Face's additive
//! mask), `p_ij = exp(s_ij − max_j s_ij) / Σ_j exp(s_ij − max_j s_ij)`, `y_i = Σ_j p_ij·v_j`.

/// Attention of `q, k, v` (each `[n, l, d]`) under the padding of `ids` (`[n, l]`, token ids
/// as f32; `pad` masked out) with `heads` heads: `[n, l, d]`.
#[allow(clippy::too_many_arguments)] // the three operands, the ids and their geometry
pub(super) fn attention(q: &[f32], k: &[f32], v: &[f32], ids: &[f32], n: usize, l: usize, d: usize, heads: usize, pad: f32) -> Vec<f32> {
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut y = vec![0f32; n * l * d];
    let mut scores = vec![0f32; l];
    for s in 0..n {
        let rows = s * l * d..(s + 1) * l * d;
        let (qs, ks, vs, ys) = (&q[rows.clone()], &k[rows.clone()], &v[rows.clone()], &mut y[rows]);
        let keep: Vec<bool> = ids[s * l..(s + 1) * l].iter().map(|&t| t != pad).collect();
        for h in 0..heads {
            let cols = h * hd..(h + 1) * hd;
            for i in 0..l {
                let qi = &qs[i * d..][cols.clone()];
                for (j, sc) in scores.iter_mut().enumerate() {
                    let kj = &ks[j * d..][cols.clone()];
                    let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    *sc = dot * scale + if keep[j] { 0.0 } else { f32::MIN };
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let yi = &mut ys[i * d..][cols.clone()];
                for (j, &p) in scores.iter().enumerate() {
                    let w = p / sum;
                    yi.iter_mut().zip(&vs[j * d..][cols.clone()]).for_each(|(y, &v)| *y += w * v);
                }
            }
        }
    }
    y
}
