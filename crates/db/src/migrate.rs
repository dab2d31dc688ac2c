//! Catalog installation and upgrade: refinery migrations for tables, then the `sql/` bundle
//! (schema `api`: functions, triggers, views) re-created in one transaction. Both run under one
//! advisory lock, so two `db upgrade`s (or an upgrade racing an init) never interleave.

use tokio_postgres::Client;

use crate::error::DbError;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The `sql/` files, applied in this order. A test checks that every file of `sql/` is listed.
pub const SQL_BUNDLE: &[(&str, &str)] = &[
    ("00_reset.sql", include_str!("../../../sql/00_reset.sql")),
    (
        "10_helpers.sql",
        include_str!("../../../sql/10_helpers.sql"),
    ),
    (
        "15_agent_scope.sql",
        include_str!("../../../sql/15_agent_scope.sql"),
    ),
    (
        "20_servers_nodes.sql",
        include_str!("../../../sql/20_servers_nodes.sql"),
    ),
    ("25_agents.sql", include_str!("../../../sql/25_agents.sql")),
    (
        "30_definitions.sql",
        include_str!("../../../sql/30_definitions.sql"),
    ),
    (
        "35_encryption.sql",
        include_str!("../../../sql/35_encryption.sql"),
    ),
    ("40_jobs.sql", include_str!("../../../sql/40_jobs.sql")),
    ("45_spool.sql", include_str!("../../../sql/45_spool.sql")),
    (
        "50_restore.sql",
        include_str!("../../../sql/50_restore.sql"),
    ),
    ("55_verify.sql", include_str!("../../../sql/55_verify.sql")),
    (
        "60_retention.sql",
        include_str!("../../../sql/60_retention.sql"),
    ),
    (
        "62_reconcile.sql",
        include_str!("../../../sql/62_reconcile.sql"),
    ),
    ("65_alerts.sql", include_str!("../../../sql/65_alerts.sql")),
    ("70_import.sql", include_str!("../../../sql/70_import.sql")),
    (
        "80_triggers.sql",
        include_str!("../../../sql/80_triggers.sql"),
    ),
    ("85_wal.sql", include_str!("../../../sql/85_wal.sql")),
    (
        "86_wal_windows.sql",
        include_str!("../../../sql/86_wal_windows.sql"),
    ),
    (
        "87_base_backups.sql",
        include_str!("../../../sql/87_base_backups.sql"),
    ),
    (
        "87_repositories.sql",
        include_str!("../../../sql/87_repositories.sql"),
    ),
    (
        "87_repository_copies.sql",
        include_str!("../../../sql/87_repository_copies.sql"),
    ),
    (
        "87_wal_monitor.sql",
        include_str!("../../../sql/87_wal_monitor.sql"),
    ),
    (
        "88_wal_retention.sql",
        include_str!("../../../sql/88_wal_retention.sql"),
    ),
    ("89_clones.sql", include_str!("../../../sql/89_clones.sql")),
    ("89_pitr.sql", include_str!("../../../sql/89_pitr.sql")),
    (
        "89_pitr_remote.sql",
        include_str!("../../../sql/89_pitr_remote.sql"),
    ),
    (
        "89_wal_missing.sql",
        include_str!("../../../sql/89_wal_missing.sql"),
    ),
    (
        "90_clone_lifecycle.sql",
        include_str!("../../../sql/90_clone_lifecycle.sql"),
    ),
    ("90_drills.sql", include_str!("../../../sql/90_drills.sql")),
    ("90_views.sql", include_str!("../../../sql/90_views.sql")),
    (
        "92_monitoring.sql",
        include_str!("../../../sql/92_monitoring.sql"),
    ),
    (
        "95_security.sql",
        include_str!("../../../sql/95_security.sql"),
    ),
];

/// Key of the advisory lock held while the catalog schema changes ("pgbackman" in ASCII).
const MIGRATION_LOCK: i64 = 0x7067_6261_636b_6d61;

