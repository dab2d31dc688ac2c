//! Writes an [`OldCatalog`] into this catalog through the API functions, in one transaction:
//! each object under a savepoint, so a value the rules refuse becomes a line of the report and
//! the rest goes on. A dry run does the same and rolls back, so it shows exactly what the
//! rules would refuse. Servers and nodes are in `hosts`.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Transaction;
use pgbackman_core::import::{self as map, BackupPlan, Finding};
use tokio_postgres::types::ToSql;

use super::read::OldCatalog;
use crate::catalog::{Audit, Catalog};
use crate::error::DbError;

/// Per kind: how many objects were imported, found imported by an earlier run, not imported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub imported: usize,
    pub already: usize,
    pub skipped: usize,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Every value not carried as it was, every object imported or not, and why.
    pub findings: Vec<Finding>,
    /// By kind: "backup servers", "PgSQL nodes", "backup definitions", "snapshots", "catalog rows".
    pub counts: BTreeMap<&'static str, Counts>,
    pub dry_run: bool,
}

pub(super) const SERVERS: &str = "backup servers";
pub(super) const NODES: &str = "PgSQL nodes";
const DEFS: &str = "backup definitions";
const SNAPS: &str = "snapshots";
const ROWS: &str = "catalog rows";

pub(super) struct Run<'a, 't> {
    tx: Transaction<'t>,
    source: &'a str,
    report: ImportReport,
    /// What earlier runs imported from this source: (kind, old id) -> new id.
    earlier: HashMap<(String, i64), i64>,
}

/// Serialises imports: a second one waits, then sees what the first imported.
const IMPORT_LOCK: i64 = 0x7067_626b_696d_7074; // "pgbkimpt"

