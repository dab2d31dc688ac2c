//! The restore executor: a [`RestoreSpec`] in, a [`RestoreOutcome`] out. Like a backup run it
//! never sees the catalog, never fails (the outcome says how it ended), runs psql and
//! pg_restore as supervised children (argv only, own process group, killed on cancel, on
//! `max_runtime` and when the future is dropped) and never passes a password in argv.
//!
//! # A database set (FULL, SCHEMA)
//!
//! Steps, each timed: `arguments` → `manifest` (read `manifest.json`) → `verify` (every file
//! against its sha256, unless [`RestoreSpec::verify_checksums`] is off) → `client`
//! (`pg_restore --version`, `psql --version`) → `connect` (the target's version, databases and
//! roles) → `check` (nothing is changed before every decision holds: the downgrade rule, the
//! target database, the roles) → `rename` (the existing target database out of the way, when
//! asked) → `roles` (`psql -f roles.sql`: missing roles created, existing ones left as they are)
//! → `database` (`psql -v dbname=TARGET -f database.sql`: the database with its captured
//! settings, owner, grants and per-role settings) → `decompress` (only when a custom dump is fed
//! from a file) → `pg_restore` (`--exit-on-error`, `-j N` from a file or a directory dump, or
//! serially from in-process zstd decoding into its stdin) → `row_counts` (optional: every table
//! against the exact counts of the manifest) → `size`.
//!
//! # A CLUSTER or GLOBALS set
//!
//! `psql -v ON_ERROR_STOP=1` fed from in-process zstd decoding, onto an empty cluster (no
//! database besides `postgres`/templates, no role besides the predefined ones, the bootstrap
//! superuser and the one pgbackman connects as) unless [`RestoreSpec::acknowledge_nonempty`].
//! pg_dumpall writes `CREATE ROLE` for every role, also for roles that exist (at least the one
//! we connect as): before the first `\connect`, `CREATE ROLE x;` lines of roles that exist on
//! the target are turned into comments so that `ON_ERROR_STOP` stops on real errors only; the
//! `ALTER ROLE` lines that follow still set their attributes.
//!
//! # No half-restores
//!
//! Any failure, cancel or timeout after the target was touched is undone before the outcome is
//! returned: the target database (and for CLUSTER, every database created by the run) is
//! dropped, the roles the run created are dropped, and a database renamed out of the way is
//! renamed back. [`RestoreOutcome::cleanup`] says what was undone, and what could not be.
//! The death of the process itself (SIGKILL, OOM killer) cannot be undone in-process: with
//! [`RestoreSpec::journal`] set, each change is journalled before it is made, and
//! [`undo_interrupted`] undoes the run from its journal at the next start.
//!
//! # The downgrade rule
//!
//! A set is never restored into a server of an older major than the pg_dump that wrote it
//! (nor read by an older pg_restore): pg_dump output is only guaranteed to load into its own
//! major or newer. The run fails at step `check` with a message naming both versions.

mod exec;
mod feed;
mod globals;
mod journal;
mod psql_error;
pub mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::spec::{NodeConn, Status};
pub use exec::restore_set;
pub use journal::{Interrupted, Journal, journals_in, remove_journal, undo_interrupted};
pub use source::RepositorySet;

/// What the restore does with the roles of the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RolePolicy {
    /// Create what is missing on the target, reuse what exists (restore drills, scratch
    /// clusters).
    CreateMissing,
    /// The DBA's decisions, checked against the target before anything changes: every role of
    /// `create` must be missing and every role of `reuse` must exist. Roles of the set in
    /// neither list are created when missing and reused when present.
    Decided {
        /// Roles to create.
        create: Vec<String>,
        /// Roles to reuse as they are.
        reuse: Vec<String>,
    },
}

