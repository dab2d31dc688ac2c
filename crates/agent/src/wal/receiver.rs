//! One archive's receiver: the slot on the node, then `pg_receivewal --slot S --no-loop` (the
//! client matching the node's major, started through the launcher in its own process group so
//! it dies with the agent), restarted with backoff; the files it completes are taken into the
//! store every second (`store::take`) and queued for the ledger (`pending`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use pgbackman_core::wal::{SegmentSize, WalFileKind};
use pgbackman_db::wal_agent::AgentWalArchive;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::store::{self, ArchiveDirs, Intake, NodeIdentity};
use crate::job::Ctx;

/// What the receiver is doing, for the state report, the replication sample and /metrics.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub state: String,
    pub error: Option<String>,
    /// Since when the receiver has not been streaming steadily (None: it is). A receiver that
    /// restarts in a loop, or stalls again and again, stays down: only 30 s of one stream clear
    /// it (one episode, one alert).
    pub down_since: Option<DateTime<Utc>>,
    /// Stalls detected since the agent started, and the last one.
    pub stalls: u64,
    pub last_stall_at: Option<DateTime<Utc>>,
    /// When the last WAL file was stored, and the end of the newest full segment stored.
    pub last_stored_at: Option<DateTime<Utc>>,
    pub archived_end: Option<pgbackman_core::wal::Lsn>,
}

pub type Shared = Arc<Mutex<Status>>;

/// States that say why the receiver is down better than the retry that follows them: kept
/// while it restarts (the error says it is retrying).
const STICKY: &[&str] = &["stalled", "no_client"];

fn set(s: &Shared, state: &str, error: Option<String>) {
    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
    if state != "streaming" && g.down_since.is_none() {
        g.down_since = Some(Utc::now());
    }
    g.state = state.to_string();
    g.error = error;
}

/// The receiver is healthy: one stream has lasted 30 s.
fn up(s: &Shared) {
    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
    if g.state == "streaming" {
        g.down_since = None;
    }
}

/// The archive's node as a job connects to it: the agent's pgpass file, `[nodes]` deadlines.
pub fn node_config(ctx: &Ctx, a: &AgentWalArchive) -> anyhow::Result<pgbackman_config::ConnConfig> {
    node_config_of(&ctx.cfg, a)
}

pub fn node_config_of(
    cfg: &pgbackman_config::AgentSection,
    a: &AgentWalArchive,
) -> anyhow::Result<pgbackman_config::ConnConfig> {
    let passfile = cfg.passfile.clone();
    let env = move |k: &str| match (k, &passfile) {
        ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
        _ => std::env::var(k).ok(),
    };
    let port = u16::try_from(a.pgport).map_err(|_| {
        anyhow::anyhow!(
            "port {} of PgSQL node {} is not a port",
            a.pgport,
            a.node_fqdn
        )
    })?;
    let r = pgbackman_config::node_config_with(
        &a.node_fqdn,
        port,
        &a.admin_user,
        &a.admin_dbname,
        &a.sslmode,
        &env,
    )?;
    Ok(cfg.nodes.applied(r.config))
}

pub fn label(a: &AgentWalArchive) -> String {
    format!("{}:{}", a.node_fqdn, a.pgport)
}

/// Runs until `stop`; never returns early (failures are retried with backoff).
pub async fn run(
    ctx: Arc<Ctx>,
    a: AgentWalArchive,
    status: Shared,
    stored: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match once(&ctx, &a, &status, &stored, &stop).await {
            Ok(()) => return,
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!(
                    archive = a.archive_id,
                    "WAL receiver of PgSQL node {} (slot {}): {msg}; restarting in {} s",
                    label(&a),
                    a.slot_name,
                    backoff.as_secs()
                );
                // A version mismatch (WAL_VERSION) and a stall keep their state through the
                // retries, so the catalog can tell them from an ordinary restart.
                let sticky = if e.is::<NoClient>() {
                    Some("no_client".to_string())
                } else {
                    let g = status.lock().unwrap_or_else(|e| e.into_inner());
                    STICKY.contains(&g.state.as_str()).then(|| g.state.clone())
                };
                match sticky {
                    Some(st) => set(
                        &status,
                        &st,
                        Some(format!("{msg}; restarting in {} s", backoff.as_secs())),
                    ),
                    None => set(&status, "restarting", Some(msg)),
                }
            }
        }
        if stop.is_cancelled() {
            return;
        }
        // A receiver that ran for a while starts again at once; one that keeps failing waits
        // longer each time, up to a minute.
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// No pg_receivewal of the node's major or newer on this backup server.
#[derive(Debug)]
struct NoClient {
    node: String,
    server_major: u32,
    available: String,
}

