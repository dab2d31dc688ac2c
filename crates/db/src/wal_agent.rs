//! The agent's side of WAL archives (issue 11): the archives it runs, read from the catalog
//! (`api.agent_wal_archives`, cached by the agent), and the end of a deleted one
//! (`api.wal_archive_slot_dropped`). Every call is within the handle's deadline.

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::error::DbError;

/// One WAL archive of this backup server, with what the receiver needs to reach its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentWalArchive {
    pub archive_id: i64,
    pub pgsql_node_id: i64,
    pub node_fqdn: String,
    pub pgport: i32,
    pub admin_user: String,
    pub admin_dbname: String,
    pub sslmode: String,
    pub node_status: String,
    pub node_backup_partition: String,
    pub slot_name: String,
    pub synchronous: bool,
    pub max_lag_bytes: i64,
    /// `ACTIVE` or `DELETING`.
    pub status: String,
    /// `stream` (slot + receiver) or `push` (wal-push over TLS; `slot_name` is empty).
    #[serde(default = "stream")]
    pub intake: String,
    /// For a push archive: the SHA-256 (hex) of its credential; None: no credential yet.
    #[serde(default)]
    pub push_token_sha256: Option<String>,
}

fn stream() -> String {
    "stream".into()
}

impl Catalog {
    /// The live (ACTIVE and DELETING) WAL archives of `server_id`.
    pub async fn agent_wal_archives(
        &self,
        server_id: i64,
    ) -> Result<Vec<AgentWalArchive>, DbError> {
        self.within("agent_wal_archives", async {
            let c = self.client().await?;
            let rows = c
                .query("select * from api.agent_wal_archives($1)", &[&server_id])
                .await?;
            Ok(rows
                .iter()
                .map(|r| AgentWalArchive {
                    archive_id: r.get("archive_id"),
                    pgsql_node_id: r.get("pgsql_node_id"),
                    node_fqdn: r.get("node_fqdn"),
                    pgport: r.get("pgport"),
                    admin_user: r.get("admin_user"),
                    admin_dbname: r.get("admin_dbname"),
                    sslmode: r.get("sslmode"),
                    node_status: r.get("node_status"),
                    node_backup_partition: r.get("node_backup_partition"),
                    slot_name: r.get("slot_name"),
                    synchronous: r.get("synchronous"),
                    max_lag_bytes: r.get("max_lag_bytes"),
                    status: r.get("status"),
                    intake: r.get("intake"),
                    push_token_sha256: r.get("push_token_sha256"),
                })
                .collect())
        })
        .await
    }

    /// The agent dropped the slot of a DELETING archive: it becomes DELETED. False when it was
    /// not this server's DELETING archive (already done).
    pub async fn wal_archive_slot_dropped(
        &self,
        server_id: i64,
        archive_id: i64,
    ) -> Result<bool, DbError> {
        self.within("wal_archive_slot_dropped", async {
            let c = self.client().await?;
            Ok(c.query_one(
                "select api.wal_archive_slot_dropped($1, $2)",
                &[&server_id, &archive_id],
            )
            .await?
            .get(0))
        })
        .await
    }
}