/// How a custom-format dump reaches pg_restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decompression {
    /// [`pgbackman_core::restore::choose_feed`]: a file for `-j N` when the staging area has room,
    /// else a stream.
    #[default]
    Auto,
    /// Decoded in-process into pg_restore's stdin (serial: pg_restore cannot run `-j` from a pipe).
    Stream,
    /// Decoded into `staging_root/<job_id>/dump.pgdump` first, then `pg_restore -j N` on it.
    File,
    /// Decoded once into a serial pg_restore of the pre-data and data sections and into a
    /// staging file, then the post-data section with `pg_restore -j N` from the file.
    Tee,
}

impl Decompression {
    /// `auto` / `stream` / `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decompression::Auto => "auto",
            Decompression::Stream => "stream",
            Decompression::File => "file",
            Decompression::Tee => "tee",
        }
    }
}

impl std::str::FromStr for Decompression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Decompression::Auto),
            "stream" => Ok(Decompression::Stream),
            "file" => Ok(Decompression::File),
            "tee" => Ok(Decompression::Tee),
            other => Err(format!(
                "decompression \"{other}\" is not valid: use auto, stream, file or tee"
            )),
        }
    }
}

/// One restore: everything [`restore_set`] needs, nothing from the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// The job; names the staging directory.
    pub job_id: i64,
    /// The backup set (a directory with `manifest.json`); ignored when `repository` is set.
    pub set_dir: PathBuf,
    /// A set stored in a repository: its objects are read from there (the small files
    /// fetched into the staging directory, the dump streamed, every sha256 checked as the
    /// bytes pass). Not journalled: the undo of an interrupted run needs the target only.
    #[serde(skip)]
    pub repository: Option<RepositorySet>,
    /// The target node, as for a backup; psql and pg_restore connect as `node.user`, which
    /// must be a superuser (roles are created, databases created and dropped).
    pub node: NodeConn,
    /// The target as people know it, e.g. `pg02.example.org:5432`.
    pub node_label: String,
    /// The database to create (database sets); ignored for CLUSTER and GLOBALS.
    pub target_dbname: String,
    /// When the target database exists: rename it to this first (renamed back if the restore
    /// fails). `None`: an existing target database stops the restore.
    #[serde(default)]
    pub rename_existing_to: Option<String>,
    /// Roles.
    pub roles: RolePolicy,
    /// pg_restore `--jobs` (custom dump from a file, or directory dump).
    pub jobs: u32,
    /// How a custom dump reaches pg_restore.
    #[serde(default)]
    pub decompression: Decompression,
    /// Extra pg_restore options, already split and checked
    /// ([`pgbackman_core::restore::check_extra_restore_parameters`]); checked again here.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Directory of psql and pg_restore.
    pub bin_dir: PathBuf,
    /// Staging area: the run works in `staging_root/<job_id>/` (the decompressed dump), removed
    /// at the end whatever happens.
    pub staging_root: PathBuf,
    /// The restore log (created 0600, its parent 0700); kept after the run. `None`: no log.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `application_name` of every connection.
    pub application_name: String,
    /// The whole restore is stopped (and undone) once it lasts longer.
    #[serde(default)]
    pub max_runtime: Option<Duration>,
    /// CLUSTER / GLOBALS: go on although the target cluster has databases or roles of its own.
    #[serde(default)]
    pub acknowledge_nonempty: bool,
    /// Check every file of the set against the manifest first (level-1 verification).
    #[serde(default = "yes")]
    pub verify_checksums: bool,
    /// After the restore, count the rows of every table and compare with the manifest's exact
    /// counts; a difference fails (and undoes) the restore.
    #[serde(default)]
    pub compare_row_counts: bool,
    /// The write-ahead journal of the changes to the target (see the `journal` module): a run
    /// cut short by the death of its process is undone from it at the next start. `None`: no
    /// journal (an in-process failure is still undone).
    #[serde(default)]
    pub journal: Option<Journal>,
    /// Identity files (age, `AGE-SECRET-KEY-1…`) for an encrypted set (crate::crypt): the
    /// shell's `--identity`, or the agent's `[agent.encryption] identity_files`. Paths only;
    /// the keys are read when the restore starts and never logged.
    #[serde(default)]
    pub identity_files: Vec<PathBuf>,
}

