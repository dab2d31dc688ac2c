//! The reads from a PgBackMan 1.x catalog (`sql/pgbackman.sql` and its upgrades `_2` to `_4`):
//! one consistent read-only snapshot, bounded by a deadline.

use std::time::Duration;

use pgbackman_core::import::{OldBackup, OldDefinition, file_of};
use tokio_postgres::Client;

use crate::error::DbError;

/// How long the whole read may take: a PgBackMan catalog of a large site is read in seconds.
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// A backup server or PgSQL node of the old catalog.
#[derive(Debug, Clone)]
pub struct OldHost {
    pub id: i64,
    pub hostname: String,
    pub domain: String,
    /// Nodes only.
    pub port: i32,
    /// Nodes only.
    pub admin_user: String,
    pub status: String,
    pub remarks: String,
}

/// A per-server or per-node configuration value.
#[derive(Debug, Clone)]
pub struct OldConfig {
    pub owner: i64,
    pub parameter: String,
    pub value: String,
}

/// A definition with the ids of its owners.
#[derive(Debug, Clone)]
pub struct OldDefinitionRow {
    pub server_id: i64,
    pub node_id: i64,
    pub def: OldDefinition,
}

/// A snapshot definition.
#[derive(Debug, Clone)]
pub struct OldSnapshot {
    pub snapshot_id: i64,
    pub server_id: i64,
    pub node_id: i64,
    pub dbname: String,
    /// ISO text with offset.
    pub at_time: String,
    pub code: String,
    pub retention_period: String,
    pub extra: String,
    pub tag: String,
    pub pg_dump_release: Option<String>,
}

/// A backup catalog row: the decision's view and the columns to carry (JSON by old name).
#[derive(Debug, Clone)]
pub struct OldBackupRow {
    pub def_id: Option<i64>,
    pub snapshot_id: Option<i64>,
    pub backup: OldBackup,
    pub columns: serde_json::Value,
}

/// Everything read from the old catalog.
#[derive(Debug, Clone, Default)]
pub struct OldCatalog {
    /// Names the old catalog in `import_map`: system identifier and database.
    pub source: String,
    /// Highest `pgbackman_version.version`.
    pub version: i32,
    pub servers: Vec<OldHost>,
    pub nodes: Vec<OldHost>,
    pub server_config: Vec<OldConfig>,
    pub node_config: Vec<OldConfig>,
    pub definitions: Vec<OldDefinitionRow>,
    pub snapshots: Vec<OldSnapshot>,
    pub backups: Vec<OldBackupRow>,
}

fn old_err(what: &str, target: &str, e: tokio_postgres::Error) -> DbError {
    DbError::client(
        format!("reading {what} from the PgBackMan catalog {target}"),
        e,
    )
}

/// Reads the PgBackMan catalog behind `client` (`target` is its redacted conninfo).
pub async fn read(client: &mut Client, target: &str) -> Result<OldCatalog, DbError> {
    match tokio::time::timeout(READ_DEADLINE, read_all(client, target)).await {
        Ok(r) => r,
        Err(_) => Err(DbError::Client {
            context: format!("reading the PgBackMan catalog {target}"),
            reason: format!(
                "no answer within {} s; check that catalog's load and locks, then run the import again",
                READ_DEADLINE.as_secs()
            ),
        }),
    }
}

