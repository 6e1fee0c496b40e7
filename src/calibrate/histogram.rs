//! A fine histogram of observed activations and the range searches that use it (percentile,
//! entropy, MSE). Bins are uniform over `[min, max]`; a value's bin is
//! `⌊(x − min) / width⌋` clamped to the last bin.

use crate::quant::{ActType, QParams};

/// Number of bins: fine enough that the entropy search has 2048 candidate thresholds.
pub const BINS: usize = 2048;

/// A histogram over `[lo, hi]`.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<f64>,
    /// Values exactly 0, kept out of `counts`.
    pub zeros: f64,
}

impl Histogram {
    /// An empty histogram over `[lo, hi]` (a zero-width range still gets one usable bin).
    pub fn new(lo: f32, hi: f32) -> Histogram {
        Histogram { lo, hi, counts: vec![0.0; BINS], zeros: 0.0 }
    }

    fn width(&self) -> f32 {
        ((self.hi - self.lo) / BINS as f32).max(f32::MIN_POSITIVE)
    }

    /// Counts `values`.
    pub fn add(&mut self, values: &[f32]) {
        let w = self.width();
        for &x in values {
            if x == 0.0 {
                self.zeros += 1.0;
                continue;
            }
            let b = (((x - self.lo) / w) as usize).min(BINS - 1);
            self.counts[b] += 1.0;
        }
    }

    fn total(&self) -> f64 {
        self.counts.iter().sum::<f64>() + self.zeros
    }

    /// The bin that holds the value 0 (for placing the zero count in order).
    fn zero_bin(&self) -> usize {
        (((0.0 - self.lo) / self.width()).max(0.0) as usize).min(BINS - 1)
    }

    fn center(&self, b: usize) -> f32 {
        self.lo + (b as f32 + 0.5) * self.width()
    }

    /// The value below which a fraction `q` of the counts lie (upper edge of that bin).
    pub fn quantile(&self, q: f64) -> f32 {
        let target = q.clamp(0.0, 1.0) * self.total();
        let zb = self.zero_bin();
        let mut acc = 0.0;
        for (b, &c) in self.counts.iter().enumerate() {
            let c = if b == zb { c + self.zeros } else { c };
            acc += c;
            if acc >= target && c > 0.0 {
                return (self.lo + (b + 1) as f32 * self.width()).min(self.hi);
            }
        }
        self.hi
    }

    /// Fraction of counts in bins whose centre lies outside `[lo, hi]`.
    pub fn fraction_outside(&self, lo: f32, hi: f32) -> f64 {
        let t = self.total();
        if t == 0.0 {
            return 0.0;
        }
        let out: f64 = self
            .counts
            .iter()
            .enumerate()
            .filter(|(b, _)| {
                let c = self.center(*b);
                c < lo || c > hi
            })
            .map(|(_, c)| c)
            .sum();
        out / t
    }

    /// Expected squared error `Σ_b n_b · (c_b − dq(q(c_b)))²` of quantising with `q`.
    fn sq_error(&self, q: &QParams) -> f64 {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0.0)
            .map(|(b, &c)| {
                let x = self.center(b);
                let e = (x - q.dequantize(q.quantize(x))) as f64;
                c * e * e
            })
            .sum()
    }

    /// MSE search: shrink `[min, max]` by factors `α = 1, 0.99, …, 0.01` and keep the range
    /// whose quantisation has the least expected squared error.
    pub fn mse_range(&self, act: ActType) -> (f32, f32) {
        let mut best = (f64::INFINITY, self.lo, self.hi);
        for k in (1..=100).rev() {
            let a = k as f32 / 100.0;
            let (lo, hi) = (self.lo * a, self.hi * a);
            let e = self.sq_error(&QParams::from_range(lo, hi, act));
            if e < best.0 {
                best = (e, lo, hi);
            }
        }
        (best.1, best.2)
    }

    /// Entropy calibration. Values are folded to magnitudes `|x|` (one-sided data is used as is);
    /// for each threshold bin `i`, P is the magnitude histogram clipped at `i` (outliers added to
    /// the last bin) and Q is P merged into `L` quantisation levels and spread back over P's
    /// non-empty bins (built from the bins below `i` alone, outliers excluded); the `i` with the
    /// least `KL(P ‖ Q)` gives the threshold.
    /// `L` = the type's span (255, or 127 for u7) for one-sided data in an asymmetric type, else
    /// half of it (one side of the grid).
    pub fn entropy_range(&self, act: ActType) -> (f32, f32) {
        let one_sided = self.lo >= 0.0;
        let amax = self.lo.abs().max(self.hi.abs());
        if amax == 0.0 {
            return (0.0, 0.0);
        }
        // Magnitude histogram over [0, amax] with BINS bins.
        let mut mag = vec![0f64; BINS];
        let mw = amax / BINS as f32;
        for (b, &c) in self.counts.iter().enumerate() {
            if c > 0.0 {
                let x = self.center(b).abs();
                mag[((x / mw) as usize).min(BINS - 1)] += c;
            }
        }
        let (qmin, qmax) = act.range();
        let span = (qmax - qmin) as usize;
        let levels = if one_sided && act != ActType::I8 { span } else { span / 2 };
        let mut best = (f64::INFINITY, BINS);
        for i in levels..=BINS {
            let kl = kl_clipped(&mag, i, levels);
            // Ties go to the larger threshold: clipping more for no loss is never better. Data
            // with few distinct values (an image's 17 grey levels) has KL 0 both unclipped and
            // clipped to its first spike, where everything else folds into one bin.
            if kl <= best.0 + 1e-12 {
                best = (kl.min(best.0), i);
            }
        }
        let t = best.1 as f32 * mw;
        if one_sided {
            (self.lo.max(0.0), t.min(self.hi))
        } else {
            (self.lo.max(-t), self.hi.min(t))
        }
    }
}

