//! Recovering an extracted base backup to a target: the settings (appended to
//! `postgresql.auto.conf`, so that nothing the node set with ALTER SYSTEM wins over them),
//! `recovery.signal`, the start with `pg_ctl` of the node's major, the wait until recovery
//! reached the target (paused, promoted or shut down) under a deadline, and the check of what
//! was reached. The clone never archives nor streams (`archive_mode = off`, empty
//! `primary_conninfo`, its own `cluster_name`, F17) and listens on its unix socket only.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgbackman_db::pitr::CloneRecovery;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The target of a restore, as PostgreSQL's settings name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `recovery_target_time`.
    Time(String),
    /// `recovery_target_lsn`.
    Lsn(String),
    /// `recovery_target_xid`.
    Xid(String),
    /// `recovery_target_name`.
    Name(String),
    /// `recovery_target = 'immediate'`.
    Immediate,
}

impl Target {
    /// From the catalog's kind and value.
    pub fn from_kind(kind: &str, value: Option<&str>) -> Result<Target, String> {
        let v = || {
            value
                .map(str::to_string)
                .ok_or_else(|| format!("target {kind} has no value"))
        };
        Ok(match kind {
            "time" => Target::Time(v()?),
            "lsn" => Target::Lsn(v()?),
            "xid" => Target::Xid(v()?),
            "name" => Target::Name(v()?),
            "immediate" => Target::Immediate,
            other => return Err(format!("unknown recovery target kind {other}")),
        })
    }

    fn setting(&self) -> (&'static str, String) {
        match self {
            Target::Time(v) => ("recovery_target_time", v.clone()),
            Target::Lsn(v) => ("recovery_target_lsn", v.clone()),
            Target::Xid(v) => ("recovery_target_xid", v.clone()),
            Target::Name(v) => ("recovery_target_name", v.clone()),
            Target::Immediate => ("recovery_target", "immediate".into()),
        }
    }
}

/// A restored data directory and how to recover it.
#[derive(Debug, Clone)]
pub struct RecoverySpec {
    /// The extracted data directory.
    pub data_dir: PathBuf,
    /// Directory of the unix socket (0700, the agent's: only its user connects).
    pub socket_dir: PathBuf,
    /// The server log (`pg_ctl -l`).
    pub log_file: PathBuf,
    /// Port (the socket's name; no TCP).
    pub port: u16,
    /// The server programs of the node's major (pg_ctl, postgres).
    pub bin_dir: PathBuf,
    /// `restore_command`, ready for the shell PostgreSQL runs it with.
    pub restore_command: String,
    /// The recovery target.
    pub target: Target,
    /// `recovery_target_timeline` (a number, or latest / current).
    pub timeline: String,
    /// `recovery_target_action`: pause, promote or shutdown.
    pub action: String,
    /// `cluster_name` of the clone.
    pub cluster_name: String,
    /// The role the agent connects as (a superuser of the node).
    pub user: String,
}

/// Why recovery did not reach its target; `log_tail` holds the server's last lines.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", if log_tail.is_empty() { String::new() } else { format!("\nserver log (last lines):\n{log_tail}") })]
pub struct RecoveryError {
    /// What happened.
    pub message: String,
    /// The clone's log tail.
    pub log_tail: String,
}

/// What recovery reached.
#[derive(Debug, Clone)]
pub struct Reached {
    /// paused, promoted or shut down.
    pub state: String,
    /// The clone's state as read from it (None after a shutdown).
    pub read: Option<CloneRecovery>,
    /// The "recovery stopping ..." line of the log, when there is one.
    pub stop_line: Option<String>,
    /// The new timeline after a promotion.
    pub new_timeline: Option<i64>,
}

