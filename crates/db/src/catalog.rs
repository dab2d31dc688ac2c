//! The catalog API used by the shell: one method per SQL API call or report. Every mutating
//! method runs in one transaction that first records who is acting and which command they typed,
//! so the audit trigger can log it, and either all of its changes land or none do.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::error::DbError;
use crate::migrate::{self, CatalogStatus};
use crate::rows::Rows;

/// Who is acting, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub os_user: String,
    /// The command line as typed (secrets never reach it: the shell takes none on its command line).
    pub command: String,
}

/// A filter from the shell: None means all.
pub type Filter = Option<Vec<String>>;

#[derive(Debug, Clone, Default)]
pub struct NewNode {
    pub hostname: String,
    pub domain: Option<String>,
    pub port: Option<i32>,
    pub admin_user: Option<String>,
    pub admin_dbname: Option<String>,
    pub sslmode: Option<String>,
    pub status: Option<String>,
    pub remarks: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct NodeUpdate {
    pub port: Option<i32>,
    pub admin_user: Option<String>,
    pub admin_dbname: Option<String>,
    pub sslmode: Option<String>,
    pub status: Option<String>,
    pub remarks: Option<String>,
}

/// A PgSQL node as needed to connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: i64,
    pub fqdn: String,
    pub port: u16,
    pub admin_user: String,
    pub admin_dbname: String,
    pub sslmode: String,
    pub status: String,
}

/// Run options of a definition; None keeps the current value (or the default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DefinitionOptions {
    pub format: Option<String>,
    pub jobs: Option<i32>,
    pub compression_level: Option<i32>,
    /// An interval; "none" clears the limit.
    pub max_runtime: Option<String>,
    pub lock_wait_timeout: Option<String>,
    pub client_major: Option<i32>,
    /// BASEBACKUP definitions (`sql/87_base_backups.sql`): `fast` / `spread`.
    pub checkpoint: Option<String>,
    /// pg_basebackup's `--max-rate` (kB/s, or a k / M suffix); `none` removes the limit.
    pub max_rate: Option<String>,
    /// How long a finished base backup waits for its WAL (an interval).
    pub wal_wait: Option<String>,
}

impl DefinitionOptions {
    fn is_empty(&self) -> bool {
        *self == DefinitionOptions::default()
    }
}

