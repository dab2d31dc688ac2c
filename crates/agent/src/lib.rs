//! `pgbackman-agent`: runs on every backup server. It caches its definitions, fires scheduled
//! backups, claims ad hoc jobs, runs them through pgbackman-dump and records every result.
//! A daemon: it logs through tracing and never prints to stdout (except `--check`'s report).
#![deny(clippy::print_stdout)]

pub mod alerts;
pub mod basebackup_job;
pub mod check;
pub mod clone_job;
pub mod clone_lifecycle;
pub mod copy;
pub mod effective;
pub mod health;
pub mod heartbeat;
pub mod job;
pub mod listen;
pub mod mail;
pub mod maintenance;
pub mod physical_drill;
pub mod reconcile;
pub mod recover;
pub mod replay;
pub mod repository;
pub mod restore_cluster;
pub mod restore_job;
pub mod retention;
pub mod roots;
pub mod schedule;
pub mod spool;
pub mod standby;
pub mod state;
pub mod verify_job;
pub mod wal;
pub mod wal_reconcile;
pub mod wal_retention;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use chrono_tz::Tz;
use clap::Parser;
use pgbackman_config::AgentSection;
use pgbackman_db::Catalog;
use pgbackman_db::agent::AgentDefinition;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::job::{Ctx, Done, Ticket};
use crate::schedule::Scheduler;

#[derive(Parser, Debug)]
#[command(
    name = "pgbackman-agent",
    version,
    about = "pgbackman backup agent: runs the backups of this backup server",
    long_about = "Runs scheduled and ad hoc backups of the definitions owned by this backup server and records \
        every run in the pgbackman catalog. One agent per state directory; SIGTERM stops it cleanly \
        (running jobs are cancelled and recorded as CANCELLED). When the catalog is unreachable it keeps \
        running the schedules from its cached definitions and spools every result in <state_dir>/spool \
        until the catalog is back (see /healthz on [agent] http_listen). It also runs maintenance \
        (retention, quarantine, forced deletions) and mails alerts. Settings: the [agent] section of the \
        configuration file; the catalog is found as by the shell (--catalog, PGBACKMAN_CATALOG, [catalog]).",
    after_help = "Examples:\n  pgbackman-agent --config /etc/pgbackman/pgbackman-agent.toml --check\n  pgbackman-agent --config /etc/pgbackman/pgbackman-agent.toml"
)]
struct Args {
    /// Configuration file (default: /etc/pgbackman/pgbackman-agent.toml, then the shell's
    /// ~/.config/pgbackman/pgbackman.toml and /etc/pgbackman/pgbackman.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Catalog connection (libpq key=value or URI); overrides the configuration.
    #[arg(long, value_name = "CONNINFO")]
    catalog: Option<String>,
    /// Check configuration, directories, TLS and password files, client programs, catalog
    /// access and registration, SMTP, then exit. ERROR lines (exit 1) are what stops the agent
    /// from starting; a catalog or SMTP server that is down or slow is a WARN (exit 0): the
    /// agent starts from its cache. The systemd unit runs it before every start.
    #[arg(long)]
    check: bool,
    /// With --check: count warnings as failures (exit 1 when the catalog or the SMTP server does
    /// not answer, too): the full check, for an installation or a monitoring probe.
    #[arg(long, requires = "check")]
    strict: bool,
    /// With --check, run as root: check the directories for this user (the one the service runs
    /// as, e.g. pgbackman) and create missing ones owned by it. Without it, --check as root
    /// creates nothing.
    #[arg(long, value_name = "USER", requires = "check")]
    user: Option<String>,
    /// Run the ad hoc jobs that are due now (run-now, snapshots), wait for them, and exit.
    /// No schedule fires. For a first backup, or for running the agent from cron.
    #[arg(long)]
    once: bool,
    /// Run one maintenance pass (retention, forced deletions, quarantine, autoregister), then exit.
    #[arg(long, conflicts_with = "once")]
    maintenance: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    WalPush(wal::push::client::WalPushArgs),
    WalGet(wal::get::WalGetArgs),
    RestoreCluster(restore_cluster::RestoreClusterArgs),
}

