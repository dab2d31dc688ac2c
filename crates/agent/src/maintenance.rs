//! The agent's maintenance pass, on its own timer (`[agent] maintenance_seconds`) beside the
//! main loop, or once with `pgbackman-agent --maintenance`:
//!
//! 1. each RUNNING node this server backs up (or autoregisters for) is listed; a sane listing
//!    quarantines definitions of dropped databases, reactivates those whose database came back,
//!    removes definitions DELETED for longer than the node's automatic_deletion_retention, and
//!    registers new databases when the node has autoregister on; a suspicious listing changes
//!    nothing and raises an alert (`core::retention::node_plan`);
//!    definitions a user set DELETED on nodes that could not be listed are removed after the
//!    deadline too (quarantined ones wait for a listing);
//! 2. files of force-deleted catalog rows held here are removed;
//! 3. directories of deleted nodes are removed;
//! 4. retention (`crate::retention::enforce`), then WAL retention (`crate::wal_retention`: the
//!    WAL below the oldest kept base backup of each node);
//!    then the second repository copies due (`crate::copy`);
//! 5. sent alerts older than the server's sent_alerts_retention are removed;
//! 6. reconciliation (`crate::reconcile`): sets on disk without a row, rows whose files are
//!    gone; with the deletions retention refused and the node partitions this agent refuses to
//!    write to, they replace the server's findings in the catalog (an alert for each new one);
//!    with the walk, the stored WAL files of each WAL archive are checked against the ledger
//!    (`crate::wal_reconcile`: a lost file's row goes, a hole and a MISSING finding).
//!
//! Steps 2 to 4 delete only under this agent's backup roots (`crate::roots`), derived once per
//! pass from the partitions the catalog has now and those the agent has written to.
//!
//! Everything is decided from the catalog as it is now: when it is unreachable the pass stops
//! and nothing is deleted until the next pass reaches it (never from a stale cache).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use pgbackman_core::retention::{expired_without_listing, node_plan};
use pgbackman_db::DbError;
use pgbackman_db::reconcile::Finding;
use pgbackman_db::retention::MaintenanceNode;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;
use crate::retention;

/// Starts the periodic pass (first one now); it ends when `stop` is cancelled. Disabled when
/// `maintenance_seconds` is 0.
pub fn spawn(ctx: Arc<Ctx>, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let every = ctx.cfg.maintenance_seconds;
    if every == 0 {
        tracing::info!("maintenance disabled (maintenance_seconds = 0)");
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = pass(&ctx, &stop).await {
                tracing::warn!("maintenance pass stopped: {e:#}; retrying in {every} s");
            }
        }
    }))
}