impl std::fmt::Display for NoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.server_major;
        write!(
            f,
            "PgSQL node {} runs PostgreSQL {m} and this backup server has no pg_receivewal of major {m} or newer (client majors: {}); an older pg_receivewal cannot stream from it, so none is started and no slot is created\nHINT: install the client programs of PostgreSQL {m} and add their bin directory to [agent] bin_dirs (or to pgsql_bin_dir with update_backup_server_config)",
            self.node, self.available
        )
    }
}

impl std::error::Error for NoClient {}

/// The pg_receivewal for a node of `server_version_num`: the closest configured major that is
/// not older (pg_receivewal streams from older servers, never from newer ones).
fn client_for(ctx: &Ctx, lbl: &str, server_version_num: i32) -> anyhow::Result<PathBuf> {
    let major = pgbackman_dump::server_major(server_version_num);
    let dirs = ctx.bin_dirs();
    match pgbackman_dump::pick_client(&dirs, major, None) {
        Ok((_, bin_dir)) => Ok(bin_dir.join("pg_receivewal")),
        Err(_) => Err(NoClient {
            node: lbl.to_string(),
            server_major: major,
            available: match dirs.keys().map(u32::to_string).collect::<Vec<_>>() {
                v if v.is_empty() => "none".into(),
                v => v.join(", "),
            },
        }
        .into()),
    }
}

