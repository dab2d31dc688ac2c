//! What the agent knows about itself, for its log and for `/healthz` and `/metrics` on a local
//! HTTP listener. The listener answers two GET paths and nothing else; a web framework would cost
//! more build time than these few lines.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use pgbackman_db::DbError;
use tokio::net::TcpListener;

/// Where the agent stands with its catalog. Both non-online states take the same path (fires
/// run from the cache and are spooled, claims stop, a probe waits for the catalog); they differ
/// in what an operator should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CatalogState {
    Online = 0,
    /// The catalog accepts connections but does not answer in time (a lock, a frozen server).
    Degraded = 1,
    /// No connection can be made.
    Offline = 2,
}

impl CatalogState {
    fn from_u8(v: u8) -> CatalogState {
        match v {
            0 => CatalogState::Online,
            1 => CatalogState::Degraded,
            _ => CatalogState::Offline,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CatalogState::Online => "online",
            CatalogState::Degraded => "degraded",
            CatalogState::Offline => "offline",
        }
    }
}

/// A catalog call that failed since the catalog was last usable.
#[derive(Debug, Clone)]
struct Failing {
    error: String,
    since: DateTime<Utc>,
    failures: u64,
}

pub struct Health {
    state: AtomicU8,
    since: Mutex<DateTime<Utc>>,
    last_error: Mutex<String>,
    /// Calls failing in the current episode (cleared when the catalog is back).
    failing: Mutex<BTreeMap<String, Failing>>,
    /// Failed (slow or unreachable) catalog calls since start, per call, for /metrics.
    failures_total: Mutex<BTreeMap<String, u64>>,
    pub spooled: AtomicUsize,
    pub rejected: AtomicUsize,
    pub running: AtomicUsize,
    pub cache_written_at: Mutex<Option<DateTime<Utc>>>,
    started: DateTime<Utc>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    pub fn new(online: bool) -> Health {
        Health {
            state: AtomicU8::new(if online {
                CatalogState::Online as u8
            } else {
                CatalogState::Offline as u8
            }),
            since: Mutex::new(Utc::now()),
            last_error: Mutex::new(String::new()),
            failing: Mutex::new(BTreeMap::new()),
            failures_total: Mutex::new(BTreeMap::new()),
            spooled: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            cache_written_at: Mutex::new(None),
            started: Utc::now(),
        }
    }