fn quote_setting(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A word for `/bin/sh`: single-quoted.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes the recovery settings, `recovery.signal`, a local-only `pg_hba.conf` rule, and the
/// files a data directory without its configuration (Debian layout) lacks.
pub fn write_settings(s: &RecoverySpec) -> std::io::Result<()> {
    let d = &s.data_dir;
    for f in ["postgresql.conf", "pg_ident.conf"] {
        if !d.join(f).exists() {
            fs::write(d.join(f), "")?;
        }
    }
    // Local connections only, trusted: the socket directory (0700) admits the agent's user only.
    let hba = d.join("pg_hba.conf");
    let old = fs::read_to_string(&hba).unwrap_or_default();
    fs::write(
        &hba,
        format!(
            "# pgbackman clone: unix socket only (its directory admits the agent's user only)\nlocal all all trust\n# the node's rules, unused (no TCP):\n{}",
            old.lines().map(|l| format!("# {l}\n")).collect::<String>()
        ),
    )?;
    for stale in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
        let _ = fs::remove_file(d.join(stale));
    }
    let (key, value) = s.target.setting();
    let settings: Vec<(&str, String)> = vec![
        ("port", s.port.to_string()),
        ("listen_addresses", String::new()),
        (
            "unix_socket_directories",
            s.socket_dir.display().to_string(),
        ),
        ("cluster_name", s.cluster_name.clone()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("hot_standby", "on".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("restore_command", s.restore_command.clone()),
        (key, value),
        ("recovery_target_timeline", s.timeline.clone()),
        ("recovery_target_action", s.action.clone()),
    ];
    let mut conf =
        String::from("\n# pgbackman point-in-time restore (these win: they come last)\n");
    for (k, v) in settings {
        conf.push_str(&format!("{k} = {}\n", quote_setting(&v)));
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(d.join("postgresql.auto.conf"))?;
    f.write_all(conf.as_bytes())?;
    f.sync_all()?;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(d.join("recovery.signal"))?;
    Ok(())
}

fn pg_ctl(s: &RecoverySpec, args: &[&str]) -> Command {
    let mut c = Command::new(s.bin_dir.join("pg_ctl"));
    c.arg("-D").arg(&s.data_dir).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null()).current_dir("/");
    c
}

/// Starts the server without waiting (recovery may take long; [`wait`] follows it).
pub fn start(s: &RecoverySpec) -> Result<(), RecoveryError> {
    let out = pg_ctl(s, &["-l"])
        .arg(&s.log_file)
        .args(["-W", "start"])
        .output()
        .map_err(|e| RecoveryError {
            message: format!(
                "cannot run {}: {e} (install the PostgreSQL server package of the node's major)",
                s.bin_dir.join("pg_ctl").display()
            ),
            log_tail: String::new(),
        })?;
    if !out.status.success() {
        return Err(RecoveryError {
            message: format!(
                "pg_ctl start failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log_tail: log_tail(&s.log_file, 30),
        });
    }
    Ok(())
}

/// Stops the server in `data_dir` (immediate, then SIGKILL of the postmaster if it stays);
/// nothing when none runs.
pub fn stop_immediate(bin_dir: &Path, data_dir: &Path) {
    let Some(pid) = postmaster_pid(data_dir) else {
        return;
    };
    let _ = Command::new(bin_dir.join("pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "immediate", "-w", "-t", "30", "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if alive(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A fast shutdown (`pg_ctl stop -m fast -w`); nothing when no server runs.
pub fn stop_fast(bin_dir: &Path, data_dir: &Path) -> Result<(), String> {
    if postmaster_pid(data_dir).is_none() {
        return Ok(());
    }
    let out = Command::new(bin_dir.join("pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "fast", "-w", "-t", "120", "stop"])
        .stdin(Stdio::null())
        .current_dir("/")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin_dir.join("pg_ctl").display()))?;
    if !out.status.success() {
        return Err(format!(
            "pg_ctl stop failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Waits until a started server answers (`start_clone`): running and accepting connections.
pub async fn wait_ready(s: &RecoverySpec, deadline: Duration) -> Result<(), RecoveryError> {
    let until = Instant::now() + deadline;
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        if pgbackman_db::pitr::clone_recovery(&s.socket_dir, s.port, &s.user)
            .await
            .is_ok()
        {
            return Ok(());
        }
        if postmaster_pid(&s.data_dir).is_none() || Instant::now() >= until {
            return Err(RecoveryError {
                message: "the clone's server did not come up".into(),
                log_tail: log_tail(&s.log_file, 30),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The postmaster's pid, when its `postmaster.pid` names a live process.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The last `n` lines of a log.
pub fn log_tail(path: &Path, n: usize) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn log_line(path: &Path, needle: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains(needle))
        .map(str::to_string)
}

/// Waits until recovery reached its target: paused (`pause`), out of recovery (`promote`), or
/// the server shut down after a "recovery stopping" line (`shutdown`). A server that dies
/// otherwise, the deadline, or `cancel` end it with the log tail.
pub async fn wait(
    s: &RecoverySpec,
    deadline: Duration,
    cancel: &CancellationToken,
) -> Result<Reached, RecoveryError> {
    let until = Instant::now() + deadline;
    let err = |message: String| RecoveryError {
        message,
        log_tail: log_tail(&s.log_file, 30),
    };
    // pg_ctl -W returns before postmaster.pid exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        let stop_line = log_line(&s.log_file, "recovery stopping");
        let running = postmaster_pid(&s.data_dir).is_some();
        if !running {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if postmaster_pid(&s.data_dir).is_some() {
                continue;
            }
            if s.action == "shutdown" && stop_line.is_some() {
                return Ok(Reached {
                    state: "shut down".into(),
                    read: None,
                    stop_line,
                    new_timeline: None,
                });
            }
            return Err(err(
                "the clone's server stopped before recovery reached the target".into(),
            ));
        }
        if let Ok(r) = pgbackman_db::pitr::clone_recovery(&s.socket_dir, s.port, &s.user).await {
            let reached = match s.action.as_str() {
                "promote" => !r.in_recovery,
                "pause" => r.in_recovery && r.pause_state == "paused",
                _ => false,
            };
            if reached {
                let new_timeline = (!r.in_recovery)
                    .then(|| log_line(&s.log_file, "selected new timeline ID:"))
                    .flatten()
                    .and_then(|l| l.rsplit(':').next()?.trim().parse().ok());
                // Read again: the line was written before the state the query saw.
                return Ok(Reached {
                    state: if r.in_recovery { "paused" } else { "promoted" }.into(),
                    read: Some(r),
                    stop_line: log_line(&s.log_file, "recovery stopping"),
                    new_timeline,
                });
            }
        }
        if Instant::now() >= until {
            return Err(err(format!(
                "recovery did not reach the target within {} s",
                deadline.as_secs()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = cancel.cancelled() => return Err(err("cancelled".into())),
        }
    }
}

/// Whether what was reached is the target: an LSN at or past a target LSN (or the backup's
/// end for `immediate`), the last replayed commit not after a target time, a "recovery
/// stopping" line for the others. Returns a note for the record, or why not.
pub fn check_reached(
    target: &Target,
    reached: &Reached,
    min_lsn: Option<&str>,
) -> Result<String, String> {
    let lsn = reached.read.as_ref().and_then(|r| r.lsn.clone());
    let parse = |l: &str| l.parse::<pgbackman_core::wal::Lsn>().ok();
    match target {
        Target::Lsn(_) | Target::Immediate if lsn.is_some() => {
            let want = match target {
                Target::Lsn(t) => Some(t.as_str()),
                _ => min_lsn,
            };
            let (Some(got), Some(want)) = (lsn.as_deref().and_then(parse), want.and_then(parse))
            else {
                return Ok(format!("reached LSN {}", lsn.unwrap_or_default()));
            };
            if got < want {
                return Err(format!(
                    "recovery stopped at LSN {got}, before the target {want}"
                ));
            }
            Ok(format!("reached LSN {got} (target {want})"))
        }
        Target::Time(t) => {
            let last = reached.read.as_ref().and_then(|r| r.last_xact);
            if let (Some(last), Ok(want)) = (last, parse_time(t))
                && last > want
            {
                return Err(format!(
                    "the last transaction replayed committed at {last}, after the target time {want}"
                ));
            }
            Ok(match &reached.stop_line {
                Some(l) => l.clone(),
                None => "recovery ended at the target time".into(),
            })
        }
        _ => match &reached.stop_line {
            Some(l) => Ok(l.clone()),
            None => Err("the clone's log says nothing of stopping at the target".into()),
        },
    }
}

fn parse_time(t: &str) -> Result<DateTime<Utc>, ()> {
    DateTime::parse_from_rfc3339(t)
        .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_quoted_for_postgresql_and_words_for_the_shell() {
        assert_eq!(quote_setting("it's"), "'it''s'");
        assert_eq!(sh_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert!(parse_time("2026-05-01 12:00:00.123+00").is_ok());
        assert!(parse_time("2026-05-01T12:00:00Z").is_ok());
    }
}
