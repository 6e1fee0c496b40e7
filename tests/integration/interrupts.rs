//! Interrupted runs: `compress` and `quantize` signalled at many points, including the write
//! phase, leave either their complete outputs or nothing; a run killed outright (SIGKILL) leaves
//! partial files that the next run into the same place removes.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wick::job::{ARTIFACT, CHART, REPORT_JSON, REPORT_MD};
use wick::tensor_file::TensorFile;

/// The `wick` binary's path, to spawn runs that are signalled while they work.
fn wick_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wick"))
}

fn spawn(args: &[String]) -> Child {
    Command::new(wick_bin()).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("wick starts")
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: sending a signal to our own child process; an already finished child is harmless.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// The names in `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().into_string().unwrap()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// The outputs of a finished compression, sorted.
fn complete() -> Vec<String> {
    let mut v: Vec<String> = [ARTIFACT, CHART, REPORT_JSON, REPORT_MD].map(String::from).to_vec();
    v.sort();
    v
}

/// After a signalled compression: exit 130 (or no exit code, a signal that arrived before the
/// handler was installed) with either no output folder (the run created it) or exactly the
/// complete outputs (the signal came after they moved into place), or exit 0 with exactly the
/// complete outputs; complete outputs always hold a readable artifact.
fn check_compress(out: &Path, code: Option<i32>, when: &str) {
    match code {
        Some(130) | None if !out.exists() => {}
        Some(130) | None | Some(0) => {
            assert_eq!(entries(out), complete(), "{when}: exit {code:?}");
            TensorFile::read(&out.join(ARTIFACT)).expect("the artifact of a finished run reads");
        }
        other => panic!("{when}: exit {other:?}, expected 130 (interrupted) or 0 (finished first)"),
    }
}

fn compress_args(out: &Path) -> Vec<String> {
    let t = &TEACHERS[0];
    let mut a = vec!["compress".into(), t.path().display().to_string(), "--recipe".into(), "ptq-int8".into(), "--quiet".into(), "--out".into(), out.display().to_string()];
    a.extend(t.data_args());
    a
}

/// Waits for `child` to create an entry starting with `prefix` in `dir`; false if it ended first.
fn wait_for_entry(child: &mut Child, dir: &Path, prefix: &str) -> bool {
    loop {
        if entries(dir).iter().any(|e| e.starts_with(prefix)) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_interrupted_compression_leaves_its_outputs_complete_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = dir.path().join("full");
    let status = Command::new(wick_bin()).args(compress_args(&out)).status().unwrap();
    assert!(status.success());
    let whole = started.elapsed();
    // Signals spread over a whole run: loading, calibration, evaluation, writing.
    for i in 0..8u32 {
        let out = dir.path().join(format!("t{i}"));
        let child = spawn(&compress_args(&out));
        std::thread::sleep(whole * i / 8);
        signal(&child, if i % 2 == 0 { libc::SIGTERM } else { libc::SIGINT });
        let code = child.wait_with_output().unwrap().status.code();
        check_compress(&out, code, &format!("signal at {i}/8 of a run"));
    }
    // Signals in the write phase: once the staging folder exists, then a little later each time.
    for delay_ms in [0u64, 5, 20, 50, 100, 200] {
        let out = dir.path().join(format!("w{delay_ms}"));
        let mut child = spawn(&compress_args(&out));
        if wait_for_entry(&mut child, &out, wick::partial_files::STAGING_PREFIX) {
            std::thread::sleep(Duration::from_millis(delay_ms));
            signal(&child, libc::SIGTERM);
        }
        let code = child.wait_with_output().unwrap().status.code();
        check_compress(&out, code, &format!("SIGTERM {delay_ms} ms into the write phase"));
    }
    // Killed outright in the write phase: the staging folder stays, and the next run into the
    // same folder removes it and writes only its outputs.
    let out = dir.path().join("killed");
    let mut child = spawn(&compress_args(&out));
    assert!(wait_for_entry(&mut child, &out, wick::partial_files::STAGING_PREFIX), "the run reaches its write phase");
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(entries(&out).iter().any(|e| e.starts_with(wick::partial_files::STAGING_PREFIX)), "SIGKILL cannot be handled: {:?}", entries(&out));
    run_expect(&compress_args(&out).iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert_eq!(entries(&out), complete());
}

#[test]
fn an_interrupted_quantisation_leaves_its_artifact_complete_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &Path| -> Vec<String> {
        ["quantize", mlp_path().to_str().unwrap(), "--calib", digits("train").to_str().unwrap(), "--test", digits("test").to_str().unwrap(), "--quiet", "--out", out.to_str().unwrap()]
            .map(String::from)
            .to_vec()
    };
    let started = Instant::now();
    assert!(Command::new(wick_bin()).args(args(&dir.path().join("full.safetensors"))).status().unwrap().success());
    let whole = started.elapsed();
    for i in 0..10u32 {
        let folder = dir.path().join(format!("q{i}"));
        std::fs::create_dir(&folder).unwrap();
        let out = folder.join("m.int8.safetensors");
        let child = spawn(&args(&out));
        std::thread::sleep(whole * i / 10 + Duration::from_millis(u64::from(i)));
        signal(&child, libc::SIGTERM);
        match child.wait_with_output().unwrap().status.code() {
            Some(130) | None if entries(&folder).is_empty() => {}
            Some(130) | None | Some(0) => {
                assert_eq!(entries(&folder), ["m.int8.safetensors"], "signal at {i}/10");
                TensorFile::read(&out).expect("the artifact of a finished run reads");
            }
            other => panic!("signal at {i}/10: exit {other:?}"),
        }
    }
    // What a killed run would leave (a temporary file and a staging folder of a process that no
    // longer runs) is removed by the next run writing there; a live process's files are kept.
    let folder = dir.path().join("stale");
    std::fs::create_dir(&folder).unwrap();
    let dead = 1u32 << 30; // above the kernel's largest pid (2^22)
    let stale_tmp = format!("{}{dead}-abcdef", wick::partial_files::TMP_PREFIX);
    let stale_staging = format!("{}{dead}-ghijkl", wick::partial_files::STAGING_PREFIX);
    let live_tmp = format!("{}{}-mnopqr", wick::partial_files::TMP_PREFIX, std::process::id());
    std::fs::write(folder.join(&stale_tmp), b"partial").unwrap();
    std::fs::create_dir(folder.join(&stale_staging)).unwrap();
    std::fs::write(folder.join(&live_tmp), b"another run's").unwrap();
    run_expect(&args(&folder.join("m.int8.safetensors")).iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert_eq!(entries(&folder), [live_tmp, "m.int8.safetensors".to_string()]);
}
