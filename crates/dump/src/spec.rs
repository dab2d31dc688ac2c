//! What a backup run is asked to do ([`BackupSpec`]) and what it reports ([`BackupOutcome`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgbackman_core::model::{BackupCode, NodeProfile};
use serde::{Deserialize, Serialize};

/// How to reach a PgSQL node. There is no password field on purpose: passwords come from a
/// pgpass file (`passfile`, else libpq's default `~/.pgpass`) or from client certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConn {
    /// Host name, IP address, or a directory holding the server's unix socket (starts with `/`).
    pub host: String,
    /// TCP port (also names the unix socket).
    pub port: u16,
    /// The admin user pgbackman connects as.
    pub user: String,
    /// Database used for cluster-wide work (CLUSTER and GLOBALS connect there; pg_dumpall's
    /// `--database`).
    pub admin_dbname: String,
    /// libpq sslmode (`disable` … `verify-full`); empty means libpq's default (`prefer`).
    pub sslmode: String,
    /// pgpass file given to every connection (`PGPASSFILE` for the children).
    pub passfile: Option<PathBuf>,
    /// Deadlines of the connections (`[nodes]` of the config file): connect and statement
    /// timeouts of our own sessions, connect timeout and keepalives of the children (never a
    /// statement timeout: a dump may take hours). None: the defaults (and PGCONNECT_TIMEOUT).
    #[serde(skip)]
    pub timeouts: Option<pgbackman_config::NodeTimeouts>,
}

/// Output format of a database dump (FULL, SCHEMA, DATA). CLUSTER and GLOBALS are always SQL
/// text compressed with zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DumpFormat {
    /// `pg_dump -Fc -Z0` streamed through zstd at `zstd_level` (1–22; 3 is the usual default)
    /// and hashed in the same pass, into `dump.pgdump.zst`.
    Custom {
        /// zstd compression level.
        zstd_level: i32,
    },
    /// `pg_dump -Fd -j <jobs>` into `dump.dir/`, compressed by pg_dump itself (zstd with a
    /// PostgreSQL 16+ client, gzip level 5 before).
    Directory {
        /// Parallel jobs (at least 1).
        jobs: u32,
    },
}

impl Default for DumpFormat {
    fn default() -> Self {
        DumpFormat::Custom { zstd_level: 3 }
    }
}

/// How the table row counts of a database backup are taken (always [`RowCountMode::Exact`]
/// for now, falling back to estimates; kept as a type so a definition can choose later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RowCountMode {
    /// `count(*)` of every table in the dump's own snapshot (exported with
    /// `pg_export_snapshot()` and given to pg_dump with `--snapshot`), run while pg_dump runs.
    /// Falls back to estimates when a snapshot cannot be exported (e.g. on a standby before 10).
    #[default]
    Exact,
    /// `pg_class.reltuples`: free, approximate.
    Estimate,
    /// No row counts.
    Off,
}

/// One backup run: everything [`run_backup`](crate::run_backup) needs, nothing from the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSpec {
    /// The job; names the staging directory and is the result's idempotency key.
    pub job_id: i64,
    /// What to back up.
    #[serde(with = "crate::spec::code_serde")]
    pub code: BackupCode,
    /// Standard (superuser) or managed node: a managed node gets no role passwords.
    #[serde(with = "crate::spec::code_serde")]
    pub profile: NodeProfile,
    /// The database; empty for CLUSTER and GLOBALS.
    pub dbname: String,
    /// How to reach the node.
    pub node: NodeConn,
    /// The node as people know it, e.g. `pg01.example.org:5432`, for messages and the manifest.
    pub node_label: String,
    /// Directory of the client tools of the chosen major (see [`pick_client`](crate::pick_client)).
    pub bin_dir: PathBuf,
    /// Dump format (database codes only).
    #[serde(default)]
    pub format: DumpFormat,
    /// Extra pg_dump / pg_dumpall options, already split and validated
    /// ([`pgbackman_core::params::check_extra_dump_parameters`]); checked again here.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// pg_dump's `--lock-wait-timeout`: fail instead of queueing behind a lock for longer.
    #[serde(default)]
    pub lock_wait_timeout: Option<Duration>,
    /// The whole run is stopped (children killed, nothing kept) once it lasts longer.
    #[serde(default)]
    pub max_runtime: Option<Duration>,
    /// `application_name` of every connection (ours and the children's), e.g. `pgbackman`.
    pub application_name: String,
    /// Staging area: the run works in `staging_root/<job_id>/`. Must be on the same filesystem
    /// as `final_dir` (the finished set is renamed, never copied).
    pub staging_root: PathBuf,
    /// Where the finished set goes (renamed into place; must not exist; its parent is created
    /// 0700 when missing). The caller builds it with
    /// [`pgbackman_core::paths::encode_path_component`] for any name taken from a database.
    pub final_dir: PathBuf,
    /// The backup definition as it was, copied into the manifest.
    #[serde(default)]
    pub definition: serde_json::Value,
    /// Encrypt the set's dump, roles.sql and database.sql to these recipients (crate::crypt);
    /// None: a plain set.
    #[serde(default)]
    pub encryption: Option<crate::crypt::SetEncryption>,
}

