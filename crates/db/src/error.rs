//! Errors of the catalog layer. tokio-postgres prints only "db error" for a server error, so
//! [`DbError`] renders the server's message, detail and hint, which is what a DBA acts on.

use std::fmt;

use pgbackman_core::text::bound_quoted;

/// A PostgreSQL error reduced to what a user needs to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMessage {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerMessage {
    /// The message with its detail and hint on one line: `message (DETAIL: …) (HINT: …)`.
    pub fn one_line(&self) -> String {
        let mut s = self.message.clone();
        if let Some(d) = &self.detail {
            s.push_str(&format!(" (DETAIL: {d})"));
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!(" (HINT: {h})"));
        }
        s
    }
}

impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server refused a statement (validation in a PL/pgSQL function, a constraint, ...).
    #[error("{0}")]
    Server(ServerMessage),
    /// No connection could be made.
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The connection broke or another client-side failure.
    #[error("{context}: {reason}")]
    Client { context: String, reason: String },
    #[error(
        "the catalog in {target} is not initialised\nHINT: run `pgbackman db init` to create it"
    )]
    NotInitialized { target: String },
    #[error("{message}\nHINT: {hint}")]
    Incompatible { message: String, hint: String },
    #[error("{0}")]
    Invalid(String),
    /// The catalog accepted the call but did not answer within its deadline (a lock held, a
    /// frozen server): treated like an unreachable catalog. The call may still commit on the
    /// server; every agent call is idempotent on its key for that reason.
    #[error(
        "the catalog did not answer {call} within {secs} s\nHINT: the catalog is slow, locked or frozen; the deadline is [agent] catalog_timeout_seconds"
    )]
    Timeout { call: String, secs: u64 },
}

impl DbError {
    /// The SQLSTATE of a server error, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            DbError::Server(m) => Some(&m.code),
            _ => None,
        }
    }

    /// The catalog could not be reached or the connection broke (as opposed to the catalog
    /// refusing a request): the caller may go on offline and retry later.
    pub fn is_unreachable(&self) -> bool {
        match self {
            DbError::Connect { .. } | DbError::Client { .. } | DbError::Timeout { .. } => true,
            // connection_exception, operator_intervention (shutdown, starting up, crash recovery)
            DbError::Server(m) => m.code.starts_with("08") || m.code.starts_with("57"),
            _ => false,
        }
    }

    /// The catalog answered too slowly (our deadline, its statement_timeout, the pool's wait)
    /// rather than refusing the connection: `/healthz` says "degraded", not "offline".
    pub fn is_slow(&self) -> bool {
        match self {
            DbError::Timeout { .. } => true,
            // query_canceled: the statement_timeout the agent sets on its sessions
            DbError::Server(m) => m.code == "57014",
            DbError::Connect { reason, .. } | DbError::Client { reason, .. } => {
                reason.contains("timed out") || reason.contains("Timeout")
            }
            _ => false,
        }
    }

    pub(crate) fn client(context: impl Into<String>, e: tokio_postgres::Error) -> DbError {
        match server_message(&e) {
            Some(m) => DbError::Server(m),
            None => DbError::Client {
                context: context.into(),
                reason: describe(&e),
            },
        }
    }
}

/// Turns any tokio-postgres error into our error, keeping the server's fields.
impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::client("catalog request failed", e)
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::client("catalog connection", e),
            other => DbError::Client {
                context: "catalog connection pool".into(),
                reason: other.to_string(),
            },
        }
    }
}

pub(crate) fn server_message(e: &tokio_postgres::Error) -> Option<ServerMessage> {
    e.as_db_error().map(readable)
}