/// One line for a refusal of the server: message, detail and hint on one line.
fn refused(e: &DbError) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Run<'_, '_> {
    pub(super) fn note(&mut self, f: Finding) {
        self.report.findings.push(f);
    }

    pub(super) fn count(&mut self, kind: &'static str) -> &mut Counts {
        self.report.counts.entry(kind).or_default()
    }

    pub(super) fn mapped(&self, kind: &str, old: i64) -> Option<i64> {
        self.earlier.get(&(kind.to_string(), old)).copied()
    }

    pub(super) async fn record(&self, kind: &str, old: i64, new: i64) -> Result<(), DbError> {
        self.tx
            .execute(
                "select api.import_record($1, $2, $3, $4)",
                &[&self.source, &kind, &old, &new],
            )
            .await?;
        Ok(())
    }

    /// Runs `sql` (returning one bigint) under a savepoint: Ok(Err(reason)) when the server
    /// refused it; connection failures end the import.
    pub(super) async fn try_id(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Result<i64, String>, DbError> {
        let sp = self.tx.savepoint("import_object").await?;
        match sp.query_one(sql, params).await {
            Ok(row) => {
                let id: i64 = row.get(0);
                sp.commit().await?;
                Ok(Ok(id))
            }
            Err(e) => {
                let e = DbError::client("importing", e);
                sp.rollback().await?;
                match e {
                    DbError::Server(_) => Ok(Err(refused(&e))),
                    other => Err(other),
                }
            }
        }
    }

    pub(super) async fn existing(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<i64>, DbError> {
        Ok(self.tx.query_opt(sql, params).await?.map(|r| r.get(0)))
    }

    async fn definitions(
        &mut self,
        old: &OldCatalog,
        servers: &BTreeMap<i64, i64>,
        nodes: &BTreeMap<i64, i64>,
    ) -> Result<BTreeMap<i64, i64>, DbError> {
        let mut ids = BTreeMap::new();
        for d in &old.definitions {
            let object = format!("DefID {}", d.def.def_id);
            if let Some(id) = self.mapped("DEFINITION", d.def.def_id) {
                ids.insert(d.def.def_id, id);
                self.count(DEFS).already += 1;
                continue;
            }
            let (Some(server), Some(node)) = (servers.get(&d.server_id), nodes.get(&d.node_id))
            else {
                self.count(DEFS).skipped += 1;
                self.note(Finding::new(
                    &object,
                    "-",
                    &d.def.dbname,
                    "not imported: its backup server or PgSQL node was not imported",
                ));
                continue;
            };
            let (plan, findings) = match map::definition(&d.def) {
                Ok(p) => p,
                Err(findings) => {
                    self.count(DEFS).skipped += 1;
                    self.report.findings.extend(findings);
                    continue;
                }
            };
            let c = &d.def.cron;
            let registered = self
                .try_id(
                    "select api.register_backup_definition($1, $2, $3, $4, $5, $6, $7, $8, $9, false, $10, $11, $12, $13, $14)",
                    &[
                        &server.to_string(), &node.to_string(), &d.def.dbname, &c[0], &c[1], &c[2], &c[3], &c[4],
                        &plan.code, &d.def.retention_period, &d.def.retention_redundancy, &plan.extra,
                        &plan.job_status, &plan.remarks,
                    ],
                )
                .await?;
            let id = match registered {
                Ok(id) => id,
                Err(why) => {
                    self.count(DEFS).skipped += 1;
                    self.note(Finding::new(
                        &object,
                        "-",
                        &d.def.dbname,
                        format!("not imported: {why}"),
                    ));
                    continue;
                }
            };
            self.report.findings.extend(findings);
            if let Some(jobs) = plan.dump_jobs {
                self.tx
                    .execute(
                        "select api.set_backup_definition_options($1, 'directory', $2, null, null, null, null)",
                        &[&id, &jobs],
                    )
                    .await?;
            }
            if plan.deleted {
                self.tx
                    .execute(
                        "select api.update_backup_definition($1, null, null, null, null, null, null, null, null, 'DELETED', null)",
                        &[&id],
                    )
                    .await?;
            }
            if plan.managed_node {
                self.tx
                    .execute(
                        "select api.update_pgsql_node_config($1, 'node_profile', 'managed')",
                        &[&node.to_string()],
                    )
                    .await?;
            }
            self.record("DEFINITION", d.def.def_id, id).await?;
            ids.insert(d.def.def_id, id);
            self.count(DEFS).imported += 1;
            self.note(Finding::new(
                &object,
                "-",
                &d.def.dbname,
                format!("imported as DefID {id}"),
            ));
        }
        Ok(ids)
    }

    async fn snapshots(
        &mut self,
        old: &OldCatalog,
        servers: &BTreeMap<i64, i64>,
        nodes: &BTreeMap<i64, i64>,
    ) -> Result<BTreeMap<i64, i64>, DbError> {
        let mut ids = BTreeMap::new();
        let source = self.source;
        for s in &old.snapshots {
            let object = format!("SnapshotID {}", s.snapshot_id);
            if let Some(id) = self.mapped("SNAPSHOT", s.snapshot_id) {
                ids.insert(s.snapshot_id, id);
                self.count(SNAPS).already += 1;
                continue;
            }
            let skip =
                |why: String| Finding::new(&object, "-", &s.dbname, format!("not imported: {why}"));
            let (Some(server), Some(node)) = (servers.get(&s.server_id), nodes.get(&s.node_id))
            else {
                self.count(SNAPS).skipped += 1;
                self.note(skip(
                    "its backup server or PgSQL node was not imported".into(),
                ));
                continue;
            };
            let Some((code, _)) = map::code(&s.code) else {
                self.count(SNAPS).skipped += 1;
                self.note(skip(format!("pgbackman has no backup code {}", s.code)));
                continue;
            };
            let extra = match map::extra_parameters(&s.extra) {
                Ok((e, _)) => e,
                Err(why) => {
                    self.count(SNAPS).skipped += 1;
                    self.note(skip(why));
                    continue;
                }
            };
            // The status of a snapshot that ran is its catalog row's.
            let rows: Vec<&str> = old
                .backups
                .iter()
                .filter(|b| b.snapshot_id == Some(s.snapshot_id))
                .map(|b| b.backup.execution_status.as_str())
                .collect();
            let status = if rows.contains(&"SUCCEEDED") {
                "SUCCEEDED"
            } else if rows.is_empty() {
                "CANCELLED"
            } else {
                "ERROR"
            };
            if let Some(r) = &s.pg_dump_release {
                self.note(Finding::new(
                    &object,
                    "pg_dump_release",
                    r,
                    "not carried: the agent picks a client at least as new as the node",
                ));
            }
            match self
                .try_id(
                    "select api.import_snapshot_definition($1, $2, $3, $4, $5, $6::text::timestamptz, $7, $8, $9, $10, $11, null)",
                    &[
                        &source, &s.snapshot_id, server, node, &s.dbname, &s.at_time, &code,
                        &s.retention_period, &extra, &s.tag, &status,
                    ],
                )
                .await?
            {
                Ok(id) => {
                    ids.insert(s.snapshot_id, id);
                    self.count(SNAPS).imported += 1;
                    let how = if rows.is_empty() { "imported (never ran in PgBackMan: CANCELLED, or queued if its time is ahead)".to_string() } else { format!("imported as SnapshotID {id}") };
                    self.note(Finding::new(&object, "-", &s.dbname, how));
                }
                Err(why) => {
                    self.count(SNAPS).skipped += 1;
                    self.note(skip(why));
                }
            }
        }
        Ok(ids)
    }

    async fn backups(
        &mut self,
        old: &OldCatalog,
        defs: &BTreeMap<i64, i64>,
        snaps: &BTreeMap<i64, i64>,
        present: &dyn Fn(&str) -> bool,
    ) -> Result<(), DbError> {
        // Rows whose owner was not imported: one line per owner, not one per row.
        let mut orphans: BTreeMap<String, usize> = BTreeMap::new();
        let mut batch = Vec::new();
        let source = self.source;
        for b in &old.backups {
            let id = b.backup.bck_id;
            if self.mapped("CATALOG", id).is_some() {
                self.count(ROWS).already += 1;
                continue;
            }
            let (def, snap) = (
                b.def_id.and_then(|d| defs.get(&d)),
                b.snapshot_id.and_then(|s| snaps.get(&s)),
            );
            if def.is_none() && snap.is_none() {
                let owner = match (b.def_id, b.snapshot_id) {
                    (Some(d), _) => format!("DefID {d}"),
                    (_, Some(s)) => format!("SnapshotID {s}"),
                    _ => "no definition".into(),
                };
                *orphans.entry(owner).or_default() += 1;
                self.count(ROWS).skipped += 1;
                continue;
            }
            let (plan, findings) = map::backup(&b.backup, present);
            self.report.findings.extend(findings);
            let (status, note) = match plan {
                BackupPlan::Skip(f) => {
                    self.count(ROWS).skipped += 1;
                    self.note(f);
                    continue;
                }
                BackupPlan::Import { status, note } => (status, note),
            };
            batch.push(serde_json::json!({
                "old_id": id, "def_id": def, "snapshot_id": snap, "status": status,
                "row": b.columns, "note": note,
            }));
        }
        // One call per chunk: a round trip per row would make a large catalog take minutes.
        for chunk in batch.chunks(2000) {
            let rows = self
                .tx
                .query(
                    "select old_id, new_id, error from api.import_backup_catalog_rows($1, $2)",
                    &[&source, &serde_json::Value::Array(chunk.to_vec())],
                )
                .await?;
            for r in rows {
                let (old_id, error): (i64, Option<String>) = (r.get(0), r.get(2));
                match error {
                    None => self.count(ROWS).imported += 1,
                    Some(why) => {
                        self.count(ROWS).skipped += 1;
                        self.note(Finding::new(
                            &format!("BckID {old_id}"),
                            "-",
                            "",
                            format!("not imported: {why}"),
                        ));
                    }
                }
            }
        }
        for (owner, n) in orphans {
            self.note(Finding::new(
                &owner,
                "backup_catalog",
                &format!("{n} rows"),
                "not imported: their definition or snapshot was not imported",
            ));
        }
        Ok(())
    }
}

impl Catalog {
    /// Imports `old` in one transaction (rolled back when `dry_run`). `present` says whether a
    /// file of an old backup exists on this host.
    pub async fn import_pgbackman(
        &self,
        audit: &Audit,
        old: &OldCatalog,
        present: &dyn Fn(&str) -> bool,
        dry_run: bool,
    ) -> Result<ImportReport, DbError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "select set_config('pgbackman.os_user', $1, true), set_config('pgbackman.command', $2, true)",
            &[&audit.os_user, &audit.command],
        )
        .await?;
        tx.execute("select pg_advisory_xact_lock($1)", &[&IMPORT_LOCK])
            .await?;
        let earlier = tx
            .query(
                "select kind, old_id, new_id from api.import_map_of($1)",
                &[&old.source],
            )
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let mut run = Run {
            tx,
            source: &old.source,
            report: ImportReport {
                dry_run,
                ..Default::default()
            },
            earlier,
        };
        let servers = run.servers(old).await?;
        let nodes = run.nodes(old).await?;
        let defs = run.definitions(old, &servers, &nodes).await?;
        let snaps = run.snapshots(old, &servers, &nodes).await?;
        run.backups(old, &defs, &snaps, present).await?;
        let Run { tx, report, .. } = run;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(report)
    }
}
