//! roles.sql and database.sql: the parts of a restorable set that pg_dump does not write.
//!
//! Both are psql scripts, run as a superuser, in this order: `roles.sql`, `database.sql`, then
//! pg_restore into the new database.
//!
//! * roles.sql creates every role the database needs **unless it already exists**: a role found
//!   in the target cluster is left exactly as it is (attributes, password, settings, comment),
//!   since a restore must never change the password of a live role; a missing role is created
//!   with its attributes, password hash (standard profile) and role-wide settings. Each role is
//!   one guarded `DO` block. Memberships follow as plain `GRANT role TO member … GRANTED BY …`
//!   (granting an existing membership only raises a notice). All in one transaction.
//! * database.sql creates the database under a name given by the psql variable `dbname`
//!   (`psql -v dbname=NAME -f database.sql postgres`; written `:"dbname"`, which psql quotes as
//!   an identifier), then sets its owner, comment, privileges, settings and the per-database
//!   role settings (`ALTER ROLE … IN DATABASE … SET`, which need both the roles and the database
//!   and therefore live here, after `CREATE DATABASE`). It refuses to run without the variable.
//!
//! The SQL in this module is the *output* of a run: text written into the set for psql to run
//! at restore time, never a statement this crate executes. So it stays here, next to the set
//! layout, while every query against the node lives in `pgbackman_db::introspect` (design
//! invariant 1 is about the queries a program runs).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::quote::{comment_text, quote_ident, quote_literal, set_clause};
use pgbackman_db::introspect::{DatabaseInfo, Membership, RoleCapture, RoleInfo};

/// Facts written in the header of both files.
pub(crate) struct Header<'a> {
    pub dbname: &'a str,
    pub node_label: &'a str,
    pub server_version: &'a str,
    pub captured: &'a str,
}

fn header(out: &mut String, file: &str, h: &Header<'_>) {
    let _ = writeln!(out, "--");
    let _ = writeln!(out, "-- pgbackman {file}");
    let _ = writeln!(
        out,
        "-- database {} on node {} (PostgreSQL {}), captured {}",
        comment_text(&quote_literal(h.dbname)),
        comment_text(h.node_label),
        comment_text(h.server_version),
        h.captured
    );
    let _ = writeln!(out, "--");
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut tag = "$pgbackman$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$pgbackman_{n}$");
    }
    tag
}

fn role_attributes(r: &RoleInfo) -> String {
    let flag = |on: bool, name: &str| {
        if on {
            name.to_string()
        } else {
            format!("NO{name}")
        }
    };
    let mut s = [
        flag(r.superuser, "SUPERUSER"),
        flag(r.inherit, "INHERIT"),
        flag(r.createrole, "CREATEROLE"),
        flag(r.createdb, "CREATEDB"),
        flag(r.login, "LOGIN"),
        flag(r.replication, "REPLICATION"),
        flag(r.bypassrls, "BYPASSRLS"),
    ]
    .join(" ");
    if r.connlimit != -1 {
        let _ = write!(s, " CONNECTION LIMIT {}", r.connlimit);
    }
    if let Some(p) = &r.password {
        let _ = write!(s, " PASSWORD {}", quote_literal(p));
    }
    if let Some(v) = &r.valid_until {
        let _ = write!(s, " VALID UNTIL {}", quote_literal(v));
    }
    s
}

/// Orders memberships so that a grantor holds ADMIN on a role before it is named in GRANTED BY
/// (PostgreSQL 16 checks it): grants by superusers or without a grantor first, then every grant
/// whose grantor has received admin on the role, then whatever is left.
fn ordered_memberships(ms: &[Membership]) -> Vec<&Membership> {
    let mut out: Vec<&Membership> = Vec::with_capacity(ms.len());
    let mut left: Vec<&Membership> = ms.iter().collect();
    let mut admins: BTreeSet<(&str, &str)> = BTreeSet::new(); // (role, admin member)
    loop {
        let before = left.len();
        left.retain(|m| {
            let ready = match &m.grantor {
                None => true,
                Some(g) => {
                    m.grantor_is_superuser || admins.contains(&(m.role.as_str(), g.as_str()))
                }
            };
            if ready {
                out.push(m);
                if m.admin {
                    admins.insert((m.role.as_str(), m.member.as_str()));
                }
            }
            !ready
        });
        if left.is_empty() || left.len() == before {
            break;
        }
    }
    out.extend(left);
    out
}