async fn read_all(client: &mut Client, target: &str) -> Result<OldCatalog, DbError> {
    let is_pgbackman: bool = client
        .query_one(
            "select to_regclass('pgbackman_version') is not null and to_regclass('backup_catalog') is not null
                    and to_regclass('backup_definition') is not null",
            &[],
        )
        .await
        .map_err(|e| old_err("the schema", target, e))?
        .get(0);
    if !is_pgbackman {
        return Err(DbError::Client {
            context: format!("reading {target}"),
            reason: "this is not a PgBackMan 1.x catalog (no tables pgbackman_version, backup_definition, backup_catalog); \
                     give the conninfo of the database PgBackMan used (dbname=pgbackman by default)"
                .into(),
        });
    }
    // pg_control_system() exists from 9.6 on; older servers are named by address instead.
    let source: String = client
        .query_one(
            "select case when current_setting('server_version_num')::int >= 90600
                         then (select system_identifier::text from pg_control_system())
                         else coalesce(host(inet_server_addr()), 'local') || ':' || current_setting('port') end
                    || '/' || current_database()",
            &[],
        )
        .await
        .map_err(|e| old_err("its identity", target, e))?
        .get(0);
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(|e| old_err("a snapshot", target, e))?;
    tx.batch_execute("set local statement_timeout = '100s'")
        .await
        .map_err(|e| old_err("a snapshot", target, e))?;
    let q = async |what: &str, sql: &str| {
        tx.query(sql, &[])
            .await
            .map_err(|e| old_err(what, target, e))
    };
    let version: i32 = q(
        "the schema version",
        "select coalesce(max(version), 0)::int from pgbackman_version",
    )
    .await?[0]
        .get(0);
    let servers = q(
        "backup servers",
        "select server_id::bigint, hostname::text, coalesce(domain_name, '')::text, coalesce(status, 'RUNNING')::text,
                coalesce(remarks, '')::text from backup_server order by server_id",
    )
    .await?
    .iter()
    .map(|r| OldHost {
        id: r.get(0),
        hostname: r.get(1),
        domain: r.get(2),
        port: 0,
        admin_user: String::new(),
        status: r.get(3),
        remarks: r.get(4),
    })
    .collect();
    let nodes = q(
        "PgSQL nodes",
        "select node_id::bigint, hostname::text, coalesce(domain_name, '')::text, coalesce(pgport, 5432)::int,
                coalesce(admin_user, 'postgres')::text, coalesce(status, 'STOPPED')::text, coalesce(remarks, '')::text
           from pgsql_node order by node_id",
    )
    .await?
    .iter()
    .map(|r| OldHost {
        id: r.get(0),
        hostname: r.get(1),
        domain: r.get(2),
        port: r.get(3),
        admin_user: r.get(4),
        status: r.get(5),
        remarks: r.get(6),
    })
    .collect();
    let config = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| OldConfig {
                owner: r.get(0),
                parameter: r.get(1),
                value: r.get(2),
            })
            .collect::<Vec<_>>()
    };
    let server_config = config(
        q(
            "backup server configuration",
            "select server_id::bigint, parameter::text, coalesce(value, '')::text from backup_server_config
              order by server_id, parameter",
        )
        .await?,
    );
    let node_config = config(
        q(
            "PgSQL node configuration",
            "select node_id::bigint, parameter::text, coalesce(value, '')::text from pgsql_node_config
              order by node_id, parameter",
        )
        .await?,
    );
    let definitions = q(
        "backup definitions",
        "select def_id::bigint, backup_server_id::bigint, pgsql_node_id::bigint, coalesce(dbname, '')::text,
                minutes_cron::text, hours_cron::text, day_month_cron::text, month_cron::text, weekday_cron::text,
                backup_code::text, coalesce(encryption, false), coalesce(retention_period::text, '7 days'),
                coalesce(retention_redundancy, 1)::int, coalesce(extra_backup_parameters, '')::text,
                job_status::text, coalesce(remarks, '')::text
           from backup_definition order by def_id",
    )
    .await?
    .iter()
    .map(|r| OldDefinitionRow {
        server_id: r.get(1),
        node_id: r.get(2),
        def: OldDefinition {
            def_id: r.get(0),
            dbname: r.get(3),
            cron: [r.get(4), r.get(5), r.get(6), r.get(7), r.get(8)],
            code: r.get(9),
            encryption: r.get(10),
            retention_period: r.get(11),
            retention_redundancy: r.get(12),
            extra: r.get(13),
            job_status: r.get(14),
            remarks: r.get(15),
        },
    })
    .collect();
    // pg_dump_release came with schema 2 (1.1.0).
    let release = if version >= 2 {
        "pg_dump_release::text"
    } else {
        "null::text"
    };
    let snapshots = q(
        "snapshot definitions",
        &format!(
            "select snapshot_id::bigint, backup_server_id::bigint, pgsql_node_id::bigint, coalesce(dbname, '')::text,
                    at_time::timestamptz::text, backup_code::text, coalesce(retention_period::text, '7 days'),
                    coalesce(extra_backup_parameters, '')::text, coalesce(remarks, '')::text, {release}
               from snapshot_definition order by snapshot_id"
        ),
    )
    .await?
    .iter()
    .map(|r| OldSnapshot {
        snapshot_id: r.get(0),
        server_id: r.get(1),
        node_id: r.get(2),
        dbname: r.get(3),
        at_time: r.get(4),
        code: r.get(5),
        retention_period: r.get(6),
        extra: r.get(7),
        tag: r.get(8),
        pg_dump_release: r.get(9),
    })
    .collect();
    let backups = q(
        "the backup catalog",
        &format!(
            "select bck_id::bigint, def_id::bigint, snapshot_id::bigint, coalesce(execution_status, '')::text,
                    pg_dump_file::text, pg_dump_roles_file::text, pg_dump_dbconfig_file::text,
                    pg_dump_log_file::text, pg_dump_roles_log_file::text, pg_dump_dbconfig_log_file::text,
                    json_build_object('dbname', dbname, 'procpid', procpid,
                        'started', started::timestamptz, 'finished', coalesce(finished, started)::timestamptz,
                        'pg_dump_file', nullif(nullif(pg_dump_file, 'None'), ''), 'pg_dump_file_size', pg_dump_file_size,
                        'pg_dump_log_file', nullif(nullif(pg_dump_log_file, 'None'), ''),
                        'pg_dump_roles_file', nullif(nullif(pg_dump_roles_file, 'None'), ''), 'pg_dump_roles_file_size', pg_dump_roles_file_size,
                        'pg_dump_roles_log_file', nullif(nullif(pg_dump_roles_log_file, 'None'), ''),
                        'pg_dump_dbconfig_file', nullif(nullif(pg_dump_dbconfig_file, 'None'), ''), 'pg_dump_dbconfig_file_size', pg_dump_dbconfig_file_size,
                        'pg_dump_dbconfig_log_file', nullif(nullif(pg_dump_dbconfig_log_file, 'None'), ''),
                        'global_log_file', global_log_file, 'error_message', error_message,
                        'role_list', coalesce(role_list, '{{}}'), 'pgsql_node_release', pgsql_node_release,
                        'pg_dump_release', {release})
               from backup_catalog order by bck_id"
        ),
    )
    .await?
    .iter()
    .map(|r| {
        let file = |i: usize| file_of(r.get::<_, Option<String>>(i).as_deref());
        OldBackupRow {
            def_id: r.get(1),
            snapshot_id: r.get(2),
            backup: OldBackup {
                bck_id: r.get(0),
                execution_status: r.get(3),
                dump_files: [4, 5, 6].into_iter().filter_map(file).collect(),
                log_files: [7, 8, 9].into_iter().filter_map(file).collect(),
            },
            columns: r.get(10),
        }
    })
    .collect();
    tx.commit()
        .await
        .map_err(|e| old_err("the end of the snapshot", target, e))?;
    Ok(OldCatalog {
        source,
        version,
        servers,
        nodes,
        server_config,
        node_config,
        definitions,
        snapshots,
        backups,
    })
}
