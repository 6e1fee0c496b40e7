//! Post-training calibration: observe the input activation of every quantised layer over
//! calibration samples and choose its quantisation range. Observers: min-max, moving-average
//! min-max, percentile, entropy (KL divergence, as TensorRT) and MSE. Uses `model`, `quant`,
//! `data`, `progress`.

pub mod histogram;

use crate::data::Dataset;
use crate::error::{Result, WickError};
use crate::model::forward::{Mode, Run};
use crate::model::qunit::{Unit, UnitInput, HIDDEN_RANGE};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::{ActType, QParams};
use histogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a range is chosen from the observed values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `[min, max]` of everything seen.
    Minmax,
    /// PyTorch's moving average of per-batch min and max: `m ← m + 0.01·(batch − m)`.
    MovingAverage,
    /// The `p`-th and `(100 − p)`-th percentiles (default p = 99.99).
    Percentile,
    /// The clipping threshold minimising KL(P ‖ Q) between the clipped and the quantised
    /// histograms (TensorRT's entropy calibration).
    Entropy,
    /// The clipping range minimising the expected squared quantisation error.
    Mse,
    /// Each of min-max, percentile, entropy and MSE, for a caller to choose among
    /// (`passes::calibrate`: the one whose INT8 model stays closest to the float model).
    Auto,
}

impl Method {
    /// The observers a calibration with this method computes: itself, or the four `Auto`
    /// chooses among.
    pub fn candidates(self) -> Vec<Method> {
        match self {
            Method::Auto => vec![Method::Minmax, Method::Percentile, Method::Entropy, Method::Mse],
            m => vec![m],
        }
    }
}

impl std::str::FromStr for Method {
    type Err = WickError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "minmax" => Ok(Method::Minmax),
            "moving_average" | "moving-average" => Ok(Method::MovingAverage),
            "percentile" => Ok(Method::Percentile),
            "entropy" => Ok(Method::Entropy),
            "mse" => Ok(Method::Mse),
            "auto" => Ok(Method::Auto),
            o => Err(WickError::invalid("--method", format!("'{o}' is not one of minmax, moving_average, percentile, entropy, mse, auto"))),
        }
    }
}

/// Calibration settings.
#[derive(Debug, Clone, Serialize)]
pub struct CalibConfig {
    pub method: Method,
    pub percentile: f64,
    pub act: ActType,
    pub batch_size: usize,
}

/// The chosen range of one unit's input and what it clips (a hidden state's: the op's range,
/// which nothing exceeds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerCalib {
    /// What the unit reads: a node's output (its name), or a recurrent node's hidden state.
    pub source: String,
    pub observed_min: f32,
    pub observed_max: f32,
    pub lo: f32,
    pub hi: f32,
    pub qparams: QParams,
    /// Fraction of observed values outside the representable range.
    pub clipped_fraction: f64,
}

/// One calibration: each unit's range, keyed by unit.
pub type Calibration = BTreeMap<String, LayerCalib>;