fn yes() -> bool {
    true
}

/// Rows of a restored table against the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCountCheck {
    /// Tables compared.
    pub tables: usize,
    /// `table → (expected, restored)` for every difference (missing tables: restored -1).
    pub mismatches: BTreeMap<String, (i64, i64)>,
    /// Whether the manifest held exact counts (estimates are not compared).
    pub exact: bool,
}

/// The result of one restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    /// The job.
    pub job_id: i64,
    /// How it ended. Failed steps: `arguments`, `manifest`, `verify`, `client`, `connect`,
    /// `check`, `staging`, `rename`, `roles`, `database`, `decompress`, `pg_restore`, `psql`,
    /// `row_counts`, `write`.
    pub status: Status,
    /// Start and end (after any undo).
    pub started: DateTime<Utc>,
    /// End.
    pub finished: DateTime<Utc>,
    /// Backup code of the set (`FULL`, …), once the manifest was read.
    pub code: Option<String>,
    /// The database the set was taken from.
    pub source_dbname: String,
    /// The database restored into (empty for CLUSTER / GLOBALS).
    pub target_dbname: String,
    /// The name the existing target database was given, when it was renamed (and stays so
    /// only on success).
    pub renamed_dbname: Option<String>,
    /// Roles the restore created (dropped again on failure).
    pub roles_created: Vec<String>,
    /// Roles of the set that existed and were left as they are.
    pub roles_reused: Vec<String>,
    /// CLUSTER: databases the restore created.
    pub databases_created: Vec<String>,
    /// `pg_dump --version` that wrote the set.
    pub backup_client_version: Option<String>,
    /// Source server version of the set.
    pub backup_server_version: Option<String>,
    /// `pg_restore --version` (or psql's for SQL sets).
    pub client_version: Option<String>,
    /// Target `server_version`.
    pub target_server_version: Option<String>,
    /// Target `server_version_num`.
    pub target_server_version_num: Option<i32>,
    /// How the dump reached its client: `stream`, `file`, `tee`, `directory` or `sql`.
    pub feed: Option<String>,
    /// Why that feed.
    pub feed_reason: String,
    /// pg_restore jobs used.
    pub jobs: u32,
    /// argv of the main restore command (no secret in it).
    pub command: Vec<String>,
    /// Seconds per phase, in order.
    pub phase_timings: Vec<(String, f64)>,
    /// Bytes of dump fed to the client (uncompressed) or decompressed.
    pub bytes_restored: u64,
    /// `pg_database_size` of the restored database.
    pub restored_size: Option<i64>,
    /// Row count comparison, when asked.
    pub row_count_check: Option<RowCountCheck>,
    /// What was undone after a failure (empty when nothing had to be).
    pub cleanup: Vec<String>,
    /// Warnings and remarks.
    pub notes: Vec<String>,
    /// Why the set failed verification level 1 (a file against its manifest sha256, or the
    /// manifest unreadable) when the restore found it so before touching the target: a
    /// verdict on the backup itself, to be recorded as `verify_backup` would.
    #[serde(default)]
    pub checksums_failed: Option<String>,
}

impl RestoreOutcome {
    /// An outcome with nothing done yet, started and finished now.
    pub fn empty(job_id: i64, status: Status) -> Self {
        let now = Utc::now();
        RestoreOutcome {
            job_id,
            status,
            started: now,
            finished: now,
            code: None,
            source_dbname: String::new(),
            target_dbname: String::new(),
            renamed_dbname: None,
            roles_created: Vec::new(),
            roles_reused: Vec::new(),
            databases_created: Vec::new(),
            backup_client_version: None,
            backup_server_version: None,
            client_version: None,
            target_server_version: None,
            target_server_version_num: None,
            feed: None,
            feed_reason: String::new(),
            jobs: 0,
            command: Vec::new(),
            phase_timings: Vec::new(),
            bytes_restored: 0,
            restored_size: None,
            row_count_check: None,
            cleanup: Vec::new(),
            notes: Vec::new(),
            checksums_failed: None,
        }
    }
}
