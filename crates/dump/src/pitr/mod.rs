//! Point-in-time recovery (issue 12): what restoring a base backup and the archived WAL after
//! it takes, without the catalog. [`fetch`]: one WAL file of a plan (decompressed, its SHA-256
//! checked against the ledger's, written atomically), for `restore_command`; [`extract`]: a
//! base backup set into a new data directory, checked against its `backup_manifest`;
//! [`recovery`]: the recovery settings, starting the instance and waiting for the target.
//! The agent's CLONE job (`pgbackman-agent`, `clone_job`) and `wal-get` are built on it.

pub mod extract;
pub mod fetch;
pub mod recovery;

use std::path::PathBuf;

use pgbackman_db::pitr::PlannedWal;
use serde::{Deserialize, Serialize};

/// What `wal-get` reads: the plan of one restore, written beside the data directory by the job
/// that made it. A file it lists is served without the catalog; any other is looked up in the
/// catalog's ledger (server, node, incarnation) with the agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalGetPlan {
    /// The backup server whose archive is read.
    pub server_id: i64,
    /// The node restored.
    pub node_id: i64,
    /// Its incarnation (a u64 as text).
    pub system_identifier: String,
    /// The agent's configuration file (the catalog connection for files not in the plan).
    pub config: Option<PathBuf>,
    /// The segments and history files of the plan, by the name PostgreSQL asks for.
    pub files: Vec<PlannedWal>,
}

impl WalGetPlan {
    /// The planned file PostgreSQL asks for under `name` (`%f`).
    pub fn find(&self, name: &str) -> Option<&PlannedWal> {
        self.files.iter().find(|f| f.name == name)
    }
}
