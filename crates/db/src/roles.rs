//! Catalog roles (sql/95_security.sql): `pgbackman db grant|revoke`, and the message a role
//! refused by the catalog gets (which group role to grant, to whom).

use tokio_postgres::Client;

use crate::catalog::Catalog;
use crate::error::{DbError, ServerMessage};

/// The levels of `pgbackman db grant ROLE LEVEL`; each is the group role `pgbackman_<level>`.
pub const LEVELS: &[&str] = &["readonly", "operator", "admin", "agent"];

/// Makes `role` a member of `pgbackman_<level>` (an agent role is also bound to `server`).
/// Returns the group role granted. Must run as the catalog owner or a superuser.
pub async fn grant(
    client: &Client,
    role: &str,
    level: &str,
    server: Option<&str>,
) -> Result<String, DbError> {
    let row = client
        .query_one(
            "select api.grant_catalog_role($1, $2, $3)",
            &[&role, &level, &server],
        )
        .await
        .map_err(|e| DbError::client(format!("granting {level} to role {role}"), e))?;
    Ok(row.get(0))
}

/// Removes `role` from `pgbackman_<level>` (from every group role when `level` is None) and
/// from its server bindings. Returns the group roles it left.
pub async fn revoke(
    client: &Client,
    role: &str,
    level: Option<&str>,
) -> Result<Vec<String>, DbError> {
    let row = client
        .query_one("select api.revoke_catalog_role($1, $2)", &[&role, &level])
        .await
        .map_err(|e| DbError::client(format!("revoking catalog roles of {role}"), e))?;
    Ok(row.get(0))
}

/// The group roles of [`LEVELS`] missing from the cluster (the installer could not create them).
pub async fn missing_groups(client: &Client) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "select 'pgbackman_' || l from unnest($1::text[]) l
              where not exists (select 1 from pg_catalog.pg_roles r where r.rolname = 'pgbackman_' || l)",
            &[&LEVELS],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// One line per login role holding a catalog group role: (role, group roles, bound servers).
pub async fn list(client: &Client) -> Result<Vec<(String, String, String)>, DbError> {
    let rows = client
        .query(
            "select r.rolname::text, string_agg(distinct g.rolname, ', ' order by g.rolname),
                    coalesce((select string_agg(api.server_fqdn(a.backup_server_id), ', ' order by a.backup_server_id)
                                from public.agent_role a where a.role_name = r.rolname), '')
               from pg_catalog.pg_auth_members m
               join pg_catalog.pg_roles g on g.oid = m.roleid
               join pg_catalog.pg_roles r on r.oid = m.member
              where g.rolname in ('pgbackman_readonly', 'pgbackman_operator', 'pgbackman_admin', 'pgbackman_agent')
                and r.rolname not like 'pgbackman\\_%'
              group by r.rolname order by r.rolname",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

impl Catalog {
    /// Turns PostgreSQL's "permission denied for function X" (kept in the DETAIL by
    /// `error::readable`) into what to grant to whom: the role of this connection and the
    /// group role that may run X. Any other error is returned as it is.
    pub async fn explain_denied(&self, e: DbError) -> DbError {
        let DbError::Server(m) = &e else { return e };
        if m.code != "42501" {
            return e;
        }
        let Some(object) = m
            .detail
            .as_deref()
            .and_then(|d| d.strip_prefix("permission denied for "))
        else {
            return e;
        };
        let Ok(c) = self.client().await else { return e };
        let Ok(row) = c.query_one("select session_user::text", &[]).await else {
            return e;
        };
        let role: String = row.get(0);
        let function = object.strip_prefix("function ");
        let group = match function {
            // (A role holding none gets "permission denied for schema api" first.)
            Some(f) => match c.query_one("select api.privilege_of($1)", &[&f]).await {
                Ok(r) => r.get::<_, Option<String>>(0),
                Err(_) => return e,
            },
            // A table or the schema: reading is readonly's.
            None => Some("pgbackman_readonly".to_string()),
        };
        let (message, hint) = match (function, group) {
            (Some(f), Some(g)) => (
                format!("catalog role {role} may not run {f}: that takes {g}"),
                format!(
                    "as the catalog owner run `pgbackman db grant {role} {}`, or connect as a role that has it; `pgbackman db roles` lists who has which",
                    g.trim_start_matches("pgbackman_")
                ),
            ),
            (Some(f), None) => (
                format!("catalog role {role} may not run {f}: only the catalog owner may"),
                "connect as the role that owns the catalog (the one that ran `pgbackman db init`)"
                    .to_string(),
            ),
            (None, _) => (
                format!(
                    "catalog role {role} may not read {object}: no catalog role it holds allows it"
                ),
                format!(
                    "as the catalog owner run `pgbackman db grant {role} readonly` (or operator, admin, agent: see README, Operations, Roles)"
                ),
            ),
        };
        DbError::Server(ServerMessage {
            code: m.code.clone(),
            message,
            detail: None,
            hint: Some(hint),
        })
    }
}
