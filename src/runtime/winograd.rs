//! 3×3 convs of stride 1 (one group, not dilated) on the compiled float runtime as Winograd's
//! F(2×2, 3×3) (Lavin & Gray, 2016): each 2×2 block of outputs from its 4×4 input tile `d` as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, summed over the input channels. The products `⊙` of all
//! tiles are 16 GEMMs (one per tile entry `ξ`) of the transformed tiles `V_ξ = (Bᵀ d B)_ξ`,
//! `[tiles, C]`, by the transformed weights `U_ξ = (G g Gᵀ)_ξ`, `[O, C]`: 16·C·O multiply-adds
//! per 4 outputs where the direct conv takes 36·C·O. The transforms are additions, vectorised
//! across channels. The sums are associated differently from the direct conv's, so the outputs
//! differ from it by rounding (tested against the definition within a relative 1e-5).
//!
//! `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`,
//! `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`, `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`.

use super::epilogue::{finish_tile, FinishRow};
use super::layout::ConvShape;
use crate::matmul::blocked::{gemm, Rows};
use crate::matmul::f32::PackedF32;
use crate::model::vmath::{over_row, Lanes};

/// The fewest input and output channels taken: the GEMMs here are `C` deep, and with fewer
/// channels the transforms' additions, `O(C + O)` a tile, weigh more against the `16·C·O`
/// multiply-adds; 16 keeps every transform a whole vector wide.
pub const MIN_CHANNELS: usize = 16;

/// The fewest tiles (2×2 output blocks, over the batch) a conv runs here with: each of the 16
/// GEMMs has one row a tile, and with fewer rows their calls and the transforms cost more than
/// the multiply-adds saved (`digits_resnet` at batch 1, all three sizes of its convs here:
/// 0.056 ms against 0.038 direct; `bench/README.md`).
pub const MIN_TILES: usize = 64;

/// Whether a conv runs here: 3×3, stride 1, not dilated, one group, at least
/// [`MIN_CHANNELS`] in and out.
pub fn applies(g: &ConvShape) -> bool {
    (g.kh, g.kw) == (3, 3) && g.stride == (1, 1) && g.dil == (1, 1) && g.groups == 1 && g.c >= MIN_CHANNELS && g.o >= MIN_CHANNELS
}

/// A conv's transformed weights, one packed `[O, C]` matrix per tile entry.
pub struct Winograd {
    g: ConvShape,
    packed: Vec<PackedF32>,
}

impl Winograd {
    /// Transforms row-major weights `[O, C, 3, 3]`: `U = G g Gᵀ` for each `(o, c)`, computed in
    /// f64 and rounded once.
    pub fn new(g: &ConvShape, weight: &[f32]) -> Winograd {
        assert!(applies(g) && weight.len() == g.o * g.c * 9, "a 3×3 conv's weights");
        const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        let mut u = vec![vec![0f32; g.o * g.c]; 16];
        for (oc, w) in weight.chunks_exact(9).enumerate() {
            for (i, gi) in G.iter().enumerate() {
                for (j, gj) in G.iter().enumerate() {
                    let mut v = 0f64;
                    for (a, &ga) in gi.iter().enumerate() {
                        for (b, &gb) in gj.iter().enumerate() {
                            v += ga * f64::from(w[a * 3 + b]) * gb;
                        }
                    }
                    u[i * 4 + j][oc] = v as f32;
                }
            }
        }
        Winograd { g: *g, packed: u.iter().map(|u| PackedF32::pack(u, g.o, g.c)).collect() }
    }

    /// Whether `n` samples make enough tiles ([`MIN_TILES`]) for the transforms to pay.
    pub fn pays(&self, n: usize) -> bool {
        n * self.g.ho.div_ceil(2) * self.g.wo.div_ceil(2) >= MIN_TILES
    }

