//! A wick value's elements as ONNX rearranges them with the batch axis anywhere: the
//! `Reshape`/`Transpose`/`Squeeze`/`Gather` chains of `nn.MultiheadAttention` and of attention
//! written by hand (`[L, N·H, d]`, `[3, N, H, L, d]`). Wick's values keep the batch first, so the
//! importer follows such a chain as an [`Arrangement`] of the value it started from and reads it
//! back where the chain ends: a linear over the last axis, attention, or the value batch-first
//! again.
//!
//! The source's axes are cut into factors (`N` itself; each other axis major to minor, cut
//! further where a reshape splits it), and each ONNX axis of the view is the factors it merges.
//! A reshape is a rearrangement only when every view axis it merges or splits is made of whole
//! factors after such cuts; others are refused.

/// `k·N` as an entry of a constant computed by `Shape` arithmetic, `N` the batch size, which is
/// unknown until run time (`Reshape` targets such as `[L, N·H, d]`).
pub const fn batch_times(k: i64) -> i64 {
    i64::MIN + k
}

/// The `k` of an entry [`batch_times`]`(k)`, else `None`.
pub fn batch_multiple(v: i64) -> Option<i64> {
    let k = v.wrapping_sub(i64::MIN);
    (1..1 << 40).contains(&k).then_some(k)
}

/// Dims as a message shows them, batch entries as `N` or `k·N`.
pub fn shown(dims: &[i64]) -> String {
    dims.iter().map(|&v| batch_multiple(v).map_or(v.to_string(), |k| if k == 1 { "N".into() } else { format!("{k}·N") })).collect::<Vec<_>>().join(", ")
}

/// A factor of a source axis: `size` elements (0 for the batch) of axis `axis` (0 the batch,
/// `k` per-sample dim `k − 1`), at one index when a `Gather` fixed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Factor {
    pub axis: usize,
    pub size: usize,
    pub fixed: Option<usize>,
}

/// A view of a source value (per-sample shape `shape`): its factors in the source's memory order,
/// each view axis's factors in order, and a scalar the view is multiplied by.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrangement {
    pub shape: Vec<usize>,
    pub factors: Vec<Factor>,
    pub axes: Vec<Vec<usize>>,
    pub scale: f32,
}

/// Where a factor of a head-split view ([`Heads`]) sits in the source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot {
    Batch,
    /// The `k`-th factor of the heads (source order).
    Head(usize),
}

/// `q`, `k` or `v` of attention as a view of a source `[L, F]`: its leading axes (the batch and
/// the heads, `lead`), one row per position and the head dims along its columns; the features
/// it reads are `start..start + heads·head_dim` of `F` (a `Gather` picks `q`, `k` or `v` out of
/// one packed projection).
#[derive(Debug, Clone, PartialEq)]
pub struct Heads {
    pub lead: Vec<Vec<Slot>>,
    /// The sizes of the head factors, major to minor.
    pub head_sizes: Vec<usize>,
    /// The sizes of the head-dim factors, major to minor.
    pub dim_sizes: Vec<usize>,
    pub len: usize,
    pub start: usize,
    pub scale: f32,
}

impl Heads {
    pub fn heads(&self) -> usize {
        self.head_sizes.iter().product()
    }

    pub fn head_dim(&self) -> usize {
        self.dim_sizes.iter().product()
    }

    /// Whether `other` splits its source into the same heads, in the same order.
    pub fn same_split(&self, other: &Heads) -> bool {
        self.lead == other.lead && self.head_sizes == other.head_sizes && self.dim_sizes == other.dim_sizes && self.len == other.len
    }

