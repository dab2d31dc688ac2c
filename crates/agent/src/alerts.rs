//! Alerts: a task of its own, with its own timers, that
//! - raises OVERDUE alerts for definitions of this server whose expected backup is missing past
//!   the node's grace period (schedule math from `core::overdue`, once per episode in the catalog);
//! - mails due alerts (claimed with SKIP LOCKED: no alert is mailed by two agents), with
//!   retries and backoff, leaving an alert FAILED and visible after `max_attempts`;
//!
//! Catalog errors never stop it: it logs them and tries again at the next round. Alerts created
//! while the catalog was down (replayed failure reports) are mailed once they reach it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use pgbackman_config::AlertsSection;
use pgbackman_core::cron::CronSchedule;
use pgbackman_db::alerts::{ClaimParams, ClaimedAlert};
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;
use crate::mail::{self, Mailer};

/// The template used when `[agent.alerts] template` is not set.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../etc/pgbackman_alerts.template");

/// Placeholders a template may use, as `{{name}}` (PgBackMan's variables, plus a few).
pub const VARIABLES: &[&str] = &[
    "alert_id",
    "registered",
    "alert_type",
    "ref_id",
    "bck_id",
    "restore_id",
    "job_id",
    "backup_server_id",
    "backup_server_fqdn",
    "pgsql_node_id",
    "pgsql_node_fqdn",
    "dbname",
    "execution_status",
    "error_message",
    "stderr_tail",
    "sendto",
    "alert_sent",
    "attempt",
    "date",
    "pgbackman_version",
    "summary",
    "next_step",
];

/// A parsed template: the first line `Subject: ...` (optional), the rest the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    subject: String,
    body: String,
}

const DEFAULT_SUBJECT: &str = "[pgbackman] {{summary}}";

/// The `{{name}}` placeholders of `text`, in order.
fn placeholders(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("{{").map(|i| i + from) {
        let Some(j) = text[i + 2..].find("}}").map(|j| j + i + 2) else {
            break;
        };
        out.push((i, j + 2, text[i + 2..j].trim()));
        from = j + 2;
    }
    out
}

impl Template {
    /// Parses a template; an unknown placeholder is an error that lists the known ones.
    pub fn parse(text: &str) -> Result<Template, String> {
        let (subject, body) = match text.split_once('\n') {
            Some((first, rest)) if first.trim_start().starts_with("Subject:") => (
                first.trim_start()["Subject:".len()..].trim().to_string(),
                rest.to_string(),
            ),
            None if text.trim_start().starts_with("Subject:") => (
                text.trim_start()["Subject:".len()..].trim().to_string(),
                String::new(),
            ),
            _ => (DEFAULT_SUBJECT.to_string(), text.to_string()),
        };
        for (_, _, name) in placeholders(&subject)
            .into_iter()
            .chain(placeholders(&body))
        {
            if !VARIABLES.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{{{name}}}}}; known: {}",
                    VARIABLES.join(", ")
                ));
            }
        }
        Ok(Template { subject, body })
    }

    /// The configured template, or the built-in one.
    pub fn load(path: Option<&Path>) -> Result<Template> {
        match path {
            None => Ok(Template::parse(DEFAULT_TEMPLATE).map_err(anyhow::Error::msg)?),
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("[agent.alerts] template {}: cannot read it", p.display())
                })?;
                Template::parse(&text)
                    .map_err(|e| anyhow::anyhow!("[agent.alerts] template {}: {e}", p.display()))
            }
        }
    }

    /// (subject, body) with every placeholder replaced. The subject is one line.
    pub fn render(&self, vars: &BTreeMap<&str, String>) -> (String, String) {
        let fill = |text: &str| {
            let mut out = String::with_capacity(text.len() + 256);
            let mut last = 0;
            for (i, j, name) in placeholders(text) {
                out.push_str(&text[last..i]);
                out.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
                last = j;
            }
            out.push_str(&text[last..]);
            out
        };
        // Error messages can hold newlines: a header gets one line, never more.
        let subject: String = fill(&self.subject)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let subject = match subject.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &subject[..i]),
            None => subject,
        };
        (subject, fill(&self.body))
    }
}

