//! Read-only introspection of a PgSQL node (not the catalog) for the backup executor
//! (`pgbackman-dump`): the session it reads over, versions, sizes, the roles a database needs,
//! the database's own settings and grants, the tables and their row counts, and the snapshot
//! pg_dump shares. Nothing here writes to the node. Errors are the server's message on one
//! line (`message (DETAIL: …) (HINT: …)`), ready for a log line or a manifest note.
//!
//! Roles are found by querying the catalogs, not by reading dump text: every role referenced
//! from the database in `pg_shdepend` (object owners, ACL grantees and grantors, policy roles,
//! default privileges), the database owner, the grantees and grantors of the database's ACL and
//! the roles with settings in the database, closed transitively over `pg_auth_members` in both
//! directions (roles they belong to and roles that belong to them). Predefined roles and the
//! bootstrap superuser are kept where referenced but never expanded, so that one membership in
//! `pg_read_all_data` does not pull in every role of the cluster.
//!
//! Encodings: a session converts every text it sends from its database's encoding to UTF8, but
//! the shared catalogs (`pg_authid`, `pg_database`, `pg_tablespace`, `pg_shdescription`,
//! `pg_db_role_setting`) hold the bytes of whichever session wrote them, whatever the encoding of
//! the database we read them from. Read as text from a LATIN1 database, the role `reader-ø`
//! written from a UTF8 database comes back as `reader-Ã¸`. So shared names and texts are read
//! as their stored bytes ([`raw_sql`]) and decoded by [`decode`]: UTF-8 when they are (what every
//! UTF8 database, `postgres` included, writes; pg_dump's archive carries the same bytes, so
//! roles.sql names the very roles its `OWNER TO` lines name), else in the encoding of the
//! session's database. Names of the database's own objects are converted by the server, except
//! in a SQL_ASCII database, which converts nothing: its bytes must be UTF-8 there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio_postgres::Client;

use crate::error::describe_one_line;

mod database;
mod roles;

pub use database::{AclEntry, DatabaseInfo, capture_database};
pub use roles::{Membership, RoleCapture, RoleInfo, capture_roles};

/// First oid of user-created objects: roles below it are predefined or the bootstrap superuser.
const FIRST_NORMAL_OID: u32 = 16384;
/// `lock_timeout` of our own session when none is given.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// The bootstrap superuser's oid.
const BOOTSTRAP_SUPERUSER_OID: u32 = 10;

/// SQL for the stored bytes of the text or name `expr`, as `bytea`, with no encoding
/// conversion: the text form with each backslash doubled is read by `byteain`'s escape format.
pub(crate) fn raw_sql(expr: &str) -> String {
    format!(
        "pg_catalog.replace(({expr})::text, pg_catalog.chr(92), pg_catalog.repeat(pg_catalog.chr(92), 2))::bytea"
    )
}

/// A name or text of a shared catalog from its stored bytes (see the module doc): UTF-8 when
/// it is, else converted by the server from the encoding of the session's database; bytes that
/// are neither are an error naming them.
pub(crate) async fn decode(c: &Client, bytes: Vec<u8>) -> Result<String, String> {
    let bytes = match String::from_utf8(bytes) {
        Ok(s) => return Ok(s),
        Err(e) => e.into_bytes(),
    };
    let converted = c
        .query_one(
            "SELECT pg_catalog.convert_from($1, pg_catalog.current_setting('server_encoding'))",
            &[&bytes],
        )
        .await;
    match converted.map(|r| r.try_get::<_, String>(0)) {
        Ok(Ok(s)) => Ok(s),
        _ => Err(format!(
            "the name or text {:?} (bytes {}) in a shared catalog is neither UTF-8 nor valid in this database's encoding: rename it from a UTF8 database",
            String::from_utf8_lossy(&bytes),
            hex_bytes(&bytes)
        )),
    }
}

async fn decode_opt(c: &Client, bytes: Option<Vec<u8>>) -> Result<Option<String>, String> {
    match bytes {
        Some(b) => decode(c, b).await.map(Some),
        None => Ok(None),
    }
}

async fn decode_all(c: &Client, list: Option<Vec<Vec<u8>>>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for b in list.unwrap_or_default() {
        out.push(decode(c, b).await?);
    }
    Ok(out)
}

/// SQL for the entries of a `setconfig` array as stored bytes (`bytea[]`, in order).
fn settings_raw(col: &str) -> String {
    format!(
        "ARRAY(SELECT {} FROM pg_catalog.unnest({col}) WITH ORDINALITY AS s(e, n) ORDER BY n)",
        raw_sql("s.e")
    )
}

pub(crate) fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An open connection to the node plus the task driving it (aborted on drop).
pub struct NodeSession {
    /// The session's client.
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
    config: pgbackman_config::ConnConfig,
}

