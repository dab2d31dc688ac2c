//! `pgbackman-agent restore-cluster` (issue 12): a base backup restored to a data directory on
//! another host (PGCHAIN's restore-chain, pghoard_restore), everything fetched from the backup
//! server's agent over its TLS wal-push channel with the node's restore credential (`channel`). The
//! agent plans (`api.pitr_plan` through `api.agent_remote_restore_plan`); the set's files are
//! downloaded into the data directory (checked against the catalog's SHA-256), extracted with
//! `pgbackman_dump::pitr::extract` (members checked against `backup_manifest`, `backup_label`
//! kept), and recovery is set up with `restore_command = '... wal-get --remote ...'`
//! (`wal_get`). A non-empty data directory is refused unless `--replace`, and even then while
//! a postmaster runs there. `start` runs pg_ctl and follows the log to the target.

pub(crate) mod channel;
mod settings;
pub(crate) mod wal_get;

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use pgbackman_db::pitr::PlannedWal;
use pgbackman_dump::pitr::WalGetPlan;
use serde_json::Value;

use crate::wal::push::restore::{RestoreRequest, SET_FILES};
use channel::{Channel, Reply};

/// Beside the data directory's content while it is made (same file system: renamed up).
const FETCH_DIR: &str = ".pgbackman-fetch";
const EXTRACT_DIR: &str = ".pgbackman-extract";
/// The client config unless `--config` says otherwise (same keys as wal-push's).
pub const RESTORE_CONFIG: &str = "/etc/pgbackman/restore.toml";
/// The plan `wal-get --remote` reads, in the data directory.
pub const PLAN_FILE: &str = "pgbackman_wal_get.json";

#[derive(clap::Args, Debug)]
#[command(
    about = "Restore a base backup into a data directory on this host, with recovery to a point (run on the target host)",
    long_about = "Run on the host that gets the data directory (PGCHAIN's restore-chain, pghoard_restore), as the user \
        PostgreSQL runs as. It asks the backup server's agent (the config: agent, ca, and the node's restore credential from \
        create_wal_push_credential --restore) \
        for the plan of the restore (the catalog's api.pitr_plan: the base backup, every WAL segment and history file \
        needed), downloads the base backup set over TLS (each file checked against the catalog's SHA-256), extracts it \
        into --pgdata (each member checked against backup_manifest, backup_label kept exactly), and writes \
        recovery.signal and, at the end of postgresql.auto.conf, the recovery target and \
        restore_command = '<this program> wal-get --remote <config> ...', which fetches each WAL file from the same \
        agent (exit 1 only when the catalog confirms a file does not exist; other failures stop recovery). Archiving is \
        turned off in the restored cluster (archive_mode = off) unless --keep-archiving: a restored copy must not push \
        a new timeline into the node's archive. A non-empty --pgdata is refused unless --replace, and even then while \
        a server runs on it. Without --start it prints the command that starts recovery.",
    after_help = "Config file (default /etc/pgbackman/restore.toml, readable by this user):\n  \
        agent = \"bs01.example.org:7433\"         # the agent's [agent.wal_push] listen\n  \
        ca = \"/etc/pgbackman/wal-push-ca.pem\"   # CA of the agent's certificate\n  \
        credential = \"/etc/pgbackman/restore.credential\"   # create_wal_push_credential SERVER NODE --restore --file F\n\n\
        Examples:\n  \
        pgbackman-agent restore-cluster --bck-id 42 --pgdata /var/lib/postgresql/15/main --target-time '2026-05-01 12:00:00+00' --config /etc/pgbackman/restore.toml\n  \
        pgbackman-agent restore-cluster --pgdata /srv/pg/restored --target-name before_upgrade --target-action promote --port 5433 --start\n  \
        pgbackman-agent restore-cluster --bck-id 42 --pgdata /var/lib/postgresql/15/main --immediate --replace"
)]
#[command(group(clap::ArgGroup::new("target").required(true)
    .args(["target_time", "target_lsn", "target_xid", "target_name", "immediate"])))]
