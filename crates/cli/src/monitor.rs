//! `show_pgbackman_status`: the status probe for Nagios, Icinga and Zabbix (PgBackMan had
//! monitoring helpers of this kind). One read of the catalog ([`Catalog::fleet_snapshot`]),
//! judged by `core::monitoring`; shown as a listing (table, CSV, JSON), as the one line and exit
//! status of the Nagios plugin convention, or as Zabbix low-level discovery JSON.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use pgbackman_config::FileConfig;
use pgbackman_core::cron::CronSchedule;
use pgbackman_core::monitoring::{self, DefinitionFacts, Judgement, Tally, Verdict};
use pgbackman_db::monitoring::{DefinitionHealth, FleetSnapshot, WalHealth};
use pgbackman_db::{Catalog, Rows, Value};
use serde_json::json;

use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

/// Default minutes a job may wait in the queue before the probe warns.
const QUEUE_WARNING_MINUTES: u64 = 15;
/// Default deadline of the Nagios form: plugins are killed at 10 s by default.
const NAGIOS_TIMEOUT_SECONDS: u64 = 8;

/// The zone schedules are evaluated in when the agent's is unknown (never seen): the agent's
/// default rule ($TZ, else UTC).
pub fn zone() -> Tz {
    std::env::var("TZ")
        .ok()
        .and_then(|z| z.trim_start_matches(':').parse().ok())
        .unwrap_or(Tz::UTC)
}

/// A definition with its verdict.
pub struct Judged<'a> {
    pub def: &'a DefinitionHealth,
    pub judgement: Judgement,
}

/// Judges every definition of `snap` (at the catalog's clock).
pub fn judge_all<'a>(snap: &'a FleetSnapshot, tz: &Tz, stuck_after: Duration) -> Vec<Judged<'a>> {
    let now = snap.now.unwrap_or_else(Utc::now);
    let mut parsed: BTreeMap<&[String; 5], Option<CronSchedule>> = BTreeMap::new();
    snap.definitions
        .iter()
        .map(|d| {
            let sched = parsed.entry(&d.schedule).or_insert_with(|| {
                let [m, h, dom, mon, dow] = &d.schedule;
                CronSchedule::parse_fields(m, h, dom, mon, dow).ok()
            });
            let facts = DefinitionFacts {
                schedule: sched.as_ref(),
                active: d.job_status == "ACTIVE" && d.node_status == "RUNNING",
                since: d.since,
                grace: d.grace,
                last_status: d.last_status.as_deref(),
                last_error: d.last_error.as_deref(),
                last_success: d.last_success,
                oldest_queued: d.oldest_queued,
            };
            // The agent's zone when the catalog knows it, else the reader's.
            let zone: Tz = d
                .time_zone
                .as_deref()
                .and_then(|z| z.parse().ok())
                .unwrap_or(*tz);
            Judged {
                def: d,
                judgement: monitoring::judge(&facts, &zone, now, stuck_after),
            }
        })
        .collect()
}

fn minutes_opt(inv: &Invocation, name: &str, default: u64) -> Result<u64> {
    match inv.given(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("--{name} \"{v}\" is not a positive whole number")),
    }
}

fn stuck_after(inv: &Invocation) -> Result<Duration> {
    Ok(Duration::from_secs(
        60 * minutes_opt(inv, "queue-warning", QUEUE_WARNING_MINUTES)?,
    ))
}

/// The handler (shell and `-C`).
pub async fn show_pgbackman_status(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let stuck = stuck_after(inv)?;
    let what = inv.given("zabbix-discovery").map(str::to_ascii_lowercase);
    if let Some(w) = &what
        && w != "nodes"
        && w != "definitions"
    {
        bail!("--zabbix-discovery \"{w}\" is not valid: use nodes or definitions");
    }
    let snap = s.catalog.fleet_snapshot().await?;
    let judged = judge_all(&snap, &zone(), stuck);
    if let Some(w) = what {
        // JSON whatever -o says: Zabbix reads nothing else.
        return Ok(Output::Json(zabbix_discovery(&judged, &w)));
    }
    if inv.flag("nagios") {
        let (line, _) = nagios(&judged, &snap.wal);
        return Ok(Output::Text(line));
    }
    Ok(Output::List {
        kind: "pgbackman_status",
        rows: status_rows(&judged, &snap.wal),
    })
}