/// The clap definition of `pgbackman-agent` (man page and completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn main_entry() -> ExitCode {
    // The agent's own executable doubles as the launcher of its children (see
    // pgbackman_dump::launcher_main): nothing else runs in that mode.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == pgbackman_dump::LAUNCHER_ARG)
    {
        return pgbackman_dump::launcher_main(&argv[2..]);
    }
    let args = Args::parse();
    if let Some(Sub::WalPush(a)) = &args.command {
        return wal::push::client::main(a);
    }
    if let Some(Sub::WalGet(a)) = &args.command {
        return wal::get::main(a);
    }
    if let Some(Sub::RestoreCluster(a)) = &args.command {
        return restore_cluster::main(a);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGBACKMAN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(run(args));
    // Tasks still waiting on a frozen catalog (maintenance, alerts) never delay the exit.
    rt.shutdown_timeout(Duration::from_secs(2));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let t = c.to_string();
                if !msg.contains(&t) {
                    msg = format!("{msg}: {t}");
                }
            }
            tracing::error!("{msg}");
            let _ = writeln!(std::io::stderr(), "[ERROR] {msg}");
            ExitCode::FAILURE
        }
    }
}

struct Setup {
    cfg: AgentSection,
    /// The configuration file read (None: none found, all defaults).
    config_path: Option<PathBuf>,
    fqdn: String,
    tz: Tz,
    catalog_cfg: pgbackman_config::ConnConfig,
    target: String,
}

fn setup(args: &Args) -> Result<Setup> {
    let file = pgbackman_config::load_agent(args.config.as_deref())?;
    let cfg = file.agent_section()?;
    let (conninfo, _) = pgbackman_config::catalog_conninfo(
        args.catalog.as_deref(),
        std::env::var("PGBACKMAN_CATALOG").ok(),
        &file,
    )?;
    let catalog_cfg =
        pgbackman_config::resolve_env(&conninfo).context("the catalog connection string")?;
    let target = pgbackman_config::redacted(&catalog_cfg);
    let fqdn = cfg
        .backup_server
        .clone()
        .unwrap_or_else(pgbackman_config::host_fqdn);
    let tz_name = cfg
        .time_zone
        .clone()
        .or_else(|| std::env::var("TZ").ok().filter(|t| !t.trim().is_empty()))
        .or_else(heartbeat::localtime_zone)
        .unwrap_or_else(|| "UTC".into());
    let tz: Tz = tz_name.trim_start_matches(':').parse().map_err(|_| {
        anyhow::anyhow!(
            "time zone \"{tz_name}\" is not an IANA time zone name such as Europe/Oslo or UTC"
        )
    })?;
    Ok(Setup {
        cfg,
        config_path: file.path.clone(),
        fqdn,
        tz,
        catalog_cfg,
        target,
    })
}