impl NodeSession {
    /// Asks the server to cancel the session's running query (over TLS when the session is),
    /// within the connect deadline.
    pub async fn cancel_query(&self) -> Result<(), String> {
        match crate::tls::cancel_query(&self.client.cancel_token(), &self.config).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "no answer from {} to the cancel request",
                crate::tls::address(&self.config)
            )),
            Err(e) => Err(describe_one_line(&e)),
        }
    }

    /// `fut` (a query of this module on this session) within the statement deadline of the
    /// session's config (`[nodes] statement_timeout`); on time out the query is cancelled and
    /// the error names the node, `what` and the setting. For everything but the row counts,
    /// which may take as long as the dump (bounded by the run).
    pub async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        crate::tls::within_statement_limit(&self.config, &self.client, what, fut)
            .await
            .and_then(|r| r)
            .map_err(|m| m.replace('\n', " "))
    }
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects with `config` within its connect deadline (the node defaults, 10 s, unless it has
/// its own; the caller resolves host, user, database, `application_name` and the pgpass file)
/// and prepares the session: ISO dates in UTC, no server-side statement or
/// idle-in-transaction timeout (the snapshot transaction stays open while pg_dump runs; our
/// queries are bounded client-side, see [`NodeSession::bounded`]), `lock_timeout` as given (10 s
/// when not).
pub async fn connect(
    config: impl Into<pgbackman_config::ConnConfig>,
    lock_timeout: Option<Duration>,
) -> Result<NodeSession, String> {
    let mut config = config.into();
    crate::node::default_limits(&mut config);
    let (client, conn) = crate::tls::connect_bounded(&config)
        .await
        .map_err(|e| crate::tls::describe_connect(&e, &config).replace('\n', " "))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let session = NodeSession {
        client,
        task,
        config,
    };
    // Our own queries (row counts) never queue for long behind a lock: a table that cannot be
    // counted in time is only left out of the counts.
    let lock = lock_timeout
        .unwrap_or(DEFAULT_LOCK_TIMEOUT)
        .as_millis()
        .clamp(1, i32::MAX as u128);
    let setup = format!(
        "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET statement_timeout = 0; \
         SET idle_in_transaction_session_timeout = 0; SET lock_timeout = {lock}"
    );
    let setup = async {
        session
            .client
            .batch_execute(&setup)
            .await
            .map_err(|e| describe_one_line(&e))
    };
    session.bounded("preparing the session", setup).await?;
    Ok(session)
}

/// Version of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version`, e.g. `17.2 (Debian 17.2-1.pgdg120+1)`.
    pub version: String,
    /// `server_version_num`, e.g. `170002`.
    pub version_num: i32,
}

/// `server_version` and `server_version_num` of the server `c` is connected to.
pub async fn server_facts(c: &Client) -> Result<ServerFacts, String> {
    read_server_facts(c)
        .await
        .map_err(|e| describe_one_line(&e))
}

/// [`server_facts`] with the client's error, for callers that render it their own way
/// ([`crate::node::node_facts`]).
pub(crate) async fn read_server_facts(c: &Client) -> Result<ServerFacts, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT pg_catalog.current_setting('server_version'), \
                    pg_catalog.current_setting('server_version_num')::int4",
            &[],
        )
        .await?;
    Ok(ServerFacts {
        version: row.get(0),
        version_num: row.get(1),
    })
}

/// `pg_database_size` of `dbname`, or the sum over every database we may connect to when
/// `dbname` is `None`.
pub async fn database_size(c: &Client, dbname: Option<&str>) -> Result<i64, String> {
    let row = match dbname {
        Some(db) => {
            // Compared as stored bytes: the session may be on a database of another encoding.
            c.query_one(
                &format!(
                    "SELECT pg_catalog.pg_database_size(oid) FROM pg_catalog.pg_database WHERE {} = $1",
                    raw_sql("datname")
                ),
                &[&db.as_bytes()],
            )
            .await
        }
        None => {
            c.query_one(
                "SELECT coalesce(sum(pg_catalog.pg_database_size(oid)), 0)::int8 \
                   FROM pg_catalog.pg_database \
                  WHERE datallowconn AND pg_catalog.has_database_privilege(oid, 'CONNECT')",
                &[],
            )
            .await
        }
    };
    row.map(|r| r.get(0)).map_err(|e| describe_one_line(&e))
}

/// A table of the database to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
    pub estimate: i64,
}

