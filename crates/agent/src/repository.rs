//! Repositories (issue 13) as the agent uses them: the list of `api.agent_repositories`,
//! cached in `<state_dir>/repositories.json` so that a job runs without the catalog as it
//! does for local sets; a repository opened as a `pgbackman_store::Store` with its
//! credentials read on this host (the file the catalog names, else this process's
//! environment) — never sent anywhere, never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgbackman_db::repository::AgentRepository;
use pgbackman_store::{Credentials, Location, Store};

use crate::job::Ctx;

fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("repositories.json")
}

/// The repositories of this server: from the catalog (refreshing the cache), else the cache.
pub async fn list(ctx: &Ctx) -> Result<Vec<AgentRepository>, String> {
    match ctx
        .db(
            "agent_repositories",
            ctx.catalog.agent_repositories(ctx.server_id),
        )
        .await
    {
        Ok(list) => {
            if let Ok(bytes) = serde_json::to_vec(&list)
                && let Err(e) = crate::state::write_atomic(&cache_path(&ctx.cfg.state_dir), &bytes)
            {
                tracing::warn!("cannot cache the repositories: {e:#}");
            }
            Ok(list)
        }
        Err(e) => {
            let cached = std::fs::read(cache_path(&ctx.cfg.state_dir)).map_err(|_| {
                format!("the catalog did not answer ({e}) and no repository list is cached")
            })?;
            serde_json::from_slice(&cached)
                .map_err(|c| format!("the catalog did not answer ({e}) and the cached repository list is unreadable: {c}"))
        }
    }
}

/// Opens repository `id`.
pub async fn open(ctx: &Ctx, id: i64) -> Result<Arc<dyn Store>, String> {
    let list = list(ctx).await?;
    let r = list.iter().find(|r| r.repository_id == id).ok_or_else(|| {
        format!("repository {id} is not among this server's repositories (show_repositories; set_definition_repository)")
    })?;
    open_one(r)
}

/// Opens one repository as the catalog describes it.
pub fn open_one(r: &AgentRepository) -> Result<Arc<dyn Store>, String> {
    let location = match (r.kind.as_str(), &r.path, &r.endpoint, &r.bucket) {
        ("local", Some(p), _, _) => Location::Local { path: p.into() },
        ("s3", _, Some(e), Some(b)) => Location::S3 {
            endpoint: e.clone(),
            bucket: b.clone(),
            prefix: r.prefix.clone(),
            region: r.region.clone(),
        },
        _ => {
            return Err(format!(
                "repository {} is incomplete in the catalog",
                r.name
            ));
        }
    };
    let creds = if r.kind == "s3" {
        Some(
            Credentials::resolve(r.credentials_file.as_deref().map(Path::new))
                .map_err(|e| format!("repository {}: {e}", r.name))?,
        )
    } else {
        None
    };
    pgbackman_store::open(
        &r.name,
        &location,
        creds,
        &pgbackman_store::s3::Limits::default(),
    )
    .map_err(|e| e.to_string())
}
