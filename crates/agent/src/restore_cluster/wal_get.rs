//! `pgbackman-agent wal-get --remote CONFIG --plan FILE %f %p`: the restore_command that
//! `restore-cluster` writes on another host. It asks the backup server's agent for the file
//! (over the wal-push channel, with the node's restore credential) and keeps the exit-code contract of
//! the local mode: 0 restored; 1 only when the agent says the catalog's ledger confirms the
//! file is not in the archive; anything else (agent unreachable, damaged transfer, checksum or
//! decompression failure, the catalog not answering) is retried, then exits 126 so that
//! recovery stops instead of promoting on incomplete WAL.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgbackman_dump::pitr::WalGetPlan;
use pgbackman_dump::pitr::fetch::fetch_wal;

use super::channel::{Channel, Reply};
use crate::wal::get::{EXIT_ABORT, EXIT_NOT_FOUND, EXIT_RESTORED, WalGetArgs};
use crate::wal::push::restore::{RestoreRequest, is_wal_name};

const ATTEMPTS: u32 = 3;
const PAUSE: Duration = Duration::from_millis(700);

enum Found {
    Restored(u64),
    Absent(String),
}

/// The remote mode's whole life: one line on stderr (PostgreSQL's log) per outcome.
pub fn main(a: &WalGetArgs, config: &Path) -> ExitCode {
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
    let setup = (|| -> Result<(Channel, WalGetPlan)> {
        let ch = Channel::open(config)?;
        let text = std::fs::read(&a.plan).with_context(|| {
            format!(
                "reading the restore's plan {} (written by restore-cluster into the data directory)",
                a.plan.display()
            )
        })?;
        let plan: WalGetPlan = serde_json::from_slice(&text)
            .with_context(|| format!("the restore's plan {} is not readable", a.plan.display()))?;
        if plan.node_id != ch.node_id() {
            bail!(
                "the plan {} restores NodeID {}, the credential of {} is NodeID {}'s",
                a.plan.display(),
                plan.node_id,
                config.display(),
                ch.node_id()
            );
        }
        Ok((ch, plan))
    })();
    let (ch, plan) = match setup {
        Ok(x) => x,
        Err(e) => {
            say(format!("{e:#}"));
            return ExitCode::from(EXIT_ABORT);
        }
    };
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match rt.block_on(once(&ch, &plan, &a.file, &a.path)) {
            Ok(Found::Restored(n)) => {
                say(format!(
                    "{} restored ({n} bytes) from {}",
                    a.file, ch.cfg.agent
                ));
                return ExitCode::from(EXIT_RESTORED);
            }
            Ok(Found::Absent(why)) => {
                say(why);
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

async fn once(ch: &Channel, plan: &WalGetPlan, name: &str, dest: &Path) -> Result<Found> {
    if !is_wal_name(name) {
        bail!(
            "\"{}\" is not a WAL segment or history file name",
            name.escape_debug()
        );
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(".{name}.pgbackman-remote"));
    let req = RestoreRequest {
        op: "wal".into(),
        name: Some(name.into()),
        system_identifier: Some(plan.system_identifier.clone()),
        ..Default::default()
    };
    let r = ch.ask(req, Some(&tmp)).await;
    let result = match r {
        Err(e) => Err(e),
        Ok(Reply::Answer(a)) if a.outcome == "absent" => Ok(Found::Absent(a.message)),
        Ok(Reply::Answer(a)) => Err(anyhow::anyhow!("{} ({})", a.message, a.outcome)),
        Ok(Reply::Data { answer, .. }) => (|| {
            let Some(mut w) = answer.wal else {
                bail!("the agent sent {name} without its ledger record");
            };
            // A file the plan lists must be the one planned (the same content).
            if let Some(p) = plan.find(name)
                && (p.sha256 != w.sha256 || p.size != w.size)
            {
                bail!(
                    "the agent's {name} (SHA-256 {}) is not the one planned ({}): the archive changed since restore-cluster ran",
                    w.sha256,
                    p.sha256
                );
            }
            w.stored_path = tmp.display().to_string();
            Ok(Found::Restored(fetch_wal(&w, dest)?))
        })(),
    };
    let _ = std::fs::remove_file(&tmp);
    result
}
