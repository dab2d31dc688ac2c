//! `pause_recovery_on_standby`: WAL replay on a standby node is paused while dumps of that node
//! run, so that a long dump is not cancelled by a recovery conflict and sees a stable standby.
//!
//! Several dumps of one node may run at once: the first one pauses, the last one to end resumes
//! (a count per node, [`Pauses`]). Resumed on success, failure and cancel alike ([`Hold::release`],
//! or its `Drop` for a job that panicked); after [`max_recovery_pause`](NodePause) of one pause
//! the agent resumes replay itself and fails the dumps still running (a paused standby keeps all
//! its WAL: it must not stay paused for ever). A pause outlives a crash of the agent: before it
//! pauses, the agent writes `<state_dir>/recovery_paused/<NodeID>.json` (how to reach the node),
//! removed once replay is resumed; [`resume_left`] resumes what such files name at the next start.
//! That file also says the pause is ours: replay found paused without one is someone else's and
//! is neither paused again nor resumed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use pgbackman_config::AgentSection;
use pgbackman_db::agent::AgentDefinition;
use pgbackman_db::standby::{Pause, Resume};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `max_recovery_pause` when a cache written before it existed has none (the catalog's default).
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(3600);

/// How to reach a node to resume its replay, without the catalog (also after a crash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub node_id: i64,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub sslmode: String,
    /// When the pause was requested (for the log of a resume at start).
    pub paused_at: chrono::DateTime<chrono::Utc>,
}

impl Target {
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn of(d: &AgentDefinition, port: u16) -> Target {
        Target {
            node_id: d.pgsql_node_id,
            host: d.node_fqdn.clone(),
            port,
            user: d.admin_user.clone(),
            dbname: d.admin_dbname.clone(),
            sslmode: d.sslmode.clone(),
            paused_at: chrono::Utc::now(),
        }
    }

    /// The node connection as a job makes it: pgpass file of the agent, `[nodes]` deadlines.
    fn config(&self, cfg: &AgentSection) -> anyhow::Result<pgbackman_config::ConnConfig> {
        let passfile = cfg.passfile.clone();
        let env = move |k: &str| match (k, &passfile) {
            ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
            _ => std::env::var(k).ok(),
        };
        let r = pgbackman_config::node_config_with(
            &self.host,
            self.port,
            &self.user,
            &self.dbname,
            &self.sslmode,
            &env,
        )?;
        Ok(cfg.nodes.applied(r.config))
    }
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("recovery_paused")
}

fn marker_path(state_dir: &Path, node_id: i64) -> PathBuf {
    dir(state_dir).join(format!("{node_id}.json"))
}

fn write_marker(state_dir: &Path, t: &Target) -> anyhow::Result<()> {
    crate::state::create_dir_0700(&dir(state_dir))?;
    let bytes = serde_json::to_vec_pretty(t)?;
    crate::state::write_atomic(&marker_path(state_dir, t.node_id), &bytes)
}

fn remove_marker(state_dir: &Path, node_id: i64) {
    let p = marker_path(state_dir, node_id);
    if let Err(e) = std::fs::remove_file(&p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", p.display());
    }
}

/// Resumes replay on `t`'s node and forgets the pause; an error is logged and the file kept
/// (the next start, or the next dump of the node, tries again).
async fn resume(cfg: &AgentSection, t: &Target, why: &str) -> bool {
    let label = t.label();
    let r = match t.config(cfg) {
        Ok(c) => pgbackman_db::standby::resume_replay(c, &label)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match r {
        Ok(Resume::Resumed) => {
            tracing::info!(node = %label, "resumed WAL replay on standby node {label} ({why})");
            remove_marker(&cfg.state_dir, t.node_id);
            true
        }
        Ok(Resume::NotInRecovery) => {
            tracing::info!(node = %label, "PgSQL node {label} is no longer in recovery: no WAL replay to resume");
            remove_marker(&cfg.state_dir, t.node_id);
            true
        }
        Err(e) => {
            tracing::error!(
                node = %label,
                "could not resume WAL replay on standby node {label} ({why}): {e:#}; \
                 the agent retries at its next start and the next dump of the node; \
                 or run SELECT pg_wal_replay_resume() on the node"
            );
            false
        }
    }
}

/// At start: resumes the replay of every node a previous run paused and did not resume (it was
/// killed during a dump). Needs no catalog.
pub async fn resume_left(cfg: &AgentSection) {
    let Ok(entries) = std::fs::read_dir(dir(&cfg.state_dir)) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let t: Target = match std::fs::read(&p)
            .context("reading")
            .and_then(|b| serde_json::from_slice(&b).context("parsing"))
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    "{}: {e:#}; remove it once replay of its node is resumed by hand",
                    p.display()
                );
                continue;
            }
        };
        let why = format!(
            "paused at {} by a run of the agent that stopped during a dump",
            t.paused_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        resume(cfg, &t, &why).await;
    }
}

static EPISODES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// `3600 s` as `1 h`, `90 s` as `90 s`: how the log and errors name a maximum.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The pauses of this agent, per node.
#[derive(Default)]
pub struct Pauses {
    nodes: Mutex<HashMap<i64, Arc<NodePause>>>,
}

/// One node: how many dumps hold it, and the pause in force (if any). The async lock orders
/// the pause and resume calls of one node.
#[derive(Default)]
struct NodePause {
    state: tokio::sync::Mutex<NodeState>,
}

#[derive(Default)]
struct NodeState {
    holders: usize,
    /// The node answered "not in recovery" to the current holders: no pause to take.
    primary: bool,
    pause: Option<Episode>,
}

