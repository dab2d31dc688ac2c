//! The recovery settings of a restore to another host (appended to `postgresql.auto.conf`, so
//! they win over what the node set, and `recovery.signal`), and `--start`: pg_ctl, then the
//! server log followed until recovery reached the target (or the server stopped short).
//! Unlike a clone's (`pgbackman_dump::pitr::recovery`) the node's listen settings are kept:
//! this data directory is meant to serve.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Settings {
    pub restore_command: String,
    /// time | lsn | xid | name | immediate.
    pub kind: &'static str,
    pub value: Option<String>,
    pub timeline: String,
    pub action: String,
    pub port: Option<u16>,
    pub keep_archiving: bool,
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

pub fn write(d: &Path, s: &Settings) -> std::io::Result<()> {
    let (key, value) = match s.kind {
        "time" => ("recovery_target_time", s.value.clone()),
        "lsn" => ("recovery_target_lsn", s.value.clone()),
        "xid" => ("recovery_target_xid", s.value.clone()),
        "name" => ("recovery_target_name", s.value.clone()),
        _ => ("recovery_target", Some("immediate".into())),
    };
    let mut set: Vec<(&str, String)> = vec![
        ("restore_command", s.restore_command.clone()),
        (key, value.unwrap_or_default()),
        ("recovery_target_timeline", s.timeline.clone()),
        ("recovery_target_action", s.action.clone()),
        // A restored copy must not take over the node's replication.
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
    ];
    if !s.keep_archiving {
        set.push(("archive_mode", "off".into()));
    }
    if let Some(p) = s.port {
        set.push(("port", p.to_string()));
    }
    let mut conf = String::from(
        "\n# pgbackman restore-cluster: point-in-time recovery (these win: they come last)\n",
    );
    for (k, v) in set {
        conf.push_str(&format!("{k} = {}\n", quote(&v)));
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(d.join("postgresql.auto.conf"))?;
    f.write_all(conf.as_bytes())?;
    f.sync_all()?;
    for stale in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
        let _ = fs::remove_file(d.join(stale));
    }
    // The Debian layout keeps these outside the data directory: the server needs them.
    for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        if !d.join(f).exists() {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(d.join(f))?;
        }
    }
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(d.join("recovery.signal"))?
        .sync_all()
}

fn pg_ctl(bin: Option<&Path>) -> Result<PathBuf> {
    if let Some(b) = bin {
        return Ok(b.join("pg_ctl"));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("pg_ctl"))
        .find(|p| p.is_file())
        .context("pg_ctl is not on PATH: give --pg-bin DIR (e.g. /usr/lib/postgresql/15/bin)")
}

/// Starts the server and follows its log until the target: a "recovery stopping" line and
/// then the action's state (paused, promoted, shut down). Returns what it reached.
pub async fn start_and_wait(
    pgdata: &Path,
    log: &Path,
    bin: Option<&Path>,
    action: &str,
    wait_seconds: u64,
) -> Result<String> {
    let out = Command::new(pg_ctl(bin)?)
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log)
        .arg("-W")
        .arg("start")
        .stdin(Stdio::null())
        .output()
        .context("running pg_ctl")?;
    if !out.status.success() {
        bail!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let until = Instant::now() + Duration::from_secs(wait_seconds);
    tokio::time::sleep(Duration::from_millis(500)).await;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        let stop = text
            .lines()
            .find(|l| l.contains("recovery stopping"))
            .map(str::to_string);
        let running = pgdata.join("postmaster.pid").exists();
        let done = match action {
            "promote" => {
                text.contains("archive recovery complete")
                    && text.contains("database system is ready to accept connections")
            }
            "pause" => {
                text.contains("pausing at the end of recovery")
                    || text.contains("recovery has paused")
            }
            _ => stop.is_some() && !running,
        };
        if done && let Some(stop) = &stop {
            return Ok(format!(
                "Recovery reached the target: {}; the server is {}.",
                stop.trim(),
                match action {
                    "promote" => "promoted (a new timeline) and accepts connections",
                    "pause" => "paused at the target (pg_wal_replay_resume() to promote)",
                    _ => "shut down at the target",
                }
            ));
        }
        if !running {
            bail!(
                "the server stopped before recovery reached the target (a WAL file missing or damaged stops it here, never a promotion on incomplete WAL); log {}:\n{}",
                log.display(),
                tail(&text, 15)
            );
        }
        if Instant::now() >= until {
            bail!(
                "recovery did not reach the target within {wait_seconds} s; the server runs on (log {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
