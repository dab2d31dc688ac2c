//! Physical restore drills (issue 12): the agent's question for a claimed DRILL job of a base
//! backup. The rules (the random target inside the recoverable window, A's plan for it) live in
//! `sql/90_drills.sql`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::Catalog;
use crate::error::DbError;

/// What a physical drill restores: a target inside the recoverable window and the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalDrill {
    pub bck_id: i64,
    pub node_id: i64,
    /// The node's FQDN (for messages).
    pub node: String,
    /// `lsn`, or `immediate` when the window ends in the backup's own last segment.
    pub target_kind: String,
    pub target_lsn: Option<String>,
    /// The window the target was drawn from.
    pub window_from_lsn: String,
    pub window_to_lsn: String,
    /// The node's admin user (the role the scratch instance is queried as).
    pub admin_user: String,
    /// The major of the node that took the backup.
    pub node_major: Option<String>,
    /// `api.pitr_plan`'s answer (set directory, WAL and history files with their sha256).
    pub plan: Value,
}

impl Catalog {
    /// A fresh target and plan for a claimed physical DRILL job (a new draw at every attempt).
    pub async fn physical_drill_plan(
        &self,
        server_id: i64,
        job_id: i64,
    ) -> Result<PhysicalDrill, DbError> {
        let c = self.client().await?;
        let v: Value = c
            .query_one(
                "select api.physical_drill_plan($1, $2)",
                &[&server_id, &job_id],
            )
            .await?
            .get(0);
        serde_json::from_value(v).map_err(|e| {
            DbError::Invalid(format!(
                "physical_drill_plan answered what this agent cannot read: {e}"
            ))
        })
    }
}

/// amcheck without `pg_amcheck`: on a drill's scratch instance (promoted, reached over its
/// unix socket as `user`), in database `postgres`, the extension installed and then every
/// system catalog's heap (`verify_heapam`) and every btree index (`bt_index_check`) checked.
/// Returns how many relations were checked; corruption is an error naming the first one.
pub async fn amcheck_catalogs(
    socket_dir: &std::path::Path,
    port: u16,
    user: &str,
) -> Result<i64, DbError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname("postgres")
        .application_name("pgbackman-agent drill amcheck")
        .connect_timeout(std::time::Duration::from_secs(5));
    let target = format!("drill instance on {}:{port}", socket_dir.display());
    let c = crate::tls::connect(&pgbackman_config::ConnConfig::from(cfg), &target).await?;
    c.batch_execute("create extension if not exists amcheck")
        .await?;
    let bad = c
        .query_opt(
            "select c.oid::regclass::text, v.blkno, v.msg
               from pg_catalog.pg_class c, verify_heapam(c.oid) v
              where c.relnamespace = 'pg_catalog'::regnamespace and c.relkind = 'r'
              limit 1",
            &[],
        )
        .await?;
    if let Some(r) = bad {
        return Err(DbError::Invalid(format!(
            "amcheck: {} block {}: {}",
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, String>(2)
        )));
    }
    let n: i64 = c
        .query_one(
            "select count(*) from (
                 select bt_index_check(c.oid)
                   from pg_catalog.pg_class c join pg_catalog.pg_am a on a.oid = c.relam
                  where a.amname = 'btree' and c.relkind = 'i' and c.relpersistence <> 't') x",
            &[],
        )
        .await?
        .get(0);
    let heaps: i64 = c
        .query_one(
            "select count(*) from pg_catalog.pg_class where relnamespace = 'pg_catalog'::regnamespace and relkind = 'r'",
            &[],
        )
        .await?
        .get(0);
    Ok(n + heaps)
}
