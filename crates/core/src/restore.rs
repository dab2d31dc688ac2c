//! Restore decisions that need no IO: extra pg_restore parameters, the default name of a
//! renamed database, which roles a restore creates or reuses, and how the dump reaches
//! pg_restore (streamed, or decompressed to a file so that `-j N` can work).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::params::{
    LongOption, OptionProblem, ParamError, ShortOption, check_options, split_shell_words,
};

/// Extra pg_restore parameters that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreParamError {
    /// Quoting is broken.
    #[error(transparent)]
    Split(#[from] ParamError),
    /// An option the user may not set.
    #[error("pg_restore option \"{option}\" is not allowed in extra restore parameters: {reason}")]
    Forbidden {
        /// The option as written.
        option: String,
        /// Why it is not allowed.
        reason: &'static str,
    },
    /// An option that needs a value has none.
    #[error("pg_restore option \"{0}\" needs a value")]
    MissingValue(String),
    /// A word that is not an option nor an option's value.
    #[error(
        "\"{0}\" is not a pg_restore option: extra restore parameters hold options only (write an option's value as --name=value)"
    )]
    Positional(String),
}

const CONNECTION: &str = "connection settings come from the target PgSQL node's registration";
const TARGET: &str = "pgbackman creates the target database and restores into it";
const JOBS: &str = "parallel jobs are a restore option (--jobs)";
const INFO: &str = "pg_restore would print information instead of restoring";
const ATOMIC: &str =
    "cannot be combined with parallel restore; pgbackman undoes a failed restore itself";

/// pg_restore short options: (letter, takes a value, forbidden because).
const SHORT: &[ShortOption] = &[
    ('d', true, Some(CONNECTION)),
    ('h', true, Some(CONNECTION)),
    ('p', true, Some(CONNECTION)),
    ('U', true, Some(CONNECTION)),
    ('w', false, Some(CONNECTION)),
    ('W', false, Some(CONNECTION)),
    ('f', true, Some(TARGET)),
    ('C', false, Some(TARGET)),
    ('c', false, Some(TARGET)),
    ('F', true, Some(TARGET)),
    ('j', true, Some(JOBS)),
    ('l', false, Some(INFO)),
    ('V', false, Some(INFO)),
    ('?', false, Some(INFO)),
    ('1', false, Some(ATOMIC)),
    ('L', true, None),
    ('I', true, None),
    ('n', true, None),
    ('N', true, None),
    ('P', true, None),
    ('S', true, None),
    ('t', true, None),
    ('T', true, None),
];

/// pg_restore long options (PostgreSQL 12 to 18).
const LONG: &[LongOption] = &[
    ("dbname", true, Some(CONNECTION)),
    ("host", true, Some(CONNECTION)),
    ("port", true, Some(CONNECTION)),
    ("username", true, Some(CONNECTION)),
    ("no-password", false, Some(CONNECTION)),
    ("password", false, Some(CONNECTION)),
    ("file", true, Some(TARGET)),
    ("create", false, Some(TARGET)),
    ("clean", false, Some(TARGET)),
    ("format", true, Some(TARGET)),
    ("jobs", true, Some(JOBS)),
    ("list", false, Some(INFO)),
    ("version", false, Some(INFO)),
    ("help", false, Some(INFO)),
    ("single-transaction", false, Some(ATOMIC)),
    ("use-list", true, None),
    ("index", true, None),
    ("schema", true, None),
    ("exclude-schema", true, None),
    ("function", true, None),
    ("superuser", true, None),
    ("table", true, None),
    ("trigger", true, None),
    ("role", true, None),
    ("section", true, None),
    ("filter", true, None),
    ("transaction-size", true, None),
    ("data-only", false, None),
    ("schema-only", false, None),
    ("statistics-only", false, None),
    ("exit-on-error", false, None),
    ("no-owner", false, None),
    ("no-privileges", false, None),
    ("no-acl", false, None),
    ("verbose", false, None),
    ("disable-triggers", false, None),
    ("enable-row-security", false, None),
    ("if-exists", false, None),
    ("no-comments", false, None),
    ("no-data-for-failed-tables", false, None),
    ("no-publications", false, None),
    ("no-security-labels", false, None),
    ("no-subscriptions", false, None),
    ("no-table-access-method", false, None),
    ("no-tablespaces", false, None),
    ("no-data", false, None),
    ("no-schema", false, None),
    ("no-statistics", false, None),
    ("no-policies", false, None),
    ("strict-names", false, None),
    ("use-set-session-authorization", false, None),
];