/// One pass. A catalog error ends it (the rest waits for the next pass); a node that cannot be
/// listed is skipped.
pub async fn pass(ctx: &Ctx, stop: &CancellationToken) -> Result<()> {
    // Nodes whose listing was read this pass (sane or not).
    let mut listed = std::collections::HashSet::new();
    for node in ctx
        .db(
            "maintenance_nodes",
            ctx.catalog.maintenance_nodes(ctx.server_id),
        )
        .await?
    {
        if stop.is_cancelled() {
            return Ok(());
        }
        match node_pass(ctx, &node).await {
            Ok(true) => {
                listed.insert(node.node_id);
            }
            Ok(false) => {}
            Err(e) => {
                // A refusal about one node (its configuration, say) must not stop retention for
                // all; a lost catalog stops the pass.
                match e.downcast_ref::<DbError>() {
                    Some(DbError::Server(_)) => {
                        listed.insert(node.node_id);
                        tracing::error!(node_id = node.node_id, node = %node.fqdn, "maintenance of the node failed: {e:#}")
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    unlisted_expiry(ctx, &listed).await?;
    let partitions = ctx
        .db(
            "server_partitions",
            ctx.catalog.server_partitions(ctx.server_id),
        )
        .await?;
    let configured: Vec<String> = partitions.iter().map(|(_, p)| p.clone()).collect();
    let (roots, refused) = crate::roots::roots(&ctx.cfg_now(), &configured);
    let mut findings: Vec<Finding> = refused
        .into_iter()
        .map(|(p, why)| {
            tracing::error!(partition = %p, "{why}");
            Finding {
                kind: "PARTITION",
                node_id: partitions.iter().find(|(_, q)| *q == p).map(|(n, _)| *n),
                detail: format!(
                    "{why}: this agent writes no backup there (its backups fail) and deletes nothing there. \
                     Set another directory with update_pgsql_node_config <node> pgnode_backup_partition=<dir>"
                ),
                path: p,
                bck_id: None,
            }
        })
        .collect();
    let forced = retention::forced_deletions(ctx, &roots, stop).await?;
    let nodes = retention::deleted_nodes(ctx, &roots, stop).await?;
    let r = retention::enforce(ctx, &roots, stop).await?;
    // After the sets: a base backup retention just deleted no longer holds its WAL.
    let w = crate::wal_retention::enforce(ctx, &roots, stop).await?;
    // Second repository copies of the sets retention keeps (a failed one is retried next pass).
    let (copied, copy_failed) = crate::copy::run(ctx, stop).await?;
    // Clones past their expiry (issue 12): a delete job each, run like any other job.
    match ctx
        .db("expire_clones", ctx.catalog.expire_clones(ctx.server_id))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(clones = n, "expired clones queued for deletion"),
        Err(e) => tracing::warn!("expiring clones: {e}"),
    }
    // The clones' disk use, for show_backup_server_stats (part E).
    crate::clone_lifecycle::maintain(ctx).await;
    let alerts = ctx
        .db(
            "purge_sent_alerts",
            ctx.catalog.purge_sent_alerts(ctx.server_id, None),
        )
        .await?;
    if stop.is_cancelled() {
        return Ok(());
    }
    findings.extend(r.blocked.iter().cloned());
    findings.extend(w.blocked.iter().cloned());
    let mut kinds = vec!["BLOCKED", "PARTITION"];
    if crate::reconcile::walk_due() {
        match crate::reconcile::findings(ctx, &roots).await {
            Ok(f) => findings.extend(f),
            Err(e) => {
                crate::reconcile::walk_failed();
                return Err(e);
            }
        }
        kinds.extend(["ORPHAN", "MISSING"]);
        // WAL files lost on disk: their rows go (a hole), their findings are the catalog's.
        if let Err(e) = crate::wal_reconcile::reconcile(ctx, stop).await {
            crate::reconcile::walk_failed();
            return Err(e);
        }
    }
    let raised = ctx
        .db(
            "record_reconciliation",
            ctx.catalog
                .record_reconciliation(ctx.server_id, &kinds, &findings),
        )
        .await?;
    if !findings.is_empty() {
        tracing::warn!(
            findings = findings.len(),
            new_alerts = raised,
            "maintenance found what it cannot settle (show_reconciliation lists it)"
        );
    }
    if copied + copy_failed > 0 {
        tracing::info!(copied, copy_failed, "second repository copies");
    }
    if forced + nodes + r.deleted + r.refused + w.deleted > 0 || alerts > 0 || w.refused.is_some() {
        tracing::info!(
            forced_deletions = forced,
            deleted_node_dirs = nodes,
            retention_deleted = r.deleted,
            retention_refused = r.refused,
            wal_segments_deleted = w.deleted,
            wal_deletion_refused = w.refused.as_deref().unwrap_or("-"),
            sent_alerts_purged = alerts,
            "maintenance pass done"
        );
    } else {
        tracing::debug!("maintenance pass done: nothing to do");
    }
    Ok(())
}

/// DELETED definitions of nodes no listing reached (STOPPED, unreachable, or none of this
/// server's active concern): those a user deleted still go after the deadline.
async fn unlisted_expiry(ctx: &Ctx, listed: &std::collections::HashSet<i64>) -> Result<()> {
    for (node_id, secs) in ctx
        .db(
            "deleted_definition_nodes",
            ctx.catalog.deleted_definition_nodes(ctx.server_id),
        )
        .await?
    {
        if listed.contains(&node_id) {
            continue;
        }
        let defs = ctx
            .db(
                "maintenance_definitions",
                ctx.catalog.maintenance_definitions(ctx.server_id, node_id),
            )
            .await?;
        let retention = chrono::Duration::milliseconds((secs * 1000.0) as i64);
        let ids = expired_without_listing(&defs, retention, chrono::Utc::now());
        if ids.is_empty() {
            continue;
        }
        for (action, def_id, db) in ctx
            .db(
                "expire_unlisted_definitions",
                ctx.catalog
                    .expire_unlisted_definitions(ctx.server_id, node_id, &ids),
            )
            .await?
        {
            tracing::info!(node_id, def_id, db = %db, "{action}");
        }
    }
    Ok(())
}

/// Lists one node and applies its plan; false when the node could not be listed.
async fn node_pass(ctx: &Ctx, n: &MaintenanceNode) -> Result<bool> {
    let Some(listed) = list_databases(ctx, n).await else {
        return Ok(false);
    };
    let defs = ctx
        .db(
            "maintenance_definitions",
            ctx.catalog
                .maintenance_definitions(ctx.server_id, n.node_id),
        )
        .await?;
    let known = n.known_databases.and_then(|k| usize::try_from(k).ok());
    let retention = chrono::Duration::milliseconds((n.deletion_retention_seconds * 1000.0) as i64);
    let now = chrono::Utc::now();
    let plan = node_plan(&defs, &listed, known, n.accept_next, retention, now);
    if let Some(why) = &plan.suspicious {
        tracing::warn!(node_id = n.node_id, node = %n.fqdn, "database listing looks wrong, nothing changed: {why}");
        ctx.db(
            "raise_listing_alert",
            ctx.catalog
                .raise_listing_alert(ctx.server_id, n.node_id, why),
        )
        .await?;
        return Ok(true);
    }
    for (action, def_id, db) in ctx
        .db(
            "apply_node_listing",
            ctx.catalog
                .apply_node_listing(ctx.server_id, n.node_id, &listed, &plan),
        )
        .await?
    {
        tracing::info!(node_id = n.node_id, def_id, db = %db, "{action}");
    }
    Ok(true)
}

/// The node's databases (templates excluded), or None (logged) when it cannot be listed.
async fn list_databases(ctx: &Ctx, n: &MaintenanceNode) -> Option<Vec<String>> {
    let label = format!("{}:{} (NodeID {})", n.fqdn, n.pgport, n.node_id);
    let passfile = ctx.cfg.passfile.clone();
    let env = move |k: &str| match (k, &passfile) {
        ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
        _ => std::env::var(k).ok(),
    };
    let port = u16::try_from(n.pgport).ok()?;
    let cfg = match pgbackman_config::node_config_with(
        &n.fqdn,
        port,
        &n.admin_user,
        &n.admin_dbname,
        &n.sslmode,
        &env,
    ) {
        Ok(r) => ctx.cfg.nodes.applied(r.config),
        Err(e) => {
            tracing::warn!(node = %label, "maintenance: {e}");
            return None;
        }
    };
    match pgbackman_db::node::node_facts(cfg, &label).await {
        Ok(f) => Some(f.databases),
        Err(e) => {
            tracing::warn!(node = %label, "maintenance: cannot list the databases ({e}); quarantine skipped for this node");
            None
        }
    }
}