async fn run(args: Args) -> Result<()> {
    let s = setup(&args)?;
    if args.check {
        let user = args
            .user
            .as_deref()
            .map(check::ServiceUser::lookup)
            .transpose()?;
        return check::run(&s, args.strict, user.as_ref()).await;
    }
    // Signal handlers first: a SIGTERM at any point from here on is a clean stop, never the
    // default death that would orphan pg_dump children.
    let stop = shutdown_token()?;
    let _lock = state::lock(&s.cfg.state_dir)?;
    // The backup root and limits as last read from the catalog (or the file's, or the
    // defaults): the agent starts without the catalog; refreshed once it answers.
    let live = effective::resolve(&s.cfg, effective::load_cache(&s.cfg.state_dir).as_ref())
        .map_err(anyhow::Error::msg)?;
    effective::prepare_backup_dir(&live.backup_dir)?;
    let staging = live.backup_dir.join("staging");
    match pgbackman_dump::clean_staging(&staging) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            "removed {n} unfinished backup set(s) left in {} by an interrupted run",
            staging.display()
        ),
        Err(e) => tracing::warn!("cleaning {}: {e}", staging.display()),
    }
    if let Ok(exe) = std::env::current_exe() {
        pgbackman_dump::set_launcher(exe);
    }
    clone_job::set_config_path(s.config_path.clone());
    // Jobs a previous run was in the middle of when it died: a set that was complete is
    // recorded as what it is, anything else as failed (via the spool; crate::recover).
    recover::interrupted(&AgentSection {
        backup_dir: live.backup_dir.clone(),
        ..s.cfg.clone()
    });
    // WAL replay a killed run left paused on standby nodes (needs no catalog).
    standby::resume_left(&s.cfg).await;
    let catalog = Catalog::lazy_with_deadline(
        s.catalog_cfg.clone(),
        "pgbackman-agent",
        &s.target,
        s.cfg.catalog_timeout(),
    )?;
    let health = health::Health::new(true);
    // Bounded like every call: a slow or frozen catalog costs the start catalog_timeout_seconds,
    // then the agent runs from its cache.
    let first = tokio::select! {
        r = catalog.within("probe", probe(&catalog, &s.fqdn)) => r,
        _ = stop.cancelled() => bail!("stopped before the catalog answered"),
    };
    let server_id = match first {
        Ok(id) => id,
        Err(e) if e.is_unreachable() => {
            // The daemon runs from its cache; `--once` and `--maintenance` need the catalog
            // (claims, deletions) and wait for it.
            let cache = if args.once || args.maintenance {
                None
            } else {
                state::load_cache(&s.cfg.state_dir).ok().flatten()
            };
            match cache {
                Some(c) => {
                    health.call_failed("probe", &e);
                    *health
                        .cache_written_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(c.written_at);
                    c.server_id
                }
                // Without a cache there is nothing to run: wait for the catalog.
                None => wait_for_catalog(&catalog, &s.fqdn, &stop).await?,
            }
        }
        Err(e) => return Err(e.into()),
    };
    let agent_name = format!("{}:{}", s.fqdn, s.cfg.state_dir.display());
    let ctx = Arc::new(Ctx {
        catalog,
        cfg: s.cfg.clone(),
        live: std::sync::RwLock::new(live),
        agent_name,
        server_id,
        health,
        spool_lock: tokio::sync::Mutex::new(()),
        pauses: standby::Pauses::default(),
    });
    if ctx.health.is_online() {
        effective::refresh(&ctx).await;
    }
    if ctx.bin_dirs().is_empty() {
        bail!(
            "no PostgreSQL client programs found\nHINT: install postgresql-client-<major>, set pgsql_bin_dir with update_backup_server_config, or set [agent] bin_dirs"
        );
    }
    ctx.health.spooled.store(
        spool::list(&s.cfg.state_dir).map(|l| l.len()).unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    ctx.health.rejected.store(
        spool::rejected_count(&s.cfg.state_dir),
        std::sync::atomic::Ordering::Relaxed,
    );
    if !s.cfg.http_listen.is_empty() {
        if let Some(w) = pgbackman_config::http_listen_exposure(&s.cfg.http_listen) {
            tracing::warn!("{w}");
        }
        match tokio::net::TcpListener::bind(&s.cfg.http_listen).await {
            Ok(l) => {
                if let Ok(a) = l.local_addr() {
                    tracing::info!("serving /healthz and /metrics on http://{a}");
                }
                tokio::spawn(health::serve(l, ctx.clone()));
            }
            Err(e) => tracing::error!(
                "cannot serve /healthz on {}: {e} (set [agent] http_listen, or \"\" to turn it off)",
                s.cfg.http_listen
            ),
        }
    }
    // Before anything records interrupted jobs as failed: a restore cut short is undone first,
    // and its report says what was undone.
    restore_job::recover_interrupted(&ctx).await;
    clone_job::recover_interrupted(&ctx).await;
    physical_drill::recover_interrupted(&ctx);
    clone_lifecycle::on_start(&ctx).await;
    if ctx.health.is_online() {
        replay::replay(&ctx).await;
        fail_interrupted_jobs(&ctx, &[]).await;
    }
    tracing::info!(
        server = %s.fqdn,
        server_id,
        tz = %s.tz,
        backup_dir = %ctx.backup_dir().display(),
        max_jobs = ctx.max_jobs(),
        "pgbackman-agent started"
    );
    if args.maintenance {
        return maintenance::pass(&ctx, &stop).await;
    }
    if args.once {
        return Runner::new(ctx, s.tz, stop, s.fqdn).run_once().await;
    }
    let _maintenance = maintenance::spawn(ctx.clone(), stop.clone());
    let _heartbeat = heartbeat::spawn(ctx.clone(), s.tz, stop.clone());
    let _alerts = alerts::spawn(ctx.clone(), s.tz, &s.fqdn, stop.clone())?;
    let wal = wal::spawn(ctx.clone(), stop.clone());
    wal::push::server::start(&ctx, &stop).await;
    let r = Runner::new(ctx, s.tz, stop, s.fqdn).run().await;
    // The WAL receivers stop their pg_receivewal (SIGTERM, then SIGKILL) before the agent ends.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(12), wal).await;
    r
}

