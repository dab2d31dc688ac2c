//! Level 3: restore drills (see the table in the parent module).

use super::*;

/// One restore drill: everything [`run_drill`] needs, nothing from the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillSpec {
    /// The job (for logs).
    pub job_id: i64,
    /// The backup set; ignored when `repository` is set.
    pub set_dir: PathBuf,
    /// A set stored in a repository ([`RestoreSpec::repository`]).
    #[serde(skip)]
    pub repository: Option<crate::restore::RepositorySet>,
    /// Client tools: pg_restore of a major at least the dump's and the drill node's.
    pub bin_dir: PathBuf,
    /// The drill node.
    pub node: NodeConn,
    /// The drill node as people know it.
    pub node_label: String,
    /// The scratch database: created, restored into, dropped. Must not exist.
    pub scratch_dbname: String,
    /// `application_name` of every connection.
    pub application_name: String,
    /// pg_restore `--jobs` (directory dumps, and custom dumps decoded to a file first).
    pub jobs: u32,
    /// Staging area of the restore (a custom dump may be decoded there for `--jobs`).
    pub staging_root: PathBuf,
    /// The row counts taken at backup time, as the catalog recorded them; None: the manifest's.
    pub expected_counts: Option<TableRowCounts>,
    /// The manifest's sha256 as the catalog recorded it (level 1).
    pub manifest_sha256: Option<String>,
    /// The journal of the drill's restore ([`crate::RestoreSpec::journal`]): a drill cut short
    /// by the death of its process has its scratch database and the roles it created removed at
    /// the next start.
    #[serde(default)]
    pub journal: Option<crate::Journal>,
    /// Identity files for an encrypted set (the drill server's `[agent.encryption]
    /// identity_files`, the operator's choice to trust that server); see crate::crypt.
    #[serde(default)]
    pub identity_files: Vec<PathBuf>,
}

/// How a drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DrillState {
    /// Restored, and every counted table has the rows it had at backup time.
    Passed,
    /// The set is damaged, does not restore, or its row counts differ: a finding about the backup.
    Failed,
    /// The drill could not run (drill node unreachable, scratch database not created): says
    /// nothing about the backup.
    Error,
    /// Cancelled.
    Cancelled,
}

/// A table whose rows differ after the restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowMismatch {
    /// `schema.table`, quoted like `quote_ident`.
    pub table: String,
    /// Rows at backup time.
    pub expected: i64,
    /// Rows after the restore; None when the table is missing.
    pub restored: Option<i64>,
}

/// The row count comparison of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCheck {
    /// Tables compared.
    pub compared: usize,
    /// Tables that differ (all of them).
    pub mismatches: Vec<RowMismatch>,
}

/// The result of [`run_drill`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillOutcome {
    /// How it ended.
    pub state: DrillState,
    /// The level reached: 1 when the checksums failed, else 3.
    pub level: u8,
    /// The failing step: `verify`, `row_counts`, or the step of the restore executor that
    /// failed (`connect`, `check`, `roles`, `database`, `pg_restore`, ...).
    pub step: Option<String>,
    /// What went wrong, in one line.
    pub message: Option<String>,
    /// The last lines of pg_restore's stderr.
    pub stderr_tail: Option<String>,
    /// Start.
    pub started: DateTime<Utc>,
    /// End (after the scratch database was dropped).
    pub finished: DateTime<Utc>,
    /// Seconds of the restore itself (roles, database, pg_restore, as a real restore runs
    /// them): a measured restore time of the database.
    pub restore_seconds: Option<f64>,
    /// How the dump reached pg_restore (`stream`, `file`, `directory`) and with how many jobs.
    pub feed: Option<String>,
    /// `pg_database_size` of the restored scratch database.
    pub restored_size: Option<i64>,
    /// Roles the restore had to create on the drill node (dropped again with the scratch
    /// database).
    pub roles_created: Vec<String>,
    /// The comparison; None when no exact counts exist (SCHEMA backups, estimates).
    pub row_counts: Option<RowCheck>,
    /// Whether the scratch database is gone (false: it must be dropped by hand).
    pub scratch_dropped: bool,
    /// Notes (why counts were not compared, a failed drop).
    pub notes: Vec<String>,
}

