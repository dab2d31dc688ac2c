//! `pgbackman db import-pgbackman CONNINFO [--dry-run]`: brings a PgBackMan 1.x catalog over.
//! The reads and writes are `pgbackman_db::import`, the decisions `pgbackman_core::import`;
//! this module connects, checks the old backups' files on this host and prints the report.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgbackman_core::model::OutputFormat;
use pgbackman_db::import::ImportReport;
use pgbackman_db::{Audit, Catalog, Rows, Value};

use crate::render::{Output, render};

/// The newest PgBackMan catalog schema this import knows (`pgbackman_4.sql`, 1.3.0 work).
const NEWEST_OLD_SCHEMA: i32 = 4;
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connection to the PgBackMan 1.x catalog: libpq key=value string or postgresql:// URI
    /// (e.g. 'host=old-db dbname=pgbackman user=pgbackman_role_rw'; a password belongs in a
    /// pgpass file).
    #[arg(value_name = "CONNINFO")]
    pub source: String,
    /// Show what would be imported and every value that cannot be carried over, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the import against the catalog `cfg` / `target`.
pub async fn run(
    args: &Args,
    cfg: pgbackman_config::ConnConfig,
    target: &str,
    format: OutputFormat,
) -> Result<ExitCode> {
    let old_cfg = pgbackman_config::resolve_env(&args.source)
        .context("the PgBackMan catalog connection string")?;
    let old_target = pgbackman_config::redacted(&old_cfg);
    if old_cfg.get_password().is_some() {
        eprintln!(
            "[WARNING] a password given on the command line is visible to every user of this host; use a pgpass file"
        );
    }
    let mut old = tokio::time::timeout(
        CONNECT_DEADLINE,
        pgbackman_db::connect_once(&old_cfg, &old_target),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the PgBackMan catalog {old_target} did not answer within {} s; check its address and that it runs",
            CONNECT_DEADLINE.as_secs()
        )
    })??;
    let old_catalog = pgbackman_db::import::read(&mut old, &old_target).await?;
    if old_catalog.version > NEWEST_OLD_SCHEMA {
        bail!(
            "the PgBackMan catalog {old_target} has schema version {}, newer than this import knows (1 to {NEWEST_OLD_SCHEMA})\nHINT: report it with the output of `select * from pgbackman_version`",
            old_catalog.version
        );
    }
    let catalog = Catalog::connect(cfg, "pgbackman", target).await?;
    catalog
        .check_compatible()
        .await
        .with_context(|| format!("catalog {target}"))?;
    let audit = Audit {
        os_user: crate::os_user(),
        command: format!(
            "db import-pgbackman {old_target}{}",
            if args.dry_run { " --dry-run" } else { "" }
        ),
    };
    // The old backups are files on the backup servers' disks: they are looked for on this host.
    // A file this user may not look at is not a missing file: that stops the import.
    let mut found = std::collections::HashSet::new();
    for b in &old_catalog.backups {
        for f in b.backup.dump_files.iter().chain(&b.backup.log_files) {
            match std::fs::metadata(f) {
                Ok(_) => {
                    found.insert(f.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!(
                    "cannot tell whether {f} (PgBackMan BckID {}) exists: {e}\nHINT: run the import as a user that can read the backup partition (the pgbackman user, or root)",
                    b.backup.bck_id
                ),
            }
        }
    }
    let present = |p: &str| found.contains(p);
    let report = catalog
        .import_pgbackman(&audit, &old_catalog, &present, args.dry_run)
        .await?;
    print!("{}", render(&findings(&report), format));
    if format != OutputFormat::Json {
        for line in summary(&report, &old_target, target) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn findings(r: &ImportReport) -> Output {
    let rows = Rows {
        columns: ["Object", "Field", "Old value", "What happens"]
            .map(String::from)
            .to_vec(),
        rows: r
            .findings
            .iter()
            .map(|f| {
                vec![
                    Value::Text(f.object.clone()),
                    Value::Text(f.field.clone()),
                    Value::Text(f.old_value.clone()),
                    Value::Text(f.outcome.clone()),
                ]
            })
            .collect(),
    };
    Output::List {
        kind: "import",
        rows,
    }
}

fn summary(r: &ImportReport, from: &str, to: &str) -> Vec<String> {
    let mut out = Vec::new();
    let order = [
        "backup servers",
        "PgSQL nodes",
        "backup definitions",
        "snapshots",
        "catalog rows",
    ];
    for (kind, c) in order.iter().filter_map(|k| r.counts.get(k).map(|c| (k, c))) {
        let verb = if r.dry_run {
            "would import"
        } else {
            "imported"
        };
        out.push(format!(
            "{kind}: {verb} {}, already imported {}, not imported {}",
            c.imported, c.already, c.skipped
        ));
    }
    let new: usize = r.counts.values().map(|c| c.imported).sum();
    if r.dry_run {
        out.push(format!(
            "[DRY RUN] Nothing was changed in {to}. Run the same command without --dry-run to import from {from}."
        ));
    } else if new == 0 {
        out.push(format!(
            "[DONE] Nothing new to import from {from}: everything it holds was imported before or is listed above as not imported."
        ));
    } else {
        out.push(format!(
            "[DONE] Imported from {from} into {to} in one transaction. Running the import again imports only what is new or was not imported."
        ));
    }
    out
}
