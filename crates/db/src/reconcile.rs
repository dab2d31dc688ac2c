//! Reconciliation of the catalog with the disk (`sql/62_reconcile.sql`): the partitions an
//! agent writes to, the set directories the catalog knows, the findings of a maintenance pass,
//! and the shell's `show_reconciliation`.

use serde::Serialize;

use crate::catalog::{Catalog, Filter};
use crate::error::DbError;
use crate::rows::Rows;

/// What a maintenance pass found and could not settle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// ORPHAN, MISSING, BLOCKED or PARTITION.
    pub kind: &'static str,
    /// The set directory, or the partition.
    pub path: String,
    pub bck_id: Option<i64>,
    pub node_id: Option<i64>,
    /// What is wrong and what to do.
    pub detail: String,
}

/// A set the catalog says exists on this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSet {
    pub bck_id: i64,
    pub node_id: i64,
    pub backup_dir: String,
}

/// A set directory no catalog row names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSet {
    pub dir: String,
    /// Its job is QUEUED or RUNNING: the report may still come.
    pub job_open: bool,
    /// The backup server of its job, when the catalog has that job.
    pub job_server: Option<i64>,
}

impl Catalog {
    /// (NodeID, pgnode_backup_partition) of every node this server writes sets for or must
    /// clean up after.
    pub async fn server_partitions(&self, server_id: i64) -> Result<Vec<(i64, String)>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select pgsql_node_id, partition from api.server_partitions($1)",
                &[&server_id],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Of `dirs` (with the job id of each set's manifest), those no catalog row names, each
    /// with whether its job is still open and the server of that job.
    pub async fn unknown_set_dirs(
        &self,
        dirs: &[String],
        jobs: &[i64],
    ) -> Result<Vec<UnknownSet>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select dir, job_open, job_server from api.unknown_set_dirs($1, $2)",
                &[&dirs, &jobs],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| UnknownSet {
                dir: r.get(0),
                job_open: r.get(1),
                job_server: r.get(2),
            })
            .collect())
    }

    /// The sets of this server the catalog says exist.
    pub async fn server_set_dirs(&self, server_id: i64) -> Result<Vec<KnownSet>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select bck_id, pgsql_node_id, backup_dir from api.server_set_dirs($1)",
                &[&server_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| KnownSet {
                bck_id: r.get(0),
                node_id: r.get(1),
                backup_dir: r.get(2),
            })
            .collect())
    }

    /// Replaces this server's findings of `kinds` with `findings`; returns how many alerts were
    /// raised (one per finding seen for the first time).
    pub async fn record_reconciliation(
        &self,
        server_id: i64,
        kinds: &[&str],
        findings: &[Finding],
    ) -> Result<i32, DbError> {
        let json = serde_json::to_value(findings).map_err(|e| DbError::Invalid(e.to_string()))?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n: i32 = tx
            .query_one(
                "select api.record_reconciliation($1, $2, $3)",
                &[&server_id, &kinds, &json],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok(n)
    }

    /// `show_reconciliation`: the findings of the last maintenance pass of each server.
    pub async fn show_reconciliation(
        &self,
        server: &Filter,
        kinds: &Filter,
    ) -> Result<Rows, DbError> {
        let servers = self.resolve_ids(server, true).await?;
        self.rows(
            r#"select * from api.show_reconciliation
                where ($1::bigint[] is null or "SrvID" = any ($1))
                  and ($2::text[] is null or "Kind" = any ($2))
                order by "SrvID", "Kind", "Path""#,
            &[&servers, kinds],
        )
        .await
    }
}
