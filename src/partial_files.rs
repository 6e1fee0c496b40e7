//! Partial files: the temporary files and staging folders a run writes before it renames its
//! outputs into place. They are registered while they exist, so that an interrupted run removes
//! them (`interrupted`), and named after the process that owns them, so that a later run removes
//! those a killed process left behind (`remove_stale`).
//!
//! One lock orders creation, renaming into place and the interrupt: the interrupt handler takes
//! it and never gives it back, so once it has cleaned up, no new partial file can appear and no
//! half-finished set of outputs can be moved into place.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The prefix of temporary files (`write_atomic`).
pub const TMP_PREFIX: &str = ".wick-tmp-";
/// The prefix of staging folders (a compression job's outputs before they move into place).
pub const STAGING_PREFIX: &str = ".wick-staging-";

/// A partial file or folder, and how to remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partial {
    /// A temporary file.
    File(PathBuf),
    /// A staging folder and everything in it.
    Folder(PathBuf),
    /// An output folder the run created: removed only if it is still empty.
    CreatedFolder(PathBuf),
}

impl Partial {
    fn remove(&self) {
        let _ = match self {
            Partial::File(p) => std::fs::remove_file(p),
            Partial::Folder(p) => std::fs::remove_dir_all(p),
            Partial::CreatedFolder(p) => std::fs::remove_dir(p),
        };
    }
}

static REGISTRY: Mutex<Vec<Partial>> = Mutex::new(Vec::new());

/// The registry, locked: create or rename files while holding it.
pub fn lock() -> MutexGuard<'static, Vec<Partial>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets `p` (it was renamed into place or removed by its owner).
pub fn forget(reg: &mut Vec<Partial>, p: &Partial) {
    reg.retain(|q| q != p);
}

/// The interrupt handler's work: removes every registered partial file, folders last (a created
/// output folder is empty only once its staging folder is gone), and exits with 130. The lock
/// is kept until the exit, so the run cannot create or move anything afterwards.
pub fn interrupted() -> ! {
    let reg = lock();
    reg.iter().filter(|p| matches!(p, Partial::File(_) | Partial::Folder(_))).for_each(Partial::remove);
    reg.iter().filter(|p| matches!(p, Partial::CreatedFolder(_))).for_each(Partial::remove);
    std::process::exit(130)
}

/// The prefix for this process's partial files of a kind: `{kind}{pid}-`.
pub fn owned_prefix(kind: &str) -> String {
    format!("{kind}{}-", std::process::id())
}

/// Removes from `dir` the partial files and staging folders whose owning process no longer
/// runs (a run killed with SIGKILL, or a crash), so that they neither pile up nor end up inside
/// a later run's outputs. Entries of live processes, and everything else, are left alone.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        for kind in [TMP_PREFIX, STAGING_PREFIX] {
            let Some(pid) = name.strip_prefix(kind).and_then(owner) else { continue };
            if pid != std::process::id() && !process_runs(pid) {
                let path = e.path();
                let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            }
        }
    }
}

/// The owning pid in the rest of a partial file's name (`{pid}-{random}`).
fn owner(rest: &str) -> Option<u32> {
    let (pid, random) = rest.split_once('-')?;
    if random.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this pid exists (signal 0 checks without sending anything; EPERM
/// means it exists but belongs to someone else).
#[cfg(unix)]
fn process_runs(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
    // SAFETY: kill with signal 0 sends nothing; it only reports whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Without a way to ask, every owner is assumed alive and nothing is removed.
#[cfg(not(unix))]
fn process_runs(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_reads_the_pid_from_a_partial_name_only() {
        assert_eq!(owner("123-abcDEF"), Some(123));
        assert_eq!(owner("123-"), None);
        assert_eq!(owner("abc-def"), None);
        assert_eq!(owner("abcdef"), None);
        assert_eq!(owner("-abc"), None);
    }

    #[test]
    fn stale_partials_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (2^22) cannot belong to a running process.
        let dead = 1u32 << 30;
        let mine = std::process::id();
        let names = [format!("{TMP_PREFIX}{dead}-aaaaaa"), format!("{TMP_PREFIX}{mine}-bbbbbb"), "model.safetensors".to_string(), format!("{TMP_PREFIX}x-cccccc")];
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let stale_dir = dir.path().join(format!("{STAGING_PREFIX}{dead}-dddddd"));
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("model.int8.safetensors"), b"x").unwrap();
        remove_stale(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut want = vec![names[1].clone(), names[2].clone(), names[3].clone()];
        want.sort();
        assert_eq!(left, want);
    }
}