fn grant_statement(m: &Membership) -> String {
    let mut s = format!(
        "GRANT {} TO {}",
        quote_ident(&m.role),
        quote_ident(&m.member)
    );
    match (m.inherit, m.set) {
        (Some(inherit), Some(set)) => {
            let _ = write!(
                s,
                " WITH ADMIN {}, INHERIT {}, SET {}",
                if m.admin { "TRUE" } else { "FALSE" },
                if inherit { "TRUE" } else { "FALSE" },
                if set { "TRUE" } else { "FALSE" }
            );
        }
        _ if m.admin => s.push_str(" WITH ADMIN OPTION"),
        _ => {}
    }
    if let Some(g) = &m.grantor {
        let _ = write!(s, " GRANTED BY {}", quote_ident(g));
    }
    s.push(';');
    s
}

/// The text of roles.sql.
pub(crate) fn roles_sql(cap: &RoleCapture, h: &Header<'_>) -> String {
    let mut out = String::new();
    header(&mut out, "roles.sql", h);
    out.push_str(
        "-- Roles the database needs. Run as a superuser BEFORE database.sql:\n\
         --     psql -v ON_ERROR_STOP=1 -f roles.sql postgres\n\
         -- A role that already exists is left as it is (attributes, password, settings,\n\
         -- memberships); a missing role is created with the attributes it had. A membership\n\
         -- is granted when this script created either of its two roles.\n",
    );
    match &cap.passwords_missing {
        None => out.push_str("-- Passwords: included (hashes as stored on the source).\n"),
        Some(why) => {
            let _ = writeln!(out, "-- Passwords: NOT included: {}.", comment_text(why));
        }
    }
    out.push_str(
        "--\n\nSET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\nBEGIN;\n\n\
         CREATE TEMPORARY TABLE pgbackman_created_roles (rolname text PRIMARY KEY) ON COMMIT DROP;\n\n",
    );
    for r in &cap.roles {
        let name = quote_ident(&r.name);
        let mut body = String::new();
        let _ = writeln!(
            body,
            "    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {}) THEN",
            quote_literal(&r.name)
        );
        let _ = writeln!(body, "        CREATE ROLE {name};");
        let _ = writeln!(
            body,
            "        INSERT INTO pg_temp.pgbackman_created_roles VALUES ({});",
            quote_literal(&r.name)
        );
        let _ = writeln!(
            body,
            "        ALTER ROLE {name} WITH {};",
            role_attributes(r)
        );
        for entry in &r.settings {
            if let Some(set) = set_clause(entry) {
                let _ = writeln!(body, "        ALTER ROLE {name} {set};");
            }
        }
        if let Some(c) = &r.comment {
            let _ = writeln!(
                body,
                "        COMMENT ON ROLE {name} IS {};",
                quote_literal(c)
            );
        }
        let _ = writeln!(body, "    ELSE");
        let _ = writeln!(
            body,
            "        RAISE NOTICE 'role % already exists: left as it is', {};",
            quote_literal(&r.name)
        );
        let _ = writeln!(body, "    END IF;");
        let tag = dollar_tag(&body);
        let _ = writeln!(out, "DO {tag}\nBEGIN\n{body}END\n{tag};\n");
    }
    let ordered = ordered_memberships(&cap.memberships);
    if !ordered.is_empty() {
        out.push_str(
            "-- Memberships (between two roles that existed before, nothing is changed)\n",
        );
        for m in ordered {
            let body = format!(
                "    IF EXISTS (SELECT FROM pg_temp.pgbackman_created_roles WHERE rolname IN ({}, {})) THEN\n        {}\n    END IF;\n",
                quote_literal(&m.role),
                quote_literal(&m.member),
                grant_statement(m)
            );
            let tag = dollar_tag(&body);
            let _ = writeln!(out, "DO {tag}\nBEGIN\n{body}END\n{tag};");
        }
        out.push('\n');
    }
    out.push_str("COMMIT;\n");
    out
}

