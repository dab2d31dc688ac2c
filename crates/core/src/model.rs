//! Codes, statuses and the small parsers of user input shared by the shell and the agent.
//!
//! Every code enum parses case-insensitively (surrounding whitespace ignored), prints its
//! canonical spelling, lists its values in `ALL`/`NAMES`, and fails with an error listing the
//! valid values.

use std::fmt;
use std::str::FromStr;

pub use crate::params::{ParamError, check_extra_dump_parameters, split_shell_words};

/// A text is not one of the values of a code enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{value}\" is not a valid {what}: use one of {}", valid.join(", "))]
pub struct ParseCodeError {
    /// What was expected, e.g. `backup code`.
    pub what: &'static str,
    /// The text as given.
    pub value: String,
    /// The valid spellings.
    pub valid: &'static [&'static str],
}

macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The canonical spelling of every value, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The canonical spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseCodeError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let t = s.trim();
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(t))
                    .ok_or_else(|| ParseCodeError { what: $what, value: s.to_string(), valid: Self::NAMES })
            }
        }
    };
}

code_enum! {
    /// What a backup contains.
    BackupCode, "backup code" {
        /// One database: schema and data, plus the roles and settings it needs.
        Full => "FULL",
        /// One database: schema only.
        Schema => "SCHEMA",
        /// One database: data only.
        Data => "DATA",
        /// The whole cluster (pg_dumpall).
        Cluster => "CLUSTER",
        /// Roles and tablespaces of the cluster (pg_dumpall --globals-only).
        Globals => "GLOBALS",
        /// The physical cluster (pg_basebackup), restorable with the WAL archive.
        BaseBackup => "BASEBACKUP",
    }
}

impl BackupCode {
    /// True for codes that cover the whole cluster and take no database name
    /// (`CLUSTER`, `GLOBALS`, `BASEBACKUP`).
    pub fn is_cluster_wide(self) -> bool {
        matches!(
            self,
            BackupCode::Cluster | BackupCode::Globals | BackupCode::BaseBackup
        )
    }

    /// True for a physical base backup (pg_basebackup), false for the logical codes.
    pub fn is_physical(self) -> bool {
        self == BackupCode::BaseBackup
    }
}

code_enum! {
    /// Status of a backup definition.
    JobStatus, "job status" {
        /// Scheduled.
        Active => "ACTIVE",
        /// Kept but not scheduled.
        Stopped => "STOPPED",
        /// The database disappeared from its node.
        Deleted => "DELETED",
    }
}

code_enum! {
    /// Status of a backup server or a PgSQL node.
    ServerStatus, "status" {
        /// In service.
        Running => "RUNNING",
        /// Out of service: nothing is scheduled on it.
        Stopped => "STOPPED",
    }
}

code_enum! {
    /// libpq `sslmode`, in libpq's lowercase spelling.
    SslMode, "sslmode" {
        /// Never use TLS.
        Disable => "disable",
        /// TLS only if the server demands it.
        Allow => "allow",
        /// TLS if the server offers it.
        Prefer => "prefer",
        /// TLS, certificate not checked.
        Require => "require",
        /// TLS, certificate chain checked.
        VerifyCa => "verify-ca",
        /// TLS, certificate chain and host name checked.
        VerifyFull => "verify-full",
    }
}

code_enum! {
    /// Output format of listings and reports.
    OutputFormat, "output format" {
        /// Aligned table for people.
        Table => "table",
        /// RFC 4180 CSV.
        Csv => "csv",
        /// Typed JSON.
        Json => "json",
    }
}

code_enum! {
    /// What pgbackman may assume about a PgSQL node.
    NodeProfile, "node profile" {
        /// A server we are superuser on.
        Standard => "standard",
        /// A managed service without superuser (RDS, Cloud SQL, Azure...).
        Managed => "managed",
    }
}

