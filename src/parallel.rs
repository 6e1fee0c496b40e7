//! Work split over the rayon pool only where it pays: a parallel call from outside the pool
//! hands the job to a worker thread and waits for it (microseconds each time), which costs more
//! than a small job takes, and with one thread it buys nothing.

use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// Set while this thread runs one part of a `map_parts` job.
    static IN_PART: Cell<bool> = const { Cell::new(false) };
}

/// Whether work on this thread may be split over the pool: the pool has more than one thread
/// and this thread is not running one part of a `map_parts` job, whose parts already keep
/// every thread busy (splitting further would only add synchronisation).
pub fn may_split() -> bool {
    rayon::current_num_threads() > 1 && !IN_PART.with(Cell::get)
}

/// `f(i, chunk)` for each `size`-long chunk of `data` as one parallel job of independent
/// parts, results in chunk order. Inside a part nothing is split further (`may_split` is
/// false), so each part runs start to finish on one thread: one fork-join for the whole job
/// instead of one per step inside it. A single chunk runs on the calling thread with splitting
/// left as it was.
pub fn map_parts<T: Send, R: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) -> R + Sync + Send) -> Vec<R> {
    let size = size.max(1);
    if data.len() <= size {
        return data.chunks_mut(size).enumerate().map(|(i, c)| f(i, c)).collect();
    }
    let (total, started, done) = (data.len().div_ceil(size), AtomicUsize::new(0), AtomicUsize::new(0));
    let part = |(i, c): (usize, &mut [T])| {
        /// Restores the flag even if `f` panics (rayon hands the panic to the caller and the
        /// worker thread lives on).
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                IN_PART.set(self.0);
            }
        }
        started.fetch_add(1, Ordering::Relaxed);
        let r = {
            let _restore = Restore(IN_PART.replace(true));
            f(i, c)
        };
        done.fetch_add(1, Ordering::Release);
        wait_for_running_parts(&started, &done, total);
        r
    };
    if may_split() {
        data.par_chunks_mut(size).enumerate().map(part).collect()
    } else {
        data.chunks_mut(size).enumerate().map(part).collect()
    }
}

/// The longest a finished part spins for the others (see [`wait_for_running_parts`]): a few
/// times the wake-up it saves, so that parts of uneven length do not burn a core for long.
const PART_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// Spins, for at most [`PART_SPIN`], while every one of `total` parts has started and some
/// are still running on other threads. A thread that waits for a stolen part inside rayon's
/// join soon goes to sleep, and being woken when the part ends took tens of microseconds on
/// a VM (a tenth of a small net's batch); a part that has not started is left to rayon, which
/// may run it on this very thread.
fn wait_for_running_parts(started: &AtomicUsize, done: &AtomicUsize, total: usize) {
    let since = std::time::Instant::now();
    let mut spins = 0u32;
    while done.load(Ordering::Acquire) < total && started.load(Ordering::Relaxed) == total {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) && since.elapsed() > PART_SPIN {
            return;
        }
    }
}

