//! `pgbackman serve-metrics`: the fleet's metrics from the catalog, for Prometheus.
//!
//! One process reads the catalog (not each agent): the definitions to alert on are exactly
//! those whose agent is dead or cut off, and only a reader beside the catalog still reports
//! them; one reader also costs the catalog one query set per interval instead of one per agent.
//! The agents' own `/metrics` stay about each agent (its catalog link, spool, running jobs).
//!
//! A task reads the catalog every `--refresh-seconds` under a deadline and renders the text;
//! a scrape is served from that text, so `/metrics` never waits on the catalog. While the
//! catalog does not answer, the last good figures are served with `pgbackman_catalog_up 0` and
//! the time of the last good read, so a rule can tell stale figures from fresh ones.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use pgbackman_config::FileConfig;
use pgbackman_core::monitoring::Exposition;
use pgbackman_db::Catalog;
use pgbackman_db::monitoring::FleetSnapshot;
use tokio::net::TcpListener;

use crate::monitor::{Judged, judge_all, zone};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address of the HTTP listener (GET /metrics). Keep it on loopback unless a firewall or a
    /// TLS proxy stands in front: the metrics name every node and database.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9188")]
    pub listen: String,
    /// Seconds between two reads of the catalog.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub refresh_seconds: u64,
    /// Deadline of one read of the catalog (connect, queries, answer).
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_seconds: u64,
    /// Minutes a job may wait in the queue before its definition counts as WARNING.
    #[arg(long, value_name = "MINUTES", default_value_t = 15)]
    pub queue_warning: u64,
}

/// A line on stderr (the journal under systemd). Never panics: a closed stderr must not stop
/// the reader (`eprintln!` would).
fn log(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "serve-metrics: {line}");
}

/// What a scrape is served from.
#[derive(Default)]
struct Cache {
    /// The fleet's figures of the last good read.
    fleet: String,
    up: bool,
    last_ok: Option<DateTime<Utc>>,
    last_read_seconds: f64,
    failures: u64,
}

fn lock(c: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn run(args: &Args, flag: Option<&str>, file: &FileConfig) -> Result<ExitCode> {
    let addr: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen \"{}\" is not an address such as 127.0.0.1:9188",
            args.listen
        )
    })?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "[WARNING] serve-metrics listens on {addr}, not on loopback: whoever reaches it reads the names of every node and database; put a firewall or a TLS proxy in front"
        );
    }
    let (cfg, target, _) = crate::catalog_target(flag, file)?;
    let timeout = Duration::from_secs(args.timeout_seconds);
    let catalog = Catalog::lazy_with_deadline(cfg, "pgbackman-metrics", &target, timeout)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    log(&format!(
        "http://{}/metrics, catalog {target}, read every {} s",
        listener.local_addr().unwrap_or(addr),
        args.refresh_seconds
    ));
    let cache = Arc::new(Mutex::new(Cache::default()));
    let refresher = tokio::spawn(refresh_loop(
        catalog,
        target,
        cache.clone(),
        Duration::from_secs(args.refresh_seconds),
        Duration::from_secs(60 * args.queue_warning),
    ));
    let server = tokio::spawn(serve(listener, cache));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    refresher.abort();
    server.abort();
    Ok(ExitCode::SUCCESS)
}

async fn refresh_loop(
    catalog: Catalog,
    target: String,
    cache: Arc<Mutex<Cache>>,
    every: Duration,
    stuck_after: Duration,
) {
    let tz = zone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let read = catalog
            .within("serve-metrics", async {
                catalog.check_compatible().await?;
                catalog.fleet_snapshot().await
            })
            .await;
        let mut c = lock(&cache);
        c.last_read_seconds = started.elapsed().as_secs_f64();
        match read {
            Ok(snap) => {
                if !c.up && c.failures > 0 {
                    log(&format!("catalog {target} answers again"));
                }
                c.fleet = fleet_metrics(&snap, &judge_all(&snap, &tz, stuck_after));
                c.up = true;
                c.last_ok = Some(Utc::now());
            }
            Err(e) => {
                if c.up || c.failures == 0 {
                    let msg = e.to_string();
                    let msg = pgbackman_core::text::bound_words(&msg);
                    log(&format!(
                        "catalog {target} not read: {}; serving the last good figures with pgbackman_catalog_up 0",
                        crate::render::safe(&msg)
                    ));
                }
                c.up = false;
                c.failures += 1;
            }
        }
    }
}

