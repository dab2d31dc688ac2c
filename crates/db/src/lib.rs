//! Everything that talks to the catalog database: connection pool, typed API calls, migrations,
//! and rendering of PostgreSQL errors; plus the queries against PgSQL nodes ([`node`] for the
//! shell, [`introspect`] for the backup executor in `pgbackman-dump`). SQL text lives here, in
//! `migrations/` and in `sql/` only.

pub mod agent;
pub mod alerts;
pub mod basebackup;
pub mod catalog;
pub mod clone_lifecycle;
pub mod completion;
pub mod copies;
pub mod drill;
pub mod encryption;
pub mod error;
pub mod heartbeat;
pub mod import;
pub mod introspect;
pub mod migrate;
pub mod monitoring;
pub mod node;
pub mod pitr;
pub mod pitr_remote;
pub mod reconcile;
pub mod replication;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod roles;
pub mod rows;
pub mod standby;
pub mod tls;
pub mod verify;
pub mod wal;
pub mod wal_agent;
pub mod wal_node;
pub mod wal_reconcile;
pub mod wal_retention;

pub use catalog::{
    Audit, Catalog, CatalogFilter, DefinitionOptions, DefinitionSummary, DefinitionUpdate, Filter,
    NewDefinition, NewNode, NodeInfo, NodeUpdate,
};
pub use error::{DbError, ServerMessage};
pub use migrate::CatalogStatus;
pub use retention::{RetentionRow, RetentionRows};
pub use rows::{Rows, Value};

/// Opens one plain connection (no pool) for schema work; the connection task is spawned on the
/// current runtime.
pub async fn connect_once<C: Clone + Into<pgbackman_config::ConnConfig>>(
    config: &C,
    target: &str,
) -> Result<tokio_postgres::Client, DbError> {
    tls::connect(&config.clone().into(), target).await
}

/// Connects to `config`'s database, creating it first if it does not exist (for `db init`).
/// Returns whether it was created.
pub async fn ensure_database<C: Clone + Into<pgbackman_config::ConnConfig>>(
    config: &C,
    target: &str,
) -> Result<bool, DbError> {
    let config: &pgbackman_config::ConnConfig = &config.clone().into();
    match tls::connect_raw(config).await {
        Ok(_) => Ok(false),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            let name = config.get_dbname().unwrap_or("pgbackman").to_string();
            let mut admin = config.clone();
            admin.dbname("postgres");
            let c = connect_once(&admin, target).await?;
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            c.batch_execute(&format!("create database {quoted}"))
                .await
                .map_err(|e| DbError::client(format!("creating database {quoted}"), e))?;
            Ok(true)
        }
        Err(e) => Err(DbError::Connect {
            target: target.to_string(),
            reason: tls::describe(&e, config),
        }),
    }
}