/// Token selecting every database of a node except the system ones.
pub const ALL_DATABASES_TOKEN: &str = "#all_databases#";
/// Token selecting the databases of a node that have no backup definition.
pub const WITHOUT_DEFINITIONS_TOKEN: &str = "#databases_without_backup_definitions#";
/// Legacy spelling of [`WITHOUT_DEFINITIONS_TOKEN`] (PgBackMan's 16-argument form).
pub const WITHOUT_DEFINITIONS_LEGACY_TOKEN: &str = "#databases_without_backups#";
/// Databases never selected by a token: `template0`, `template1`, `postgres`.
pub const SYSTEM_DATABASES: [&str; 3] = ["template0", "template1", "postgres"];

/// Whether `name` is one of [`SYSTEM_DATABASES`] (exact, case-sensitive match).
pub fn is_system_database(name: &str) -> bool {
    SYSTEM_DATABASES.contains(&name)
}

/// The databases a user asked for (the `DBname` argument).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DbSelection {
    /// Named databases: trimmed, case preserved, no duplicates, in the order given.
    Names(Vec<String>),
    /// `#all_databases#`: every database of the node except [`SYSTEM_DATABASES`].
    AllDatabases,
    /// `#databases_without_backup_definitions#` (or `#databases_without_backups#`): the
    /// databases of the node without a backup definition, except [`SYSTEM_DATABASES`].
    WithoutDefinitions,
}

/// A database selection cannot be parsed or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// Nothing was given.
    #[error(
        "no database given: use a name, a comma list of names, #all_databases# or #databases_without_backup_definitions#"
    )]
    Empty,
    /// A comma list has an empty item.
    #[error("database list \"{0}\" has an empty item (a comma too many?)")]
    EmptyItem(String),
    /// A token was mixed with names.
    #[error("{0} must be used alone, not in a list of databases")]
    TokenInList(String),
    /// Text between `#` signs that is not a known token.
    #[error(
        "unknown selection \"{0}\": use #all_databases# or #databases_without_backup_definitions#"
    )]
    UnknownToken(String),
    /// Named databases that the node does not have.
    #[error("{}", missing_message(.0))]
    Missing(Vec<String>),
}

fn missing_message(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    if names.len() == 1 {
        format!("database {} does not exist on the PgSQL node", quoted[0])
    } else {
        format!(
            "databases {} do not exist on the PgSQL node",
            quoted.join(", ")
        )
    }
}

fn token_of(s: &str) -> Option<DbSelection> {
    if s.eq_ignore_ascii_case(ALL_DATABASES_TOKEN) {
        Some(DbSelection::AllDatabases)
    } else if s.eq_ignore_ascii_case(WITHOUT_DEFINITIONS_TOKEN)
        || s.eq_ignore_ascii_case(WITHOUT_DEFINITIONS_LEGACY_TOKEN)
    {
        Some(DbSelection::WithoutDefinitions)
    } else {
        None
    }
}

impl DbSelection {
    /// Parses the `DBname` argument: a token (case-insensitive), or a comma list of names.
    pub fn parse(s: &str) -> Result<DbSelection, SelectionError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(SelectionError::Empty);
        }
        if let Some(sel) = token_of(text) {
            return Ok(sel);
        }
        if !text.contains(',') && text.len() > 1 && text.starts_with('#') && text.ends_with('#') {
            return Err(SelectionError::UnknownToken(text.to_string()));
        }
        let mut names: Vec<String> = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(SelectionError::EmptyItem(text.to_string()));
            }
            if token_of(item).is_some() {
                return Err(SelectionError::TokenInList(item.to_string()));
            }
            if !names.iter().any(|n| n == item) {
                names.push(item.to_string());
            }
        }
        Ok(DbSelection::Names(names))
    }
}

impl FromStr for DbSelection {
    type Err = SelectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DbSelection::parse(s)
    }
}

impl fmt::Display for DbSelection {
    /// The canonical text: a token or the comma list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbSelection::Names(n) => f.write_str(&n.join(",")),
            DbSelection::AllDatabases => f.write_str(ALL_DATABASES_TOKEN),
            DbSelection::WithoutDefinitions => f.write_str(WITHOUT_DEFINITIONS_TOKEN),
        }
    }
}

