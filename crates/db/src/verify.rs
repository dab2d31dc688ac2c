//! Verification and restore drills: the catalog calls of the shell (`verify_backup`,
//! `run_restore_drill`, `update_drill_schedule`, `show_verifications`) and of the agent (job
//! details, the fenced idempotent report, drill schedules), all through `api.*` functions of
//! `sql/55_verify.sql`; plus the row counts a drill takes in its scratch database (the
//! scratch database itself is created and dropped with the restore executor's statements,
//! `restore::target`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Transaction};

use crate::catalog::{Audit, Catalog};
use crate::error::{DbError, describe_one_line};
use crate::rows::Rows;

/// A claimed VERIFY or DRILL job with what the agent needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyJobInfo {
    pub job_id: i64,
    pub kind: String,
    pub bck_id: i64,
    pub backup_server_id: i64,
    pub backup_dir: Option<String>,
    pub backup_code: String,
    pub dbname: String,
    pub source_node_id: i64,
    /// `pg_dump --version` of the client that wrote the set.
    pub client_version: Option<String>,
    /// The manifest's sha256 as reported at backup time.
    pub manifest_sha256: Option<String>,
    /// Row counts recorded at backup time (JSON of `pgbackman_dump::TableRowCounts`).
    pub table_row_counts: Option<serde_json::Value>,
    /// The drill node (DRILL jobs).
    pub drill_node: Option<DrillNode>,
}

/// How to reach the drill node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillNode {
    pub node_id: i64,
    pub fqdn: String,
    pub port: i32,
    pub admin_user: String,
    pub admin_dbname: String,
    pub sslmode: String,
}

/// A definition's drill schedule and the last instant fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillSchedule {
    pub def_id: i64,
    pub schedule: String,
    pub last_fire: chrono::DateTime<chrono::Utc>,
}

/// One queued verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedVerification {
    pub bck_id: i64,
    pub job_id: i64,
    /// False when a VERIFY job of that backup was already open.
    pub created: bool,
}

