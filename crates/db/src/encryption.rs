//! Encryption keys (issue 13): the shell's `register_encryption_key`, `delete_encryption_key`,
//! `set_definition_encryption`, `show_encryption_keys`. The rules live in
//! `sql/35_encryption.sql`; the catalog holds public keys (age recipients) only.

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use crate::catalog::{Audit, Catalog};
use crate::error::DbError;
use crate::rows::Rows;

/// One recipient a definition's sets are encrypted to (`api.definition_recipients`), as the
/// agent caches it: public, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The key's name in the catalog.
    pub name: String,
    /// `age1…`.
    pub recipient: String,
    /// 16 hex digits (see `api.encryption_fingerprint`).
    pub fingerprint: String,
}

/// Parses the `encryption_recipients` column: None for a plain definition, Some([]) for an
/// encrypted one without a key.
pub fn parse_recipients(v: Option<serde_json::Value>) -> Option<Vec<Recipient>> {
    v.map(|v| serde_json::from_value(v).unwrap_or_default())
}

impl Catalog {
    /// Registers a public key; returns its KeyID.
    pub async fn register_encryption_key(
        &self,
        audit: &Audit,
        name: &str,
        recipient: &str,
        remarks: Option<&str>,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.register_encryption_key($1, $2, $3)",
                    &[&name, &recipient, &remarks],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// Deletes a key nothing uses; returns its KeyID.
    pub async fn delete_encryption_key(
        &self,
        audit: &Audit,
        reference: &str,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.delete_encryption_key($1)", &[&reference])
                .await?
                .get(0))
        })
        .await
    }

    /// Sets what new sets of a definition are encrypted to (`false`, `true`, a key name).
    pub async fn set_definition_encryption(
        &self,
        audit: &Audit,
        def_id: i64,
        value: &str,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.set_definition_encryption($1, $2)",
                    &[&def_id, &value],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// `show_encryption_keys`.
    pub async fn show_encryption_keys(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_encryption_keys order by "Name""#,
            &[],
        )
        .await
    }

    /// The identity files (paths on the agent's host) of a restore job's definition.
    /// Within the handle's deadline.
    pub async fn restore_identity_files(&self, job_id: i64) -> Result<Vec<String>, DbError> {
        self.within("restore_identity_files", async {
            let c = self.client().await?;
            Ok(
                c.query_one("select api.restore_identity_files($1)", &[&job_id])
                    .await?
                    .get(0),
            )
        })
        .await
    }

    /// The fingerprints a set was encrypted to; None for a plain set.
    pub async fn set_encryption(&self, bck_id: i64) -> Result<Option<Vec<String>>, DbError> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                "select encrypted_with from public.backup_catalog where bck_id = $1",
                &[&bck_id],
            )
            .await?;
        Ok(r.and_then(|r| r.get(0)))
    }
}