async fn set_options(
    tx: &Transaction<'_>,
    def_id: i64,
    o: &DefinitionOptions,
) -> Result<(), DbError> {
    if o.is_empty() {
        return Ok(());
    }
    if o.checkpoint.is_some() || o.max_rate.is_some() || o.wal_wait.is_some() {
        tx.execute(
            "select api.set_base_backup_options($1, $2, $3, $4)",
            &[&def_id, &o.checkpoint, &o.max_rate, &o.wal_wait],
        )
        .await?;
    }
    tx.execute(
        "select api.set_backup_definition_options($1, $2, $3, $4, $5, $6, $7)",
        &[
            &def_id,
            &o.format,
            &o.jobs,
            &o.compression_level,
            &o.max_runtime,
            &o.lock_wait_timeout,
            &o.client_major,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct NewDefinition {
    pub server: String,
    pub node: String,
    pub dbname: String,
    pub minutes: Option<String>,
    pub hours: Option<String>,
    pub day_month: Option<String>,
    pub month: Option<String>,
    pub weekday: Option<String>,
    pub code: Option<String>,
    pub encryption: Option<bool>,
    /// `encryption=KEYNAME`: that key (then `encryption` is ignored).
    pub encryption_key: Option<String>,
    pub retention_period: Option<String>,
    pub retention_redundancy: Option<i32>,
    pub extra_parameters: Option<String>,
    pub job_status: Option<String>,
    pub remarks: Option<String>,
    pub options: DefinitionOptions,
}

#[derive(Debug, Clone, Default)]
pub struct DefinitionUpdate {
    pub def_id: i64,
    pub minutes: Option<String>,
    pub hours: Option<String>,
    pub day_month: Option<String>,
    pub month: Option<String>,
    pub weekday: Option<String>,
    pub retention_period: Option<String>,
    pub retention_redundancy: Option<i32>,
    pub extra_parameters: Option<String>,
    pub job_status: Option<String>,
    pub remarks: Option<String>,
    pub options: DefinitionOptions,
}

/// Filters of show_backup_catalog; None means no filter.
#[derive(Debug, Clone, Default)]
pub struct CatalogFilter {
    pub server: Filter,
    pub node: Filter,
    pub dbname: Filter,
    pub def_ids: Option<Vec<i64>>,
    pub status: Filter,
    pub code: Filter,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// `--encrypted-with KEY`: the sets that key can read (name, KeyID or fingerprint).
    pub encrypted_with: Option<String>,
    pub limit: i64,
}

/// A registered definition as the shell reports it after registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionSummary {
    pub def_id: i64,
    pub dbname: String,
    pub schedule: [String; 5],
    pub code: String,
}

/// WHERE clauses built from fixed column names and bound parameters (never from values).
#[derive(Default)]
struct Predicates {
    clauses: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Predicates {
    fn push(&mut self, lhs: &str, p: Box<dyn ToSql + Sync + Send>) {
        self.params.push(p);
        self.clauses.push(format!("{lhs} ${}", self.params.len()));
    }

    fn any_i64(&mut self, col: &str, v: Option<Vec<i64>>) {
        match v {
            Some(v) if v.len() == 1 => self.push(&format!("{col} ="), Box::new(v[0])),
            Some(v) => self.push(&format!("{col} = any"), Box::new(v)),
            None => {}
        }
    }

    fn any_text(&mut self, col: &str, v: Option<Vec<String>>) {
        match v {
            Some(v) if v.len() == 1 => self.push(&format!("{col} ="), Box::new(v[0].clone())),
            Some(v) => self.push(&format!("{col} = any"), Box::new(v)),
            None => {}
        }
    }

    fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            return String::new();
        }
        // "= any $n" needs parentheses around the parameter.
        let c: Vec<String> = self
            .clauses
            .iter()
            .map(|c| match c.split_once("= any ") {
                Some((l, r)) => format!("{l}= any ({r})"),
                None => c.clone(),
            })
            .collect();
        format!("where {}", c.join(" and "))
    }
}

#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
    target: String,
    pub(crate) config: pgbackman_config::ConnConfig,
    /// The deadline of one call ([`Catalog::within`]); None for the shell.
    deadline: Option<Duration>,
}

impl Catalog {
    /// Builds a pool; the first request opens the connection. `target` is the redacted conninfo,
    /// used in messages.
    pub async fn connect(
        config: impl Into<pgbackman_config::ConnConfig>,
        application_name: &str,
        target: &str,
    ) -> Result<Catalog, DbError> {
        let cat = Catalog::lazy(config, application_name, target)?;
        // Connect now, so a wrong conninfo fails here with the reason, not at the first command.
        drop(cat.client().await?);
        Ok(cat)
    }

    /// A catalog handle that connects at its first use: an agent starts (from its cache) while
    /// the catalog is down, and every later call reconnects by itself.
    pub fn lazy(
        config: impl Into<pgbackman_config::ConnConfig>,
        application_name: &str,
        target: &str,
    ) -> Result<Catalog, DbError> {
        Catalog::build(config.into(), application_name, target, None)
    }

    /// The agent's handle: like [`Catalog::lazy`], but every step of a call has `deadline`: the
    /// connection (connect_timeout, the pool's create and wait), the statement on the server
    /// (statement_timeout, so a lock wait ends there too) and the answer ([`Catalog::within`]).
    pub fn lazy_with_deadline(
        config: impl Into<pgbackman_config::ConnConfig>,
        application_name: &str,
        target: &str,
        deadline: Duration,
    ) -> Result<Catalog, DbError> {
        Catalog::build(config.into(), application_name, target, Some(deadline))
    }

