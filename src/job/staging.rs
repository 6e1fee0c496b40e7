//! Staging folders: a compress run builds its outputs in one inside its output folder and moves
//! them into place at the end; the registry lets the CLI's interrupt handler remove the folders
//! of runs in progress, so an interrupted run leaves no partial files.

use crate::error::{Result, WickError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Staging folders of runs in progress, for the CLI's interrupt handler to remove.
pub static STAGING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every staging folder of runs in progress (on interrupt).
pub fn remove_staging() {
    if let Ok(v) = STAGING.lock() {
        for d in v.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A run's staging folder, removed when dropped.
pub(super) struct Staging(pub(super) PathBuf);
impl Staging {
    pub(super) fn new(out: &Path) -> Result<Staging> {
        std::fs::create_dir_all(out).map_err(|e| WickError::io(out, e))?;
        let d = tempfile::Builder::new().prefix(".wick-staging-").tempdir_in(out).map_err(|e| WickError::io(out, e))?.keep();
        STAGING.lock().expect("staging registry").push(d.clone());
        Ok(Staging(d))
    }
}
impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Ok(mut v) = STAGING.lock() {
            v.retain(|d| d != &self.0);
        }
    }
}
