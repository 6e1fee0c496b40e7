//! Every packed GEMM of the compiled runtimes, in one tree: the blocked driver over any packed
//! weight layout (`blocked`), the SIMD register tiles (`tiles`: f32 FMA and the integer pair and
//! quad tiles), the f32 panels (`f32`), the integer panels and their dispatch (`int8`: the
//! AVX2 pair kernel and the scalar fallback; `vnni`: the quad kernels, AVX-512 VNNI, AVX-VNNI and
//! AVX2's 7-bit kernel; `amx`: the AMX matrix tiles), and the choice of instruction set (`isa`). Training's f32 GEMMs are the
//! `gemm` crate's (`model::conv_op`). Uses `parallel` only.

pub mod amx;
pub mod blocked;
pub mod f32;
pub mod int8;
pub mod isa;
pub mod strided;
pub mod tiles;
pub mod transpose;
pub mod vnni;

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
