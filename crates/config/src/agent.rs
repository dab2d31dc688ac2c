//! The `[agent]` section of the configuration: parsed and checked here, used by pgbackman-agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ConfigError, FileConfig};

/// Settings of `pgbackman-agent`. Every field has a default, so an empty `[agent]` works.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The backup server this agent runs as (default: the host's FQDN).
    pub backup_server: Option<String>,
    /// Cache, spool and lock file. One agent per state directory.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Root of the backup sets. Set here, it overrides the server's root_backup_partition in the
    /// catalog (and the agent reports it as "agent file"); unset, the catalog's value counts.
    #[serde(default = "default_backup_dir")]
    pub backup_dir: PathBuf,
    /// Client binaries per PostgreSQL major, e.g. { "15" = "/usr/lib/postgresql/15/bin" }.
    /// Set here, it overrides the server's pgsql_bin_dir in the catalog. Neither: every
    /// /usr/lib/postgresql/<major>/bin that has pg_dump.
    #[serde(default)]
    pub bin_dirs: BTreeMap<String, PathBuf>,
    /// Jobs this agent runs at once. Set here, it overrides the server's max_concurrent_jobs in
    /// the catalog.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
    /// Jobs at once against one PgSQL node.
    #[serde(default = "default_max_jobs_per_node")]
    pub max_jobs_per_node: usize,
    /// IANA time zone of the schedules (default: the TZ environment variable, else UTC).
    pub time_zone: Option<String>,
    /// How long a claimed job stays ours without a heartbeat.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// Deadline of every catalog call of the agent (connect, pool wait, the statement on the
    /// server and the answer): a slower catalog takes the path of an unreachable one.
    #[serde(default = "default_catalog_timeout_seconds")]
    pub catalog_timeout_seconds: u64,
    /// Re-read the definitions this often even without a notification.
    #[serde(default = "default_repoll_seconds")]
    pub repoll_seconds: u64,
    /// Run a scheduled backup missed while the agent was down if its time is at most this old.
    #[serde(default = "default_catch_up_seconds")]
    pub catch_up_seconds: u64,
    /// Maintenance (retention, forced deletions, quarantine, autoregister) runs this often;
    /// 0 disables it (then `pgbackman-agent --maintenance` runs one pass, e.g. from cron).
    #[serde(default = "default_maintenance_seconds")]
    pub maintenance_seconds: u64,
    /// `/healthz` and `/metrics` on this address (loopback: another one is accepted with a
    /// warning, see `http_listen_exposure`); empty disables them.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// pgpass file handed to pg_dump (PGPASSFILE); default: libpq's own lookup.
    pub passfile: Option<PathBuf>,
    /// Look for overdue definitions this often; 0 disables the check.
    #[serde(default = "default_overdue_check_seconds")]
    pub overdue_check_seconds: u64,
    /// Mailing of alerts (`[agent.alerts]`); None: alerts stay queued in the catalog.
    #[serde(default)]
    pub alerts: Option<crate::agent_alerts::AlertsSection>,
    /// The wal-push listener (`[agent.wal_push]`); None: nothing listens for pushed WAL.
    #[serde(default)]
    pub wal_push: Option<crate::WalPushSection>,
    /// Identities for restores and drills of encrypted sets (`[agent.encryption]`); None:
    /// this agent restores no encrypted set (a backup needs none: it encrypts to public keys).
    #[serde(default)]
    pub encryption: Option<EncryptionSection>,
    /// The file's `[nodes]` deadlines (filled by [`FileConfig::agent_section`], not a key of
    /// `[agent]`).
    #[serde(skip)]
    pub nodes: crate::NodeTimeouts,
    /// The keys of `[agent]` the file sets (filled by [`FileConfig::agent_section`]): a value
    /// the file sets overrides the catalog's, visibly.
    #[serde(skip)]
    pub from_file: BTreeSet<String>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/pgbackman-agent")
}
fn default_backup_dir() -> PathBuf {
    PathBuf::from("/srv/pgbackman")
}
fn default_max_jobs() -> usize {
    4
}
fn default_max_jobs_per_node() -> usize {
    2
}
fn default_lease_seconds() -> u64 {
    60
}
fn default_catalog_timeout_seconds() -> u64 {
    5
}
fn default_repoll_seconds() -> u64 {
    30
}
fn default_catch_up_seconds() -> u64 {
    3600
}
fn default_maintenance_seconds() -> u64 {
    300
}
fn default_overdue_check_seconds() -> u64 {
    300
}
fn default_http_listen() -> String {
    "127.0.0.1:9187".into()
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            backup_server: None,
            state_dir: default_state_dir(),
            backup_dir: default_backup_dir(),
            bin_dirs: BTreeMap::new(),
            max_jobs: default_max_jobs(),
            max_jobs_per_node: default_max_jobs_per_node(),
            time_zone: None,
            lease_seconds: default_lease_seconds(),
            catalog_timeout_seconds: default_catalog_timeout_seconds(),
            repoll_seconds: default_repoll_seconds(),
            catch_up_seconds: default_catch_up_seconds(),
            maintenance_seconds: default_maintenance_seconds(),
            http_listen: default_http_listen(),
            passfile: None,
            overdue_check_seconds: default_overdue_check_seconds(),
            alerts: None,
            wal_push: None,
            encryption: None,
            nodes: crate::NodeTimeouts::default(),
            from_file: BTreeSet::new(),
        }
    }
}