    fn build(
        mut config: pgbackman_config::ConnConfig,
        application_name: &str,
        target: &str,
        deadline: Option<Duration>,
    ) -> Result<Catalog, DbError> {
        config.application_name(application_name);
        // A catalog that stops answering (half-open TCP, a hung server) must surface as an
        // error within seconds, not freeze a shell or an agent's main loop for hours.
        let connect = deadline.unwrap_or(Duration::from_secs(10));
        match config.get_connect_timeout() {
            Some(t) if *t <= connect => {}
            _ => {
                config.connect_timeout(connect);
            }
        }
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(60));
        // No catalog call may block forever on a lock either. With a deadline, the server gives
        // up first (at three quarters of it): a lock wait then ends as a definite error, not as
        // a statement that may still commit after the agent stopped waiting.
        let statement = deadline.map_or(Duration::from_secs(60), |d| d * 3 / 4);
        let options = format!(
            "{} -c statement_timeout={}ms",
            config.get_options().unwrap_or_default(),
            statement.as_millis()
        );
        config.options(options.trim());
        let mgr = Manager::from_connect(
            config.pg.clone(),
            crate::tls::PoolConnect(config.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(deadline.unwrap_or(Duration::from_secs(30))))
            .create_timeout(Some(deadline.unwrap_or(Duration::from_secs(15))))
            .recycle_timeout(Some(deadline.unwrap_or(Duration::from_secs(5))))
            .build()
            .map_err(|e| DbError::Client {
                context: "building the catalog pool".into(),
                reason: e.to_string(),
            })?;
        Ok(Catalog {
            pool,
            target: target.to_string(),
            config,
            deadline,
        })
    }