/// The server's error as a user reads it. The API functions raise their own messages with a
/// HINT; what reaches here without one is PostgreSQL's own wording (a constraint name, a type
/// name, a table the role may not read), which is turned into what is wrong and what to do.
/// Quoted input is bounded ([`bound_quoted`]): a 100 kB argument must not make a 300 kB error.
fn readable(d: &tokio_postgres::error::DbError) -> ServerMessage {
    let bound = |s: &str| bound_quoted(s).into_owned();
    let code = d.code().code().to_string();
    let own = |message: String, hint: &str| ServerMessage {
        code: code.clone(),
        message,
        detail: None,
        hint: Some(hint.to_string()),
    };
    let raw = d.hint().is_none();
    let m = match code.as_str() {
        // check_violation: the value of <column> (autonamed <table>_<column>_check).
        "23514" if raw => Some(own(
            format!(
                "the catalog refused the value of {} ({})",
                constraint_subject(d.table(), d.constraint()),
                what_table(d.table())
            ),
            "the value is outside what the catalog accepts; `help <command>` lists the valid values. Nothing was changed.",
        )),
        // numeric_value_out_of_range: an id or a number too large for the catalog's types.
        "22003" if raw => Some(own(
            format!("a number is out of range: {}", bound(d.message())),
            "ids (SrvID, NodeID, DefID, BckID, JobID, ...) are whole numbers from 1 to 9223372036854775807, ports at most 65535; the show_* commands list the ids",
        )),
        // invalid_text_representation: text where the catalog wanted a number.
        "22P02" if raw => Some(own(
            format!(
                "a value is not of the expected type: {}",
                bound(d.message())
            ),
            "give ids and counts as whole numbers; `help <command>` shows each argument",
        )),
        // insufficient_privilege: the role of the catalog connection is not its owner.
        // The server's own words stay in DETAIL: `Catalog::explain_denied` reads the object
        // there to say which catalog role to grant.
        "42501" if raw => Some(ServerMessage {
            detail: Some(bound(d.message())),
            ..own(
                match d.message().strip_prefix("permission denied for ") {
                    Some(object) => format!(
                        "the role of this catalog connection may not use {} (it is not the catalog's owner, nor granted access)",
                        bound(object)
                    ),
                    None => format!(
                        "the role of this catalog connection may not do this: {}",
                        bound(d.message())
                    ),
                },
                "connect as the role that owns the catalog (the one that ran `pgbackman db init`), or have that role grant this one access: `pgbackman db grant ROLE readonly|operator|admin|agent`; the connection comes from --catalog, $PGBACKMAN_CATALOG or [catalog] conninfo",
            )
        }),
        "23505" if raw => Some(own(
            format!(
                "the catalog already has an identical {}",
                what_table(d.table())
            ),
            "the show_* commands list what exists; change one of the values, or update the existing one",
        )),
        "23503" if raw => Some(own(
            format!(
                "the {} is still referred to, or refers to something that does not exist",
                what_table(d.table())
            ),
            "the show_* commands list what refers to it; delete or move that first",
        )),
        "23502" if raw => Some(own(
            format!(
                "{} of the {} is missing",
                d.column().unwrap_or("a value"),
                what_table(d.table())
            ),
            "give every required argument; `help <command>` lists them",
        )),
        _ => None,
    };
    m.unwrap_or_else(|| ServerMessage {
        code,
        message: bound(d.message()),
        detail: d.detail().map(bound),
        hint: d.hint().map(bound),
    })
}

/// "backup_definition" → "backup definition".
fn what_table(table: Option<&str>) -> String {
    table.unwrap_or("catalog row").replace('_', " ")
}

/// The column an autonamed check constraint guards: `backup_definition_retention_redundancy_check`
/// → "retention redundancy"; a constraint over several columns → "a combination of values".
fn constraint_subject(table: Option<&str>, constraint: Option<&str>) -> String {
    let (Some(t), Some(c)) = (table, constraint) else {
        return "a value".into();
    };
    let column = c
        .strip_prefix(t)
        .and_then(|r| r.strip_prefix('_'))
        .map(|r| r.trim_end_matches(|ch: char| ch.is_ascii_digit()))
        .and_then(|r| {
            r.strip_suffix("_check")
                .or(if r == "check" { Some("") } else { None })
        });
    match column {
        Some("") | None => "a combination of values".into(),
        Some(col) => col.replace('_', " "),
    }
}

/// The whole chain of causes: "db error" alone says nothing, the source does.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match server_message(e) {
        Some(m) => m.to_string(),
        None => causes(e),
    }
}

/// [`describe`] on one line, for text that becomes a single log line or note (the node
/// introspection of [`crate::introspect`]): a server error reads
/// `message (DETAIL: …) (HINT: …)`.
pub(crate) fn describe_one_line(e: &tokio_postgres::Error) -> String {
    match server_message(e) {
        Some(m) => m.one_line(),
        None => causes(e),
    }
}

/// A client-side error and its sources, each source once.
fn causes(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_names_become_columns() {
        let t = Some("backup_definition");
        assert_eq!(
            constraint_subject(t, Some("backup_definition_retention_redundancy_check")),
            "retention redundancy"
        );
        assert_eq!(
            constraint_subject(t, Some("backup_definition_check")),
            "a combination of values"
        );
        assert_eq!(
            constraint_subject(t, Some("backup_definition_check1")),
            "a combination of values"
        );
        assert_eq!(constraint_subject(None, None), "a value");
    }
}
