//! `pgbackman-agent --check` for the WAL archives of this server: per ACTIVE archive, what its
//! receiver needs of the node (`wal_level`, a free WAL sender, the REPLICATION attribute, a
//! replication connection that `pg_hba.conf` accepts, the slot) and of this host (a
//! `pg_receivewal` for the node's major). Node problems are WARN: the agent runs, that archive
//! does not receive until they are fixed.

use std::process::Stdio;

use pgbackman_db::Catalog;
use pgbackman_db::wal_agent::AgentWalArchive;

use super::receiver::{label, node_config_of};
use crate::Setup;
use crate::check::Level;

/// `catalog_reachable`: the check of the catalog found it answering; else the archives come
/// from the cache (no second wait for a catalog that does not answer).
pub(crate) async fn check(s: &Setup, catalog_reachable: bool) -> Vec<(Level, String)> {
    let listed = if catalog_reachable {
        archives(s).await
    } else {
        super::load_cache(&s.cfg.state_dir)
    };
    let archives = match listed {
        Some(a) => a,
        None => return Vec::new(),
    };
    let mut out = Vec::new();
    for a in archives.iter().filter(|a| a.status == "ACTIVE") {
        if a.intake == "push" {
            out.push(push_archive(s, a));
            continue;
        }
        out.extend(one(s, a).await);
    }
    out
}

/// The archives from the catalog, else from the cache (None: neither).
async fn archives(s: &Setup) -> Option<Vec<AgentWalArchive>> {
    let c = Catalog::lazy_with_deadline(
        s.catalog_cfg.clone(),
        "pgbackman-agent-check",
        &s.target,
        s.cfg.catalog_timeout(),
    )
    .ok()?;
    let from_catalog = async {
        let id = c
            .within("agent_server_id", c.agent_server_id(&s.fqdn))
            .await?;
        c.agent_wal_archives(id).await
    };
    match from_catalog.await {
        Ok(a) => Some(a),
        Err(_) => super::load_cache(&s.cfg.state_dir),
    }
}

/// A push archive has no slot nor client: it needs the listener and a credential.
fn push_archive(s: &Setup, a: &AgentWalArchive) -> (Level, String) {
    let what = format!(
        "WAL archive {} of PgSQL node {} (intake push)",
        a.archive_id,
        label(a)
    );
    if s.cfg.wal_push.is_none() {
        (
            Level::Warn,
            format!(
                "{what}: [agent.wal_push] is not set: its wal-push cannot arrive (set listen, cert and key)"
            ),
        )
    } else if a.push_token_sha256.is_none() {
        (
            Level::Warn,
            format!(
                "{what}: no credential yet: create_wal_push_credential {} {} --file PATH",
                s.fqdn, a.node_fqdn
            ),
        )
    } else {
        (Level::Ok, format!("{what}: credential present"))
    }
}

