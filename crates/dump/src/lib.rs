//! pgbackman-dump: pg_dump / pg_dumpall as supervised child processes, in-process zstd
//! compression and sha256, the backup-set layout and its manifest.
//!
//! **Invariant: this crate never sees the catalog.** A [`BackupSpec`] goes in, a
//! [`BackupOutcome`] comes out. It talks only to the PgSQL node being backed up (read-only
//! catalog queries: versions, sizes, roles, database settings, row counts) and runs the client
//! tools of [`BackupSpec::bin_dir`] as children: argv vectors only, never a shell, never a
//! password in argv or environment (children get `PGPASSFILE` when the node has one; no
//! `PGPASSWORD` ever reaches them).
//!
//! # A run ([`run_backup`])
//!
//! Steps, each timed and checked: `arguments` → `client` (`pg_dump --version`) → `staging`
//! (`staging_root/<job_id>/`, 0700) → `connect` (server version, database size) → `roles`
//! (roles.sql) → `database` (database.sql) → `pg_dump` / `pg_dumpall` (streamed through zstd and
//! sha256 in one pass; directory format: `hash` afterwards) → `manifest` (backup.log closed,
//! manifest.json) → `fsync` → `rename` (to `final_dir`, never replacing, then the parent is
//! fsynced). Any failure, cancel or timeout removes the staging directory: no partial set ever
//! survives, and the [`Status`] names the step, the exit status and the tail of stderr.
//!
//! # The set
//!
//! | code | files |
//! |---|---|
//! | FULL / SCHEMA / DATA, custom | `dump.pgdump.zst` (`pg_dump -Fc -Z0` → zstd), `roles.sql`, `database.sql`, `backup.log`, `manifest.json` |
//! | FULL / SCHEMA / DATA, directory | `dump.dir/` (`pg_dump -Fd -j N`, compressed by pg_dump), the same others |
//! | CLUSTER | `cluster.sql.zst` (`pg_dumpall` → zstd), `backup.log`, `manifest.json` |
//! | GLOBALS | `globals.sql.zst` (`pg_dumpall --globals-only` → zstd), `backup.log`, `manifest.json` |
//!
//! Directories are 0700 and files 0600 (role files hold password hashes). Restore order:
//! `psql -f roles.sql`, `psql -v dbname=NEW -f database.sql`, then `zstd -dc dump.pgdump.zst |
//! pg_restore -d NEW`. See [`sqlgen`] for what the two SQL files do with existing roles and
//! how the target database name is given.
//!
//! # Row counts
//!
//! For FULL and DATA the run exports a snapshot (`pg_export_snapshot()` in a repeatable-read,
//! read-only transaction), gives it to pg_dump with `--snapshot`, and counts the rows of every
//! table in that same snapshot while pg_dump runs: the counts are exactly the rows in the dump
//! ([`RowCountSource::Snapshot`]). When no snapshot can be exported the planner's estimates are
//! reported instead, flagged [`RowCountSource::Estimate`]. A table that cannot be counted
//! (privileges, a lock held longer than the lock wait timeout) is left out and named in the
//! manifest's notes.
//!
//! # SQL in this crate
//!
//! None is run from here. The node is read with a few catalog queries that live in
//! [`pgbackman_db::introspect`] (node introspection, never catalog access: of `pgbackman-db` this
//! crate uses that module only); `node.rs` only builds the connection config. The SQL that
//! [`sqlgen`] (with the quoting helpers of `quote.rs`) writes into `roles.sql` and
//! `database.sql` is output of a run, text for psql at restore time, not a query.
//!
//! # Children
//!
//! Every child runs in its own process group and is killed as a group (SIGTERM, SIGKILL after
//! a grace period) on cancel, when `max_runtime` passes, when a dump shows no sign of life for
//! `[nodes] stall_timeout` (no byte on its stdout, no line on its stderr, no growth of its
//! directory: a node stalled mid-dump) and when the run's future is dropped; pg_dump's own
//! children (parallel workers, pg_dumpall's pg_dumps) go with it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod basebackup;
mod child;
mod client;
pub mod crypt;
mod error;
mod launcher;
mod node;
pub mod pitr;
mod quote;
pub mod restore;
mod run;
mod set;
mod spec;
pub mod sqlgen;
pub mod upload;
pub mod verify;

pub use basebackup::{
    BACKUP_LABEL_FILE, BACKUP_MANIFEST_FILE, BASE_TAR_FILE, BaseBackupFacts, BaseBackupOutcome,
    BaseBackupSpec, WalMethod, run_base_backup,
};
pub use client::{client_major, parse_major, pick_client, server_major};
pub use error::DumpError;
pub use launcher::{LAUNCHER_ARG, child_command, launcher_main, set_launcher};
pub use quote::{quote_ident, quote_literal};
pub use restore::{
    Decompression, Interrupted, Journal, RepositorySet, RestoreOutcome, RestoreSpec, RolePolicy,
    RowCountCheck, journals_in, remove_journal, restore_set, undo_interrupted,
};
pub use run::{
    CLUSTER_DUMP_FILE, CUSTOM_DUMP_FILE, DATABASE_FILE, DIRECTORY_DUMP, ENV_REMOVED,
    GLOBALS_DUMP_FILE, ROLES_FILE, run_backup, run_backup_to,
};
pub use set::{
    LOG_FILE, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, ManifestCommand, PhaseTiming,
    clean_staging, read_manifest, verify_set,
};
pub use spec::{
    BackupOutcome, BackupSpec, DumpFormat, FileEntry, NodeConn, RowCountSource, Status,
    TableRowCounts,
};
pub use tokio_util::sync::CancellationToken;
pub use verify::{Verification, VerifyState};
