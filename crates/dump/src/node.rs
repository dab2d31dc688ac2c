//! How a run reaches the PgSQL node: the connection config (host, user, database, pgpass file,
//! `application_name`) and the names row counts are keyed by. The read-only queries themselves
//! (versions, sizes, roles, database settings, tables, row counts, the snapshot) are in
//! [`pgbackman_db::introspect`]: this crate holds no SQL statement.

use std::path::Path;
use std::time::Duration;

use pgbackman_db::introspect::{self, NodeSession};

use crate::spec::NodeConn;

/// Connects to `dbname` on the node (within `node.timeouts`, `application_name` set, password
/// only from the pgpass file) and prepares the session (see [`introspect::connect`]: ISO dates
/// in UTC, no statement or idle-in-transaction timeout, `lock_timeout` as given, 10 s when
/// not). Also returns the warnings of resolving the connection (e.g. about the pgpass file).
pub(crate) async fn connect(
    node: &NodeConn,
    dbname: &str,
    application_name: &str,
    lock_timeout: Option<Duration>,
) -> Result<(NodeSession, Vec<String>), String> {
    let passfile = node.passfile.as_deref().map(Path::to_string_lossy);
    let env = |k: &str| -> Option<String> {
        match k {
            "PGPASSFILE" => passfile
                .as_ref()
                .map(|p| p.to_string())
                .or_else(|| pgbackman_config::real_env(k)),
            "PGAPPNAME" => Some(application_name.to_string()),
            _ => pgbackman_config::real_env(k),
        }
    };
    let resolved = pgbackman_config::node_config_with(
        &node.host,
        node.port,
        &node.user,
        dbname,
        &node.sslmode,
        &env,
    )
    .map_err(|e| e.to_string())?;
    let mut config = resolved.config;
    if let Some(t) = &node.timeouts {
        t.apply(&mut config);
    }
    config.application_name(application_name);
    let session = introspect::connect(config, lock_timeout).await?;
    Ok((session, resolved.warnings))
}

/// `schema.table` with each part quoted like `quote_ident`.
pub(crate) fn table_key(schema: &str, name: &str) -> String {
    format!(
        "{}.{}",
        crate::quote::quote_ident(schema),
        crate::quote::quote_ident(name)
    )
}
