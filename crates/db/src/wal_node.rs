//! What the WAL receiver asks a PgSQL node (issue 11), each a short admin session within the
//! connection's deadlines (`node::admin_connect`, `tls::within_statement_limit`): create the
//! physical slot with WAL reserved at once, the node's identity (system identifier, major,
//! segment size), the slot's state for the archive report, and dropping the slot.

use crate::error::DbError;
use crate::node::{admin_connect, finish};

/// Who the node is, read when its receiver starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWalIdentity {
    /// `pg_control_system().system_identifier`.
    pub system_identifier: u64,
    pub server_version_num: i32,
    /// `wal_segment_size` in bytes.
    pub seg_size: u64,
    /// True when this call created the slot (false: it existed).
    pub slot_created: bool,
}

/// The slot and the node's position, for `report_wal_archive_state`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    /// None when the slot is missing.
    pub wal_status: Option<String>,
    /// WAL the slot holds on the node: `pg_current_wal_lsn() - restart_lsn`.
    pub retained_bytes: Option<i64>,
    pub node_lsn: Option<String>,
    pub exists: bool,
}

pub(crate) async fn session<T>(
    config: pgbackman_config::ConnConfig,
    label: &str,
    what: &str,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, DbError> {
    let (config, client, task) = admin_connect(config, label).await?;
    let result =
        match crate::tls::within_statement_limit(&config, &client, what, work(&client)).await {
            Ok(r) => r.map_err(|e| DbError::client(format!("{what} on PgSQL node {label}"), e)),
            Err(reason) => Err(DbError::Client {
                context: format!("PgSQL node {label}"),
                reason,
            }),
        };
    finish(client, task).await;
    result
}

/// Creates physical slot `slot` with WAL reserved now (an existing one is kept) and reads the
/// node's identity.
pub async fn prepare_slot(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
    slot: &str,
) -> Result<NodeWalIdentity, DbError> {
    session(config.into(), label, "creating the replication slot", async |c| {
        // Created only when missing: two agents never share a slot name on a node (the
        // catalog's unique index), and a restart finds its own slot.
        let created = c
            .query(
                "select pg_catalog.pg_create_physical_replication_slot($1, true)
                  where not exists (select 1 from pg_catalog.pg_replication_slots where slot_name = $1)",
                &[&slot],
            )
            .await?;
        identity(c, !created.is_empty()).await
    })
    .await
}

/// The node's system identifier, version and WAL segment size (one statement): what stored
/// and pushed files are checked against.
async fn identity(
    c: &tokio_postgres::Client,
    slot_created: bool,
) -> Result<NodeWalIdentity, tokio_postgres::Error> {
    let r = c
        .query_one(
            "select system_identifier::text, current_setting('server_version_num')::int4,
                    current_setting('wal_segment_size', true)
               from pg_catalog.pg_control_system()",
            &[],
        )
        .await?;
    let seg: Option<String> = r.get(2);
    Ok(NodeWalIdentity {
        system_identifier: r.get::<_, String>(0).parse().unwrap_or(0),
        server_version_num: r.get(1),
        seg_size: seg.as_deref().map(parse_size).unwrap_or(16 << 20),
        slot_created,
    })
}

/// The node's identity alone (no slot): what the wal-push intake checks pushed files against.
pub async fn node_identity(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
) -> Result<NodeWalIdentity, DbError> {
    session(config.into(), label, "reading its identity", async |c| {
        identity(c, false).await
    })
    .await
}

/// `wal_segment_size` as SHOW prints it (`16MB`), in bytes.
fn parse_size(s: &str) -> u64 {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().unwrap_or(16);
    n * match unit.trim() {
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => 1,
    }
}

/// The slot's `wal_status` and retained WAL, and the node's current position.
pub async fn slot_state(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
    slot: &str,
) -> Result<SlotState, DbError> {
    session(
        config.into(),
        label,
        "reading the replication slot",
        async |c| {
            let lsn =
                "case when pg_catalog.pg_is_in_recovery() then pg_catalog.pg_last_wal_receive_lsn()
                        else pg_catalog.pg_current_wal_lsn() end";
            let rows = c
                .query(
                    &format!(
                        "select s.wal_status, ({lsn} - s.restart_lsn)::int8, ({lsn})::text
                       from pg_catalog.pg_replication_slots s where s.slot_name = $1"
                    ),
                    &[&slot],
                )
                .await?;
            Ok(match rows.first() {
                Some(r) => SlotState {
                    wal_status: r.get(0),
                    retained_bytes: r.get(1),
                    node_lsn: r.get(2),
                    exists: true,
                },
                None => {
                    let r = c.query_one(&format!("select ({lsn})::text"), &[]).await?;
                    SlotState {
                        node_lsn: r.get(0),
                        ..SlotState::default()
                    }
                }
            })
        },
    )
    .await
}

/// Drops slot `slot` when present; true when it was there.
pub async fn drop_slot(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
    slot: &str,
) -> Result<bool, DbError> {
    session(config.into(), label, "dropping the replication slot", async |c| {
        let r = c
            .query(
                "select pg_catalog.pg_drop_replication_slot(slot_name)
                   from pg_catalog.pg_replication_slots where slot_name = $1 and slot_type = 'physical'",
                &[&slot],
            )
            .await?;
        Ok(!r.is_empty())
    })
    .await
}

/// What `pgbackman-agent --check` reads of a node for its WAL archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    pub wal_level: String,
    pub max_wal_senders: i32,
    /// WAL senders running now.
    pub senders_in_use: i64,
    /// The connecting user has REPLICATION (or is a superuser).
    pub can_replicate: bool,
    pub server_version_num: i32,
    /// The slot's `wal_status` and whether a receiver uses it; None when there is no slot.
    pub slot: Option<(Option<String>, bool)>,
}

/// Reads the node's WAL settings, the connecting role's REPLICATION attribute and the slot.
pub async fn wal_settings(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
    slot: &str,
) -> Result<WalSettings, DbError> {
    session(config.into(), label, "reading its WAL settings", async |c| {
        let r = c
            .query_one(
                "select current_setting('wal_level'), current_setting('max_wal_senders')::int4,
                        (select count(*) from pg_catalog.pg_stat_replication),
                        (select rolreplication or rolsuper from pg_catalog.pg_roles where rolname = current_user),
                        current_setting('server_version_num')::int4",
                &[],
            )
            .await?;
        let s = c
            .query(
                "select wal_status, active from pg_catalog.pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?;
        Ok(WalSettings {
            wal_level: r.get(0),
            max_wal_senders: r.get(1),
            senders_in_use: r.get(2),
            can_replicate: r.get::<_, Option<bool>>(3).unwrap_or(false),
            server_version_num: r.get(4),
            slot: s.first().map(|x| (x.get(0), x.get(1))),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("16MB"), 16 << 20);
        assert_eq!(super::parse_size("1GB"), 1 << 30);
        assert_eq!(super::parse_size("16777216"), 16 << 20);
    }
}