/// Splits extra pg_restore parameters with shell quoting rules and checks them: no connection
/// option, no output file, no `--create`/`--clean`/`--format` (pgbackman creates the target
/// database), no `-j` (a restore option of its own), no `--single-transaction`, nothing that
/// prints instead of restoring, no positional argument. Long options match by unambiguous
/// prefix as getopt does. Returns the words.
pub fn check_extra_restore_parameters(s: &str) -> Result<Vec<String>, RestoreParamError> {
    let words = split_shell_words(s)?;
    // `--` is refused: pgbackman appends its own options after these.
    check_options(&words, SHORT, LONG, false).map_err(|p| match p {
        OptionProblem::Forbidden { option, reason } => {
            RestoreParamError::Forbidden { option, reason }
        }
        OptionProblem::MissingValue(w) => RestoreParamError::MissingValue(w),
        OptionProblem::Positional(w) => RestoreParamError::Positional(w),
    })?;
    Ok(words)
}

/// PgBackMan's default name for an existing target database that is renamed out of the way:
/// `<db>_<YYYY_MM_DDTHHMMSS>`, cut to PostgreSQL's 63-byte name limit on a character boundary.
pub fn default_renamed_dbname(dbname: &str, now: DateTime<Utc>) -> String {
    let suffix = now.format("_%Y_%m_%dT%H%M%S").to_string();
    let mut base = dbname.to_string();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    base + &suffix
}

/// Roles that always exist on a target and can never be created by a restore: predefined
/// roles (`pg_*`) and the target's bootstrap superuser. They are reused without asking.
pub fn is_system_role(name: &str, bootstrap_superuser: &str) -> bool {
    name.starts_with("pg_") || name == bootstrap_superuser
}

/// What a restore does with the roles a backup needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RolePlan {
    /// Missing on the target: created by the restore.
    pub create: Vec<String>,
    /// Present on the target and chosen for reuse: left exactly as they are.
    pub reuse: Vec<String>,
    /// Present on the target, system roles: reused without asking.
    pub system: Vec<String>,
    /// Present on the target and not chosen for reuse: the restore cannot go on.
    pub conflicts: Vec<String>,
}

/// Which existing roles may be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReuseRoles {
    /// None: any existing (non-system) role is a conflict.
    None,
    /// Every existing role.
    All,
    /// These.
    Only(BTreeSet<String>),
}

impl ReuseRoles {
    /// `all`, `none` (or empty), or a comma list of role names.
    pub fn parse(s: &str) -> ReuseRoles {
        match s.trim() {
            "" | "none" => ReuseRoles::None,
            "all" => ReuseRoles::All,
            list => ReuseRoles::Only(
                list.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(String::from)
                    .collect(),
            ),
        }
    }

    fn allows(&self, role: &str) -> bool {
        match self {
            ReuseRoles::None => false,
            ReuseRoles::All => true,
            ReuseRoles::Only(set) => set.contains(role),
        }
    }
}

/// Splits `needed` (the backup's role list) by what exists on the target.
pub fn plan_roles(
    needed: &[String],
    existing: &BTreeSet<String>,
    bootstrap_superuser: &str,
    reuse: &ReuseRoles,
) -> RolePlan {
    let mut plan = RolePlan::default();
    for r in needed {
        if !existing.contains(r) {
            plan.create.push(r.clone());
        } else if is_system_role(r, bootstrap_superuser) {
            plan.system.push(r.clone());
        } else if reuse.allows(r) {
            plan.reuse.push(r.clone());
        } else {
            plan.conflicts.push(r.clone());
        }
    }
    plan
}

