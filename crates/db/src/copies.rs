//! Second repository copies (issue 13): the shell's `set_copy_repository` and
//! `show_backup_copies`, the agent's `api.agent_pending_copies` / `api.report_copy`. The rules
//! live in `sql/87_repository_copies.sql`.

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use crate::catalog::{Audit, Catalog};
use crate::error::DbError;
use crate::rows::Rows;

/// A set of this server due for a copy to its second repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCopy {
    pub bck_id: i64,
    /// Where the set is.
    pub repository_id: i64,
    pub object_prefix: String,
    /// The files as reported (`name`, `size`, `sha256`), the manifest included.
    pub files: serde_json::Value,
    /// Where it is copied to.
    pub copy_repository_id: i64,
    /// Failed attempts so far.
    pub attempts: i32,
}

impl Catalog {
    /// Names the copy repository of a server (its default) or of a definition (`target` is a
    /// DefID); `none` removes it. Returns the SrvID or DefID.
    pub async fn set_copy_repository(
        &self,
        audit: &Audit,
        target: &str,
        repository: &str,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.set_copy_repository($1, $2)",
                    &[&target, &repository],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// `show_backup_copies`.
    pub async fn show_backup_copies(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_backup_copies order by "BckID", "Copy in""#,
            &[],
        )
        .await
    }

    /// The sets of `server_id` due for a copy. Within the handle's deadline.
    pub async fn agent_pending_copies(&self, server_id: i64) -> Result<Vec<PendingCopy>, DbError> {
        self.within("agent_pending_copies", async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "select bck_id, repository_id, object_prefix, files, copy_repository_id, attempts \
                       from api.agent_pending_copies($1)",
                    &[&server_id],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| PendingCopy {
                    bck_id: r.get(0),
                    repository_id: r.get(1),
                    object_prefix: r.get(2),
                    files: r.get(3),
                    copy_repository_id: r.get(4),
                    attempts: r.get(5),
                })
                .collect())
        })
        .await
    }

    /// Records a copy: verified (it counts), or failed with why (an alert; retried later).
    pub async fn report_copy(
        &self,
        server_id: i64,
        bck_id: i64,
        repository_id: i64,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        self.within("report_copy", async {
            let c = self.client().await?;
            c.execute(
                "select api.report_copy($1, $2, $3, $4, $5)",
                &[
                    &server_id,
                    &bck_id,
                    &repository_id,
                    &error.is_none(),
                    &error,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }
}
