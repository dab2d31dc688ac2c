//! Levels 1 and 2, and the manifest of a drill, for a set stored in a repository. Level 1
//! re-reads every object against the sha256 the catalog recorded (the manifest's own
//! included); level 2 feeds `pg_restore --list` from the dump object as it streams (it reads the
//! head only), or decodes an SQL set's stream to its end. A store that does not answer is no
//! verdict on the set: the caller reports an error, not a failed verification.

use pgbackman_store::ErrorKind;

use super::*;
use crate::restore::RepositorySet;
use crate::spec::FileEntry;

/// Levels 1 and 2 of the set `repo` whose files (the manifest included) the catalog recorded
/// as `files`. `Ok(None)` when cancelled; `Err` when the repository could not be read (no
/// verdict).
pub async fn verify_levels_in(
    repo: &RepositorySet,
    files: &[FileEntry],
    bin_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Option<Verification>, String> {
    let t0 = Instant::now();
    // Level 1: object by object, each against the catalog's sha256.
    for f in files {
        let key = repo.key(&f.name);
        let read = tokio::select! {
            r = pgbackman_store::sha256_of(repo.store.as_ref(), &key) => r,
            () = cancel.cancelled() => return Ok(None),
        };
        match read {
            Ok((size, sha)) if size == f.size && sha == f.sha256 => {}
            Ok((size, sha)) => {
                let m = crate::restore::source::Mismatch {
                    what: repo.describe(&f.name),
                    size,
                    sha256: sha,
                    want_size: f.size,
                    want_sha256: f.sha256.clone(),
                };
                return Ok(Some(Verification::failed(1, m.to_string(), t0)));
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Ok(Some(Verification::failed(1, e.to_string(), t0)));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    // Level 2, from the manifest the catalog's sha256 has just vouched for.
    let source = Source::new(Path::new(""), Some(repo));
    let s = source.clone();
    let m = match tokio::task::spawn_blocking(move || s.read_manifest()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(format!("internal error: {e}")),
    };
    if m.encryption.is_some() {
        // Level 2 reads the plaintext: it needs an identity, and the agents that verify hold
        // none (as for a set in a directory); level 1, the ciphertext's sha256, passed above.
        return Ok(Some(Verification {
            level: 1,
            state: VerifyState::Passed,
            error: None,
            toc_entries: None,
            seconds: t0.elapsed().as_secs_f64(),
        }));
    }
    match check_archive(&source, &m, bin_dir, None, cancel).await {
        Ok(toc_entries) => Ok(Some(Verification {
            level: 2,
            state: VerifyState::Passed,
            error: None,
            toc_entries,
            seconds: t0.elapsed().as_secs_f64(),
        })),
        Err(ToolError::Cancelled) => Ok(None),
        Err(ToolError::Failed {
            message,
            stderr_tail,
        }) => {
            // The object store failing while pg_restore read is no verdict on the archive.
            if message.contains(&format!("repository {}:", repo.store.name())) {
                return Err(message);
            }
            let why = stderr_tail.lines().last().unwrap_or_default().trim();
            let message = if why.is_empty() {
                message
            } else {
                format!("{message}: {why}")
            };
            Ok(Some(Verification::failed(2, message, t0)))
        }
    }
}

/// Levels 1 and 2 of a set just uploaded ([`crate::run_backup_to`]): a repository that cannot
/// be read back fails level 1 (the set is not known good). None when cancelled.
pub(crate) async fn after_upload(
    target: &crate::upload::StoreTarget,
    files: &[FileEntry],
    bin_dir: &Path,
    cancel: &CancellationToken,
) -> Option<Verification> {
    let t0 = Instant::now();
    let repo = RepositorySet {
        store: std::sync::Arc::clone(&target.store),
        prefix: target.prefix.clone(),
    };
    match verify_levels_in(&repo, files, bin_dir, cancel).await {
        Ok(v) => v,
        Err(e) => Some(Verification::failed(1, e, t0)),
    }
}

/// The manifest of a set in a repository, its sha256 against the one the catalog recorded
/// (when given): the first check of a drill.
pub(super) async fn checked_manifest(
    repo: &RepositorySet,
    manifest_sha256: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Manifest, super::Stop> {
    let source = Source::new(Path::new(""), Some(repo));
    let s = source.clone();
    let h = tokio::task::spawn_blocking(move || s.manifest_bytes());
    let bytes = tokio::select! {
        r = h => r
            .map_err(|e| stop(DrillState::Error, "verify", format!("internal error: {e}")))?
            .map_err(|e| stop(DrillState::Error, "verify", e.to_string()))?,
        () = cancel.cancelled() => return Err(stop(DrillState::Cancelled, "verify", "cancelled")),
    };
    let what = repo.describe(MANIFEST_FILE);
    if let Some(want) = manifest_sha256 {
        let got = hex::encode(Sha256::digest(&bytes));
        if got != want {
            return Err(stop(
                DrillState::Failed,
                "verify",
                format!("{what}: sha256 {got}, the catalog recorded {want}"),
            ));
        }
    }
    crate::set::parse_manifest(&bytes, PathBuf::from(what))
        .map_err(|e| stop(DrillState::Failed, "verify", e.to_string()))
}

/// Level 2 of a directory-format dump in a repository: its `toc.dat` fetched (checked) into a
/// private temporary directory, `pg_restore --list` on it, the directory removed.
pub(super) async fn directory_toc(
    source: &Source,
    m: &Manifest,
    bin_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Option<u64>, ToolError> {
    let toc_name = format!("{}/toc.dat", m.dump_file);
    let Some(entry) = m.files.iter().find(|f| f.name == toc_name).cloned() else {
        return Err(ToolError::failed(format!(
            "the manifest lists no {toc_name}"
        )));
    };
    let tmp = std::env::temp_dir().join(format!(
        "pgbackman-verify-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    crate::set::create_private_dir_all(&tmp)
        .map_err(|e| ToolError::failed(format!("{}: {e}", tmp.display())))?;
    let _guard = crate::set::StagingGuard::new(tmp.clone());
    let (s, d) = (source.clone(), tmp.clone());
    let fetched = tokio::task::spawn_blocking(move || s.fetch(&entry, &d, &AtomicBool::new(false)))
        .await
        .map_err(|e| ToolError::failed(format!("internal error: {e}")))?;
    fetched.map_err(|e| ToolError::failed(format!("fetching {toc_name}: {e}")))?;
    let out = Tool {
        program: bin_dir.join("pg_restore"),
        args: vec![
            "--list".into(),
            tmp.join(&m.dump_file).display().to_string(),
        ],
        env: Vec::new(),
        ids: None,
    }
    .run(None, true, cancel)
    .await?;
    toc_entries(&out)
}
