//! The `wick` binary: parse, run, map the outcome to an exit code (0 ok, 1 gate failed, 2 error).

mod cli;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc keeps freed memory for reuse: with the system allocator, every training step's
/// tensors came back from the kernel as fresh zeroed pages (a third of a depthwise model's epoch).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    wick::allocator::keep_freed_memory();
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
