//! Retention and maintenance calls: the rows `show_retention_plan` and the agent plan from, the
//! two-phase deletion (`api.retention_mark` / `api.retention_forget`), forced deletions, deleted
//! nodes, and the per-node quarantine / reactivation / expiry / autoregister step. The decisions
//! themselves are `pgbackman_core::retention`; the API functions re-check each one.

use chrono::{DateTime, Utc};
use pgbackman_core::retention::{
    DefStatus, NodeDefinition, NodePlan, Owner, PlannedRow, Rule, plan,
};

use crate::catalog::{Audit, Catalog, Filter};
use crate::error::DbError;

/// One backup under retention, with its owner's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionRow {
    /// DefID or SnapshotID.
    pub owner: i64,
    pub is_definition: bool,
    /// The owner's retention period as the catalog spells it (e.g. "7 days").
    pub period: String,
    /// The same period in seconds as of now (calendar-aware for months).
    pub period_seconds: f64,
    pub redundancy: i32,
    pub bck_id: i64,
    pub finished: DateTime<Utc>,
    pub succeeded: bool,
    pub dbname: String,
    pub status: String,
    pub backup_server_id: i64,
    pub backup_dir: Option<String>,
    /// Matches the caller's filters. Rows of the same owners outside them are read too: the
    /// newest successful backups of a definition count wherever they are (a moved definition).
    pub in_scope: bool,
    /// Why the agent of its server refused to delete it at its last maintenance pass (a
    /// BLOCKED finding of `sql/62_reconcile.sql`), if it did.
    pub blocked: Option<String>,
}

impl RetentionRow {
    pub fn planned(&self) -> PlannedRow {
        PlannedRow {
            owner: if self.is_definition {
                Owner::Definition(self.owner)
            } else {
                Owner::Snapshot(self.owner)
            },
            period: chrono::Duration::milliseconds((self.period_seconds * 1000.0) as i64),
            redundancy: u32::try_from(self.redundancy).unwrap_or(0),
            row: pgbackman_core::retention::BackupRow {
                bck_id: self.bck_id,
                finished: self.finished,
                succeeded: self.succeeded,
            },
        }
    }
}

/// The rows under retention and the catalog's clock when they were read.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionRows {
    pub now: DateTime<Utc>,
    pub rows: Vec<RetentionRow>,
}

impl RetentionRows {
    /// The rule of every in-scope row: `core::retention::plan` over all rows read, with the
    /// catalog's clock. `show_retention_plan` shows exactly this; the agent deletes exactly the
    /// rows of its server for which the rule deletes.
    pub fn plan(&self) -> Vec<(&RetentionRow, Rule)> {
        let planned: Vec<PlannedRow> = self.rows.iter().map(RetentionRow::planned).collect();
        self.rows
            .iter()
            .zip(plan(&planned, self.now))
            .filter(|(r, _)| r.in_scope)
            .map(|(r, (_, rule))| (r, rule))
            .collect()
    }
}

/// A backup set marked DELETING: the files to remove, then the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedSet {
    pub bck_id: i64,
    pub backup_dir: Option<String>,
    pub paths: Vec<String>,
    /// A set in a repository (V19): the repository and the keys of its objects, the manifest
    /// first (deleted first: an interrupted deletion never leaves a set that looks complete).
    pub repository_id: Option<i64>,
    pub object_keys: Vec<String>,
    /// Its copies in second repositories (V23): each repository and the keys there, deleted
    /// before the set itself.
    pub copies: Vec<(i64, Vec<String>)>,
}

/// Files of a force-deleted catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedDeletion {
    pub del_id: i64,
    pub bck_id: Option<i64>,
    pub paths: Vec<String>,
}

/// A deleted node whose directory a server must remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeToDelete {
    pub node_id: i64,
    pub backup_partition: String,
    /// Another node uses the same directory: it stays.
    pub shared: bool,
}