    /// Runs on channels-last `x` (`n` samples), padding reading 0; `finish` writes each output
    /// row (one position's channels) from its sums, as after the GEMM. Returns `[n·Ho·Wo, O]`.
    pub fn run<F: FinishRow<f32, f32> + Sync>(&self, x: &[f32], n: usize, finish: &F) -> Vec<f32> {
        let g = &self.g;
        let (c, o) = (g.c, g.o);
        assert!(x.len() == n * g.h * g.w * c, "conv input of {} values", x.len());
        let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
        let mut y: Vec<f32> = Vec::with_capacity(n * g.ho * g.wo * o);
        let out = &mut y.spare_capacity_mut()[..n * g.ho * g.wo * o];
        // Whole tile rows at a time, as many as keep the transformed tiles and their products
        // (16 · (C + O) values a tile) within about half the L2 cache.
        let budget = crate::matmul::blocked::l2_bytes() / 2 / (16 * (c + o) * size_of::<f32>());
        let rows_at_once = (budget / tw).clamp(1, n * th);
        let (mut v, mut m, mut plane) = SCRATCH.with_borrow_mut(std::mem::take);
        v.resize(16 * rows_at_once * tw * c, 0.0);
        m.resize(16 * rows_at_once * tw * o, 0.0);
        // Zeroed once: each sample then overwrites only the interior.
        let (hp, wp) = plane_dims(g);
        plane.clear();
        plane.resize(hp * wp * c, 0.0);
        // Two output rows of a tile row, staged for the epilogue.
        let mut stage = vec![0f32; 2 * g.wo * o];
        let mut first = 0;
        while first < n * th {
            let rows = rows_at_once.min(n * th - first);
            let tiles = rows * tw;
            transform_input(g, x, &mut plane, first, rows, &mut v[..16 * tiles * c]);
            let m = &mut m[..16 * tiles * o];
            for (xi, p) in self.packed.iter().enumerate() {
                // Entry ξ of every tile: rows `16·C` apart in `v`, products into columns
                // `ξ·O..(ξ + 1)·O` of rows `16·O` long in `m`.
                let a = &v[xi * c..16 * tiles * c];
                gemm(&Rows::Slice { a, lda: 16 * c }, tiles, p, m, 16 * o, &|acc: &[f32], stride: usize, _first: usize, out: &mut [f32]| {
                    for (r, dst) in out.chunks_exact_mut(16 * o).enumerate() {
                        dst[xi * o..(xi + 1) * o].copy_from_slice(&acc[r * stride..r * stride + o]);
                    }
                });
            }
            for r in 0..rows {
                let (s, ty) = ((first + r) / th, (first + r) % th);
                // Output rows 2·ty and (when there is one) 2·ty + 1 of sample `s`: adjacent in
                // the output, so one epilogue call finishes both.
                let count = (g.ho - 2 * ty).min(2);
                transform_output(g, &m[r * tw * 16 * o..(r + 1) * tw * 16 * o], count, &mut stage);
                let at = (s * g.ho + 2 * ty) * g.wo;
                finish_tile(finish, &stage[..count * g.wo * o], o, at, o, 0, o, &mut out[at * o..(at + count * g.wo) * o]);
            }
            first += rows;
        }
        SCRATCH.with_borrow_mut(|kept| *kept = (v, m, plane));
        // SAFETY: every tile row's epilogue wrote its output rows, and the tile rows cover them.
        unsafe { y.set_len(n * g.ho * g.wo * o) };
        y
    }
}

/// The padded plane's rows and columns: those of every window, rows `2·ty..2·ty + 4` and
/// columns `2·tx..2·tx + 4`, which cover the input at offset `pad` (and its padding after).
fn plane_dims(g: &ConvShape) -> (usize, usize) {
    let (hp, wp) = (2 * g.ho.div_ceil(2) + 2, 2 * g.wo.div_ceil(2) + 2);
    assert!(g.pad.0 + g.h <= hp && g.pad.1 + g.w <= wp, "{g:?}");
    (hp, wp)
}