/// One life of pg_receivewal. Ok(()) only when stopped.
async fn once(
    ctx: &Arc<Ctx>,
    a: &AgentWalArchive,
    status: &Shared,
    stored: &Arc<tokio::sync::Notify>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let lbl = label(a);
    set(status, "connecting", None);
    let config = node_config(ctx, a)?;
    // The client first: without a pg_receivewal for the node's major no slot is created (it
    // would hold WAL on the node that nothing receives).
    let settings = tokio::select! {
        r = pgbackman_db::wal_node::wal_settings(config.clone(), &lbl, &a.slot_name) => r?,
        _ = stop.cancelled() => return Ok(()),
    };
    client_for(ctx, &lbl, settings.server_version_num)?;
    let ident = tokio::select! {
        r = pgbackman_db::wal_node::prepare_slot(config.clone(), &lbl, &a.slot_name) => r?,
        _ = stop.cancelled() => return Ok(()),
    };
    if ident.slot_created {
        tracing::info!(
            archive = a.archive_id,
            "created physical replication slot {} on PgSQL node {lbl} (WAL reserved from now on)",
            a.slot_name
        );
    }
    let major = pgbackman_dump::server_major(ident.server_version_num);
    let seg_size =
        SegmentSize::new(ident.seg_size).map_err(|e| anyhow::anyhow!("PgSQL node {lbl}: {e}"))?;
    let node = NodeIdentity {
        node_id: a.pgsql_node_id,
        label: lbl.clone(),
        sysid: ident.system_identifier,
        major,
        seg_size,
    };
    let program = client_for(ctx, &lbl, ident.server_version_num)?;
    let node_dir = crate::roots::node_dir_for_write(&ctx.cfg_now(), &a.node_backup_partition)
        .map_err(anyhow::Error::msg)?;
    let dirs = ArchiveDirs::new(&node_dir, a.pgsql_node_id);
    let incoming = dirs.incoming();
    crate::state::create_dir_0700(&incoming)?;
    // What a previous life completed but did not take (and the segment it kept).
    let mut kept: Option<PathBuf> = None;
    intake(ctx, &dirs, &node, status, stored, &mut kept).await?;
    if ident.slot_created {
        // A new slot holds WAL from now only: what is left in incoming/ (the kept segment, a
        // partial one) would make pg_receivewal ask for older WAL than the slot has.
        let n = store::clear_incoming(&dirs)?;
        kept = None;
        if n > 0 {
            tracing::info!(
                archive = a.archive_id,
                "removed {n} file(s) left in {} by a previous slot",
                incoming.display()
            );
        }
    }

    let mut args: Vec<String> = vec![
        format!("--directory={}", incoming.display()),
        format!("--slot={}", a.slot_name),
        "--no-loop".into(),
        "--verbose".into(),
        format!("--host={}", a.node_fqdn),
        format!("--port={}", a.pgport),
        format!("--username={}", a.admin_user),
        "--no-password".into(),
    ];
    if !a.node_fqdn.starts_with('/') {
        // A node that stops answering must end the stream, not freeze it: TCP keepalives.
        let t = &ctx.cfg.nodes;
        args.push(format!(
            "--dbname=keepalives=1 keepalives_idle={} keepalives_interval={} keepalives_count={}",
            t.keepalives_idle.as_secs().max(1),
            t.keepalives_interval.as_secs().max(1),
            t.keepalives_count.max(1)
        ));
    }
    if a.synchronous {
        args.push("--synchronous".into());
    }
    let mut c = pgbackman_dump::child_command(&program);
    c.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for k in pgbackman_dump::ENV_REMOVED {
        c.env_remove(k);
    }
    c.env("PGAPPNAME", "pgbackman_walreceiver").env(
        "PGCONNECT_TIMEOUT",
        ctx.cfg.nodes.connect.after.as_secs().max(1).to_string(),
    );
    if !a.sslmode.is_empty() {
        c.env("PGSSLMODE", &a.sslmode);
    }
    if let Some(p) = &ctx.cfg.passfile {
        c.env("PGPASSFILE", p);
    }
    let mut child = c
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
    let pgid = child
        .id()
        .and_then(|i| i32::try_from(i).ok())
        .map(Pid::from_raw);
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        let id = a.archive_id;
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(archive = id, "pg_receivewal: {l}");
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == 5 {
                    t.pop_front();
                }
                t.push_back(l);
            }
        });
    }
    tracing::info!(
        archive = a.archive_id,
        "WAL receiver of PgSQL node {lbl} started: {} (system identifier {}, PostgreSQL {major}) into {}",
        program.display(),
        node.sysid,
        incoming.display()
    );
    set(status, "streaming", None);
    let streaming_from = Instant::now();
    let mut watch = super::stall::Watch::new(&ctx.cfg.nodes, seg_size);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let exit = loop {
        tokio::select! {
            r = child.wait() => break r,
            _ = tick.tick() => {
                if let Err(e) = intake(ctx, &dirs, &node, status, stored, &mut kept).await {
                    tracing::error!(archive = a.archive_id, "WAL intake of PgSQL node {lbl}: {e:#}");
                    set(status, "streaming", Some(format!("{e:#}")));
                }
                if streaming_from.elapsed() > Duration::from_secs(30) {
                    up(status);
                }
                // pg_receivewal has no receive timeout: a node that stops answering (SIGSTOP,
                // a stalled network path) would freeze it for ever, the slot holding WAL.
                if let Some(why) = watch.check(ctx, a, &incoming).await {
                    if let Some(g) = pgid { let _ = killpg(g, Signal::SIGKILL); }
                    let _ = child.wait().await;
                    // down_since first: the stall is at or after it (the catalog compares).
                    set(status, "stalled", Some(why.clone()));
                    {
                        let mut g = status.lock().unwrap_or_else(|e| e.into_inner());
                        g.stalls += 1;
                        g.last_stall_at = Some(Utc::now());
                    }
                    let _ = intake(ctx, &dirs, &node, status, stored, &mut kept).await;
                    anyhow::bail!("stalled: {why}; pg_receivewal stopped");
                }
            }
            _ = stop.cancelled() => {
                // SIGTERM lets pg_receivewal flush and exit; SIGKILL after a grace period.
                if let Some(g) = pgid { let _ = killpg(g, Signal::SIGTERM); }
                let t = Instant::now();
                let killed = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err();
                if killed {
                    if let Some(g) = pgid { let _ = killpg(g, Signal::SIGKILL); }
                    let _ = child.wait().await;
                }
                let _ = intake(ctx, &dirs, &node, status, stored, &mut kept).await;
                set(status, "stopped", None);
                tracing::info!(
                    archive = a.archive_id,
                    "WAL receiver of PgSQL node {lbl} stopped ({} after {} ms)",
                    if killed { "killed" } else { "exited" },
                    t.elapsed().as_millis()
                );
                return Ok(());
            }
        }
    };
    // The last completed segment may have arrived just before the exit.
    intake(ctx, &dirs, &node, status, stored, &mut kept).await?;
    let why = tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(" | ");
    match exit {
        Ok(s) => anyhow::bail!("pg_receivewal ended ({s}): {why}"),
        Err(e) => anyhow::bail!("waiting for pg_receivewal: {e}"),
    }
}

