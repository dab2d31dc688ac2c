//! The configuration the agent runs with: the backup server's values in the catalog
//! (`root_backup_partition`, `max_concurrent_jobs`, `pgsql_bin_dir`) count, unless the agent's
//! file sets the matching key (`backup_dir`, `max_jobs`, `bin_dirs`); without either, the
//! built-in default. Every value carries its source, which the heartbeat reports to the catalog
//! and `show_backup_server_config` shows.
//!
//! The catalog's values are cached in `<state_dir>/server_config.json` like the definitions, so
//! an agent that starts while the catalog is down runs with what it last read. A change in the
//! catalog reaches a running agent at its next refresh (NOTIFY or re-poll).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgbackman_config::AgentSection;
use serde_json::{Value, json};

use crate::job::Ctx;

pub const CATALOG: &str = "catalog";
pub const AGENT_FILE: &str = "agent file";
pub const DEFAULT: &str = "default";

/// The values that may change while the agent runs, and where each comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub backup_dir: PathBuf,
    pub max_jobs: usize,
    pub bin_dirs: BTreeMap<u32, PathBuf>,
    /// `{"parameter": {"value": ..., "source": ...}}`, as reported with the heartbeat.
    pub report: Value,
}

fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("server_config.json")
}

/// The catalog's values as last read (none: never read).
pub fn load_cache(state_dir: &Path) -> Option<BTreeMap<String, String>> {
    std::fs::read(cache_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn save_cache(state_dir: &Path, values: &BTreeMap<String, String>) {
    let r = serde_json::to_vec_pretty(values)
        .map_err(anyhow::Error::from)
        .and_then(|b| crate::state::write_atomic(&cache_path(state_dir), &b));
    if let Err(e) = r {
        tracing::warn!("writing the server configuration cache: {e:#}");
    }
}

/// The client bin dirs a `pgsql_bin_dir` value names: with `{major}`, every major whose
/// directory holds pg_dump; without, the one directory, under the major of its pg_dump.
fn expand_bin_dir(template: &str) -> BTreeMap<u32, PathBuf> {
    let mut out = BTreeMap::new();
    if template.contains("{major}") {
        for m in 9..=40u32 {
            let dir = PathBuf::from(template.replace("{major}", &m.to_string()));
            if dir.join("pg_dump").exists() {
                out.insert(m, dir);
            }
        }
    } else {
        let dir = PathBuf::from(template);
        if let Ok(m) = pgbackman_dump::client_major(&dir) {
            out.insert(m, dir);
        }
    }
    out
}

fn entry(value: impl Into<String>, source: &str) -> Value {
    json!({"value": value.into(), "source": source})
}

/// The effective values from the file and the catalog's values (`None`: never read).
pub fn resolve(
    file: &AgentSection,
    catalog: Option<&BTreeMap<String, String>>,
) -> Result<Live, String> {
    let from_catalog = |k: &str| {
        catalog
            .and_then(|c| c.get(k))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut report = serde_json::Map::new();

    let backup_dir = if file.from_file.contains("backup_dir") {
        report.insert(
            "root_backup_partition".into(),
            entry(file.backup_dir.display().to_string(), AGENT_FILE),
        );
        file.backup_dir.clone()
    } else if let Some(v) = from_catalog("root_backup_partition").filter(|v| v.starts_with('/')) {
        report.insert("root_backup_partition".into(), entry(v.clone(), CATALOG));
        PathBuf::from(v)
    } else {
        report.insert(
            "root_backup_partition".into(),
            entry(file.backup_dir.display().to_string(), DEFAULT),
        );
        file.backup_dir.clone()
    };

    let max_jobs = if file.from_file.contains("max_jobs") {
        report.insert(
            "max_concurrent_jobs".into(),
            entry(file.max_jobs.to_string(), AGENT_FILE),
        );
        file.max_jobs
    } else if let Some(n) = from_catalog("max_concurrent_jobs")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        report.insert("max_concurrent_jobs".into(), entry(n.to_string(), CATALOG));
        n
    } else {
        report.insert(
            "max_concurrent_jobs".into(),
            entry(file.max_jobs.to_string(), DEFAULT),
        );
        file.max_jobs
    };

    let listed = |dirs: &BTreeMap<u32, PathBuf>| {
        dirs.iter()
            .map(|(m, d)| format!("{m}={}", d.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bin_dirs = if file.from_file.contains("bin_dirs") && !file.bin_dirs.is_empty() {
        let dirs = file.client_bin_dirs().map_err(|e| e.to_string())?;
        report.insert("pgsql_bin_dir".into(), entry(listed(&dirs), AGENT_FILE));
        dirs
    } else {
        let found = from_catalog("pgsql_bin_dir").map(|t| (expand_bin_dir(&t), t));
        match found {
            Some((dirs, t)) if !dirs.is_empty() => {
                report.insert("pgsql_bin_dir".into(), entry(t, CATALOG));
                dirs
            }
            other => {
                if let Some((_, t)) = other {
                    tracing::warn!(
                        "the catalog's pgsql_bin_dir {t} holds no pg_dump on this host: using the client programs found under /usr/lib/postgresql\nHINT: correct it with update_backup_server_config, or set [agent] bin_dirs"
                    );
                }
                let dirs = file.client_bin_dirs().map_err(|e| e.to_string())?;
                report.insert("pgsql_bin_dir".into(), entry(listed(&dirs), DEFAULT));
                dirs
            }
        }
    };
    Ok(Live {
        backup_dir,
        max_jobs,
        bin_dirs,
        report: Value::Object(report),
    })
}

/// Makes `backup_dir` usable: the directory and its staging directory, 0700.
pub fn prepare_backup_dir(dir: &Path) -> anyhow::Result<()> {
    crate::state::create_dir_0700(dir)?;
    crate::state::create_dir_0700(&dir.join("staging"))
}

/// Reads the catalog's values (within the call deadline), caches them and applies a change to
/// the running agent. A failure keeps what it runs with.
pub async fn refresh(ctx: &Ctx) {
    let values = match ctx
        .db("agent_config", ctx.catalog.agent_config(ctx.server_id))
        .await
    {
        Ok(v) => v.into_iter().collect::<BTreeMap<_, _>>(),
        Err(e) => {
            if !e.is_unreachable() {
                tracing::warn!("reading this server's configuration from the catalog: {e}");
            }
            return;
        }
    };
    // Unchanged since last read (or since the start, which resolved the cached values): nothing
    // to do, and no pg_dump --version run for a pgsql_bin_dir without {major}.
    if load_cache(&ctx.cfg.state_dir).as_ref() == Some(&values) {
        return;
    }
    let new = match resolve(&ctx.cfg, Some(&values)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("the server's configuration in the catalog is not usable: {e}");
            return;
        }
    };
    // Cached once applied: an unusable root is tried again at the next refresh, and never
    // becomes what the next start runs with.
    if apply(ctx, new) {
        save_cache(&ctx.cfg.state_dir, &values);
    }
}

/// Swaps in `new`, logging each value that changed. A new backup root is created first (and
/// the old one kept among the roots retention may delete under, where its sets still are).
/// False when the new root is not usable (the agent keeps what it runs with).
pub fn apply(ctx: &Ctx, new: Live) -> bool {
    let old = ctx.live();
    if old == new {
        return true;
    }
    if new.backup_dir != old.backup_dir {
        if let Err(e) = prepare_backup_dir(&new.backup_dir) {
            tracing::error!(
                "root_backup_partition {} is not usable: {e:#}; keeping {}\nHINT: create it for the agent's user, or correct it with update_backup_server_config",
                new.backup_dir.display(),
                old.backup_dir.display()
            );
            return false;
        }
        if let Err(e) = crate::roots::remember_root(&ctx.cfg.state_dir, &old.backup_dir) {
            tracing::warn!("{e:#}");
        }
    }
    for (k, v) in new.report.as_object().into_iter().flatten() {
        if old.report.get(k) != Some(v) {
            tracing::info!(
                parameter = %k,
                value = %v["value"].as_str().unwrap_or(""),
                source = %v["source"].as_str().unwrap_or(""),
                "configuration value in use"
            );
        }
    }
    *ctx.live.write().unwrap_or_else(|e| e.into_inner()) = new;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `[agent]` section whose file sets `keys` (backup_dir = /mine, max_jobs = 3).
    fn section(keys: &[&str]) -> AgentSection {
        let mut a = AgentSection::default();
        for k in keys {
            match *k {
                "backup_dir" => a.backup_dir = PathBuf::from("/mine"),
                "max_jobs" => a.max_jobs = 3,
                _ => {}
            }
            a.from_file.insert((*k).to_string());
        }
        a
    }

    #[test]
    fn the_catalog_counts_unless_the_file_sets_the_key() {
        let catalog: BTreeMap<String, String> = [
            ("root_backup_partition", "/data/bk"),
            ("max_concurrent_jobs", "1"),
            ("pgsql_bin_dir", "/nonexistent/{major}/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let l = resolve(&section(&[]), Some(&catalog)).unwrap();
        assert_eq!(l.backup_dir, PathBuf::from("/data/bk"));
        assert_eq!(l.max_jobs, 1);
        assert_eq!(l.report["max_concurrent_jobs"]["source"], "catalog");
        assert_eq!(l.report["root_backup_partition"]["source"], "catalog");
        // Nothing there: the agent says it uses what it found itself.
        assert_eq!(l.report["pgsql_bin_dir"]["source"], "default");

        let l = resolve(&section(&["backup_dir", "max_jobs"]), Some(&catalog)).unwrap();
        assert_eq!(l.backup_dir, PathBuf::from("/mine"));
        assert_eq!(l.max_jobs, 3);
        assert_eq!(l.report["root_backup_partition"]["source"], "agent file");
        assert_eq!(l.report["max_concurrent_jobs"]["value"], "3");

        // Never read from the catalog: the built-in defaults, said so.
        let l = resolve(&section(&[]), None).unwrap();
        assert_eq!(l.max_jobs, 4);
        assert_eq!(l.report["max_concurrent_jobs"]["source"], "default");
        assert_eq!(l.backup_dir, PathBuf::from("/srv/pgbackman"));
    }
}
