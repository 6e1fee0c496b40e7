//! Work split over the rayon pool only where it pays: a parallel call from outside the pool
//! hands the job to a worker thread and waits for it (microseconds each time), which costs more
//! than a small job takes, and with one thread it buys nothing.

/// Elements of work below which a job runs on the calling thread.
pub const MIN_PARALLEL_WORK: usize = 1 << 15;

/// Matrix products smaller than this many multiply-adds (about 40 µs of work) run on the
/// calling thread, integer and float alike: waking the pool costs more than it saves below it
/// (measured at batch 1, where the ResNet's 0.6 M-MAC layers ran 2x slower on 2 threads than on
/// 1 with the old 1 << 18).
pub const PARALLEL_MIN_MACS: usize = 1 << 21;

/// Calls `f(i, chunk)` for each `size`-long chunk of `data` (the last may be shorter): on the
/// rayon pool when `work` (the job's size in elements touched) reaches `MIN_PARALLEL_WORK` and
/// the pool has more than one thread, else in order on the calling thread.
pub fn for_chunks<T: Send>(data: &mut [T], size: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    use rayon::prelude::*;
    let size = size.max(1);
    if work >= MIN_PARALLEL_WORK && rayon::current_num_threads() > 1 {
        data.par_chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
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
}
