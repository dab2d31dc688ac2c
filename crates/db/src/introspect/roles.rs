//! The roles a database needs (see [`super`]'s doc): found in `pg_shdepend`, the database's
//! owner, ACL and role settings, closed over `pg_auth_members`; read for roles.sql.

use super::*;

/// A role to recreate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    pub oid: u32,
    pub name: String,
    /// The name's stored bytes when they are not UTF-8 (written from a session on a database of
    /// another encoding, see [`super`]'s doc): `name` is then their reading in the encoding of
    /// the database captured, and a restore must recreate these bytes, not `name`'s UTF-8.
    pub name_bytes: Option<Vec<u8>>,
    pub superuser: bool,
    pub inherit: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub login: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connlimit: i32,
    pub valid_until: Option<String>,
    /// The password hash, when read and not withheld.
    pub password: Option<String>,
    pub comment: Option<String>,
    /// Role-wide settings (`name=value` entries of `pg_db_role_setting` with no database).
    pub settings: Vec<String>,
}

/// One `pg_auth_members` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub role: String,
    pub member: String,
    pub grantor: Option<String>,
    /// Whether the grantor is a superuser (such grants are replayed first).
    pub grantor_is_superuser: bool,
    pub admin: bool,
    /// PostgreSQL 16+ only.
    pub inherit: Option<bool>,
    /// PostgreSQL 16+ only.
    pub set: Option<bool>,
}

/// Everything roles.sql is made of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleCapture {
    /// Sorted by name.
    pub roles: Vec<RoleInfo>,
    pub memberships: Vec<Membership>,
    /// Why passwords are missing, or `None` when they are included.
    pub passwords_missing: Option<String>,
}