/// WAL files stored at once by one receiver.
const INTAKE_AT_ONCE: usize = 4;

/// Takes every completed file of the incoming directory, in name order. The newest stored
/// segment stays in `incoming/` (`kept`) until a newer one is stored: pg_receivewal starts
/// after the newest segment it finds there, which before PostgreSQL 15 (no
/// READ_REPLICATION_SLOT) is the only way a restarted receiver resumes where the archive ends
/// rather than at the node's current position.
async fn intake(
    ctx: &Ctx,
    dirs: &ArchiveDirs,
    node: &NodeIdentity,
    status: &Shared,
    stored: &Arc<tokio::sync::Notify>,
    kept: &mut Option<PathBuf>,
) -> anyhow::Result<()> {
    let files: Vec<_> = store::completed(dirs, node)
        .into_iter()
        .filter(|(_, p)| kept.as_ref() != Some(p))
        .collect();
    // Up to INTAKE_AT_ONCE files are stored at once, so that their fsyncs overlap: on a busy
    // backup server the waits for the disk, not the CPU, set the pace (bench/wal-intake.sh).
    // The results are then handled in name order, as one at a time would.
    for chunk in files.chunks(INTAKE_AT_ONCE) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|(name, path)| {
                let (d, n, s, p, name) = (
                    dirs.clone(),
                    node.clone(),
                    ctx.cfg.state_dir.clone(),
                    path.clone(),
                    *name,
                );
                tokio::task::spawn_blocking(move || -> anyhow::Result<Intake> {
                    let r = store::take(&d, &n, &name, &p)?;
                    if let Intake::Stored(o) = &r {
                        // The report is durable before the incoming file goes (below).
                        super::pending::add(&s, o)?;
                    }
                    Ok(r)
                })
            })
            .collect();
        for ((name, path), task) in chunk.iter().zip(tasks) {
            match task.await?? {
                Intake::Stored(o) => {
                    let keep = matches!(name.kind, WalFileKind::Segment { .. });
                    let gone = if keep {
                        kept.replace(path.clone())
                    } else {
                        Some(path.clone())
                    };
                    if let Some(g) = gone {
                        tokio::task::spawn_blocking(move || store::remove_incoming(&g)).await??;
                    }
                    let name = o
                        .stored_path
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .trim_end_matches(".zst")
                        .to_string();
                    tracing::debug!("stored WAL file {name} of PgSQL node {}", node.label);
                    {
                        let mut g = status.lock().unwrap_or_else(|e| e.into_inner());
                        g.last_stored_at = Some(Utc::now());
                        if o.kind == "full"
                            && let Some(end) = o.end_lsn.as_deref().and_then(|l| l.parse().ok())
                        {
                            g.archived_end = g.archived_end.max(Some(end));
                        }
                    }
                    stored.notify_one();
                }
                Intake::Skipped => {}
                Intake::Refused(why) => {
                    tracing::error!("WAL file of PgSQL node {} refused: {why}", node.label);
                    set(status, "streaming", Some(why));
                }
            }
        }
    }
    Ok(())
}