/// The text of a scrape: the reader's own state, then the fleet's last good figures.
fn scrape(c: &Cache) -> String {
    let mut e = Exposition::new();
    e.family(
        "pgbackman_catalog_up",
        "gauge",
        "1 when the last read of the catalog succeeded; 0: the figures below are those of the last good read.",
    );
    e.sample("pgbackman_catalog_up", &[], f64::from(u8::from(c.up)));
    e.family(
        "pgbackman_catalog_last_read_timestamp_seconds",
        "gauge",
        "Unix time of the last good read of the catalog.",
    );
    if let Some(t) = c.last_ok {
        e.sample(
            "pgbackman_catalog_last_read_timestamp_seconds",
            &[],
            t.timestamp() as f64,
        );
    }
    e.family(
        "pgbackman_catalog_read_duration_seconds",
        "gauge",
        "How long the last read of the catalog took.",
    );
    e.sample(
        "pgbackman_catalog_read_duration_seconds",
        &[],
        c.last_read_seconds,
    );
    e.family(
        "pgbackman_catalog_read_failures_total",
        "counter",
        "Reads of the catalog that failed or passed the deadline.",
    );
    e.sample(
        "pgbackman_catalog_read_failures_total",
        &[],
        c.failures as f64,
    );
    let mut out = e.finish();
    out.push_str(&c.fleet);
    out
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1000.0
}

/// One gauge per definition: `value` None leaves the definition out (no sample, as
/// Prometheus expects for "never").
fn per_definition(
    e: &mut Exposition,
    judged: &[Judged<'_>],
    name: &str,
    help: &str,
    value: impl Fn(&Judged<'_>) -> Option<f64>,
) {
    e.family(name, "gauge", help);
    for j in judged {
        if let Some(v) = value(j) {
            let d = j.def;
            let id = d.def_id.to_string();
            e.sample(
                name,
                &[
                    ("def_id", &id),
                    ("server", &d.server_fqdn),
                    ("node", &d.node_fqdn),
                    ("dbname", &d.dbname),
                    ("code", &d.backup_code),
                ],
                v,
            );
        }
    }
}

/// The fleet's figures of one snapshot.
pub fn fleet_metrics(snap: &FleetSnapshot, judged: &[Judged<'_>]) -> String {
    let mut e = Exposition::new();
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_last_success_timestamp_seconds",
        "Unix time the newest successful backup of the definition finished.",
        |j| j.def.last_success.map(ts),
    );
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_last_verified_timestamp_seconds",
        "Unix time a backup set of the definition last passed a verification.",
        |j| j.def.last_verified.map(ts),
    );
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_expected_next_run_timestamp_seconds",
        "Unix time of the next scheduled run (ACTIVE definitions of RUNNING nodes).",
        |j| j.judgement.next_run.map(ts),
    );
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_last_duration_seconds",
        "Duration of the newest successful backup.",
        |j| j.def.last_success_duration,
    );
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_last_size_bytes",
        "Size on disk of the newest successful backup set.",
        |j| j.def.last_success_size.map(|s| s as f64),
    );
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_last_run_failed",
        "1 when the newest backup of the definition failed (ERROR), else 0.",
        |j| {
            Some(f64::from(u8::from(
                j.def.last_status.as_deref() == Some("ERROR"),
            )))
        },
    );
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_overdue",
        "1 when a scheduled run is past the node's overdue_grace_period without a success.",
        |j| Some(f64::from(u8::from(j.judgement.overdue_since.is_some()))),
    );
    per_definition(
        &mut e,
        judged,
        "pgbackman_definition_status",
        "Verdict of show_pgbackman_status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        |j| Some(f64::from(j.judgement.verdict.nagios_code())),
    );

    e.family(
        "pgbackman_jobs",
        "gauge",
        "Open jobs per backup server, kind and state (QUEUED, RUNNING).",
    );
    for s in &snap.servers {
        for state in ["QUEUED", "RUNNING"] {
            for kind in ["BACKUP", "SNAPSHOT", "RESTORE", "VERIFY", "DRILL"] {
                let n: i64 = snap
                    .queue
                    .iter()
                    .filter(|q| q.server_id == s.server_id && q.state == state && q.kind == kind)
                    .map(|q| q.jobs)
                    .sum();
                e.sample(
                    "pgbackman_jobs",
                    &[("server", &s.server_fqdn), ("kind", kind), ("state", state)],
                    n as f64,
                );
            }
        }
    }

    e.family(
        "pgbackman_backup_server_running",
        "gauge",
        "1 when the backup server's status in the catalog is RUNNING.",
    );
    for s in &snap.servers {
        e.sample(
            "pgbackman_backup_server_running",
            &[("server", &s.server_fqdn)],
            f64::from(u8::from(s.status == "RUNNING")),
        );
    }
    e.family(
        "pgbackman_agent_last_report_timestamp_seconds",
        "gauge",
        "Unix time the server's agent was last heard of in the catalog: its newest backup report or job heartbeat.",
    );
    for s in &snap.servers {
        if let Some(t) = s.last_report {
            e.sample(
                "pgbackman_agent_last_report_timestamp_seconds",
                &[("server", &s.server_fqdn)],
                ts(t),
            );
        }
    }

    e.family(
        "pgbackman_agent_last_seen_timestamp_seconds",
        "gauge",
        "Unix time of the agent's last heartbeat in the catalog.",
    );
    for s in &snap.servers {
        if let Some(t) = s.last_seen {
            e.sample(
                "pgbackman_agent_last_seen_timestamp_seconds",
                &[("server", &s.server_fqdn)],
                ts(t),
            );
        }
    }
    e.family(
        "pgbackman_agent_state",
        "gauge",
        "1 for the agent's state: online, degraded (as it reports itself), offline (no heartbeat for the server's agent_not_seen_threshold), never seen.",
    );
    for s in &snap.servers {
        if let Some(st) = &s.agent_state {
            for state in ["online", "degraded", "offline", "never seen"] {
                e.sample(
                    "pgbackman_agent_state",
                    &[("server", &s.server_fqdn), ("state", state)],
                    f64::from(u8::from(st == state)),
                );
            }
        }
    }

    e.family(
        "pgbackman_alerts",
        "gauge",
        "Alerts in the catalog per state (QUEUED, SENT, FAILED, EXPIRED) and type.",
    );
    for a in &snap.alerts {
        e.sample(
            "pgbackman_alerts",
            &[("state", &a.state), ("type", &a.alert_type)],
            a.alerts as f64,
        );
    }
    wal_metrics(&mut e, snap);
    e.finish()
}

