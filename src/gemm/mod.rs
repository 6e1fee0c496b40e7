//! The packed GEMMs both the runtimes and training use: the blocked driver over any packed
//! weight layout (`blocked`), the SIMD register tiles (`tiles`: f32 FMA and the integer pair and
//! quad tiles), and the f32 panels (`packed_f32`). The integer panels live with the integer
//! runtime (`runtime::packed`). Uses `parallel` only.

pub mod blocked;
pub mod packed_f32;
pub mod tiles;

/// Packs row-major `w[j·k + t]` (`n × k`, any element type) into panels of `panel` columns
/// holding depth groups of `group` (1 for f32 FMA, pairs for `vpmaddwd`, quads for
/// `vpdpbusd`/`vpmaddubsw`): entry `(j, t)` goes to
/// `[j / panel][t / group][j % panel][t % group]`, the depth rounded up to whole groups; columns
/// past `n` and depth past `k` hold zeros.
pub fn pack_panels<S: Copy, T: Copy + Default>(w: &[S], n: usize, k: usize, group: usize, panel: usize, cast: fn(S) -> T) -> Vec<T> {
    let per_panel = k.div_ceil(group) * group * panel;
    let mut data = vec![T::default(); n.div_ceil(panel) * per_panel];
    for j in 0..n {
        let (p, col) = (j / panel, j % panel);
        for t in 0..k {
            data[p * per_panel + (t / group) * group * panel + col * group + t % group] = cast(w[j * k + t]);
        }
    }
    data
}