/// Compares row counts at backup time with the restored ones. Tables missing after the restore
/// count as mismatches; tables only in the restore are not compared (they could not be counted
/// at backup time).
pub fn compare_row_counts(
    expected: &BTreeMap<String, i64>,
    restored: &BTreeMap<String, i64>,
) -> RowCheck {
    let mismatches = expected
        .iter()
        .filter_map(|(t, &e)| match restored.get(t) {
            Some(&r) if r == e => None,
            r => Some(RowMismatch {
                table: t.clone(),
                expected: e,
                restored: r.copied(),
            }),
        })
        .collect();
    RowCheck {
        compared: expected.len(),
        mismatches,
    }
}

/// One-line summary of mismatches (the first few).
pub(super) fn mismatch_summary(c: &RowCheck) -> String {
    let shown: Vec<String> = c
        .mismatches
        .iter()
        .take(5)
        .map(|m| match m.restored {
            Some(r) => format!(
                "{}: {} rows at backup time, {r} restored",
                m.table, m.expected
            ),
            None => format!(
                "{}: {} rows at backup time, table missing after the restore",
                m.table, m.expected
            ),
        })
        .collect();
    let more = c.mismatches.len().saturating_sub(shown.len());
    format!(
        "row counts differ in {} of {} table(s): {}{}",
        c.mismatches.len(),
        c.compared,
        shown.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )
}

pub(super) struct Stop {
    pub(super) state: DrillState,
    pub(super) step: String,
    pub(super) message: String,
    pub(super) stderr_tail: Option<String>,
}

pub(super) fn stop(state: DrillState, step: &str, message: impl Into<String>) -> Stop {
    Stop {
        state,
        step: step.to_string(),
        message: message.into(),
        stderr_tail: None,
    }
}

/// Runs a restore drill. Never fails: the outcome says how it ended. After a restore the
/// scratch database and the roles the restore created are dropped whatever happens (a failed
/// restore is undone by the restore executor itself).
pub async fn run_drill(spec: &DrillSpec, cancel: CancellationToken) -> DrillOutcome {
    let started = Utc::now();
    let mut out = DrillOutcome {
        state: DrillState::Passed,
        level: 3,
        step: None,
        message: None,
        stderr_tail: None,
        started,
        finished: started,
        restore_seconds: None,
        feed: None,
        restored_size: None,
        roles_created: Vec::new(),
        row_counts: None,
        scratch_dropped: true,
        notes: Vec::new(),
    };
    tracing::info!(job_id = spec.job_id, set = %Source::new(&spec.set_dir, spec.repository.as_ref()).label(), node = %spec.node_label, scratch = %spec.scratch_dbname, "restore drill started");
    let mut restored = false;
    let r = drill_steps(spec, &cancel, &mut out, &mut restored).await;
    if restored && let Err(e) = drop_scratch(spec, &out.roles_created).await {
        out.scratch_dropped = false;
        out.notes.push(format!(
                "cleaning up the drill node {} failed: {e}; drop the database {:?} (and the roles {:?}) by hand",
                spec.node_label, spec.scratch_dbname, out.roles_created
            ));
    }
    if let Err(s) = r {
        if s.step == "verify" {
            out.level = 1;
        }
        out.state = s.state;
        out.step = Some(s.step);
        out.message = Some(s.message);
        out.stderr_tail = s.stderr_tail;
    }
    out.finished = Utc::now();
    let state = match out.state {
        DrillState::Passed => "PASSED",
        DrillState::Failed => "FAILED",
        DrillState::Error => "ERROR",
        DrillState::Cancelled => "CANCELLED",
    };
    tracing::info!(
        job_id = spec.job_id,
        state,
        message = out.message.as_deref().unwrap_or(""),
        restore_time = %out
            .restore_seconds
            .map_or_else(|| "-".to_string(), pgbackman_core::duration::human_secs),
        "restore drill ended"
    );
    out
}

/// Steps of the restore executor whose failure says the set does not restore; any other step
/// (connect, client, check, staging, ...) failing is a problem of the drill node or of the
/// backup server.
pub(super) const RESTORE_FINDINGS: &[&str] = &[
    "manifest",
    "roles",
    "database",
    "decompress",
    "pg_restore",
    "psql",
];