/// How a custom-format dump (zstd-compressed in the set) reaches pg_restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Decoded in-process into pg_restore's stdin: no disk space, but serial (pg_restore cannot
    /// run `-j` from a pipe).
    Stream,
    /// Decoded to a temporary file in the staging area first, then `pg_restore -j N` on it.
    File,
    /// Decoded once into both: the pre-data and data sections stream into a serial pg_restore
    /// while the same bytes go to a staging file, then the post-data section (indexes,
    /// constraints, triggers) runs with `pg_restore -j N` from that file. No separate
    /// decompression pass; parallel index builds.
    Tee,
}

impl Feed {
    /// `stream` / `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            Feed::Stream => "stream",
            Feed::File => "file",
            Feed::Tee => "tee",
        }
    }
}

/// Chooses the feed for `requested` (`auto`, `stream`, `file`, `tee`). With `auto`:
///
/// - one job: stream (a file would only add a pass);
/// - no room in the staging area for about `expected_bytes` (the dump uncompressed, estimated
///   from the database size) plus a margin, or free space unknown: stream;
/// - `largest_share` (the largest table's share of all rows, from the manifest's counts) of
///   one half or more: tee. The data load is bound by that one table's serial COPY whatever the
///   jobs, so the dump is streamed while the staging file is written, and only the post-data
///   section (index builds, constraints) runs with `-j`; no separate decompression pass (and
///   the executor splits that table's rows over `jobs` COPYs, see [`split_table`]);
/// - else file: the data load itself runs in parallel, worth more than the extra pass.
///
/// bench/restore.sh measures the three on the reference database (one table holds 69 % of
/// the rows). Returns the choice and why.
pub fn choose_feed(
    requested: &str,
    jobs: u32,
    expected_bytes: Option<u64>,
    free_bytes: Option<u64>,
    largest_share: Option<f64>,
) -> (Feed, String) {
    match requested {
        "stream" => (Feed::Stream, "asked for".into()),
        "file" => (Feed::File, "asked for".into()),
        "tee" => (Feed::Tee, "asked for".into()),
        _ if jobs <= 1 => (Feed::Stream, "one job: a file would only add a pass".into()),
        _ => match (expected_bytes, free_bytes) {
            (Some(need), Some(free))
                if free < need.saturating_add(need / 4).saturating_add(1 << 30) =>
            {
                (
                    Feed::Stream,
                    format!(
                        "{jobs} jobs, but the staging area has {} MB free for a dump of about {} MB: streamed serially",
                        free >> 20,
                        need >> 20
                    ),
                )
            }
            (_, None) => (
                Feed::Stream,
                "free space in the staging area unknown: streamed serially".into(),
            ),
            _ => match largest_share {
                Some(share) if share >= 0.5 => (
                    Feed::Tee,
                    format!(
                        "{jobs} jobs, but one table holds {:.0} % of the rows (its load is serial anyway): data streamed, post-data with -j {jobs}",
                        share * 100.0
                    ),
                ),
                _ => (
                    Feed::File,
                    format!("{jobs} jobs: decompressed to a file for a parallel restore"),
                ),
            },
        },
    }
}