/// A word for a shell command line: quoted when it holds anything but plain characters.
fn arg(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-:@".contains(c))
    {
        s.to_string()
    } else {
        format!(
            "\\\"{}\\\"",
            s.replace('\\', "\\\\").replace('"', "\\\\\\\"")
        )
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// One line saying what happened.
pub fn summary(a: &ClaimedAlert) -> String {
    let db = if a.dbname.is_empty() {
        "the cluster".to_string()
    } else {
        a.dbname.clone()
    };
    let node = a.pgsql_node_fqdn.as_deref().unwrap_or("an unknown node");
    let server = a
        .backup_server_fqdn
        .as_deref()
        .unwrap_or("its backup server");
    match a.alert_type.as_str() {
        "BACKUP" => format!("Backup of {db} on {node} failed (BckID {})", opt(a.bck_id)),
        "SNAPSHOT" => format!(
            "Snapshot of {db} on {node} failed (BckID {})",
            opt(a.bck_id)
        ),
        "RESTORE" => format!("Restore of {db} on {node} failed"),
        "DRILL" => format!("Restore drill of {db} on {node} failed"),
        "VERIFY" => format!(
            "Verification of BckID {} ({db} on {node}) failed",
            opt(a.bck_id)
        ),
        "LOST_JOB" => format!(
            "Job {} ({db} on {node}) was lost: the agent on {server} stopped heartbeating",
            opt(a.job_id)
        ),
        "OVERDUE" => format!(
            "Backup of {db} on {node} is overdue (DefID {})",
            opt(a.ref_id)
        ),
        "QUARANTINE" => format!(
            "Backup definition DefID {} of {db} on {node}: quarantine",
            opt(a.ref_id)
        ),
        "MAINTENANCE" => format!(
            "Maintenance on {server} found what it cannot settle: {}",
            a.execution_status.as_deref().unwrap_or("?")
        ),
        "AGENT_NOT_SEEN" => format!("The agent on {server} is not seen any more"),
        "WAL_CONFLICT" => format!(
            "WAL of {node} refused on {server}: other content under a name already archived"
        ),
        "WAL_RECEIVER_DOWN" => format!("WAL receiver of {node} on {server} is down"),
        "WAL_RECEIVER_LAG" => format!("WAL archive of {node} on {server} lags behind the node"),
        "WAL_SLOT_RETAINED" => format!("A replication slot on {node} holds too much WAL"),
        "WAL_SLOT_LOST" => format!("A replication slot on {node} lost WAL"),
        "WAL_HOLE" => format!("WAL archive of {node} on {server} has a hole"),
        "WAL_VERSION" => format!("No pg_receivewal for the version of {node} on {server}"),
        "REPLICATION_LAG" => format!("A standby of {node} lags behind"),
        "CLONE_EXPIRY" => format!(
            "A clone of {node} on {server} expires soon (CloneID {})",
            opt(a.ref_id)
        ),
        other => format!("{other} alert for {db} on {node}"),
    }
}

/// The command a DBA runs next.
pub fn next_step(a: &ClaimedAlert) -> String {
    let node = a
        .pgsql_node_fqdn
        .as_deref()
        .map(arg)
        .unwrap_or("all".into());
    let server = a
        .backup_server_fqdn
        .as_deref()
        .map(arg)
        .unwrap_or("all".into());
    let db = if a.dbname.is_empty() {
        "all".to_string()
    } else {
        arg(&a.dbname)
    };
    match (a.alert_type.as_str(), a.bck_id) {
        ("BACKUP" | "SNAPSHOT" | "VERIFY", Some(b)) => format!(
            "pgbackman -C \"show_backup_details {b}\"   (the failed step, its exit status and stderr)"
        ),
        ("LOST_JOB", _) => format!(
            "check the agent on {server} (systemctl status pgbackman-agent; pgbackman-agent --check), then: pgbackman -C \"show_jobs_queue {server} --all\""
        ),
        ("OVERDUE", _) => format!(
            "check that the agent on {server} runs (pgbackman-agent --check), then: pgbackman -C \"show_backup_catalog all {node} {db} {}\"",
            opt(a.ref_id)
        ),
        ("QUARANTINE", _) => {
            format!("pgbackman -C \"show_backup_definitions all {node} {db}\"")
        }
        ("MAINTENANCE", _) => format!("pgbackman -C \"show_reconciliation {server}\""),
        ("AGENT_NOT_SEEN", _) => format!(
            "on {server}: systemctl status pgbackman-agent; pgbackman-agent --check; then: pgbackman -C \"show_backup_servers\""
        ),
        ("WAL_CONFLICT", _) => format!(
            "find the other cluster archiving as {node} (a clone or restored copy with archive_command set), then: pgbackman -C \"show_wal_segments {node}\""
        ),
        (
            "WAL_RECEIVER_DOWN" | "WAL_RECEIVER_LAG" | "WAL_SLOT_RETAINED" | "WAL_SLOT_LOST"
            | "REPLICATION_LAG",
            _,
        ) => format!("pgbackman -C \"show_replication_status {node}\""),
        ("WAL_HOLE", _) => format!("pgbackman -C \"show_recovery_window {node} --holes\""),
        ("CLONE_EXPIRY", _) => format!(
            "pgbackman -C \"show_clone_details {}\"   (delete_clone it now, or copy what you need before it expires)",
            opt(a.ref_id)
        ),
        ("WAL_VERSION", _) => format!(
            "on {server}: install the PostgreSQL client programs of the node's major, then: pgbackman-agent --check"
        ),
        _ => format!("pgbackman -C \"show_alerts all {node}\""),
    }
}

/// A time in the agent's zone, the zone named: "2026-03-01 02:30:00 CET (Europe/Oslo)".
fn when(t: DateTime<Utc>, tz: Tz) -> String {
    let local = t
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string();
    if tz.name() == "UTC" {
        local
    } else {
        format!("{local} ({})", tz.name())
    }
}

/// The template variables of an alert.
pub fn variables(a: &ClaimedAlert, now: DateTime<Utc>, tz: Tz) -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    v.insert("alert_id", a.alert_id.to_string());
    v.insert("registered", when(a.registered, tz));
    v.insert("alert_type", a.alert_type.clone());
    v.insert("ref_id", opt(a.ref_id));
    v.insert("bck_id", opt(a.bck_id));
    v.insert("restore_id", opt(a.restore_id));
    v.insert("job_id", opt(a.job_id));
    v.insert("backup_server_id", opt(a.backup_server_id));
    v.insert("backup_server_fqdn", opt(a.backup_server_fqdn.as_deref()));
    v.insert("pgsql_node_id", opt(a.pgsql_node_id));
    v.insert("pgsql_node_fqdn", opt(a.pgsql_node_fqdn.as_deref()));
    v.insert(
        "dbname",
        if a.dbname.is_empty() {
            "(whole cluster)".into()
        } else {
            a.dbname.clone()
        },
    );
    v.insert("execution_status", opt(a.execution_status.as_deref()));
    v.insert("error_message", opt(a.error_message.as_deref()));
    v.insert(
        "stderr_tail",
        a.stderr_tail
            .as_deref()
            .map(|t| {
                let t = t.trim_end();
                if t.is_empty() {
                    String::new()
                } else {
                    // Indented, so that it reads as a quoted block in any mail reader.
                    format!("\n  {}", t.replace('\n', "\n  "))
                }
            })
            .unwrap_or_default(),
    );
    v.insert("sendto", a.sendto.clone());
    v.insert("alert_sent", "false".into());
    v.insert("attempt", a.attempt.to_string());
    v.insert("date", when(now, tz));
    v.insert("pgbackman_version", env!("CARGO_PKG_VERSION").into());
    v.insert("summary", summary(a));
    v.insert("next_step", next_step(a));
    v
}

/// Delay before attempt `attempt + 1`: `base`, doubling per attempt, at most `max`.
pub fn retry_delay(attempt: i32, base: Duration, max: Duration) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(0);
    base.saturating_mul(1u32 << doublings).min(max.max(base))
}

