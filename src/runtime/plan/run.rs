//! Running a compiled plan: the batch cut into one part per thread and each part into chunks
//! that fit the caches, and the interpreter that walks the steps over channels-last buffers,
//! quantising each integer layer's input once per quantiser and freeing each value after its
//! last reader.

use super::elementwise::{
    add_relu_in_place, concat_rows, gather_rows, global_avg_pool, max_axis, mean_axis, mul_in_place, narrow_rows, pad_constant, permute_channels, scale_channels, sum_axis, swap_axes,
};
use super::normalize::{affine_rows, channel_affine, layer_norm, prelu, softmax};
use super::{Kind, Plan, Reduction, Step, Value, SPLIT_MIN_SAMPLES};
use crate::error::{Result, WickError};
use crate::model::act_op::apply_in_place_fused;
use crate::model::im2col::transpose_batched;
use crate::model::pool_op::{pool_channels_last, pool_planes};
use crate::quant::InputQuant;
use crate::runtime::qlayer::{CodeBuf, Codes};
use candle_core::Tensor;

impl Plan {
    /// Logits for a batch `[N, …]`. With more than one thread and at least
    /// `2·SPLIT_MIN_SAMPLES` samples, the batch is cut into one contiguous part per thread and
    /// the parts run the whole plan side by side: one fork and join per batch instead of one per
    /// layer, and the steps between the GEMMs (adds, layout changes, quantisation) run in
    /// parallel too. Every output row depends on its own sample and the batch's size only
    /// (static quantisation, each GEMM row summed alone; a float 3×3 conv's Winograd form taken
    /// by the size of the whole batch), so the logits are bit-identical to one pass over the
    /// batch.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        self.predict_in_parts(x, rayon::current_num_threads().min(n / SPLIT_MIN_SAMPLES))
    }

    /// [`Plan::predict`] with the batch cut into `parts` contiguous parts (at most one per
    /// sample), run side by side on the pool's threads, each start to finish on one thread
    /// (bit-identical for any `parts`): to measure part sizes against each other.
    pub fn predict_in_parts(&self, x: &Tensor, parts: usize) -> Result<Tensor> {
        self.check_input(x)?;
        let n = x.dim(0)?;
        let parts = parts.min(n);
        if parts < 2 {
            return self.predict_all(x, n);
        }
        // One part per thread, nothing inside a part split further (`map_parts`): the other
        // threads are busy with their own parts.
        let mut ids: Vec<usize> = (0..parts).collect();
        let outs = crate::parallel::map_parts(&mut ids, 1, |p, _| {
            let (start, end) = (p * n / parts, (p + 1) * n / parts);
            self.predict_all(&x.narrow(0, start, end - start)?, n)
        });
        let outs = outs.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// The model's input shape, or for a length-free plan (a text encoder) any sequence no
    /// longer than the compiled one.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let compiled = self.model.input_shape();
        if self.length_free && x.rank() == 2 && x.dim(1)? >= 1 && x.dim(1)? <= compiled[0] {
            return Ok(());
        }
        self.model.check_input(x)
    }

    /// Logits for `x`, a batch of `batch` samples or a part of one, in chunks of
    /// `chunk_samples` samples run one after the other (bit-identical to one pass: every output
    /// row depends on its own sample and `batch` only).
    fn predict_all(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let n = x.dim(0)?;
        if n > self.chunk_samples {
            let mut outs = vec![];
            for s in (0..n).step_by(self.chunk_samples) {
                outs.push(self.predict_chunk(&x.narrow(0, s, self.chunk_samples.min(n - s))?, batch)?);
            }
            return Ok(Tensor::cat(&outs, 0)?);
        }
        self.predict_chunk(x, batch)
    }

    /// Logits for at most `chunk_samples` samples of a batch of `batch`, every step over all of
    /// them.
    fn predict_chunk(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let n = x.dim(0)?;
        // Per-sample shapes of every value for this input: the compiled ones, or those of a
        // shorter sequence.
        let shorter;
        let shapes = if &x.dims()[1..] == self.model.input_shape() {
            &self.model.graph.shapes
        } else {
            shorter = self.model.with_input_shape(&x.dims()[1..])?;
            &shorter.graph.shapes
        };
        let mut vals: Vec<Option<Value>> = (0..self.slots).map(|_| None).collect();
        vals[0] = Some(Value { data: x.flatten_all()?.to_vec1()?, dims: x.dims().to_vec(), channels_last: false });
        let mut codes: Vec<Quantised> = vec![];
        for (si, step) in self.steps.iter().enumerate() {
            let node = &self.model.arch.nodes[step.node];
            let y = match &step.kind {
                Kind::Quant(q) => {
                    let conv = matches!(q.shape, crate::runtime::layout::LayerShape::Conv(_));
                    let src = step.inputs[0];
                    let v = vals[src].as_mut().expect("input computed");
                    set_layout(v, conv);
                    let dims = v.dims.clone();
                    let form = (v.channels_last, q.reads_bytes());
                    let at = match codes.iter().position(|c| c.0 == src && c.1 == q.input && c.2 == form) {
                        Some(i) => i,
                        None => {
                            let Some(c) = q.quantize(&v.data) else {
                                let bad = v.data.iter().find(|f| !f.is_finite()).expect("quantize found one");
                                return Err(WickError::node(&node.name, format!("input holds a non-finite value ({bad})")));
                            };
                            codes.push((src, q.input, form, c));
                            codes.len() - 1
                        }
                    };
                    let out_dims = out_dims(&shapes[node.name.as_str()], n);
                    let channels_last = conv && out_dims.len() >= 3;
                    set_residual_layout(&mut vals, step, channels_last);
                    let residual = residual_of(&vals, step);
                    if let Some(r) = &step.codes_for {
                        let InputQuant::Static(p) = r.input else { unreachable!("codes are written for static inputs only") };
                        let buf = match r.bytes {
                            true => q.run_coded::<u8>(&codes[at].3, n, residual, p).map(CodeBuf::Bytes),
                            false => q.run_coded::<i16>(&codes[at].3, n, residual, p).map(CodeBuf::Wide),
                        };
                        let reader = &self.model.arch.nodes[r.node].name;
                        let buf = buf.ok_or_else(|| WickError::node(reader, "input holds a non-finite value"))?;
                        codes.push((step.output, r.input, (channels_last, r.bytes), Codes { buf, rows: None }));
                        Value { data: vec![], dims: out_dims, channels_last }
                    } else {
                        let data = q.run(&codes[at].3, n, residual);
                        debug_assert_eq!(data.len(), out_dims.iter().product::<usize>(), "{} {:?}", node.name, dims);
                        Value { data, dims: out_dims, channels_last }
                    }
                }
                Kind::Dense(f) => {
                    let conv = matches!(f.shape, crate::runtime::layout::LayerShape::Conv(_));
                    let v = vals[step.inputs[0]].as_mut().expect("input computed");
                    set_layout(v, conv);
                    let cl = conv && v.dims.len() >= 3;
                    let dims = out_dims(&shapes[node.name.as_str()], n);
                    set_residual_layout(&mut vals, step, cl);
                    let x = &vals[step.inputs[0]].as_ref().expect("input computed").data;
                    Value { data: f.run_in_batch(x, n, batch, residual_of(&vals, step)), dims, channels_last: cl }
                }
                Kind::Relu => {
                    let mut v = self.owned(&mut vals, step, si);
                    add_relu_in_place(&mut v.data, None, true);
                    v
                }
                Kind::Identity => self.owned(&mut vals, step, si),
                Kind::Concat { dim } => {
                    let cl = *dim == 1 && step.inputs.iter().all(|&i| vals[i].as_ref().expect("input computed").channels_last);
                    for &i in &step.inputs {
                        set_layout(vals[i].as_mut().expect("input computed"), cl);
                    }
                    let ins: Vec<&Value> = step.inputs.iter().map(|&i| vals[i].as_ref().expect("input computed")).collect();
                    let dims = out_dims(&shapes[node.name.as_str()], n);
                    // Rows of the output, each the inputs' pieces one after another.
                    let (rows, widths): (usize, Vec<usize>) = match cl {
                        true => (dims[0] * dims[2..].iter().product::<usize>(), ins.iter().map(|v| v.dims[1]).collect()),
                        false => (dims[..*dim].iter().product(), ins.iter().map(|v| v.dims[*dim..].iter().product()).collect()),
                    };
                    let parts: Vec<&[f32]> = ins.iter().map(|v| v.data.as_slice()).collect();
                    Value { data: concat_rows(&parts, rows, &widths), dims, channels_last: cl }
                }
                Kind::Act(a) => {
                    let mut v = self.owned(&mut vals, step, si);
                    apply_in_place_fused(&mut v.data, *a);
                    v
                }
                Kind::Pool(g) => {
                    // In the layout the input has: channels last after a conv, planes otherwise.
                    let v = vals[step.inputs[0]].as_ref().expect("input computed");
                    let data = match v.channels_last {
                        true => pool_channels_last(g, &v.data, n, v.dims[1]),
                        false => pool_planes(g, &v.data, n * v.dims[1]),
                    };
                    Value { data, dims: out_dims(&shapes[node.name.as_str()], n), channels_last: v.channels_last }
                }
                Kind::Add { relu } => {
                    let cl = vals[step.inputs[0]].as_ref().expect("input computed").channels_last;
                    for &i in &step.inputs[1..] {
                        set_layout(vals[i].as_mut().expect("input computed"), cl);
                    }
                    // Summed in input order, as the float executor does; the ReLU in the last
                    // input's loop.
                    let mut acc = self.owned(&mut vals, step, si);
                    let last = step.inputs.len() - 1;
                    for (k, &i) in step.inputs.iter().enumerate().skip(1) {
                        add_relu_in_place(&mut acc.data, Some(&vals[i].as_ref().expect("input computed").data), *relu && k == last);
                    }
                    if *relu && last == 0 {
                        add_relu_in_place(&mut acc.data, None, true);
                    }
                    acc
                }
                Kind::Mul { gate: None } => {
                    let cl = vals[step.inputs[0]].as_ref().expect("input computed").channels_last;
                    set_layout(vals[step.inputs[1]].as_mut().expect("input computed"), cl);
                    let mut acc = self.owned_input(&mut vals, step, si, 0);
                    mul_in_place(&mut acc.data, &vals[step.inputs[1]].as_ref().expect("input computed").data);
                    acc
                }
                Kind::Mul { gate: Some(g) } => {
                    let mut v = self.owned_input(&mut vals, step, si, 1 - g);
                    let gate = &vals[step.inputs[*g]].as_ref().expect("input computed").data;
                    let (n, c) = (v.dims[0], v.dims[1]);
                    scale_channels(&mut v.data, gate, n, c, v.channels_last);
                    v
                }
                Kind::GlobalAvgPool => global_avg_pool(vals[step.inputs[0]].as_ref().expect("input computed")),
                Kind::Flatten { stored } => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), *stored);
                    let v = self.owned(&mut vals, step, si);
                    Value { data: v.data, dims: out_dims(&shapes[node.name.as_str()], n), channels_last: false }
                }
                Kind::Recurrent(r) => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let x = &vals[step.inputs[0]].as_ref().expect("input computed").data;
                    Value { data: r.run(x, n)?, dims: out_dims(&shapes[node.name.as_str()], n), channels_last: false }
                }
                Kind::Select { dim, index } => {
                    let v = vals[step.inputs[0]].as_mut().expect("input computed");
                    set_layout(v, false);
                    Value { data: crate::runtime::recurrent::select(&v.data, &v.dims, *dim, *index), dims: out_dims(&shapes[node.name.as_str()], n), channels_last: false }
                }
                Kind::Narrow { dim, start, length } => {
                    let v = vals[step.inputs[0]].as_mut().expect("input computed");
                    let cl = v.channels_last && *dim == 1;
                    set_layout(v, cl);
                    // Each row holds the whole narrowed axis: a position's channels when channels
                    // are last, else everything from the axis on.
                    let (width, inner) = match cl {
                        true => (v.dims[1], 1),
                        false => (v.dims[*dim..].iter().product(), v.dims[*dim + 1..].iter().product()),
                    };
                    Value { data: narrow_rows(&v.data, width, start * inner, length * inner), dims: out_dims(&shapes[node.name.as_str()], n), channels_last: cl }
                }
                Kind::Transpose { swaps } => permute(self.owned(&mut vals, step, si), swaps),
                Kind::PermuteChannels { perm } => {
                    let v = vals[step.inputs[0]].as_ref().expect("input computed");
                    Value { data: permute_channels(&v.data, perm, n, v.channels_last), dims: out_dims(&shapes[node.name.as_str()], n), channels_last: v.channels_last }
                }
                Kind::Pad { pads, value } => {
                    let v = vals[step.inputs[0]].as_mut().expect("input computed");
                    // Padded channels are a logical-order job; spatial padding keeps a
                    // channels-last value so, its channel axis last.
                    if pads[1] != (0, 0) {
                        set_layout(v, false);
                    }
                    let (dims, pads): (Vec<usize>, Vec<(usize, usize)>) = match v.channels_last {
                        true => stored_axes(v.dims.len()).iter().map(|&a| (v.dims[a], pads[a])).unzip(),
                        false => (v.dims.clone(), pads.clone()),
                    };
                    Value { data: pad_constant(&v.data, &dims, &pads, *value), dims: out_dims(&shapes[node.name.as_str()], n), channels_last: v.channels_last }
                }
                Kind::Reduce { dim, how } => {
                    let v = vals[step.inputs[0]].as_mut().expect("input computed");
                    // A spatial axis of a channels-last value is reduced where it is stored
                    // (`[N, spatial…, C]`, logical axis `d` at `d − 1`): the result is the output
                    // channels last, with no transpose before or after.
                    let spatial = v.channels_last && *dim >= 2;
                    if !spatial {
                        set_layout(v, false);
                    }
                    let (dims, d) = match spatial {
                        true => (stored_axes(v.dims.len()).iter().map(|&a| v.dims[a]).collect(), dim - 1),
                        false => (v.dims.clone(), *dim),
                    };
                    let data = match how {
                        Reduction::Mean => mean_axis(&v.data, &dims, d),
                        Reduction::Max => max_axis(&v.data, &dims, d),
                        Reduction::Sum => sum_axis(&v.data, &dims, d),
                    };
                    let dims = out_dims(&shapes[node.name.as_str()], n);
                    Value { channels_last: spatial && dims.len() >= 3, data, dims }
                }
                Kind::LayerNorm { inner, eps, affine } => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let mut v = self.owned(&mut vals, step, si);
                    layer_norm(&mut v.data, *inner, *eps, affine.as_ref());
                    v
                }
                Kind::Softmax { dim, log } => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let mut v = self.owned(&mut vals, step, si);
                    softmax(&mut v, *dim, *log);
                    v
                }
                Kind::Attention(cfg) => {
                    for &i in &step.inputs {
                        set_layout(vals[i].as_mut().expect("input computed"), false);
                    }
                    let [q, k, v] = [0, 1, 2].map(|i| vals[step.inputs[i]].as_ref().expect("input computed"));
                    let [ids, bias] = [3, 4].map(|k| step.inputs.get(k).map(|&i| vals[i].as_ref().expect("input computed").data.as_slice()));
                    let (l, d) = (q.dims[1], q.dims[2]);
                    Value {
                        data: crate::runtime::attention::attention(&q.data, &k.data, &v.data, ids, bias, n, l, d, cfg.num_heads, cfg.score_scale(d) as f32, cfg.pad_id as f32),
                        dims: q.dims.clone(),
                        channels_last: false,
                    }
                }
                Kind::Embedding { table, dim } => {
                    let ids = vals[step.inputs[0]].as_ref().expect("input computed");
                    let data = gather_rows(table, *dim, &ids.data).map_err(|m| WickError::node(&node.name, m))?;
                    Value { data, dims: [&ids.dims[..], &[*dim]].concat(), channels_last: false }
                }
                Kind::RelativeBias { weight, cfg } => {
                    let l = vals[step.inputs[0]].as_ref().expect("input computed").dims[1];
                    Value { data: crate::runtime::attention::relative_position_bias(weight, cfg, l), dims: vec![1, cfg.num_heads, l, l], channels_last: false }
                }
                Kind::ChannelAffine { scale, shift, last: false } => {
                    let mut v = self.owned(&mut vals, step, si);
                    channel_affine(&mut v, scale, shift);
                    v
                }
                Kind::PrependRows { rows } => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let x = vals[step.inputs[0]].as_ref().expect("input computed");
                    let (l, d) = (x.dims[1], x.dims[2]);
                    let mut data = Vec::with_capacity(n * (rows.len() + l * d));
                    for sample in x.data.chunks(l * d) {
                        data.extend_from_slice(rows);
                        data.extend_from_slice(sample);
                    }
                    Value { data, dims: vec![n, rows.len() / d + l, d], channels_last: false }
                }
                Kind::AddRows { rows, per_position } => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let mut v = self.owned(&mut vals, step, si);
                    // A sample's `L·D` values take the table's first `L` rows, else each `D` the row.
                    let chunk = if *per_position { v.data.len() / n.max(1) } else { rows.len() };
                    crate::model::add_rows_op::add_to_chunks(&mut v.data, chunk, rows);
                    v
                }
                Kind::ChannelAffine { scale, shift, last: true } => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let mut v = self.owned(&mut vals, step, si);
                    affine_rows(&mut v.data, scale, shift);
                    v
                }
                Kind::GroupNorm { inner, eps, affine } => {
                    set_layout(vals[step.inputs[0]].as_mut().expect("input computed"), false);
                    let mut v = self.owned(&mut vals, step, si);
                    layer_norm(&mut v.data, *inner, *eps, None);
                    if let Some((scale, shift)) = affine {
                        channel_affine(&mut v, scale, shift);
                    }
                    v
                }
                Kind::Prelu { slope } => {
                    let mut v = self.owned(&mut vals, step, si);
                    prelu(&mut v, slope);
                    v
                }
                Kind::Float => {
                    let mut ins = vec![];
                    for &i in &step.inputs {
                        let v = vals[i].as_mut().expect("input computed");
                        set_layout(v, false);
                        ins.push(Tensor::from_slice(&v.data, v.dims.as_slice(), x.device())?);
                    }
                    let refs: Vec<&Tensor> = ins.iter().collect();
                    let y = self.model.node_eval(node, &refs)?;
                    Value { data: y.flatten_all()?.to_vec1()?, dims: y.dims().to_vec(), channels_last: false }
                }
            };
            vals[step.output] = Some(y);
            for i in step.reads() {
                if self.last_use[i] == si {
                    vals[i] = None;
                }
            }
            codes.retain(|c| vals[c.0].is_some());
        }
        let mut out = vals[self.output].take().expect("output computed");
        set_layout(&mut out, false);
        Ok(Tensor::from_vec(out.data, out.dims, x.device())?)
    }
}