    /// The attention output `[L, heads·head_dim]` in this view's arrangement (lead axes, then
    /// positions, then head dims), which is how ONNX holds `softmax(q·kᵀ)·v`.
    pub fn output(&self) -> Arrangement {
        let width = self.heads() * self.head_dim();
        let mut factors = vec![Factor { axis: 0, size: 0, fixed: None }];
        let mut seq = vec![];
        if self.len > 1 {
            seq.push(factors.len());
            factors.push(Factor { axis: 1, size: self.len, fixed: None });
        }
        // The heads' factors, then the head dims', along the features: their indices.
        let (n_heads, n_dims) = (self.head_sizes.len(), self.dim_sizes.len());
        let first = factors.len();
        factors.extend(self.head_sizes.iter().chain(&self.dim_sizes).map(|&size| Factor { axis: 2, size, fixed: None }));
        let head_at: Vec<usize> = (first..first + n_heads).collect();
        let dims: Vec<usize> = (first + n_heads..first + n_heads + n_dims).collect();
        let mut axes: Vec<Vec<usize>> = self.lead.iter().map(|g| g.iter().map(|s| if let Slot::Head(k) = s { head_at[*k] } else { 0 }).collect()).collect();
        axes.push(seq);
        axes.push(dims);
        Arrangement { shape: vec![self.len, width], factors, axes, scale: 1.0 }
    }
}

type R<T> = std::result::Result<T, String>;

fn from_end(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    usize::try_from(v).ok().filter(|&v| v < rank).ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))
}

/// Indices above `f` moved up one, for a factor inserted after `f`.
fn shift(v: &mut [usize], f: usize) {
    v.iter_mut().filter(|i| **i > f).for_each(|i| *i += 1);
}

impl Arrangement {
    /// A value of per-sample shape `shape` as ONNX holds it, batch first (unit dims have no
    /// factor).
    pub fn of(shape: &[usize]) -> Arrangement {
        let mut factors = vec![Factor { axis: 0, size: 0, fixed: None }];
        let mut axes = vec![vec![0]];
        for (k, &s) in shape.iter().enumerate() {
            if s == 1 {
                axes.push(vec![]);
            } else {
                axes.push(vec![factors.len()]);
                factors.push(Factor { axis: k + 1, size: s, fixed: None });
            }
        }
        Arrangement { shape: shape.to_vec(), factors, axes, scale: 1.0 }
    }

    /// The view's ONNX dims, an axis holding the batch as [`batch_times`].
    pub fn dims(&self) -> Vec<i64> {
        self.axes.iter().map(|g| self.dim(g)).collect()
    }

    fn dim(&self, group: &[usize]) -> i64 {
        let (mut k, mut batch) = (1i64, false);
        for &f in group {
            match self.factors[f].size {
                0 => batch = true,
                s => k *= s as i64,
            }
        }
        if batch {
            batch_times(k)
        } else {
            k
        }
    }

    /// `Transpose(perm)`: view axis `k` is axis `perm[k]` before.
    pub fn transpose(&self, perm: &[i64]) -> R<Arrangement> {
        let rank = self.axes.len();
        let mut seen = vec![false; rank];
        let mut axes = vec![];
        for &p in perm {
            let a = usize::try_from(p).ok().filter(|&a| a < rank && !seen[a]).ok_or_else(|| format!("perm {perm:?} is not a permutation of {rank} axes"))?;
            seen[a] = true;
            axes.push(self.axes[a].clone());
        }
        if axes.len() != rank {
            return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
        }
        Ok(Arrangement { axes, ..self.clone() })
    }

