//! GRU and LSTM over batch-first sequences, and `select`, as compositions of differentiable
//! ops (the linear op with its own backward, the one-pass activations, candle's elementwise ops
//! and slicing), so training backpropagates through time with exact gradients. Zero initial
//! state. Uses `model::arch`, `model::linear_op`, `model::act_op`.

use super::act_op::{activation, Act};
use super::arch::{rnn_params, RnnCfg, SelectCfg};
use super::graph::sample_dim;
use crate::error::{Result, WickError};
use candle_core::{Tensor, D};

/// Which recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Gru,
    Lstm,
}

impl Cell {
    /// Row blocks of the gate matrices: 3 (r, z, n) or 4 (i, f, g, o).
    pub fn gates(self) -> usize {
        match self {
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }
}

/// One direction of one layer: `[W_ih, W_hh, b_ih, b_hh]` (biases absent when `bias` is off).
pub struct Weights {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Option<Tensor>,
    pub b_hh: Option<Tensor>,
}

/// The recurrent op on `x` `[N, T, input_size]`: each layer's directions run over the sequence,
/// their outputs concatenated on the last dim feed the next layer. `weights(layer, reverse)`
/// gives a direction's tensors; `input(weight suffix, t)` sees what each matmul reads before it
/// does (the whole sequence for `W_ih`, each step's `h` for `W_hh`: fake quantisation).
/// Output `[N, T, D·hidden]`.
pub fn run(cell: Cell, x: &Tensor, c: &RnnCfg, weights: impl Fn(usize, bool) -> Result<Weights>, input: impl Fn(&str, Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let mut seq = x.contiguous()?;
    for layer in 0..c.num_layers {
        let dir = |reverse: bool| -> Result<Tensor> {
            let [w_ih, w_hh, ..] = rnn_params(layer, reverse);
            direction(cell, &input(w_ih, seq.clone())?, c.hidden_size, &weights(layer, reverse)?, reverse, |h| input(w_hh, h))
        };
        let mut outs = vec![dir(false)?];
        if c.bidirectional {
            outs.push(dir(true)?);
        }
        seq = if outs.len() == 1 { outs.pop().expect("one direction") } else { Tensor::cat(&outs, 2)? };
    }
    Ok(seq)
}

/// One direction over the sequence (`reverse`: from the last step to the first), `[N, T, H]`.
///
/// GRU: `r = σ(W_ir x + b_ir + W_hr h + b_hr)`, `z = σ(W_iz x + b_iz + W_hz h + b_hz)`,
/// `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`, `h' = (1 − z) ⊙ n + z ⊙ h`.
/// LSTM: `i, f, o = σ(…)`, `g = tanh(…)` (each `W_i· x + b_i· + W_h· h + b_h·`),
/// `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`.
/// `h_in` maps each step's state before `W_hh` reads it.
fn direction(cell: Cell, x: &Tensor, hidden: usize, w: &Weights, reverse: bool, h_in: impl Fn(Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (n, t, _) = x.dims3()?;
    // The input projections of every step at once: `[N, T, G·H]`.
    let gi = super::linear_op::linear(x, &w.w_ih, w.b_ih.as_ref())?;
    let mut h = Tensor::zeros((n, hidden), x.dtype(), x.device())?;
    let mut c = h.clone();
    let mut outs = vec![None; t];
    let steps: Vec<usize> = if reverse { (0..t).rev().collect() } else { (0..t).collect() };
    for s in steps {
        let gi_t = gi.narrow(1, s, 1)?.squeeze(1)?;
        let gh = super::linear_op::linear(&h_in(h.clone())?, &w.w_hh, w.b_hh.as_ref())?;
        let block = |g: &Tensor, k: usize| g.narrow(D::Minus1, k * hidden, hidden);
        h = match cell {
            Cell::Gru => {
                let r = activation(&(block(&gi_t, 0)? + block(&gh, 0)?)?, Act::Sigmoid)?;
                let z = activation(&(block(&gi_t, 1)? + block(&gh, 1)?)?, Act::Sigmoid)?;
                let nn = activation(&(block(&gi_t, 2)? + (r * block(&gh, 2)?)?)?, Act::Tanh)?;
                // (1 − z)·n + z·h = n + z·(h − n)
                (&nn + (z * (h - &nn)?)?)?
            }
            Cell::Lstm => {
                let gate = |k: usize, act: Act| -> Result<Tensor> { activation(&(block(&gi_t, k)? + block(&gh, k)?)?, act) };
                let (i, f, g, o) = (gate(0, Act::Sigmoid)?, gate(1, Act::Sigmoid)?, gate(2, Act::Tanh)?, gate(3, Act::Sigmoid)?);
                c = ((f * &c)? + (i * g)?)?;
                (o * activation(&c, Act::Tanh)?)?
            }
        };
        outs[s] = Some(h.unsqueeze(1)?);
    }
    let outs: Vec<Tensor> = outs.into_iter().map(|o| o.expect("every step ran")).collect();
    Ok(Tensor::cat(&outs, 1)?)
}

/// `x.select(dim, index)`: the slice at `index` along `dim` (counted with the batch), removed.
pub fn select(x: &Tensor, c: &SelectCfg) -> Result<Tensor> {
    let d = sample_dim(c.dim, x.rank() - 1).map_err(|m| WickError::invalid("select", m))? + 1;
    let len = x.dim(d)?;
    let i = c.position(len).ok_or_else(|| WickError::invalid("select", format!("index {} is out of range for a dim of {len}", c.index)))?;
    Ok(x.narrow(d, i, 1)?.squeeze(d)?)
}