/// Finds and reads the roles `dbname` needs (see the module doc); `c` must be connected to
/// `dbname` (the database is found as `current_database()`, which needs no name conversion).
/// `with_passwords`: read the hashes from `pg_authid` (standard profile); when that is refused
/// the roles are written without passwords and the reason is kept.
pub async fn capture_roles(
    c: &Client,
    dbname: &str,
    with_passwords: bool,
) -> Result<RoleCapture, String> {
    let _ = dbname;
    let e = |e: tokio_postgres::Error| describe_one_line(&e);
    let closure: Vec<u32> = c
        .query(
            "WITH RECURSIVE db AS ( \
                 SELECT oid, datdba, datacl FROM pg_catalog.pg_database \
                  WHERE datname = pg_catalog.current_database() \
             ), seed(oid) AS ( \
                 SELECT s.refobjid FROM pg_catalog.pg_shdepend s, db \
                  WHERE s.dbid = db.oid AND s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass \
                 UNION SELECT datdba FROM db \
                 UNION SELECT a.grantee FROM db, pg_catalog.aclexplode(db.datacl) a \
                 UNION SELECT a.grantor FROM db, pg_catalog.aclexplode(db.datacl) a \
                 UNION SELECT r.setrole FROM pg_catalog.pg_db_role_setting r, db \
                        WHERE r.setdatabase = db.oid \
             ), closure(oid) AS ( \
                 SELECT oid FROM seed WHERE oid <> 0 \
                 UNION \
                 SELECT CASE WHEN m.member = c.oid THEN m.roleid ELSE m.member END \
                   FROM closure c JOIN pg_catalog.pg_auth_members m ON c.oid IN (m.member, m.roleid) \
                  WHERE c.oid >= 16384 \
             ) \
             SELECT c.oid FROM closure c JOIN pg_catalog.pg_roles r ON r.oid = c.oid",
            &[],
        )
        .await
        .map_err(e)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let is_predefined = |oid: u32| oid < FIRST_NORMAL_OID && oid != BOOTSTRAP_SUPERUSER_OID;
    let mut wanted: BTreeSet<u32> = closure
        .iter()
        .copied()
        .filter(|o| !is_predefined(*o))
        .collect();

    // Memberships of the wanted roles in wanted or predefined roles.
    let member_oids: Vec<u32> = wanted.iter().copied().collect();
    let rows = c
        .query(
            "SELECT m.roleid, m.member, m.grantor, pg_catalog.to_jsonb(m)::text \
               FROM pg_catalog.pg_auth_members m WHERE m.member = ANY($1)",
            &[&member_oids],
        )
        .await
        .map_err(e)?;
    struct RawMembership {
        role: u32,
        member: u32,
        grantor: u32,
        json: serde_json::Value,
    }
    let raw: Vec<RawMembership> = rows
        .iter()
        .map(|r| RawMembership {
            role: r.get(0),
            member: r.get(1),
            grantor: r.get(2),
            json: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default(),
        })
        .filter(|m| wanted.contains(&m.role) || is_predefined(m.role))
        .collect();
    // Grantors must exist for GRANTED BY: add them (not expanded further).
    for m in &raw {
        if m.grantor != 0 && !is_predefined(m.grantor) {
            wanted.insert(m.grantor);
        }
    }

    // Names and attributes of every role involved (predefined roles for names only).
    let mut all: Vec<u32> = wanted.iter().copied().collect();
    all.extend(raw.iter().flat_map(|m| [m.role, m.grantor]));
    let rows = c
        .query(
            &format!(
                "SELECT r.oid, {}, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
                        r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                        r.rolvaliduntil::text, {} \
                   FROM pg_catalog.pg_roles r WHERE r.oid = ANY($1)",
                raw_sql("r.rolname"),
                raw_sql("pg_catalog.shobj_description(r.oid, 'pg_authid')")
            ),
            &[&all],
        )
        .await
        .map_err(e)?;
    let mut by_oid: HashMap<u32, RoleInfo> = HashMap::new();
    for r in rows {
        let raw: Vec<u8> = r.get(1);
        let name_bytes = std::str::from_utf8(&raw).is_err().then(|| raw.clone());
        let info = RoleInfo {
            oid: r.get(0),
            name: decode(c, raw).await?,
            name_bytes,
            superuser: r.get(2),
            inherit: r.get(3),
            createrole: r.get(4),
            createdb: r.get(5),
            login: r.get(6),
            replication: r.get(7),
            bypassrls: r.get(8),
            connlimit: r.get(9),
            valid_until: r.get(10),
            password: None,
            comment: decode_opt(c, r.get(11)).await?,
            settings: Vec::new(),
        };
        by_oid.insert(info.oid, info);
    }
    wanted.retain(|o| by_oid.contains_key(o));
    let wanted_oids: Vec<u32> = wanted.iter().copied().collect();

    let mut passwords_missing = None;
    if with_passwords {
        match c
            .query(
                "SELECT oid, rolpassword FROM pg_catalog.pg_authid WHERE oid = ANY($1)",
                &[&wanted_oids],
            )
            .await
        {
            Ok(rows) => {
                for r in rows {
                    let oid: u32 = r.get(0);
                    if let Some(info) = by_oid.get_mut(&oid) {
                        info.password = r.get(1);
                    }
                }
            }
            Err(err) => {
                passwords_missing = Some(format!(
                    "pg_authid is not readable: {}",
                    describe_one_line(&err)
                ))
            }
        }
    } else {
        passwords_missing = Some("managed profile: role passwords are not dumped".into());
    }

    let rows = c
        .query(
            &format!(
                "SELECT setrole, {} FROM pg_catalog.pg_db_role_setting \
                  WHERE setdatabase = 0 AND setrole = ANY($1)",
                settings_raw("setconfig")
            ),
            &[&wanted_oids],
        )
        .await
        .map_err(e)?;
    for r in rows {
        let oid: u32 = r.get(0);
        let config = decode_all(c, r.get(1)).await?;
        if let Some(info) = by_oid.get_mut(&oid) {
            info.settings = config;
        }
    }

    let name_of = |oid: u32| by_oid.get(&oid).map(|r| r.name.clone());
    let mut memberships: Vec<Membership> = raw
        .iter()
        .filter_map(|m| {
            let role = name_of(m.role)?;
            let member = name_of(m.member)?;
            let grantor = name_of(m.grantor);
            let grantor_is_superuser = by_oid.get(&m.grantor).is_some_and(|g| g.superuser);
            let flag = |k: &str| m.json.get(k).and_then(serde_json::Value::as_bool);
            Some(Membership {
                role,
                member,
                grantor,
                grantor_is_superuser,
                admin: flag("admin_option").unwrap_or(false),
                inherit: flag("inherit_option"),
                set: flag("set_option"),
            })
        })
        .collect();
    memberships
        .sort_by(|a, b| (&a.role, &a.member, &a.grantor).cmp(&(&b.role, &b.member, &b.grantor)));
    let mut roles: Vec<RoleInfo> = wanted
        .iter()
        .filter_map(|o| by_oid.get(o).cloned())
        .collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    // A name stored once as UTF-8 and once in this database's encoding reads the same here:
    // roles.sql and the restore could not tell the two roles apart.
    if let Some(w) = roles.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(format!(
            "roles {} and {} are both named {:?} (one written in UTF-8, the other from a session on a database of another encoding): rename one of them from a UTF8 database",
            w[0].oid, w[1].oid, w[0].name
        ));
    }
    Ok(RoleCapture {
        roles,
        memberships,
        passwords_missing,
    })
}
