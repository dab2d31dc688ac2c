//! Point-in-time recovery (issue 12): the shell's plan, restore points and clone calls, and the
//! agent's CLONE job and wal-get calls. The rules live in `sql/89_pitr.sql` (planning from the
//! catalog alone) and `sql/89_clones.sql` (clones).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Transaction;

use crate::catalog::{Audit, Catalog};
use crate::error::DbError;
use crate::rows::Rows;

/// What a point-in-time restore is asked to reach.
#[derive(Debug, Clone, Default)]
pub struct PitrRequest {
    /// A BckID, or `latest` (then `node` is needed).
    pub bck: String,
    pub node: Option<String>,
    /// time | lsn | xid | name | immediate.
    pub kind: String,
    pub value: Option<String>,
    /// latest | current | N.
    pub timeline: Option<String>,
    /// promote | pause | shutdown.
    pub action: Option<String>,
    pub clone: String,
    pub port: Option<i32>,
    /// An interval after which maintenance deletes the clone.
    pub expires: Option<String>,
    pub dry_run: bool,
}

/// One WAL file of a plan: where the agent finds it and what its content must be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedWal {
    /// The name PostgreSQL asks for (`%f`).
    pub name: String,
    /// full, partial or history.
    pub kind: String,
    pub timeline: i64,
    pub size: i64,
    /// SHA-256 of the plain bytes (what `%p` must hold).
    pub sha256: String,
    pub codec: String,
    pub stored_path: String,
}

/// The agent's view of a claimed CLONE job.
#[derive(Debug, Clone, Deserialize)]
pub struct CloneJob {
    pub clone_id: i64,
    pub name: String,
    pub port: i32,
    pub target: Value,
    /// The node's admin user (a superuser of the clone, which has the node's roles).
    pub admin_user: String,
    /// The major of the node when the base backup was taken ("15").
    pub node_major: Option<String>,
    /// `api.pitr_plan`'s answer (with `wal` and `history`); for an operation, the node only.
    pub plan: Value,
    /// stop, start or delete (stop_clone, start_clone, delete_clone); None: the restore.
    #[serde(default)]
    pub op: Option<String>,
    /// Where the clone is (operations).
    #[serde(default)]
    pub data_dir: Option<String>,
}

impl Catalog {
    /// `register_pitr_restore`: the plan (always), and with `dry_run` false the CLONE job and
    /// the clone row, in one transaction.
    pub async fn register_pitr_restore(
        &self,
        audit: &Audit,
        r: &PitrRequest,
    ) -> Result<Value, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.register_pitr_restore($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &r.bck,
                        &r.node,
                        &r.kind,
                        &r.value,
                        &r.timeline,
                        &r.action,
                        &r.clone,
                        &r.port,
                        &r.expires,
                        &r.dry_run,
                    ],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// `show_restore_points NODE`: each base backup with the recovery window its WAL gives.
    pub async fn show_restore_points(&self, node: &str) -> Result<Rows, DbError> {
        let node = self.node_id(node).await?;
        self.rows(
            r#"select c.bck_id as "BckID", s.fqdn as "Backup server",
                      c.system_identifier::text as "System identifier", c.timeline as "Timeline",
                      c.stop_time as "Restorable from", c.stop_lsn::text as "From LSN",
                      c.restorable_to_lsn::text as "Restorable to LSN",
                      c.last_restore_point as "Newest WAL arrived", c.wal_segments as "WAL count",
                      pg_catalog.pg_size_pretty(c.total_size) as "Bytes to fetch (whole window)",
                      c.note as "Note"
                 from api.recovery_chains($1) c
                 join public.backup_server s on s.server_id = c.backup_server_id
                order by c.stop_lsn desc, s.fqdn"#,
            &[&node],
        )
        .await
    }

    /// `show_restore_points NODE --time T | --lsn L`: restorable, or why not, as one row.
    pub async fn check_restore_point(
        &self,
        node: &str,
        kind: &str,
        value: &str,
    ) -> Result<Rows, DbError> {
        let node = self.node_id(node).await?;
        self.rows(
            "select * from api.restore_point_check($1, $2, $3)",
            &[&node, &kind, &value],
        )
        .await
    }

    /// `show_clones`: the clones not deleted, newest first.
    pub async fn show_clones(
        &self,
        server: &crate::catalog::Filter,
        node: &crate::catalog::Filter,
    ) -> Result<Rows, DbError> {
        let servers = self.resolve_ids(server, true).await?;
        let nodes = self.resolve_ids(node, false).await?;
        self.rows(
            r#"select "CloneID", "Name", "Backup server", "PgSQL node", "BckID", "Port", "State", "Target",
                      "Reached LSN", "Reached time", "Size", "Expires", "Registered"
                 from api.show_clones
                where ($1::bigint[] is null or "SrvID" = any ($1))
                  and ($2::bigint[] is null or "NodeID" = any ($2))
                order by "CloneID" desc"#,
            &[&servers, &nodes],
        )
        .await
    }