    /// `Reshape(spec)` (0 keeps a dim unless `allowzero`, one −1 takes the rest, batch entries
    /// as [`batch_times`]): the view's factors in order, regrouped, cutting a factor where a
    /// target dim ends inside it.
    pub fn reshape(&self, spec: &[i64], allowzero: bool) -> R<Arrangement> {
        let cur = self.dims();
        let mut target: Vec<i64> = spec.iter().enumerate().map(|(i, &d)| if d == 0 && !allowzero { cur.get(i).copied().unwrap_or(0) } else { d }).collect();
        let mut queue: Vec<usize> = self.axes.concat();
        let total: i64 = queue.iter().map(|&f| self.factors[f].size.max(1) as i64).product();
        let (mut known, mut batch, mut minus) = (1i64, false, None);
        for (i, &d) in target.iter().enumerate() {
            match (d, batch_multiple(d)) {
                (-1, _) if minus.is_none() => minus = Some(i),
                (_, Some(k)) if !batch => {
                    batch = true;
                    known *= k;
                }
                (d, None) if d >= 1 => known *= d,
                _ => return Err(format!("target shape [{}] is not a shape wick can follow", shown(spec))),
            }
        }
        match minus {
            Some(i) if total % known == 0 => target[i] = if batch { total / known } else { batch_times(total / known) },
            None if batch && known == total => {}
            _ => return Err(format!("reshapes [{}] to [{}], which holds another number of elements", shown(&cur), shown(spec))),
        }
        let mut arr = Arrangement { axes: vec![], ..self.clone() };
        queue.reverse();
        for &d in &target {
            let (want, batch) = batch_multiple(d).map_or((d, false), |k| (k, true));
            let (mut group, mut got, mut took_batch) = (vec![], 1i64, false);
            while got < want || (batch && !took_batch) {
                let f = queue.pop().ok_or_else(|| format!("reshapes [{}] to [{}]", shown(&cur), shown(&target)))?;
                let s = arr.factors[f].size as i64;
                if s == 0 {
                    if !batch {
                        return Err(format!("reshapes [{}] to [{}], which gives the batch a fixed size", shown(&cur), shown(&target)));
                    }
                    took_batch = true;
                } else if want % (got * s) == 0 {
                    got *= s;
                } else {
                    let outer = want / got;
                    if outer <= 1 || s % outer != 0 {
                        return Err(format!("reshapes [{}] to [{}], which is not a regrouping of whole axes", shown(&cur), shown(&target)));
                    }
                    let inner = Factor { size: (s / outer) as usize, ..arr.factors[f].clone() };
                    arr.factors[f].size = outer as usize;
                    arr.factors.insert(f + 1, inner);
                    arr.axes.iter_mut().for_each(|g| shift(g, f));
                    shift(&mut group, f);
                    shift(&mut queue, f);
                    queue.push(f + 1);
                    got *= outer;
                }
                group.push(f);
            }
            arr.axes.push(group);
        }
        if !queue.is_empty() {
            return Err(format!("reshapes [{}] to [{}]", shown(&cur), shown(&target)));
        }
        Ok(arr)
    }

    /// `Unsqueeze(axes)`: unit axes at those places of the result.
    pub fn unsqueeze(&self, axes: &[i64]) -> R<Arrangement> {
        let rank = self.axes.len() + axes.len();
        let mut at: Vec<usize> = axes.iter().map(|&a| from_end(a, rank)).collect::<R<_>>()?;
        at.sort_unstable();
        let mut out = self.clone();
        for a in at {
            out.axes.insert(a, vec![]);
        }
        Ok(out)
    }

    /// `Squeeze(axes)` (every unit axis without them).
    pub fn squeeze(&self, axes: Option<&[i64]>) -> R<Arrangement> {
        let rank = self.axes.len();
        let unit = |g: &Vec<usize>| g.iter().all(|&f| self.factors[f].size == 1);
        let drop: Vec<usize> = match axes {
            None => (0..rank).filter(|&a| unit(&self.axes[a])).collect(),
            Some(ax) => {
                ax.iter().map(|&a| from_end(a, rank).and_then(|a| if unit(&self.axes[a]) { Ok(a) } else { Err(format!("axis {a} of [{:?}] is not a unit axis", self.dims())) })).collect::<R<_>>()?
            }
        };
        let axes = self.axes.iter().enumerate().filter(|(a, _)| !drop.contains(a)).map(|(_, g)| g.clone()).collect();
        Ok(Arrangement { axes, ..self.clone() })
    }

    /// `Gather(axis, index)` with one scalar index: that axis fixed at the index.
    pub fn select(&self, axis: i64, index: i64) -> R<Arrangement> {
        let a = from_end(axis, self.axes.len())?;
        let mut out = self.pick(axis, index)?;
        out.axes.remove(a);
        Ok(out)
    }