/// The psql variable holding the target database name in database.sql.
pub const DBNAME_VARIABLE: &str = "dbname";

/// The text of database.sql.
pub(crate) fn database_sql(db: &DatabaseInfo, h: &Header<'_>) -> String {
    let mut out = String::new();
    header(&mut out, "database.sql", h);
    out.push_str(
        "-- Creates the database and its settings and privileges. Run as a superuser AFTER\n\
         -- roles.sql, with the name of the database to create in the psql variable dbname:\n\
         --     psql -v dbname=NAME -f database.sql postgres\n\
         -- then restore the dump into that database.\n\
         --\n\n\
         \\set ON_ERROR_STOP on\n\
         \\if :{?dbname}\n\
         \\else\n\
         DO $$BEGIN RAISE EXCEPTION 'database.sql needs the name of the database to create: psql -v dbname=NAME -f database.sql'; END$$;\n\
         \\endif\n\
         SET client_encoding = 'UTF8';\n\
         SET standard_conforming_strings = on;\n\n",
    );
    let db_ident = ":\"dbname\"";
    let mut create = format!(
        "CREATE DATABASE {db_ident} WITH TEMPLATE = template0 ENCODING = {}",
        quote_literal(&db.encoding)
    );
    if let Some(p) = &db.locale_provider {
        let _ = write!(create, " LOCALE_PROVIDER = {}", quote_ident(p));
    }
    if let Some(c) = &db.collate {
        let _ = write!(create, " LC_COLLATE = {}", quote_literal(c));
    }
    if let Some(c) = &db.ctype {
        let _ = write!(create, " LC_CTYPE = {}", quote_literal(c));
    }
    if let Some(l) = &db.icu_locale {
        let _ = write!(create, " ICU_LOCALE = {}", quote_literal(l));
    }
    if let Some(r) = &db.icu_rules {
        let _ = write!(create, " ICU_RULES = {}", quote_literal(r));
    }
    if let Some(l) = &db.builtin_locale {
        let _ = write!(create, " BUILTIN_LOCALE = {}", quote_literal(l));
    }
    if db.connlimit != -1 {
        let _ = write!(create, " CONNECTION LIMIT = {}", db.connlimit);
    }
    let _ = writeln!(out, "{create};");
    if let Some(t) = &db.tablespace {
        let _ = writeln!(
            out,
            "-- On the source the database lives in tablespace {} (not set here: the target may not have it).",
            comment_text(&quote_ident(t))
        );
    }
    let _ = writeln!(
        out,
        "ALTER DATABASE {db_ident} OWNER TO {};",
        quote_ident(&db.owner)
    );
    if let Some(c) = &db.comment {
        let _ = writeln!(
            out,
            "COMMENT ON DATABASE {db_ident} IS {};",
            quote_literal(c)
        );
    }
    if db.is_template {
        let _ = writeln!(out, "ALTER DATABASE {db_ident} IS_TEMPLATE true;");
    }
    if !db.allow_connections {
        let _ = writeln!(out, "ALTER DATABASE {db_ident} ALLOW_CONNECTIONS false;");
    }
    if let Some(acl) = &db.acl {
        out.push_str("\n-- Privileges\n");
        let _ = writeln!(out, "REVOKE ALL ON DATABASE {db_ident} FROM PUBLIC;");
        let _ = writeln!(
            out,
            "REVOKE ALL ON DATABASE {db_ident} FROM {};",
            quote_ident(&db.owner)
        );
        // One GRANT per grantor, grantee and grant option, privileges in the order read. A
        // grant made by another role than the owner is made by that role again (as pg_dump
        // does), after the owner's grants that gave it the grant option: a superuser's GRANT
        // is recorded as the owner's.
        // (grantor other than the owner, grantee or PUBLIC, grant option, privileges)
        type Group<'a> = (Option<&'a str>, Option<&'a str>, bool, Vec<&'a str>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        for a in acl {
            let grantor = a.grantor.as_deref().filter(|g| *g != db.owner);
            let key = (grantor, a.grantee.as_deref(), a.grantable);
            match groups.iter_mut().find(|(r, g, o, _)| (*r, *g, *o) == key) {
                Some(group) => group.3.push(&a.privilege),
                None => groups.push((key.0, key.1, key.2, vec![&a.privilege])),
            }
        }
        groups.sort_by_key(|g| g.0.is_some());
        for (grantor, grantee, grantable, privileges) in groups {
            let to = grantee.map_or_else(|| "PUBLIC".to_string(), quote_ident);
            let privs: Vec<&str> = privileges
                .iter()
                .copied()
                .filter(|p| matches!(*p, "CREATE" | "CONNECT" | "TEMPORARY"))
                .collect();
            if privs.is_empty() {
                continue;
            }
            let grant = format!(
                "GRANT {} ON DATABASE {db_ident} TO {to}{};",
                privs.join(", "),
                if grantable { " WITH GRANT OPTION" } else { "" }
            );
            match grantor {
                None => {
                    let _ = writeln!(out, "{grant}");
                }
                Some(g) => {
                    let _ = writeln!(out, "SET ROLE {};\n{grant}\nRESET ROLE;", quote_ident(g));
                }
            }
        }
    }
    if !db.settings.is_empty() {
        out.push_str("\n-- Settings\n");
        for entry in &db.settings {
            if let Some(set) = set_clause(entry) {
                let _ = writeln!(out, "ALTER DATABASE {db_ident} {set};");
            }
        }
    }
    if !db.role_settings.is_empty() {
        out.push_str("\n-- Role settings in this database\n");
        for (role, entries) in &db.role_settings {
            for entry in entries {
                if let Some(set) = set_clause(entry) {
                    let _ = writeln!(
                        out,
                        "ALTER ROLE {} IN DATABASE {db_ident} {set};",
                        quote_ident(role)
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbackman_db::introspect::AclEntry;

    fn h() -> Header<'static> {
        Header {
            dbname: "it's\nme",
            node_label: "pg01:5432",
            server_version: "15.4",
            captured: "2024-01-01T00:00:00Z",
        }
    }

    fn role(name: &str) -> RoleInfo {
        RoleInfo {
            oid: 16400,
            name: name.into(),
            name_bytes: None,
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: false,
            login: true,
            replication: false,
            bypassrls: false,
            connlimit: -1,
            valid_until: None,
            password: Some("SCRAM-SHA-256$4096:x$y:z".into()),
            comment: Some("it's a role".into()),
            settings: vec!["search_path=\"$user\", app".into()],
        }
    }

    #[test]
    fn roles_file() {
        let cap = RoleCapture {
            roles: vec![role("alice"), role("Bob $pgbackman$")],
            memberships: vec![
                Membership {
                    role: "readers".into(),
                    member: "alice".into(),
                    grantor: Some("admin".into()),
                    grantor_is_superuser: false,
                    admin: false,
                    inherit: None,
                    set: None,
                },
                Membership {
                    role: "readers".into(),
                    member: "admin".into(),
                    grantor: Some("postgres".into()),
                    grantor_is_superuser: true,
                    admin: true,
                    inherit: Some(true),
                    set: Some(false),
                },
            ],
            passwords_missing: None,
        };
        let sql = roles_sql(&cap, &h());
        assert!(
            sql.contains("-- database 'it''s\\nme' on node pg01:5432"),
            "{sql}"
        );
        assert!(sql.contains("        CREATE ROLE alice;\n"));
        assert!(sql.contains("ALTER ROLE alice WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x$y:z';"));
        assert!(sql.contains("ALTER ROLE alice SET search_path TO '$user', 'app';"));
        assert!(sql.contains("COMMENT ON ROLE alice IS 'it''s a role';"));
        assert!(sql.contains("CREATE ROLE \"Bob $pgbackman$\";"));
        assert!(sql.contains("DO $pgbackman_1$"), "{sql}");
        // the superuser-granted admin membership comes first
        let a = sql
            .find("GRANT readers TO admin WITH ADMIN TRUE, INHERIT TRUE, SET FALSE GRANTED BY postgres;")
            .unwrap();
        let b = sql
            .find("GRANT readers TO alice GRANTED BY admin;")
            .unwrap();
        assert!(a < b);
        assert!(sql.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn database_file() {
        let db = DatabaseInfo {
            name: "x".into(),
            owner: "Owner".into(),
            encoding: "UTF8".into(),
            locale_provider: Some("icu".into()),
            collate: Some("C".into()),
            ctype: Some("C".into()),
            icu_locale: Some("und".into()),
            icu_rules: None,
            builtin_locale: None,
            connlimit: 7,
            is_template: false,
            allow_connections: true,
            tablespace: Some("fast".into()),
            acl: Some(vec![
                AclEntry {
                    grantee: Some("rep".into()),
                    grantor: Some("Owner".into()),
                    privilege: "CREATE".into(),
                    grantable: true,
                },
                AclEntry {
                    grantee: Some("report".into()),
                    grantor: Some("rep".into()),
                    privilege: "CREATE".into(),
                    grantable: false,
                },
                AclEntry {
                    grantee: None,
                    grantor: Some("Owner".into()),
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
                AclEntry {
                    grantee: Some("bob".into()),
                    grantor: Some("Owner".into()),
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
                AclEntry {
                    grantee: Some("bob".into()),
                    grantor: Some("Owner".into()),
                    privilege: "CREATE".into(),
                    grantable: false,
                },
            ]),
            comment: Some("main db".into()),
            settings: vec!["work_mem=32MB".into()],
            role_settings: [("bob".to_string(), vec!["statement_timeout=5s".to_string()])]
                .into_iter()
                .collect(),
        };
        let sql = database_sql(&db, &h());
        assert!(sql.contains("CREATE DATABASE :\"dbname\" WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = icu LC_COLLATE = 'C' LC_CTYPE = 'C' ICU_LOCALE = 'und' CONNECTION LIMIT = 7;"), "{sql}");
        assert!(sql.contains("ALTER DATABASE :\"dbname\" OWNER TO \"Owner\";"));
        assert!(sql.contains("REVOKE ALL ON DATABASE :\"dbname\" FROM PUBLIC;"));
        assert!(sql.contains("GRANT CONNECT ON DATABASE :\"dbname\" TO PUBLIC;"));
        assert!(sql.contains("GRANT CONNECT, CREATE ON DATABASE :\"dbname\" TO bob;"));
        // The grant rep made is made by rep again, after the owner's grant of the option.
        let by_owner = sql
            .find("GRANT CREATE ON DATABASE :\"dbname\" TO rep WITH GRANT OPTION;")
            .unwrap();
        let by_rep = sql
            .find("SET ROLE rep;\nGRANT CREATE ON DATABASE :\"dbname\" TO report;\nRESET ROLE;")
            .unwrap();
        assert!(
            by_owner < by_rep && sql.find("TO bob").unwrap() < by_rep,
            "{sql}"
        );
        assert!(sql.contains("SET client_encoding = 'UTF8';"));
        assert!(sql.contains("ALTER DATABASE :\"dbname\" SET work_mem TO '32MB';"));
        assert!(
            sql.contains("ALTER ROLE bob IN DATABASE :\"dbname\" SET statement_timeout TO '5s';")
        );
        assert!(sql.contains("COMMENT ON DATABASE :\"dbname\" IS 'main db';"));
        assert!(sql.contains("-- On the source the database lives in tablespace fast"));
        assert!(sql.contains("\\if :{?dbname}"));
    }
}