/// The Nagios form of `-C`: one line on stdout and the plugin exit status, UNKNOWN (3) when
/// the catalog cannot be read within the deadline or the command is wrong.
pub async fn nagios_main(flag: Option<&str>, file: &FileConfig, inv: &Invocation) -> ExitCode {
    let code = match nagios_probe(flag, file, inv).await {
        Ok((line, verdict)) => {
            println!("{line}");
            verdict.nagios_code()
        }
        Err(e) => {
            let msg = crate::format_error(&e).replace(['\n', '|'], " ");
            println!(
                "PGBACKMAN UNKNOWN - {}",
                crate::render::safe(&pgbackman_core::text::bound_words(&msg))
            );
            Verdict::Unknown.nagios_code()
        }
    };
    ExitCode::from(code)
}

async fn nagios_probe(
    flag: Option<&str>,
    file: &FileConfig,
    inv: &Invocation,
) -> Result<(String, Verdict)> {
    let stuck = stuck_after(inv)?;
    let timeout = Duration::from_secs(minutes_opt(inv, "timeout", NAGIOS_TIMEOUT_SECONDS)?);
    let (cfg, target, _) = crate::catalog_target(flag, file)?;
    let catalog = Catalog::lazy_with_deadline(cfg, "pgbackman-probe", &target, timeout)?;
    let snap = catalog
        .within("show_pgbackman_status", async {
            catalog.check_compatible().await?;
            catalog.fleet_snapshot().await
        })
        .await
        .with_context(|| format!("catalog {target}"))?;
    Ok(nagios(&judge_all(&snap, &zone(), stuck), &snap.wal))
}

fn problem(j: &Judged<'_>) -> String {
    format!(
        "DefID {} {} on {}: {}",
        j.def.def_id, j.def.dbname, j.def.node_fqdn, j.judgement.reason
    )
}

/// What is wrong with a WAL archive, for the plugin line and the listing.
fn wal_reason(w: &WalHealth) -> String {
    if w.open_codes.is_empty() {
        format!(
            "receiver {}",
            w.receiver_state.as_deref().unwrap_or("not reported")
        )
    } else {
        format!(
            "open WAL alerts {} (show_replication_status {})",
            w.open_codes.join(", "),
            w.node_fqdn
        )
    }
}

/// The plugin line and the overall verdict; WAL archives count by their open WAL alerts.
pub fn nagios(judged: &[Judged<'_>], wal: &[WalHealth]) -> (String, Verdict) {
    let mut tally = Tally::default();
    let mut worst: Vec<&Judged<'_>> = Vec::new();
    for j in judged {
        tally.add(j.judgement.verdict);
        if j.judgement.verdict != Verdict::Ok {
            worst.push(j);
        }
    }
    worst.sort_by_key(|j| std::cmp::Reverse(j.judgement.verdict));
    let mut problems: Vec<String> = Vec::new();
    let mut wal_tally = Tally::default();
    let mut wal_worst: Vec<(Verdict, String)> = Vec::new();
    for w in wal {
        let v = monitoring::wal_verdict(&w.open_codes);
        wal_tally.add(v);
        if v != Verdict::Ok {
            wal_worst.push((
                v,
                format!(
                    "WAL archive of {} on {}: {}",
                    w.node_fqdn,
                    w.server_fqdn,
                    wal_reason(w)
                ),
            ));
        }
    }
    wal_worst.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    // Critical WAL archives before the definitions' warnings.
    let defs: Vec<(Verdict, String)> = worst
        .iter()
        .map(|j| (j.judgement.verdict, problem(j)))
        .collect();
    let mut all: Vec<(Verdict, String)> = defs.into_iter().chain(wal_worst).collect();
    all.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    problems.extend(all.into_iter().map(|(_, p)| p));
    (
        monitoring::nagios_line_with(&tally, &wal_tally, &problems),
        tally.worst().max(wal_tally.worst()),
    )
}

/// `{"data":[{"{#NODE}":…},…]}` for Zabbix low-level discovery.
pub fn zabbix_discovery(judged: &[Judged<'_>], what: &str) -> serde_json::Value {
    let data: Vec<serde_json::Value> = if what == "nodes" {
        let mut nodes = BTreeMap::new();
        for j in judged {
            nodes.insert(j.def.node_id, &j.def.node_fqdn);
        }
        nodes
            .into_iter()
            .map(|(id, fqdn)| json!({"{#NODEID}": id.to_string(), "{#NODE}": fqdn}))
            .collect()
    } else {
        judged
            .iter()
            .map(|j| {
                json!({
                    "{#DEFID}": j.def.def_id.to_string(),
                    "{#NODE}": j.def.node_fqdn,
                    "{#DBNAME}": j.def.dbname,
                    "{#CODE}": j.def.backup_code,
                    "{#SERVER}": j.def.server_fqdn,
                })
            })
            .collect()
    };
    json!({ "data": data })
}

const COLUMNS: &[&str] = &[
    "Level",
    "Node",
    "DefID",
    "DBname",
    "Code",
    "Backup server",
    "Verdict",
    "Last status",
    "Last success",
    "Success age (s)",
    "Queued",
    "Running",
    "Overdue since",
    "Next run",
    "Reason",
];

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, Value::Time)
}

