//! Staging folders: a run (a compress job, a written model directory) builds its outputs in
//! one inside its output folder and moves them into place together at the end (`commit`). The
//! folder is a registered partial file, so an interrupted run removes it, and an output folder
//! the run created, if still empty. Uses `partial_files`.

use crate::error::{Result, WickError};
use crate::partial_files::{self, Partial, STAGING_PREFIX};
use std::path::{Path, PathBuf};

/// A run's staging folder, removed when dropped.
pub(crate) struct Staging {
    pub(crate) dir: PathBuf,
    out: PathBuf,
    created_out: Option<Partial>,
}

impl Staging {
    /// Creates the staging folder in `out` (and `out` itself if needed), after removing the
    /// staging folders and temporary files that killed runs left there.
    pub(crate) fn new(out: &Path) -> Result<Staging> {
        let mut reg = partial_files::lock();
        let created_out = if out.is_dir() {
            partial_files::remove_stale(out);
            None
        } else {
            std::fs::create_dir_all(out).map_err(|e| WickError::io(out, e))?;
            let p = Partial::CreatedFolder(out.to_path_buf());
            reg.push(p.clone());
            Some(p)
        };
        let dir = tempfile::Builder::new().prefix(&partial_files::owned_prefix(STAGING_PREFIX)).tempdir_in(out).map_err(|e| WickError::io(out, e))?.keep();
        reg.push(Partial::Folder(dir.clone()));
        Ok(Staging { dir, out: out.to_path_buf(), created_out })
    }

    /// Moves `names` from the staging folder into the output folder, in order, as one step that
    /// an interrupt cannot cut in half.
    pub(crate) fn commit(mut self, names: &[&str]) -> Result<()> {
        let mut reg = partial_files::lock();
        for name in names {
            std::fs::rename(self.dir.join(name), self.out.join(name)).map_err(|e| WickError::io(self.out.join(name), e))?;
        }
        // The output folder now holds the outputs: it is no longer a partial file.
        if let Some(p) = self.created_out.take() {
            partial_files::forget(&mut reg, &p);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut reg = partial_files::lock();
        let _ = std::fs::remove_dir_all(&self.dir);
        partial_files::forget(&mut reg, &Partial::Folder(self.dir.clone()));
        // A run that failed leaves no empty output folder behind.
        if let Some(p) = self.created_out.take() {
            let _ = std::fs::remove_dir(&self.out);
            partial_files::forget(&mut reg, &p);
        }
    }
}
