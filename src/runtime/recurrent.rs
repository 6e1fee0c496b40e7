//! A GRU or LSTM prepared for the compiled runtimes: per layer and direction, the input
//! projection of every step at once (one GEMM over the `N·T` rows) and the recurrent projection
//! of each step (one over the `N` hidden rows), with the gates in plain loops over the batch —
//! the formulas of `model::recurrent`, without a tensor per step. Each projection is a
//! [`Project`]: the packed f32 GEMM, a quantised layer on the integer GEMM (its input quantised
//! on every call, so `h` is requantised at every step), or the scalar integer reference, which
//! shares these gate loops so that the integer runtime and its oracle differ only in their
//! matmuls. `select` is a strided copy.

use super::flayer::FloatLayer;
use super::layout::LayerShape;
use super::qlayer::QLayer;
use crate::error::{Result, WickError};
use crate::model::act_op::{apply_in_place_fused, Act};
use crate::model::arch::{rnn_params, LinearCfg, Node, Op, RnnCfg};
use crate::model::recurrent::Cell;
use crate::model::Model;

/// One matmul of a recurrent op: `y = x·Wᵀ + b` over `n` samples of its per-sample shape.
pub trait Project: Send + Sync {
    /// `None` when `x` holds a non-finite value the projection cannot quantise.
    fn project(&self, x: &[f32], n: usize) -> Option<Vec<f32>>;
    /// `y + add` (`add` in `y`'s layout), summed in the GEMM's output loop.
    fn project_add(&self, x: &[f32], n: usize, add: &[f32]) -> Option<Vec<f32>>;
}

impl Project for FloatLayer {
    fn project(&self, x: &[f32], n: usize) -> Option<Vec<f32>> {
        Some(self.run(x, n, None))
    }
    fn project_add(&self, x: &[f32], n: usize, add: &[f32]) -> Option<Vec<f32>> {
        Some(self.run(x, n, Some((add, false))))
    }
}

impl Project for QLayer {
    /// Quantises `x` with the layer's static parameters, then runs the integer GEMM.
    fn project(&self, x: &[f32], n: usize) -> Option<Vec<f32>> {
        Some(self.run(&self.quantize(x)?, n, None))
    }
    fn project_add(&self, x: &[f32], n: usize, add: &[f32]) -> Option<Vec<f32>> {
        Some(self.run(&self.quantize(x)?, n, Some((add, false))))
    }
}

/// A projection: boxed, so that a node may mix float and quantised ones.
pub type Projection = Box<dyn Project>;

/// The `Linear` op of one of a recurrent node's matrices, `[rows, inp]`.
pub fn matrix_op(rows: usize, inp: usize, bias: bool) -> Op {
    Op::Linear(LinearCfg { in_features: inp, out_features: rows, bias })
}

/// One direction of one layer: `gi = x·W_ihᵀ + b_ih` and `gh = h·W_hhᵀ + b_hh`.
struct Direction {
    ih: Projection,
    hh: Projection,
    /// The tensor names of `W_ih` and `W_hh` (errors name them).
    names: [String; 2],
}

/// A compiled recurrent op.
pub struct RecurrentLayer {
    cell: Cell,
    hidden: usize,
    steps: usize,
    /// Per layer, one or two directions (forward, reverse).
    layers: Vec<Vec<Direction>>,
}

impl RecurrentLayer {
    /// Prepares node `node` (`gru` or `lstm` with `c`) over per-sample input `[T, F]`; `quantised(unit, op, per-sample input shape)`
    /// gives the projection of a quantised unit (`model::qunit`: the matrix's tensor name), or
    /// `None` for the float one. `Ok(None)` when the input is not a sequence.
    pub fn new(model: &Model, node: &Node, c: &RnnCfg, cell: Cell, in_shape: &[usize], quantised: impl Fn(&str, &Op, &[usize]) -> Result<Option<Projection>>) -> Result<Option<RecurrentLayer>> {
        let &[steps, _] = in_shape else { return Ok(None) };
        let rows = cell.gates() * c.hidden_size;
        let vec = |s: &str| model.values(&node.param(s));
        let project = |inp: usize, shape: &[usize], w: &str, b: &str| -> Result<Projection> {
            let op = matrix_op(rows, inp, c.bias);
            if let Some(p) = quantised(&node.param(w), &op, shape)? {
                return Ok(p);
            }
            let shape = LayerShape::of(&op, shape).ok_or_else(|| WickError::node(&node.name, format!("{w} has a shape the compiled runtime cannot lay out")))?;
            Ok(Box::new(FloatLayer::new(shape, &vec(w)?, if c.bias { Some(vec(b)?) } else { None })))
        };
        let mut layers = vec![];
        for k in 0..c.num_layers {
            let inp = if k == 0 { c.input_size } else { c.dirs() * c.hidden_size };
            let mut dirs = vec![];
            for reverse in (0..c.dirs()).map(|d| d == 1) {
                let [w_ih, w_hh, b_ih, b_hh] = rnn_params(k, reverse);
                dirs.push(Direction { ih: project(inp, &[steps, inp], w_ih, b_ih)?, hh: project(c.hidden_size, &[c.hidden_size], w_hh, b_hh)?, names: [node.param(w_ih), node.param(w_hh)] });
            }
            layers.push(dirs);
        }
        Ok(Some(RecurrentLayer { cell, hidden: c.hidden_size, steps, layers }))
    }

