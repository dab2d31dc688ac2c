//! The monitoring reads (`sql/92_monitoring.sql`): one snapshot of the fleet for the status
//! probe (`show_pgbackman_status`) and the metrics (`pgbackman serve-metrics`). Read only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::catalog::Catalog;
use crate::error::DbError;

/// One definition that is not DELETED.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionHealth {
    pub def_id: i64,
    pub server_id: i64,
    pub server_fqdn: String,
    pub node_id: i64,
    pub node_fqdn: String,
    pub node_status: String,
    pub dbname: String,
    pub backup_code: String,
    /// ACTIVE or STOPPED.
    pub job_status: String,
    pub schedule: [String; 5],
    pub since: DateTime<Utc>,
    pub grace: Duration,
    pub last_status: Option<String>,
    pub last_finished: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_success_duration: Option<f64>,
    pub last_success_size: Option<i64>,
    pub last_verified: Option<DateTime<Utc>>,
    pub queued: i64,
    pub running: i64,
    pub oldest_queued: Option<DateTime<Utc>>,
    /// The zone its server's agent fires schedules in, when the catalog knows it.
    pub time_zone: Option<String>,
}

impl DefinitionHealth {
    fn from_row(r: &Row) -> DefinitionHealth {
        DefinitionHealth {
            def_id: r.get("def_id"),
            server_id: r.get("server_id"),
            server_fqdn: r.get("server_fqdn"),
            node_id: r.get("node_id"),
            node_fqdn: r.get("node_fqdn"),
            node_status: r.get("node_status"),
            dbname: r.get("dbname"),
            backup_code: r.get("backup_code"),
            job_status: r.get("job_status"),
            schedule: [
                r.get("minutes_cron"),
                r.get("hours_cron"),
                r.get("day_month_cron"),
                r.get("month_cron"),
                r.get("weekday_cron"),
            ],
            since: r.get("since"),
            grace: Duration::from_secs_f64(r.get::<_, f64>("grace_seconds").max(0.0)),
            last_status: r.get("last_status"),
            last_finished: r.get("last_finished"),
            last_error: r.get("last_error"),
            last_success: r.get("last_success"),
            last_success_duration: r.get("last_success_duration"),
            last_success_size: r.get("last_success_size"),
            last_verified: r.get("last_verified"),
            queued: r.get("queued"),
            running: r.get("running"),
            oldest_queued: r.get("oldest_queued"),
            time_zone: r.get("time_zone"),
        }
    }
}

/// Open jobs of one kind and state on one backup server.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    pub server_id: i64,
    pub server_fqdn: String,
    pub kind: String,
    pub state: String,
    pub jobs: i64,
}

/// Alerts of one state and type.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertCount {
    pub state: String,
    pub alert_type: String,
    pub alerts: i64,
}

/// A backup server and the last time its agent reported through the job table.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSeen {
    pub server_id: i64,
    pub server_fqdn: String,
    pub status: String,
    pub last_report: Option<DateTime<Utc>>,
    /// The agent's last heartbeat.
    pub last_seen: Option<DateTime<Utc>>,
    /// online, degraded, offline or never seen (`api.agent_state`).
    pub agent_state: Option<String>,
}

/// An ACTIVE WAL archive (`api.monitoring_wal`, sql/87_wal_monitor.sql).
#[derive(Debug, Clone, PartialEq)]
pub struct WalHealth {
    pub archive_id: i64,
    pub node_id: i64,
    pub node_fqdn: String,
    pub server_fqdn: String,
    pub receiver_state: Option<String>,
    /// The node's position minus the ledger's end, as the agent last reported.
    pub lag_bytes: Option<f64>,
    pub last_arrived: Option<DateTime<Utc>>,
    pub holes: i64,
    /// Codes of the open WAL conditions (alerted, not cleared).
    pub open_codes: Vec<String>,
    /// The newest recoverable window: LSNs as byte positions, and arrival times.
    pub window_from_lsn: Option<f64>,
    pub window_to_lsn: Option<f64>,
    pub window_from: Option<DateTime<Utc>>,
    pub window_to: Option<DateTime<Utc>>,
}

/// What the catalog says about the fleet, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    pub definitions: Vec<DefinitionHealth>,
    pub queue: Vec<QueueDepth>,
    pub alerts: Vec<AlertCount>,
    pub servers: Vec<ServerSeen>,
    pub wal: Vec<WalHealth>,
    /// The catalog's clock when it was read: ages are measured against it.
    pub now: Option<DateTime<Utc>>,
}

impl Catalog {
    /// The fleet as one repeatable-read snapshot (the four reads agree with each other).
    pub async fn fleet_snapshot(&self) -> Result<FleetSnapshot, DbError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let now: DateTime<Utc> = tx.query_one("select now()", &[]).await?.get(0);
        let definitions = tx
            .query(
                "select * from api.monitoring_definitions order by node_fqdn, dbname, def_id",
                &[],
            )
            .await?
            .iter()
            .map(DefinitionHealth::from_row)
            .collect();
        let queue = tx
            .query(
                "select server_id, server_fqdn, kind, state, jobs from api.monitoring_queue
                  order by server_id, kind, state",
                &[],
            )
            .await?
            .iter()
            .map(|r| QueueDepth {
                server_id: r.get(0),
                server_fqdn: r.get(1),
                kind: r.get(2),
                state: r.get(3),
                jobs: r.get(4),
            })
            .collect();
        let alerts = tx
            .query(
                "select state, alert_type, alerts from api.monitoring_alerts order by 1, 2",
                &[],
            )
            .await?
            .iter()
            .map(|r| AlertCount {
                state: r.get(0),
                alert_type: r.get(1),
                alerts: r.get(2),
            })
            .collect();
        let servers = tx
            .query(
                "select server_id, server_fqdn, status, last_report, last_seen, agent_state
                   from api.monitoring_servers
                  order by server_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| ServerSeen {
                server_id: r.get(0),
                server_fqdn: r.get(1),
                status: r.get(2),
                last_report: r.get(3),
                last_seen: r.get(4),
                agent_state: r.get(5),
            })
            .collect();
        let wal = tx
            .query(
                "select archive_id, node_id, node_fqdn, server_fqdn, receiver_state, lag_bytes::float8,
                        last_arrived, holes, open_codes, window_from_lsn::float8, window_to_lsn::float8,
                        window_from, window_to
                   from api.monitoring_wal order by node_fqdn, server_fqdn",
                &[],
            )
            .await?
            .iter()
            .map(|r| WalHealth {
                archive_id: r.get(0),
                node_id: r.get(1),
                node_fqdn: r.get(2),
                server_fqdn: r.get(3),
                receiver_state: r.get(4),
                lag_bytes: r.get(5),
                last_arrived: r.get(6),
                holes: r.get(7),
                open_codes: r.get(8),
                window_from_lsn: r.get(9),
                window_to_lsn: r.get(10),
                window_from: r.get(11),
                window_to: r.get(12),
            })
            .collect();
        tx.commit().await?;
        Ok(FleetSnapshot {
            definitions,
            queue,
            alerts,
            servers,
            wal,
            now: Some(now),
        })
    }
}