pub(super) async fn drill_steps(
    spec: &DrillSpec,
    cancel: &CancellationToken,
    out: &mut DrillOutcome,
    restored: &mut bool,
) -> Result<(), Stop> {
    let cancelled = |step: &str| stop(DrillState::Cancelled, step, "cancelled");
    // Level 1 first, against the manifest's sha256 from the catalog: a damaged set is never
    // restored.
    // From a repository: the manifest here; the restore checks every object against it as it
    // reads them (a mismatch is then a level 1 failure too).
    let manifest = match &spec.repository {
        Some(repo) => {
            repository::checked_manifest(repo, spec.manifest_sha256.as_deref(), cancel).await?
        }
        None => {
            let abort = Arc::new(AtomicBool::new(false));
            let (d, a, sha) = (
                spec.set_dir.clone(),
                Arc::clone(&abort),
                spec.manifest_sha256.clone(),
            );
            let h = tokio::task::spawn_blocking(move || verify_checksums(&d, sha.as_deref(), &a));
            tokio::select! {
                r = h => r.map_err(|e| stop(DrillState::Error, "verify", format!("internal error: {e}")))?
                    .map_err(|e| stop(DrillState::Failed, "verify", e))?,
                () = cancel.cancelled() => {
                    abort.store(true, Ordering::Relaxed);
                    return Err(cancelled("verify"));
                }
            }
        }
    };
    let label = Source::new(&spec.set_dir, spec.repository.as_ref()).label();
    let kind = dump_kind(&manifest).map_err(|e| stop(DrillState::Failed, "verify", e))?;
    if kind == DumpKind::Sql {
        return Err(stop(
            DrillState::Error,
            "verify",
            format!(
                "{label} is a {} set: drills restore one database",
                manifest.code
            ),
        ));
    }

    // The restore, exactly as a restore job runs it (roles.sql, database.sql, pg_restore), into
    // the scratch database. The executor refuses an existing database and undoes a failure.
    let rspec = RestoreSpec {
        job_id: spec.job_id,
        set_dir: spec.set_dir.clone(),
        repository: spec.repository.clone(),
        node: spec.node.clone(),
        node_label: spec.node_label.clone(),
        target_dbname: spec.scratch_dbname.clone(),
        rename_existing_to: None,
        roles: RolePolicy::CreateMissing,
        jobs: spec.jobs.max(1),
        decompression: Decompression::Auto,
        extra_args: Vec::new(),
        bin_dir: spec.bin_dir.clone(),
        staging_root: spec.staging_root.clone(),
        log_file: None,
        application_name: spec.application_name.clone(),
        max_runtime: None,
        acknowledge_nonempty: false,
        // Done above, against the catalog's sha256 of the manifest too.
        verify_checksums: false,
        // Compared below, against the counts the catalog recorded.
        compare_row_counts: false,
        journal: spec.journal.clone(),
        identity_files: spec.identity_files.clone(),
    };
    let t = Instant::now();
    let r = restore_set(&rspec, cancel.clone(), &|_| {}).await;
    out.roles_created = r.roles_created.clone();
    out.feed = r.feed.as_ref().map(|f| format!("{f} -j {}", r.jobs));
    out.restored_size = r.restored_size;
    out.notes.extend(r.notes.iter().cloned());
    match r.status {
        Status::Succeeded => {
            *restored = true;
            out.restore_seconds = Some(t.elapsed().as_secs_f64());
        }
        Status::Cancelled { .. } => return Err(cancelled("restore")),
        Status::Failed {
            step,
            message,
            stderr_tail,
            ..
        } => {
            if !r.cleanup.is_empty() {
                out.notes.push(format!(
                    "undone on the drill node: {}",
                    r.cleanup.join("; ")
                ));
            }
            // Bytes other than the manifest's, found while the restore read them: level 1.
            if let Some(e) = &r.checksums_failed {
                return Err(Stop {
                    state: DrillState::Failed,
                    step: "verify".into(),
                    message: e.clone(),
                    stderr_tail: Some(stderr_tail),
                });
            }
            let state = if RESTORE_FINDINGS.contains(&step.as_str()) {
                DrillState::Failed
            } else {
                DrillState::Error
            };
            return Err(Stop {
                state,
                step: step.clone(),
                message: format!(
                    "restoring into {:?} on {} failed at step {step}: {message}",
                    spec.scratch_dbname, spec.node_label
                ),
                stderr_tail: Some(stderr_tail),
            });
        }
    }

    // Row counts against the ones taken at backup time.
    let expected = spec
        .expected_counts
        .as_ref()
        .or(manifest.table_row_counts.as_ref());
    let Some(expected) = expected else {
        out.notes.push(format!(
            "no row counts were taken at backup time ({} backup): the restore was checked only",
            manifest.code
        ));
        return Ok(());
    };
    if expected.source != RowCountSource::Snapshot {
        out.notes
            .push("the row counts of the backup are planner estimates: not compared".into());
        return Ok(());
    }
    let (session, _) = tokio::select! {
        r = crate::node::connect(&spec.node, &spec.scratch_dbname, &spec.application_name, None) => r
            .map_err(|e| stop(DrillState::Error, "row_counts", format!("cannot connect to the scratch database: {e}")))?,
        () = cancel.cancelled() => return Err(cancelled("row_counts")),
    };
    let counted = tokio::select! {
        r = pgbackman_db::verify::count_all_tables(&session.client, crate::node::table_key) => r
            .map_err(|e| stop(DrillState::Error, "row_counts", e))?,
        () = cancel.cancelled() => return Err(cancelled("row_counts")),
    };
    drop(session);
    let (restored_counts, skipped) = counted;
    for s in skipped {
        out.notes.push(format!("row count skipped: {s}"));
    }
    let check = compare_row_counts(&expected.tables, &restored_counts);
    let failed = !check.mismatches.is_empty();
    let summary = mismatch_summary(&check);
    out.row_counts = Some(check);
    if failed {
        return Err(stop(DrillState::Failed, "row_counts", summary));
    }
    Ok(())
}