/// One pause, from the first dump to the last (or to `max_recovery_pause`).
struct Episode {
    /// Tells a timer its own pause from a later one of the same node.
    id: u64,
    target: Target,
    /// Fired when the pause reached its maximum: replay was resumed, the holders must fail.
    expired: CancellationToken,
    _timer: crate::job::AbortOnDrop,
}

/// A dump's share of its node's pause; give it back with [`Hold::release`].
pub struct Hold {
    cfg: AgentSection,
    node: Option<Arc<NodePause>>,
    /// Set while the pause is in force: cancelled when it reached its maximum.
    pub expired: Option<CancellationToken>,
    /// The maximum, for the error of a dump it stops.
    pub max: Duration,
}

impl Pauses {
    /// Before a dump of `d`'s node: pauses replay if the node asks for it, is a standby and
    /// nobody paused it yet. `Err`: the dump must not run (the message says why and what to do).
    pub async fn hold(
        &self,
        cfg: &AgentSection,
        d: &AgentDefinition,
        port: u16,
    ) -> Result<Hold, String> {
        let max = d
            .max_recovery_pause_seconds
            .filter(|s| s.is_finite() && *s >= 1.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_MAX_PAUSE);
        let mut hold = Hold {
            cfg: cfg.clone(),
            node: None,
            expired: None,
            max,
        };
        if !d.pause_recovery_on_standby {
            return Ok(hold);
        }
        let node = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(d.pgsql_node_id)
            .or_default()
            .clone();
        let mut st = node.state.lock().await;
        if st.pause.is_none() && !(st.holders > 0 && st.primary) {
            let target = Target::of(d, port);
            let label = target.label();
            // A file left by a killed run: that pause is ours even though replay is found paused.
            let ours = marker_path(&cfg.state_dir, d.pgsql_node_id).exists();
            // Written before the pause: a crash right after it still leaves what resumes it.
            write_marker(&cfg.state_dir, &target).map_err(|e| {
                format!("cannot record the WAL replay pause of standby node {label}: {e:#}; the dump was not started")
            })?;
            let conn = target.config(cfg).map_err(|e| format!("{e:#}"))?;
            match pgbackman_db::standby::pause_replay(conn, &label).await {
                Ok(Pause::Paused) => {}
                Ok(Pause::AlreadyPaused) if ours => {}
                Ok(Pause::AlreadyPaused) => {
                    remove_marker(&cfg.state_dir, d.pgsql_node_id);
                    tracing::info!(node = %label, "WAL replay on standby node {label} is already paused (not by this agent): left as it is, and not resumed after the dump");
                    st.holders += 1;
                    hold.node = Some(node.clone());
                    return Ok(hold);
                }
                Ok(Pause::NotInRecovery) => {
                    remove_marker(&cfg.state_dir, d.pgsql_node_id);
                    tracing::info!(node = %label, "PgSQL node {label} is not in recovery: pause_recovery_on_standby has no effect on it");
                    st.primary = true;
                    st.holders += 1;
                    hold.node = Some(node.clone());
                    return Ok(hold);
                }
                Err(e) => {
                    if !ours {
                        remove_marker(&cfg.state_dir, d.pgsql_node_id);
                    }
                    return Err(format!(
                        "cannot pause WAL replay on standby node {label} (pause_recovery_on_standby=true): {e}"
                    ));
                }
            }
            tracing::info!(node = %label, "paused WAL replay on standby node {label} for its dumps (at most {})", span(max));
            let expired = CancellationToken::new();
            let id = EPISODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let timer = tokio::spawn(expire(cfg.clone(), node.clone(), id, max));
            st.pause = Some(Episode {
                id,
                target,
                expired,
                _timer: crate::job::AbortOnDrop(timer),
            });
        }
        st.holders += 1;
        hold.expired = st.pause.as_ref().map(|p| p.expired.clone());
        hold.node = Some(node.clone());
        Ok(hold)
    }
}

/// At the maximum of a pause: resume replay, then stop the dumps still holding it.
async fn expire(cfg: AgentSection, node: Arc<NodePause>, id: u64, max: Duration) {
    tokio::time::sleep(max).await;
    let mut st = node.state.lock().await;
    let Some(ep) = st.pause.take_if(|p| p.id == id) else {
        return;
    };
    let why = format!(
        "the pause reached max_recovery_pause ({}): the dumps still running are stopped",
        span(max)
    );
    resume(&cfg, &ep.target, &why).await;
    ep.expired.cancel();
    // `ep` holds the handle of this very task: drop it without aborting ourselves mid-way.
    std::mem::forget(ep._timer);
}

impl Hold {
    /// Whether the pause this dump held reached its maximum (replay was resumed meanwhile).
    pub fn has_expired(&self) -> bool {
        self.expired.as_ref().is_some_and(|e| e.is_cancelled())
    }

    /// Ends this dump's share: the last holder of a node resumes its replay.
    pub async fn release(mut self) {
        if let Some(node) = self.node.take() {
            release(&self.cfg, &node).await;
        }
    }
}

async fn release(cfg: &AgentSection, node: &Arc<NodePause>) {
    let mut st = node.state.lock().await;
    st.holders = st.holders.saturating_sub(1);
    if st.holders > 0 {
        return;
    }
    st.primary = false;
    if let Some(ep) = st.pause.take() {
        resume(cfg, &ep.target, "its last dump ended").await;
    }
}

impl Drop for Hold {
    /// A job that panicked or was dropped mid-way still gives its share back.
    fn drop(&mut self) {
        if let Some(node) = self.node.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let cfg = self.cfg.clone();
            rt.spawn(async move { release(&cfg, &node).await });
        }
    }
}
