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

/// Connects with a bounded timeout and lists the node's databases. `label` names the node in errors.
pub async fn node_facts(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
) -> Result<NodeFacts, DbError> {
    let mut config = config.into();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("pgbackman");
    let (client, conn) = crate::tls::connect_raw(&config)
        .await
        .map_err(|e| DbError::Connect {
            target: format!("PgSQL node {label}"),
            reason: crate::tls::describe(&e, &config),
        })?;
    let task = tokio::spawn(conn);
    let result = async {
        let v = crate::introspect::read_server_facts(&client).await?;
        let dbs = client
            .query("select datname::text from pg_database where datallowconn and not datistemplate order by 1", &[])
            .await?;
        Ok::<_, tokio_postgres::Error>(NodeFacts {
            server_version_num: v.version_num,
            server_version: v.version,
            databases: dbs.iter().map(|r| r.get(0)).collect(),
        })
    }
    .await
    .map_err(|e| DbError::client(format!("querying PgSQL node {label}"), e));
    drop(client);
    let _ = task.await;
    result
}
