//! The catalog calls of `pgbackman-agent`. Every change goes through an `api.*` function; this
//! module only maps them to typed Rust. Nothing here is needed after a job is claimed: the agent
//! keeps working from its cache and spool when these calls fail.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use crate::catalog::Catalog;
use crate::error::DbError;

/// A backup definition with everything needed to run it, as cached by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDefinition {
    pub def_id: i64,
    pub pgsql_node_id: i64,
    pub node_fqdn: String,
    pub pgport: i32,
    pub admin_user: String,
    pub admin_dbname: String,
    pub sslmode: String,
    pub node_status: String,
    pub node_profile: String,
    pub node_backup_partition: String,
    pub dbname: String,
    pub schedule: [String; 5],
    pub backup_code: String,
    pub retention_period: String,
    pub retention_redundancy: i32,
    pub extra_backup_parameters: String,
    pub job_status: String,
    pub dump_format: String,
    pub dump_jobs: i32,
    pub compression_level: i32,
    pub max_runtime_seconds: Option<f64>,
    pub lock_wait_timeout_seconds: Option<f64>,
    pub client_major: Option<i32>,
    /// The node's `pause_recovery_on_standby` and `max_recovery_pause` (see the agent's
    /// `standby` module). Absent from a cache written before they existed: off.
    #[serde(default)]
    pub pause_recovery_on_standby: bool,
    #[serde(default)]
    pub max_recovery_pause_seconds: Option<f64>,
    /// BASEBACKUP definitions: pg_basebackup's `--checkpoint` (`fast` / `spread`), its
    /// `--max-rate` as given, and how long a finished base backup waits for its WAL in the
    /// ledger. Absent from older caches and from listings without them: the defaults.
    #[serde(default)]
    pub checkpoint: Option<String>,
    #[serde(default)]
    pub max_rate: Option<String>,
    #[serde(default)]
    pub wal_wait_seconds: Option<f64>,
    /// Creation time: a fire missed before it is no fire at all.
    pub registered: chrono::DateTime<chrono::Utc>,
    /// The repository its sets go to (its own, else its server's primary); None: the
    /// server's backup_dir. Absent from a cache written before V19: None.
    #[serde(default)]
    pub repository_id: Option<i64>,
    /// What its sets are encrypted to (`api.definition_recipients`, public keys): None plain,
    /// Some([]) encrypted without a key (the job fails; never a plain set instead). Absent
    /// from a cache written before V22: None.
    #[serde(default)]
    pub encryption_recipients: Option<Vec<crate::encryption::Recipient>>,
}

impl AgentDefinition {
    fn from_row(r: &Row) -> AgentDefinition {
        AgentDefinition {
            def_id: r.get("def_id"),
            pgsql_node_id: r.get("pgsql_node_id"),
            node_fqdn: r.get("node_fqdn"),
            pgport: r.get("pgport"),
            admin_user: r.get("admin_user"),
            admin_dbname: r.get("admin_dbname"),
            sslmode: r.get("sslmode"),
            node_status: r.get("node_status"),
            node_profile: r.get("node_profile"),
            node_backup_partition: r.get("node_backup_partition"),
            dbname: r.get("dbname"),
            schedule: [
                r.get("minutes_cron"),
                r.get("hours_cron"),
                r.get("day_month_cron"),
                r.get("month_cron"),
                r.get("weekday_cron"),
            ],
            backup_code: r.get("backup_code"),
            retention_period: r.get("retention_period"),
            retention_redundancy: r.get("retention_redundancy"),
            extra_backup_parameters: r.get("extra_backup_parameters"),
            job_status: r.get("job_status"),
            dump_format: r.get("dump_format"),
            dump_jobs: r.get("dump_jobs"),
            compression_level: r.get("compression_level"),
            max_runtime_seconds: r.get("max_runtime_seconds"),
            lock_wait_timeout_seconds: r.get("lock_wait_timeout_seconds"),
            client_major: r.get("client_major"),
            pause_recovery_on_standby: r.get("pause_recovery_on_standby"),
            max_recovery_pause_seconds: r.get("max_recovery_pause_seconds"),
            checkpoint: r.try_get("checkpoint").ok(),
            max_rate: r.try_get("max_rate").ok().flatten(),
            wal_wait_seconds: r.try_get("wal_wait_seconds").ok(),
            registered: r.get("registered"),
            // Snapshots carry their server's primary repository (agent_snapshot).
            repository_id: r.try_get("repository_id").ok().flatten(),
            encryption_recipients: crate::encryption::parse_recipients(
                r.try_get("encryption_recipients").ok().flatten(),
            ),
        }
    }

