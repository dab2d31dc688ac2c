//! WAL archives and the WAL ledger (issue 11): the shell's `register_wal_archive`,
//! `delete_wal_archive`, `show_wal_archives`, `show_wal_segments`, `show_recovery_window`, and
//! the agent's `report_wal_objects`. The rules (validation, idempotence, conflicts, holes,
//! recovery windows) live in `sql/85_wal.sql`; this module maps them to typed Rust.

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use crate::catalog::{Audit, Catalog, Filter};
use crate::error::DbError;
use crate::rows::Rows;

/// One WAL object stored by an agent, as `api.report_wal_objects` takes it. Positions are
/// `pg_lsn` text (`0/3000000`); the system identifier is a u64 (sent as a string: JSON numbers
/// above 2^53 do not survive every parser).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalObject {
    pub node_id: i64,
    pub system_identifier: String,
    pub timeline: u32,
    /// The segment number; None for a history file.
    pub segno: Option<u64>,
    /// `full`, `partial`, `history` or `backup_history`.
    pub kind: String,
    pub seg_size: u32,
    pub start_lsn: Option<String>,
    pub end_lsn: Option<String>,
    pub size: u64,
    pub stored_size: u64,
    pub sha256: String,
    pub stored_sha256: String,
    pub codec: String,
    pub stored_path: String,
    /// `stream`, `archive_command` or `backfill`.
    pub arrival: String,
    /// `PASSED`, `FAILED` or `NOT_CHECKED`.
    pub header_check: String,
    pub header_detail: Option<String>,
    pub arrived_at: chrono::DateTime<chrono::Utc>,
    /// For a history file: its lines, parsed.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub history: Vec<HistoryLine>,
}

/// One line of a timeline history file: `timeline` ended at `switch_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLine {
    pub timeline: u32,
    pub switch_lsn: String,
    pub reason: String,
}

/// What the catalog did with one reported object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new ledger row.
    Recorded,
    /// Already recorded with the same content: nothing changed.
    Duplicate,
    /// Another content is recorded under the same key: refused, recorded aside and alerted.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// Index in the batch, from 0.
    pub index: usize,
    pub outcome: Outcome,
    /// The ledger row (for Refused: the row whose content differs).
    pub wal_id: i64,
    /// The file name, and for Refused what was wrong.
    pub detail: String,
}

/// What the agent reports about one archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveState {
    pub receiver_state: String,
    pub receiver_error: Option<String>,
    /// `pg_replication_slots.wal_status`.
    pub slot_wal_status: Option<String>,
    pub slot_retained_bytes: Option<i64>,
    /// The node's current WAL position (`pg_current_wal_lsn()`), as text.
    pub node_lsn: Option<String>,
}

/// A new WAL archive, as `register_wal_archive` gives it.
#[derive(Debug, Clone, Default)]
pub struct NewWalArchive {
    pub server: String,
    pub node: String,
    pub slot: Option<String>,
    pub synchronous: bool,
    /// A size: bytes or with a unit (`64MB`); None: the default (64MB).
    pub max_lag: Option<String>,
    /// `stream` (slot + receiver) or `push` (archive_command + wal-push); None: stream.
    pub intake: Option<String>,
}