impl AgentSection {
    /// The deadline of one catalog call.
    pub fn catalog_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.catalog_timeout_seconds)
    }

    /// The client bin dirs by major: configured ones, else those found on this host.
    pub fn client_bin_dirs(&self) -> Result<BTreeMap<u32, PathBuf>, ConfigError> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.bin_dirs {
            let major: u32 = k.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "[agent] bin_dirs key \"{k}\" is not a PostgreSQL major version: write e.g. \"15\" = \"/usr/lib/postgresql/15/bin\""
                ))
            })?;
            out.insert(major, v.clone());
        }
        if out.is_empty()
            && let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql")
        {
            for e in rd.flatten() {
                let bin = e.path().join("bin");
                if let Some(m) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                    && bin.join("pg_dump").exists()
                {
                    out.insert(m, bin);
                }
            }
        }
        Ok(out)
    }
}

fn check(a: &AgentSection, path: &Path) -> Result<(), ConfigError> {
    let bad = |key: &'static str, value: String, hint: &'static str| ConfigError::Value {
        path: path.to_path_buf(),
        key,
        value,
        hint,
    };
    if a.max_jobs == 0 {
        return Err(bad("[agent] max_jobs", "0".into(), "use 1 or more"));
    }
    if a.max_jobs_per_node == 0 {
        return Err(bad(
            "[agent] max_jobs_per_node",
            "0".into(),
            "use 1 or more",
        ));
    }
    if a.lease_seconds < 5 {
        return Err(bad(
            "[agent] lease_seconds",
            a.lease_seconds.to_string(),
            "use 5 seconds or more",
        ));
    }
    // A stop may wait for two calls (the one in flight, then the cancelled jobs' report):
    // seven seconds at most keeps SIGTERM within 15 s whatever the catalog does.
    if !(1..=7).contains(&a.catalog_timeout_seconds) {
        return Err(bad(
            "[agent] catalog_timeout_seconds",
            a.catalog_timeout_seconds.to_string(),
            "use 1 to 7 seconds (a slower catalog is treated as unreachable; a stop waits for at most two calls)",
        ));
    }
    if !a.state_dir.is_absolute() {
        return Err(bad(
            "[agent] state_dir",
            a.state_dir.display().to_string(),
            "use an absolute path",
        ));
    }
    if !a.backup_dir.is_absolute() {
        return Err(bad(
            "[agent] backup_dir",
            a.backup_dir.display().to_string(),
            "use an absolute path",
        ));
    }
    if let Some(alerts) = &a.alerts {
        crate::agent_alerts::check(alerts, path)?;
    }
    if let Some(w) = &a.wal_push {
        crate::wal_push::check(w, path)?;
    }
    if let Some(e) = &a.encryption {
        for f in &e.identity_files {
            if !f.is_absolute() {
                return Err(bad(
                    "[agent.encryption] identity_files",
                    f.display().to_string(),
                    "use absolute paths of age identity files (mode 0600, readable by the agent only)",
                ));
            }
        }
    }
    Ok(())
}