/// One file of a finished backup set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the set, `/`-separated (e.g. `dump.dir/toc.dat`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the content, lowercase hex.
    pub sha256: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// The set is complete, synced and in place.
    Succeeded,
    /// A step failed; nothing was kept.
    Failed {
        /// The step: `client`, `arguments`, `staging`, `connect`, `pg_dump`, `pg_dumpall`,
        /// `compress`, `write`, `hash`, `roles`, `database`, `manifest`, `fsync`, `rename`.
        step: String,
        /// Exit status of the step's child process, when it had one and it exited.
        exit_status: Option<i32>,
        /// What went wrong, in one line.
        message: String,
        /// The last lines (about 20) of the step's stderr.
        stderr_tail: String,
    },
    /// Cancelled by the caller; children killed, nothing kept.
    Cancelled {
        /// Which step was running.
        reason: String,
    },
}

/// For logs and messages: "failed at step pg_dump (exit status 2): ...", never Rust's debug
/// form (`Some(2)`).
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Succeeded => f.write_str("succeeded"),
            Status::Failed {
                step,
                exit_status,
                message,
                ..
            } => {
                write!(f, "failed at step {step}")?;
                if let Some(code) = exit_status {
                    write!(f, " (exit status {code})")?;
                }
                write!(f, ": {message}")
            }
            Status::Cancelled { reason } => write!(f, "cancelled ({reason})"),
        }
    }
}

impl Status {
    /// True for [`Status::Succeeded`].
    pub fn is_success(&self) -> bool {
        matches!(self, Status::Succeeded)
    }
}

/// Where table row counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowCountSource {
    /// `count(*)` in the dump's own snapshot: exactly the rows the dump holds.
    Snapshot,
    /// `pg_class.reltuples` (planner estimates; -1 when never analysed).
    Estimate,
}

/// Row count of every ordinary table of the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRowCounts {
    /// Exact or estimated.
    pub source: RowCountSource,
    /// `schema.table` (each part quoted like `quote_ident`) → rows.
    pub tables: BTreeMap<String, i64>,
}

/// The result of one run, reported exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupOutcome {
    /// The job.
    pub job_id: i64,
    /// How it ended.
    pub status: Status,
    /// When the run started.
    pub started: DateTime<Utc>,
    /// When it ended (after the rename, or after the cleanup of a failure).
    pub finished: DateTime<Utc>,
    /// The finished set (`final_dir`); `None` unless succeeded.
    pub backup_dir: Option<PathBuf>,
    /// Every file of the set, `manifest.json` included (last).
    pub files: Vec<FileEntry>,
    /// Sum of the file sizes.
    pub total_size: u64,
    /// The main dump, relative to the set: `dump.pgdump.zst`, `dump.dir`, `cluster.sql.zst`
    /// or `globals.sql.zst`.
    pub dump_file: Option<String>,
    /// `manifest.json` once written.
    pub manifest_file: Option<String>,
    /// Roles the database needs (the ones in roles.sql), sorted. Empty for CLUSTER / GLOBALS.
    pub role_list: Vec<String>,
    /// `pg_dump --version` of the client used.
    pub client_version: Option<String>,
    /// The server's `server_version`.
    pub server_version: Option<String>,
    /// The server's `server_version_num`.
    pub server_version_num: Option<i32>,
    /// argv of the main dump command (no secret is ever in it).
    pub command: Vec<String>,
    /// Seconds spent in each phase, in order.
    pub phase_timings: Vec<(String, f64)>,
    /// `pg_database_size` of the database (sum over the databases for CLUSTER).
    pub database_size: Option<i64>,
    /// Row count of every table.
    pub table_row_counts: Option<TableRowCounts>,
    /// Verification levels 1 and 2 of the finished set (None: the run failed, or was cancelled
    /// during the verification).
    #[serde(default)]
    pub verification: Option<crate::verify::Verification>,
    /// A set stored in a repository (`run_backup_to`): the key prefix of its objects; None
    /// for a set in `backup_dir`.
    #[serde(default)]
    pub object_prefix: Option<String>,
}

/// serde for the code enums of pgbackman-core: their canonical spelling.
pub(crate) mod code_serde {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn a_status_reads_as_words() {
        let failed = Status::Failed {
            step: "pg_restore".into(),
            exit_status: Some(2),
            message: "pg_restore exited with status 2".into(),
            stderr_tail: String::new(),
        };
        assert_eq!(
            failed.to_string(),
            "failed at step pg_restore (exit status 2): pg_restore exited with status 2"
        );
        let killed = Status::Failed {
            step: "connect".into(),
            exit_status: None,
            message: "no answer".into(),
            stderr_tail: String::new(),
        };
        assert_eq!(killed.to_string(), "failed at step connect: no answer");
        let cancelled = Status::Cancelled {
            reason: "cancelled during step roles".into(),
        };
        assert!(!format!("{failed} {killed} {cancelled}").contains("Some("));
    }
}
