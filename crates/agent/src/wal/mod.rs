//! The WAL archives of this backup server (issue 11): a task of its own that learns the
//! archives from the catalog (`api.agent_wal_archives`, cached in `<state_dir>/wal_archives.json`
//! so receivers keep running when the catalog is down), runs one receiver per ACTIVE archive
//! (`receiver`), delivers stored objects to the ledger (`pending`), reports each archive's state
//! (receiver, slot `wal_status`, retained WAL, node position) and ends DELETING archives: stop
//! the receiver, drop the slot on the node, `api.wal_archive_slot_dropped`.
//!
//! Every catalog call goes through `Ctx::db` (one deadline); node calls have the `[nodes]`
//! deadlines. Nothing here waits on the catalog to keep receiving.

pub(crate) mod check;
pub mod get;
mod monitor;
mod pending;
pub(crate) mod push;
mod receiver;
mod stall;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgbackman_db::wal::ArchiveState;
use pgbackman_db::wal_agent::AgentWalArchive;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;

struct Running {
    archive: AgentWalArchive,
    status: receiver::Shared,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("wal_archives.json")
}

fn load_cache(state_dir: &Path) -> Option<Vec<AgentWalArchive>> {
    std::fs::read(cache_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether this server keeps a live (ACTIVE) WAL archive of `node_id`, as last learnt from the
/// catalog: a base backup then leaves its WAL to the archive (`-X none`).
pub fn has_live_archive(state_dir: &Path, node_id: i64) -> bool {
    load_cache(state_dir).is_some_and(|l| {
        l.iter()
            .any(|a| a.pgsql_node_id == node_id && a.status == "ACTIVE")
    })
}

/// The segment files of `range` that this server's live archive of `node_id` does not hold
/// (None: no live archive of the node in the cache). A file stored here is in the ledger or
/// pending for it (`pending`, delivered once the catalog answers), so an empty answer means the
/// WAL is safe on this server whatever the catalog can say now.
pub fn not_stored_here(
    cfg: &pgbackman_config::AgentSection,
    node_id: i64,
    sysid: u64,
    range: &pgbackman_core::wal::SegmentRange,
) -> Option<Vec<String>> {
    let list = load_cache(&cfg.state_dir)?;
    let a = list
        .iter()
        .find(|a| a.pgsql_node_id == node_id && a.status == "ACTIVE")?;
    let node_dir =
        pgbackman_core::roots::node_dir(&cfg.backup_dir, &cfg.state_dir, &a.node_backup_partition)
            .ok()?;
    let dirs = store::ArchiveDirs::new(&node_dir, node_id);
    Some(
        range
            .segments
            .clone()
            .map(|s| pgbackman_core::wal::WalFileName::segment(range.tli, s, range.size))
            .filter(|n| !dirs.stored(sysid, n).is_file())
            .map(|n| n.to_string())
            .collect(),
    )
}

fn save_cache(state_dir: &Path, list: &[AgentWalArchive]) -> anyhow::Result<()> {
    crate::state::write_atomic(&cache_path(state_dir), &serde_json::to_vec(list)?)
}

/// The interval of the archive list refresh, the ledger delivery and the state report.
fn every(ctx: &Ctx) -> Duration {
    Duration::from_secs(ctx.cfg.repoll_seconds.clamp(1, 30))
}

/// Wakes the WAL task for a round now (a `wal_archive` notification: an archive registered or
/// being deleted is acted on at once, not at the next re-poll).
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The archives' series of the agent's `/metrics`.
pub fn metrics() -> String {
    monitor::metrics()
}

pub fn wake() {
    WAKE.notify_one();
}

pub fn spawn(ctx: Arc<Ctx>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stored = Arc::new(tokio::sync::Notify::new());
        let mut m = Manager {
            ctx,
            known: None,
            running: BTreeMap::new(),
            stored,
        };
        let mut tick = tokio::time::interval(every(&m.ctx));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                // A stop does not wait for a round's catalog calls (SIGTERM within 15 s).
                _ = tick.tick() => tokio::select! {
                    _ = m.round() => {}
                    _ = stop.cancelled() => break,
                },
                // Only the list: the state report notifies too, and must not loop back here.
                _ = WAKE.notified() => tokio::select! {
                    _ = m.apply() => {}
                    _ = stop.cancelled() => break,
                },
                _ = push::server::PUSHED.notified() => tokio::select! {
                    _ = pending::deliver(&m.ctx) => {}
                    _ = stop.cancelled() => break,
                },
                _ = m.stored.notified() => tokio::select! {
                    _ = pending::deliver(&m.ctx) => {}
                    _ = stop.cancelled() => break,
                },
            }
        }
        for (_, r) in std::mem::take(&mut m.running) {
            m.stop_receiver(r).await;
        }
    })
}

struct Manager {
    ctx: Arc<Ctx>,
    /// The archives as last read (catalog, else cache).
    known: Option<Vec<AgentWalArchive>>,
    running: BTreeMap<i64, Running>,
    stored: Arc<tokio::sync::Notify>,
}

impl Manager {
    async fn round(&mut self) {
        self.apply().await;
        pending::deliver(&self.ctx).await;
        self.report_states().await;
    }