/// Without a cache there is nothing to run: probes the catalog (each probe bounded, at most
/// 2 s apart) until it answers or the agent is stopped.
async fn wait_for_catalog(catalog: &Catalog, fqdn: &str, stop: &CancellationToken) -> Result<i64> {
    let mut delay = Duration::from_millis(500);
    loop {
        match catalog.within("probe", probe(catalog, fqdn)).await {
            Ok(id) => return Ok(id),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(
                    "catalog unreachable and no definition cache: {e}; retrying in {}",
                    pgbackman_core::duration::human(delay)
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => bail!("stopped before the catalog could be reached"),
                }
                delay = (delay * 2).min(PROBE_CAP);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The longest wait between two probes of an unreachable catalog: results reach the catalog
/// within a few seconds of it answering again.
const PROBE_CAP: Duration = Duration::from_secs(2);

/// The catalog's answer to "who am I": its version matches ours and this host is a RUNNING
/// backup server.
async fn probe(catalog: &Catalog, fqdn: &str) -> Result<i64, pgbackman_db::DbError> {
    catalog.check_compatible().await?;
    catalog.agent_probe(fqdn).await
}

/// Jobs this agent was running when it died: recorded as failed, the next fire runs normally.
/// (Jobs with a marker were already spooled as failed at start; this catches a death between a
/// claim and the marker.) A job whose result waits in the spool, or that runs now, is not
/// interrupted: that includes a fire whose recording timed out here but committed on the
/// catalog (its row is claimed by this agent; it runs, or ran, offline under its definition and
/// instant, and the replay completes that row).
/// `running`: the job ids this process runs now.
async fn fail_interrupted_jobs(ctx: &Ctx, running: &[i64]) {
    let jobs = match ctx
        .db(
            "jobs_claimed_by",
            ctx.catalog.jobs_claimed_by(ctx.server_id, &ctx.agent_name),
        )
        .await
    {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!("could not look for interrupted jobs: {e}");
            return;
        }
    };
    let mut known = spool::spooled_keys(&ctx.cfg.state_dir);
    known.extend(spool::running_keys(&ctx.cfg.state_dir));
    for j in jobs {
        let (job_id, attempt) = (j.job_id, j.attempt);
        let scheduled = match (j.def_id, j.scheduled_for) {
            (Some(def_id), Some(scheduled_for)) => Some(spool::Key::Scheduled {
                def_id,
                scheduled_for,
            }),
            _ => None,
        };
        if running.contains(&job_id)
            || known.contains(&spool::Key::Job { job_id, attempt })
            || scheduled.is_some_and(|k| known.contains(&k))
        {
            continue;
        }
        let now = Utc::now().to_rfc3339();
        let r = serde_json::json!({"execution_status": "ERROR", "started": now, "finished": now,
            "error_step": "agent", "error_message": "agent stopped during the run"});
        match ctx
            .db(
                "report_backup",
                ctx.catalog.report_backup(job_id, attempt, &r),
            )
            .await
        {
            Ok(_) => tracing::warn!(
                job_id,
                "job interrupted by an agent stop recorded as failed"
            ),
            Err(e) => {
                tracing::warn!(job_id, "could not record the interrupted job: {e}");
                if e.is_unreachable() {
                    return;
                }
            }
        }
    }
}

/// A token cancelled by SIGTERM or SIGINT; the handlers are installed before it returns.
fn shutdown_token() -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        t.cancel();
    });
    Ok(token)
}