impl Plan {
    /// The first input of `step` as an owned value: moved out when this step is its last reader
    /// (and reads it once), copied otherwise, so element-wise ops work in place.
    fn owned(&self, vals: &mut [Option<Value>], step: &Step, si: usize) -> Value {
        self.owned_input(vals, step, si, 0)
    }

    /// [`Plan::owned`] of input `k`.
    fn owned_input(&self, vals: &mut [Option<Value>], step: &Step, si: usize, k: usize) -> Value {
        let slot = step.inputs[k];
        let once = step.inputs.iter().filter(|&&i| i == slot).count() == 1;
        if self.last_use[slot] == si && once {
            return vals[slot].take().expect("input computed");
        }
        let v = vals[slot].as_ref().expect("input computed");
        Value { data: v.data.clone(), dims: v.dims.clone(), channels_last: v.channels_last }
    }
}

/// Stores the fused residual of `step` (if any) in the layout of the step's output.
fn set_residual_layout(vals: &mut [Option<Value>], step: &Step, channels_last: bool) {
    if let Some((r, _)) = step.residual {
        set_layout(vals[r].as_mut().expect("residual computed"), channels_last);
    }
}

/// The fused residual of `step` as its layer's output loop takes it: `(shortcut, relu)`.
fn residual_of<'a>(vals: &'a [Option<Value>], step: &Step) -> Option<(&'a [f32], bool)> {
    step.residual.map(|(r, relu)| (vals[r].as_ref().expect("residual computed").data.as_slice(), relu))
}