struct Sender {
    mailer: Mailer,
    template: Template,
    cfg: AlertsSection,
}

/// Starts the alert task. Mail settings, password, CA and template are checked now: a mistake
/// stops the agent at start rather than failing every alert later.
pub fn spawn(
    ctx: Arc<Ctx>,
    tz: Tz,
    hello: &str,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let sender = match &ctx.cfg.alerts {
        Some(a) => {
            let s = Sender {
                mailer: Mailer::new(a, hello)?,
                template: Template::load(a.template.as_deref())?,
                cfg: a.clone(),
            };
            tracing::info!(smtp = %s.mailer.target, "alerts are mailed");
            Some(s)
        }
        None => {
            tracing::info!(
                "alerts are not mailed (no [agent.alerts] section): they stay queued, see show_alerts"
            );
            None
        }
    };
    if sender.is_none() && ctx.cfg.overdue_check_seconds == 0 {
        return Ok(tokio::spawn(async {}));
    }
    Ok(tokio::spawn(run(ctx, tz, sender, stop)))
}

/// `--check` lines for the alert settings: (ok, what).
pub async fn check(
    cfg: &pgbackman_config::AgentSection,
    hello: &str,
) -> Vec<(crate::check::Level, String)> {
    use crate::check::Level;
    let Some(a) = &cfg.alerts else {
        return vec![(
            Level::Ok,
            "alerts are not mailed (no [agent.alerts] section); show_alerts lists them".into(),
        )];
    };
    let mut out = Vec::new();
    // A template or mail setting the agent refuses stops it at start: an ERROR. An SMTP server
    // that is down or refuses us only delays mail (alerts stay queued): a WARN.
    match Template::load(a.template.as_deref()) {
        Ok(_) => out.push((
            Level::Ok,
            format!(
                "alert template {}",
                a.template
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or("(built in)".into())
            ),
        )),
        Err(e) => out.push((Level::Error, format!("{e:#}"))),
    }
    match Mailer::new(a, hello) {
        Ok(m) => match m.test().await {
            Ok(()) => out.push((Level::Ok, format!("SMTP server {} accepts us", m.target))),
            Err(e) => out.push((
                Level::Warn,
                format!(
                    "SMTP server {}: {e}; the agent starts anyway, alerts wait in the catalog (show_alerts) until mail works",
                    m.target
                ),
            )),
        },
        Err(e) => out.push((Level::Error, format!("{e:#}"))),
    }
    out
}

