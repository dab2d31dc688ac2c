//! Restores: the catalog calls of restore definitions, restore jobs and their reports, the
//! `show_restore_*` listings, and ([`target`]) the statements run against the target PgSQL node
//! of a restore (its roles and databases, renaming or dropping a database, dropping a role).

use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use crate::catalog::{Audit, Catalog, Filter};
use crate::error::DbError;
use crate::rows::Rows;

/// What the shell needs to know about a backup before restoring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSource {
    pub bck_id: i64,
    pub code: String,
    pub dbname: String,
    pub role_list: Vec<String>,
    pub backup_server_id: i64,
    pub backup_server: String,
    pub backup_dir: Option<String>,
    pub execution_status: String,
    /// Major of the pg_dump that wrote the set (`pg_dump_release`).
    pub pg_dump_release: Option<String>,
    pub source_node: String,
    pub finished: chrono::DateTime<chrono::Utc>,
}

/// A restore definition to register; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct NewRestore {
    pub at_time: Option<chrono::DateTime<chrono::Utc>>,
    pub bck_id: i64,
    pub node: String,
    pub target_dbname: String,
    pub renamed_dbname: Option<String>,
    pub extra: Option<String>,
    /// Roles the restore creates; the others of the backup's role list are reused.
    pub roles_to_restore: Vec<String>,
    pub jobs: Option<i32>,
    pub decompression: Option<String>,
    pub acknowledge_nonempty: bool,
    pub remarks: Option<String>,
    /// `--identity FILE`: age identity files on the restoring agent's host (paths only).
    pub identity_files: Vec<String>,
}

/// A claimed restore job as the agent runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRestore {
    pub job_id: i64,
    pub restore_def: i64,
    pub bck_id: i64,
    pub backup_code: String,
    /// Empty for a set in a repository.
    pub backup_dir: String,
    /// A set in a repository (V19): the repository and the key prefix of its objects.
    #[serde(default)]
    pub repository_id: Option<i64>,
    #[serde(default)]
    pub object_prefix: Option<String>,
    pub source_dbname: String,
    pub role_list: Vec<String>,
    pub roles_to_restore: Vec<String>,
    pub target_node_id: i64,
    pub node_fqdn: String,
    pub pgport: i32,
    pub admin_user: String,
    pub admin_dbname: String,
    pub sslmode: String,
    pub target_dbname: String,
    pub renamed_dbname: Option<String>,
    pub extra_restore_parameters: String,
    pub restore_jobs: i32,
    pub decompression: String,
    pub acknowledge_nonempty: bool,
    pub is_drill: bool,
    pub backup_pg_release: Option<String>,
}

