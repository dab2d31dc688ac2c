//! Verification commands: `verify_backup` (levels 1 and 2 on demand, by BckID or by the filters
//! of show_backup_catalog), `run_restore_drill`, `update_drill_schedule`, `show_verifications`.
//! The agent holding each set runs the jobs; results land in the catalog.

use anyhow::{Context, Result, bail};
use pgbackman_core::model::{self, Filter};
use pgbackman_db::{CatalogFilter, Value};

use crate::commands::{filter, list, time_arg, validate_schedule};
use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    match inv.cmd.name {
        "verify_backup" => verify_backup(s, inv).await,
        "run_restore_drill" => run_restore_drill(s, inv).await,
        "update_drill_schedule" => update_drill_schedule(s, inv).await,
        "show_verifications" => show_verifications(s, inv).await,
        other => bail!("{other} is not a verification command"),
    }
}

fn bck_id(v: &str) -> Result<i64> {
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("BckID \"{}\" is not a number", v.trim()))
}

fn limit(inv: &Invocation) -> Result<i64> {
    match inv.given("limit") {
        Some(l) => l
            .trim()
            .parse()
            .ok()
            .filter(|n: &i64| *n > 0)
            .with_context(|| format!("--limit \"{l}\" is not a positive number")),
        None => Ok(1000),
    }
}

/// The backups to verify: the BckIDs given, or the SUCCEEDED backups the filters select
/// (newest first, --limit, default 1000).
async fn selected_backups(s: &mut Session, inv: &Invocation) -> Result<Vec<i64>> {
    let which = s.required(inv, "bck_id", Some("all"))?;
    let filtered = ["server", "node", "dbname", "def-id", "code", "from", "to"]
        .iter()
        .any(|k| inv.given(k).is_some());
    if let Filter::Any(ids) = model::parse_filter(&which) {
        if filtered {
            bail!(
                "give BckIDs or filters, not both\nHINT: verify_backup all --node pg01.example.org selects by filter"
            );
        }
        return ids.iter().map(|i| bck_id(i)).collect();
    }
    let upper =
        |v: Option<Vec<String>>| v.map(|v| v.into_iter().map(|x| x.to_ascii_uppercase()).collect());
    let f = CatalogFilter {
        server: filter(inv.given("server").map(str::to_string)),
        node: filter(inv.given("node").map(str::to_string)),
        dbname: filter(inv.given("dbname").map(str::to_string)),
        def_ids: filter(inv.given("def-id").map(str::to_string))
            .map(|v| {
                v.iter()
                    .map(|i| {
                        i.trim()
                            .parse::<i64>()
                            .with_context(|| format!("DefID \"{i}\" is not a number"))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?,
        status: Some(vec!["SUCCEEDED".into()]),
        code: upper(filter(inv.given("code").map(str::to_string))),
        from: time_arg("from", inv.given("from"))?,
        to: time_arg("to", inv.given("to"))?,
        encrypted_with: None,
        limit: limit(inv)?,
    };
    let rows = s.catalog.show_backup_catalog(&f).await?;
    Ok((0..rows.len())
        .filter_map(|i| match rows.get(i, "BckID") {
            Some(Value::Int(id)) => Some(*id),
            _ => None,
        })
        .collect())
}

async fn verify_backup(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let ids = selected_backups(s, inv).await?;
    if ids.is_empty() {
        bail!(
            "no SUCCEEDED backup matches\nHINT: show_backup_catalog all all all all SUCCEEDED lists the backups that can be verified"
        );
    }
    s.confirm(&format!(
        "Verify {} backup(s) (checksums and archive)?",
        ids.len()
    ))?;
    let queued = s.catalog.queue_verifications(&s.audit(), &ids).await?;
    let mut out: Vec<String> = if queued.len() <= 20 {
        queued
            .iter()
            .map(|q| {
                if q.created {
                    format!(
                        "Verification of BckID {} queued as JobID {}.",
                        q.bck_id, q.job_id
                    )
                } else {
                    format!(
                        "BckID {} is already being verified by JobID {}.",
                        q.bck_id, q.job_id
                    )
                }
            })
            .collect()
    } else {
        vec![format!(
            "{} verification job(s) queued (JobIDs {} to {}).",
            queued.iter().filter(|q| q.created).count(),
            queued.iter().map(|q| q.job_id).min().unwrap_or(0),
            queued.iter().map(|q| q.job_id).max().unwrap_or(0)
        )]
    };
    out.push("The agents holding the sets run them; show_verifications and show_backup_catalog show the results.".into());
    Ok(Output::Done(out))
}

async fn run_restore_drill(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let id = bck_id(&s.required(inv, "bck_id", None)?)?;
    let node = inv.given("node").map(str::trim).filter(|n| !n.is_empty());
    s.confirm(&format!(
        "Restore BckID {id} as a drill (a logical set into a scratch database on {}, row counts compared; \
         a base backup into a scratch instance on its backup server, recovered to a random point, pg_amcheck)?",
        node.unwrap_or("the backup server's drill node")
    ))?;
    let (job, fqdn) = s.catalog.run_restore_drill(&s.audit(), id, node).await?;
    Ok(Output::Done(vec![match fqdn {
        Some(fqdn) => format!(
            "Restore drill of BckID {id} queued as JobID {job} on drill node {fqdn}; show_verifications {id} shows the result."
        ),
        None => format!(
            "Restore drill of base backup BckID {id} queued as JobID {job} on its backup server (a scratch instance, \
             removed after the check); show_verifications {id} shows the result."
        ),
    }]))
}

async fn update_drill_schedule(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let def_id: i64 = s
        .required(inv, "def_id", None)?
        .trim()
        .parse()
        .ok()
        .filter(|n: &i64| *n > 0)
        .context("DefID must be a number")?;
    let line = s.required(inv, "schedule", None)?;
    let line = line.trim();
    let schedule = if line.is_empty() || line.eq_ignore_ascii_case("none") {
        None
    } else {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Ok(f): Result<[&str; 5], _> = fields.try_into() else {
            bail!(
                "drill schedule \"{line}\" is not a cron line of 5 fields\nHINT: minute hour day-of-month month day-of-week, e.g. \"30 5 * * 0\" (Sundays at 05:30), or none"
            );
        };
        Some(validate_schedule(f)?)
    };
    let text = schedule.as_ref().map(|c| c.to_line());
    s.catalog
        .update_drill_schedule(&s.audit(), def_id, text.as_deref())
        .await?;
    Ok(Output::Done(vec![match &schedule {
        Some(c) => format!(
            "Drills of DefID {def_id}: {} ({}): the newest successful backup, restored on the backup server's drill node.",
            crate::wording::schedule_text(&c.to_line()),
            crate::wording::sentence_part(&c.describe())
        ),
        None => format!("Drills of DefID {def_id}: none scheduled."),
    }]))
}

async fn show_verifications(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let which = s.value(inv, "bck_id", Some("all"))?;
    let id = match which.as_deref().map(str::trim) {
        None | Some("all" | "*" | "") => None,
        Some(v) => Some(bck_id(v)?),
    };
    list(
        "verifications",
        s.catalog.show_verifications(id, limit(inv)?).await,
    )
}
