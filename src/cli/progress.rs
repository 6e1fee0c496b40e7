//! The CLI's progress display: indicatif bars on a terminal, plain periodic one-line progress
//! when stderr is not a terminal (CI logs), nothing with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wick::progress::Progress;

/// Progress on stderr.
pub struct CliProgress {
    quiet: bool,
    tty: bool,
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    msg: String,
    last_line: Instant,
}

/// How often plain progress lines are printed.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl CliProgress {
    /// A progress sink; `quiet` silences everything.
    pub fn new(quiet: bool) -> CliProgress {
        CliProgress { quiet, tty: std::io::stderr().is_terminal(), state: Mutex::new(State { bar: None, label: String::new(), total: 0, done: 0, msg: String::new(), last_line: Instant::now() }) }
    }
}

impl Progress for CliProgress {
    fn start(&self, label: &str, total: u64) {
        if self.quiet {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.label = label.to_string();
        s.total = total;
        s.done = 0;
        s.msg.clear();
        s.last_line = Instant::now();
        if self.tty {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}").expect("valid template").progress_chars("=> "));
            bar.set_prefix(label.to_string());
            s.bar = Some(bar);
        }
    }

    fn inc(&self, n: u64) {
        if self.quiet {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.done += n;
        if let Some(b) = &s.bar {
            b.inc(n);
        } else if s.last_line.elapsed() >= PLAIN_EVERY {
            eprintln!("{}: {}/{} {}", s.label, s.done, s.total, s.msg);
            s.last_line = Instant::now();
        }
    }

    fn message(&self, msg: &str) {
        if self.quiet {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.msg = msg.to_string();
        if let Some(b) = &s.bar {
            b.set_message(msg.to_string());
        }
    }

    fn finish(&self, summary: &str) {
        if self.quiet {
            return;
        }
        let mut s = self.state.lock().unwrap();
        if let Some(b) = s.bar.take() {
            b.finish_and_clear();
        }
        if !summary.is_empty() {
            eprintln!("{}: {summary}", s.label);
        }
    }
}
