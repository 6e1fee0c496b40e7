//! The allocator's settings for the programs built on the library (the `wick` binary, the
//! profiling examples), which declare mimalloc as their global allocator.

/// mimalloc's `purge_delay` option: `mimalloc.h` (v2 and v3) numbers it just before
/// `use_numa_nodes`, and the crate names the options around it, not it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Keeps freed memory mapped for the life of the process: by default mimalloc hands memory
/// freed for a while back to the kernel, and each training epoch's large tensors then come
/// back as freshly zeroed 2 MiB pages (a ninth of a ResNet epoch). A `MIMALLOC_PURGE_DELAY`
/// the user set is left as it is.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is thread-safe and takes plain integers.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}