    /// Reads the archives (catalog, else cache) and makes the receivers match them.
    async fn apply(&mut self) {
        let ctx = self.ctx.clone();
        match ctx
            .db(
                "agent_wal_archives",
                ctx.catalog.agent_wal_archives(ctx.server_id),
            )
            .await
        {
            Ok(list) => {
                if self.known.as_ref() != Some(&list)
                    && let Err(e) = save_cache(&ctx.cfg.state_dir, &list)
                {
                    tracing::warn!("cannot cache the WAL archives: {e:#}");
                }
                self.known = Some(list);
            }
            Err(e) => {
                tracing::debug!("WAL archives not refreshed: {e}");
                if self.known.is_none() {
                    self.known = load_cache(&ctx.cfg.state_dir);
                }
            }
        }
        let known = self.known.clone().unwrap_or_default();
        push::server::set_archives(&known);
        // Receivers of archives that are no longer ACTIVE (or changed) stop.
        let ids: Vec<i64> = self.running.keys().copied().collect();
        for id in ids {
            let keep = known.iter().any(|a| {
                a.archive_id == id
                    && a.status == "ACTIVE"
                    && a.intake != "push"
                    && Some(a) == self.running.get(&id).map(|r| &r.archive)
            });
            if !keep && let Some(r) = self.running.remove(&id) {
                self.stop_receiver(r).await;
            }
        }
        for a in &known {
            match a.status.as_str() {
                // A push archive has no receiver: the listener takes its files.
                "ACTIVE" if a.intake == "push" => {}
                "ACTIVE" if !self.running.contains_key(&a.archive_id) => self.start(a.clone()),
                "DELETING" => self.finish_deletion(a).await,
                _ => {}
            }
        }
    }

    fn start(&mut self, a: AgentWalArchive) {
        let status = receiver::Shared::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(receiver::run(
            self.ctx.clone(),
            a.clone(),
            status.clone(),
            self.stored.clone(),
            cancel.clone(),
        ));
        self.running.insert(
            a.archive_id,
            Running {
                archive: a,
                status,
                cancel,
                task,
            },
        );
    }

    async fn stop_receiver(&self, r: Running) {
        r.cancel.cancel();
        // The receiver gives pg_receivewal 5 s after SIGTERM, then kills it.
        if tokio::time::timeout(Duration::from_secs(10), r.task)
            .await
            .is_err()
        {
            tracing::warn!(
                archive = r.archive.archive_id,
                "the WAL receiver of PgSQL node {} did not stop in time",
                receiver::label(&r.archive)
            );
        }
    }

    /// A DELETING archive: the receiver is stopped (above); drop the slot, then tell the catalog.
    async fn finish_deletion(&self, a: &AgentWalArchive) {
        let lbl = receiver::label(a);
        let config = match receiver::node_config(&self.ctx, a) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "cannot drop slot {} on PgSQL node {lbl}: {e:#}",
                    a.slot_name
                );
                return;
            }
        };
        match pgbackman_db::wal_node::drop_slot(config, &lbl, &a.slot_name).await {
            Ok(was) => {
                if was {
                    tracing::info!(
                        archive = a.archive_id,
                        "dropped replication slot {} on PgSQL node {lbl}",
                        a.slot_name
                    );
                }
            }
            Err(e) => {
                tracing::warn!(
                    archive = a.archive_id,
                    "cannot drop replication slot {} on PgSQL node {lbl} yet: {e}; retried at the next round",
                    a.slot_name
                );
                return;
            }
        }
        let ctx = &self.ctx;
        if let Err(e) = ctx
            .db(
                "wal_archive_slot_dropped",
                ctx.catalog
                    .wal_archive_slot_dropped(ctx.server_id, a.archive_id),
            )
            .await
        {
            tracing::debug!("wal_archive_slot_dropped not delivered: {e}");
        }
    }

    /// Each push archive: whether this agent listens for it.
    async fn report_push_states(&self) {
        let ctx = &self.ctx;
        let listen = push::server::LISTENING
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let state = if listen.is_empty() {
            "push: this agent does not listen for wal-push ([agent.wal_push] is not set or failed, see its log)".to_string()
        } else {
            format!("push: listening on {listen}")
        };
        for a in self.known.iter().flatten() {
            if a.intake != "push" || a.status != "ACTIVE" {
                continue;
            }
            let s = ArchiveState {
                receiver_state: state.clone(),
                ..ArchiveState::default()
            };
            if let Err(e) = ctx
                .db(
                    "report_wal_archive_state",
                    ctx.catalog
                        .report_wal_archive_state(ctx.server_id, a.archive_id, &s),
                )
                .await
            {
                tracing::debug!("WAL archive state not reported: {e}");
            }
        }
    }

    /// Each running archive's receiver, slot and node, as the node and the receiver see them
    /// now (`monitor`: the state report, the replication sample and /metrics).
    async fn report_states(&self) {
        let ids: Vec<i64> = self.running.keys().copied().collect();
        monitor::retain(&ids);
        self.report_push_states().await;
        for r in self.running.values() {
            monitor::report(&self.ctx, &r.archive, &r.status).await;
        }
    }
}