/// Parses the `DBname exceptions` argument: a comma list, trimmed, empty items skipped,
/// duplicates removed (order kept). Empty input gives an empty list.
pub fn parse_exceptions(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

/// Turns a selection into database names for one node.
///
/// - `AllDatabases`: every database of `node_databases` except [`SYSTEM_DATABASES`];
/// - `WithoutDefinitions`: the same, less those in `databases_with_definitions`;
/// - `Names`: each name must be in `node_databases`, else [`SelectionError::Missing`] lists
///   every missing one.
///
/// `exceptions` are then removed. Token forms come out sorted and without duplicates; names keep
/// the order given. The result may be empty (everything excepted).
pub fn resolve_selection(
    sel: &DbSelection,
    node_databases: &[String],
    databases_with_definitions: &[String],
    exceptions: &[String],
) -> Result<Vec<String>, SelectionError> {
    let excepted = |d: &String| exceptions.contains(d);
    match sel {
        DbSelection::Names(names) => {
            let missing: Vec<String> = names
                .iter()
                .filter(|n| !node_databases.contains(n))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(SelectionError::Missing(missing));
            }
            Ok(names.iter().filter(|n| !excepted(n)).cloned().collect())
        }
        DbSelection::AllDatabases | DbSelection::WithoutDefinitions => {
            let skip_defined = *sel == DbSelection::WithoutDefinitions;
            let mut out: Vec<String> = node_databases
                .iter()
                .filter(|d| !is_system_database(d))
                .filter(|d| !(skip_defined && databases_with_definitions.contains(d)))
                .filter(|d| !excepted(d))
                .cloned()
                .collect();
            out.sort();
            out.dedup();
            Ok(out)
        }
    }
}

/// A filter of a listing: everything, or any of some values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter<T> {
    /// No filter.
    All,
    /// Keep items equal to any of these.
    Any(Vec<T>),
}

impl<T: PartialEq> Filter<T> {
    /// Whether `v` passes the filter.
    pub fn matches(&self, v: &T) -> bool {
        match self {
            Filter::All => true,
            Filter::Any(vals) => vals.contains(v),
        }
    }

    /// Whether this is [`Filter::All`].
    pub fn is_all(&self) -> bool {
        matches!(self, Filter::All)
    }
}

/// Parses a filter argument: `""`, `all` or `*` (case-insensitive, whitespace ignored) give
/// [`Filter::All`]; anything else is a comma list, trimmed, empty items skipped, duplicates
/// removed in order (a list of only commas is also `All`).
pub fn parse_filter(s: &str) -> Filter<String> {
    let t = s.trim();
    if t.is_empty() || t == "*" || t.eq_ignore_ascii_case("all") {
        return Filter::All;
    }
    let items = parse_exceptions(t);
    if items.is_empty() {
        Filter::All
    } else {
        Filter::Any(items)
    }
}

/// A value given by the user is not valid; the message says what to give instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValueError {
    /// The text as given.
    pub value: String,
    /// Full message, e.g. `port "70000" is not a port: use a number from 1 to 65535`.
    pub message: String,
}

/// A backup server or PgSQL node as the user names it: its ID or its FQDN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectRef {
    /// All digits: the numeric ID.
    Id(i64),
    /// Anything else: the FQDN (trimmed, case preserved).
    Fqdn(String),
}

/// A backup server given by ID or FQDN.
pub type ServerRef = ObjectRef;
/// A PgSQL node given by ID or FQDN.
pub type NodeRef = ObjectRef;

impl ObjectRef {
    /// Parses `SrvID|FQDN` / `NodeID|FQDN`: all ASCII digits → `Id`, else `Fqdn`.
    pub fn parse(s: &str) -> Result<ObjectRef, ValueError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ValueError {
                value: s.to_string(),
                message: "an ID or FQDN is required: give the number shown in the ID column or the full host name".into(),
            });
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return t.parse().map(ObjectRef::Id).map_err(|_| ValueError {
                value: s.to_string(),
                message: format!("ID \"{t}\" is too large to be an ID"),
            });
        }
        Ok(ObjectRef::Fqdn(t.to_string()))
    }
}

impl FromStr for ObjectRef {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectRef::parse(s)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Id(id) => write!(f, "{id}"),
            ObjectRef::Fqdn(n) => f.write_str(n),
        }
    }
}

