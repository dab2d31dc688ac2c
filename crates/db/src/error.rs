//! Errors of the catalog layer. tokio-postgres prints only "db error" for a server error, so
//! [`DbError`] renders the server's message, detail and hint, which is what a DBA acts on.

use std::fmt;

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
    e.as_db_error().map(|d| ServerMessage {
        code: d.code().code().to_string(),
        message: d.message().to_string(),
        detail: d.detail().map(str::to_string),
        hint: d.hint().map(str::to_string),
    })
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
