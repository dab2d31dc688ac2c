//! Alerts: the agent's sender (claim, report, purge), the overdue check's catalog side, and the
//! shell's `show_alerts` / `retry_alerts`. The rules live in `sql/65_alerts.sql`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::catalog::{Audit, Catalog, Filter};
use crate::error::DbError;
use crate::rows::Rows;

/// An alert claimed for mailing, with what its template needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedAlert {
    pub alert_id: i64,
    pub registered: DateTime<Utc>,
    pub alert_type: String,
    pub ref_id: Option<i64>,
    pub bck_id: Option<i64>,
    pub restore_id: Option<i64>,
    pub job_id: Option<i64>,
    pub backup_server_id: Option<i64>,
    pub backup_server_fqdn: Option<String>,
    pub pgsql_node_id: Option<i64>,
    pub pgsql_node_fqdn: Option<String>,
    pub dbname: String,
    pub execution_status: Option<String>,
    pub error_message: Option<String>,
    /// The stderr tail of the failed backup (BckID), if any.
    pub stderr_tail: Option<String>,
    pub sendto: String,
    /// This attempt's number (fences the report).
    pub attempt: i32,
}

impl ClaimedAlert {
    fn from_row(r: &Row) -> ClaimedAlert {
        ClaimedAlert {
            alert_id: r.get("alert_id"),
            registered: r.get("registered"),
            alert_type: r.get("alert_type"),
            ref_id: r.get("ref_id"),
            bck_id: r.get("bck_id"),
            restore_id: r.get("restore_id"),
            job_id: r.get("job_id"),
            backup_server_id: r.get("backup_server_id"),
            backup_server_fqdn: r.get("backup_server_fqdn"),
            pgsql_node_id: r.get("pgsql_node_id"),
            pgsql_node_fqdn: r.get("pgsql_node_fqdn"),
            dbname: r.get("dbname"),
            execution_status: r.get("execution_status"),
            error_message: r.get("error_message"),
            stderr_tail: r.get("stderr_tail"),
            sendto: r.get("sendto"),
            attempt: r.get("attempts"),
        }
    }
}

/// How the sender claims alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimParams {
    pub limit: i32,
    /// How long a claim holds an alert (longer than one SMTP exchange).
    pub lease: Duration,
    /// After this long due, any agent with mail may send another server's alert.
    pub handover: Duration,
    /// QUEUED alerts older than this are EXPIRED instead of mailed; None = never.
    pub max_age: Option<Duration>,
}

/// A definition the overdue check looks at (ACTIVE, on a RUNNING node, of this server).
#[derive(Debug, Clone, PartialEq)]
pub struct OverdueCandidate {
    pub def_id: i64,
    pub pgsql_node_id: i64,
    pub node_fqdn: String,
    pub dbname: String,
    pub backup_code: String,
    pub schedule: [String; 5],
    /// Scheduled instants before this were never expected.
    pub since: DateTime<Utc>,
    pub last_success: Option<DateTime<Utc>>,
    pub grace: Duration,
    /// The current episode (no success since) was already alerted.
    pub alerted: bool,
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

impl Catalog {
    /// Claims due alerts for mailing (SKIP LOCKED: two agents never get the same alert).
    pub async fn claim_alerts(
        &self,
        server_id: i64,
        agent: &str,
        p: ClaimParams,
    ) -> Result<Vec<ClaimedAlert>, DbError> {
        let c = self.client().await?;
        let max_age = p.max_age.map(interval);
        let rows = c
            .query(
                "select * from api.claim_alerts($1, $2, $3, $4::text::interval, $5::text::interval, $6::text::interval)",
                &[
                    &server_id,
                    &agent,
                    &p.limit,
                    &interval(p.lease),
                    &interval(p.handover),
                    &max_age,
                ],
            )
            .await?;
        Ok(rows.iter().map(ClaimedAlert::from_row).collect())
    }

