//! A set read from a repository: its objects listed against the manifest, its small files
//! fetched into the staging directory (checked as they arrive), and, when a restore fails
//! while the dump streamed, the dump object re-read to tell a damaged set from a failed load.

use std::collections::BTreeMap;

use super::*;
use crate::set::LOG_FILE;
use crate::spec::FileEntry;

/// The steps during which the dump streams: a failure there may be the set's bytes.
const STREAMING_STEPS: &[&str] = &["pg_restore", "post_data", "decompress", "psql"];

impl Exec<'_> {
    /// The manifest entry of the dump (a set in a directory was checked whole beforehand: an
    /// entry it lacks is not needed).
    pub(super) fn entry_of(&self, m: &Manifest) -> Result<FileEntry, Stop> {
        match self.dump_entry.clone() {
            Some(e) => Ok(e),
            None if self.source.repository().is_none() => Ok(FileEntry {
                name: m.dump_file.clone(),
                size: 0,
                sha256: String::new(),
            }),
            None => Err(fail(
                "manifest",
                format!("the manifest does not list the dump {}", m.dump_file),
            )),
        }
    }

    /// Level 1 as far as it goes before the dump streams: every object of the manifest is
    /// listed under the set's prefix with its size and nothing else is there; every file but
    /// the dump and the log is fetched into `staging` (sha256 checked) for psql and pg_restore.
    pub(super) async fn fetch_from_repository(
        &mut self,
        m: &Manifest,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
    ) -> Result<(), Stop> {
        let step = "verify";
        let repo = self.source.repository().expect("a repository set").clone();
        let listed = self
            .guarded(step, repo.store.list(&repo.prefix))
            .await?
            .map_err(|e| fail(step, e.to_string()))?;
        let found: BTreeMap<String, u64> = listed
            .into_iter()
            .filter_map(|o| {
                let name = o
                    .key
                    .strip_prefix(&format!("{}/", repo.prefix))?
                    .to_string();
                Some((name, o.size))
            })
            .collect();
        let mut problems = Vec::new();
        for f in &m.files {
            if !set::safe_relative(&f.name) || f.name == set::MANIFEST_FILE {
                problems.push(format!("{:?}: not a valid file name", f.name));
                continue;
            }
            match found.get(&f.name) {
                None => problems.push(format!("{}: missing", repo.describe(&f.name))),
                Some(s) if *s != f.size => problems.push(format!(
                    "{}: size {s}, manifest says {}",
                    repo.describe(&f.name),
                    f.size
                )),
                Some(_) => {}
            }
        }
        for name in found.keys() {
            if name != set::MANIFEST_FILE && !m.files.iter().any(|f| &f.name == name) {
                problems.push(format!("{}: not in the manifest", repo.describe(name)));
            }
        }
        if !problems.is_empty() {
            let e = format!(
                "set {} does not match its manifest: {}",
                self.source.label(),
                problems.join("; ")
            );
            self.out.checksums_failed = Some(e.clone());
            return Err(fail(step, e));
        }
        self.prepare_staging(staging, guard)?;
        self.files_dir = staging.to_path_buf();
        let small: Vec<FileEntry> = m
            .files
            .iter()
            .filter(|f| f.name != m.dump_file && f.name != LOG_FILE)
            .cloned()
            .collect();
        let (src, dir, n) = (self.source.clone(), staging.to_path_buf(), small.len());
        let abort = Arc::new(AtomicBool::new(false));
        let a = Arc::clone(&abort);
        let r = self
            .blocking(step, abort, move || {
                small.iter().try_for_each(|f| src.fetch(f, &dir, &a))
            })
            .await?;
        if let Err(e) = r {
            if let Some(mm) = source::mismatch_of(&e) {
                self.out.checksums_failed = Some(mm);
            }
            return Err(fail(
                step,
                format!("fetching the set {}: {e}", self.source.label()),
            ));
        }
        self.log.event(&format!(
            "{n} file(s) fetched from {} and checked against the manifest; the objects' sizes match (the dump's sha256 is checked as it streams)",
            self.source.label()
        ));
        Ok(())
    }

    /// After a failure while the dump streamed from a repository, without a verdict on the
    /// set yet: the dump object re-read whole; bytes other than the manifest's are the
    /// cause (a damaged set, recorded as a failed level 1), said in the message.
    pub(super) async fn recheck_object(&mut self, stop: Stop) -> Stop {
        let Stop::Failed {
            step,
            exit_status,
            message,
            stderr_tail,
        } = stop
        else {
            return stop;
        };
        let (Some(repo), Some(entry)) = (self.source.repository(), self.dump_entry.as_ref()) else {
            return Stop::Failed {
                step,
                exit_status,
                message,
                stderr_tail,
            };
        };
        // The store failing is no sign of damage (re-reading would wait on it again).
        let store_failed = message.contains(&format!("repository {}:", repo.store.name()));
        if self.out.checksums_failed.is_some()
            || store_failed
            || !STREAMING_STEPS.contains(&step.as_str())
            || self.cancel.is_cancelled()
        {
            return Stop::Failed {
                step,
                exit_status,
                message,
                stderr_tail,
            };
        }
        let key = repo.key(&entry.name);
        let read = tokio::select! {
            r = pgbackman_store::sha256_of(repo.store.as_ref(), &key) => Some(r),
            () = self.cancel.cancelled() => None,
        };
        let message = match read {
            Some(Ok((size, sha))) if size != entry.size || sha != entry.sha256 => {
                let m = source::Mismatch {
                    what: repo.describe(&entry.name),
                    size,
                    sha256: sha,
                    want_size: entry.size,
                    want_sha256: entry.sha256.clone(),
                }
                .to_string();
                self.log.event(&format!("the dump object re-read: {m}"));
                self.out.checksums_failed = Some(m.clone());
                format!("{message}; the set is damaged: {m}")
            }
            Some(Ok(_)) => {
                self.log
                    .event("the dump object re-read: it matches its manifest sha256");
                message
            }
            Some(Err(e)) => {
                self.log
                    .event(&format!("the dump object could not be re-read: {e}"));
                message
            }
            None => message,
        };
        Stop::Failed {
            step,
            exit_status,
            message,
            stderr_tail,
        }
    }
}