/// Calibrates the input of every unit in `units` with each of `cfg.method.candidates()`, from
/// one pass of observations. A recurrent hidden state's range is the op's ([`HIDDEN_RANGE`]),
/// not observed.
pub fn calibrate(model: &Model, data: &Dataset, units: &[Unit], cfg: &CalibConfig, progress: &dyn Progress) -> Result<Vec<(Method, Calibration)>> {
    if data.is_empty() {
        return Err(WickError::data(&data.name, "the calibration set is empty"));
    }
    if data.sample_shape() != model.input_shape() {
        return Err(WickError::data(&data.name, format!("calibration inputs have shape {:?} per sample; the model takes {:?}", data.sample_shape(), model.input_shape())));
    }
    let mut sources: Vec<String> = vec![];
    let mut layer_source = BTreeMap::new();
    let mut out = BTreeMap::new();
    for u in units {
        match &u.input {
            UnitInput::Node(src) => {
                if !sources.contains(src) {
                    sources.push(src.clone());
                }
                layer_source.insert(u.key.clone(), src.clone());
            }
            UnitInput::Hidden => {
                let (lo, hi) = HIDDEN_RANGE;
                let qparams = QParams::from_range(lo, hi, cfg.act);
                let source = format!("{} hidden state", u.node);
                out.insert(u.key.clone(), LayerCalib { source, observed_min: lo, observed_max: hi, lo, hi, qparams, clipped_fraction: 0.0 });
            }
        }
    }
    let batches = batches(data, cfg.batch_size.max(1));
    // Pass 1: global and moving-average min/max of each observed tensor.
    let mut stats: BTreeMap<String, RangeStats> = sources.iter().map(|s| (s.clone(), (f32::INFINITY, f32::NEG_INFINITY, None))).collect();
    progress.start("calibrate", batches.len() as u64 * 2);
    for &(start, len) in &batches {
        for (src, vals) in observe(model, data, &sources, start, len)? {
            let (lo, hi) = minmax(&vals, &src)?;
            let s = stats.get_mut(&src).unwrap();
            s.0 = s.0.min(lo);
            s.1 = s.1.max(hi);
            s.2 = Some(match s.2 {
                None => (lo, hi),
                Some((a, b)) => (a + 0.01 * (lo - a), b + 0.01 * (hi - b)),
            });
        }
        progress.inc(1);
    }
    // Pass 2: histograms over the observed range, for the methods that need them.
    let mut hists: BTreeMap<String, Histogram> = stats.iter().map(|(k, &(lo, hi, _))| (k.clone(), Histogram::new(lo, hi))).collect();
    for &(start, len) in &batches {
        for (src, vals) in observe(model, data, &sources, start, len)? {
            hists.get_mut(&src).unwrap().add(&vals);
        }
        progress.inc(1);
    }
    let mut all = vec![];
    for method in cfg.method.candidates() {
        let mut out = out.clone();
        for (layer, src) in &layer_source {
            let (mn, mx, ma) = stats[src];
            let h = &hists[src];
            let (lo, hi) = match method {
                // `Auto` is never a candidate (`Method::candidates`).
                Method::Minmax | Method::Auto => (mn, mx),
                Method::MovingAverage => ma.unwrap_or((mn, mx)),
                Method::Percentile => (h.quantile(1.0 - cfg.percentile / 100.0), h.quantile(cfg.percentile / 100.0)),
                Method::Entropy => h.entropy_range(cfg.act),
                Method::Mse => h.mse_range(cfg.act),
            };
            let qparams = QParams::from_range(lo, hi, cfg.act);
            let (rlo, rhi) = qparams.real_range();
            out.insert(layer.clone(), LayerCalib { source: src.clone(), observed_min: mn, observed_max: mx, lo, hi, qparams, clipped_fraction: h.fraction_outside(rlo, rhi) });
        }
        all.push((method, out));
    }
    progress.finish(&format!("{} units calibrated on {} samples ({:?})", all[0].1.len(), data.len(), cfg.method));
    Ok(all)
}

/// Global min, global max and the moving-average `(min, max)` of one observed tensor.
type RangeStats = (f32, f32, Option<(f32, f32)>);

fn batches(data: &Dataset, bs: usize) -> Vec<(usize, usize)> {
    (0..data.len()).step_by(bs).map(|s| (s, bs.min(data.len() - s))).collect()
}

fn observe(model: &Model, data: &Dataset, taps: &[String], start: usize, len: usize) -> Result<Vec<(String, Vec<f32>)>> {
    let (x, _) = data.slice(start, len)?;
    let (_, t) = model.run(&x, &Run { mode: Mode::Eval, taps, hook: None, rng: None })?;
    t.into_iter().map(|(k, v)| Ok((k, v.flatten_all()?.to_vec1::<f32>()?))).collect()
}

fn minmax(v: &[f32], src: &str) -> Result<(f32, f32)> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &x in v {
        if !x.is_finite() {
            return Err(WickError::node(src, format!("activation holds a non-finite value ({x}) during calibration")));
        }
        lo = lo.min(x);
        hi = hi.max(x);
    }
    Ok((lo, hi))
}