struct Runner {
    ctx: Arc<Ctx>,
    sched: Scheduler,
    defs: HashMap<i64, AgentDefinition>,
    jobs: JoinSet<Done>,
    running: HashMap<i64, (i64, CancellationToken)>,
    /// Job id of each task, so a task that panics still frees its slot.
    tasks: HashMap<tokio::task::Id, i64>,
    /// Scheduled fires waiting for a free slot (concurrency limits): the newest instant of
    /// each definition only, so a long wait never queues up a backlog.
    pending: BTreeMap<i64, chrono::DateTime<Utc>>,
    /// Parent of every job's token: cancelled at shutdown.
    stop: CancellationToken,
    /// SIGTERM / SIGINT.
    signal: CancellationToken,
    fqdn: String,
    /// While offline: when to try the catalog next, and the backoff.
    next_probe: tokio::time::Instant,
    probe_delay: Duration,
    /// The probe in flight: a task of its own, so a frozen catalog never holds the loop.
    probing: Option<tokio::task::JoinHandle<Result<i64, pgbackman_db::DbError>>>,
    /// Last local id given to a fire run offline (negative, decreasing).
    last_local_id: i64,
}

impl Runner {
    fn new(ctx: Arc<Ctx>, tz: Tz, signal: CancellationToken, fqdn: String) -> Runner {
        Runner {
            ctx,
            sched: Scheduler::new(tz, Utc::now()),
            defs: HashMap::new(),
            jobs: JoinSet::new(),
            running: HashMap::new(),
            tasks: HashMap::new(),
            pending: BTreeMap::new(),
            stop: CancellationToken::new(),
            signal,
            fqdn,
            next_probe: tokio::time::Instant::now() + Duration::from_secs(1),
            probe_delay: Duration::from_millis(500),
            probing: None,
            last_local_id: 0,
        }
    }

    fn online(&self) -> bool {
        self.ctx.health.is_online()
    }

    /// Offline: starts a probe of the catalog in a task of its own (bounded by the call
    /// deadline); [`Runner::probed`] takes its answer.
    fn start_probe(&mut self) {
        let ctx = self.ctx.clone();
        let fqdn = self.fqdn.clone();
        self.probing = Some(tokio::spawn(async move {
            ctx.catalog
                .within("probe", probe(&ctx.catalog, &fqdn))
                .await
        }));
    }

    /// The probe's answer. When the catalog answers, replays the spool, records interrupted
    /// jobs and refreshes, so the catalog catches up with everything that happened meanwhile.
    async fn probed(&mut self, r: Result<i64, pgbackman_db::DbError>) {
        self.probing = None;
        match r {
            Ok(id) if id == self.ctx.server_id => {
                self.ctx.health.set_online();
                self.probe_delay = Duration::from_millis(500);
                replay::replay(&self.ctx).await;
                if self.online() {
                    let running: Vec<i64> = self.running.keys().copied().collect();
                    fail_interrupted_jobs(&self.ctx, &running).await;
                }
                self.refresh().await;
                self.claim().await;
            }
            Ok(id) => tracing::error!(
                "the catalog now knows this host as backup server SrvID {id}, the cache says SrvID {}: staying offline\nHINT: restart the agent after checking the catalog it points to",
                self.ctx.server_id
            ),
            Err(e) if e.is_unreachable() => {
                self.ctx.health.call_failed("probe", &e);
                tracing::debug!("catalog still unreachable: {e}");
            }
            Err(e) => tracing::error!("the catalog answers but refuses this agent: {e}"),
        }
        if !self.online() {
            // Capped at 2 s: after an outage the spool reaches the catalog within seconds.
            self.next_probe = tokio::time::Instant::now() + self.probe_delay;
            self.probe_delay = (self.probe_delay * 2).min(PROBE_CAP);
        }
    }

    fn use_cache(&mut self) {
        match state::load_cache(&self.ctx.cfg.state_dir) {
            Ok(Some(c)) => {
                tracing::warn!(
                    definitions = c.definitions.len(),
                    "running from the cached definitions of {}",
                    c.written_at
                );
                *self
                    .ctx
                    .health
                    .cache_written_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(c.written_at);
                self.set_definitions(c.definitions);
            }
            Ok(None) => {
                tracing::error!("no definition cache: nothing can run until the catalog is back")
            }
            Err(e) => tracing::error!("{e:#}"),
        }
    }

