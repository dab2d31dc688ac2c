//! Clone lifecycle additions (issue 12, part E): the agent's check of its RUNNING clones at
//! start and the clones' disk use. The rules live in `sql/90_clone_lifecycle.sql`;
//! stop/start/delete, expiry and its alert are `pitr`'s.

use serde_json::Value;

use crate::catalog::Catalog;
use crate::error::DbError;

/// A clone RUNNING or STOPPED on this backup server's disk.
#[derive(Debug, Clone)]
pub struct CloneOnDisk {
    pub clone_id: i64,
    pub name: String,
    pub state: String,
    pub data_dir: Option<String>,
    pub port: i32,
    pub admin_user: String,
    /// The major of the node the clone was restored from (its programs run it).
    pub node_major: Option<String>,
}

impl Catalog {
    /// Clones RUNNING or STOPPED on this server's disk.
    pub async fn agent_live_clones(&self, server_id: i64) -> Result<Vec<CloneOnDisk>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query("select * from api.agent_live_clones($1)", &[&server_id])
            .await?;
        Ok(rows
            .iter()
            .map(|r| CloneOnDisk {
                clone_id: r.get("clone_id"),
                name: r.get("name"),
                state: r.get("state"),
                data_dir: r.get("data_dir"),
                port: r.get("port"),
                admin_user: r.get("admin_user"),
                node_major: r.get("node_major"),
            })
            .collect())
    }

    /// A RUNNING clone found without its server at start: started again, or why not.
    pub async fn clone_started_again(
        &self,
        server_id: i64,
        clone_id: i64,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        let c = self.client().await?;
        c.execute(
            "select api.clone_started_again($1, $2, $3)",
            &[&server_id, &clone_id, &error],
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
}
