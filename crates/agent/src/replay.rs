//! Delivery of spooled results to the catalog, oldest first, each exactly once.

use std::sync::atomic::Ordering;

use pgbackman_db::DbError;

use crate::job::Ctx;
use crate::spool::{self, Entry, Key};

pub enum Delivery {
    /// Recorded (now, or by an earlier delivery of the same entry): the BckID.
    Recorded(i64),
    /// Refused as stale (another attempt owns the job): nothing to record, drop it.
    Dropped,
    /// The catalog could not be reached: keep it, try later.
    Unreachable(DbError),
    /// The catalog refused it for good: keep it aside for an administrator.
    Refused(DbError),
}

pub async fn deliver(ctx: &Ctx, e: &Entry) -> Delivery {
    let r = match (&e.kind[..], &e.key) {
        ("backup", Key::Job { job_id, attempt }) => {
            ctx.db(
                "report_backup",
                ctx.catalog.report_backup(*job_id, *attempt, &e.result),
            )
            .await
        }
        (
            "backup",
            Key::Scheduled {
                def_id,
                scheduled_for,
            },
        ) => {
            ctx.db(
                "report_offline_backup",
                ctx.catalog.report_offline_backup(
                    e.server_id,
                    *def_id,
                    *scheduled_for,
                    &e.agent,
                    &e.result,
                ),
            )
            .await
        }
        ("restore", Key::Job { job_id, attempt }) => {
            ctx.db(
                "report_restore",
                ctx.catalog.report_restore(*job_id, *attempt, &e.result),
            )
            .await
        }
        // The verification's id is the BckID it verified; the state is only logged.
        ("verification", Key::Job { job_id, attempt }) => ctx
            .db(
                "report_verification",
                ctx.catalog
                    .report_verification(*job_id, *attempt, &e.result),
            )
            .await
            .map(|state| {
                tracing::info!(job_id, state, "verification recorded");
                0
            }),
        (kind, _) => Err(DbError::Invalid(format!(
            "spool entry of kind \"{kind}\" is not known to this agent"
        ))),
    };
    match r {
        Ok(bck) => Delivery::Recorded(bck),
        Err(err)
            if err.code() == Some("PB001")
                || (e.kind == "verification" && err.code() == Some("P0002")) =>
        {
            tracing::warn!("result of {} refused as stale: {err}", e.key.label());
            Delivery::Dropped
        }
        Err(err) if err.is_unreachable() => Delivery::Unreachable(err),
        Err(err) => Delivery::Refused(err),
    }
}

/// Delivers the spool, oldest first, until it is empty or the catalog is unreachable.
/// Returns true when nothing is left.
pub async fn replay(ctx: &Ctx) -> bool {
    let _one = ctx.spool_lock.lock().await;
    // A delivery that waited for this one may find the catalog gone meanwhile: it does not try
    // again (a frozen catalog would cost each waiting job a deadline, e.g. at SIGTERM); the
    // probe replays when the catalog answers.
    if !ctx.health.is_online() {
        return false;
    }
    let dir = &ctx.cfg.state_dir;
    let paths = match spool::list(dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e:#}");
            return false;
        }
    };
    let total = paths.len();
    let mut delivered = 0usize;
    let mut left = total;
    for p in paths {
        let entry = match spool::read(&p) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("{e:#}");
                let _ = spool::reject(dir, &p, &format!("{e:#}"));
                left -= 1;
                continue;
            }
        };
        match deliver(ctx, &entry).await {
            Delivery::Recorded(id) => {
                let status = &entry.result["execution_status"];
                match &entry.kind[..] {
                    "backup" => {
                        tracing::info!(bck_id = id, %status, "{} recorded", entry.key.label())
                    }
                    "restore" => {
                        tracing::info!(restore_id = id, %status, "{} recorded", entry.key.label())
                    }
                    kind => tracing::info!("{} recorded ({kind})", entry.key.label()),
                }
                delivered += 1;
            }
            Delivery::Dropped => {}
            Delivery::Unreachable(_) => {
                ctx.health.spooled.store(left, Ordering::Relaxed);
                tracing::warn!("{left} result(s) stay in the spool until the catalog is back");
                return false;
            }
            Delivery::Refused(e) => {
                let reason = format!("{e}");
                match spool::reject(dir, &p, &reason) {
                    Ok(to) => tracing::error!(
                        "the catalog refused the result of {}: {reason}; kept in {}",
                        entry.key.label(),
                        to.display()
                    ),
                    Err(e2) => tracing::error!("{e2:#}"),
                }
                left -= 1;
                ctx.health
                    .rejected
                    .store(spool::rejected_count(dir), Ordering::Relaxed);
                continue;
            }
        }
        if let Err(e) = spool::remove(&p) {
            tracing::error!("{e:#}");
        }
        left -= 1;
    }
    ctx.health.spooled.store(0, Ordering::Relaxed);
    if total > 1 || delivered > 1 {
        tracing::info!(delivered, "spool replayed: every result is in the catalog");
    }
    true
}
