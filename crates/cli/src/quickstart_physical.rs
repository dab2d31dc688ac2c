//! The physical half of `pgbackman quickstart`: a WAL archive of the node (a slot and the agent's
//! pg_receivewal) and a first base backup, so that `show_recovery_window` answers right after it.
//! Best effort: a node that cannot stream (wal_level, pg_hba.conf, no agent running) gets a
//! warning that says what to do, and the logical half stands as it is.

use std::time::{Duration, Instant};

use anyhow::Result;
use pgbackman_db::{CatalogFilter, Value};

use crate::session::Session;

/// How long quickstart waits for the agent's slot, and for the base backup with its WAL.
const SLOT_WAIT: Duration = Duration::from_secs(30);
const BACKUP_WAIT: Duration = Duration::from_secs(120);

/// Registers the node's WAL archive and runs a first base backup, unless the catalog already
/// holds one for the node (a rerun). `node_cfg` reaches the node (to see the agent's slot).
pub(crate) async fn first_base_backup(
    s: &mut Session,
    fqdn: &str,
    node_ref: &str,
    node_cfg: pgbackman_config::ConnConfig,
) -> Result<()> {
    let node = s.catalog.node(node_ref).await?;
    let node_filter = Some(vec![node.node_id.to_string()]);
    let done = s
        .catalog
        .show_backup_catalog(&CatalogFilter {
            node: node_filter.clone(),
            code: Some(vec!["BASEBACKUP".into()]),
            limit: 1,
            ..Default::default()
        })
        .await?;
    if !done.is_empty() {
        return Ok(());
    }
    let mut archives = s
        .catalog
        .show_wal_archives(&None, &node_filter, false)
        .await?;
    if archives.is_empty() {
        if !crate::execute_line(s, &format!("register_wal_archive {fqdn} {node_ref}")).await {
            println!(
                "[WARNING] no WAL archive for {node_ref}: the logical backups work as they are; \
                 register_wal_archive says what the node lacks."
            );
            return Ok(());
        }
        archives = s
            .catalog
            .show_wal_archives(&None, &node_filter, false)
            .await?;
    }
    let Some(Value::Text(slot)) = archives.get(0, "Slot").cloned() else {
        return Ok(());
    };
    // The base backup must start after the slot exists, or its first WAL would be missing from
    // the archive: wait for the agent to create it.
    println!("Waiting for the agent to create replication slot {slot} on {node_ref} ...");
    let t0 = Instant::now();
    loop {
        match pgbackman_db::wal_node::slot_state(node_cfg.clone(), node_ref, &slot).await {
            Ok(st) if st.exists => break,
            Ok(_) => {}
            Err(e) => {
                println!(
                    "[WARNING] cannot read the replication slots of {node_ref}: {}\n\
                     The WAL archive is registered; show_wal_archives follows it.",
                    crate::format_error(&e.into())
                );
                return Ok(());
            }
        }
        if t0.elapsed() > SLOT_WAIT {
            println!(
                "[WARNING] the agent has not created slot {slot} on {node_ref} within {} s: \
                 show_wal_archives says why (the Receiver column), and the agent's log.",
                SLOT_WAIT.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("[OK] WAL archive of {node_ref}: slot {slot}, streamed by the agent.");

    let def_id = match base_definition(s, &node_filter).await? {
        Some(id) => id,
        None => {
            let line = format!(
                "register_backup_definition {fqdn} {node_ref} \"\" \"\" 0 1 \"*\" \"*\" \"*\" \
                 BASEBACKUP false \"7 days\" 1 \"\" ACTIVE \"registered by quickstart\" --checkpoint fast"
            );
            if !crate::execute_line(s, &line).await {
                return Ok(());
            }
            match base_definition(s, &node_filter).await? {
                Some(id) => id,
                None => return Ok(()),
            }
        }
    };
    if !crate::execute_line(s, &format!("run_backup_definition_now {def_id}")).await {
        return Ok(());
    }
    println!("The agent takes a first base backup and waits for its WAL in the archive ...");
    let t0 = Instant::now();
    let bck = loop {
        let rows = s
            .catalog
            .show_backup_catalog(&CatalogFilter {
                node: node_filter.clone(),
                code: Some(vec!["BASEBACKUP".into()]),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if let Some(Value::Int(b)) = rows.get(0, "BckID").cloned() {
            break b;
        }
        if t0.elapsed() > BACKUP_WAIT {
            println!(
                "[WARNING] the first base backup did not finish within {} s: show_jobs_queue \
                 says what it waits for.",
                BACKUP_WAIT.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    crate::execute_line(s, &format!("show_backup_details {bck}")).await;
    crate::execute_line(s, &format!("show_recovery_window {node_ref}")).await;
    Ok(())
}

/// The node's live BASEBACKUP definition, if any.
async fn base_definition(s: &Session, node_filter: &Option<Vec<String>>) -> Result<Option<i64>> {
    let defs = s
        .catalog
        .show_backup_definitions(&None, node_filter, &None)
        .await?;
    Ok(
        (0..defs.len()).find_map(|i| match (defs.get(i, "Code"), defs.get(i, "DefID")) {
            (Some(Value::Text(c)), Some(Value::Int(id))) if c == "BASEBACKUP" => Some(*id),
            _ => None,
        }),
    )
}