/// `KL(P ‖ Q)` for threshold bin `i` and `levels` quantisation levels (see `entropy_range`).
fn kl_clipped(mag: &[f64], i: usize, levels: usize) -> f64 {
    let mut p: Vec<f64> = mag[..i].to_vec();
    p[i - 1] += mag[i..].iter().sum::<f64>();
    let total: f64 = p.iter().sum();
    if total == 0.0 {
        return 0.0;
    }
    let mut q = vec![0f64; i];
    for l in 0..levels {
        let (a, b) = (l * i / levels, ((l + 1) * i / levels).max(l * i / levels + 1).min(i));
        let nonzero = mag[a..b].iter().filter(|&&c| c > 0.0).count();
        if nonzero == 0 {
            continue;
        }
        // Q is built from the clipped histogram *without* the outliers folded in, so clipping
        // mass away costs divergence (TensorRT's formulation).
        let sum: f64 = mag[a..b].iter().sum();
        for j in a..b {
            if mag[j] > 0.0 {
                q[j] = sum / nonzero as f64;
            }
        }
    }
    let qt: f64 = q.iter().sum();
    let mut kl = 0.0;
    for j in 0..i {
        if p[j] > 0.0 {
            let pj = p[j] / total;
            // A bin P has and Q lacks (the last bin, holding only folded outliers): KL is
            // infinite, as in TensorRT and pytorch-quantization, so such thresholds never win.
            if q[j] == 0.0 {
                return f64::INFINITY;
            }
            kl += pj * (pj / (q[j] / qt)).ln();
        }
    }
    kl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_like(n: usize) -> Vec<f32> {
        // Deterministic bell-shaped data plus a few far outliers.
        let mut v: Vec<f32> = (0..n)
            .map(|i| {
                let u = (i as f32 + 0.5) / n as f32;
                // inverse of a logistic CDF: bell-shaped, symmetric, scale 1
                (u / (1.0 - u)).ln()
            })
            .collect();
        v.extend([40.0, -40.0]);
        v
    }

    #[test]
    fn percentile_clips_outliers() {
        let v = gaussian_like(100_000);
        let mut h = Histogram::new(-40.0, 40.0);
        h.add(&v);
        let hi = h.quantile(0.9999);
        assert!(hi > 8.0 && hi < 12.0, "{hi}");
        assert!((h.quantile(0.5)).abs() < 0.1);
    }

    #[test]
    fn entropy_and_mse_clip_far_outliers() {
        let v = gaussian_like(100_000);
        let mut h = Histogram::new(-40.0, 40.0);
        h.add(&v);
        // Entropy clips the two far outliers: the threshold lands in the bulk's tail.
        let (lo, hi) = h.entropy_range(ActType::U8);
        assert!(hi < 30.0 && hi > 3.0, "entropy threshold {hi}");
        assert!(lo > -30.0 && lo < -3.0, "entropy threshold {lo}");
        // MSE weighs the outliers' squared error (2 · 7.6² for a 0.81 shrink) against a finer
        // step for 100k values: it shrinks the range, but less.
        let (lo, hi) = h.mse_range(ActType::U8);
        assert!(hi < 40.0 && lo > -40.0, "mse range {lo}..{hi}");
        // MSE on the clipped range is lower than on the full range.
        let full = h.sq_error(&QParams::from_range(-40.0, 40.0, ActType::U8));
        let (lo, hi) = h.mse_range(ActType::U8);
        assert!(h.sq_error(&QParams::from_range(lo, hi, ActType::U8)) < full);
    }

    /// Digits-like input (half exact zeros, the rest on 16 grey levels, 1/16 apart): every
    /// type keeps the whole range. Clipped at the first level, everything folds into one spike
    /// and KL is 0 there too, so the search must not stop there, on 7-bit and symmetric grids
    /// (127 levels) as on 8-bit ones.
    #[test]
    fn few_distinct_values_keep_their_range() {
        let v: Vec<f32> = (0..64_000).map(|i| if i % 2 == 0 { 0.0 } else { ((i / 2) % 17) as f32 / 16.0 }).collect();
        let mut h = Histogram::new(0.0, 1.0);
        h.add(&v);
        for act in [ActType::U8, ActType::U7, ActType::I8] {
            let (lo, hi) = h.entropy_range(act);
            assert_eq!(lo, 0.0, "{act:?}");
            assert!(hi > 0.99, "{act:?}: threshold {hi}");
        }
    }

    #[test]
    fn uniform_data_keeps_its_range() {
        let v: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0 * 6.0).collect();
        let mut h = Histogram::new(0.0, 6.0);
        h.add(&v);
        let (lo, hi) = h.entropy_range(ActType::U8);
        assert_eq!(lo, 0.0);
        assert!(hi > 5.5, "uniform data should not be clipped much: {hi}");
    }
}
