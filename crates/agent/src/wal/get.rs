//! `pgbackman-agent wal-get --plan FILE %f %p`: the `restore_command` of a point-in-time restore
//! on the backup server (issue 12). It keeps PostgreSQL's exit-code contract (F10): 0 restored;
//! 1 only when the catalog's ledger confirms the file does not exist in this archive (the end
//! of the archive, a history file of a timeline that never existed); any other failure (catalog
//! unreachable for a file the plan does not list, checksum mismatch, decompression or I/O
//! error) is retried a few times, then exits 126, so recovery stops instead of ending early and
//! promoting on incomplete data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use pgbackman_db::Catalog;
use pgbackman_db::pitr::PlannedWal;
use pgbackman_dump::pitr::WalGetPlan;
use pgbackman_dump::pitr::fetch::fetch_wal;

/// Restored.
pub const EXIT_RESTORED: u8 = 0;
/// The catalog (or the plan it wrote) confirms the file is not in the archive.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Anything else, after the retries: PostgreSQL aborts recovery (> 125).
pub const EXIT_ABORT: u8 = 126;
/// Attempts before giving up, and the pause after each failed one.
const ATTEMPTS: u32 = 3;
const PAUSE: Duration = Duration::from_millis(700);
/// The deadline of one catalog question.
const CATALOG_DEADLINE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
#[command(
    about = "restore_command of a point-in-time restore: one WAL file from this backup server's archive",
    long_about = "Delivers one WAL file of the archive of this backup server to PostgreSQL's recovery: finds it in the \
        restore's plan (written by the agent's clone job beside the data directory) or else in the catalog's WAL \
        ledger, decompresses it, checks its SHA-256 against the ledger and writes %p atomically. Exit 0: restored; \
        1: the catalog confirms the file is not in the archive (PostgreSQL reads it as the end of the archive); 126 \
        after 3 attempts for any other failure (catalog unreachable, damaged file, I/O error), so that recovery stops \
        instead of promoting on incomplete WAL. The agent writes this restore_command itself; it changes nothing \
        but %p.",
    after_help = "Example (written by the agent into the clone's postgresql.auto.conf):\n  restore_command = \
        '/usr/bin/pgbackman-agent wal-get --plan /var/lib/pgbackman/clones/before-drop/wal-get.json %f %p'"
)]
pub struct WalGetArgs {
    /// The agent's configuration file (default: the one the plan names, else the agent's).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The restore's plan (JSON written by the clone job).
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Fetch from the backup server's agent named in this wal-push client config instead of
    /// this host's archive (written by `restore-cluster` on another host).
    #[arg(long, value_name = "CONFIG")]
    pub remote: Option<PathBuf>,
    /// The file PostgreSQL asks for (%f).
    #[arg(value_name = "FILE_NAME")]
    pub file: String,
    /// Where to write it (%p, relative to the data directory).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

enum Found {
    Restored(u64),
    Absent,
}

/// The subcommand's whole life: one line on stderr (PostgreSQL's log) per outcome.
pub fn main(a: &WalGetArgs) -> ExitCode {
    if let Some(config) = &a.remote {
        return crate::restore_cluster::wal_get::main(a, config);
    }
    let say = |m: String| {
        let _ = writeln!(std::io::stderr(), "pgbackman-agent wal-get: {m}");
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(format!("cannot start: {e}"));
            return ExitCode::from(EXIT_ABORT);
        }
    };
    let plan = match read_plan(&a.plan) {
        Ok(p) => p,
        Err(e) => {
            say(format!("{e:#}"));
            return ExitCode::from(EXIT_ABORT);
        }
    };
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match rt.block_on(once(a, &plan)) {
            Ok(Found::Restored(n)) => {
                say(format!("{} restored ({n} bytes)", a.file));
                return ExitCode::from(EXIT_RESTORED);
            }
            Ok(Found::Absent) => {
                say(format!(
                    "{} is not in the archive of this backup server (the catalog's WAL ledger has no such file)",
                    a.file
                ));
                return ExitCode::from(EXIT_NOT_FOUND);
            }
            Err(e) => {
                last = format!("{e:#}");
                say(format!(
                    "attempt {attempt} of {ATTEMPTS} for {}: {last}",
                    a.file
                ));
                if attempt < ATTEMPTS {
                    std::thread::sleep(PAUSE * attempt);
                }
            }
        }
    }
    say(format!(
        "giving up on {} after {ATTEMPTS} attempts; recovery stops here instead of ending early (exit {EXIT_ABORT}): {last}",
        a.file
    ));
    ExitCode::from(EXIT_ABORT)
}

fn read_plan(path: &Path) -> Result<WalGetPlan> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "reading the restore's plan {} (written by the clone job; was the clone's directory removed?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&text)
        .with_context(|| format!("the restore's plan {} is not readable", path.display()))
}

/// A name PostgreSQL asks for: a segment or a history file, nothing with a path in it.
fn is_wal_name(name: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    };
    (name.len() == 24 && hex(name))
        || (name.len() == 16 && name.ends_with(".history") && hex(&name[..8]))
}

async fn once(a: &WalGetArgs, plan: &WalGetPlan) -> Result<Found> {
    if !is_wal_name(&a.file) {
        anyhow::bail!(
            "\"{}\" is not a WAL segment or history file name",
            a.file.escape_debug()
        );
    }
    let wal: PlannedWal = match plan.find(&a.file) {
        Some(w) => w.clone(),
        None => match lookup(a, plan).await? {
            Some(w) => w,
            None => return Ok(Found::Absent),
        },
    };
    let dest = a.path.clone();
    let n = tokio::task::spawn_blocking(move || fetch_wal(&wal, &dest))
        .await
        .context("the fetch task")??;
    Ok(Found::Restored(n))
}

/// The catalog's answer for a file the plan does not list.
async fn lookup(a: &WalGetArgs, plan: &WalGetPlan) -> Result<Option<PlannedWal>> {
    let config = a.config.clone().or_else(|| plan.config.clone());
    let file = pgbackman_config::load_agent(config.as_deref())?;
    let (conninfo, _) =
        pgbackman_config::catalog_conninfo(None, std::env::var("PGBACKMAN_CATALOG").ok(), &file)?;
    let cfg = pgbackman_config::resolve_env(&conninfo).context("the catalog connection string")?;
    let target = pgbackman_config::redacted(&cfg);
    let catalog =
        Catalog::lazy_with_deadline(cfg, "pgbackman-agent wal-get", &target, CATALOG_DEADLINE)?;
    let r = catalog
        .within(
            "wal_get_lookup",
            catalog.wal_get_lookup(
                plan.server_id,
                plan.node_id,
                &plan.system_identifier,
                &a.file,
            ),
        )
        .await
        .with_context(|| format!("asking the catalog for {}", a.file))?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wal_names_are_asked_for() {
        assert!(is_wal_name("000000010000000000000003"));
        assert!(is_wal_name("0000000A.history"));
        assert!(!is_wal_name("0000000a.history"));
        assert!(!is_wal_name("../../etc/passwd"));
        assert!(!is_wal_name("000000010000000000000003.partial"));
    }
}
