//! What the agent knows about itself, for its log and for `/healthz` and `/metrics` on a local
//! HTTP listener. The listener answers two GET paths and nothing else; a web framework would cost
//! more build time than these few lines.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Health {
    online: AtomicBool,
    since: Mutex<DateTime<Utc>>,
    last_error: Mutex<String>,
    pub spooled: AtomicUsize,
    pub rejected: AtomicUsize,
    pub running: AtomicUsize,
    pub cache_written_at: Mutex<Option<DateTime<Utc>>>,
    started: DateTime<Utc>,
}

impl Health {
    pub fn new(online: bool) -> Health {
        Health {
            online: AtomicBool::new(online),
            since: Mutex::new(Utc::now()),
            last_error: Mutex::new(String::new()),
            spooled: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            cache_written_at: Mutex::new(None),
            started: Utc::now(),
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    /// The catalog could not be reached: logs the transition once, not every failed call.
    pub fn set_offline(&self, why: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = why.to_string();
        if self.online.swap(false, Ordering::SeqCst) {
            *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Utc::now();
            tracing::warn!(
                "catalog unreachable ({why}): running OFFLINE from the cached definitions; scheduled backups go on, results are spooled, retention deletes wait"
            );
        }
    }

    pub fn set_online(&self) {
        if !self.online.swap(true, Ordering::SeqCst) {
            let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
            *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Utc::now();
            tracing::info!(
                offline_for = %humantime(Utc::now() - since),
                spooled = self.spooled.load(Ordering::Relaxed),
                "catalog reachable again: back ONLINE"
            );
        }
    }

    pub fn healthz(&self) -> String {
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        let online = self.is_online();
        serde_json::json!({
            "status": if online { "online" } else { "offline" },
            "catalog": if online { "reachable" } else { "unreachable" },
            "since": since.to_rfc3339(),
            "last_catalog_error": if online { None } else { Some(self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()) },
            "spooled_results": self.spooled.load(Ordering::Relaxed),
            "rejected_results": self.rejected.load(Ordering::Relaxed),
            "running_jobs": self.running.load(Ordering::Relaxed),
            "definitions_cached_at": self.cache_written_at.lock().unwrap_or_else(|e| e.into_inner()).map(|t| t.to_rfc3339()),
            "started": self.started.to_rfc3339(),
        })
        .to_string()
    }

    pub fn metrics(&self) -> String {
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "# HELP pgbackman_agent_catalog_online 1 when the catalog is reachable, 0 when the agent runs offline.\n\
             # TYPE pgbackman_agent_catalog_online gauge\npgbackman_agent_catalog_online {}\n\
             # HELP pgbackman_agent_catalog_state_since_seconds Unix time of the last online/offline transition.\n\
             # TYPE pgbackman_agent_catalog_state_since_seconds gauge\npgbackman_agent_catalog_state_since_seconds {}\n\
             # HELP pgbackman_agent_spooled_results Results waiting in the spool for the catalog.\n\
             # TYPE pgbackman_agent_spooled_results gauge\npgbackman_agent_spooled_results {}\n\
             # HELP pgbackman_agent_rejected_results Spooled results the catalog refused (see spool/rejected).\n\
             # TYPE pgbackman_agent_rejected_results gauge\npgbackman_agent_rejected_results {}\n\
             # HELP pgbackman_agent_running_jobs Jobs running now.\n\
             # TYPE pgbackman_agent_running_jobs gauge\npgbackman_agent_running_jobs {}\n",
            u8::from(self.is_online()),
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
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // The request line is all we read; a slow or silent client is dropped.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let mut parts = req.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = match (method, path) {
                ("GET", "/healthz") => ("200 OK", "application/json", ctx.health.healthz()),
                ("GET", "/metrics") => {
                    ("200 OK", "text/plain; version=0.0.4", ctx.health.metrics())
                }
                ("GET", _) => (
                    "404 Not Found",
                    "text/plain",
                    "try /healthz or /metrics\n".into(),
                ),
                _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