/// A timer that never fires when `None`.
async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn interval(secs: u64) -> Option<tokio::time::Interval> {
    (secs > 0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs(secs));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    })
}

async fn run(ctx: Arc<Ctx>, tz: Tz, sender: Option<Sender>, stop: CancellationToken) {
    let mut overdue = interval(ctx.cfg.overdue_check_seconds);
    let mut mail = sender.as_ref().and_then(|s| interval(s.cfg.check_seconds));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick(&mut overdue) => check_overdue(&ctx, tz).await,
            _ = tick(&mut mail) => {
                if let Some(s) = &sender {
                    send_due(&ctx, s, tz, &stop).await;
                }
            }
        }
    }
}

/// Raises an OVERDUE alert for each definition of this server that is overdue and not alerted
/// in its current episode.
async fn check_overdue(ctx: &Ctx, tz: Tz) {
    let candidates = match ctx
        .db(
            "overdue_candidates",
            ctx.catalog.overdue_candidates(ctx.server_id),
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("overdue check: reading the definitions failed: {e}");
            return;
        }
    };
    let now = Utc::now();
    let mut parsed: HashMap<[String; 5], Option<Arc<CronSchedule>>> = HashMap::new();
    for c in candidates.into_iter().filter(|c| !c.alerted) {
        let sched = parsed
            .entry(c.schedule.clone())
            .or_insert_with(|| {
                let [m, h, dom, mon, dow] = &c.schedule;
                CronSchedule::parse_fields(m, h, dom, mon, dow)
                    .ok()
                    .map(Arc::new)
            })
            .clone();
        let Some(sched) = sched else { continue };
        let Some(expected) = pgbackman_core::overdue::overdue_instant(
            &sched,
            &tz,
            now,
            c.grace,
            c.since,
            c.last_success,
        ) else {
            continue;
        };
        let last = c
            .last_success
            .map(|t| format!("the last successful backup finished {}", when(t, tz)))
            .unwrap_or_else(|| "no backup of this definition ever succeeded".into());
        let message = format!(
            "the backup expected at {} by the schedule \"{}\" ({}) has not succeeded {} later (grace period {}); {last}",
            when(expected, tz),
            sched.to_line(),
            sched.describe().trim_end_matches('.'),
            human(now - expected),
            human(chrono::Duration::from_std(c.grace).unwrap_or_default()),
        );
        match ctx
            .db(
                "raise_overdue_alert",
                ctx.catalog
                    .raise_overdue_alert(ctx.server_id, c.def_id, expected, &message),
            )
            .await
        {
            Ok(Some(id)) => tracing::warn!(
                alert_id = id,
                def_id = c.def_id,
                db = %c.dbname,
                node = %c.node_fqdn,
                "backup overdue: {message}"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(def_id = c.def_id, "raising an overdue alert failed: {e}"),
        }
    }
}

fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        s if s >= 86_400 && s % 86_400 < 3600 => format!("{}d", s / 86_400),
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 && s % 3600 < 60 => format!("{}h", s / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Claims and mails due alerts until none is left (a few claims per round at most).
async fn send_due(ctx: &Ctx, s: &Sender, tz: Tz, stop: &CancellationToken) {
    const BATCH: i32 = 20;
    let params = ClaimParams {
        limit: BATCH,
        lease: Duration::from_secs(s.cfg.timeout_seconds.saturating_mul(3).max(60)),
        handover: Duration::from_secs(s.cfg.handover_seconds),
        max_age: (s.cfg.max_age_hours > 0)
            .then(|| Duration::from_secs(s.cfg.max_age_hours.saturating_mul(3600))),
    };
    for _ in 0..10 {
        let claimed = match ctx
            .db(
                "claim_alerts",
                ctx.catalog
                    .claim_alerts(ctx.server_id, &ctx.agent_name, params),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("claiming alerts to mail failed: {e}; retrying next round");
                return;
            }
        };
        let n = claimed.len();
        for a in claimed {
            if stop.is_cancelled() {
                return; // the claim lapses and the alert is mailed later
            }
            send_one(ctx, s, tz, &a).await;
        }
        if n < BATCH as usize {
            return;
        }
    }
}