impl Catalog {
    async fn restore_rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Rows, DbError> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await?;
        let cols = stmt
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let rows = c.query(&stmt, params).await?;
        Ok(Rows::from_pg_with_columns(cols, &rows))
    }

    /// The backup behind a BckID, for the restore decisions of the shell.
    pub async fn restore_source(&self, bck_id: i64) -> Result<RestoreSource, DbError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "select b.bck_id, b.backup_code, b.dbname, b.role_list, b.backup_server_id, s.fqdn, b.backup_dir,
                        b.execution_status, b.pg_dump_release, n.fqdn || ':' || n.pgport, b.finished
                   from public.backup_catalog b
                   join public.backup_server s on s.server_id = b.backup_server_id
                   join public.pgsql_node n on n.node_id = b.pgsql_node_id
                  where b.bck_id = $1",
                &[&bck_id],
            )
            .await?
            .ok_or_else(|| {
                DbError::Invalid(format!(
                    "BckID {bck_id} does not exist\nHINT: show_backup_catalog lists the backups."
                ))
            })?;
        Ok(RestoreSource {
            bck_id: row.get(0),
            code: row.get(1),
            dbname: row.get(2),
            role_list: row.get(3),
            backup_server_id: row.get(4),
            backup_server: row.get(5),
            backup_dir: row.get(6),
            execution_status: row.get(7),
            pg_dump_release: row.get(8),
            source_node: row.get(9),
            finished: row.get(10),
        })
    }

    /// Registers a restore definition and queues its job, in one audited transaction.
    /// Returns (RestoreDef, JobID).
    pub async fn register_restore_definition(
        &self,
        audit: &Audit,
        r: &NewRestore,
    ) -> Result<(i64, i64), DbError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "select set_config('pgbackman.os_user', $1, true), set_config('pgbackman.command', $2, true)",
            &[&audit.os_user, &audit.command],
        )
        .await?;
        let id: i64 = tx
            .query_one(
                "select api.register_restore_definition($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &r.at_time,
                    &r.bck_id,
                    &r.node,
                    &r.target_dbname,
                    &r.renamed_dbname,
                    &r.extra,
                    &r.roles_to_restore,
                    &r.jobs,
                    &r.decompression,
                    &r.acknowledge_nonempty,
                    &r.remarks,
                ],
            )
            .await?
            .get(0);
        if !r.identity_files.is_empty() {
            // In the same transaction: the job is claimable only with its identities.
            tx.execute(
                "select api.set_restore_identity_files($1, $2)",
                &[&id, &r.identity_files],
            )
            .await?;
        }
        let job: i64 = tx
            .query_one(
                "select job_id from public.job where restore_def = $1",
                &[&id],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok((id, job))
    }

    async fn ids(&self, refs: &Filter, sql: &str) -> Result<Option<Vec<i64>>, DbError> {
        let Some(refs) = refs else { return Ok(None) };
        let c = self.client().await?;
        let mut v = Vec::with_capacity(refs.len());
        for r in refs {
            v.push(c.query_one(sql, &[r]).await?.get(0));
        }
        Ok(Some(v))
    }

    /// Restore definitions, newest first; node and database filters refer to the target.
    pub async fn show_restore_definitions(
        &self,
        server: &Filter,
        node: &Filter,
        dbname: &Filter,
    ) -> Result<Rows, DbError> {
        self.filtered_restore_view(
            "api.show_restore_definitions",
            r#""RestoreDef""#,
            server,
            node,
            dbname,
        )
        .await
    }

    /// The restore catalog, newest first; node and database filters refer to the target.
    pub async fn show_restore_catalog(
        &self,
        server: &Filter,
        node: &Filter,
        dbname: &Filter,
    ) -> Result<Rows, DbError> {
        self.filtered_restore_view(
            "api.show_restore_catalog",
            r#""Finished""#,
            server,
            node,
            dbname,
        )
        .await
    }

    /// `view` (a constant of this module) filtered by backup server, target node and target
    /// database, newest (`order` descending) first, at most 1000 rows.
    async fn filtered_restore_view(
        &self,
        view: &str,
        order: &str,
        server: &Filter,
        node: &Filter,
        dbname: &Filter,
    ) -> Result<Rows, DbError> {
        let servers = self.ids(server, "select api.server_id($1)").await?;
        let nodes = self.ids(node, "select api.node_id($1)").await?;
        let sql = format!(
            r#"select * from {view}
                where ($1::bigint[] is null or "SrvID" = any ($1))
                  and ($2::bigint[] is null or "NodeID" = any ($2))
                  and ($3::text[] is null or "Target DBname" = any ($3))
                order by {order} desc limit 1000"#
        );
        self.restore_rows(&sql, &[&servers, &nodes, dbname]).await
    }

    pub async fn show_restore_details(&self, restore_id: i64) -> Result<Rows, DbError> {
        let r = self
            .restore_rows("select * from api.show_restore_details($1)", &[&restore_id])
            .await?;
        if r.is_empty() {
            return Err(DbError::Invalid(format!(
                "RestoreID {restore_id} does not exist\nHINT: show_restore_catalog lists the restores"
            )));
        }
        Ok(r)
    }

    pub async fn show_restores_in_progress(&self) -> Result<Rows, DbError> {
        self.restore_rows(
            r#"select * from api.show_restores_in_progress order by "RestoreDef""#,
            &[],
        )
        .await
    }

    /// The job's restore: the set, the decisions and the target node.
    pub async fn agent_restore(&self, job_id: i64) -> Result<AgentRestore, DbError> {
        let c = self.client().await?;
        let r = c
            .query_one("select * from api.agent_restore($1)", &[&job_id])
            .await?;
        Ok(AgentRestore {
            job_id: r.get("job_id"),
            restore_def: r.get("restore_def"),
            bck_id: r.get("bck_id"),
            backup_code: r.get("backup_code"),
            backup_dir: r.get::<_, Option<String>>("backup_dir").unwrap_or_default(),
            repository_id: r.get("repository_id"),
            object_prefix: r.get("object_prefix"),
            source_dbname: r.get("source_dbname"),
            role_list: r.get("role_list"),
            roles_to_restore: r.get("roles_to_restore"),
            target_node_id: r.get("target_node_id"),
            node_fqdn: r.get("node_fqdn"),
            pgport: r.get("pgport"),
            admin_user: r.get("admin_user"),
            admin_dbname: r.get("admin_dbname"),
            sslmode: r.get("sslmode"),
            target_dbname: r.get("target_dbname"),
            renamed_dbname: r.get("renamed_dbname"),
            extra_restore_parameters: r.get("extra_restore_parameters"),
            restore_jobs: r.get("restore_jobs"),
            decompression: r.get("decompression"),
            acknowledge_nonempty: r.get("acknowledge_nonempty"),
            is_drill: r.get("is_drill"),
            backup_pg_release: r.get("backup_pg_release"),
        })
    }

    /// Records a restore result; idempotent on the job id, fenced by the attempt (SQLSTATE
    /// PB001 for a stale report). Returns the RestoreID.
    pub async fn report_restore(
        &self,
        job_id: i64,
        attempt: i32,
        result: &serde_json::Value,
    ) -> Result<i64, DbError> {
        let c = self.client().await?;
        Ok(c.query_one(
            "select api.report_restore($1, $2, $3)",
            &[&job_id, &attempt, result],
        )
        .await?
        .get(0))
    }
}

