//! The `wick` binary: parse, run, map the outcome to an exit code (0 ok, 1 gate failed, 2 error).

mod cli;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc keeps freed memory for reuse: with the system allocator, every training step's
/// tensors came back from the kernel as fresh zeroed pages (a third of a depthwise model's epoch).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: `mimalloc.h` (v2 and v3) numbers it just before
/// `use_numa_nodes`, and the crate names the options around it, not it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Keeps freed memory mapped for the life of the process: by default mimalloc hands memory
/// freed for a while back to the kernel, and each training epoch's large tensors then come
/// back as freshly zeroed 2 MiB pages (a ninth of a ResNet epoch). A `MIMALLOC_PURGE_DELAY`
/// the user set is left as it is.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is thread-safe and takes plain integers.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let parsed = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // An interrupted run leaves no partial outputs: remove its temporary files and staging folders.
    let _ = ctrlc::set_handler(|| wick::partial_files::interrupted());
    match cli::run(parsed) {
        Ok(cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(cli::Outcome::GateFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