    /// Records a mailed alert; false when the claim had passed to someone else.
    pub async fn alert_sent(
        &self,
        alert_id: i64,
        agent: &str,
        attempt: i32,
        message_id: &str,
    ) -> Result<bool, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.alert_sent($1, $2, $3, $4)",
            &[&alert_id, &agent, &attempt, &message_id],
        )
        .await?
        .get(0))
    }

    /// Records a failed attempt; returns the new state (QUEUED or FAILED), None when the claim
    /// had passed to someone else.
    pub async fn alert_failed(
        &self,
        alert_id: i64,
        agent: &str,
        attempt: i32,
        error: &str,
        retry_in: Duration,
        give_up: bool,
    ) -> Result<Option<String>, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.alert_failed($1, $2, $3, $4, $5::text::interval, $6)",
            &[
                &alert_id,
                &agent,
                &attempt,
                &error,
                &interval(retry_in),
                &give_up,
            ],
        )
        .await?
        .get(0))
    }

    /// Deletes mailed alerts older than `keep` (default: the server's sent_alerts_retention);
    /// never undelivered ones. Returns how many.
    pub async fn purge_sent_alerts(
        &self,
        server_id: i64,
        keep: Option<Duration>,
    ) -> Result<i32, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.purge_sent_alerts($1, $2::text::interval)",
            &[&server_id, &keep.map(interval)],
        )
        .await?
        .get(0))
    }

    pub async fn overdue_candidates(
        &self,
        server_id: i64,
    ) -> Result<Vec<OverdueCandidate>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select * from api.overdue_candidates($1) order by def_id",
                &[&server_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| OverdueCandidate {
                def_id: r.get("def_id"),
                pgsql_node_id: r.get("pgsql_node_id"),
                node_fqdn: r.get("node_fqdn"),
                dbname: r.get("dbname"),
                backup_code: r.get("backup_code"),
                schedule: [
                    r.get("minutes_cron"),
                    r.get("hours_cron"),
                    r.get("day_month_cron"),
                    r.get("month_cron"),
                    r.get("weekday_cron"),
                ],
                since: r.get("since"),
                last_success: r.get("last_success"),
                grace: Duration::from_secs_f64(r.get::<_, f64>("grace_seconds").max(0.0)),
                alerted: r.get("alerted"),
            })
            .collect())
    }

    /// Raises the OVERDUE alert of one episode; None when it is not due (already raised, a
    /// success arrived, the definition changed).
    pub async fn raise_overdue_alert(
        &self,
        server_id: i64,
        def_id: i64,
        expected: DateTime<Utc>,
        message: &str,
    ) -> Result<Option<i64>, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.raise_overdue_alert($1, $2, $3, $4)",
            &[&server_id, &def_id, &expected, &message],
        )
        .await?
        .get(0))
    }

    /// `show_alerts`: newest first, at most `limit`.
    pub async fn show_alerts(
        &self,
        server: &Filter,
        node: &Filter,
        states: &Filter,
        types: &Filter,
        limit: i64,
    ) -> Result<Rows, DbError> {
        let servers = self.resolve_ids(server, true).await?;
        let nodes = self.resolve_ids(node, false).await?;
        self.rows(
            r#"select * from api.show_alerts
                where ($1::bigint[] is null or "SrvID" = any ($1))
                  and ($2::bigint[] is null or "NodeID" = any ($2))
                  and ($3::text[] is null or "State" = any ($3))
                  and ($4::text[] is null or "Type" = any ($4))
                order by "Registered" desc, "AlertID" desc limit $5"#,
            &[&servers, &nodes, states, types, &limit],
        )
        .await
    }

    /// Queues FAILED / EXPIRED alerts again (all of them when `ids` is None).
    pub async fn retry_alerts(&self, audit: &Audit, ids: Option<&[i64]>) -> Result<i32, DbError> {
        let ids: Option<Vec<i64>> = ids.map(<[i64]>::to_vec);
        self.mutate(audit, async |tx: &tokio_postgres::Transaction<'_>| {
            Ok(tx
                .query_one("select api.retry_alerts($1)", &[&ids])
                .await?
                .get(0))
        })
        .await
    }
}