/// Per ACTIVE WAL archive (node and backup server): the recoverable window, holes, lag and the
/// open WAL alerts (sql/87_wal_monitor.sql, `api.monitoring_wal`).
fn wal_metrics(e: &mut Exposition, snap: &FleetSnapshot) {
    type Get = fn(&pgbackman_db::monitoring::WalHealth) -> Option<f64>;
    let series: [(&str, &str, Get); 8] = [
        (
            "pgbackman_wal_recoverable_from_timestamp_seconds",
            "Arrival time (Unix) of the first segment of the newest window the archive replays without a gap.",
            |w| w.window_from.map(ts),
        ),
        (
            "pgbackman_wal_recoverable_to_timestamp_seconds",
            "Arrival time (Unix) of the last segment of that window: the newest point restorable.",
            |w| w.window_to.map(ts),
        ),
        (
            "pgbackman_wal_recoverable_from_lsn",
            "Start of that window as a WAL byte position.",
            |w| w.window_from_lsn,
        ),
        (
            "pgbackman_wal_recoverable_to_lsn",
            "End of that window as a WAL byte position.",
            |w| w.window_to_lsn,
        ),
        (
            "pgbackman_wal_holes",
            "Holes (missing segments between archived ones) in the archive's ledger.",
            |w| Some(w.holes as f64),
        ),
        (
            "pgbackman_wal_lag_bytes",
            "The node's WAL position minus the end of the archive, as the agent last reported.",
            |w| w.lag_bytes,
        ),
        (
            "pgbackman_wal_last_segment_timestamp_seconds",
            "Arrival time (Unix) of the newest archived segment.",
            |w| w.last_arrived.map(ts),
        ),
        (
            "pgbackman_wal_open_alerts",
            "Open WAL conditions of the archive (alerted, not cleared yet).",
            |w| Some(w.open_codes.len() as f64),
        ),
    ];
    for (name, help, get) in series {
        e.family(name, "gauge", help);
        for w in &snap.wal {
            if let Some(v) = get(w) {
                e.sample(
                    name,
                    &[("node", &w.node_fqdn), ("server", &w.server_fqdn)],
                    v,
                );
            }
        }
    }
}

/// Answers GET /metrics (and nothing else) from the cache.
async fn serve(listener: TcpListener, cache: Arc<Mutex<Cache>>) {
    pgbackman_http::serve(listener, move |path| match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(&lock(&cache)),
        ),
        _ => ("404 Not Found", "text/plain", "try /metrics\n".into()),
    })
    .await
}