/// A node an agent lists at each maintenance pass.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceNode {
    pub node_id: i64,
    pub fqdn: String,
    pub pgport: i32,
    pub admin_user: String,
    pub admin_dbname: String,
    pub sslmode: String,
    /// Databases in its last sane listing.
    pub known_databases: Option<i32>,
    /// A DBA accepted the next listing as it is.
    pub accept_next: bool,
    /// This server registers definitions for its new databases.
    pub autoregister: bool,
    pub deletion_retention_seconds: f64,
}

impl Catalog {
    /// Catalog rows under retention (marked ones excluded: they are being deleted), with the
    /// filters of `show_retention_plan`: None means all.
    pub async fn retention_rows(
        &self,
        server: &Filter,
        node: &Filter,
        dbname: &Filter,
    ) -> Result<RetentionRows, DbError> {
        let servers = self.resolve_ids(server, true).await?;
        let nodes = self.resolve_ids(node, false).await?;
        self.retention_rows_by_id(servers, nodes, dbname).await
    }

    /// The rows of one backup server (and every row of the same owners), for its agent.
    pub async fn retention_rows_of_server(&self, server_id: i64) -> Result<RetentionRows, DbError> {
        self.retention_rows_by_id(Some(vec![server_id]), None, &None)
            .await
    }