pub struct RestoreClusterArgs {
    /// The client config naming the backup server's agent, its CA and the node's restore
    /// credential, as wal-push's (default /etc/pgbackman/restore.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The base backup (BckID); default: the newest that reaches the target.
    #[arg(long, value_name = "BckID")]
    pub bck_id: Option<i64>,
    /// The data directory to restore into (created 0700, or empty, or --replace).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// Recover up to this time (recovery_target_time).
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Recover up to this LSN.
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover up to this transaction id.
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Recover only to the base backup's consistent point.
    #[arg(long)]
    pub immediate: bool,
    /// latest (default), current (the base backup's) or a timeline number.
    #[arg(long, value_name = "TIMELINE")]
    pub timeline: Option<String>,
    /// What the server does at the target: pause (default), promote or shutdown.
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "promote", "shutdown"], default_value = "pause")]
    pub target_action: String,
    /// Replace what --pgdata holds (refused while a server runs on it).
    #[arg(long)]
    pub replace: bool,
    /// The port the restored server listens on (default: the node's, from its configuration).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Leave archive_mode as the node had it (the restored server then archives as the node did).
    #[arg(long)]
    pub keep_archiving: bool,
    /// Start the server with pg_ctl and wait until recovery reached the target.
    #[arg(long)]
    pub start: bool,
    /// With --start: the directory of pg_ctl (default: found on PATH).
    #[arg(long, value_name = "DIR", requires = "start")]
    pub pg_bin: Option<PathBuf>,
    /// With --start: how long to wait for the target.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 3600,
        requires = "start"
    )]
    pub wait_seconds: u64,
}

/// The subcommand's whole life: 0 done; 1 with one message on stderr.
pub fn main(a: &RestoreClusterArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgbackman-agent restore-cluster: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let t = c.to_string();
                if !msg.contains(&t) {
                    msg = format!("{msg}: {t}");
                }
            }
            eprintln!("pgbackman-agent restore-cluster: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn target(a: &RestoreClusterArgs) -> (&'static str, Option<String>) {
    if let Some(t) = &a.target_time {
        ("time", Some(t.clone()))
    } else if let Some(l) = &a.target_lsn {
        ("lsn", Some(l.clone()))
    } else if let Some(x) = &a.target_xid {
        ("xid", Some(x.clone()))
    } else if let Some(n) = &a.target_name {
        ("name", Some(n.clone()))
    } else {
        ("immediate", None)
    }
}

