//! `show_alerts` and `retry_alerts`: what was (or could not be) mailed, and queueing the
//! undelivered ones again.

use anyhow::{Context, Result, bail};
use pgbackman_core::model::{self, Filter};

use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

const STATES: &[&str] = &["QUEUED", "SENT", "FAILED", "EXPIRED"];
const TYPES: &[&str] = &[
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
];

fn filter(v: Option<&str>) -> Option<Vec<String>> {
    match model::parse_filter(v.unwrap_or("")) {
        Filter::All => None,
        Filter::Any(v) => Some(v),
    }
}

/// Upper-cased values, each one of `valid`.
fn choices(what: &str, v: Option<Vec<String>>, valid: &[&str]) -> Result<Option<Vec<String>>> {
    let v = v.map(|v| {
        v.into_iter()
            .map(|x| x.to_ascii_uppercase())
            .collect::<Vec<_>>()
    });
    for x in v.iter().flatten() {
        if !valid.contains(&x.as_str()) {
            bail!(
                "{what} \"{x}\" is not valid: use {}, or all",
                valid.join(", ")
            );
        }
    }
    Ok(v)
}

pub async fn show_alerts(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let server = filter(s.value(inv, "server", Some("all"))?.as_deref());
    let node = filter(s.value(inv, "node", Some("all"))?.as_deref());
    let states = choices(
        "state",
        filter(s.value(inv, "state", Some("all"))?.as_deref()),
        STATES,
    )?;
    let types = choices("alert type", filter(inv.given("type")), TYPES)?;
    let limit = match inv.given("limit") {
        Some(l) => l
            .trim()
            .parse()
            .ok()
            .filter(|n: &i64| *n > 0)
            .with_context(|| format!("--limit \"{l}\" is not a positive number"))?,
        None => 1000,
    };
    Ok(Output::List {
        kind: "alerts",
        rows: s
            .catalog
            .show_alerts(&server, &node, &states, &types, limit)
            .await?,
    })
}

pub async fn retry_alerts(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let which = s.required(inv, "alerts", None)?;
    let ids = match filter(Some(&which)) {
        None => None,
        Some(v) => Some(
            v.iter()
                .map(|i| {
                    i.trim()
                        .parse::<i64>()
                        .with_context(|| format!("AlertID \"{i}\" is not a number"))
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    let question = match &ids {
        None => "Queue every FAILED or EXPIRED alert for mailing again?".to_string(),
        Some(v) => format!(
            "Queue alert(s) {} for mailing again?",
            v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ),
    };
    s.confirm(&question)?;
    let n = s.catalog.retry_alerts(&s.audit(), ids.as_deref()).await?;
    Ok(Output::Done(vec![if n == 0 {
        "No FAILED or EXPIRED alert to queue again (show_alerts all all FAILED,EXPIRED lists them)."
            .into()
    } else {
        format!("{n} alert(s) queued for mailing again; the agents mail them at their next round.")
    }]))
}
