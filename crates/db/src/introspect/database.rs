//! The database's own definition, settings and grants, read for database.sql.

use super::*;

/// One privilege of the database's ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// `None` for PUBLIC.
    pub grantee: Option<String>,
    /// The role that granted it (the owner, or a role holding the grant option).
    pub grantor: Option<String>,
    pub privilege: String,
    pub grantable: bool,
}

/// Everything database.sql is made of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatabaseInfo {
    pub name: String,
    pub owner: String,
    pub encoding: String,
    /// `libc`, `icu` or `builtin` (15+).
    pub locale_provider: Option<String>,
    pub collate: Option<String>,
    pub ctype: Option<String>,
    /// ICU locale (15+, `daticulocale`; `datlocale` from 17).
    pub icu_locale: Option<String>,
    /// ICU rules (16+).
    pub icu_rules: Option<String>,
    /// Builtin provider locale (17+).
    pub builtin_locale: Option<String>,
    pub connlimit: i32,
    pub is_template: bool,
    pub allow_connections: bool,
    pub tablespace: Option<String>,
    /// `None` when the database has the default privileges (`datacl` is NULL).
    pub acl: Option<Vec<AclEntry>>,
    pub comment: Option<String>,
    /// `ALTER DATABASE … SET` entries.
    pub settings: Vec<String>,
    /// `ALTER ROLE … IN DATABASE … SET` entries: role → entries.
    pub role_settings: BTreeMap<String, Vec<String>>,
}

/// Reads the database's own definition, settings and grants; `c` must be connected to
/// `dbname` (see [`capture_roles`]). Names and texts of the shared catalogs are decoded as the
/// module doc says.
pub async fn capture_database(c: &Client, dbname: &str) -> Result<DatabaseInfo, String> {
    let e = |e: tokio_postgres::Error| describe_one_line(&e);
    // The row without its name and ACL, whose bytes may not be valid in this session.
    let row = c
        .query_opt(
            &format!(
                "SELECT (pg_catalog.to_jsonb(d) - 'datname' - 'datacl')::text, {}, \
                        pg_catalog.pg_encoding_to_char(d.encoding)::text, {}, \
                        d.datacl IS NULL, {} \
                   FROM pg_catalog.pg_database d \
                   LEFT JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace \
                  WHERE d.datname = pg_catalog.current_database()",
                raw_sql("pg_catalog.pg_get_userbyid(d.datdba)"),
                raw_sql("t.spcname"),
                raw_sql("pg_catalog.shobj_description(d.oid, 'pg_database')")
            ),
            &[],
        )
        .await
        .map_err(e)?
        .ok_or_else(|| format!("database {dbname:?} does not exist"))?;
    let json: serde_json::Value =
        serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| e.to_string())?;
    let text = |k: &str| {
        json.get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let provider = text("datlocprovider").map(|p| match p.as_str() {
        "c" => "libc".to_string(),
        "i" => "icu".to_string(),
        "b" => "builtin".to_string(),
        other => other.to_string(),
    });
    let locale = text("datlocale").or_else(|| text("daticulocale"));
    let (icu_locale, builtin_locale) = match provider.as_deref() {
        Some("icu") => (locale, None),
        Some("builtin") => (None, locale),
        _ => (None, None),
    };
    let tablespace = decode_opt(c, row.get(3)).await?;
    let mut info = DatabaseInfo {
        name: dbname.to_string(),
        owner: decode(c, row.get(1)).await?,
        encoding: row.get(2),
        locale_provider: provider,
        collate: text("datcollate"),
        ctype: text("datctype"),
        icu_locale,
        icu_rules: text("daticurules"),
        builtin_locale,
        connlimit: json
            .get("datconnlimit")
            .and_then(serde_json::Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
            .unwrap_or(-1),
        is_template: json
            .get("datistemplate")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        allow_connections: json
            .get("datallowconn")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true),
        tablespace: tablespace.filter(|t| t != "pg_default"),
        acl: None,
        comment: decode_opt(c, row.get(5)).await?,
        settings: Vec::new(),
        role_settings: BTreeMap::new(),
    };
    let default_acl: bool = row.get(4);
    if !default_acl {
        // In aclitem order: a grant option is granted before a grant made with it.
        let rows = c
            .query(
                &format!(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE {} END, {}, \
                            a.privilege_type, a.is_grantable \
                       FROM pg_catalog.pg_database d, \
                            pg_catalog.aclexplode(d.datacl) WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, n) \
                      WHERE d.datname = pg_catalog.current_database() ORDER BY a.n",
                    raw_sql("pg_catalog.pg_get_userbyid(a.grantee)"),
                    raw_sql("pg_catalog.pg_get_userbyid(a.grantor)")
                ),
                &[],
            )
            .await
            .map_err(e)?;
        let mut acl = Vec::with_capacity(rows.len());
        for r in rows {
            acl.push(AclEntry {
                grantee: decode_opt(c, r.get(0)).await?,
                grantor: decode_opt(c, r.get(1)).await?,
                privilege: r.get(2),
                grantable: r.get(3),
            });
        }
        info.acl = Some(acl);
    }
    let rows = c
        .query(
            &format!(
                "SELECT s.setrole, {}, {} \
                   FROM pg_catalog.pg_db_role_setting s \
                   JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase \
                  WHERE d.datname = pg_catalog.current_database()",
                raw_sql("pg_catalog.pg_get_userbyid(s.setrole)"),
                settings_raw("s.setconfig")
            ),
            &[],
        )
        .await
        .map_err(e)?;
    for r in rows {
        let role: u32 = r.get(0);
        let config = decode_all(c, r.get(2)).await?;
        if role == 0 {
            info.settings = config;
        } else {
            info.role_settings
                .insert(decode(c, r.get(1)).await?, config);
        }
    }
    Ok(info)
}
