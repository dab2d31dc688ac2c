//! Short admin connections to PgSQL nodes (not the catalog): which databases exist, which
//! version runs. Passwords come from pgpass only (see pgbackman-config).

use std::time::Duration;

use crate::error::DbError;

/// What the shell needs to know about a node right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub server_version_num: i32,
    pub server_version: String,
    /// Databases that accept connections, template databases excluded.
    pub databases: Vec<String>,
}

/// Connects and lists the node's databases, within the connection's deadlines (connect; each
/// statement, also as the session's `statement_timeout`). `label` names the node in errors.
pub async fn node_facts(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
) -> Result<NodeFacts, DbError> {
    let (config, client, task) = admin_connect(config, label).await?;
    let work = async {
        let v = crate::introspect::read_server_facts(&client).await?;
        let dbs = client
            .query("select datname::text from pg_database where datallowconn and not datistemplate order by 1", &[])
            .await?;
        Ok::<_, tokio_postgres::Error>(NodeFacts {
            server_version_num: v.version_num,
            server_version: v.version,
            databases: dbs.iter().map(|r| r.get(0)).collect(),
        })
    };
    let result =
        match crate::tls::within_statement_limit(&config, &client, "listing its databases", work)
            .await
        {
            Ok(r) => r.map_err(|e| DbError::client(format!("querying PgSQL node {label}"), e)),
            Err(reason) => Err(DbError::Client {
                context: format!("PgSQL node {label}"),
                reason,
            }),
        };
    finish(client, task).await;
    result
}

/// The defaults of a short admin session: 10 s connect deadline when none is set (a config
/// made without `node_config`), `application_name`, and the statement deadline (plus 1 s, so
/// that our own timeout, which names the setting, comes first) also as the session's
/// `statement_timeout`: the server gives up a query we gave up, even if the cancel is lost.
pub(crate) fn admin_session(config: &mut pgbackman_config::ConnConfig) {
    default_limits(config);
    config.application_name("pgbackman");
    if let Some(limit) = &config.limits.statement
        && config.get_options().is_none()
    {
        let ms = (limit.after.as_millis() + 1000).min(i32::MAX as u128);
        config.options(format!("-c statement_timeout={ms}"));
    }
}

/// The node defaults (`[nodes]` built-in values, PGCONNECT_TIMEOUT) for a config made without
/// `pgbackman_config::node_config` (tests, tools); a connect_timeout it has is kept.
pub(crate) fn default_limits(config: &mut pgbackman_config::ConnConfig) {
    if config.limits.connect.is_none() {
        let mut t = pgbackman_config::NodeTimeouts::default();
        if let Some(given) = config.get_connect_timeout() {
            t.connect = pgbackman_config::Limit {
                after: *given,
                setting: "connect_timeout".into(),
                origin: "of the connection string (or PGCONNECT_TIMEOUT)".into(),
            };
        }
        t.apply(config);
    }
}

/// Ends a short session: a server that stopped answering must not hold us on the goodbye.
/// A short admin session on a node ([`admin_session`] defaults, bounded connect): the config
/// as applied, the client and its connection task (end it with [`finish`]).
pub(crate) async fn admin_connect(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
) -> Result<
    (
        pgbackman_config::ConnConfig,
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    DbError,
> {
    let mut config = config.into();
    admin_session(&mut config);
    let (client, conn) =
        crate::tls::connect_bounded(&config)
            .await
            .map_err(|e| DbError::Connect {
                target: format!("PgSQL node {label}"),
                reason: crate::tls::describe_connect(&e, &config),
            })?;
    let task = tokio::spawn(conn);
    Ok((config, client, task))
}

pub(crate) async fn finish<T>(client: tokio_postgres::Client, task: tokio::task::JoinHandle<T>) {
    drop(client);
    let abort = task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .is_err()
    {
        abort.abort();
    }
}