async fn run(a: &RestoreClusterArgs) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        bail!(
            "run it as the user PostgreSQL runs as (e.g. sudo -u postgres pgbackman-agent restore-cluster ...): PostgreSQL refuses a data directory owned by root"
        );
    }
    let config = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(RESTORE_CONFIG));
    let config = std::path::absolute(&config)?;
    let pgdata = std::path::absolute(&a.pgdata)?;
    check_pgdata(&pgdata, a.replace)?;
    let ch = Channel::open(&config)?;
    let (kind, value) = target(a);
    let say = |m: String| {
        let _ = writeln!(std::io::stdout(), "{m}");
    };

    // The plan, from the catalog through the agent.
    let req = RestoreRequest {
        op: "plan".into(),
        bck_id: a.bck_id,
        kind: Some(kind.into()),
        value: value.clone(),
        timeline: a.timeline.clone(),
        ..Default::default()
    };
    let plan = match ch.ask(req, None).await? {
        Reply::Answer(r) if r.ok && r.plan.is_some() => r.plan.unwrap_or_default(),
        Reply::Answer(r) => bail!(
            "the backup server's agent {} refused the restore: {}",
            ch.cfg.agent,
            r.message
        ),
        Reply::Data { .. } => bail!("the agent {} sent data for a plan", ch.cfg.agent),
    };
    let bck = plan["bck_id"]
        .as_i64()
        .context("the plan names no base backup")?;
    say(format!(
        "Plan: BckID {bck} of {} on {} (timeline {}, consistent at {}), {} WAL segment(s) and {} history file(s) to timeline {} (lineage {}), {} bytes to fetch.",
        plan["node"].as_str().unwrap_or("?"),
        plan["backup_server"].as_str().unwrap_or("?"),
        plan["base_timeline"],
        plan["stop_lsn"].as_str().unwrap_or("?"),
        plan["wal_segments"],
        plan["history_files"],
        plan["timeline"],
        plan["lineage"]
            .as_array()
            .map(|l| l
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" ← "))
            .unwrap_or_default(),
        plan["fetch_bytes"]
    ));

    // The set's files, into the data directory (same file system as the result).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&pgdata)
        .with_context(|| format!("creating {}", pgdata.display()))?;
    let fetch = pgdata.join(FETCH_DIR);
    let _ = std::fs::remove_dir_all(&fetch);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&fetch)
        .with_context(|| format!("creating {}", fetch.display()))?;
    let listed: Vec<String> = plan["set_files"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for name in SET_FILES {
        if !listed.iter().any(|l| l == name) {
            continue;
        }
        let req = RestoreRequest {
            op: "base".into(),
            bck_id: Some(bck),
            name: Some(name.into()),
            ..Default::default()
        };
        match ch.ask(req, Some(&fetch.join(name))).await {
            Ok(Reply::Data { answer, .. }) => say(format!(
                "Fetched {name} ({} bytes, SHA-256 checked).",
                answer.size.unwrap_or(0)
            )),
            Ok(Reply::Answer(r)) => {
                let _ = std::fs::remove_dir_all(&fetch);
                bail!("fetching {name} of BckID {bck}: {}", r.message);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&fetch);
                return Err(e.context(format!("fetching {name} of BckID {bck}")));
            }
        }
    }
    if a.replace {
        clear_except(&pgdata, FETCH_DIR)?;
    }
    let into = pgdata.join(EXTRACT_DIR);
    let _ = std::fs::remove_dir_all(&into);
    let (f2, i2) = (fetch.clone(), into.clone());
    let done = tokio::task::spawn_blocking(move || {
        pgbackman_dump::pitr::extract::extract_base(&f2, &i2, &|_| {})
    })
    .await
    .context("the extract task")?;
    let _ = std::fs::remove_dir_all(&fetch);
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&into);
            bail!(
                "{e} ({} is left as it was before the extract)",
                pgdata.display()
            );
        }
    };
    for e in std::fs::read_dir(&into)? {
        let e = e?;
        let to = pgdata.join(e.file_name());
        std::fs::rename(e.path(), &to).with_context(|| format!("moving into {}", to.display()))?;
    }
    std::fs::remove_dir(&into)?;
    say(format!(
        "Extracted {} files ({} bytes, {} checked against backup_manifest) into {}.",
        done.files,
        done.bytes,
        done.checked,
        pgdata.display()
    ));

    // What wal-get --remote reads, and the recovery settings.
    let files: Vec<PlannedWal> = ["wal", "history"]
        .iter()
        .flat_map(|k| plan[*k].as_array().cloned().unwrap_or_default())
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .context("the plan's WAL list is not readable")?;
    let wg = WalGetPlan {
        server_id: plan["backup_server_id"].as_i64().unwrap_or_default(),
        node_id: ch.node_id(),
        system_identifier: plan["system_identifier"]
            .as_str()
            .unwrap_or_default()
            .into(),
        config: None,
        files,
    };
    let plan_file = pgdata.join(PLAN_FILE);
    std::fs::write(&plan_file, serde_json::to_vec_pretty(&wg)?)
        .with_context(|| format!("writing {}", plan_file.display()))?;
    let exe = std::env::current_exe().context("this program's path")?;
    let restore_command = format!(
        "{} wal-get --remote {} --plan {} %f %p",
        pgbackman_dump::pitr::recovery::sh_quote(&exe.display().to_string()),
        pgbackman_dump::pitr::recovery::sh_quote(&config.display().to_string()),
        pgbackman_dump::pitr::recovery::sh_quote(&plan_file.display().to_string())
    );
    let s = settings::Settings {
        restore_command: restore_command.clone(),
        kind,
        value,
        timeline: timeline_setting(&plan),
        action: a.target_action.clone(),
        port: a.port,
        keep_archiving: a.keep_archiving,
    };
    settings::write(&pgdata, &s)
        .with_context(|| format!("writing the recovery settings into {}", pgdata.display()))?;
    say(format!(
        "Recovery is set up: recovery.signal, and at the end of postgresql.auto.conf the target ({kind}{}), \
         recovery_target_timeline = {}, recovery_target_action = {}, restore_command = {restore_command}{}.",
        s.value
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        s.timeline,
        s.action,
        if a.keep_archiving {
            ""
        } else {
            ", archive_mode = off (remove that line once the restored server is to archive)"
        }
    ));
    let log = pgdata.join("pgbackman_restore.log");
    if !a.start {
        say(format!(
            "Next, as this user: pg_ctl -D {} -l {} start   (recovery then fetches the WAL from {})",
            pgbackman_dump::pitr::recovery::sh_quote(&pgdata.display().to_string()),
            pgbackman_dump::pitr::recovery::sh_quote(&log.display().to_string()),
            ch.cfg.agent
        ));
        return Ok(());
    }
    let reached = settings::start_and_wait(
        &pgdata,
        &log,
        a.pg_bin.as_deref(),
        &a.target_action,
        a.wait_seconds,
    )
    .await?;
    say(reached);
    Ok(())
}