async fn send_one(ctx: &Ctx, s: &Sender, tz: Tz, a: &ClaimedAlert) {
    let result = match mail::recipients(&a.sendto) {
        (to, _) if !to.is_empty() => {
            let (subject, body) = s.template.render(&variables(a, Utc::now(), tz));
            let id = s.mailer.message_id(a.alert_id, a.registered);
            s.mailer
                .send(&to, &subject, body, &id)
                .await
                .map(|()| id)
                .map_err(|e| (format!("{e:#}"), false))
        }
        (_, bad) => {
            let node = a.pgsql_node_fqdn.as_deref().unwrap_or("<node>");
            Err((
                format!(
                    "no valid recipient ({}): set one with: pgbackman -C \"update_pgsql_node_config {node} logs_email=dba@example.org\", then retry_alerts {}",
                    if bad.is_empty() {
                        "logs_email is empty".to_string()
                    } else {
                        bad.join(", ")
                    },
                    a.alert_id
                ),
                true,
            ))
        }
    };
    match result {
        Ok(message_id) => {
            match ctx
                .db(
                    "alert_sent",
                    ctx.catalog
                        .alert_sent(a.alert_id, &ctx.agent_name, a.attempt, &message_id),
                )
                .await
            {
                Ok(true) => {
                    tracing::info!(alert_id = a.alert_id, to = %a.sendto, kind = %a.alert_type, "alert mailed")
                }
                Ok(false) => tracing::warn!(
                    alert_id = a.alert_id,
                    "alert mailed, but another agent had taken it over meanwhile"
                ),
                // Mailed but not recorded: it will be mailed again with the same Message-ID.
                Err(e) => tracing::warn!(
                    alert_id = a.alert_id,
                    "alert mailed, but recording it failed: {e}"
                ),
            }
        }
        Err((error, permanent)) => {
            let give_up = permanent || a.attempt >= i32::try_from(s.cfg.max_attempts).unwrap_or(1);
            let retry_in = retry_delay(
                a.attempt,
                Duration::from_secs(s.cfg.retry_seconds),
                Duration::from_secs(s.cfg.max_retry_seconds),
            );
            match ctx
                .db(
                    "alert_failed",
                    ctx.catalog.alert_failed(
                        a.alert_id,
                        &ctx.agent_name,
                        a.attempt,
                        &error,
                        retry_in,
                        give_up,
                    ),
                )
                .await
            {
                Ok(Some(state)) if state == "FAILED" => tracing::error!(
                    alert_id = a.alert_id,
                    attempts = a.attempt,
                    "alert not mailed, giving up (show_alerts, retry_alerts): {error}"
                ),
                Ok(_) => tracing::warn!(
                    alert_id = a.alert_id,
                    attempt = a.attempt,
                    "alert not mailed, retrying in {}: {error}",
                    pgbackman_core::duration::human(retry_in)
                ),
                Err(e) => tracing::warn!(
                    alert_id = a.alert_id,
                    "alert not mailed ({error}), and recording that failed: {e}"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str) -> ClaimedAlert {
        ClaimedAlert {
            alert_id: 7,
            registered: DateTime::parse_from_rfc3339("2026-03-10T03:31:00Z")
                .unwrap()
                .with_timezone(&Utc),
            alert_type: kind.into(),
            ref_id: Some(12),
            bck_id: Some(1042),
            restore_id: None,
            job_id: Some(99),
            backup_server_id: Some(1),
            backup_server_fqdn: Some("backup01.example.org".into()),
            pgsql_node_id: Some(3),
            pgsql_node_fqdn: Some("pg01.example.org".into()),
            dbname: "billing".into(),
            execution_status: Some("ERROR".into()),
            error_message: Some("dump: pg_dump exited with status 1\nsecond line".into()),
            stderr_tail: Some("pg_dump: error: connection refused\n".into()),
            sendto: "dba@example.org".into(),
            attempt: 1,
        }
    }

    #[test]
    fn default_template_renders_every_variable() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let a = alert("BACKUP");
        let now = a.registered + chrono::Duration::minutes(1);
        let (subject, body) = t.render(&variables(&a, now, chrono_tz::Europe::Oslo));
        assert_eq!(
            subject,
            "[pgbackman] Backup of billing on pg01.example.org failed (BckID 1042)"
        );
        assert!(body.contains("show_backup_details 1042"), "{body}");
        // The agent's zone, named.
        assert!(
            body.contains("raised 2026-03-10 04:31:00 CET (Europe/Oslo)"),
            "{body}"
        );
        assert!(
            body.contains("pg_dump exited with status 1\nsecond line"),
            "{body}"
        );
        assert!(
            body.contains("Stderr (tail):\n  pg_dump: error: connection refused\n"),
            "{body}"
        );
        assert!(!body.contains("{{"), "{body}");
    }

    #[test]
    fn subjects_are_one_line_and_bounded() {
        let t = Template::parse("Subject: {{error_message}}\nbody").unwrap();
        let mut a = alert("BACKUP");
        let (s, b) = t.render(&variables(&a, Utc::now(), Tz::UTC));
        assert_eq!(s, "dump: pg_dump exited with status 1 second line");
        assert_eq!(b, "body");
        a.error_message = Some("x".repeat(500));
        let (s, _) = t.render(&variables(&a, Utc::now(), Tz::UTC));
        assert_eq!(s.chars().count(), 203);
    }

    #[test]
    fn templates_are_checked() {
        let e = Template::parse("Subject: {{summry}}\n").unwrap_err();
        assert!(e.contains("summry") && e.contains("summary"), "{e}");
        // No Subject line: the default subject, the whole text is the body.
        let t = Template::parse("Alert {{ alert_id }} for {{dbname}}").unwrap();
        let (s, b) = t.render(&variables(&alert("OVERDUE"), Utc::now(), Tz::UTC));
        assert_eq!(
            s,
            "[pgbackman] Backup of billing on pg01.example.org is overdue (DefID 12)"
        );
        assert_eq!(b, "Alert 7 for billing");
        // An unterminated {{ is text.
        assert!(Template::parse("Subject: a {{ b\n").is_ok());
    }

    #[test]
    fn every_type_has_a_summary_and_a_next_step() {
        for kind in [
            "BACKUP",
            "SNAPSHOT",
            "RESTORE",
            "DRILL",
            "LOST_JOB",
            "OVERDUE",
            "QUARANTINE",
            "VERIFY",
            "MAINTENANCE",
            "AGENT_NOT_SEEN",
            "WAL_CONFLICT",
            "WAL_RECEIVER_DOWN",
            "WAL_RECEIVER_LAG",
            "WAL_SLOT_RETAINED",
            "WAL_SLOT_LOST",
            "WAL_HOLE",
            "WAL_VERSION",
            "REPLICATION_LAG",
        ] {
            let a = alert(kind);
            assert!(
                !summary(&a).ends_with(" alert for billing on pg01.example.org"),
                "{kind}"
            );
            assert!(!summary(&a).is_empty());
            assert!(next_step(&a).contains("pgbackman"), "{kind}");
        }
        let mut a = alert("OVERDUE");
        a.dbname = "my db".into();
        assert!(
            next_step(&a).contains("pg01.example.org \\\"my db\\\" 12"),
            "{}",
            next_step(&a)
        );
        a.dbname = String::new();
        assert!(summary(&a).contains("the cluster"));
    }

    #[test]
    fn the_example_configuration_lists_every_variable() {
        let doc = include_str!("../../../etc/pgbackman-agent.toml");
        for v in VARIABLES {
            assert!(
                doc.contains(v),
                "etc/pgbackman-agent.toml does not mention {v}"
            );
        }
    }

    #[test]
    fn durations_in_words() {
        let h = |s| human(chrono::Duration::seconds(s));
        assert_eq!(
            [h(14_400), h(45_000), h(90_000), h(172_800), h(59), h(600)],
            ["4h", "12h 30m", "1d 1h", "2d", "59s", "10m"]
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let b = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        let got: Vec<u64> = (1..=9).map(|n| retry_delay(n, b, m).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry_delay(i32::MAX, b, m), m);
        assert_eq!(retry_delay(0, b, m), b);
    }
}
