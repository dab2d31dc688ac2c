//! `show_reconciliation`: what the agents' maintenance passes found on disk and in the catalog
//! and could not settle (orphan sets, rows whose files are gone, blocked deletions, refused
//! partitions). The agents record it (`sql/62_reconcile.sql`); the shell only lists it.

use anyhow::{Result, bail};
use pgbackman_core::model::{self, Filter};

use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

const KINDS: &[&str] = &["ORPHAN", "MISSING", "BLOCKED", "PARTITION"];

fn filter(v: Option<&str>) -> Option<Vec<String>> {
    match model::parse_filter(v.unwrap_or("")) {
        Filter::All => None,
        Filter::Any(v) => Some(v),
    }
}

pub async fn show_reconciliation(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let server = filter(s.value(inv, "server", Some("all"))?.as_deref());
    let kinds = filter(inv.given("kind")).map(|v| {
        v.into_iter()
            .map(|k| k.trim().to_ascii_uppercase())
            .collect::<Vec<_>>()
    });
    for k in kinds.iter().flatten() {
        if !KINDS.contains(&k.as_str()) {
            bail!(
                "kind \"{k}\" is not valid: use {}, or leave --kind out for all",
                KINDS.join(", ")
            );
        }
    }
    Ok(Output::List {
        kind: "reconciliation",
        rows: s.catalog.show_reconciliation(&server, &kinds).await?,
    })
}