    async fn retention_rows_by_id(
        &self,
        servers: Option<Vec<i64>>,
        nodes: Option<Vec<i64>>,
        dbname: &Filter,
    ) -> Result<RetentionRows, DbError> {
        let c = self.client().await?;
        let now: DateTime<Utc> = c.query_one("select now()", &[]).await?.get(0);
        let rows = c
            .query(
                "with scope as (
                     select c.bck_id from public.backup_catalog c
                      where c.retention_state = 'KEPT'
                        and ($1::bigint[] is null or c.backup_server_id = any ($1))
                        and ($2::bigint[] is null or c.pgsql_node_id = any ($2))
                        and ($3::text[] is null or c.dbname = any ($3))
                 ), owners as (
                     select distinct c.def_id, c.snapshot_id from public.backup_catalog c join scope using (bck_id)
                 )
                 select coalesce(c.def_id, c.snapshot_id) as owner, c.def_id is not null as is_def,
                        coalesce(d.retention_period, s.retention_period)::text as period_text,
                        extract(epoch from now() - (now() - coalesce(d.retention_period, s.retention_period)))::float8 as period,
                        coalesce(d.retention_redundancy, 0) as redundancy,
                        c.bck_id, c.finished,
                        -- a base backup counts once verified and not failing its restore drill
                        c.execution_status = 'SUCCEEDED'
                          and api.base_backup_counts(c.bck_id) as ok,
                        c.dbname, c.execution_status,
                        c.backup_server_id, c.backup_dir, c.bck_id in (select bck_id from scope) as in_scope,
                        (select r.detail from public.reconciliation r
                          where r.kind = 'BLOCKED' and r.bck_id = c.bck_id limit 1) as blocked
                   from public.backup_catalog c
                   left join public.backup_definition d on d.def_id = c.def_id
                   left join public.snapshot_definition s on s.snapshot_id = c.snapshot_id
                  where c.retention_state = 'KEPT'
                    and (c.def_id in (select o.def_id from owners o) or c.snapshot_id in (select o.snapshot_id from owners o))
                  order by c.def_id nulls last, c.snapshot_id, c.finished desc, c.bck_id desc",
                &[&servers, &nodes, dbname],
            )
            .await?;
        Ok(RetentionRows {
            now,
            rows: rows
                .iter()
                .map(|r| RetentionRow {
                    owner: r.get("owner"),
                    is_definition: r.get("is_def"),
                    period: r.get("period_text"),
                    period_seconds: r.get("period"),
                    redundancy: r.get("redundancy"),
                    bck_id: r.get("bck_id"),
                    finished: r.get("finished"),
                    succeeded: r.get("ok"),
                    dbname: r.get("dbname"),
                    status: r.get("execution_status"),
                    backup_server_id: r.get("backup_server_id"),
                    backup_dir: r.get("backup_dir"),
                    in_scope: r.get("in_scope"),
                    blocked: r.get("blocked"),
                })
                .collect(),
        })
    }

    /// Phase 1 of a deletion: marks the backup DELETING. None when the catalog no longer agrees
    /// with the plan (see `api.retention_mark`): nothing is deleted then.
    pub async fn retention_mark(
        &self,
        server_id: i64,
        row: &RetentionRow,
    ) -> Result<Option<MarkedSet>, DbError> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                "select backup_dir, paths from api.retention_mark($1, $2, $3, $4)",
                &[&server_id, &row.bck_id, &row.period, &row.redundancy],
            )
            .await?;
        let Some(r) = r else {
            return Ok(None);
        };
        let (repository_id, object_keys) = objects_of(&c, row.bck_id).await?;
        let copies = copies_of(&c, row.bck_id, &object_keys).await?;
        Ok(Some(MarkedSet {
            bck_id: row.bck_id,
            backup_dir: r.get(0),
            paths: r.get(1),
            repository_id,
            object_keys,
            copies,
        }))
    }

    /// Sets of this server marked DELETING and not finished.
    pub async fn retention_marked(&self, server_id: i64) -> Result<Vec<MarkedSet>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select bck_id, backup_dir, paths from api.retention_marked($1)",
                &[&server_id],
            )
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let bck_id: i64 = r.get(0);
            let (repository_id, object_keys) = objects_of(&c, bck_id).await?;
            let copies = copies_of(&c, bck_id, &object_keys).await?;
            out.push(MarkedSet {
                bck_id,
                backup_dir: r.get(1),
                paths: r.get(2),
                repository_id,
                object_keys,
                copies,
            });
        }
        Ok(out)
    }

    /// Phase 3: the files are gone; removes the row.
    pub async fn retention_forget(&self, server_id: i64, bck_id: i64) -> Result<bool, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.retention_forget($1, $2)",
            &[&server_id, &bck_id],
        )
        .await?
        .get(0))
    }

    pub async fn forced_deletions(&self, server_id: i64) -> Result<Vec<ForcedDeletion>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select del_id, bck_id, paths from api.forced_deletions($1)",
                &[&server_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ForcedDeletion {
                del_id: r.get(0),
                bck_id: r.get(1),
                paths: r.get(2),
            })
            .collect())
    }

    pub async fn forced_deletion_done(&self, server_id: i64, del_id: i64) -> Result<bool, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.forced_deletion_done($1, $2)",
            &[&server_id, &del_id],
        )
        .await?
        .get(0))
    }

    pub async fn nodes_to_delete(&self, server_id: i64) -> Result<Vec<NodeToDelete>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select pgsql_node_id, backup_partition, shared from api.nodes_to_delete($1)",
                &[&server_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeToDelete {
                node_id: r.get(0),
                backup_partition: r.get(1),
                shared: r.get(2),
            })
            .collect())
    }

    pub async fn node_deletion_done(&self, server_id: i64, node_id: i64) -> Result<bool, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.node_deletion_done($1, $2)",
            &[&server_id, &node_id],
        )
        .await?
        .get(0))
    }

    pub async fn maintenance_nodes(&self, server_id: i64) -> Result<Vec<MaintenanceNode>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query("select * from api.maintenance_nodes($1)", &[&server_id])
            .await?;
        Ok(rows
            .iter()
            .map(|r| MaintenanceNode {
                node_id: r.get("node_id"),
                fqdn: r.get("fqdn"),
                pgport: r.get("pgport"),
                admin_user: r.get("admin_user"),
                admin_dbname: r.get("admin_dbname"),
                sslmode: r.get("sslmode"),
                known_databases: r.get("known_databases"),
                accept_next: r.get("accept_next"),
                autoregister: r.get("autoregister"),
                deletion_retention_seconds: r.get("deletion_retention_seconds"),
            })
            .collect())
    }

    /// This server's definitions of a node, as `core::retention::node_plan` reads them.
    pub async fn maintenance_definitions(
        &self,
        server_id: i64,
        node_id: i64,
    ) -> Result<Vec<NodeDefinition>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select * from api.maintenance_definitions($1, $2)",
                &[&server_id, &node_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeDefinition {
                def_id: r.get("def_id"),
                dbname: r.get("dbname"),
                status: match r.get::<_, &str>("job_status") {
                    "ACTIVE" => DefStatus::Active,
                    "STOPPED" => DefStatus::Stopped,
                    _ => DefStatus::Deleted,
                },
                quarantined: r.get("quarantined"),
                status_changed_at: r.get("status_changed_at"),
            })
            .collect())
    }

    /// Applies a sane listing's plan; returns (action, DefID, database) of what was done.
    pub async fn apply_node_listing(
        &self,
        server_id: i64,
        node_id: i64,
        listed: &[String],
        plan: &NodePlan,
    ) -> Result<Vec<(String, i64, String)>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select action, def_id, dbname from api.apply_node_listing($1, $2, $3, $4, $5, $6)",
                &[
                    &server_id,
                    &node_id,
                    &listed,
                    &plan.mark_deleted,
                    &plan.reactivate,
                    &plan.expire,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Nodes of this server's DELETED definitions, with their automatic_deletion_retention in
    /// seconds as of now.
    pub async fn deleted_definition_nodes(
        &self,
        server_id: i64,
    ) -> Result<Vec<(i64, f64)>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select node_id, deletion_retention_seconds from api.deleted_definition_nodes($1)",
                &[&server_id],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Removes DELETED definitions of a node no listing reached (only those a user deleted: the
    /// API re-checks); returns (action, DefID, database).
    pub async fn expire_unlisted_definitions(
        &self,
        server_id: i64,
        node_id: i64,
        def_ids: &[i64],
    ) -> Result<Vec<(String, i64, String)>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select action, def_id, dbname from api.expire_definitions($1, $2, $3, null)",
                &[&server_id, &node_id, &def_ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// A suspicious listing: an alert (at most one a day per node and server). True if raised.
    pub async fn raise_listing_alert(
        &self,
        server_id: i64,
        node_id: i64,
        reason: &str,
    ) -> Result<bool, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.raise_listing_alert($1, $2, $3)",
            &[&server_id, &node_id, &reason],
        )
        .await?
        .get(0))
    }

    /// The shell's `accept_pgsql_node_listing`: the node's next listing is taken as it is.
    pub async fn accept_pgsql_node_listing(
        &self,
        audit: &Audit,
        node: &str,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx| {
            Ok(tx
                .query_one("select api.accept_pgsql_node_listing($1)", &[&node])
                .await?
                .get(0))
        })
        .await
    }
}

/// The repository and object keys of a set (none for a set on the server's disk).
async fn objects_of(
    c: &tokio_postgres::Client,
    bck_id: i64,
) -> Result<(Option<i64>, Vec<String>), DbError> {
    let r = c
        .query_one(
            "select repository_id, coalesce(array(
                    select object_prefix || '/' || (f ->> 'name')
                      from jsonb_array_elements(files) f
                     order by (f ->> 'name') = 'manifest.json' desc, f ->> 'name'), '{}')
               from public.backup_catalog where bck_id = $1",
            &[&bck_id],
        )
        .await?;
    let repo: Option<i64> = r.get(0);
    Ok((repo, if repo.is_some() { r.get(1) } else { Vec::new() }))
}

/// The copies of a set (V23): a copy has the set's keys, in another repository. Every copy row
/// counts (a FAILED one may have left objects).
async fn copies_of(
    c: &tokio_postgres::Client,
    bck_id: i64,
    keys: &[String],
) -> Result<Vec<(i64, Vec<String>)>, DbError> {
    let rows = c
        .query(
            "select repository_id from public.backup_copy where bck_id = $1 order by repository_id",
            &[&bck_id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), keys.to_vec())).collect())
}