fn text(t: Option<&str>) -> Value {
    t.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

fn summary(t: &Tally) -> String {
    format!(
        "{} critical, {} warning, {} unknown, {} ok of {} definitions",
        t.critical,
        t.warning,
        t.unknown,
        t.ok,
        t.total()
    )
}

/// The listing: the fleet's verdict first, then each node followed by its definitions.
pub fn status_rows(judged: &[Judged<'_>], wal: &[WalHealth]) -> Rows {
    let mut by_node: BTreeMap<(&str, i64), Vec<&Judged<'_>>> = BTreeMap::new();
    for j in judged {
        by_node
            .entry((j.def.node_fqdn.as_str(), j.def.node_id))
            .or_default()
            .push(j);
    }
    let mut fleet = Tally::default();
    let (mut queued, mut running) = (0, 0);
    let mut rows = Vec::new();
    for ((fqdn, _), defs) in &by_node {
        let mut tally = Tally::default();
        let (mut q, mut r) = (0, 0);
        let mut newest: Option<DateTime<Utc>> = None;
        let mut overdue: Option<DateTime<Utc>> = None;
        let mut next: Option<DateTime<Utc>> = None;
        for j in defs {
            tally.add(j.judgement.verdict);
            fleet.add(j.judgement.verdict);
            q += j.def.queued;
            r += j.def.running;
            newest = newest.max(j.def.last_success);
            overdue = match (overdue, j.judgement.overdue_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            next = match (next, j.judgement.next_run) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        queued += q;
        running += r;
        rows.push(vec![
            Value::Text("node".into()),
            Value::Text(fqdn.to_string()),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Text(tally.worst().as_str().into()),
            Value::Null,
            time(newest),
            Value::Null,
            Value::Int(q),
            Value::Int(r),
            time(overdue),
            time(next),
            Value::Text(summary(&tally)),
        ]);
        for j in defs {
            let d = j.def;
            rows.push(vec![
                Value::Text("definition".into()),
                Value::Text(d.node_fqdn.clone()),
                Value::Int(d.def_id),
                Value::Text(d.dbname.clone()),
                Value::Text(d.backup_code.clone()),
                Value::Text(d.server_fqdn.clone()),
                Value::Text(j.judgement.verdict.as_str().into()),
                text(d.last_status.as_deref()),
                time(d.last_success),
                j.judgement.success_age.map_or(Value::Null, Value::Int),
                Value::Int(d.queued),
                Value::Int(d.running),
                time(j.judgement.overdue_since),
                time(j.judgement.next_run),
                Value::Text(j.judgement.reason.clone()),
            ]);
        }
    }
    let mut wal_tally = Tally::default();
    for w in wal {
        let v = monitoring::wal_verdict(&w.open_codes);
        wal_tally.add(v);
        rows.push(vec![
            Value::Text("wal archive".into()),
            Value::Text(w.node_fqdn.clone()),
            Value::Null,
            Value::Null,
            Value::Text("WAL".into()),
            Value::Text(w.server_fqdn.clone()),
            Value::Text(v.as_str().into()),
            text(w.receiver_state.as_deref()),
            time(w.last_arrived),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Text(wal_reason(w)),
        ]);
    }
    let fleet_row = vec![
        Value::Text("fleet".into()),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Text(fleet.worst().max(wal_tally.worst()).as_str().into()),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Int(queued),
        Value::Int(running),
        Value::Null,
        Value::Null,
        Value::Text(if wal.is_empty() {
            summary(&fleet)
        } else {
            format!(
                "{}; {} critical, {} warning of {} WAL archives",
                summary(&fleet),
                wal_tally.critical,
                wal_tally.warning,
                wal_tally.total()
            )
        }),
    ];
    rows.insert(0, fleet_row);
    Rows {
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        rows,
    }
}