thread_local! {
    /// Each thread's transformed tiles, products and padded plane, kept between calls:
    /// zero-filling fresh ones took 8 % of a ResNet's batch.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

crate::wide_f32_fn!(
    /// `v[t, ξ, c] = (Bᵀ d B)_ξ` for the tiles of tile rows `first..first + rows` (`t` counting
    /// from the first), `d` the 4×4 input window at row `2·ty − pad`, column `2·tx − pad` of
    /// channel `c` (0 outside the input). Tile-major, so that a tile's 16 entries are written
    /// together (16 matrices one after another, each a multiple of 4 KiB long, put every entry's
    /// store in the same L1 set). Each sample is first copied into the interior of `plane`
    /// (`plane_dims`, its border zero), so that every window lies in it.
    fn transform_input(g: &ConvShape, x: &[f32], plane: &mut [f32], first: usize, rows: usize, v: &mut [f32]) => input_tiles::<Lanes>
);

/// [`transform_input`] on vectors of `V` across the channels.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn input_tiles<V: Lanes>(g: &ConvShape, x: &[f32], plane: &mut [f32], first: usize, rows: usize, v: &mut [f32]) {
    let (c, th, tw) = (g.c, g.ho.div_ceil(2), g.wo.div_ceil(2));
    let (hp, wp) = plane_dims(g);
    let tiles = rows * tw;
    assert!(v.len() == 16 * tiles * c && plane.len() == hp * wp * c);
    let vp = v.as_mut_ptr();
    let mut sample = usize::MAX;
    for r in 0..rows {
        let (s, ty) = ((first + r) / th, (first + r) % th);
        if s != sample {
            // Only the interior: the border stays as `run` zeroed it.
            sample = s;
            for (iy, line) in x[s * g.h * g.w * c..(s + 1) * g.h * g.w * c].chunks_exact(g.w * c).enumerate() {
                let at = ((iy + g.pad.0) * wp + g.pad.1) * c;
                plane[at..at + g.w * c].copy_from_slice(line);
            }
        }
        for tx in 0..tw {
            let t = r * tw + tx;
            // Pixel `k = 4i + j` of the window at `i·Wp·C + j·C` from its first.
            let src = plane[(2 * ty * wp + 2 * tx) * c..].as_ptr();
            let at = |k: usize| ((k / 4) * wp + k % 4) * c;
            // SAFETY: the window's last pixel, row `2·ty + 3 < hp` and column `2·tx + 3 < wp`,
            // lies in the plane; `v` holds `tiles` tiles of `16 · c`, and `t < tiles`; the
            // caller's CPU features.
            unsafe {
                over_row!(
                    V,
                    c,
                    |c0| input_tile::<V, _>(|k| src.add(at(k) + c0), vp.add(16 * t * c + c0), c),
                    input_tile::<V::Half, _>(|k| src.add(at(k) + c0), vp.add(16 * t * c + c0), c),
                    input_tile::<f32, _>(|k| src.add(at(k) + c0), vp.add(16 * t * c + c0), c)
                )
            }
        }
    }
}