/// Ordinary tables (partitions included, partitioned parents not: their rows are their
/// partitions'), outside the system schemas, with the planner's estimate. Names come converted
/// by the server; a SQL_ASCII database converts nothing, so there a table whose name is not
/// UTF-8 is left out (it cannot be named back to the server in a UTF8 session).
pub async fn list_tables(c: &Client) -> Result<Vec<TableRef>, String> {
    let rows = c
        .query(
            &format!(
                "WITH e AS (SELECT pg_catalog.current_setting('server_encoding') = 'SQL_ASCII' AS raw) \
                 SELECT CASE WHEN e.raw THEN NULL ELSE n.nspname::text END, \
                        CASE WHEN e.raw THEN NULL ELSE c.relname::text END, \
                        CASE WHEN e.raw THEN {} END, CASE WHEN e.raw THEN {} END, c.reltuples::int8 \
                   FROM e, pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                    AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_' \
                  ORDER BY n.nspname, c.relname",
                raw_sql("n.nspname"),
                raw_sql("c.relname")
            ),
            &[],
        )
        .await
        .map_err(|e| describe_one_line(&e))?;
    let text = |t: Option<String>, b: Option<Vec<u8>>| t.or_else(|| String::from_utf8(b?).ok());
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(TableRef {
                schema: text(r.get(0), r.get(2))?,
                name: text(r.get(1), r.get(3))?,
                estimate: r.get(4),
            })
        })
        .collect())
}

/// Opens a repeatable-read, read-only transaction and exports its snapshot for pg_dump's
/// `--snapshot`. The transaction must stay open until pg_dump has imported the snapshot; the
/// caller ends it after pg_dump ends.
pub async fn export_snapshot(c: &Client) -> Result<String, String> {
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| describe_one_line(&e))?;
    match c
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(err) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(describe_one_line(&err))
        }
    }
}

/// Ends the transaction of [`export_snapshot`] (once pg_dump has ended and the rows are
/// counted).
pub async fn end_snapshot(c: &Client) -> Result<(), String> {
    c.batch_execute("COMMIT")
        .await
        .map_err(|e| describe_one_line(&e))
}

/// Exact row counts in the open snapshot transaction. `keys` are qualified table names as SQL
/// identifiers (`schema.table`, each part quoted where needed); each is counted with
/// `SELECT count(*) FROM ONLY <key>` (the table's own rows: pg_dump dumps a parent's and its
/// children's rows apart, so a parent counted with its children would never match a restore)
/// and keys the returned map. A table that cannot be counted (no
/// privilege, dropped meanwhile) is left out and named in the returned notes.
pub async fn count_rows(c: &Client, keys: &[String]) -> (BTreeMap<String, i64>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut notes = Vec::new();
    for key in keys {
        if let Err(err) = c.batch_execute("SAVEPOINT pgbackman_count").await {
            notes.push(format!("{key}: {}", describe_one_line(&err)));
            break; // the transaction is gone
        }
        let sql = format!("SELECT count(*) FROM ONLY {key}");
        match c.query_one(&sql, &[]).await {
            Ok(row) => {
                counts.insert(key.clone(), row.get(0));
                let _ = c.batch_execute("RELEASE SAVEPOINT pgbackman_count").await;
            }
            Err(err) => {
                notes.push(format!("{key}: {}", describe_one_line(&err)));
                let _ = c
                    .batch_execute("ROLLBACK TO SAVEPOINT pgbackman_count")
                    .await;
            }
        }
    }
    (counts, notes)
}

/// What a base backup needs to know of the cluster before pg_basebackup starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalFacts {
    /// `pg_control_system().system_identifier` (a u64, as text).
    pub system_identifier: String,
    /// `wal_segment_size` in bytes.
    pub seg_size: i64,
    /// Tablespaces other than pg_default and pg_global: (name, location).
    pub tablespaces: Vec<(String, String)>,
}

/// [`PhysicalFacts`] of the node (pg_control_system needs a superuser or a GRANT; the
/// base backup's replication role is usually the former).
pub async fn physical_facts(c: &Client) -> Result<PhysicalFacts, String> {
    async {
        let r = c
            .query_one(
                "SELECT system_identifier::text, \
                        (SELECT setting::int8 FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size') \
                   FROM pg_catalog.pg_control_system()",
                &[],
            )
            .await?;
        let tablespaces = c
            .query(
                "SELECT spcname::text, pg_catalog.pg_tablespace_location(oid) \
                   FROM pg_catalog.pg_tablespace \
                  WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname",
                &[],
            )
            .await?
            .iter()
            .map(|t| (t.get(0), t.get(1)))
            .collect();
        Ok::<_, tokio_postgres::Error>(PhysicalFacts {
            system_identifier: r.get(0),
            seg_size: r.get::<_, Option<i64>>(1).unwrap_or(16 << 20),
            tablespaces,
        })
    }
    .await
    .map_err(|e| describe_one_line(&e))
}
