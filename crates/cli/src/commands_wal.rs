//! WAL archives and the WAL ledger (issue 11): `register_wal_archive`, `delete_wal_archive`,
//! `show_wal_archives`, `show_wal_segments`, `show_recovery_window`, `show_replication_status`. The catalog decides
//! (sql/85_wal.sql); this only reads the arguments and words the outcome.

use anyhow::{Context, Result};
use pgbackman_db::wal::NewWalArchive;

use crate::commands::{filter, list};
use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "register_wal_archive"
            | "delete_wal_archive"
            | "show_wal_archives"
            | "show_wal_segments"
            | "show_recovery_window"
            | "show_replication_status"
            | "create_wal_push_credential"
    )
}

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    match inv.cmd.name {
        "register_wal_archive" => register(s, inv).await,
        "delete_wal_archive" => delete(s, inv).await,
        "create_wal_push_credential" => crate::commands_wal_push::credential(s, inv).await,
        "show_wal_archives" => {
            let server = filter(s.value(inv, "server", Some("all"))?);
            let node = filter(s.value(inv, "node", Some("all"))?);
            list(
                "wal_archives",
                s.catalog
                    .show_wal_archives(&server, &node, inv.flag("all"))
                    .await,
            )
        }
        "show_wal_segments" => segments(s, inv).await,
        "show_replication_status" => {
            let node = s.required(inv, "node", None)?;
            list(
                "replication_status",
                s.catalog.show_replication_status(&node).await,
            )
        }
        "show_recovery_window" => {
            let node = s.required(inv, "node", None)?;
            if inv.flag("holes") {
                list("wal_holes", s.catalog.wal_holes(&node).await)
            } else if inv.flag("chains") {
                list(
                    "recovery_chains",
                    s.catalog.show_recovery_chains(&node).await,
                )
            } else {
                list(
                    "recovery_window",
                    s.catalog.show_recovery_window(&node).await,
                )
            }
        }
        other => anyhow::bail!("{other} is not a WAL archive command"),
    }
}

async fn register(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let a = NewWalArchive {
        server: s.required(inv, "server", None)?,
        node: s.required(inv, "node", None)?,
        slot: inv.given("slot").map(str::to_string),
        synchronous: inv.flag("synchronous"),
        max_lag: inv.given("max-lag").map(str::to_string),
        intake: inv.given("intake").map(str::to_string),
    };
    let (id, slot) = s.catalog.register_wal_archive(&s.audit(), &a).await?;
    if slot.is_empty() {
        return Ok(Output::Done(vec![format!(
            "WAL archive registered as ArchiveID {id} (intake push): no slot; the node's archive_command delivers \
             each file to the agent of {}. Next: create_wal_push_credential {} {} --file PATH, then on the node host \
             archive_command = 'pgbackman-agent wal-push %p' (README: WAL push).",
            a.server, a.server, a.node
        )]));
    }
    Ok(Output::Done(vec![format!(
        "WAL archive registered as ArchiveID {id}: the agent of {} keeps slot {slot} on {} and receives its WAL \
         (show_wal_archives follows it; show_recovery_window tells from when the node is restorable).",
        a.server, a.node
    )]))
}

async fn delete(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let server = s.required(inv, "server", None)?;
    let node = s.required(inv, "node", None)?;
    let push = matches!(
        s.catalog.wal_push_credential_state(&server, &node).await,
        Ok(Some((intake, _))) if intake == "push"
    );
    s.confirm(&if push {
        format!(
            "Stop taking the WAL {node} pushes to {server}? Its archive_command fails from now on. \
             (The archived WAL stays until retention removes it.)"
        )
    } else {
        format!(
            "Stop archiving the WAL of {node} on {server} and drop its replication slot on the node? \
             (The archived WAL stays until retention removes it.)"
        )
    })?;
    let id = s
        .catalog
        .delete_wal_archive(&s.audit(), &server, &node)
        .await?;
    Ok(Output::Done(vec![if push {
        format!(
            "WAL archive {id} is deleted: the agent of {server} refuses {node}'s pushes from now on; \
             remove archive_command (or set archive_mode = off) on the node."
        )
    } else {
        format!(
            "WAL archive {id} is being deleted: the agent of {server} stops its receiver and drops the slot at its next round."
        )
    }]))
}

async fn segments(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let node = s.required(inv, "node", None)?;
    let timeline = match inv.given("timeline") {
        Some(t) => Some(
            t.trim()
                .parse::<i64>()
                .ok()
                .filter(|t| (1..=i64::from(u32::MAX)).contains(t))
                .with_context(|| {
                    format!("--timeline \"{t}\" is not a timeline (a number from 1)")
                })?,
        ),
        None => None,
    };
    let limit = match inv.given("limit") {
        Some(l) => l
            .trim()
            .parse()
            .ok()
            .filter(|n: &i32| *n > 0)
            .with_context(|| format!("--limit \"{l}\" is not a positive number"))?,
        None => 1000,
    };
    list(
        "wal_segments",
        s.catalog
            .show_wal_segments(&node, inv.given("from"), inv.given("to"), timeline, limit)
            .await,
    )
}
