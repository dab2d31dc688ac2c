//! WAL retention (issue 11): the WAL the kept base backups need stays, what is older goes. The
//! rules live in `sql/88_wal_retention.sql`; the tombstone (one row per copy and incarnation) in
//! `migrations/V20__wal_retention.sql`. Two phases like the sets: mark (raise the tombstone, trim
//! the runs), delete the files, forget the rows; a pass that stops in between is resumed.

use crate::catalog::{Catalog, Filter};
use crate::error::DbError;
use crate::rows::Rows;

/// A ledger object below a tombstone: its file is to be deleted, then its row forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedWal {
    pub wal_id: i64,
    pub node_id: i64,
    pub stored_path: String,
}

/// One copy marked by `wal_retention_mark`: everything below `below_lsn` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalMark {
    pub system_identifier: String,
    pub below_segno: i64,
    pub below_lsn: String,
    pub bck_id: i64,
}

impl Catalog {
    /// `show_retention_plan --wal`: per node, copy, incarnation and timeline, the WAL ranges
    /// deleted, kept or held, with why. Filters as `show_retention_plan`'s (None: all).
    pub async fn wal_retention_plan(
        &self,
        server: &Filter,
        node: &Filter,
    ) -> Result<Rows, DbError> {
        let servers = self.resolve_ids(server, true).await?;
        let nodes = self.resolve_ids(node, false).await?;
        self.rows(
            r#"select n.fqdn as "Node", s.fqdn as "Backup server", p.system_identifier::text as "System identifier",
                      p.timeline as "Timeline", p.action as "Action", p.first_file as "First file",
                      p.last_file as "Last file", p.from_lsn::text as "From LSN", p.to_lsn::text as "To LSN",
                      p.segments as "Segments", pg_catalog.pg_size_pretty(p.stored_bytes) as "Stored size",
                      p.reason as "Reason"
                 from public.pgsql_node n
                 cross join lateral api.wal_retention_plan(n.node_id) p
                 join public.backup_server s on s.server_id = p.backup_server_id
                where ($1::bigint[] is null or p.backup_server_id = any ($1))
                  and ($2::bigint[] is null or n.node_id = any ($2))
                  and exists (select 1 from public.wal_run r where r.pgsql_node_id = n.node_id)
                order by n.fqdn, s.fqdn, p.system_identifier, p.from_lsn nulls first, p.timeline"#,
            &[&servers, &nodes],
        )
        .await
    }

    /// The nodes whose WAL this server holds.
    pub async fn wal_retention_nodes(&self, server_id: i64) -> Result<Vec<i64>, DbError> {
        let c = self.client().await?;
        Ok(c.query("select api.wal_retention_nodes($1)", &[&server_id])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Phase 1: raises this server's tombstones of the node's ledger to the floor as it is
    /// now. Returns the copies marked (none: nothing may be deleted).
    pub async fn wal_retention_mark(
        &self,
        server_id: i64,
        node_id: i64,
    ) -> Result<Vec<WalMark>, DbError> {
        let c = self.client().await?;
        Ok(c.query(
            "select system_identifier::text, below_segno, below_lsn::text, bck_id
               from api.wal_retention_mark($1, $2)",
            &[&server_id, &node_id],
        )
        .await?
        .iter()
        .map(|r| WalMark {
            system_identifier: r.get(0),
            below_segno: r.get(1),
            below_lsn: r.get(2),
            bck_id: r.get(3),
        })
        .collect())
    }

    /// Phase 2's list: up to `limit` objects of this server below a tombstone.
    pub async fn wal_retention_marked(
        &self,
        server_id: i64,
        limit: i32,
    ) -> Result<Vec<MarkedWal>, DbError> {
        let c = self.client().await?;
        Ok(c.query(
            "select wal_id, pgsql_node_id, stored_path from api.wal_retention_marked($1, $2)",
            &[&server_id, &limit],
        )
        .await?
        .iter()
        .map(|r| MarkedWal {
            wal_id: r.get(0),
            node_id: r.get(1),
            stored_path: r.get(2),
        })
        .collect())
    }

    /// Phase 3: the files are gone; the rows go. Returns how many.
    pub async fn wal_retention_forget(&self, server_id: i64, ids: &[i64]) -> Result<i32, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.wal_retention_forget($1, $2)",
            &[&server_id, &ids],
        )
        .await?
        .get(0))
    }
}
