//! The agent's heartbeat: a task of its own that tells the catalog, every re-poll interval,
//! that this agent lives, with its version, its health (/healthz's online / degraded /
//! offline), its spooled results, its time zone and the configuration it runs with (value and
//! source of each). Each heartbeat also raises the AGENT_NOT_SEEN alert of any other server
//! whose agent went silent (sql/25_agents.sql); mailing it is the alerts task's job.
//!
//! The agent never waits on the catalog for this: every call goes through `Ctx::db` (one
//! deadline), in this task only, and a heartbeat that fails is skipped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use chrono_tz::Tz;
use pgbackman_db::heartbeat::Heartbeat;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;

/// The IANA name of the host's zone, from the target of /etc/localtime
/// (`/usr/share/zoneinfo/Europe/Oslo`), or /etc/timezone.
pub fn localtime_zone() -> Option<String> {
    let valid = |n: &str| n.parse::<Tz>().is_ok().then(|| n.to_string());
    if let Ok(target) = std::fs::read_link("/etc/localtime") {
        let t = target.to_string_lossy().to_string();
        if let Some(name) = t.split("zoneinfo/").nth(1).and_then(valid) {
            return Some(name);
        }
    }
    std::fs::read_to_string("/etc/timezone")
        .ok()
        .and_then(|s| valid(s.trim()))
}

/// The interval between two heartbeats: the re-poll interval, at most 30 s, so that the
/// default threshold (5 minutes) is ten missed heartbeats.
pub fn every(ctx: &Ctx) -> Duration {
    Duration::from_secs(ctx.cfg.repoll_seconds.clamp(1, 30))
}

pub fn spawn(ctx: Arc<Ctx>, tz: Tz, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Utc::now();
        let mut tick = tokio::time::interval(every(&ctx));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => beat(&ctx, tz, started).await,
            }
        }
    })
}

async fn beat(ctx: &Ctx, tz: Tz, started: chrono::DateTime<Utc>) {
    let live = ctx.live();
    let h = Heartbeat {
        server_id: ctx.server_id,
        agent: &ctx.agent_name,
        version: env!("CARGO_PKG_VERSION"),
        health: ctx.health.state().as_str(),
        spooled: i32::try_from(ctx.health.spooled.load(Ordering::Relaxed)).unwrap_or(i32::MAX),
        time_zone: tz.name(),
        config: &live.report,
        started,
    };
    match ctx
        .db("agent_heartbeat", ctx.catalog.agent_heartbeat(&h))
        .await
    {
        Ok(silent) => {
            for fqdn in silent {
                tracing::warn!(server = %fqdn, "the agent of backup server {fqdn} is not seen any more: AGENT_NOT_SEEN alert raised");
            }
        }
        // Skipped: the next heartbeat tells all.
        Err(e) => tracing::debug!("heartbeat skipped: {e}"),
    }
}
