//! Backup repositories (issue 13): the shell's `register_repository`, `update_repository`,
//! `delete_repository`, `set_primary_repository`, `set_definition_repository`,
//! `show_repositories`, and the agent's `api.agent_repositories`. The rules live in
//! `sql/87_repositories.sql`; credentials are never in the catalog (a file path at most).

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use crate::catalog::{Audit, Catalog};
use crate::error::DbError;
use crate::rows::Rows;

/// A new repository, as `register_repository` gives it.
#[derive(Debug, Clone, Default)]
pub struct NewRepository {
    pub name: String,
    /// `local` or `s3`.
    pub kind: String,
    pub path: Option<String>,
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    /// A file on the agent's host holding the S3 keys; None: the agent's environment.
    pub credentials_file: Option<String>,
    pub remarks: Option<String>,
}

/// `update_repository`: None keeps a value; `credentials_file` `none` goes back to the
/// agent's environment.
#[derive(Debug, Clone, Default)]
pub struct RepositoryChange {
    pub path: Option<String>,
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub credentials_file: Option<String>,
    pub remarks: Option<String>,
}

/// A repository as the agent needs it (cached in its state directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRepository {
    pub repository_id: i64,
    pub name: String,
    /// `local` or `s3`.
    pub kind: String,
    pub path: Option<String>,
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: String,
    pub region: String,
    pub credentials_file: Option<String>,
    /// The server's primary repository.
    pub is_primary: bool,
}

impl Catalog {
    /// Registers a repository; returns its RepoID.
    pub async fn register_repository(
        &self,
        audit: &Audit,
        r: &NewRepository,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.register_repository($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &r.name,
                        &r.kind,
                        &r.path,
                        &r.endpoint,
                        &r.bucket,
                        &r.prefix,
                        &r.region,
                        &r.credentials_file,
                        &r.remarks,
                    ],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// Changes a repository; returns its RepoID.
    pub async fn update_repository(
        &self,
        audit: &Audit,
        reference: &str,
        c: &RepositoryChange,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.update_repository($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &reference,
                        &c.path,
                        &c.endpoint,
                        &c.bucket,
                        &c.prefix,
                        &c.region,
                        &c.credentials_file,
                        &c.remarks,
                    ],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// Deletes a repository that holds no set and that nothing names; returns its RepoID.
    pub async fn delete_repository(&self, audit: &Audit, reference: &str) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.delete_repository($1)", &[&reference])
                .await?
                .get(0))
        })
        .await
    }

    /// Sets a server's primary repository (`local` for its own backup_dir); returns the SrvID.
    pub async fn set_primary_repository(
        &self,
        audit: &Audit,
        server: &str,
        repository: &str,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.set_primary_repository($1, $2)",
                    &[&server, &repository],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// Names a definition's repository (`default` follows its server's primary).
    pub async fn set_definition_repository(
        &self,
        audit: &Audit,
        def_id: i64,
        repository: &str,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.set_definition_repository($1, $2)",
                    &[&def_id, &repository],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// `show_repositories`.
    pub async fn show_repositories(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_repositories order by "Name""#,
            &[],
        )
        .await
    }

    /// Where a set in a repository is: (RepoID, object prefix, files as reported: `name`,
    /// `size`, `sha256`). None for a set in a directory.
    pub async fn repository_set(
        &self,
        bck_id: i64,
    ) -> Result<Option<(i64, String, serde_json::Value)>, DbError> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                "select repository_id, object_prefix, files from public.backup_catalog
                  where bck_id = $1 and repository_id is not null",
                &[&bck_id],
            )
            .await?;
        Ok(r.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// The repositories the agent of `server_id` uses. Within the handle's deadline.
    pub async fn agent_repositories(
        &self,
        server_id: i64,
    ) -> Result<Vec<AgentRepository>, DbError> {
        self.within("agent_repositories", async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "select repository_id, name, kind, path, endpoint, bucket, prefix, region, \
                            credentials_file, is_primary from api.agent_repositories($1)",
                    &[&server_id],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| AgentRepository {
                    repository_id: r.get(0),
                    name: r.get(1),
                    kind: r.get(2),
                    path: r.get(3),
                    endpoint: r.get(4),
                    bucket: r.get(5),
                    prefix: r.get(6),
                    region: r.get(7),
                    credentials_file: r.get(8),
                    is_primary: r.get::<_, Option<bool>>(9).unwrap_or(false),
                })
                .collect())
        })
        .await
    }
}