/// Statements against the target PgSQL node of a restore. Errors are the server's message on
/// one line. Names are quoted by the server (`format('%I')`), never spliced by hand.
pub mod target {
    use std::collections::{BTreeMap, BTreeSet};

    use tokio_postgres::Client;

    use crate::error::{DbError, describe_one_line};

    /// What a restore must know about its target before it changes anything.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TargetState {
        pub server_version: String,
        pub server_version_num: i32,
        /// Every database, templates included.
        pub databases: BTreeSet<String>,
        /// Every role whose stored name is UTF-8, predefined ones included.
        pub roles: BTreeSet<String>,
        /// The other roles (named from a session on a database of another encoding): their
        /// stored bytes and OIDs. A set names such a role by its bytes
        /// (`Manifest::role_name_bytes`), so it is matched here byte for byte.
        pub raw_roles: BTreeMap<Vec<u8>, u32>,
        /// The bootstrap superuser (oid 10), usually `postgres`.
        pub bootstrap_superuser: String,
    }

    /// Reads the target's version, databases and roles. Names are read as stored bytes:
    /// database names are decoded as the backup side does (`introspect`'s module doc), so that
    /// they compare with the names of a set whatever the encoding of the admin database; role
    /// names that are not UTF-8 are kept as bytes ([`TargetState::raw_roles`]), whatever the
    /// admin database's encoding.
    pub async fn read_state(c: &Client) -> Result<TargetState, String> {
        use crate::introspect::{decode, raw_sql};
        let e = |e: tokio_postgres::Error| describe_one_line(&e);
        let v = crate::introspect::server_facts(c).await?;
        let mut databases = BTreeSet::new();
        let rows = c
            .query(
                &format!("SELECT {} FROM pg_catalog.pg_database", raw_sql("datname")),
                &[],
            )
            .await
            .map_err(e)?;
        for r in rows {
            databases.insert(decode(c, r.get(0)).await?);
        }
        let mut roles = BTreeSet::new();
        let mut raw_roles = BTreeMap::new();
        let mut bootstrap_superuser = String::new();
        let rows = c
            .query(
                &format!(
                    "SELECT oid, {} FROM pg_catalog.pg_roles",
                    raw_sql("rolname")
                ),
                &[],
            )
            .await
            .map_err(e)?;
        for r in rows {
            let oid: u32 = r.get(0);
            let name = match String::from_utf8(r.get(1)) {
                Ok(name) => name,
                Err(e) => {
                    let bytes = e.into_bytes();
                    if oid == 10 {
                        bootstrap_superuser = String::from_utf8_lossy(&bytes).into_owned();
                    }
                    raw_roles.insert(bytes, oid);
                    continue;
                }
            };
            if oid == 10 {
                bootstrap_superuser = name.clone();
            }
            roles.insert(name);
        }
        Ok(TargetState {
            server_version: v.version,
            server_version_num: v.version_num,
            databases,
            roles,
            raw_roles,
            bootstrap_superuser,
        })
    }

    /// A short admin connection (for the shell): the target's state, or an error naming it.
    pub async fn probe(
        config: impl Into<pgbackman_config::ConnConfig>,
        label: &str,
    ) -> Result<TargetState, DbError> {
        let (config, client, task) = crate::node::admin_connect(config, label).await?;
        let work = read_state(&client);
        let r = crate::tls::within_statement_limit(&config, &client, "reading its state", work)
            .await
            .and_then(|r| r)
            .map_err(|m| DbError::Client {
                context: format!("querying PgSQL node {label}"),
                reason: m,
            });
        crate::node::finish(client, task).await;
        r
    }

    /// Runs `template` with `%I` placeholders filled by the server's `format()`.
    async fn run_formatted(c: &Client, template: &str, args: &[&str]) -> Result<(), String> {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&template];
        params.extend(
            args.iter()
                .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        let placeholders: Vec<String> = (1..=params.len()).map(|i| format!("${i}::text")).collect();
        let sql: String = c
            .query_one(
                &format!("SELECT pg_catalog.format({})", placeholders.join(", ")),
                &params,
            )
            .await
            .map_err(|e| describe_one_line(&e))?
            .get(0);
        c.batch_execute(&sql)
            .await
            .map_err(|e| describe_one_line(&e))
    }

    /// `ALTER DATABASE from RENAME TO to` (fails while anyone is connected to it).
    pub async fn rename_database(c: &Client, from: &str, to: &str) -> Result<(), String> {
        run_formatted(c, "ALTER DATABASE %I RENAME TO %I", &[from, to]).await
    }

    /// `DROP DATABASE name`, disconnecting its sessions first when `force` (PostgreSQL 13+).
    pub async fn drop_database(c: &Client, name: &str, force: bool) -> Result<(), String> {
        if force {
            run_formatted(c, "DROP DATABASE IF EXISTS %I WITH (FORCE)", &[name]).await
        } else {
            run_formatted(c, "DROP DATABASE IF EXISTS %I", &[name]).await
        }
    }

    /// The OID of database `name`, if it exists (tells a database apart from a later one of
    /// the same name).
    pub async fn database_oid(c: &Client, name: &str) -> Result<Option<u32>, String> {
        c.query_opt(
            "SELECT oid FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map(|r| r.map(|r| r.get(0)))
        .map_err(|e| describe_one_line(&e))
    }

    /// `DROP ROLE IF EXISTS name`.
    pub async fn drop_role(c: &Client, name: &str) -> Result<(), String> {
        run_formatted(c, "DROP ROLE IF EXISTS %I", &[name]).await
    }

    /// `DROP ROLE` of the role with OID `oid`, if it exists. By OID because a role named from
    /// a session on a database of another encoding cannot be named from this one; the server
    /// quotes the stored name byte for byte.
    pub async fn drop_role_oid(c: &Client, oid: u32) -> Result<(), String> {
        c.batch_execute(&format!(
            "DO $pgbackman$ DECLARE n name; BEGIN \
               SELECT rolname INTO n FROM pg_catalog.pg_roles WHERE oid = {oid}; \
               IF FOUND THEN EXECUTE pg_catalog.format('DROP ROLE %I', n); END IF; \
             END $pgbackman$"
        ))
        .await
        .map_err(|e| describe_one_line(&e))
    }

    /// Renames the role with OID `oid` to the name stored as `bytes` in this session's
    /// database encoding (`c` must be connected to a database whose encoding reads them, such
    /// as the restored database of the set that recorded them). An MD5 password hash, salted
    /// with the name and so cleared by a rename, is put back as it was: the source's hash was
    /// made with these very bytes (where `pg_authid` is not readable, as on managed services,
    /// no hash was restored to keep). Fails unless the role then holds exactly `bytes`.
    pub async fn rename_role_to_bytes(c: &Client, oid: u32, bytes: &[u8]) -> Result<(), String> {
        let hex = crate::introspect::hex_bytes(bytes);
        c.batch_execute(&format!(
            "DO $pgbackman$ DECLARE n name; p text; t text; BEGIN \
               SELECT rolname INTO n FROM pg_catalog.pg_roles WHERE oid = {oid}; \
               IF NOT FOUND THEN \
                 RAISE EXCEPTION 'role with OID {oid} does not exist' USING ERRCODE = 'undefined_object', \
                   HINT = 'it was created by this restore moments ago: someone dropped it meanwhile; restore again'; \
               END IF; \
               BEGIN \
                 SELECT rolpassword INTO p FROM pg_catalog.pg_authid WHERE oid = {oid}; \
               EXCEPTION WHEN insufficient_privilege THEN p := NULL; \
               END; \
               t := pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), pg_catalog.current_setting('server_encoding')); \
               EXECUTE pg_catalog.format('ALTER ROLE %I RENAME TO %I', n, t); \
               IF p LIKE 'md5%' THEN EXECUTE pg_catalog.format('ALTER ROLE %I PASSWORD %L', t, p); END IF; \
             END $pgbackman$"
        ))
        .await
        .map_err(|e| describe_one_line(&e))?;
        let now = role_bytes(c, &[oid]).await?;
        match now.get(&oid) {
            Some(b) if b == bytes => Ok(()),
            Some(b) => Err(format!(
                "role {oid} is named with bytes {} after its rename, not {hex}: the database of this session (encoding {}) does not spell that name byte for byte",
                crate::introspect::hex_bytes(b),
                c.query_one("SHOW server_encoding", &[])
                    .await
                    .map(|r| r.get::<_, String>(0))
                    .unwrap_or_default()
            )),
            None => Err(format!("role {oid} vanished during its rename")),
        }
    }

    /// The stored name bytes of the roles of `oids` that exist.
    pub async fn role_bytes(c: &Client, oids: &[u32]) -> Result<BTreeMap<u32, Vec<u8>>, String> {
        Ok(c.query(
            &format!(
                "SELECT oid, {} FROM pg_catalog.pg_roles WHERE oid = ANY ($1)",
                crate::introspect::raw_sql("rolname")
            ),
            &[&oids],
        )
        .await
        .map_err(|e| describe_one_line(&e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    /// Sessions connected to `dbname` other than ours.
    pub async fn other_sessions(c: &Client, dbname: &str) -> Result<i64, String> {
        c.query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
            &[&dbname],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| describe_one_line(&e))
    }

    /// The OIDs of the roles of `wanted` that exist (tells a role apart from a later one of the
    /// same name).
    pub async fn role_oids(c: &Client, wanted: &[String]) -> Result<BTreeMap<String, u32>, String> {
        Ok(c.query(
            "SELECT rolname::text, oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)",
            &[&wanted],
        )
        .await
        .map_err(|e| describe_one_line(&e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    /// Roles of `wanted` that exist.
    pub async fn existing_roles(c: &Client, wanted: &[String]) -> Result<BTreeSet<String>, String> {
        Ok(c.query(
            "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)",
            &[&wanted],
        )
        .await
        .map_err(|e| describe_one_line(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }
}