    /// Scheduled only when both the definition and its node are active.
    pub fn is_scheduled(&self) -> bool {
        self.job_status == "ACTIVE" && self.node_status == "RUNNING"
    }
}

/// A claimed ad hoc job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub kind: String,
    pub attempt: i32,
    pub def_id: Option<i64>,
    pub snapshot_id: Option<i64>,
    pub restore_def: Option<i64>,
    pub bck_id: Option<i64>,
}

/// A job row claimed by an agent (see [`Catalog::jobs_claimed_by`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRow {
    pub job_id: i64,
    pub attempt: i32,
    pub def_id: Option<i64>,
    /// Set for a scheduled fire (unique with `def_id`).
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
}

/// A snapshot definition as the agent needs it to run the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotJob {
    pub snapshot_id: i64,
    pub node: AgentDefinition,
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

impl Catalog {
    pub async fn agent_server_id(&self, fqdn: &str) -> Result<i64, DbError> {
        Ok(self
            .client()
            .await?
            .query_one("select api.agent_server_id($1)", &[&fqdn])
            .await?
            .get(0))
    }

    /// All definitions of this server (any status: the agent decides what is scheduled).
    pub async fn agent_definitions(&self, server_id: i64) -> Result<Vec<AgentDefinition>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select * from api.agent_definitions where backup_server_id = $1 order by def_id",
                &[&server_id],
            )
            .await?;
        Ok(rows.iter().map(AgentDefinition::from_row).collect())
    }

    /// A snapshot's definition shaped like a backup definition (schedule fields unused).
    pub async fn agent_snapshot(&self, snapshot_id: i64) -> Result<AgentDefinition, DbError> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "select sd.snapshot_id as def_id, sd.pgsql_node_id, n.fqdn as node_fqdn, n.pgport, n.admin_user,
                        n.admin_dbname, n.sslmode, n.status as node_status,
                        api.node_config_value(n.node_id, 'node_profile') as node_profile,
                        api.node_config_value(n.node_id, 'pgnode_backup_partition') as node_backup_partition,
                        sd.dbname, '' as minutes_cron, '' as hours_cron, '' as day_month_cron, '' as month_cron,
                        '' as weekday_cron, sd.backup_code, sd.retention_period::text as retention_period,
                        0 as retention_redundancy, sd.extra_backup_parameters, 'ACTIVE' as job_status,
                        'custom' as dump_format, 1 as dump_jobs, 3 as compression_level,
                        null::float8 as max_runtime_seconds, null::float8 as lock_wait_timeout_seconds, sd.client_major, sd.registered,
                        api.node_config_value(n.node_id, 'pause_recovery_on_standby')::boolean as pause_recovery_on_standby,
                        extract(epoch from api.node_config_value(n.node_id, 'max_recovery_pause')::interval)::float8 as max_recovery_pause_seconds,
                        -- A snapshot goes where the server's sets go: its primary repository.
                        (select s.repository_id from public.backup_server s
                          where s.server_id = sd.backup_server_id) as repository_id,
                        api.snapshot_recipients(sd.snapshot_id) as encryption_recipients
                   from public.snapshot_definition sd join public.pgsql_node n on n.node_id = sd.pgsql_node_id
                  where sd.snapshot_id = $1",
                &[&snapshot_id],
            )
            .await?;
        Ok(AgentDefinition::from_row(&r))
    }

    /// Records a scheduled fire; None when that instant was already recorded (never run twice).
    pub async fn record_scheduled_job(
        &self,
        server_id: i64,
        def_id: i64,
        scheduled_for: chrono::DateTime<chrono::Utc>,
        agent: &str,
        lease: Duration,
    ) -> Result<Option<(i64, i32)>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select job_id, attempt from api.record_scheduled_job($1, $2, $3, $4, $5::text::interval)",
                &[&server_id, &def_id, &scheduled_for, &agent, &interval(lease)],
            )
            .await?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }

    /// Claims due jobs of `kinds`, at most `limit`, never more than `per_node` running jobs of
    /// this server against one node.
    pub async fn claim_jobs(
        &self,
        server_id: i64,
        agent: &str,
        lease: Duration,
        limit: i32,
        per_node: i32,
        kinds: &[&str],
    ) -> Result<Vec<ClaimedJob>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select * from api.claim_jobs($1, $2, $3::text::interval, $4, $5, $6)",
                &[
                    &server_id,
                    &agent,
                    &interval(lease),
                    &limit,
                    &per_node,
                    &kinds,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClaimedJob {
                job_id: r.get("job_id"),
                kind: r.get("kind"),
                attempt: r.get("attempt"),
                def_id: r.get("def_id"),
                snapshot_id: r.get("snapshot_id"),
                restore_def: r.get("restore_def"),
                bck_id: r.get("bck_id"),
            })
            .collect())
    }

    /// Extends the lease; true means stop (cancel requested, or the job is no longer ours).
    pub async fn heartbeat(
        &self,
        job_id: i64,
        attempt: i32,
        progress: i64,
        lease: Duration,
    ) -> Result<bool, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.heartbeat($1, $2, $3, $4::text::interval)",
            &[&job_id, &attempt, &progress, &interval(lease)],
        )
        .await?
        .get(0))
    }

    /// Records a backup result; idempotent on the job id. Returns the BckID.
    pub async fn report_backup(
        &self,
        job_id: i64,
        attempt: i32,
        result: &serde_json::Value,
    ) -> Result<i64, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.report_backup($1, $2, $3)",
            &[&job_id, &attempt, result],
        )
        .await?
        .get(0))
    }

    /// Records the result of a scheduled backup that ran while the catalog was unreachable (no
    /// job row yet): the job row is created as the fire would have created it, then the result
    /// goes through `api.report_backup`. Idempotent on (definition, scheduled instant).
    pub async fn report_offline_backup(
        &self,
        server_id: i64,
        def_id: i64,
        scheduled_for: chrono::DateTime<chrono::Utc>,
        agent: &str,
        result: &serde_json::Value,
    ) -> Result<i64, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.report_offline_backup($1, $2, $3, $4, $5)",
            &[&server_id, &def_id, &scheduled_for, &agent, result],
        )
        .await?
        .get(0))
    }

    /// Jobs still RUNNING (or LOST) under this agent's name: a previous run of it died during
    /// them, or a call that timed out on the agent's side committed after all.
    pub async fn jobs_claimed_by(
        &self,
        server_id: i64,
        agent: &str,
    ) -> Result<Vec<ClaimedRow>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select job_id, attempt, def_id, scheduled_for from public.job where backup_server_id = $1 and claimed_by = $2 and state in ('RUNNING', 'LOST')",
                &[&server_id, &agent],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClaimedRow {
                job_id: r.get(0),
                attempt: r.get(1),
                def_id: r.get(2),
                scheduled_for: r.get(3),
            })
            .collect())
    }

    /// The agent's "is the catalog usable again": its server id, read in a statement that also
    /// needs the job table (a lock held on it makes this wait, and time out, like the calls
    /// that matter would).
    pub async fn agent_probe(&self, fqdn: &str) -> Result<i64, DbError> {
        Ok(self
            .client()
            .await?
            .query_one(
                "select api.agent_server_id($1) from (select 1 from public.job limit 1) j right join (select 1) one on true",
                &[&fqdn],
            )
            .await?
            .get(0))
    }

    pub async fn mark_lost_jobs(&self) -> Result<i32, DbError> {
        Ok(self
            .client()
            .await?
            .query_one("select api.mark_lost_jobs()", &[])
            .await?
            .get(0))
    }

    /// A dedicated connection for LISTEN (not from the pool: it must stay open and idle).
    pub fn listen_config(&self) -> pgbackman_config::ConnConfig {
        self.config.clone()
    }
}

/// The channel a backup server's agent listens on (the triggers of sql/80_triggers.sql notify it).
pub fn server_channel(server_id: i64) -> String {
    format!("pgbackman_server_{server_id}")
}

/// Starts listening on `client` (a dedicated connection) for this server's notifications.
pub async fn listen(client: &tokio_postgres::Client, server_id: i64) -> Result<(), DbError> {
    client
        .batch_execute(&format!("listen {}", server_channel(server_id)))
        .await
        .map_err(|e| DbError::client("LISTEN on the catalog", e))
}