/// The version of pgbackman that is running.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Highest migration version this binary carries.
pub fn expected_schema_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// Identifies the `sql/` bundle this binary carries (FNV-1a over names and contents).
pub fn sql_bundle_version() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, body) in SQL_BUNDLE {
        for b in name.bytes().chain(body.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// What `pgbackman db status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStatus {
    /// Highest migration applied, None when the database holds no catalog.
    pub installed: Option<i32>,
    pub expected: i32,
    pub sql_installed: Option<String>,
    pub sql_expected: String,
    pub software_installed: Option<String>,
}

impl CatalogStatus {
    pub fn is_current(&self) -> bool {
        self.installed == Some(self.expected)
            && self.sql_installed.as_deref() == Some(self.sql_expected.as_str())
    }

    /// Why this binary cannot work with the catalog, and what to run.
    pub fn compatibility(&self, target: &str) -> Result<(), DbError> {
        match self.installed {
            None => Err(DbError::NotInitialized { target: target.to_string() }),
            Some(v) if v > self.expected => Err(DbError::Incompatible {
                message: format!(
                    "the catalog is at schema version {v}, newer than this pgbackman {SOFTWARE_VERSION} (schema {})",
                    self.expected
                ),
                hint: "upgrade the pgbackman binaries on this host to the version that upgraded the catalog".into(),
            }),
            Some(v) if v < self.expected => Err(DbError::Incompatible {
                message: format!(
                    "the catalog is at schema version {v}, older than this pgbackman {SOFTWARE_VERSION} (schema {})",
                    self.expected
                ),
                hint: "run `pgbackman db upgrade` (stop the agents first if the release notes say so)".into(),
            }),
            Some(_) if self.sql_installed.as_deref() != Some(self.sql_expected.as_str()) => Err(DbError::Incompatible {
                message: format!(
                    "the catalog functions were installed by pgbackman {}, not by this pgbackman {SOFTWARE_VERSION}",
                    self.software_installed.as_deref().unwrap_or("unknown")
                ),
                hint: "run `pgbackman db upgrade` with the newer of the two versions".into(),
            }),
            Some(_) => Ok(()),
        }
    }
}

pub async fn status(client: &Client) -> Result<CatalogStatus, DbError> {
    let has_history = client
        .query_one(
            "select to_regclass('public.refinery_schema_history') is not null",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    let has_info = client
        .query_one("select to_regclass('public.catalog_info') is not null", &[])
        .await?
        .get::<_, bool>(0);
    let installed = if has_history {
        client
            .query_one(
                "select max(version)::int4 from refinery_schema_history",
                &[],
            )
            .await?
            .get(0)
    } else {
        None
    };
    let (sql_installed, software_installed) = if has_info {
        let r = client
            .query_one(
                "select nullif(sql_version, ''), nullif(software, '') from catalog_info",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    } else {
        (None, None)
    };
    Ok(CatalogStatus {
        installed,
        expected: expected_schema_version(),
        sql_installed,
        sql_expected: sql_bundle_version(),
        software_installed,
    })
}

/// Creates the catalog in an empty database. Refuses a database that already holds one or that
/// holds other tables (a catalog must not be mixed into an application database by mistake).
pub async fn init(client: &mut Client) -> Result<CatalogStatus, DbError> {
    with_lock(client, async |c: &mut Client| {
        let st = status(c).await?;
        if st.installed.is_some() {
            return Err(DbError::Invalid(
                "this database already holds a pgbackman catalog\nHINT: `pgbackman db status` shows its version; `pgbackman db upgrade` brings it up to date".into(),
            ));
        }
        let foreign: Vec<String> = c
            .query(
                "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where c.relkind in ('r', 'p', 'v', 'm') and n.nspname not in ('pg_catalog', 'information_schema')
                    and n.nspname !~ '^pg_toast' order by 1 limit 5",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !foreign.is_empty() {
            return Err(DbError::Invalid(format!(
                "this database is not empty (it has {}{})\nHINT: create the catalog in a database of its own, e.g. `createdb pgbackman`, or let `pgbackman db init` create it by naming a database that does not exist",
                foreign.join(", "),
                if foreign.len() == 5 { ", ..." } else { "" }
            )));
        }
        apply(c).await
    })
    .await
}

/// Applies pending migrations and re-creates the `sql/` bundle.
pub async fn upgrade(client: &mut Client) -> Result<CatalogStatus, DbError> {
    with_lock(client, async |c: &mut Client| {
        let st = status(c).await?;
        if st.installed.is_none() {
            return Err(DbError::NotInitialized {
                target: "this database".into(),
            });
        }
        if st.installed > Some(st.expected) {
            st.compatibility("this database")?;
        }
        apply(c).await
    })
    .await
}

async fn apply(c: &mut Client) -> Result<CatalogStatus, DbError> {
    embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(c)
        .await
        .map_err(|e| DbError::Client {
            context: "applying catalog migrations".into(),
            reason: e.to_string(),
        })?;
    let tx = c.transaction().await?;
    for (name, body) in SQL_BUNDLE {
        tx.batch_execute(body)
            .await
            .map_err(|e| match crate::error::server_message(&e) {
                Some(mut m) => {
                    m.message = format!("{name}: {}", m.message);
                    DbError::Server(m)
                }
                None => DbError::client(format!("applying {name}"), e),
            })?;
    }
    tx.execute(
        "update catalog_info set sql_version = $1, sql_applied_at = now(), software = $2",
        &[&sql_bundle_version(), &SOFTWARE_VERSION],
    )
    .await?;
    tx.commit().await?;
    status(c).await
}

async fn with_lock<T>(
    client: &mut Client,
    f: impl AsyncFnOnce(&mut Client) -> Result<T, DbError>,
) -> Result<T, DbError> {
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = f(client).await;
    // Unlock even after a failure; if the connection is gone the server released it anyway.
    let _ = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_in_the_bundle() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = SQL_BUNDLE.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, listed, "sql/ and SQL_BUNDLE differ");
    }

    #[test]
    fn schema_version_is_positive() {
        assert!(expected_schema_version() >= 1);
    }
}
