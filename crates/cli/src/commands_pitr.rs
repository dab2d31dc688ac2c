//! Point-in-time recovery (issue 12): `show_restore_points`, `register_pitr_restore`,
//! `show_clones`, `show_clone_details`. The catalog plans and refuses (sql/89_pitr.sql,
//! sql/89_clones.sql); this reads the arguments and words the outcome.

use anyhow::{Context, Result, bail};
use pgbackman_db::pitr::PitrRequest;
use pgbackman_db::rows::{Rows, Value};

use crate::commands::{filter, list};
use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "show_restore_points"
            | "register_pitr_restore"
            | "show_clones"
            | "show_clone_details"
            | "stop_clone"
            | "start_clone"
            | "delete_clone"
    )
}

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    match inv.cmd.name {
        "show_restore_points" => restore_points(s, inv).await,
        "register_pitr_restore" => register(s, inv).await,
        "show_clones" => {
            let server = filter(s.value(inv, "server", Some("all"))?);
            let node = filter(s.value(inv, "node", Some("all"))?);
            list("clones", s.catalog.show_clones(&server, &node).await)
        }
        "show_clone_details" => {
            let id = s.required(inv, "clone", None)?;
            let id: i64 = id.trim().parse().with_context(|| {
                format!("CloneID \"{id}\" is not a number (show_clones lists them)")
            })?;
            let rows = s.catalog.show_clone_details(id).await?;
            if rows.is_empty() {
                bail!("clone {id} does not exist\nHINT: show_clones lists the clones");
            }
            Ok(Output::Report {
                kind: "clone_details",
                rows,
            })
        }
        "stop_clone" => operation(s, inv, "stop").await,
        "start_clone" => operation(s, inv, "start").await,
        "delete_clone" => operation(s, inv, "delete").await,
        other => bail!("{other} is not a point-in-time recovery command"),
    }
}

fn clone_id(v: &str) -> Result<i64> {
    v.trim()
        .parse()
        .with_context(|| format!("CloneID \"{v}\" is not a number (show_clones lists them)"))
}

async fn operation(s: &mut Session, inv: &Invocation, op: &str) -> Result<Output> {
    let id = clone_id(&s.required(inv, "clone", None)?)?;
    let Some((name, server)) = s.catalog.clone_label(id).await? else {
        bail!("clone {id} does not exist\nHINT: show_clones lists the clones");
    };
    if op == "delete" {
        s.confirm(&format!(
            "Delete clone {name} (CloneID {id}) on {server}? Its server is stopped at once and its data directory removed."
        ))?;
    }
    let job = s.catalog.clone_operation(&s.audit(), id, op).await?;
    Ok(Output::Done(vec![match job {
        None => format!(
            "clone {name} (CloneID {id}) is deleted: it had failed, nothing of it was on disk."
        ),
        Some(job) => format!(
            "JobID {job} queued: the agent of {server} {} clone {name} (CloneID {id}); show_clones follows it.",
            match op {
                "stop" => "stops",
                "start" => "starts",
                _ => "stops and removes",
            }
        ),
    }]))
}

async fn restore_points(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let node = s.required(inv, "node", None)?;
    let point = match (inv.given("time"), inv.given("lsn")) {
        (Some(_), Some(_)) => bail!("give --time or --lsn, not both"),
        (Some(t), None) => Some(("time", t)),
        (None, Some(l)) => Some(("lsn", l)),
        (None, None) => None,
    };
    match point {
        None => list("restore_points", s.catalog.show_restore_points(&node).await),
        Some((kind, value)) => Ok(Output::Report {
            kind: "restore_point",
            rows: s.catalog.check_restore_point(&node, kind, value).await?,
        }),
    }
}

/// The recovery target of the arguments: exactly one of the target options.
fn target(inv: &Invocation) -> Result<(String, Option<String>)> {
    let mut given: Vec<(&str, Option<String>)> = Vec::new();
    for (opt, kind) in [
        ("target-time", "time"),
        ("target-lsn", "lsn"),
        ("target-xid", "xid"),
        ("target-name", "name"),
    ] {
        if let Some(v) = inv.given(opt) {
            given.push((kind, Some(v.to_string())));
        }
    }
    if inv.flag("immediate") {
        given.push(("immediate", None));
    }
    match given.len() {
        1 => {
            let (k, v) = given.remove(0);
            Ok((k.to_string(), v))
        }
        0 => bail!(
            "no recovery target given\nHINT: give one of --target-time T, --target-lsn L, --target-xid X, --target-name N, --immediate (show_restore_points NODE says what is restorable)"
        ),
        _ => bail!(
            "more than one recovery target given ({})\nHINT: give one of --target-time, --target-lsn, --target-xid, --target-name, --immediate",
            given.iter().map(|g| g.0).collect::<Vec<_>>().join(", ")
        ),
    }
}