impl Catalog {
    /// Queues one VERIFY job per backup (all or none).
    pub async fn queue_verifications(
        &self,
        audit: &Audit,
        bck_ids: &[i64],
    ) -> Result<Vec<QueuedVerification>, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let rows = tx
                .query(
                    "select bck_id, job_id, created from api.queue_verifications($1)",
                    &[&bck_ids],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| QueuedVerification {
                    bck_id: r.get(0),
                    job_id: r.get(1),
                    created: r.get(2),
                })
                .collect())
        })
        .await
    }

    /// Queues a restore drill; returns (JobID, drill node FQDN, none for a base backup's drill,
    /// which runs on its backup server).
    pub async fn run_restore_drill(
        &self,
        audit: &Audit,
        bck_id: i64,
        node: Option<&str>,
    ) -> Result<(i64, Option<String>), DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let job: i64 = tx
                .query_one("select api.run_restore_drill($1, $2)", &[&bck_id, &node])
                .await?
                .get(0);
            let fqdn: Option<String> = tx
                .query_one(
                    "select api.node_fqdn(n.node_id) || ':' || n.pgport from public.job j
                       left join public.pgsql_node n on n.node_id = j.pgsql_node_id where j.job_id = $1",
                    &[&job],
                )
                .await?
                .get(0);
            Ok((job, fqdn))
        })
        .await
    }

    /// Sets (None clears) the drill schedule of a definition.
    pub async fn update_drill_schedule(
        &self,
        audit: &Audit,
        def_id: i64,
        schedule: Option<&str>,
    ) -> Result<(), DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            tx.execute(
                "select api.update_drill_schedule($1, $2)",
                &[&def_id, &schedule],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The verification history, newest first.
    pub async fn show_verifications(
        &self,
        bck_id: Option<i64>,
        limit: i64,
    ) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_verifications where ($1::bigint is null or "BckID" = $1)
                order by "Finished" desc, "VerificationID" desc limit $2"#,
            &[&bck_id, &limit],
        )
        .await
    }

    /// BckIDs of SUCCEEDED backups among `ids` (the others cannot be verified).
    pub async fn succeeded_backups(&self, ids: &[i64]) -> Result<Vec<i64>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select bck_id from public.backup_catalog where bck_id = any ($1) and execution_status = 'SUCCEEDED' order by bck_id",
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    // ---- agent ------------------------------------------------------------------------------

    /// What a claimed VERIFY / DRILL job needs; None when the job or its backup is gone.
    pub async fn verify_job_info(&self, job_id: i64) -> Result<Option<VerifyJobInfo>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query("select * from api.verify_job_info($1)", &[&job_id])
            .await?;
        Ok(rows.first().map(|r| VerifyJobInfo {
            job_id: r.get("job_id"),
            kind: r.get("kind"),
            bck_id: r.get("bck_id"),
            backup_server_id: r.get("backup_server_id"),
            backup_dir: r.get("backup_dir"),
            backup_code: r.get("backup_code"),
            dbname: r.get("dbname"),
            source_node_id: r.get("source_node_id"),
            client_version: r.get("client_version"),
            manifest_sha256: r.get("manifest_sha256"),
            table_row_counts: r.get("table_row_counts"),
            drill_node: r
                .get::<_, Option<i64>>("drill_node_id")
                .map(|node_id| DrillNode {
                    node_id,
                    fqdn: r.get("drill_node_fqdn"),
                    port: r.get("drill_node_port"),
                    admin_user: r.get("drill_admin_user"),
                    admin_dbname: r.get("drill_admin_dbname"),
                    sslmode: r.get("drill_sslmode"),
                }),
        }))
    }

    /// Records a VERIFY / DRILL result; idempotent on the job id, fenced by the attempt
    /// (SQLSTATE PB001 for a stale report). Returns the recorded state.
    pub async fn report_verification(
        &self,
        job_id: i64,
        attempt: i32,
        result: &serde_json::Value,
    ) -> Result<String, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.report_verification($1, $2, $3)",
            &[&job_id, &attempt, result],
        )
        .await?
        .get(0))
    }

    /// Drill schedules of this server's active definitions.
    pub async fn drill_schedules(&self, server_id: i64) -> Result<Vec<DrillSchedule>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select def_id, drill_schedule, last_fire from api.drill_schedules($1)",
                &[&server_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DrillSchedule {
                def_id: r.get(0),
                schedule: r.get(1),
                last_fire: r.get(2),
            })
            .collect())
    }

    /// Fires a drill instant once; Some(JobID) when a drill was queued.
    pub async fn queue_scheduled_drill(
        &self,
        server_id: i64,
        def_id: i64,
        instant: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<i64>, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.queue_scheduled_drill($1, $2, $3)",
            &[&server_id, &def_id, &instant],
        )
        .await?
        .get(0))
    }
}

// ---- on the drill node ------------------------------------------------------------------------

/// Exact row counts of every ordinary table of the connected database, in one read-only
/// snapshot, keyed by `key(schema, table)` (which must quote like the backup's keys). Tables
/// that cannot be counted are named in the second value.
pub async fn count_all_tables(
    c: &Client,
    key: impl Fn(&str, &str) -> String,
) -> Result<(BTreeMap<String, i64>, Vec<String>), String> {
    let tables = crate::introspect::list_tables(c).await?;
    let keys: Vec<String> = tables.iter().map(|t| key(&t.schema, &t.name)).collect();
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| describe_one_line(&e))?;
    let counted = crate::introspect::count_rows(c, &keys).await;
    let _ = c.batch_execute("COMMIT").await;
    Ok(counted)
}

/// Scratch databases of drills on the connected node (`pgbackman_drill_b<BckID>_j<JobID>`), with
/// their JobIDs.
pub async fn scratch_databases(c: &Client) -> Result<Vec<(String, i64)>, String> {
    let rows = c
        .query(
            "SELECT datname::text, substring(datname from '^pgbackman_drill_b[0-9]+_j([0-9]+)$')::int8 \
               FROM pg_catalog.pg_database WHERE datname ~ '^pgbackman_drill_b[0-9]+_j[0-9]+$'",
            &[],
        )
        .await
        .map_err(|e| describe_one_line(&e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

impl Catalog {
    /// Which of `job_ids` are still queued or running (their scratch databases are in use).
    pub async fn open_jobs(&self, job_ids: &[i64]) -> Result<Vec<i64>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select job_id from public.job where job_id = any ($1) and state in ('QUEUED', 'RUNNING')",
                &[&job_ids],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