    async fn refresh(&mut self) {
        if !self.online() {
            if self.defs.is_empty() {
                self.use_cache();
            }
            return;
        }
        effective::refresh(&self.ctx).await;
        match self
            .ctx
            .db(
                "agent_definitions",
                self.ctx.catalog.agent_definitions(self.ctx.server_id),
            )
            .await
        {
            Ok(defs) => {
                // Nothing changed: keep the schedule and the cache file as they are.
                if defs.len() == self.defs.len()
                    && defs.iter().all(|d| self.defs.get(&d.def_id) == Some(d))
                {
                    return;
                }
                match state::save_cache(
                    &self.ctx.cfg.state_dir,
                    self.ctx.server_id,
                    &self.ctx.agent_name,
                    &defs,
                ) {
                    Ok(()) => {
                        *self
                            .ctx
                            .health
                            .cache_written_at
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(Utc::now())
                    }
                    Err(e) => tracing::warn!("writing the definition cache: {e:#}"),
                }
                self.set_definitions(defs);
            }
            Err(e) => {
                if !e.is_unreachable() {
                    tracing::warn!("reading definitions from the catalog failed: {e}");
                }
                if self.defs.is_empty() {
                    self.use_cache();
                }
            }
        }
    }

    fn set_definitions(&mut self, defs: Vec<AgentDefinition>) {
        for (id, err) in self.sched.rebuild(&defs) {
            tracing::error!(def_id = id, "schedule not usable: {err}");
        }
        self.defs = defs.into_iter().map(|d| (d.def_id, d)).collect();
    }

    fn per_node(&self, node: i64) -> usize {
        self.running.values().filter(|(n, _)| *n == node).count()
    }

    fn has_slot(&self, node: i64) -> bool {
        self.running.len() < self.ctx.max_jobs()
            && self.per_node(node) < self.ctx.cfg.max_jobs_per_node
    }