/// `[agent.encryption]`: the age identity files (private keys) this agent may use to restore
/// and drill encrypted sets. Setting it is the operator's choice to trust this backup server
/// with them; the files are read when a restore of an encrypted set starts, never copied,
/// logged or sent to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// Absolute paths of age identity files (`AGE-SECRET-KEY-1…` lines, as age-keygen writes).
    #[serde(default)]
    pub identity_files: Vec<PathBuf>,
}

impl AgentSection {
    /// The identity files of `[agent.encryption]` (empty when the section is absent).
    pub fn identity_files(&self) -> Vec<PathBuf> {
        self.encryption
            .as_ref()
            .map(|e| e.identity_files.clone())
            .unwrap_or_default()
    }
}

impl FileConfig {
    /// The `[agent]` section, defaults filled and values checked.
    pub fn agent_section(&self) -> Result<AgentSection, ConfigError> {
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("(no config file)"));
        let mut a: AgentSection = match &self.agent {
            None => AgentSection::default(),
            Some(t) => t
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.clone(),
                    message: format!("[agent]: {}", e.message()),
                })?,
        };
        check(&a, &path)?;
        a.nodes = self.node_timeouts()?;
        a.from_file = self.agent.iter().flat_map(|t| t.keys().cloned()).collect();
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AgentSection, ConfigError> {
        let table: toml::Table = toml::from_str(s).unwrap();
        FileConfig {
            agent: Some(table),
            ..FileConfig::default()
        }
        .agent_section()
    }

    #[test]
    fn defaults_and_values() {
        let a = FileConfig::default().agent_section().unwrap();
        assert_eq!(a.max_jobs, 4);
        assert_eq!(a.catalog_timeout_seconds, 5);
        assert_eq!(a.state_dir, PathBuf::from("/var/lib/pgbackman-agent"));
        let a = parse(
            "max_jobs = 8\ntime_zone = \"Europe/Oslo\"\n[bin_dirs]\n\"15\" = \"/opt/pg15/bin\"",
        )
        .unwrap();
        assert_eq!(a.max_jobs, 8);
        assert!(a.from_file.contains("max_jobs") && a.from_file.contains("bin_dirs"));
        assert!(!a.from_file.contains("backup_dir"));
        assert_eq!(
            a.client_bin_dirs().unwrap().get(&15),
            Some(&PathBuf::from("/opt/pg15/bin"))
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            parse("max_jobz = 1")
                .unwrap_err()
                .to_string()
                .contains("max_jobz")
        );
        assert!(
            parse("max_jobs = 0")
                .unwrap_err()
                .to_string()
                .contains("max_jobs")
        );
        assert!(
            parse("state_dir = \"rel\"")
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        assert!(
            parse("catalog_timeout_seconds = 0")
                .unwrap_err()
                .to_string()
                .contains("catalog_timeout_seconds")
        );
        // 60 s (the old statement timeout) would hold a SIGTERM for minutes.
        let e = parse("catalog_timeout_seconds = 60")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("catalog_timeout_seconds") && e.contains("1 to 7"),
            "{e}"
        );
        assert_eq!(
            parse("catalog_timeout_seconds = 7")
                .unwrap()
                .catalog_timeout_seconds,
            7
        );
        let e = parse("[bin_dirs]\nfifteen = \"/x\"")
            .unwrap()
            .client_bin_dirs()
            .unwrap_err();
        assert!(e.to_string().contains("fifteen"));
    }
}