    /// One index of an axis kept as a unit axis (`Slice` or `Split` of one position, which
    /// `torch.unbind` exports).
    pub fn pick(&self, axis: i64, index: i64) -> R<Arrangement> {
        let a = from_end(axis, self.axes.len())?;
        let &[f] = self.axes[a].as_slice() else { return Err(format!("one index of view axis {a} of {:?}, which merges several axes", self.dims())) };
        let size = self.factors[f].size;
        if size == 0 {
            return Err("one sample taken along the batch axis".into());
        }
        let i = from_end(index, size).map_err(|_| format!("index {index} is out of range for {size} values"))?;
        let mut out = self.clone();
        out.factors[f].fixed = Some(i);
        out.axes[a].clear();
        Ok(out)
    }

    /// The view of a linear layer's output of width `out` over the source's last axis, when this
    /// view's last axis is that axis whole, in order.
    pub fn through_last_axis(&self, out: usize) -> Option<Arrangement> {
        let last = self.shape.len();
        let on_last: Vec<usize> = (0..self.factors.len()).filter(|&f| self.factors[f].axis == last).collect();
        let whole = self.axes.last().is_some_and(|g| *g == on_last) && on_last.iter().all(|&f| self.factors[f].fixed.is_none()) && !on_last.is_empty();
        if !whole || self.scale != 1.0 {
            return None;
        }
        let mut arr = self.clone();
        arr.factors.truncate(on_last[0]);
        arr.factors.push(Factor { axis: last, size: out, fixed: None });
        *arr.axes.last_mut().expect("checked above") = vec![arr.factors.len() - 1];
        *arr.shape.last_mut().expect("checked above") = out;
        Some(arr)
    }

    /// The per-sample shape ONNX gives the view, when it is the source batch-first and in order
    /// (perhaps regrouped): then it is a plain reshape of the source.
    pub fn batch_first(&self) -> Option<Vec<usize>> {
        let in_order = self.axes.concat() == (0..self.factors.len()).collect::<Vec<_>>();
        let plain = self.factors.iter().all(|f| f.fixed.is_none()) && self.scale == 1.0;
        (in_order && plain && self.axes.first() == Some(&vec![0])).then(|| self.axes[1..].iter().map(|g| self.dim(g) as usize).collect())
    }