    fn start(&mut self, t: Ticket) {
        let token = self.stop.child_token();
        self.running
            .insert(t.job_id, (t.def.pgsql_node_id, token.clone()));
        tracing::info!(job_id = t.job_id, def_id = t.def.def_id, db = %t.def.dbname, node = %t.def.node_fqdn, "job started");
        let job_id = t.job_id;
        let handle = self.jobs.spawn(job::run(self.ctx.clone(), t, token));
        self.tasks.insert(handle.id(), job_id);
        self.ctx
            .health
            .running
            .store(self.running.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Bookkeeping of an ended job task (finished, or panicked: its slot is freed either way; a
    /// panicked job's lease runs out and the catalog marks it lost).
    fn ended(&mut self, r: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        match r {
            Ok((id, d)) => {
                tracing::info!(job_id = d.job_id, status = d.status, "job finished");
                self.tasks.remove(&id);
                self.running.remove(&d.job_id);
                self.ctx
                    .health
                    .running
                    .store(self.running.len(), std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                if let Some(job_id) = self.tasks.remove(&e.id()) {
                    tracing::error!(job_id, "job task failed: {e}");
                    self.running.remove(&job_id);
                }
            }
        }
    }

    /// Fires scheduled instants that have a free slot; the rest wait in `pending`.
    async fn fire(&mut self, due: Vec<(i64, chrono::DateTime<Utc>)>) {
        for (def_id, at) in due {
            let e = self.pending.entry(def_id).or_insert(at);
            *e = (*e).max(at);
        }
        let pending = std::mem::take(&mut self.pending);
        for (def_id, at) in pending {
            let Some(d) = self.defs.get(&def_id).cloned() else {
                continue;
            };
            if !d.is_scheduled() {
                continue;
            }
            if !self.has_slot(d.pgsql_node_id) {
                self.pending.insert(def_id, at);
                continue;
            }
            if spool::last_fired(&self.ctx.cfg.state_dir, def_id).is_some_and(|l| l >= at) {
                tracing::info!(def_id, at = %at, "scheduled instant already ran; skipped");
                continue;
            }
            if !self.online() {
                self.start_offline(d, at);
                continue;
            }
            let recorded = self.ctx.catalog.record_scheduled_job(
                self.ctx.server_id,
                def_id,
                at,
                &self.ctx.agent_name,
                self.ctx.lease(),
            );
            match self.ctx.db("record_scheduled_job", recorded).await {
                Ok(Some((job_id, attempt))) => {
                    self.fired(def_id, at);
                    self.start(Ticket {
                        job_id,
                        attempt,
                        def: d,
                        snapshot: false,
                        offline_at: None,
                    })
                }
                Ok(None) => {
                    tracing::info!(def_id, at = %at, "scheduled instant already ran, or the definition is no longer active here; skipped")
                }
                // Only "already ran" and "no longer active here" (above) are answers. Anything
                // else (unreachable, too slow, an error) runs the fire as when the catalog is
                // down; the call may have committed all the same, and the replay then
                // completes the row it made (api.report_offline_backup).
                Err(e) => {
                    if !e.is_unreachable() {
                        tracing::error!(def_id, at = %at, "could not record the scheduled backup: {e}");
                    }
                    self.start_offline(d, at);
                }
            }
        }
    }

    /// Runs a fire without a job row (the catalog is unreachable); its result is spooled under
    /// (definition, instant) and recorded at replay as if the fire had been recorded on time.
    fn fired(&self, def_id: i64, at: chrono::DateTime<Utc>) {
        if let Err(e) = spool::record_fired(&self.ctx.cfg.state_dir, def_id, at) {
            tracing::warn!(def_id, "{e:#}");
        }
    }

    fn start_offline(&mut self, def: AgentDefinition, at: chrono::DateTime<Utc>) {
        self.fired(def.def_id, at);
        let id = (-Utc::now().timestamp_micros()).min(self.last_local_id - 1);
        self.last_local_id = id;
        tracing::info!(def_id = def.def_id, at = %at, "catalog unreachable or too slow: running the scheduled backup offline");
        self.start(Ticket {
            job_id: id,
            attempt: 1,
            def,
            snapshot: false,
            offline_at: Some(at),
        });
    }

    async fn claim(&mut self) {
        let free = self.ctx.max_jobs().saturating_sub(self.running.len());
        if free == 0 || self.stop.is_cancelled() || !self.online() {
            return;
        }
        let limit = i32::try_from(free).unwrap_or(1);
        let claim = self.ctx.catalog.claim_jobs(
            self.ctx.server_id,
            &self.ctx.agent_name,
            self.ctx.lease(),
            limit,
            i32::try_from(self.ctx.cfg.max_jobs_per_node).unwrap_or(1),
            &["BACKUP", "SNAPSHOT", "RESTORE", "VERIFY", "DRILL", "CLONE"],
        );
        let claimed = match self.ctx.db("claim_jobs", claim).await {
            Ok(c) => c,
            Err(e) => {
                if !e.is_unreachable() {
                    tracing::warn!("claiming jobs failed: {e}");
                }
                return;
            }
        };
        for c in claimed {
            if verify_job::KINDS.contains(&c.kind.as_str()) {
                self.start_verification(c);
                continue;
            }
            if c.kind == "CLONE" {
                if let Some(j) = clone_job::prepare(&self.ctx, &c).await {
                    let token = self.stop.child_token();
                    let node = j.plan["node_id"].as_i64().unwrap_or_default();
                    self.running.insert(c.job_id, (node, token.clone()));
                    let h = self.jobs.spawn(clone_job::run(
                        self.ctx.clone(),
                        c.job_id,
                        c.attempt,
                        node,
                        j,
                        token,
                    ));
                    self.tasks.insert(h.id(), c.job_id);
                }
                continue;
            }
            if c.kind == "RESTORE" {
                if let Some(r) = restore_job::prepare(&self.ctx, &c).await {
                    let token = self.stop.child_token();
                    self.running
                        .insert(c.job_id, (r.target_node_id, token.clone()));
                    let h =
                        self.jobs
                            .spawn(restore_job::run(self.ctx.clone(), c.attempt, r, token));
                    self.tasks.insert(h.id(), c.job_id);
                }
                continue;
            }
            let def = match (c.def_id, c.snapshot_id) {
                (Some(id), _) => self
                    .defs
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("definition {id} is not in this agent's cache")),
                (None, Some(id)) => self
                    .ctx
                    .db("agent_snapshot", self.ctx.catalog.agent_snapshot(id))
                    .await
                    .map_err(|e| e.to_string()),
                _ => Err(format!(
                    "job kind {} is not run by this version of the agent",
                    c.kind
                )),
            };
            match def {
                Ok(def) => self.start(Ticket {
                    job_id: c.job_id,
                    attempt: c.attempt,
                    def,
                    snapshot: c.snapshot_id.is_some(),
                    offline_at: None,
                }),
                Err(msg) => {
                    let now = Utc::now().to_rfc3339();
                    let r = serde_json::json!({"execution_status": "ERROR", "started": now, "finished": now,
                        "error_step": "claim", "error_message": msg});
                    if let Err(e) = self
                        .ctx
                        .db(
                            "report_backup",
                            self.ctx.catalog.report_backup(c.job_id, c.attempt, &r),
                        )
                        .await
                    {
                        tracing::error!(
                            job_id = c.job_id,
                            "could not record a job it cannot run: {e}"
                        );
                    }
                }
            }
        }
    }

    /// `--once`: claims and runs what is due until nothing is left, then returns.
    async fn run_once(mut self) -> Result<()> {
        self.refresh().await;
        loop {
            if !self.signal.is_cancelled() {
                self.claim().await;
            }
            tokio::select! {
                r = self.jobs.join_next_with_id() => match r {
                    Some(r) => self.ended(r),
                    None => break,
                },
                _ = self.signal.cancelled(), if !self.stop.is_cancelled() => self.stop.cancel(),
            }
        }
        Ok(())
    }

    async fn run(mut self) -> Result<()> {
        self.refresh().await;
        let window =
            chrono::Duration::seconds(i64::try_from(self.ctx.cfg.catch_up_seconds).unwrap_or(3600));
        let missed = self.sched.missed(Utc::now(), window);
        self.fire(missed).await;
        self.claim().await;
        let (wake_tx, mut wake_rx) = mpsc::channel::<String>(64);
        let listener = listen::spawn(
            self.ctx.catalog.listen_config(),
            self.ctx.server_id,
            wake_tx,
            self.ctx.cfg.catalog_timeout(),
        );
        let mut repoll =
            tokio::time::interval(Duration::from_secs(self.ctx.cfg.repoll_seconds.max(1)));
        repoll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut dog = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let signal = self.signal.clone();
        loop {
            let sleep_for = self
                .sched
                .next_due()
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(sleep_for) => {
                    let due = self.sched.pop_due(Utc::now());
                    self.fire(due).await;
                }
                Some(table) = wake_rx.recv() => {
                    // Job rows only need a claim; WAL archives (whose state reports notify
                    // too) are the WAL task's; anything else may change the definitions.
                    let mut definitions = table != "job" && table != "wal_archive";
                    let mut archives = table == "wal_archive" || table == "*";
                    while let Ok(t) = wake_rx.try_recv() {
                        definitions |= t != "job" && t != "wal_archive";
                        archives |= t == "wal_archive" || t == "*";
                    }
                    if archives {
                        wal::wake();
                    }
                    if definitions {
                        self.refresh().await;
                    }
                    self.claim().await;
                }
                _ = repoll.tick(), if self.online() => {
                    self.refresh().await;
                    self.queue_due_drills().await;
                    self.claim().await;
                    if self.online() {
                        let _ = self.ctx.db("mark_lost_jobs", self.ctx.catalog.mark_lost_jobs()).await;
                    }
                    if self.online() && self.ctx.health.spooled.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                        replay::replay(&self.ctx).await;
                    }
                }
                _ = tokio::time::sleep_until(self.next_probe), if !self.online() && self.probing.is_none() => {
                    self.start_probe();
                }
                r = async { self.probing.as_mut().expect("guarded").await }, if self.probing.is_some() => {
                    let r = r.unwrap_or_else(|e| Err(pgbackman_db::DbError::Invalid(format!("the catalog probe failed: {e}"))));
                    self.probed(r).await;
                }
                Some(r) = self.jobs.join_next_with_id() => {
                    self.ended(r);
                    self.fire(Vec::new()).await;
                    self.claim().await;
                }
                _ = dog.tick(), if watchdog.is_some() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                _ = signal.cancelled() => break,
            }
        }
        tracing::info!(
            running = self.running.len(),
            "stopping: cancelling running jobs"
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.stop.cancel();
        while let Some(r) = self.jobs.join_next_with_id().await {
            self.ended(r);
        }
        listener.abort();
        if let Some(p) = self.probing.take() {
            p.abort();
        }
        tracing::info!("pgbackman-agent stopped");
        Ok(())
    }
}
