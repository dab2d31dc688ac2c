//! What the shell says when it queues work for a backup server whose agent the catalog has not
//! seen for the server's threshold (or ever): the job waits until that agent runs. Printed as a
//! `[WARNING]` on stderr (stdout stays the command's output, e.g. JSON). Best effort: a failed
//! look-up says nothing.

use crate::session::Session;

fn warn(w: Option<String>) {
    if let Some(w) = w {
        eprintln!("[WARNING] {}", crate::render::safe(&w));
    }
}

/// After queuing job `job_id`.
pub async fn after_job(s: &Session, job_id: i64) {
    warn(s.catalog.job_agent_warning(job_id).await.ok().flatten());
}

/// After registering work for `server` (SrvID or FQDN).
pub async fn after_server(s: &Session, server: &str) {
    warn(s.catalog.server_agent_warning(server).await.ok().flatten());
}

/// ", in Europe/Oslo (the agent's zone)": where a schedule of `server` fires.
pub async fn zone_note(s: &Session, server: &str) -> String {
    match s.catalog.agent_zone(server).await {
        Ok(z) if z == "agent zone unknown" => {
            ", in the agent's zone (unknown until its agent is seen)".into()
        }
        Ok(z) => format!(", in {z} (the agent's zone)"),
        Err(_) => String::new(),
    }
}