    /// Runs one call (`what`, for messages) within the handle's deadline. On expiry the call
    /// is dropped, the idle connections (the one it used among them) are closed and each gets a
    /// cancel request, so nothing queues behind a statement nobody waits for; the error is
    /// [`DbError::Timeout`]. The statement may still commit on the server: callers use
    /// idempotent calls only. Without a deadline (the shell) `call` runs as it is.
    pub async fn within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        let Some(d) = self.deadline else {
            return call.await;
        };
        let r = tokio::time::timeout(d, call).await;
        match r {
            Ok(r) => r,
            Err(_) => {
                self.abandon_idle();
                Err(DbError::Timeout {
                    call: what.to_string(),
                    secs: d.as_secs().max(1),
                })
            }
        }
    }

    /// Closes every idle pooled connection, sending each a cancel request first (in the
    /// background, bounded by the deadline: a frozen server takes it when it wakes up).
    pub fn abandon_idle(&self) {
        let d = self.deadline.unwrap_or(Duration::from_secs(5));
        let removed = self.pool.retain(|_, _| false).removed;
        for c in removed {
            let token = c.cancel_token();
            let cfg = self.config.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(d, crate::tls::cancel_query(&token, &cfg)).await;
            });
            drop(c);
        }
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e)
                if e.as_db_error().is_none() || e.code().is_some() =>
            {
                DbError::Connect {
                    target: self.target.clone(),
                    reason: crate::tls::describe(&e, &self.config),
                }
            }
            other => DbError::from(other),
        })
    }

    pub async fn status(&self) -> Result<CatalogStatus, DbError> {
        let c = self.client().await?;
        migrate::status(&c).await
    }

    /// Refuses to go on when this binary and the catalog do not match; the error says what to run.
    pub async fn check_compatible(&self) -> Result<(), DbError> {
        match self.status().await {
            Ok(st) => st.compatibility(&self.target),
            Err(e) => Err(self.explain_denied(e).await),
        }
    }

    pub(crate) async fn rows(
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

    /// Runs `f` in a transaction tagged for the audit log.
    pub(crate) async fn mutate<T>(
        &self,
        audit: &Audit,
        f: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "select set_config('pgbackman.os_user', $1, true), set_config('pgbackman.command', $2, true)",
            &[&audit.os_user, &audit.command],
        )
        .await?;
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn id_of(&self, sql: &str, reference: &str) -> Result<i64, DbError> {
        Ok(self
            .client()
            .await?
            .query_one(sql, &[&reference])
            .await?
            .get(0))
    }

    pub(crate) async fn resolve_ids(
        &self,
        refs: &Filter,
        server: bool,
    ) -> Result<Option<Vec<i64>>, DbError> {
        let Some(refs) = refs else { return Ok(None) };
        let mut v = Vec::with_capacity(refs.len());
        for r in refs {
            v.push(if server {
                self.server_id(r).await?
            } else {
                self.node_id(r).await?
            });
        }
        Ok(Some(v))
    }

    pub async fn server_id(&self, reference: &str) -> Result<i64, DbError> {
        self.id_of("select api.server_id($1)", reference).await
    }

    pub async fn node_id(&self, reference: &str) -> Result<i64, DbError> {
        self.id_of("select api.node_id($1)", reference).await
    }

    // ---- backup servers -------------------------------------------------------------------

    pub async fn register_backup_server(
        &self,
        audit: &Audit,
        hostname: &str,
        domain: Option<&str>,
        status: Option<&str>,
        remarks: Option<&str>,
    ) -> Result<(i64, String), DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let id: i64 = tx
                .query_one(
                    "select api.register_backup_server($1, $2, $3, $4)",
                    &[&hostname, &domain, &status, &remarks],
                )
                .await?
                .get(0);
            // A separate statement: the registering one cannot see its own row through a STABLE function.
            let fqdn = tx
                .query_one("select api.server_fqdn($1)", &[&id])
                .await?
                .get(0);
            Ok((id, fqdn))
        })
        .await
    }

    pub async fn update_backup_server(
        &self,
        audit: &Audit,
        server: &str,
        status: Option<&str>,
        remarks: Option<&str>,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.update_backup_server($1, $2, $3)",
                    &[&server, &status, &remarks],
                )
                .await?
                .get(0))
        })
        .await
    }

    pub async fn delete_backup_server(&self, audit: &Audit, server: &str) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.delete_backup_server($1)", &[&server])
                .await?
                .get(0))
        })
        .await
    }

    /// Sets several parameters at once: all are validated, and all or none are changed.
    pub async fn update_backup_server_config(
        &self,
        audit: &Audit,
        server: &str,
        pairs: &[(String, String)],
    ) -> Result<i64, DbError> {
        self.update_config(
            audit,
            "select api.update_backup_server_config($1, $2, $3)",
            Some(server),
            pairs,
        )
        .await
    }

    pub async fn update_backup_server_default_config(
        &self,
        audit: &Audit,
        pairs: &[(String, String)],
    ) -> Result<i64, DbError> {
        self.update_config(
            audit,
            "select 0::bigint from api.update_backup_server_default_config($1, $2)",
            None,
            pairs,
        )
        .await
    }

    pub async fn update_pgsql_node_config(
        &self,
        audit: &Audit,
        node: &str,
        pairs: &[(String, String)],
    ) -> Result<i64, DbError> {
        self.update_config(
            audit,
            "select api.update_pgsql_node_config($1, $2, $3)",
            Some(node),
            pairs,
        )
        .await
    }

    pub async fn update_pgsql_node_default_config(
        &self,
        audit: &Audit,
        pairs: &[(String, String)],
    ) -> Result<i64, DbError> {
        self.update_config(
            audit,
            "select 0::bigint from api.update_pgsql_node_default_config($1, $2)",
            None,
            pairs,
        )
        .await
    }

    async fn update_config(
        &self,
        audit: &Audit,
        sql: &str,
        object: Option<&str>,
        pairs: &[(String, String)],
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let mut id = 0;
            for (k, v) in pairs {
                let row = match object {
                    Some(o) => tx.query_one(sql, &[&o, k, v]).await?,
                    None => tx.query_one(sql, &[k, v]).await?,
                };
                id = row.get(0);
            }
            Ok(id)
        })
        .await
    }

    pub async fn show_backup_servers(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_backup_servers order by "FQDN""#,
            &[],
        )
        .await
    }

    pub async fn show_backup_server_config(&self, server: &str) -> Result<Rows, DbError> {
        let id = self.server_id(server).await?;
        self.rows("select * from api.show_backup_server_config($1)", &[&id])
            .await
    }

    pub async fn show_backup_server_default_config(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_backup_server_default_config order by "Parameter""#,
            &[],
        )
        .await
    }

    pub async fn backup_server_stats(&self, server: &str) -> Result<Rows, DbError> {
        let id = self.server_id(server).await?;
        self.rows("select * from api.backup_server_stats($1)", &[&id])
            .await
    }

    // ---- PgSQL nodes ----------------------------------------------------------------------

    pub async fn register_pgsql_node(
        &self,
        audit: &Audit,
        n: &NewNode,
    ) -> Result<(i64, String), DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let id: i64 = tx
                .query_one(
                    "select api.register_pgsql_node($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &n.hostname,
                        &n.domain,
                        &n.port,
                        &n.admin_user,
                        &n.admin_dbname,
                        &n.sslmode,
                        &n.status,
                        &n.remarks,
                    ],
                )
                .await?
                .get(0);
            let fqdn = tx
                .query_one("select api.node_fqdn($1)", &[&id])
                .await?
                .get(0);
            Ok((id, fqdn))
        })
        .await
    }

    pub async fn update_pgsql_node(
        &self,
        audit: &Audit,
        node: &str,
        u: &NodeUpdate,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.update_pgsql_node($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &node,
                        &u.port,
                        &u.admin_user,
                        &u.admin_dbname,
                        &u.sslmode,
                        &u.status,
                        &u.remarks,
                    ],
                )
                .await?
                .get(0))
        })
        .await
    }

    pub async fn delete_pgsql_node(&self, audit: &Audit, node: &str) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.delete_pgsql_node($1)", &[&node])
                .await?
                .get(0))
        })
        .await
    }

    /// Nodes matching the filter (None: all), optionally only RUNNING ones.
    pub async fn nodes(
        &self,
        filter: &Filter,
        running_only: bool,
    ) -> Result<Vec<NodeInfo>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select node_id, fqdn, pgport, admin_user, admin_dbname, sslmode, status from public.pgsql_node
                  where ($1::text[] is null or node_id = any (select api.node_id(x) from unnest($1::text[]) x))
                    and (not $2 or status = 'RUNNING')
                  order by fqdn, pgport",
                &[filter, &running_only],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeInfo {
                node_id: r.get(0),
                fqdn: r.get(1),
                port: u16::try_from(r.get::<_, i32>(2)).unwrap_or(5432),
                admin_user: r.get(3),
                admin_dbname: r.get(4),
                sslmode: r.get(5),
                status: r.get(6),
            })
            .collect())
    }

    pub async fn node(&self, node: &str) -> Result<NodeInfo, DbError> {
        let mut v = self.nodes(&Some(vec![node.to_string()]), false).await?;
        v.pop()
            .ok_or_else(|| DbError::Invalid(format!("PgSQL node \"{node}\" is not registered")))
    }

    /// The node's effective configuration (its own values over the defaults).
    pub async fn node_config(&self, node_id: i64) -> Result<BTreeMap<String, String>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                r#"select "Parameter", "Value" from api.show_pgsql_node_config($1)"#,
                &[&node_id],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn show_pgsql_nodes(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_pgsql_nodes order by "FQDN", "Pgport""#,
            &[],
        )
        .await
    }

    pub async fn show_pgsql_node_config(&self, node: &str) -> Result<Rows, DbError> {
        let id = self.node_id(node).await?;
        self.rows("select * from api.show_pgsql_node_config($1)", &[&id])
            .await
    }

    pub async fn show_pgsql_node_default_config(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_pgsql_node_default_config order by "Parameter""#,
            &[],
        )
        .await
    }

    pub async fn pgsql_node_stats(&self, node: &str) -> Result<Rows, DbError> {
        let id = self.node_id(node).await?;
        self.rows("select * from api.pgsql_node_stats($1)", &[&id])
            .await
    }

    // ---- backup definitions ---------------------------------------------------------------

    /// Registers all definitions in one transaction: one bad database refuses the whole command.
    pub async fn register_backup_definitions(
        &self,
        audit: &Audit,
        defs: &[NewDefinition],
    ) -> Result<Vec<DefinitionSummary>, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let mut out = Vec::with_capacity(defs.len());
            for d in defs {
                let id: i64 = tx
                    .query_one(
                        "select api.register_backup_definition($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                        &[
                            &d.server,
                            &d.node,
                            &d.dbname,
                            &d.minutes,
                            &d.hours,
                            &d.day_month,
                            &d.month,
                            &d.weekday,
                            &d.code,
                            &d.encryption,
                            &d.retention_period,
                            &d.retention_redundancy,
                            &d.extra_parameters,
                            &d.job_status,
                            &d.remarks,
                            &d.encryption_key,
                        ],
                    )
                    .await?
                    .get(0);
                set_options(tx, id, &d.options).await?;
                let r = tx
                    .query_one(
                        "select def_id, dbname, minutes_cron, hours_cron, day_month_cron, month_cron, weekday_cron, backup_code
                           from public.backup_definition where def_id = $1",
                        &[&id],
                    )
                    .await?;
                out.push(DefinitionSummary {
                    def_id: r.get(0),
                    dbname: r.get(1),
                    schedule: [r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)],
                    code: r.get(7),
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn update_backup_definition(
        &self,
        audit: &Audit,
        u: &DefinitionUpdate,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            tx.query_one(
                "select api.update_backup_definition($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &u.def_id,
                    &u.minutes,
                    &u.hours,
                    &u.day_month,
                    &u.month,
                    &u.weekday,
                    &u.retention_period,
                    &u.retention_redundancy,
                    &u.extra_parameters,
                    &u.job_status,
                    &u.remarks,
                ],
            )
            .await?;
            set_options(tx, u.def_id, &u.options).await?;
            Ok(u.def_id)
        })
        .await
    }

    /// The five cron fields of a definition (for prompts that show the current values).
    pub async fn definition_schedule(&self, def_id: i64) -> Result<Option<Rows>, DbError> {
        let r = self
            .rows(
                "select minutes_cron, hours_cron, day_month_cron, month_cron, weekday_cron,
                        retention_period::text, retention_redundancy, extra_backup_parameters, job_status, remarks
                   from public.backup_definition where def_id = $1",
                &[&def_id],
            )
            .await?;
        Ok(if r.is_empty() { None } else { Some(r) })
    }

    /// Returns the number of catalog entries removed.
    pub async fn delete_backup_definition_id(
        &self,
        audit: &Audit,
        def_id: i64,
        force: bool,
    ) -> Result<i32, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.delete_backup_definition_id($1, $2)",
                    &[&def_id, &force],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// Returns the number of definitions deleted.
    pub async fn delete_backup_definition_dbname(
        &self,
        audit: &Audit,
        node: &str,
        dbname: &str,
        force: bool,
    ) -> Result<i32, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.delete_backup_definition_dbname($1, $2, $3)",
                    &[&node, &dbname, &force],
                )
                .await?
                .get(0))
        })
        .await
    }

    pub async fn move_backup_definition(
        &self,
        audit: &Audit,
        from: &str,
        to: &str,
        nodes: &Filter,
        dbnames: &Filter,
        def_ids: &Option<Vec<i64>>,
    ) -> Result<i32, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one(
                    "select api.move_backup_definition($1, $2, $3, $4, $5)",
                    &[&from, &to, nodes, dbnames, def_ids],
                )
                .await?
                .get(0))
        })
        .await
    }

    /// Databases of a node that have a live (not DELETED) definition on any backup server.
    pub async fn dbnames_with_definitions(&self, node_id: i64) -> Result<Vec<String>, DbError> {
        let c = self.client().await?;
        Ok(
            c.query("select api.dbnames_with_definitions($1)", &[&node_id])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        )
    }

    pub async fn show_backup_definitions(
        &self,
        server: &Filter,
        node: &Filter,
        dbname: &Filter,
    ) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_backup_definitions
                where ($1::text[] is null or "SrvID" = any (select api.server_id(x) from unnest($1::text[]) x))
                  and ($2::text[] is null or "NodeID" = any (select api.node_id(x) from unnest($2::text[]) x))
                  and ($3::text[] is null or "DBname" = any ($3))
                order by "Backup server", "PgSQL node", "DBname", "Code", "Status", "DefID""#,
            &[server, node, dbname],
        )
        .await
    }

    pub async fn show_empty_backup_catalogs(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_empty_backup_catalogs order by "Backup server", "PgSQL node", "DBname", "DefID""#,
            &[],
        )
        .await
    }

    /// The backup catalog, newest first, with every filter the shell offers. Only the active
    /// filters become predicates (values stay bound parameters), and one value is an equality,
    /// so each filter is served by its index ending in `finished desc`: `limit` rows are read,
    /// not the table.
    pub async fn show_backup_catalog(&self, f: &CatalogFilter) -> Result<Rows, DbError> {
        let (sql, params) = self.backup_catalog_query(f, "").await?;
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        self.rows(&sql, &params).await
    }

    /// The plan of [`Catalog::show_backup_catalog`] for `f` (EXPLAIN, text format): lets tests and
    /// benchmarks prove that every filter is served by an index.
    pub async fn explain_backup_catalog(&self, f: &CatalogFilter) -> Result<String, DbError> {
        let (sql, params) = self.backup_catalog_query(f, "explain (costs off) ").await?;
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let c = self.client().await?;
        let rows = c.query(&sql, &params).await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    async fn backup_catalog_query(
        &self,
        f: &CatalogFilter,
        prefix: &str,
    ) -> Result<(String, Vec<Box<dyn ToSql + Sync + Send>>), DbError> {
        let servers = self.resolve_ids(&f.server, true).await?;
        let nodes = self.resolve_ids(&f.node, false).await?;
        let mut q = Predicates::default();
        q.any_i64(r#""SrvID""#, servers);
        q.any_i64(r#""NodeID""#, nodes);
        q.any_text(r#""DBname""#, f.dbname.clone());
        q.any_i64(r#""DefID""#, f.def_ids.clone());
        q.any_text(r#""Status""#, f.status.clone());
        q.any_text(r#""Code""#, f.code.clone());
        if let Some(t) = f.from {
            q.push(r#""Finished" >="#, Box::new(t));
        }
        if let Some(t) = f.to {
            q.push(r#""Finished" <"#, Box::new(t));
        }
        if let Some(k) = &f.encrypted_with {
            // sql/35_encryption.sql; an unknown key is an error naming it, not an empty list.
            q.params.push(Box::new(k.clone()));
            q.clauses.push(format!(
                r#""BckID" in (select api.sets_encrypted_with(${}))"#,
                q.params.len()
            ));
        }
        let sql = format!(
            r#"{prefix}select * from api.show_backup_catalog {} order by "Finished" desc limit ${}"#,
            q.where_clause(),
            q.params.len() + 1
        );
        q.params.push(Box::new(f.limit));
        Ok((sql, q.params))
    }

    // ---- jobs and snapshots ---------------------------------------------------------------

    pub async fn run_backup_definition_now(
        &self,
        audit: &Audit,
        def_id: i64,
    ) -> Result<i64, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.run_backup_definition_now($1)", &[&def_id])
                .await?
                .get(0))
        })
        .await
    }

    /// Registers one snapshot per database in one transaction; returns the SnapshotIDs.
    #[allow(clippy::too_many_arguments)]
    pub async fn register_snapshots(
        &self,
        audit: &Audit,
        server: &str,
        node: &str,
        dbnames: &[String],
        at_time: Option<chrono::DateTime<chrono::Utc>>,
        code: Option<&str>,
        retention: Option<&str>,
        extra: Option<&str>,
        tag: Option<&str>,
        client_major: Option<i32>,
    ) -> Result<Vec<(i64, String)>, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            let mut out = Vec::new();
            for db in dbnames {
                let id: i64 = tx
                    .query_one(
                        "select api.register_snapshot_definition($1, $2, $3, $4, $5, $6, $7, $8, $9, null)",
                        &[&server, &node, db, &at_time, &code, &retention, &extra, &tag, &client_major],
                    )
                    .await?
                    .get(0);
                let tag: String =
                    tx.query_one("select tag from public.snapshot_definition where snapshot_id = $1", &[&id]).await?.get(0);
                out.push((id, tag));
            }
            Ok(out)
        })
        .await
    }

    pub async fn cancel_job(&self, audit: &Audit, job_id: i64) -> Result<String, DbError> {
        self.mutate(audit, async |tx: &Transaction<'_>| {
            Ok(tx
                .query_one("select api.cancel_job($1)", &[&job_id])
                .await?
                .get(0))
        })
        .await
    }

    /// Open jobs (queued, running, and lost ones not yet looked at), oldest first.
    pub async fn show_jobs_queue(&self, server: &Filter, all: bool) -> Result<Rows, DbError> {
        // Whoever looks first marks the jobs whose agent stopped heartbeating (the agent that
        // would notice may be the one that died). Best effort: a read-only user just sees them.
        let _ = self.mark_lost_jobs().await;
        let servers = self.resolve_ids(server, true).await?;
        self.rows(
            r#"select * from api.show_jobs_queue
                where ($1::bigint[] is null or "SrvID" = any ($1))
                  and ($2 or "State" in ('QUEUED', 'RUNNING', 'LOST'))
                order by "JobID" desc limit 1000"#,
            &[&servers, &all],
        )
        .await
    }

    pub async fn show_snapshot_definitions(
        &self,
        server: &Filter,
        node: &Filter,
        dbname: &Filter,
    ) -> Result<Rows, DbError> {
        let servers = self.resolve_ids(server, true).await?;
        let nodes = self.resolve_ids(node, false).await?;
        self.rows(
            r#"select * from api.show_snapshot_definitions
                where ($1::bigint[] is null or "SrvID" = any ($1))
                  and ($2::bigint[] is null or "NodeID" = any ($2))
                  and ($3::text[] is null or "DBname" = any ($3))
                order by "SnapshotID" desc"#,
            &[&servers, &nodes, dbname],
        )
        .await
    }

    pub async fn show_snapshots_in_progress(&self) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_snapshots_in_progress order by "SnapshotID""#,
            &[],
        )
        .await
    }

    pub async fn show_backup_details(&self, bck_id: i64) -> Result<Rows, DbError> {
        let r = self
            .rows("select * from api.show_backup_details($1)", &[&bck_id])
            .await?;
        if r.is_empty() {
            return Err(DbError::Invalid(format!(
                "BckID {bck_id} does not exist\nHINT: show_backup_catalog lists the backups."
            )));
        }
        Ok(r)
    }

    // ---- reports ----------------------------------------------------------------------------

    pub async fn pgbackman_stats(&self) -> Result<Rows, DbError> {
        self.rows("select * from api.show_pgbackman_stats", &[])
            .await
    }

    pub async fn show_audit_log(&self, limit: i64) -> Result<Rows, DbError> {
        self.rows(
            r#"select * from api.show_audit_log order by "AuditID" desc limit $1"#,
            &[&limit],
        )
        .await
    }

    /// When the installed catalog was created and what applied it, for show_pgbackman_config.
    pub async fn catalog_info(&self) -> Result<Rows, DbError> {
        self.rows(
            "select installed_at, sql_applied_at, software, current_setting('server_version') as server_version
               from public.catalog_info",
            &[],
        )
        .await
    }
}