/// One tile's `Bᵀ d B` for `W::N` channels, pixel `k = 4i + j` of the window at `pixel(k)`:
/// rows first (`t₀ = d₀ − d₂`, `t₁ = d₁ + d₂`, `t₂ = d₂ − d₁`, `t₃ = d₁ − d₃`), then the same
/// across each row's columns; entry `ξ = 4i + j` goes to `out + ξ·step`.
///
/// # Safety
/// Every `pixel(k)` holds `W::N` values, `out + 15·step` too; the CPU has `W`'s features.
#[inline(always)]
unsafe fn input_tile<W: Lanes, P: Fn(usize) -> *const f32>(pixel: P, out: *mut f32, step: usize) {
    // SAFETY: the caller's.
    unsafe {
        let d: [W; 16] = std::array::from_fn(|k| W::load(pixel(k)));
        let at = |i: usize, j: usize| d[4 * i + j];
        // `t[i][j] = (Bᵀ d)[i][j]`.
        let t: [[W; 4]; 4] =
            [std::array::from_fn(|j| at(0, j) - at(2, j)), std::array::from_fn(|j| at(1, j) + at(2, j)), std::array::from_fn(|j| at(2, j) - at(1, j)), std::array::from_fn(|j| at(1, j) - at(3, j))];
        for (i, &[a, b, e, f]) in t.iter().enumerate() {
            for (j, val) in [a - e, b + e, e - b, b - f].into_iter().enumerate() {
                val.store(out.add((4 * i + j) * step));
            }
        }
    }
}

crate::wide_f32_fn!(
    /// The output rows of one tile row from its tiles' products `m` (`[⌈Wo/2⌉, 16, O]`):
    /// `Y = Aᵀ M A` (`s₀ = m₀ + m₁ + m₂`, `s₁ = m₁ − m₂ − m₃` over rows, then the same over
    /// columns), `count` rows of `Wo` positions into `stage`.
    fn transform_output(g: &ConvShape, m: &[f32], count: usize, stage: &mut [f32]) => output_tiles::<Lanes>
);

/// [`transform_output`] on vectors of `V` across the output channels.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn output_tiles<V: Lanes>(g: &ConvShape, m: &[f32], count: usize, stage: &mut [f32]) {
    let (o, tw) = (g.o, g.wo.div_ceil(2));
    assert!(m.len() == 16 * tw * o && stage.len() >= count * g.wo * o);
    let sp = stage.as_mut_ptr();
    for tx in 0..tw {
        let src = m[16 * tx * o..].as_ptr();
        // Output positions of this tile that exist: (row, column) in the stage.
        let cols = (g.wo - 2 * tx).min(2);
        // SAFETY: tile `tx` holds 16 entries of `o` values; the stage holds
        // `count` rows of `Wo` positions; the caller's CPU features.
        unsafe {
            over_row!(
                V,
                o,
                |c0| output_tile::<V>(src.add(c0), o, sp.add(2 * tx * o + c0), (g.wo * o, o), (count, cols)),
                output_tile::<V::Half>(src.add(c0), o, sp.add(2 * tx * o + c0), (g.wo * o, o), (count, cols)),
                output_tile::<f32>(src.add(c0), o, sp.add(2 * tx * o + c0), (g.wo * o, o), (count, cols))
            )
        }
    }
}