    /// `show_clone_details CloneID`.
    pub async fn show_clone_details(&self, clone_id: i64) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_clones where "CloneID" = $1"#,
            &[&clone_id],
        )
        .await
    }

    /// `stop_clone`, `start_clone`, `delete_clone`: the job queued (None: a FAILED clone,
    /// deleted at once).
    pub async fn clone_operation(
        &self,
        audit: &Audit,
        clone_id: i64,
        op: &str,
    ) -> Result<Option<i64>, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.clone_operation($1, $2)", &[&clone_id, &op])
                .await?
                .get(0))
        })
        .await
    }

    /// The clone's name and backup server, for the shell's question and answer.
    pub async fn clone_label(&self, clone_id: i64) -> Result<Option<(String, String)>, DbError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "select c.name, s.fqdn from public.clone c join public.backup_server s on s.server_id = c.backup_server_id
              where c.clone_id = $1 and c.state <> 'DELETED'",
            &[&clone_id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
    }

    // ---- the agent --------------------------------------------------------------------------

    /// The clone and a fresh plan of a claimed CLONE job.
    pub async fn agent_clone_job(&self, server_id: i64, job_id: i64) -> Result<CloneJob, DbError> {
        let c = self.client().await?;
        let v: Value = c
            .query_one("select api.agent_clone_job($1, $2)", &[&server_id, &job_id])
            .await?
            .get(0);
        serde_json::from_value(v).map_err(|e| {
            DbError::Invalid(format!(
                "agent_clone_job answered what this agent cannot read: {e}"
            ))
        })
    }

    /// The agent works in `data_dir` from now on.
    pub async fn clone_restoring(
        &self,
        server_id: i64,
        clone_id: i64,
        data_dir: &str,
    ) -> Result<(), DbError> {
        let c = self.client().await?;
        c.execute(
            "select api.clone_restoring($1, $2, $3)",
            &[&server_id, &clone_id, &data_dir],
        )
        .await?;
        Ok(())
    }

    /// The result of a CLONE job (idempotent on the job).
    pub async fn report_clone(
        &self,
        job_id: i64,
        attempt: i32,
        result: &Value,
    ) -> Result<Option<i64>, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.report_clone($1, $2, $3)",
            &[&job_id, &attempt, result],
        )
        .await?
        .get(0))
    }

    /// Maintenance: delete jobs for this server's clones past their expiry; how many.
    pub async fn expire_clones(&self, server_id: i64) -> Result<i32, DbError> {
        let c = self.client().await?;
        Ok(c.query_one("select api.expire_clones($1)", &[&server_id])
            .await?
            .get(0))
    }

    /// wal-get: the ledger's object of this copy under `name`, or None when the archive has
    /// no such file.
    pub async fn wal_get_lookup(
        &self,
        server_id: i64,
        node_id: i64,
        system_identifier: &str,
        name: &str,
    ) -> Result<Option<PlannedWal>, DbError> {
        let c = self.client().await?;
        let v: Option<Value> = c
            .query_one(
                "select api.wal_get_lookup($1, $2, $3::text::numeric, $4)",
                &[&server_id, &node_id, &system_identifier, &name],
            )
            .await?
            .get(0);
        v.map(serde_json::from_value).transpose().map_err(|e| {
            DbError::Invalid(format!(
                "wal_get_lookup answered what this agent cannot read: {e}"
            ))
        })
    }
}

/// What a clone's recovery reached, read from the clone itself.
#[derive(Debug, Clone, Default)]
pub struct CloneRecovery {
    /// Still in recovery (paused, or replaying).
    pub in_recovery: bool,
    /// `pg_get_wal_replay_pause_state()`: not paused, pause requested, paused.
    pub pause_state: String,
    /// `pg_last_wal_replay_lsn()` in recovery, else `pg_current_wal_lsn()`.
    pub lsn: Option<String>,
    /// The timeline of the last checkpoint or restartpoint.
    pub timeline: Option<i64>,
    /// `pg_last_xact_replay_timestamp()`: the commit time of the last transaction replayed.
    pub last_xact: Option<chrono::DateTime<chrono::Utc>>,
    /// `pg_database_size` summed: what the clone holds.
    pub size: Option<i64>,
}

/// Reads a clone's recovery state over its unix socket (`socket_dir`, `port`) as `user`: the
/// clone listens on no TCP address and trusts local connections only, which its socket
/// directory (0700, the agent's) restricts to the agent's user.
pub async fn clone_recovery(
    socket_dir: &std::path::Path,
    port: u16,
    user: &str,
) -> Result<CloneRecovery, DbError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname("postgres")
        .application_name("pgbackman-agent clone check")
        .connect_timeout(std::time::Duration::from_secs(5));
    let target = format!("clone on {}:{port}", socket_dir.display());
    let c = crate::tls::connect(&pgbackman_config::ConnConfig::from(cfg), &target).await?;
    let r = c
        .query_one(
            "select pg_is_in_recovery(),
                    case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() else 'not paused' end,
                    case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end::text,
                    (select timeline_id from pg_control_checkpoint())::int8,
                    pg_last_xact_replay_timestamp(),
                    (select sum(pg_database_size(oid))::int8 from pg_database where datallowconn)",
            &[],
        )
        .await?;
    Ok(CloneRecovery {
        in_recovery: r.get(0),
        pause_state: r.get(1),
        lsn: r.get(2),
        timeline: r.get(3),
        last_xact: r.get(4),
        size: r.get(5),
    })
}