    /// This view as attention's `q` (rows the positions, columns the head dims) or, `transposed`,
    /// as `kᵀ`, of a source `[L, F]`.
    pub fn heads(&self, transposed: bool) -> R<Heads> {
        let refuse = |why: &str| Err(format!("attention reads q, k and v as [N, heads, L, head dim] views of one [N, L, F] value each ({why})"));
        if self.shape.len() != 2 || self.axes.len() < 3 {
            return refuse("this one is not");
        }
        let rank = self.axes.len();
        let (rows, cols) = if transposed { (&self.axes[rank - 1], &self.axes[rank - 2]) } else { (&self.axes[rank - 2], &self.axes[rank - 1]) };
        let of_axis = |a: usize| (0..self.factors.len()).filter(move |&f| self.factors[f].axis == a);
        let pos: Vec<usize> = of_axis(1).collect();
        if *rows != pos || pos.iter().any(|&f| self.factors[f].fixed.is_some()) {
            return refuse("its rows are not the positions");
        }
        let features: Vec<usize> = of_axis(2).collect();
        let fixed = features.iter().take_while(|&&f| self.factors[f].fixed.is_some()).count();
        let free = &features[fixed..];
        if free.iter().any(|&f| self.factors[f].fixed.is_some()) || !free.ends_with(cols) || cols.is_empty() {
            return refuse("its columns are not the last features of each head");
        }
        let heads = &free[..free.len() - cols.len()];
        let slot = |f: &usize| if *f == 0 { Some(Slot::Batch) } else { heads.iter().position(|h| h == f).map(Slot::Head) };
        let lead: Option<Vec<Vec<Slot>>> = self.axes[..rank - 2].iter().map(|g| g.iter().map(slot).collect()).collect();
        let Some(lead) = lead.filter(|l| l.concat().len() == heads.len() + 1) else {
            return refuse("its leading axes are not the batch and the heads");
        };
        let size = |f: &usize| self.factors[*f].size;
        let width: usize = free.iter().map(size).product();
        // The fixed factors pick one block of `width` features.
        let start = features[..fixed].iter().fold(0, |acc, f| acc * size(f) + self.factors[*f].fixed.expect("fixed")) * width;
        Ok(Heads { lead, head_sizes: heads.iter().map(size).collect(), dim_sizes: cols.iter().map(size).collect(), len: self.shape[0], start, scale: self.scale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: i64 = batch_times(1);

    /// `nn.MultiheadAttention`'s legacy export, L = 8, D = 32, 4 heads: the packed projection
    /// `[N, L, 96]` time-major, split into q, k, v and heads, back to `[N, H, L, d]`.
    #[test]
    fn follows_multihead_attentions_head_split() {
        let x = Arrangement::of(&[8, 96]).transpose(&[1, 0, 2]).unwrap();
        assert_eq!(x.dims(), [8, N, 96]);
        let x = x.reshape(&[8, N, 3, 32], false).unwrap().unsqueeze(&[0]).unwrap().transpose(&[3, 1, 2, 0, 4]).unwrap().squeeze(Some(&[3])).unwrap();
        assert_eq!(x.dims(), [3, 8, N, 32]);
        let k = x.select(0, 1).unwrap().reshape(&[8, batch_times(4), 8], true).unwrap();
        assert_eq!(k.dims(), [8, batch_times(4), 8]);
        let k = k.transpose(&[1, 0, 2]).unwrap().reshape(&[N, 4, 8, 8], false).unwrap();
        let q = x.select(0, 0).unwrap().reshape(&[8, -1, 8], true).unwrap().transpose(&[1, 0, 2]).unwrap().reshape(&[N, 4, 8, 8], false).unwrap();
        let kt = k.transpose(&[0, 1, 3, 2]).unwrap();
        let (hq, hk) = (q.heads(false).unwrap(), kt.heads(true).unwrap());
        assert_eq!((hq.heads(), hq.head_dim(), hq.start, hk.start, hq.len), (4, 8, 0, 32, 8));
        assert!(hq.same_split(&hk));
        assert!(q.heads(true).is_err(), "q's rows are the positions, not kᵀ's");
        // The output back to `[N, L, D]`: time-major rows through the out projection.
        let o = hq.output().transpose(&[2, 0, 1, 3]).unwrap().reshape(&[batch_times(8), 32], false).unwrap();
        assert_eq!(o.dims(), [batch_times(8), 32]);
        let y = o.through_last_axis(32).unwrap().reshape(&[8, N, 32], false).unwrap().transpose(&[1, 0, 2]).unwrap();
        assert_eq!(y.batch_first(), Some(vec![8, 32]));
        assert_eq!(y.transpose(&[1, 0, 2]).unwrap().batch_first(), None);
    }

    /// Reshapes that are no regrouping, or lose the batch, are refused with the shapes.
    #[test]
    fn refuses_what_is_not_a_rearrangement() {
        let x = Arrangement::of(&[6, 10]);
        assert!(x.reshape(&[N, 4, 15], false).unwrap_err().contains("not a regrouping"), "6·10 cut as 4·15");
        assert!(x.reshape(&[2, 30], false).unwrap_err().contains("another number"));
        assert!(x.reshape(&[6, N, 10], false).is_err(), "the batch moved inside a fixed dim");
        assert_eq!(x.reshape(&[N, 3, 2, 10], false).unwrap().batch_first(), Some(vec![3, 2, 10]));
        assert!(x.select(0, 0).unwrap_err().contains("batch"));
        assert_eq!(batch_multiple(batch_times(12)), Some(12));
        assert_eq!(batch_multiple(-1), None);
    }
}