/// Parses a TCP port, 1-65535 (surrounding whitespace ignored).
pub fn parse_port(s: &str) -> Result<u16, ValueError> {
    let t = s.trim();
    match t.parse::<u16>() {
        Ok(p) if p >= 1 && t.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(ValueError {
            value: s.to_string(),
            message: format!("port \"{t}\" is not a port: use a number from 1 to 65535"),
        }),
    }
}

/// Largest retention redundancy accepted.
pub const MAX_REDUNDANCY: i32 = 10_000;

/// Parses a retention redundancy (how many backups to keep at least), 0-10000.
pub fn parse_redundancy(s: &str) -> Result<i32, ValueError> {
    let t = s.trim();
    match t.parse::<i32>() {
        Ok(n) if (0..=MAX_REDUNDANCY).contains(&n) && t.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(n)
        }
        _ => Err(ValueError {
            value: s.to_string(),
            message: format!(
                "retention redundancy \"{t}\" is not valid: use a whole number from 0 to {MAX_REDUNDANCY}"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn code_enums_parse_and_print() {
        let cases: &[(&str, BackupCode)] = &[
            ("FULL", BackupCode::Full),
            ("full", BackupCode::Full),
            (" Schema ", BackupCode::Schema),
            ("data", BackupCode::Data),
            ("CLUSTER", BackupCode::Cluster),
            ("globals", BackupCode::Globals),
        ];
        for (text, code) in cases {
            assert_eq!(text.parse::<BackupCode>().unwrap(), *code);
        }
        for c in BackupCode::ALL {
            assert_eq!(c.to_string().parse::<BackupCode>().unwrap(), *c);
            assert_eq!(c.to_string(), c.to_string().to_uppercase());
        }
        assert_eq!(
            BackupCode::NAMES,
            ["FULL", "SCHEMA", "DATA", "CLUSTER", "GLOBALS", "BASEBACKUP"]
        );
        assert!(BackupCode::Cluster.is_cluster_wide() && BackupCode::Globals.is_cluster_wide());
        assert!(BackupCode::BaseBackup.is_cluster_wide() && BackupCode::BaseBackup.is_physical());
        assert!(!BackupCode::Cluster.is_physical());
        assert!(!BackupCode::Full.is_cluster_wide());

        assert_eq!("active".parse::<JobStatus>().unwrap(), JobStatus::Active);
        assert_eq!(JobStatus::Deleted.to_string(), "DELETED");
        assert_eq!(JobStatus::NAMES, ["ACTIVE", "STOPPED", "DELETED"]);
        assert_eq!(
            "Running".parse::<ServerStatus>().unwrap(),
            ServerStatus::Running
        );
        assert_eq!(ServerStatus::Stopped.to_string(), "STOPPED");
        assert_eq!(
            "VERIFY-FULL".parse::<SslMode>().unwrap(),
            SslMode::VerifyFull
        );
        assert_eq!(SslMode::VerifyCa.to_string(), "verify-ca");
        assert_eq!(SslMode::ALL.len(), 6);
        assert_eq!("JSON".parse::<OutputFormat>().unwrap(), OutputFormat::Json);
        assert_eq!(OutputFormat::Csv.to_string(), "csv");
        assert_eq!(
            "Managed".parse::<NodeProfile>().unwrap(),
            NodeProfile::Managed
        );
        assert_eq!(NodeProfile::Standard.to_string(), "standard");
        assert_eq!(format!("{:<6}|", OutputFormat::Csv), "csv   |");
    }

    #[test]
    fn code_enum_errors_list_valid_values() {
        let e = "RDS".parse::<BackupCode>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"RDS\" is not a valid backup code: use one of FULL, SCHEMA, DATA, CLUSTER, GLOBALS, BASEBACKUP"
        );
        let e = "verify_ca".parse::<SslMode>().unwrap_err().to_string();
        assert!(
            e.contains("disable, allow, prefer, require, verify-ca, verify-full"),
            "{e}"
        );
        assert!(
            "".parse::<OutputFormat>()
                .unwrap_err()
                .to_string()
                .contains("table, csv, json")
        );
        assert!(
            "DOWN"
                .parse::<ServerStatus>()
                .unwrap_err()
                .to_string()
                .contains("RUNNING, STOPPED")
        );
        assert!("x".parse::<JobStatus>().is_err());
        assert!("x".parse::<NodeProfile>().is_err());
    }

    #[test]
    fn db_selection_parses() {
        let cases: &[(&str, DbSelection)] = &[
            ("#all_databases#", DbSelection::AllDatabases),
            (" #ALL_DATABASES# ", DbSelection::AllDatabases),
            (
                "#databases_without_backup_definitions#",
                DbSelection::WithoutDefinitions,
            ),
            (
                "#databases_without_backups#",
                DbSelection::WithoutDefinitions,
            ),
            ("db1", DbSelection::Names(v(&["db1"]))),
            (
                "Db1, db2 ,db3",
                DbSelection::Names(v(&["Db1", "db2", "db3"])),
            ),
            ("b,a,b,a,c", DbSelection::Names(v(&["b", "a", "c"]))),
            ("my db", DbSelection::Names(v(&["my db"]))),
            ("#", DbSelection::Names(v(&["#"]))),
        ];
        for (text, want) in cases {
            assert_eq!(&text.parse::<DbSelection>().unwrap(), want, "{text:?}");
        }
        assert_eq!(
            DbSelection::WithoutDefinitions.to_string(),
            WITHOUT_DEFINITIONS_TOKEN
        );
        assert_eq!(DbSelection::Names(v(&["a", "b"])).to_string(), "a,b");
    }

    #[test]
    fn db_selection_rejects() {
        let cases: &[(&str, SelectionError)] = &[
            ("", SelectionError::Empty),
            ("  ", SelectionError::Empty),
            ("a,,b", SelectionError::EmptyItem("a,,b".into())),
            ("a,", SelectionError::EmptyItem("a,".into())),
            (",a", SelectionError::EmptyItem(",a".into())),
            (
                "a,#all_databases#",
                SelectionError::TokenInList("#all_databases#".into()),
            ),
            (
                "#databases_without_backups#,a",
                SelectionError::TokenInList("#databases_without_backups#".into()),
            ),
            ("#all#", SelectionError::UnknownToken("#all#".into())),
        ];
        for (text, want) in cases {
            assert_eq!(&DbSelection::parse(text).unwrap_err(), want, "{text:?}");
        }
        assert!(
            SelectionError::Empty
                .to_string()
                .contains("#all_databases#")
        );
    }

    #[test]
    fn exceptions_parse() {
        assert!(parse_exceptions("").is_empty());
        assert!(parse_exceptions(" , ,").is_empty());
        assert_eq!(parse_exceptions("a, b,,a ,C"), v(&["a", "b", "C"]));
    }

    #[test]
    fn selection_resolves() {
        let node = v(&[
            "postgres",
            "template0",
            "template1",
            "zeta",
            "alpha",
            "Beta",
            "mid",
        ]);
        let with = v(&["alpha", "gone"]);
        let none: Vec<String> = vec![];
        let cases: &[(&str, &[&str], Vec<String>)] = &[
            ("#all_databases#", &[], v(&["Beta", "alpha", "mid", "zeta"])),
            (
                "#all_databases#",
                &["mid", "nothere"],
                v(&["Beta", "alpha", "zeta"]),
            ),
            (
                "#databases_without_backup_definitions#",
                &[],
                v(&["Beta", "mid", "zeta"]),
            ),
            (
                "#databases_without_backups#",
                &["zeta"],
                v(&["Beta", "mid"]),
            ),
            ("zeta,alpha", &[], v(&["zeta", "alpha"])),
            ("zeta,alpha", &["zeta"], v(&["alpha"])),
            ("postgres", &[], v(&["postgres"])),
            ("mid", &["mid"], none.clone()),
        ];
        for (text, exc, want) in cases {
            let sel: DbSelection = text.parse().unwrap();
            let got = resolve_selection(&sel, &node, &with, &v(exc)).unwrap();
            assert_eq!(&got, want, "{text} minus {exc:?}");
        }
        // Duplicated node entries come out once.
        let dup = v(&["b", "a", "b"]);
        assert_eq!(
            resolve_selection(&DbSelection::AllDatabases, &dup, &[], &[]).unwrap(),
            v(&["a", "b"])
        );
    }

    #[test]
    fn selection_reports_every_missing_database() {
        let node = v(&["a", "b"]);
        let sel = DbSelection::parse("a,x,B,y").unwrap();
        let e = resolve_selection(&sel, &node, &[], &[]).unwrap_err();
        assert_eq!(e, SelectionError::Missing(v(&["x", "B", "y"])));
        assert_eq!(
            e.to_string(),
            "databases \"x\", \"B\", \"y\" do not exist on the PgSQL node"
        );
        let e = resolve_selection(&DbSelection::parse("x").unwrap(), &node, &[], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "database \"x\" does not exist on the PgSQL node"
        );
    }

    #[test]
    fn system_databases() {
        for d in ["template0", "template1", "postgres"] {
            assert!(is_system_database(d));
        }
        for d in ["Postgres", "postgres2", "app", ""] {
            assert!(!is_system_database(d));
        }
    }

    #[test]
    fn filters() {
        for s in ["", "  ", "all", "ALL", " All ", "*", " * ", ",", " , "] {
            assert_eq!(parse_filter(s), Filter::All, "{s:?}");
        }
        assert_eq!(parse_filter("a"), Filter::Any(v(&["a"])));
        assert_eq!(parse_filter(" a , b,,a"), Filter::Any(v(&["a", "b"])));
        assert_eq!(parse_filter("all,x"), Filter::Any(v(&["all", "x"])));
        let f = parse_filter("a,b");
        assert!(f.matches(&"a".to_string()) && !f.matches(&"c".to_string()) && !f.is_all());
        assert!(Filter::<String>::All.matches(&"z".to_string()));
    }

    #[test]
    fn object_refs() {
        let cases: &[(&str, ObjectRef)] = &[
            ("1", ObjectRef::Id(1)),
            (" 42 ", ObjectRef::Id(42)),
            ("007", ObjectRef::Id(7)),
            (
                "pg01.example.org",
                ObjectRef::Fqdn("pg01.example.org".into()),
            ),
            (
                " PG01.Example.org ",
                ObjectRef::Fqdn("PG01.Example.org".into()),
            ),
            ("1a", ObjectRef::Fqdn("1a".into())),
            ("-1", ObjectRef::Fqdn("-1".into())),
            ("10.0.0.1", ObjectRef::Fqdn("10.0.0.1".into())),
        ];
        for (text, want) in cases {
            assert_eq!(&text.parse::<ObjectRef>().unwrap(), want, "{text:?}");
        }
        assert!(ObjectRef::parse("").is_err());
        assert!(ObjectRef::parse("   ").is_err());
        assert!(
            ObjectRef::parse("99999999999999999999")
                .unwrap_err()
                .message
                .contains("too large")
        );
        assert_eq!(ObjectRef::Id(3).to_string(), "3");
        assert_eq!(ObjectRef::Fqdn("h.d".into()).to_string(), "h.d");
    }

    #[test]
    fn ports() {
        for (s, p) in [
            ("1", 1),
            ("5432", 5432),
            (" 65535 ", 65535),
            ("05432", 5432),
        ] {
            assert_eq!(parse_port(s).unwrap(), p, "{s:?}");
        }
        for s in [
            "0", "65536", "70000", "-1", "+5432", "", "abc", "54 32", "5432.0",
        ] {
            assert!(parse_port(s).is_err(), "{s:?}");
        }
        assert_eq!(
            parse_port("70000").unwrap_err().to_string(),
            "port \"70000\" is not a port: use a number from 1 to 65535"
        );
    }

    #[test]
    fn redundancy() {
        for (s, n) in [("0", 0), ("1", 1), (" 7 ", 7), ("10000", 10_000)] {
            assert_eq!(parse_redundancy(s).unwrap(), n, "{s:?}");
        }
        for s in ["-1", "10001", "+1", "", "one", "1.5", "99999999999"] {
            let e = parse_redundancy(s).unwrap_err();
            assert!(
                e.to_string().contains("use a whole number from 0 to 10000"),
                "{s:?}"
            );
        }
    }
}