/// Codes of a slot under a quantiser, in a layout and a code type (`(channels last, bytes)`);
/// kept while the slot lives.
type Quantised = (usize, InputQuant, (bool, bool), Codes);

/// `[n] ++ per-sample shape`.
fn out_dims(per_sample: &[usize], n: usize) -> Vec<usize> {
    std::iter::once(n).chain(per_sample.iter().copied()).collect()
}

/// The full-tensor axes of a channels-last value in the order it is stored: the batch, the
/// positions, the channels (`[N, C, H, W]` as `[N, H, W, C]`).
fn stored_axes(rank: usize) -> Vec<usize> {
    std::iter::once(0).chain(2..rank).chain(std::iter::once(1)).collect()
}

/// `v` with its full-tensor axes swapped pair by pair, in order. No data moves where the
/// permutation is a channels-last value's stored order (channels to last: a channels-last
/// `[N, C, H, W]` is stored as `[N, H, W, C]`, the permuted value's logical order), or where it
/// moves an image's last axis to the channels (the result, channels last, is stored as the input
/// is, and the convs and residual adds after it read that layout). A sequence `[N, L, C]` turned
/// `[N, C, L]` is moved: the linears that read such values read them in logical order.
fn permute(mut v: Value, swaps: &[(usize, usize)]) -> Value {
    let rank = v.dims.len();
    let mut perm: Vec<usize> = (0..rank).collect();
    swaps.iter().for_each(|&(a, b)| perm.swap(a, b));
    let dims: Vec<usize> = perm.iter().map(|&p| v.dims[p]).collect();
    if rank >= 3 {
        let to_channels: Vec<usize> = [0, rank - 1].into_iter().chain(1..rank - 1).collect();
        if v.channels_last && perm == stored_axes(rank) {
            return Value { data: v.data, dims, channels_last: false };
        }
        if !v.channels_last && rank >= 4 && perm == to_channels {
            return Value { data: v.data, dims, channels_last: true };
        }
    }
    set_layout(&mut v, false);
    for &(a, b) in swaps {
        v.data = swap_axes(&v.data, &v.dims, a, b);
        v.dims.swap(a, b);
    }
    Value { data: v.data, dims, channels_last: false }
}

/// Stores `v` channels last (`true`) or in logical order (`false`); values of rank ≤ 2 are the
/// same either way.
fn set_layout(v: &mut Value, channels_last: bool) {
    if v.dims.len() < 3 {
        v.channels_last = false;
        return;
    }
    if v.channels_last == channels_last {
        return;
    }
    let (n, c) = (v.dims[0], v.dims[1]);
    let s: usize = v.dims[2..].iter().product();
    v.data = match channels_last {
        true => transpose_batched(&v.data, n, c, s),
        false => transpose_batched(&v.data, n, s, c),
    };
    v.channels_last = channels_last;
}
