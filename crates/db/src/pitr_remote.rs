//! Restores to a data directory on another host (issue 12, `pgbackman-agent restore-cluster`):
//! what the backup server's agent asks the catalog before it serves a node's base backup set
//! over its TLS channel. The rules are in `sql/89_pitr_remote.sql`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use tokio_postgres::Transaction;

use crate::catalog::{Audit, Catalog};
use crate::error::DbError;

/// One file of a set as the catalog recorded it when the set was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetFile {
    /// Relative to the set directory.
    pub name: String,
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
}

/// Where a restorable base backup set is, and its files.
#[derive(Debug, Clone, Deserialize)]
pub struct RestoreSet {
    pub backup_dir: Option<String>,
    pub files: Vec<SetFile>,
}

/// A node's archive on this server as a restore request sees it.
#[derive(Debug, Clone)]
pub struct RestoreCredential {
    pub archive_id: i64,
    /// `fqdn:port`, for messages.
    pub label: String,
    /// The SHA-256 of the restore credential; None: none made yet.
    pub sha256: Option<String>,
}

impl Catalog {
    /// `create_wal_push_credential ... --restore`: the SHA-256 of a new restore credential of the
    /// archive of `node` on `server` (`replace`: over an existing one); returns the ArchiveID.
    pub async fn set_restore_credential(
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
                    "select api.set_restore_credential($1, $2, $3, $4)",
                    &[&server, &node, &sha256, &replace],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// The live archive of `node_id` on `server_id` and its restore credential's hash; None:
    /// no archive.
    pub async fn agent_restore_credential(
        &self,
        server_id: i64,
        node_id: i64,
    ) -> Result<Option<RestoreCredential>, DbError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "select archive_id, node_fqdn, pgport, restore_token_sha256 from api.agent_restore_credential($1, $2)",
            &[&server_id, &node_id],
        )
        .await?
        .map(|r| RestoreCredential {
            archive_id: r.get(0),
            label: format!("{}:{}", r.get::<_, String>(1), r.get::<_, i32>(2)),
            sha256: r.get(3),
        }))
    }

    /// `api.pitr_plan` for node `node_id`, refused unless its base backup is on `server_id`;
    /// with `set_files`.
    pub async fn agent_remote_restore_plan(
        &self,
        server_id: i64,
        node_id: i64,
        bck_id: Option<i64>,
        kind: &str,
        value: Option<&str>,
        timeline: Option<&str>,
    ) -> Result<Value, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.agent_remote_restore_plan($1, $2, $3, $4, $5, $6)",
            &[&server_id, &node_id, &bck_id, &kind, &value, &timeline],
        )
        .await?
        .get(0))
    }

    /// The set of base backup `bck_id` of `node_id` on `server_id`, when restorable.
    pub async fn agent_remote_restore_set(
        &self,
        server_id: i64,
        node_id: i64,
        bck_id: i64,
    ) -> Result<RestoreSet, DbError> {
        let c = self.client().await?;
        let v: Value = c
            .query_one(
                "select api.agent_remote_restore_set($1, $2, $3)",
                &[&server_id, &node_id, &bck_id],
            )
            .await?
            .get(0);
        serde_json::from_value(v).map_err(|e| {
            DbError::Invalid(format!(
                "agent_remote_restore_set answered what this agent cannot read: {e}"
            ))
        })
    }
}