/// The table whose data load a tee restore splits over `jobs` concurrent `COPY ... FROM STDIN`
/// of its rows (COPY text is one row per line, so its lines can be dealt out in chunks): the
/// table with the most rows, when it holds at least half of all rows (its single COPY would
/// bound the data section otherwise) and `jobs` is 2 or more. `counts` maps `schema.table`
/// (each part quoted like `quote_ident`) to rows. Only names that need no quoting qualify:
/// `pg_restore --list` prints names raw, and the split must find exactly that table in it.
/// Returns (schema, table).
pub fn split_table<'a>(
    counts: impl IntoIterator<Item = (&'a String, &'a i64)>,
    jobs: u32,
) -> Option<(String, String)> {
    if jobs < 2 {
        return None;
    }
    let mut total: i64 = 0;
    let mut best: Option<(&String, i64)> = None;
    for (k, n) in counts {
        let n = (*n).max(0);
        total = total.saturating_add(n);
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((k, n));
        }
    }
    let (key, rows) = best?;
    if total == 0 || rows * 2 < total {
        return None;
    }
    let simple = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let (schema, table) = key.split_once('.')?;
    (simple(schema) && simple(table)).then(|| (schema.to_string(), table.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_table() {
        let m = |v: &[(&str, i64)]| -> std::collections::BTreeMap<String, i64> {
            v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        let c = m(&[("app.events", 69), ("app.users", 20), ("public.t", 11)]);
        assert_eq!(
            split_table(&c, 2),
            Some(("app".to_string(), "events".to_string()))
        );
        assert_eq!(split_table(&c, 1), None);
        assert_eq!(
            split_table(&m(&[("app.a", 49), ("app.b", 51)]), 4)
                .unwrap()
                .1,
            "b"
        );
        assert_eq!(
            split_table(&m(&[("app.a", 40), ("app.b", 30), ("x.c", 30)]), 4),
            None
        );
        assert_eq!(split_table(&m(&[("\"App\".e", 9), ("a.b", 1)]), 2), None);
        assert_eq!(split_table(&m(&[("app.\"e x\"", 9)]), 2), None);
        assert_eq!(split_table(&m(&[("app.e", 0)]), 2), None);
        assert_eq!(split_table(&m(&[]), 2), None);
    }

    #[test]
    fn extra_restore_parameters() {
        assert_eq!(
            check_extra_restore_parameters("--no-owner -n app --if-exists").unwrap(),
            vec!["--no-owner", "-n", "app", "--if-exists"]
        );
        assert!(check_extra_restore_parameters("").unwrap().is_empty());
        for bad in [
            "-d x",
            "--dbname=x",
            "--host h",
            "-j 4",
            "--jobs=2",
            "--create",
            "-C",
            "--clean",
            "-1",
            "--single",
            "-f out.sql",
            "--list",
            "-vl",
            "file.dump",
            "--",
        ] {
            assert!(check_extra_restore_parameters(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            check_extra_restore_parameters("-n"),
            Err(RestoreParamError::MissingValue(_))
        ));
    }

    #[test]
    fn renamed_name() {
        let now = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            default_renamed_dbname("shop", now),
            "shop_2026_03_04T050607"
        );
        let long = "é".repeat(40);
        let r = default_renamed_dbname(&long, now);
        assert!(r.len() <= 63 && r.ends_with("_2026_03_04T050607"), "{r}");
    }

    #[test]
    fn role_plans() {
        let needed: Vec<String> = ["app", "postgres", "pg_read_all_data", "reader", "new"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let existing: BTreeSet<String> = ["app", "postgres", "pg_read_all_data", "reader"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = plan_roles(&needed, &existing, "postgres", &ReuseRoles::None);
        assert_eq!(p.create, vec!["new"]);
        assert_eq!(p.system, vec!["postgres", "pg_read_all_data"]);
        assert_eq!(p.conflicts, vec!["app", "reader"]);
        let p = plan_roles(&needed, &existing, "postgres", &ReuseRoles::parse("app"));
        assert_eq!(p.reuse, vec!["app"]);
        assert_eq!(p.conflicts, vec!["reader"]);
        let p = plan_roles(&needed, &existing, "postgres", &ReuseRoles::parse("all"));
        assert!(p.conflicts.is_empty());
        assert_eq!(p.reuse, vec!["app", "reader"]);
    }

    #[test]
    fn feeds() {
        let big = Some(10u64 << 30);
        assert_eq!(choose_feed("stream", 8, None, None, None).0, Feed::Stream);
        assert_eq!(choose_feed("file", 1, None, None, None).0, Feed::File);
        assert_eq!(choose_feed("tee", 1, None, None, None).0, Feed::Tee);
        assert_eq!(choose_feed("auto", 1, Some(1), big, None).0, Feed::Stream);
        assert_eq!(
            choose_feed("auto", 4, Some(1 << 30), big, None).0,
            Feed::File
        );
        assert_eq!(
            choose_feed("auto", 4, Some(1 << 30), big, Some(0.3)).0,
            Feed::File
        );
        assert_eq!(
            choose_feed("auto", 4, Some(1 << 30), big, Some(0.69)).0,
            Feed::Tee
        );
        assert_eq!(
            choose_feed("auto", 4, Some(8 << 30), big, Some(0.9)).0,
            Feed::Stream
        );
        assert_eq!(choose_feed("auto", 4, None, big, None).0, Feed::File);
        assert_eq!(choose_feed("auto", 4, Some(1), None, None).0, Feed::Stream);
    }
}
