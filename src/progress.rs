//! How the library reports progress without knowing about terminals: a small trait the CLI
//! implements with indicatif bars (or plain lines in CI logs). Uses nothing else.

/// A sink for the progress of one long task at a time.
pub trait Progress: Sync {
    /// A new task of `total` steps begins.
    fn start(&self, label: &str, total: u64);
    /// `n` more steps are done.
    fn inc(&self, n: u64);
    /// A short live status (loss, accuracy).
    fn message(&self, msg: &str);
    /// The task is over; `summary` is a one-line result worth keeping in the log.
    fn finish(&self, summary: &str);
}

/// Reports nothing (library callers and tests).
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn message(&self, _: &str) {}
    fn finish(&self, _: &str) {}
}
