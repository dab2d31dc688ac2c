//! The clone lifecycle (issue 12, part E): `start_clone`, `stop_clone`, `delete_clone`. The
//! catalog decides (sql/90_clone_lifecycle.sql) and the agent of the clone's backup server
//! acts; this asks for confirmation and words the outcome.

use anyhow::Result;

use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

pub fn handles(name: &str) -> bool {
    matches!(name, "start_clone" | "stop_clone" | "delete_clone")
}

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let clone = s.required(inv, "clone", None)?;
    let clone = clone.trim().to_string();
    let msg = match inv.cmd.name {
        "start_clone" => s.catalog.start_clone(&s.audit(), &clone).await?,
        "stop_clone" => {
            s.confirm(&format!(
                "Stop clone {clone}? Sessions on it are disconnected; its data directory stays (start_clone starts it again)."
            ))?;
            s.catalog.stop_clone(&s.audit(), &clone).await?
        }
        _ => {
            s.confirm(&format!(
                "Delete clone {clone}? Its server is stopped and its data directory removed; this cannot be undone."
            ))?;
            s.catalog.delete_clone(&s.audit(), &clone).await?
        }
    };
    Ok(Output::Done(vec![format!("{msg}.")]))
}