    /// Runs on `x` `[N, T, F]` (row-major); returns `[N, T, D·H]`. Fails (naming the matrix)
    /// only when a quantised projection is given a non-finite value. Inside, every sequence is
    /// time-major (`[T, N, ·]`), so that one step's input projections and outputs are contiguous.
    pub fn run(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let t_len = self.steps;
        let mut input = swap_leading(x, n, t_len);
        for dirs in &self.layers {
            let width = dirs.len() * self.hidden;
            let mut out = vec![0f32; n * t_len * width];
            for (d, dir) in dirs.iter().enumerate() {
                self.direction(dir, &input, n, d == 1, &mut out, d * self.hidden, width)?;
            }
            input = out;
        }
        Ok(swap_leading(&input, t_len, n))
    }

    /// One direction over the time-major sequence `x`, writing `h_t` at column `col` of each
    /// output row of `width` values. GRU: `r, z = σ(gi + gh)` (their blocks),
    /// `n = tanh(gi_n + r ⊙ gh_n)`, `h' = n + z ⊙ (h − n)`; LSTM: `i, f, o = σ(gi + gh)`,
    /// `g = tanh(gi_g + gh_g)`, `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`, with `gi + gh` summed
    /// in the recurrent GEMM's output loop.
    #[allow(clippy::too_many_arguments)]
    fn direction(&self, dir: &Direction, x: &[f32], n: usize, reverse: bool, out: &mut [f32], col: usize, width: usize) -> Result<()> {
        let (h_len, t_len) = (self.hidden, self.steps);
        let g = self.cell.gates() * h_len;
        let non_finite = |k: usize| WickError::node(&dir.names[k], "input holds a non-finite value");
        let gi = dir.ih.project(x, n).ok_or_else(|| non_finite(0))?;
        let mut h = vec![0f32; n * h_len];
        let mut c = vec![0f32; n * h_len];
        // GRU: the batch's pre-activations of r and z (one buffer, so that one sigmoid pass
        // covers both) and of n, each activated in place.
        let mut rz = vec![0f32; 2 * n * h_len];
        let mut pre_n = vec![0f32; n * h_len];
        // LSTM: the step's gates, gate-major (`lstm_cell`).
        let mut gates = vec![0f32; if self.cell == Cell::Lstm { 4 * n * h_len } else { 0 }];
        for s in 0..t_len {
            let t = if reverse { t_len - 1 - s } else { s };
            // This step's input projections, `[N, G·H]`.
            let gi_t = &gi[t * n * g..(t + 1) * n * g];
            match self.cell {
                Cell::Gru => {
                    let gh = dir.hh.project(&h, n).ok_or_else(|| non_finite(1))?;
                    for (k, p) in rz.chunks_exact_mut(n * h_len).enumerate() {
                        for b in 0..n {
                            let (a, r) = (&gi_t[b * g + k * h_len..][..h_len], &gh[b * g + k * h_len..][..h_len]);
                            p[b * h_len..(b + 1) * h_len].iter_mut().zip(a.iter().zip(r)).for_each(|(o, (u, v))| *o = u + v);
                        }
                    }
                    apply_in_place_fused(&mut rz, Act::Sigmoid);
                    let (reset, update) = rz.split_at(n * h_len);
                    for b in 0..n {
                        let (a, r) = (&gi_t[b * g + 2 * h_len..(b + 1) * g], &gh[b * g + 2 * h_len..(b + 1) * g]);
                        let reset = &reset[b * h_len..(b + 1) * h_len];
                        pre_n[b * h_len..(b + 1) * h_len].iter_mut().enumerate().for_each(|(j, o)| *o = a[j] + reset[j] * r[j]);
                    }
                    apply_in_place_fused(&mut pre_n, Act::Tanh);
                    for ((hv, &z), &nv) in h.iter_mut().zip(update).zip(&pre_n) {
                        *hv = nv + z * (*hv - nv);
                    }
                }
                Cell::Lstm => {
                    // `gi + gh` per row `[i, f, g, o]`, summed in the GEMM's output loop.
                    let sums = dir.hh.project_add(&h, n, gi_t).ok_or_else(|| non_finite(1))?;
                    lstm_cell(&sums, &mut gates, &mut c, &mut h, h_len);
                }
            }
            for b in 0..n {
                let at = (t * n + b) * width + col;
                out[at..at + h_len].copy_from_slice(&h[b * h_len..(b + 1) * h_len]);
            }
        }
        Ok(())
    }
}

