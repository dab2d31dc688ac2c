//! WAL files lost on disk (issue 11, `sql/89_wal_missing.sql`): the agent reports what its WAL
//! archive of a node holds, compactly; the ledger rows of files that are gone are removed (the
//! hole shows in `show_recovery_window --holes` and raises WAL_HOLE) and recorded as MISSING
//! findings (`show_reconciliation`).

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::DbError;

/// The stored files of one incarnation and timeline directory
/// (`<node dir>/wal/node<NodeID>/<sysid>/<TLI>/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalDirListing {
    /// The system identifier (a u64: sent as text).
    pub sysid: String,
    pub timeline: u32,
    /// Segment files as inclusive ranges of the number their name's last 16 hex digits make
    /// (log * 2^32 + seg): no segment size needed here, contiguous within a log.
    pub ranges: Vec<[i64; 2]>,
    /// The other files (history, partial, backup history), without the codec suffix.
    pub names: Vec<String>,
}

/// A ledger row removed because its file is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWal {
    pub wal_id: i64,
    pub stored_path: String,
    pub file_name: String,
    /// What happened and what to do (also the finding's detail).
    pub detail: String,
}

impl Catalog {
    /// Compares the node's ledger rows on this server with `present` (the files under `root`,
    /// listed from `scan_started` on): rows of files under `root` not present, recorded before
    /// the scan and not below the WAL retention tombstone, are removed and recorded as MISSING findings (an alert each).
    /// Returns them.
    pub async fn reconcile_wal_files(
        &self,
        server_id: i64,
        node_id: i64,
        root: &str,
        scan_started: chrono::DateTime<chrono::Utc>,
        present: &[WalDirListing],
    ) -> Result<Vec<LostWal>, DbError> {
        let json = serde_json::to_value(present).map_err(|e| DbError::Invalid(e.to_string()))?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let rows = tx
            .query(
                "select wal_id, stored_path, file_name, detail from api.reconcile_wal_files($1, $2, $3, $4, $5)",
                &[&server_id, &node_id, &root, &scan_started, &json],
            )
            .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(|r| LostWal {
                wal_id: r.get(0),
                stored_path: r.get(1),
                file_name: r.get(2),
                detail: r.get(3),
            })
            .collect())
    }
}