/// `recovery_target_timeline`: the timeline the plan checked (a number), so that a newer
/// timeline arriving in the archive later does not change what this restore follows.
fn timeline_setting(plan: &Value) -> String {
    plan["timeline"]
        .as_i64()
        .map_or_else(|| "latest".to_string(), |t| t.to_string())
}

/// Refuses a data directory that holds something (unless `replace`) or that a live
/// postmaster uses (always).
fn check_pgdata(pgdata: &Path, replace: bool) -> Result<()> {
    let entries = match std::fs::read_dir(pgdata) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("{} cannot be read: {e}", pgdata.display()),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != FETCH_DIR && n != EXTRACT_DIR)
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    if let Some(pid) = live_postmaster(pgdata) {
        bail!(
            "a PostgreSQL server (PID {pid}, postmaster.pid) runs on {}: stop it first (pg_ctl -D {} stop); nothing was changed",
            pgdata.display(),
            pgdata.display()
        );
    }
    if !replace {
        bail!(
            "{} is not empty ({}{}): give an empty or new directory, or --replace to replace its content (the server there must be stopped); nothing was changed",
            pgdata.display(),
            names.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if names.len() > 3 { ", ..." } else { "" }
        );
    }
    Ok(())
}

/// The PID of postmaster.pid when that process is alive.
fn live_postmaster(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // EPERM: alive, another user's (the postgres server of another account).
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

/// Removes everything in `dir` but `keep`.
fn clear_except(dir: &Path, keep: &str) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == keep {
            continue;
        }
        let p = e.path();
        let r = if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("removing {} (--replace)", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_taken_only_when_empty_or_replaced_and_never_while_a_server_runs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data");
        check_pgdata(&p, false).unwrap();
        std::fs::create_dir(&p).unwrap();
        check_pgdata(&p, false).unwrap();
        // A leftover of an interrupted run counts as empty.
        std::fs::create_dir(p.join(FETCH_DIR)).unwrap();
        check_pgdata(&p, false).unwrap();
        std::fs::write(p.join("PG_VERSION"), "15\n").unwrap();
        let e = check_pgdata(&p, false).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("PG_VERSION"), "{e}");
        check_pgdata(&p, true).unwrap();
        // A stale postmaster.pid (no such process) does not stop --replace; a live one does.
        std::fs::write(p.join("postmaster.pid"), "999999999\n/x\n").unwrap();
        check_pgdata(&p, true).unwrap();
        std::fs::write(
            p.join("postmaster.pid"),
            format!("{}\n/x\n", std::process::id()),
        )
        .unwrap();
        let e = check_pgdata(&p, true).unwrap_err().to_string();
        assert!(
            e.contains("runs on") && e.contains("nothing was changed"),
            "{e}"
        );
        clear_except(&p, FETCH_DIR).unwrap();
        let left: Vec<_> = std::fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(FETCH_DIR)]);
    }

    #[test]
    fn the_settings_quote_for_postgresql() {
        let d = tempfile::tempdir().unwrap();
        let s = settings::Settings {
            restore_command: "'/usr/bin/pgbackman-agent' wal-get %f %p".into(),
            kind: "name",
            value: Some("it's".into()),
            timeline: "2".into(),
            action: "promote".into(),
            port: Some(5433),
            keep_archiving: false,
        };
        settings::write(d.path(), &s).unwrap();
        let conf = std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap();
        assert!(conf.contains("recovery_target_name = 'it''s'"), "{conf}");
        assert!(
            conf.contains("restore_command = '''/usr/bin/pgbackman-agent'' wal-get %f %p'"),
            "{conf}"
        );
        assert!(conf.contains("archive_mode = 'off'") && conf.contains("port = '5433'"));
        assert!(d.path().join("recovery.signal").exists());
    }
}
