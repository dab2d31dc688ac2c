//! Base backups (issue 11): the shell's recovery chains, the agent's
//! WAL check and wait note. The rules live in `sql/87_base_backups.sql`; the set itself is
//! recorded by `api.report_backup` (its `base_backup` object).

use crate::catalog::Catalog;
use crate::error::DbError;
use crate::rows::Rows;

impl Catalog {
    /// The segments of `start..stop` on `timeline` that this server's ledger does not hold
    /// yet, by name, in order. `seg_size` is used when the ledger has none of the incarnation.
    #[allow(clippy::too_many_arguments)]
    pub async fn base_backup_missing_wal(
        &self,
        server_id: i64,
        node_id: i64,
        system_identifier: &str,
        timeline: i64,
        start: &str,
        stop: &str,
        seg_size: i32,
    ) -> Result<Vec<String>, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.base_backup_missing_wal($1, $2, $3::text::numeric, $4, $5::text::pg_lsn, $6::text::pg_lsn, $7)",
            &[&server_id, &node_id, &system_identifier, &timeline, &start, &stop, &seg_size],
        )
        .await?
        .get(0))
    }

    /// What a running job waits for (None clears it). False when the job is no longer this
    /// attempt's.
    pub async fn job_wait_note(
        &self,
        server_id: i64,
        job_id: i64,
        attempt: i32,
        note: Option<&str>,
    ) -> Result<bool, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.job_wait_note($1, $2, $3, $4)",
            &[&server_id, &job_id, &attempt, &note],
        )
        .await?
        .get(0))
    }

    /// `show_recovery_window --chains`: each base backup of the node with the WAL after it.
    pub async fn show_recovery_chains(&self, node: &str) -> Result<Rows, DbError> {
        let node = self.node_id(node).await?;
        self.rows(
            r#"select c.bck_id as "BckID", s.fqdn as "Backup server",
                      c.system_identifier::text as "System identifier", c.timeline as "Timeline",
                      c.start_lsn::text as "Start LSN", c.stop_lsn::text as "Stop LSN",
                      c.stop_time as "Consistent at", c.wal_segments as "WAL count",
                      pg_catalog.pg_size_pretty(c.total_size) as "Total size",
                      c.restorable_to_lsn::text as "Restorable to LSN",
                      c.last_restore_point as "Last restore point", c.note as "Note"
                 from api.recovery_chains($1) c
                 join public.backup_server s on s.server_id = c.backup_server_id
                order by c.start_lsn desc, s.fqdn"#,
            &[&node],
        )
        .await
    }
}
