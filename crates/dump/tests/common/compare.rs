//! Compares two clusters object by object with catalog queries, as a DBA would after a restore:
//! roles (attributes, comments), memberships with their grantors, role settings, and per
//! database its owner, grants with grantors, settings, per-role settings, then inside it the
//! tables with their own row counts (`ONLY`) and content checksums, owners and privileges,
//! schemas, sequences and large objects. Every session asks for UTF8, whatever the database's
//! encoding, so names print the same from a LATIN1 or SQL_ASCII database.

use std::collections::BTreeMap;

use pgbackman_testkit::TestCluster;

/// psql on `db` of `pg` with `client_encoding=UTF8`.
pub fn psql_utf8(pg: &TestCluster, db: &str, sql: &str) -> String {
    let conninfo = format!(
        "host={} port={} user=postgres dbname='{}' client_encoding=UTF8",
        pg.socket_dir().display(),
        pg.port(),
        db.replace('\\', "\\\\").replace('\'', "\\'")
    );
    pg.psql_conninfo(&conninfo, sql)
}

/// The roles of the cluster other than `except` (predefined ones left out).
const ROLES: &str = "select string_agg(format('%s super=%s inherit=%s createrole=%s createdb=%s login=%s repl=%s bypassrls=%s conn=%s comment=%s',
        rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls,
        rolconnlimit, shobj_description(oid, 'pg_authid')), E'\\n' order by rolname::text collate \"C\")
   from pg_roles where rolname !~ '^pg_' and not rolname = any (string_to_array(:'except', ','))";

const MEMBERSHIPS: &str = "select string_agg(format('%s in %s by %s admin=%s', m.rolname, r.rolname, g.rolname, a.admin_option),
        E'\\n' order by 1)
   from pg_auth_members a join pg_roles r on r.oid = a.roleid join pg_roles m on m.oid = a.member
   left join pg_roles g on g.oid = a.grantor";

const SETTINGS: &str =
    "select string_agg(format('%s in %s: %s', coalesce(r.rolname, '*'), coalesce(d.datname, '*'),
        array_to_string(s.setconfig, ',')), E'\\n' order by 1)
   from pg_db_role_setting s left join pg_roles r on r.oid = s.setrole
   left join pg_database d on d.oid = s.setdatabase";

const DATABASE: &str =
    "select format('owner %s encoding %s acl %s comment %s', pg_get_userbyid(datdba),
        pg_encoding_to_char(encoding), datacl, shobj_description(oid, 'pg_database'))
   from pg_database where datname = current_database()";

const TABLES: &str = "select string_agg(format('%I.%I owner %s acl %s: %s', n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relacl,
        (xpath('/row/x/text()', query_to_xml(format(
            'select count(*) || '' rows, md5 '' || md5(coalesce(string_agg(t::text, '','' order by t::text), '''')) as x from only %I.%I t',
            n.nspname, c.relname), false, true, '')))[1]::text), E'\\n' order by 1)
   from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast'";

const SCHEMAS: &str = "select string_agg(format('%I owner %s acl %s', nspname, pg_get_userbyid(nspowner), nspacl), E'\\n' order by 1)
   from pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema'";

const SEQUENCES: &str = "select string_agg(format('%I.%I last %s called %s', schemaname, sequencename, last_value, last_value is not null),
        E'\\n' order by 1) from pg_sequences";

const LARGE_OBJECTS: &str = "select string_agg(format('%s owner %s md5 %s acl %s', oid, pg_get_userbyid(lomowner), md5(lo_get(oid)), lomacl),
        E'\\n' order by oid) from pg_largeobject_metadata";

/// Everything compared, keyed by what it is (`db:<name> tables`, `roles`, ...). `except`: roles
/// left out of the role list (the superusers, whose passwords and attributes are checked apart).
pub fn facts(pg: &TestCluster, dbs: &[&str], except: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let roles = ROLES.replace(":'except'", &format!("'{}'", except.join(",")));
    out.insert("roles".into(), sorted(psql_utf8(pg, "postgres", &roles)));
    out.insert(
        "memberships".into(),
        sorted(psql_utf8(pg, "postgres", MEMBERSHIPS)),
    );
    out.insert(
        "settings".into(),
        sorted(psql_utf8(pg, "postgres", SETTINGS)),
    );
    for db in dbs {
        for (what, q) in [
            ("database", DATABASE),
            ("tables", TABLES),
            ("schemas", SCHEMAS),
            ("sequences", SEQUENCES),
            ("large objects", LARGE_OBJECTS),
        ] {
            out.insert(format!("db:{db} {what}"), sorted(psql_utf8(pg, db, q)));
        }
    }
    out
}

/// One fact per line, in byte order (collations differ between databases).
fn sorted(text: String) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// Asserts that `b` shows what `a` shows, fact by fact.
#[track_caller]
pub fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) {
    for (k, v) in a {
        assert_eq!(
            Some(v),
            b.get(k),
            "{k} differs:\n--- source\n{v}\n--- restored\n{}",
            b.get(k).map(String::as_str).unwrap_or("(missing)")
        );
    }
}

/// Every attribute of role `name` that a restore must never change, password hash included.
pub fn role_state(pg: &TestCluster, name: &str) -> String {
    psql_utf8(
        pg,
        "postgres",
        &format!(
            "select format('%s %s %s %s %s %s', rolsuper, rolcanlogin, rolpassword,
                    (select setconfig from pg_db_role_setting where setrole = a.oid and setdatabase = 0), rolconnlimit,
                    (select string_agg(g.rolname, ',' order by g.rolname) from pg_auth_members m join pg_roles g on g.oid = m.roleid where m.member = a.oid))
               from pg_authid a where rolname = '{}'",
            name.replace('\'', "''")
        ),
    )
}
