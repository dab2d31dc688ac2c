//! The clone lifecycle (issue 12, part E): the shell's start_clone, stop_clone, delete_clone
//! and the agent's side (states to reach, clones to keep running, disk use, expiry). The rules
//! live in `sql/90_clone_lifecycle.sql`.

use serde_json::Value;
use tokio_postgres::Transaction;

use crate::catalog::{Audit, Catalog};
use crate::error::DbError;

/// A clone the agent must bring to `desired_state` (RUNNING, STOPPED, DELETED), or (from
/// `agent_live_clones`) one that is RUNNING or STOPPED on disk.
#[derive(Debug, Clone)]
pub struct CloneOnDisk {
    pub clone_id: i64,
    pub name: String,
    pub state: String,
    pub desired_state: Option<String>,
    pub data_dir: Option<String>,
    pub port: i32,
    pub admin_user: String,
    /// The major of the node the clone was restored from (its programs run it).
    pub node_major: Option<String>,
}

impl Catalog {
    async fn clone_action(
        &self,
        audit: &Audit,
        func: &str,
        clone: &str,
    ) -> Result<String, DbError> {
        let q = format!("select api.{func}($1)");
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx.query_one(&q, &[&clone]).await?.get(0))
        })
        .await
    }

    /// `start_clone CLONE` (CloneID or name): the agent starts it; returns what will happen.
    pub async fn start_clone(&self, audit: &Audit, clone: &str) -> Result<String, DbError> {
        self.clone_action(audit, "start_clone", clone).await
    }

    /// `stop_clone CLONE`.
    pub async fn stop_clone(&self, audit: &Audit, clone: &str) -> Result<String, DbError> {
        self.clone_action(audit, "stop_clone", clone).await
    }

    /// `delete_clone CLONE`.
    pub async fn delete_clone(&self, audit: &Audit, clone: &str) -> Result<String, DbError> {
        self.clone_action(audit, "delete_clone", clone).await
    }

    // ---- the agent --------------------------------------------------------------------------

    async fn clones_on_disk(&self, q: &str, server_id: i64) -> Result<Vec<CloneOnDisk>, DbError> {
        let c = self.client().await?;
        let rows = c.query(q, &[&server_id]).await?;
        Ok(rows
            .iter()
            .map(|r| CloneOnDisk {
                clone_id: r.get("clone_id"),
                name: r.get("name"),
                state: r.get("state"),
                desired_state: r.try_get("desired_state").ok().flatten(),
                data_dir: r.get("data_dir"),
                port: r.get("port"),
                admin_user: r.get("admin_user"),
                node_major: r.get("node_major"),
            })
            .collect())
    }

    /// Clones whose asked-for state differs from theirs.
    pub async fn agent_clone_actions(&self, server_id: i64) -> Result<Vec<CloneOnDisk>, DbError> {
        self.clones_on_disk("select * from api.agent_clone_actions($1)", server_id)
            .await
    }

    /// Clones RUNNING or STOPPED on this server's disk.
    pub async fn agent_live_clones(&self, server_id: i64) -> Result<Vec<CloneOnDisk>, DbError> {
        self.clones_on_disk("select * from api.agent_live_clones($1)", server_id)
            .await
    }

    /// The state the agent reached for a clone, or why it could not.
    pub async fn clone_action_done(
        &self,
        server_id: i64,
        clone_id: i64,
        state: &str,
        error: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), DbError> {
        let c = self.client().await?;
        c.execute(
            "select api.clone_action_done($1, $2, $3, $4, $5)",
            &[&server_id, &clone_id, &state, &error, &note],
        )
        .await?;
        Ok(())
    }

    /// The clones' disk use as measured (`[{clone_id, bytes}]`).
    pub async fn report_clone_disk(&self, server_id: i64, sizes: &Value) -> Result<(), DbError> {
        let c = self.client().await?;
        c.execute("select api.report_clone_disk($1, $2)", &[&server_id, sizes])
            .await?;
        Ok(())
    }

    /// Expiry: warnings raised, expired clones asked to be deleted (their number).
    pub async fn expire_clones(&self, server_id: i64) -> Result<i32, DbError> {
        let c = self.client().await?;
        Ok(c.query_one("select api.expire_clones($1)", &[&server_id])
            .await?
            .get(0))
    }
}
