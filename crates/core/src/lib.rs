//! Pure domain logic of pgbackman.
//!
//! Invariant: nothing in this crate does IO, is async, reads a clock or draws random numbers.
//! Every function is pure: callers pass "now" and random numbers in.
//!
//! - [`archive`]: per-table row counts read from a pg_dump custom-format archive in flight.
//! - [`cron`]: classic 5-field crontab schedules (validation with field-level errors, next fire
//!   time in any time zone, description in words), built on `croner`.
//! - [`duration`]: the one human format of a duration (shell tables, agent log).
//! - [`hostname`]: host names, domains and node addresses (RFC 1123, IP, socket directory).
//! - [`import`]: how a PgBackMan 1.x catalog maps onto this one (what is carried, what not).
//! - [`interval`]: the "random minute/hour inside the node's configured interval" rule.
//! - [`model`]: codes and statuses, database selections (`#all_databases#`, ...), filters,
//!   object references, ports, redundancy, extra pg_dump parameters.
//! - [`overdue`]: whether a definition's expected backup is missing past its grace period.
//! - [`paths`]: encoding of any name into one safe path component.
//! - [`restore`]: extra pg_restore parameters, role create/reuse plans, renamed-database names,
//!   stream-or-file choice of a restore.
//! - [`retention`]: which backups retention keeps or deletes and why; quarantine decisions.
//! - [`roots`]: the directories an agent writes sets under and may delete under.
//! - [`text`]: control characters made visible for terminals, bounded quoting of input.
//! - [`wal`]: WAL positions and file names, segment headers, timeline histories and
//!   `backup_manifest` parsing: the pure layer of physical backups.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod archive;
pub mod cron;
pub mod duration;
pub mod hostname;
pub mod import;
pub mod interval;
pub mod model;
pub mod monitoring;
pub mod overdue;
pub mod params;
pub mod paths;
pub mod restore;
pub mod retention;
pub mod roots;
pub mod text;
pub mod wal;
