//! The last steps every set goes through, logical or base backup: the run's log closed and
//! hashed, `manifest.json` written, the staging directory fsynced (then [`super::place_set`]).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::child::RunLog;
use crate::set::{self, LOG_FILE, MANIFEST_FILE, Manifest};
use crate::spec::FileEntry;

use super::{Bounds, Stop, fail};

impl Bounds<'_> {
    /// Closes `log` (`backup.log` in `staging`: part of the set) and hashes it.
    pub(crate) async fn close_log(
        &self,
        log: &Arc<RunLog>,
        staging: &Path,
    ) -> Result<FileEntry, Stop> {
        let log = Arc::clone(log);
        let path = staging.join(LOG_FILE);
        let abort = Arc::new(AtomicBool::new(false));
        let a = Arc::clone(&abort);
        let p = path.clone();
        self.blocking("write", abort, move || {
            log.close()?;
            let (size, sha256) = set::hash_file(&p, &a)?;
            Ok::<_, std::io::Error>(FileEntry {
                name: LOG_FILE.into(),
                size,
                sha256,
            })
        })
        .await?
        .map_err(|e| fail("write", format!("{}: {e}", path.display())))
    }

    /// Writes `manifest` as `manifest.json` into `staging` (fsynced).
    pub(crate) async fn write_manifest(
        &self,
        staging: &Path,
        manifest: &Manifest,
    ) -> Result<FileEntry, Stop> {
        let text =
            serde_json::to_vec_pretty(manifest).map_err(|e| fail("manifest", e.to_string()))?;
        let dir = staging.to_path_buf();
        self.blocking("manifest", Arc::default(), move || {
            set::write_private_file(&dir, MANIFEST_FILE, &text)
        })
        .await?
        .map_err(|e| {
            fail(
                "write",
                format!("{}: {e}", staging.join(MANIFEST_FILE).display()),
            )
        })
    }

    /// fsync of `staging` itself (its files were synced as they were closed).
    pub(crate) async fn fsync_staging(&self, staging: &Path) -> Result<(), Stop> {
        let dir = staging.to_path_buf();
        self.blocking("fsync", Arc::default(), move || set::fsync_dir(&dir))
            .await?
            .map_err(|e| fail("fsync", format!("{}: {e}", staging.display())))
    }
}
