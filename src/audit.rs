//! A record of the costly work a run does — compiling a model into a plan, evaluating a model on
//! a data set — kept in debug builds only (tests), so that a test can check that one
//! `compress` run does each of them at most once per distinct model. Models are told apart by a
//! hash of their architecture and parameters. The record is per thread: a run evaluates on its
//! calling thread. Uses `model`, `artifact`.

use crate::artifact::Int8Model;
use crate::model::Model;

/// One piece of recorded work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// A plan compiled for the model of this fingerprint (`int8`: the integer plan).
    Compiled { model: u64, int8: bool },
    /// The model of this fingerprint evaluated on the data set of this name.
    Evaluated { model: u64, data: String },
}

#[cfg(debug_assertions)]
thread_local! {
    static EVENTS: std::cell::RefCell<Vec<Event>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records `event` (debug builds only).
pub fn record(event: impl FnOnce() -> Event) {
    #[cfg(debug_assertions)]
    EVENTS.with(|e| e.borrow_mut().push(event()));
    #[cfg(not(debug_assertions))]
    let _ = event;
}

/// The events recorded on this thread since the last call (always empty in release builds).
pub fn take() -> Vec<Event> {
    #[cfg(debug_assertions)]
    return EVENTS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    #[cfg(not(debug_assertions))]
    Vec::new()
}

/// A hash of a float model's architecture and every parameter's values.
pub fn fingerprint(m: &Model) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&m.arch).unwrap_or_default().hash(&mut h);
    for (name, v) in &m.params {
        name.hash(&mut h);
        if let Ok(values) = v.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>()) {
            values.iter().for_each(|x| x.to_bits().hash(&mut h));
        }
    }
    h.finish()
}

/// [`fingerprint`] of an INT8 model: its float model and each layer's input quantisation.
pub fn fingerprint_int8(q: &Int8Model) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fingerprint(&q.model).hash(&mut h);
    for (name, l) in &q.layers {
        name.hash(&mut h);
        match l.input {
            crate::quant::InputQuant::Static(p) => (p.scale.to_bits(), p.zero_point).hash(&mut h),
            crate::quant::InputQuant::PerToken(act) => format!("{act:?}").hash(&mut h),
        }
    }
    h.finish()
}