/// One tile's `Aᵀ M A` for `W::N` channels: `M`'s entry `ξ` at `m + ξ·step`, output `(i, j)`
/// (the first `rows` rows and `cols` columns of the 2×2 block) at `out + i·gaps.0 + j·gaps.1`.
///
/// # Safety
/// As [`transform_output`]'s bounds; the CPU has `W`'s features.
#[inline(always)]
unsafe fn output_tile<W: Lanes>(m: *const f32, step: usize, out: *mut f32, gaps: (usize, usize), (rows, cols): (usize, usize)) {
    // SAFETY: the caller's.
    unsafe {
        let at = |k: usize| W::load(m.add(k * step));
        let mr: [[W; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| at(4 * i + j)));
        // Over the rows of M, then across each result's columns.
        let s0: [W; 4] = std::array::from_fn(|j| mr[0][j] + mr[1][j] + mr[2][j]);
        let s1: [W; 4] = std::array::from_fn(|j| mr[1][j] - mr[2][j] - mr[3][j]);
        for (i, s) in [s0, s1].iter().enumerate().take(rows) {
            for (j, v) in [s[0] + s[1] + s[2], s[1] - s[2] - s[3]].into_iter().enumerate().take(cols) {
                v.store(out.add(i * gaps.0 + j * gaps.1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::flayer::FloatLayer;
    use crate::runtime::layout::{conv_shape, LayerShape};

    /// `y[s, oy, ox, o] = max(Σ_{c, ky, kx} x[s, oy + ky − py, ox + kx − px, c] · w[o, c, ky, kx]
    /// + b[o], 0) + r[s, oy, ox, o]` in f64 (taps outside the input read 0), and each output's
    /// `Σ |x · w|`, which bounds its rounding error.
    fn by_definition(g: &ConvShape, x: &[f32], w: &[f32], b: &[f32], r: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut y, mut mag) = (vec![], vec![]);
        for s in 0..n {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    for o in 0..g.o {
                        let (mut acc, mut abs) = (f64::from(b[o]), 0f64);
                        for c in 0..g.c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = ((oy + ky) as isize - g.pad.0 as isize, (ox + kx) as isize - g.pad.1 as isize);
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let p = f64::from(x[((s * g.h + iy as usize) * g.w + ix as usize) * g.c + c]) * f64::from(w[((o * g.c + c) * 3 + ky) * 3 + kx]);
                                    acc += p;
                                    abs += p.abs();
                                }
                            }
                        }
                        y.push(acc.max(0.0) + f64::from(r[y.len()]));
                        mag.push(abs + f64::from(b[o]).abs() + f64::from(r[mag.len()]).abs());
                    }
                }
            }
        }
        (y, mag)
    }

    /// The float layer of a 3×3 stride-1 conv runs here, and its outputs (bias, ReLU and a
    /// residual add after it included) equal the definition within a relative 1e-5 of `Σ |x · w|`: maps of odd
    /// and even sizes (a last tile with one row or column), one pixel, padding 0, 1 and 2, the
    /// padding on one side only, channel counts that are not whole vectors, over 3 samples.
    #[test]
    fn winograd_conv_equals_its_definition() {
        let n = 3;
        for (c, o, (h, w), pad, end) in
            [(16, 16, (8, 8), 1, None), (24, 40, (5, 7), 1, None), (17, 33, (4, 4), 0, None), (32, 16, (1, 1), 1, None), (16, 20, (3, 6), 2, None), (20, 16, (6, 5), 1, Some((0, 2)))]
        {
            let mut g = conv_shape(&[c, h, w], o, (3, 3), (1, 1), (pad, pad), (1, 1), 1).unwrap();
            if let Some((top, left)) = end {
                // A pad of `top` rows and `left` columns before the conv, folded into it.
                let padded = conv_shape(&[c, h + top, w + left], o, (3, 3), (1, 1), (pad, pad), (1, 1), 1).unwrap();
                let Some(LayerShape::Conv(f)) = LayerShape::Conv(padded).with_pad_folded(&[(top, 0), (left, 0)]) else { panic!("the pad folds") };
                g = f;
            }
            assert!(applies(&g), "{g:?}");
            let x: Vec<f32> = (0..n * g.h * g.w * c).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let wt: Vec<f32> = (0..o * c * 9).map(|i| ((i * 53 % 97) as f32 - 48.0) / 31.0).collect();
            let b: Vec<f32> = (0..o).map(|i| i as f32 / 8.0 - 1.0).collect();
            let r: Vec<f32> = (0..n * g.ho * g.wo * o).map(|i| ((i * 29 % 61) as f32 - 30.0) / 7.0).collect();
            let mut layer = FloatLayer::new(LayerShape::Conv(g), &wt, Some(b.clone()));
            layer.relu = true;
            let got = layer.run(&x, n, Some((&r, false)));
            let (want, mag) = by_definition(&g, &x, &wt, &b, &r, n);
            assert_eq!(got.len(), want.len());
            for (i, ((&y, &e), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                assert!((f64::from(y) - e).abs() <= 1e-5 * m + 1e-6, "{g:?}: output {i}: {y} against {e}");
            }
        }
    }
}