/// Runs `f` on this thread while the pool's other threads stay awake: each runs a task that
/// takes the pool's pending work (`rayon::yield_now`) and otherwise yields its core to any other
/// runnable thread (a pure spin took the cores of other processes and of concurrent jobs: the
/// test suite, two tests at a time, ran 35 % longer), until `f` returns.
/// A training step alternates short parallel regions with serial work; between them an idle
/// worker fell asleep, and waking it at the next region cost the calling thread a tenth of its
/// time on a VM. A task that lands on this very thread (it can, while a join waits) returns at
/// once, so `f` can never wait on it.
pub fn with_workers_awake<R>(f: impl FnOnce() -> R) -> R {
    let (Some(me), others) = (rayon::current_thread_index(), rayon::current_num_threads().saturating_sub(1)) else { return f() };
    if others == 0 || IN_PART.with(Cell::get) {
        return f();
    }
    /// Ends the tasks however `f` ends, a panic included (the scope waits for them first).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    rayon::in_place_scope(|s| {
        for _ in 0..others {
            s.spawn(|_| {
                if rayon::current_thread_index() == Some(me) {
                    return;
                }
                while !stop.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let _stop = Stop(&stop);
        f()
    })
}

/// Elements of work below which a job runs on the calling thread.
pub const MIN_PARALLEL_WORK: usize = 1 << 15;

/// Matrix products of at least this many multiply-adds (about 40 µs of work) are cut into
/// several tasks of rows per thread, so that uneven cores even out; smaller ones down to
/// [`SPLIT_MIN_MACS`] into one part per thread.
pub const PARALLEL_MIN_MACS: usize = 1 << 21;

/// Float matrix products smaller than this many multiply-adds (about 5 µs on one Zen 4 core)
/// run on the calling thread: a part handed to another thread starts about 0.6 µs later and
/// the join costs about as much again. A product of `GROUP` activations per lane and
/// instruction (integer pairs and quads) takes `GROUP` times as many.
pub const SPLIT_MIN_MACS: usize = 1 << 18;

/// Calls `f(i, chunk)` for each `size`-long chunk of `data` (the last may be shorter): on the
/// rayon pool when `work` (the job's size in elements touched) reaches `MIN_PARALLEL_WORK` and
/// the pool has more than one thread, else in order on the calling thread.
pub fn for_chunks<T: Send>(data: &mut [T], size: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let size = size.max(1);
    if work >= MIN_PARALLEL_WORK && may_split() {
        data.par_chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// A new `len`-long vector built chunk by chunk without zeroing it first: `f(i, chunk)` is
/// called for each `size`-long chunk as in `for_chunks`. Zeroing a buffer that is then
/// overwritten is a pass over memory on the calling thread.
///
/// # Safety
/// `f` must initialise every element of every chunk it is given.
pub unsafe fn build_chunks<T: Copy + Send>(len: usize, size: usize, work: usize, f: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    for_chunks(&mut v.spare_capacity_mut()[..len], size, work, f);
    // SAFETY: the chunks cover `..len` and the caller guarantees `f` initialised each.
    unsafe { v.set_len(len) };
    v
}

/// Zeroes `chunk` and returns it as initialised values (for chunks that accumulate).
pub fn zeroed(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    chunk.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was initialised just above; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_chunk_is_visited_once_with_its_index() {
        for work in [0, super::MIN_PARALLEL_WORK] {
            let mut v = vec![0usize; 10];
            super::for_chunks(&mut v, 3, work, |i, c| c.iter_mut().for_each(|x| *x += i + 1));
            assert_eq!(v, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
        }
    }

    #[test]
    fn parts_return_in_order_and_do_not_split_further() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut v: Vec<usize> = (0..10).collect();
        let (splits, out) = pool.install(|| (super::may_split(), super::map_parts(&mut v, 3, |i, c| (i, c.iter().sum::<usize>(), super::may_split()))));
        assert!(splits);
        assert_eq!(out, [(0, 3, false), (1, 12, false), (2, 21, false), (3, 9, false)]);
        // One chunk: run as is, splitting allowed.
        assert_eq!(pool.install(|| super::map_parts(&mut v, 10, |_, _| super::may_split())), [true]);
    }

    /// With the pool's other thread held by another job, the parts all run on the calling
    /// thread: a finished part does not wait for a sibling that no thread has started.
    #[test]
    fn parts_finish_when_no_other_thread_is_free() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (held, release) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (h, r) = (held.clone(), release.clone());
        pool.spawn(move || {
            h.store(true, Ordering::Release);
            while !r.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        });
        while !held.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let mut v: Vec<usize> = (0..4).collect();
        let out = pool.install(|| super::map_parts(&mut v, 2, |i, c| (i, c.iter().sum::<usize>(), std::thread::current().id())));
        release.store(true, Ordering::Release);
        assert_eq!(out.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), [(0, 1), (1, 5)]);
        assert_eq!(out[0].2, out[1].2, "one thread ran both parts");
    }

    /// The pool's parallel work runs while the other thread is kept awake, the result comes
    /// back, and a panic in `f` ends the kept-awake task instead of leaving the scope waiting.
    #[test]
    fn work_runs_while_the_other_thread_is_kept_awake_and_a_panic_ends_it() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut v: Vec<usize> = (0..8).collect();
        let out = pool.install(|| super::with_workers_awake(|| super::map_parts(&mut v, 4, |i, c| (i, c.iter().sum::<usize>()))));
        assert_eq!(out, [(0, 6), (1, 22)]);
        let caught = pool.install(|| std::panic::catch_unwind(|| super::with_workers_awake(|| panic!("a step failed"))));
        assert!(caught.is_err());
        assert_eq!(pool.install(|| super::with_workers_awake(|| 7)), 7);
    }

    #[test]
    fn built_vector_holds_what_every_chunk_wrote() {
        for work in [0, super::MIN_PARALLEL_WORK] {
            // SAFETY: each chunk writes all of its elements.
            let v = unsafe {
                super::build_chunks(10, 3, work, |i, c| {
                    c.iter_mut().enumerate().for_each(|(j, x)| {
                        x.write((i * 3 + j) as f32);
                    })
                })
            };
            assert_eq!(v, (0..10).map(|x| x as f32).collect::<Vec<_>>());
        }
    }
}