async fn one(s: &Setup, a: &AgentWalArchive) -> Vec<(Level, String)> {
    let what = format!(
        "WAL archive {} of PgSQL node {} (slot {})",
        a.archive_id,
        label(a),
        a.slot_name
    );
    let config = match node_config_of(&s.cfg, a) {
        Ok(c) => c,
        Err(e) => return vec![(Level::Warn, format!("{what}: {e:#}"))],
    };
    let st = match pgbackman_db::wal_node::wal_settings(config, &label(a), &a.slot_name).await {
        Ok(st) => st,
        Err(e) => return vec![(Level::Warn, format!("{what}: {e}"))],
    };
    let mut out = Vec::new();
    let user = &a.admin_user;
    if st.wal_level == "minimal" {
        out.push((
            Level::Warn,
            format!(
                "{what}: wal_level is minimal: set wal_level = replica on the node and restart it"
            ),
        ));
    }
    let in_use_by_us = st.slot.as_ref().is_some_and(|(_, active)| *active);
    if st.max_wal_senders == 0 {
        out.push((Level::Warn, format!("{what}: max_wal_senders is 0: set it to at least 2 (one for pgbackman, one spare) and restart the node")));
    } else if i64::from(st.max_wal_senders) <= st.senders_in_use && !in_use_by_us {
        out.push((
            Level::Warn,
            format!(
                "{what}: all {} WAL senders are in use: raise max_wal_senders on the node",
                st.max_wal_senders
            ),
        ));
    }
    if !st.can_replicate {
        out.push((
            Level::Warn,
            format!(
                "{what}: role {user} may not replicate: ALTER ROLE {user} REPLICATION on the node"
            ),
        ));
    }
    match &st.slot {
        None => out.push((Level::Ok, format!("{what}: no slot yet; the agent creates it, with WAL reserved at once"))),
        Some((Some(status), _)) if status == "lost" => out.push((Level::Warn, format!(
            "{what}: the slot lost WAL the archive had not received (wal_status lost): delete_wal_archive and register_wal_archive again, then take a base backup"
        ))),
        Some((status, active)) => out.push((Level::Ok, format!(
            "{what}: slot present (wal_status {}, {})",
            status.as_deref().unwrap_or("unknown"),
            if *active { "receiving" } else { "not receiving now" }
        ))),
    }
    let major = pgbackman_dump::server_major(st.server_version_num);
    let bin = match s
        .cfg
        .client_bin_dirs()
        .map_err(anyhow::Error::from)
        .and_then(|d| Ok(pgbackman_dump::pick_client(&d, major, None)?))
    {
        Ok((_, dir)) => dir,
        Err(e) => {
            out.push((
                Level::Warn,
                format!("{what}: no client for PostgreSQL {major}: {e:#}"),
            ));
            return out;
        }
    };
    let receivewal = bin.join("pg_receivewal");
    if !receivewal.is_file() {
        out.push((
            Level::Warn,
            format!(
                "{what}: {} is missing: install the PostgreSQL {major} client programs",
                receivewal.display()
            ),
        ));
    } else {
        out.push((
            Level::Ok,
            format!("{what}: {} for PostgreSQL {major}", receivewal.display()),
        ));
    }
    out.push(replication_connection(s, a, &bin, &what).await);
    out
}

/// A replication connection as pg_receivewal makes it (psql sends IDENTIFY_SYSTEM): proves
/// that pg_hba.conf lets the user in for `replication`.
async fn replication_connection(
    s: &Setup,
    a: &AgentWalArchive,
    bin: &std::path::Path,
    what: &str,
) -> (Level, String) {
    let psql = bin.join("psql");
    let mut c = tokio::process::Command::new(&psql);
    c.args([
        "-X",
        "-A",
        "-t",
        "-w",
        "-c",
        "IDENTIFY_SYSTEM",
        &format!("replication=true dbname=replication application_name=pgbackman_check connect_timeout={}",
            s.cfg.nodes.connect.after.as_secs().max(1)),
    ])
    .args(["-h", &a.node_fqdn, "-p", &a.pgport.to_string(), "-U", &a.admin_user])
    .stdin(Stdio::null())
    .kill_on_drop(true);
    for k in pgbackman_dump::ENV_REMOVED {
        c.env_remove(k);
    }
    if !a.sslmode.is_empty() {
        c.env("PGSSLMODE", &a.sslmode);
    }
    if let Some(p) = &s.cfg.passfile {
        c.env("PGPASSFILE", p);
    }
    let limit = s.cfg.nodes.connect.after + std::time::Duration::from_secs(5);
    match tokio::time::timeout(limit, c.output()).await {
        Ok(Ok(o)) if o.status.success() => (
            Level::Ok,
            format!("{what}: replication connection accepted"),
        ),
        Ok(Ok(o)) => (
            Level::Warn,
            format!(
                "{what}: replication connection refused: {}; allow it in the node's pg_hba.conf (a line for database \"replication\", user {}, this backup server's address) and reload",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim(),
                a.admin_user
            ),
        ),
        Ok(Err(e)) => (
            Level::Warn,
            format!("{what}: cannot run {}: {e}", psql.display()),
        ),
        Err(_) => (
            Level::Warn,
            format!(
                "{what}: the replication connection did not answer within {} s",
                limit.as_secs()
            ),
        ),
    }
}