/// Drops the scratch database, then the roles the restore created (bounded: a drill node that
/// stopped answering does not hang the job).
pub(super) async fn drop_scratch(spec: &DrillSpec, roles: &[String]) -> Result<(), String> {
    use pgbackman_db::restore::target::{drop_database, drop_role};
    let work = async {
        let (session, _) = crate::node::connect(
            &spec.node,
            &spec.node.admin_dbname,
            &spec.application_name,
            None,
        )
        .await?;
        drop_database(&session.client, &spec.scratch_dbname, true).await?;
        let mut failed = Vec::new();
        for r in roles {
            if let Err(e) = drop_role(&session.client, r).await {
                failed.push(format!("role {r:?}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), work)
        .await
        .map_err(|_| "timed out after 120 s".to_string())?
}

/// The name of a drill's scratch database: unique per backup and job, recognisable on the node.
pub fn scratch_dbname(bck_id: i64, job_id: i64) -> String {
    format!("pgbackman_drill_b{bck_id}_j{job_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_comparison() {
        let e: BTreeMap<String, i64> = [
            ("a".to_string(), 3),
            ("b".to_string(), 0),
            ("c".to_string(), 7),
        ]
        .into();
        let r: BTreeMap<String, i64> = [
            ("a".to_string(), 3),
            ("b".to_string(), 0),
            ("c".to_string(), 7),
            ("x".to_string(), 1),
        ]
        .into();
        assert_eq!(
            compare_row_counts(&e, &r),
            RowCheck {
                compared: 3,
                mismatches: vec![]
            }
        );
        let r2: BTreeMap<String, i64> = [("a".to_string(), 4), ("b".to_string(), 0)].into();
        let c = compare_row_counts(&e, &r2);
        assert_eq!(
            c.mismatches,
            vec![
                RowMismatch {
                    table: "a".into(),
                    expected: 3,
                    restored: Some(4)
                },
                RowMismatch {
                    table: "c".into(),
                    expected: 7,
                    restored: None
                },
            ]
        );
        let s = mismatch_summary(&c);
        assert!(
            s.starts_with(
                "row counts differ in 2 of 3 table(s): a: 3 rows at backup time, 4 restored"
            ),
            "{s}"
        );
        assert!(s.contains("c: 7 rows at backup time, table missing"), "{s}");
    }

    #[test]
    fn scratch_names_are_plain_identifiers() {
        let n = scratch_dbname(12, 345);
        assert_eq!(n, "pgbackman_drill_b12_j345");
        assert!(n.len() < 63);
    }
}