/// The LSTM cell over a batch: `sums` holds each sample's `[i, f, g, o]` pre-activations (rows
/// of `4·h_len`), `c` and `h` its states (rows of `h_len`). `i, f, o = σ(·)`, `g = tanh(·)`,
/// `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`. The gates are first gathered gate-major into
/// `gates` (`[i | f | g | o]`, each `N·h_len` long), so that each activation runs over the whole
/// batch in pairs of whole vectors: row by row, a short block (`h_len` 24: one vector and a
/// part) is one dependent chain at a time. Every value is computed as row by row, so the bits
/// are the same. The activations are the compiled plans' ([`apply_in_place_fused`]), which the
/// integer reference executor shares: it runs this cell too.
#[inline(always)]
fn lstm_cell_batch(sums: &[f32], gates: &mut [f32], c: &mut [f32], h: &mut [f32], h_len: usize) {
    let block = c.len();
    for (b, row) in sums.chunks_exact(4 * h_len).enumerate() {
        for (k, gate) in row.chunks_exact(h_len).enumerate() {
            gates[k * block + b * h_len..][..h_len].copy_from_slice(gate);
        }
    }
    let (i_f, rest) = gates.split_at_mut(2 * block);
    let (g, o) = rest.split_at_mut(block);
    apply_in_place_fused(i_f, Act::Sigmoid);
    apply_in_place_fused(g, Act::Tanh);
    apply_in_place_fused(o, Act::Sigmoid);
    let (i, f) = i_f.split_at(block);
    for (((cv, &fv), &iv), &gv) in c.iter_mut().zip(f).zip(i).zip(&*g) {
        *cv = fv * *cv + iv * gv;
    }
    h.copy_from_slice(c);
    apply_in_place_fused(h, Act::Tanh);
    h.iter_mut().zip(&*o).for_each(|(hv, &ov)| *hv *= ov);
}

crate::wide_f32_fn!(
    /// [`lstm_cell_batch`] compiled for the CPU's vector width (the same bits at every width).
    fn lstm_cell(sums: &[f32], gates: &mut [f32], c: &mut [f32], h: &mut [f32], h_len: usize) => lstm_cell_batch
);

/// `[a, b, inner]` → `[b, a, inner]` (row-major): `out[j, i, ·] = x[i, j, ·]`.
fn swap_leading(x: &[f32], a: usize, b: usize) -> Vec<f32> {
    let inner = x.len() / (a * b).max(1);
    let mut out = Vec::with_capacity(x.len());
    for j in 0..b {
        for i in 0..a {
            out.extend_from_slice(&x[(i * b + j) * inner..(i * b + j + 1) * inner]);
        }
    }
    out
}

/// `x.select(dim, index)` on row-major `dims` (with the batch): `out[o, i] = x[o, index, i]`
/// over the outer and inner extents of `dim`.
pub fn select(x: &[f32], dims: &[usize], dim: usize, index: usize) -> Vec<f32> {
    let (len, inner) = (dims[dim], dims[dim + 1..].iter().product::<usize>());
    let outer: usize = dims[..dim].iter().product();
    (0..outer).flat_map(|o| x[(o * len + index) * inner..(o * len + index + 1) * inner].iter().copied()).collect()
}