impl Catalog {
    /// Registers a WAL archive; returns its ArchiveID and slot name.
    pub async fn register_wal_archive(
        &self,
        audit: &Audit,
        a: &NewWalArchive,
    ) -> Result<(i64, String), DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let id: i64 = tx
                .query_one(
                    "select api.register_wal_archive($1, $2, $3, $4, $5, $6)",
                    &[
                        &a.server,
                        &a.node,
                        &a.slot,
                        &a.synchronous,
                        &a.max_lag,
                        &a.intake,
                    ],
                )
                .await?
                .get(0);
            let slot: Option<String> = tx
                .query_one(
                    "select slot_name from public.wal_archive where archive_id = $1",
                    &[&id],
                )
                .await?
                .get(0);
            Ok((id, slot.unwrap_or_default()))
        })
        .await
    }

    /// Stores the SHA-256 of a new wal-push credential of the push archive of `node` on
    /// `server` (`replace`: over an existing one); returns the ArchiveID.
    pub async fn set_wal_push_credential(
        &self,
        audit: &Audit,
        server: &str,
        node: &str,
        sha256: &str,
        replace: bool,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.set_wal_push_credential($1, $2, $3, $4)",
                    &[&server, &node, &sha256, &replace],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// The live archive of `node` on `server`: its intake and when its wal-push credential was
    /// made (None: none yet); None when there is no live archive.
    pub async fn wal_push_credential_state(
        &self,
        server: &str,
        node: &str,
    ) -> Result<Option<(String, Option<String>)>, DbError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                r#"select "Intake", "Credential" from api.show_wal_archives
                    where "SrvID" = api.server_id($1) and "NodeID" = api.node_id($2)
                      and "Status" = 'ACTIVE'"#,
                &[&server, &node],
            )
            .await?;
        Ok(row.map(|r| {
            (
                r.get(0),
                r.get::<_, Option<String>>(1).filter(|c| c != "none"),
            )
        }))
    }

    /// Marks the archive of `node` on `server` for deletion; returns its ArchiveID.
    pub async fn delete_wal_archive(
        &self,
        audit: &Audit,
        server: &str,
        node: &str,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.delete_wal_archive($1, $2)", &[&server, &node])
                .await?
                .get(0))
        })
        .await
    }

    /// `show_wal_archives`: DELETED archives only with `all`.
    pub async fn show_wal_archives(
        &self,
        server: &Filter,
        node: &Filter,
        all: bool,
    ) -> Result<Rows, DbError> {
        let servers = self.resolve_ids(server, true).await?;
        let nodes = self.resolve_ids(node, false).await?;
        self.rows(
            r#"select * from api.show_wal_archives
                where ($1::bigint[] is null or "SrvID" = any ($1))
                  and ($2::bigint[] is null or "NodeID" = any ($2))
                  and ($3 or "Status" <> 'DELETED')
                order by "PgSQL node", "Backup server", "ArchiveID""#,
            &[&servers, &nodes, &all],
        )
        .await
    }

    /// `show_wal_segments`: `from`/`to` are LSNs or times.
    pub async fn show_wal_segments(
        &self,
        node: &str,
        from: Option<&str>,
        to: Option<&str>,
        timeline: Option<i64>,
        limit: i32,
    ) -> Result<Rows, DbError> {
        let node = self.node_id(node).await?;
        self.rows(
            "select * from api.show_wal_segments($1, $2, $3, $4, $5)",
            &[&node, &from, &to, &timeline, &limit],
        )
        .await
    }

    /// `show_recovery_window`: one row per run of contiguous WAL, newest first.
    pub async fn show_recovery_window(&self, node: &str) -> Result<Rows, DbError> {
        let node = self.node_id(node).await?;
        self.rows(
            r#"select s.fqdn as "Backup server", w.system_identifier::text as "System identifier",
                      w.timeline as "Timeline", w.timelines as "Lineage",
                      w.from_lsn::text as "From LSN", w.to_lsn::text as "To LSN",
                      w.from_arrived as "First arrival", w.to_arrived as "Last arrival",
                      w.segments as "Segments", pg_catalog.pg_size_pretty(w.stored_bytes) as "Stored",
                      w.starts_at as "Starts at",
                      -- the base backups this window restores (sql/87_base_backups.sql)
                      case when exists (select 1 from public.base_backup b where b.pgsql_node_id = $1) then
                      (select string_agg(format('BckID %s from %s (%s WAL, %s)', c.bck_id, c.start_lsn,
                                                c.wal_segments, pg_catalog.pg_size_pretty(c.total_size)),
                                         '; ' order by c.start_lsn)
                         from api.recovery_chains($1) c
                        where c.backup_server_id = w.backup_server_id
                          and c.system_identifier = w.system_identifier
                          and c.restorable_to_lsn = w.to_lsn) end as "Base backups"
                 from api.recovery_window($1) w
                 join public.backup_server s on s.server_id = w.backup_server_id
                order by w.to_lsn desc, s.fqdn"#,
            &[&node],
        )
        .await
    }

    /// The holes of a node's ledger: missing segments between present ones.
    pub async fn wal_holes(&self, node: &str) -> Result<Rows, DbError> {
        let node = self.node_id(node).await?;
        self.rows(
            r#"select s.fqdn as "Backup server", h.system_identifier::text as "System identifier",
                      h.timeline as "Timeline", h.first_missing_file as "First missing",
                      h.last_missing_file as "Last missing", h.missing as "Segments missing",
                      h.after_lsn::text as "After LSN", h.before_lsn::text as "Before LSN"
                 from api.wal_holes($1) h
                 join public.backup_server s on s.server_id = h.backup_server_id"#,
            &[&node],
        )
        .await
    }

    /// The agent reports the state of an archive (receiver, slot, node position). False when
    /// the archive is not this server's or is DELETED. Within the handle's deadline.
    pub async fn report_wal_archive_state(
        &self,
        server_id: i64,
        archive_id: i64,
        s: &ArchiveState,
    ) -> Result<bool, DbError> {
        self.within("report_wal_archive_state", async {
            let c = self.client().await?;
            Ok(c.query_one(
                "select api.report_wal_archive_state($1, $2, $3, $4, $5, $6, $7::text::pg_lsn)",
                &[
                    &server_id,
                    &archive_id,
                    &s.receiver_state,
                    &s.receiver_error,
                    &s.slot_wal_status,
                    &s.slot_retained_bytes,
                    &s.node_lsn,
                ],
            )
            .await?
            .get(0))
        })
        .await
    }

    /// The agent records the WAL objects it stored (idempotent: a replayed batch gives
    /// duplicates). Within the handle's deadline.
    pub async fn report_wal_objects(
        &self,
        server_id: i64,
        batch: &[WalObject],
    ) -> Result<Vec<Reported>, DbError> {
        let json = serde_json::to_value(batch).map_err(|e| DbError::Client {
            context: "encoding a WAL object batch".into(),
            reason: e.to_string(),
        })?;
        self.within("report_wal_objects", async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "select item, outcome, wal_id, detail from api.report_wal_objects($1, $2)",
                    &[&server_id, &json],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Reported {
                    index: (r.get::<_, i32>(0) - 1).max(0) as usize,
                    outcome: match r.get::<_, &str>(1) {
                        "recorded" => Outcome::Recorded,
                        "duplicate" => Outcome::Duplicate,
                        _ => Outcome::Refused,
                    },
                    wal_id: r.get(2),
                    detail: r.get(3),
                })
                .collect())
        })
        .await
    }
}