async fn register(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let bck = s.required(inv, "bck", None)?;
    let Some(clone) = inv.given("clone") else {
        bail!(
            "no restore target given\nHINT: give --clone NAME [--port P]: a new instance on the backup server holding the base backup"
        );
    };
    let (kind, value) = target(inv)?;
    let port = match inv.given("port") {
        Some(p) => Some(
            p.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| (1024..=65535).contains(p))
                .with_context(|| format!("--port \"{p}\" is not a port from 1024 to 65535"))?,
        ),
        None => None,
    };
    let r = PitrRequest {
        bck,
        node: inv.given("node").map(str::to_string),
        kind,
        value,
        timeline: inv.given("timeline").map(str::to_string),
        action: inv.given("target-action").map(str::to_string),
        clone: clone.to_string(),
        port,
        expires: inv.given("expires").map(str::to_string),
        dry_run: inv.flag("dry-run"),
    };
    let plan = s.catalog.register_pitr_restore(&s.audit(), &r).await?;
    let rows = plan_rows(&plan);
    if r.dry_run {
        return Ok(Output::Report {
            kind: "pitr_plan",
            rows,
        });
    }
    Ok(Output::Done(vec![format!(
        "clone {} registered as CloneID {} (JobID {}): the agent of {} restores BckID {} and {} WAL segment(s) ({} to fetch) \
         into it on port {} and recovers it to {}. show_clone_details {} follows it.",
        r.clone,
        plan["clone_id"],
        plan["job_id"],
        plan["backup_server"].as_str().unwrap_or("?"),
        plan["bck_id"],
        plan["wal_segments"],
        human_bytes(plan["fetch_bytes"].as_i64().unwrap_or(0)),
        plan["port"],
        target_words(&plan),
        plan["clone_id"],
    )]))
}

fn target_words(plan: &serde_json::Value) -> String {
    let kind = plan["target_kind"].as_str().unwrap_or("?");
    match plan["target_value"].as_str() {
        Some(v) => format!("{kind} {v} on timeline {}", plan["timeline"]),
        None => format!("{kind} (the base backup's consistent point)"),
    }
}

fn human_bytes(b: i64) -> String {
    let mut v = b as f64;
    for unit in ["bytes", "kB", "MB", "GB", "TB"] {
        if v < 1024.0 || unit == "TB" {
            return if unit == "bytes" {
                format!("{b} bytes")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

/// The plan as one report row.
fn plan_rows(p: &serde_json::Value) -> Rows {
    let text = |k: &str| match &p[k] {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    };
    let int = |k: &str| p[k].as_i64().map(Value::Int).unwrap_or(Value::Null);
    let cols: Vec<(&str, Value)> = vec![
        ("BckID", int("bck_id")),
        ("Backup server", text("backup_server")),
        ("PgSQL node", text("node")),
        ("Base backup consistent at", text("stop_time")),
        ("Start LSN", text("start_lsn")),
        ("Stop LSN", text("stop_lsn")),
        ("Target", Value::Text(target_words(p))),
        ("Timeline", int("timeline")),
        (
            "Lineage",
            Value::Text(
                p["lineage"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(" ← ")
                    })
                    .unwrap_or_default(),
            ),
        ),
        ("WAL planned to LSN", text("end_lsn")),
        ("WAL segments", int("wal_segments")),
        ("History files", int("history_files")),
        (
            "Base backup size",
            Value::Text(human_bytes(p["base_bytes"].as_i64().unwrap_or(0))),
        ),
        (
            "WAL bytes",
            Value::Text(human_bytes(p["wal_bytes"].as_i64().unwrap_or(0))),
        ),
        (
            "Bytes to fetch",
            Value::Text(human_bytes(p["fetch_bytes"].as_i64().unwrap_or(0))),
        ),
        ("Clone", text("clone")),
        ("Port", int("port")),
        ("Target action", text("target_action")),
        ("Note", text("note")),
    ];
    Rows {
        columns: cols.iter().map(|c| c.0.to_string()).collect(),
        rows: vec![cols.into_iter().map(|c| c.1).collect()],
    }
}
