//! Replication status (issue 11, part M): what the agent samples of a node it archives (role,
//! standbys, slots, its own WAL receiver and replay; one short admin session within the node's
//! deadlines), its report to the catalog (`api.report_replication_sample`, which opens and clears
//! the WAL conditions and their alerts), and the shell's `show_replication_status`.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::catalog::Catalog;
use crate::error::DbError;
use crate::rows::Rows;

/// One sample of a node: its role and the JSON the catalog reads (see V18).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    /// `primary` or `standby`.
    pub role: String,
    pub sample: Json,
}

impl NodeSample {
    fn field(&self, k: &str) -> Option<&Json> {
        self.sample.get(k).filter(|v| !v.is_null())
    }

    /// The node's WAL position: `pg_current_wal_lsn()` on a primary, the received (else
    /// replayed) position on a standby.
    pub fn node_lsn(&self) -> Option<String> {
        self.field("node_lsn")
            .and_then(Json::as_str)
            .map(str::to_string)
    }

    /// Slot `name` as the node has it, None when missing.
    pub fn slot(&self, name: &str) -> Option<&Json> {
        self.field("slots")?
            .as_array()?
            .iter()
            .find(|s| s.get("slot_name").and_then(Json::as_str) == Some(name))
    }
}

/// Everything in one statement (to_jsonb of the statistics views keeps it working across
/// majors whose views gained columns). Conninfo is left out: it names the upstream's user.
const SAMPLE_SQL: &str = "
with pos as (
    select pg_catalog.pg_is_in_recovery() as rec,
           case when pg_catalog.pg_is_in_recovery()
                then coalesce(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn())
                else pg_catalog.pg_current_wal_lsn() end as lsn
)
select jsonb_build_object(
    'role', case when rec then 'standby' else 'primary' end,
    'server_version', current_setting('server_version'),
    'node_lsn', lsn::text,
    'standbys', (select coalesce(jsonb_agg(to_jsonb(r) - 'pid' - 'usesysid'
                                           || jsonb_build_object('client_addr', host(r.client_addr),
                                                                 'replay_lag_bytes', pg_catalog.pg_wal_lsn_diff(pos.lsn, r.replay_lsn))
                                           order by r.application_name, r.client_addr), '[]')
                   from pg_catalog.pg_stat_replication r),
    'wal_receiver', (select to_jsonb(w) - 'conninfo' - 'pid' from pg_catalog.pg_stat_wal_receiver w limit 1),
    'replay', case when rec then jsonb_build_object(
                  'receive_lsn', pg_catalog.pg_last_wal_receive_lsn()::text,
                  'replay_lsn', pg_catalog.pg_last_wal_replay_lsn()::text,
                  'lag_bytes', pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn()),
                  'paused', pg_catalog.pg_is_wal_replay_paused(),
                  'last_replay_at', pg_catalog.pg_last_xact_replay_timestamp(),
                  'delay', date_trunc('second', now() - pg_catalog.pg_last_xact_replay_timestamp())::text) end,
    'slots', (select coalesce(jsonb_agg(to_jsonb(s) - 'datoid'
                                        || jsonb_build_object('retained_bytes', pg_catalog.pg_wal_lsn_diff(pos.lsn, s.restart_lsn))
                                        order by s.slot_name), '[]')
                from pg_catalog.pg_replication_slots s)
)::text from pos";

/// Samples the node's replication state.
pub async fn sample_node(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
) -> Result<NodeSample, DbError> {
    let text: String = crate::wal_node::session(
        config.into(),
        label,
        "reading its replication status",
        async |c| Ok(c.query_one(SAMPLE_SQL, &[]).await?.get(0)),
    )
    .await?;
    let sample: Json = serde_json::from_str(&text).map_err(|e| DbError::Client {
        context: format!("PgSQL node {label}"),
        reason: format!("its replication status is not JSON: {e}"),
    })?;
    let role = sample
        .get("role")
        .and_then(Json::as_str)
        .unwrap_or("primary")
        .to_string();
    Ok(NodeSample { role, sample })
}

impl Catalog {
    /// The agent's sample of node `node_id` (`role` None: the node did not answer, `error`
    /// says why). Returns how many WAL conditions of the node are open now and how many holes
    /// this server's ledger copy has.
    pub async fn report_replication_sample(
        &self,
        server_id: i64,
        node_id: i64,
        sampled_at: DateTime<Utc>,
        role: Option<&str>,
        error: Option<&str>,
        sample: &Json,
    ) -> Result<(i32, i32), DbError> {
        self.within("report_replication_sample", async {
            let c = self.client().await?;
            let r = c
                .query_one(
                    "select * from api.report_replication_sample($1, $2, $3, $4, $5, $6)",
                    &[&server_id, &node_id, &sampled_at, &role, &error, sample],
                )
                .await?;
            Ok((r.get(0), r.get(1)))
        })
        .await
    }

    /// `show_replication_status NODE`.
    pub async fn show_replication_status(&self, node: &str) -> Result<Rows, DbError> {
        let node = self.node_id(node).await?;
        self.rows("select * from api.show_replication_status($1)", &[&node])
            .await
    }
}