    pub fn state(&self) -> CatalogState {
        CatalogState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub fn is_online(&self) -> bool {
        self.state() == CatalogState::Online
    }

    /// The catalog could not be reached: logs the transition once, not every failed call.
    pub fn set_offline(&self, why: &str) {
        self.enter(CatalogState::Offline, why);
    }

    /// Catalog call `call` failed with `e` (slow or unreachable; a refusal is not for here):
    /// the agent goes degraded or offline, and the call is listed by /healthz.
    pub fn call_failed(&self, call: &str, e: &DbError) {
        let why = e.to_string();
        let one_line = why.lines().next().unwrap_or("").to_string();
        {
            let mut f = lock(&self.failing);
            let entry = f.entry(call.to_string()).or_insert_with(|| Failing {
                error: String::new(),
                since: Utc::now(),
                failures: 0,
            });
            entry.error = one_line.clone();
            entry.failures += 1;
        }
        *lock(&self.failures_total)
            .entry(call.to_string())
            .or_insert(0) += 1;
        let to = if e.is_slow() {
            CatalogState::Degraded
        } else {
            CatalogState::Offline
        };
        self.enter(to, &format!("{call}: {one_line}"));
    }

    fn enter(&self, to: CatalogState, why: &str) {
        *lock(&self.last_error) = why.to_string();
        let from = CatalogState::from_u8(self.state.swap(to as u8, Ordering::SeqCst));
        if from == to {
            return;
        }
        *lock(&self.since) = Utc::now();
        match to {
            CatalogState::Degraded => tracing::warn!(
                "catalog too slow ({why}): running DEGRADED from the cached definitions as when it is down; scheduled backups go on, results are spooled, retention deletes wait"
            ),
            _ if from == CatalogState::Degraded => tracing::warn!(
                "catalog unreachable ({why}): running OFFLINE from the cached definitions (was degraded)"
            ),
            _ => tracing::warn!(
                "catalog unreachable ({why}): running OFFLINE from the cached definitions; scheduled backups go on, results are spooled, retention deletes wait"
            ),
        }
    }

    pub fn set_online(&self) {
        let from = CatalogState::from_u8(
            self.state
                .swap(CatalogState::Online as u8, Ordering::SeqCst),
        );
        if from != CatalogState::Online {
            let since = *lock(&self.since);
            *lock(&self.since) = Utc::now();
            lock(&self.failing).clear();
            tracing::info!(
                was = from.as_str(),
                offline_for = %humantime(Utc::now() - since),
                spooled = self.spooled.load(Ordering::Relaxed),
                "catalog answers again: back ONLINE"
            );
        }
    }

    pub fn healthz(&self) -> String {
        let since = *lock(&self.since);
        let state = self.state();
        let online = state == CatalogState::Online;
        let failing: Vec<serde_json::Value> = lock(&self.failing)
            .iter()
            .map(|(call, f)| {
                serde_json::json!({"call": call, "error": f.error, "since": f.since.to_rfc3339(), "failures": f.failures})
            })
            .collect();
        serde_json::json!({
            "status": state.as_str(),
            "catalog": match state {
                CatalogState::Online => "reachable",
                CatalogState::Degraded => "slow",
                CatalogState::Offline => "unreachable",
            },
            "since": since.to_rfc3339(),
            "last_catalog_error": if online { None } else { Some(lock(&self.last_error).clone()) },
            "failing_calls": failing,
            "spooled_results": self.spooled.load(Ordering::Relaxed),
            "rejected_results": self.rejected.load(Ordering::Relaxed),
            "running_jobs": self.running.load(Ordering::Relaxed),
            "definitions_cached_at": lock(&self.cache_written_at).map(|t| t.to_rfc3339()),
            "started": self.started.to_rfc3339(),
        })
        .to_string()
    }

    pub fn metrics(&self) -> String {
        let since = *lock(&self.since);
        let state = self.state();
        let mut calls = String::new();
        for (call, n) in lock(&self.failures_total).iter() {
            calls.push_str(&format!(
                "pgbackman_agent_catalog_call_failures_total{{call=\"{call}\"}} {n}\n"
            ));
        }
        format!(
            "# HELP pgbackman_agent_catalog_online 1 when the catalog answers, 0 when the agent runs from its cache (degraded or offline).\n\
             # TYPE pgbackman_agent_catalog_online gauge\npgbackman_agent_catalog_online {}\n\
             # HELP pgbackman_agent_catalog_degraded 1 when the catalog accepts connections but does not answer within catalog_timeout_seconds.\n\
             # TYPE pgbackman_agent_catalog_degraded gauge\npgbackman_agent_catalog_degraded {}\n\
             # HELP pgbackman_agent_catalog_call_failures_total Catalog calls that timed out or found the catalog unreachable, per call.\n\
             # TYPE pgbackman_agent_catalog_call_failures_total counter\n{calls}\
             # HELP pgbackman_agent_catalog_state_since_seconds Unix time of the last online/degraded/offline transition.\n\
             # TYPE pgbackman_agent_catalog_state_since_seconds gauge\npgbackman_agent_catalog_state_since_seconds {}\n\
             # HELP pgbackman_agent_spooled_results Results waiting in the spool for the catalog.\n\
             # TYPE pgbackman_agent_spooled_results gauge\npgbackman_agent_spooled_results {}\n\
             # HELP pgbackman_agent_rejected_results Spooled results the catalog refused (see spool/rejected).\n\
             # TYPE pgbackman_agent_rejected_results gauge\npgbackman_agent_rejected_results {}\n\
             # HELP pgbackman_agent_running_jobs Jobs running now.\n\
             # TYPE pgbackman_agent_running_jobs gauge\npgbackman_agent_running_jobs {}\n",
            u8::from(state == CatalogState::Online),
            u8::from(state == CatalogState::Degraded),
            since.timestamp(),
            self.spooled.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed),
        )
    }
}

fn humantime(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

/// Serves `/healthz` (JSON) and `/metrics` (Prometheus text) on `listener` until dropped.
pub async fn serve(listener: TcpListener, ctx: std::sync::Arc<crate::job::Ctx>) {
    pgbackman_http::serve(listener, move |path| match path {
        "/healthz" => ("200 OK", "application/json", ctx.health.healthz()),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            ctx.health.metrics() + &crate::wal::metrics(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /healthz or /metrics\n".into(),
        ),
    })
    .await
}
