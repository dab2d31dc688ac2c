//! Restores compared object by object (common/compare.rs), not by exit codes: a LATIN1 and a
//! SQL_ASCII database whose objects belong to and are granted to roles with non-ASCII names,
//! database grants made by another role than the owner, inherited tables (row counts of the
//! table ONLY), and a CLUSTER restore onto a cluster whose superuser has another password (it
//! must change no existing role, and a failed one changes nothing at all). Role names stored in
//! bytes that are not UTF-8: refused by name from a SQL_ASCII database; named from a LATIN1
//! session, restored byte for byte (and undone by OID).

use std::os::unix::fs::PermissionsExt;

use pgbackman_core::model::BackupCode;
use pgbackman_dump::{BackupSpec, Status};
use pgbackman_testkit::TestCluster;

mod common;
use common::compare::{assert_same, facts, psql_utf8, role_state};
use common::{assert_ok, backup_ok, conn, restore, rspec, spec};

/// Roles and databases, made from `postgres` (a UTF8 database, like every session of a DBA).
const CLUSTER_SQL: &[&str] = &[
    "create role \"reader-ø\" login",
    "create role rep",
    "create role report",
    "create role \"app \"\"owner\"\"\" createdb",
    "create role keep login connection limit 3",
    "comment on role \"reader-ø\" is 'lecteur ø'",
    "alter role \"reader-ø\" set search_path = 'schéma, public'",
    "grant rep to report",
    "alter role postgres password 'source-secret'",
    "create database lat encoding 'LATIN1' template template0 locale 'C' owner \"app \"\"owner\"\"\"",
    "create database sqa encoding 'SQL_ASCII' template template0 locale 'C' owner \"app \"\"owner\"\"\"",
];

/// Settings and grants of database `db`, from `postgres`; `rep` grants CONNECT on its own
/// (the grantor of report's privilege is rep, not the owner).
fn database_sql(db: &str) -> Vec<String> {
    vec![
        format!("alter database {db} set work_mem = '3MB'"),
        format!("alter role \"reader-ø\" in database {db} set statement_timeout = '9s'"),
        format!("revoke all on database {db} from public"),
        format!("grant connect, create on database {db} to rep with grant option"),
        format!("grant connect on database {db} to \"reader-ø\""),
        format!("set role rep; grant create on database {db} to report"),
    ]
}

/// The objects of a database; `role` names the role `reader-ø` the way a session of this
/// database must (in LATIN1, its UTF-8 bytes read as LATIN1 characters).
fn objects_sql(role: &str) -> Vec<String> {
    let r = format!("\"{role}\"");
    vec![
        "create schema \"schéma\" authorization \"app \"\"owner\"\"\"".into(),
        "create table \"schéma\".\"tâble\" (id serial primary key, note text)".into(),
        "insert into \"schéma\".\"tâble\" (note) select 'é' || g from generate_series(1, 10) g"
            .into(),
        "create table \"schéma\".base_note (id int, note text)".into(),
        "create table \"schéma\".child_note (extra int) inherits (\"schéma\".base_note)".into(),
        "insert into \"schéma\".base_note select g, 'base ø' from generate_series(1, 10) g".into(),
        "insert into \"schéma\".child_note select g, 'child', g from generate_series(1, 15) g"
            .into(),
        "alter table \"schéma\".\"tâble\" owner to \"app \"\"owner\"\"\"".into(),
        format!("grant usage on schema \"schéma\" to {r}"),
        format!("grant select on all tables in schema \"schéma\" to {r}"),
        format!(
            "select lo_from_bytea(4242, 'grand objet ø'); alter large object 4242 owner to {r}"
        ),
    ]
}

/// `s`'s UTF-8 bytes as LATIN1 characters: how a LATIN1 database names what a UTF8 one wrote.
fn latin1_view(s: &str) -> String {
    s.bytes().map(char::from).collect()
}

fn source_cluster() -> TestCluster {
    let pg = TestCluster::start();
    for q in CLUSTER_SQL {
        psql_utf8(&pg, "postgres", q);
    }
    for db in ["lat", "sqa"] {
        for q in database_sql(db) {
            psql_utf8(&pg, "postgres", &q);
        }
    }
    for q in objects_sql(&latin1_view("reader-ø")) {
        psql_utf8(&pg, "lat", &q);
    }
    for q in objects_sql("reader-ø") {
        psql_utf8(&pg, "sqa", &q);
    }
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_and_sql_ascii_databases_with_non_ascii_roles_restore_object_by_object() {
    let root = tempfile::tempdir().unwrap();
    let src = source_cluster();
    let target = TestCluster::start();
    for (job, db) in [(1, "lat"), (2, "sqa")] {
        let s = spec(&src, root.path(), job, BackupCode::Full, db);
        let out = backup_ok(&s).await;
        // The roles as they are named: no mis-encoded twin in the set.
        assert!(
            out.role_list.contains(&"reader-ø".to_string())
                && !out.role_list.iter().any(|r| r.contains('Ã')),
            "{db}: {:?}",
            out.role_list
        );
        let roles_sql = std::fs::read_to_string(s.final_dir.join("roles.sql")).unwrap();
        assert!(
            roles_sql.contains("CREATE ROLE \"reader-ø\";") && !roles_sql.contains('Ã'),
            "{roles_sql}"
        );
        // The parent's own rows, not its children's too.
        let counts = out.table_row_counts.expect("row counts").tables;
        assert_eq!(counts.get("\"schéma\".base_note"), Some(&10), "{counts:?}");
        assert_eq!(counts.get("\"schéma\".child_note"), Some(&15), "{counts:?}");
        assert_eq!(counts.get("\"schéma\".\"tâble\""), Some(&10), "{counts:?}");

        let o = restore(&rspec(
            &s.final_dir,
            conn(&target),
            root.path(),
            10 + job,
            db,
        ))
        .await;
        assert_ok(&o);
        let check = o.row_count_check.expect("row counts compared");
        assert!(check.exact && check.mismatches.is_empty(), "{check:?}");
    }
    // `keep` is used by neither database: a database's set does not carry it.
    let want = facts(&src, &["lat", "sqa"], &["postgres", "keep"]);
    let got = facts(&target, &["lat", "sqa"], &["postgres", "keep"]);
    assert_same(&want, &got);
    // The grantor of a database grant is kept.
    assert!(
        want["db:lat database"].contains("report=C/rep"),
        "{}",
        want["db:lat database"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restore_changes_no_existing_role_and_a_failed_one_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let src = source_cluster();
    let set = root.path().join("sets/cluster");
    let s = BackupSpec {
        final_dir: set.clone(),
        ..spec(&src, root.path(), 3, BackupCode::Cluster, "")
    };
    backup_ok(&s).await;

    // The target: its superuser has another password, asked for over TCP, and role `keep`
    // exists with other attributes than on the source.
    let target = TestCluster::start();
    target.psql(
        "postgres",
        "alter role postgres password 'target-secret'; create role keep nologin connection limit 7",
    );
    let hba = target.data_dir().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    target.psql("postgres", "select pg_reload_conf()");
    let passfile = root.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:*:postgres:target-secret\n", target.port()),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let node = pgbackman_dump::NodeConn {
        host: "127.0.0.1".into(),
        passfile: Some(passfile),
        ..conn(&target)
    };
    let superuser = role_state(&target, "postgres");
    let keep = role_state(&target, "keep");

    let mut r = rspec(&set, node, root.path(), 30, "");
    r.acknowledge_nonempty = true;
    let o = restore(&r).await;
    assert_ok(&o);
    assert!(o.roles_reused.contains(&"keep".to_string()), "{o:#?}");
    assert_eq!(role_state(&target, "postgres"), superuser);
    assert_eq!(role_state(&target, "keep"), keep);
    let want = facts(&src, &["lat", "sqa"], &["postgres", "keep"]);
    let after = facts(&target, &["lat", "sqa"], &["postgres", "keep"]);
    assert_same(&want, &after);

    // Again: the databases exist now, psql stops; the error says where and why, and nothing
    // changed.
    let mut r = rspec(&set, r.node.clone(), root.path(), 31, "");
    r.acknowledge_nonempty = true;
    let o = restore(&r).await;
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "psql");
            assert!(
                message.contains("psql stopped at line ")
                    && message.contains("already exists")
                    && message.contains("statement: CREATE DATABASE"),
                "{message}"
            );
            assert!(!message.contains("SCRAM-SHA-256$"), "{message}");
        }
        s => panic!("expected a failure, got {s:?}"),
    }
    assert_eq!(role_state(&target, "postgres"), superuser);
    assert_eq!(role_state(&target, "keep"), keep);
    assert_same(
        &after,
        &facts(&target, &["lat", "sqa"], &["postgres", "keep"]),
    );
}

/// The stored bytes (hex) of the roles whose names start with `prefix`, read from `postgres`.
fn role_bytes(pg: &TestCluster, prefix: &str) -> String {
    psql_utf8(
        pg,
        "postgres",
        &format!(
            "select string_agg(encode(replace(rolname::text, chr(92), repeat(chr(92), 2))::bytea, 'hex'), ',' order by 1) \
             from pg_authid where rolname::text like '{prefix}%'"
        ),
    )
}

/// The password hash, attributes and memberships of the roles whose names start with `prefix`.
fn role_attrs(pg: &TestCluster, prefix: &str) -> String {
    psql_utf8(
        pg,
        "postgres",
        &format!(
            "select string_agg(format('%s %s %s', a.rolcanlogin, a.rolpassword, \
                    (select string_agg(g.rolname, ',') from pg_auth_members m join pg_roles g on g.oid = m.roleid where m.member = a.oid)), ';') \
               from pg_authid a where rolname::text like '{prefix}%'"
        ),
    )
}

/// A bin directory whose psql is the real one and whose pg_restore answers `--version` and
/// then hangs (the restore can be cut short at that point).
fn hanging_pg_restore(root: &std::path::Path) -> std::path::PathBuf {
    let real = common::bin_dir();
    let dir = root.join("hang-bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(real.join("psql"), dir.join("psql")).unwrap();
    let script = dir.join("pg_restore");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {} --version; fi\nexec sleep 120\n",
            real.join("pg_restore").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A DBA connected to a LATIN1 database names a role there: `pg_authid` holds LATIN1 bytes
/// (f8), which the dump of that database names too. The set records those bytes; the restore
/// creates the role under its UTF-8 name (roles.sql, from the UTF8 admin database), then renames
/// it by OID from a session on the restored LATIN1 database, with its MD5 hash (salted with the
/// name) kept. A failed restore and a restore cut short (recovered from its journal) drop exactly
/// the role they made; a target that holds such a name is read, and a restore that would reuse
/// it is refused before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_named_from_a_latin1_session_is_restored_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let src = TestCluster::start();
    psql_utf8(
        &src,
        "postgres",
        "create database lat1 encoding 'LATIN1' template template0 locale 'C'",
    );
    psql_utf8(&src, "postgres", "create role lead");
    psql_utf8(
        &src,
        "lat1",
        "set password_encryption = 'md5'; create role \"legacy-ø\" login password 'old-secret'; \
         grant lead to \"legacy-ø\"",
    );
    psql_utf8(
        &src,
        "lat1",
        "create table t (i int); insert into t values (1); grant select on t to \"legacy-ø\"",
    );
    let src_bytes = role_bytes(&src, "legacy-");
    assert_eq!(src_bytes, hex::encode(b"legacy-\xf8"));
    assert!(role_attrs(&src, "legacy-").contains(" md5"));
    let s = spec(&src, root.path(), 1, BackupCode::Full, "lat1");
    let out = backup_ok(&s).await;
    assert_eq!(out.role_list, ["lead", "legacy-ø", "postgres"]);
    let manifest = pgbackman_dump::read_manifest(&s.final_dir).unwrap();
    assert_eq!(
        manifest.role_name_bytes.get("legacy-ø"),
        Some(&src_bytes),
        "{:?}",
        manifest.role_name_bytes
    );
    let target = TestCluster::start();

    // pg_restore fails after the role was renamed: the undo drops it, by OID.
    let mut r = rspec(&s.final_dir, conn(&target), root.path(), 2, "lat1");
    r.extra_args = vec!["--use-list=/nonexistent/list".into()];
    let o = restore(&r).await;
    match &o.status {
        Status::Failed { step, .. } => assert_eq!(step, "pg_restore", "{o:#?}"),
        other => panic!("{other:?}"),
    }
    assert!(
        o.cleanup
            .iter()
            .any(|c| c == "dropped role \"legacy-ø\" created by this restore"),
        "{:?}",
        o.cleanup
    );
    assert_eq!(role_bytes(&target, "legacy-"), "");
    assert_eq!(role_bytes(&target, "lead"), "");

    // Cut short (the process dies) once the role holds its LATIN1 bytes: the journal's
    // recovery finds it by OID and drops it with the database.
    let mut r = rspec(&s.final_dir, conn(&target), root.path(), 3, "lat1");
    r.bin_dir = hanging_pg_restore(root.path());
    let journal = root.path().join("journal/3.json");
    r.journal = Some(pgbackman_dump::Journal {
        path: journal.clone(),
        meta: serde_json::Value::Null,
    });
    let run = restore(&r);
    let watch = async {
        while role_bytes(&target, "legacy-") != src_bytes {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        o = run => panic!("the restore ended: {o:#?}"),
        _ = tokio::time::timeout(std::time::Duration::from_secs(60), watch) => {}
    }
    assert_eq!(role_bytes(&target, "legacy-"), src_bytes);
    let undone = pgbackman_dump::undo_interrupted(&journal)
        .await
        .unwrap()
        .expect("an interrupted run");
    assert!(
        undone
            .cleanup
            .contains(&"dropped role \"legacy-ø\" created by this restore".to_string()),
        "{:?}",
        undone.cleanup
    );
    assert_eq!(role_bytes(&target, "legacy-"), "");

    let o = restore(&rspec(&s.final_dir, conn(&target), root.path(), 4, "lat1")).await;
    assert_ok(&o);
    assert_eq!(role_bytes(&target, "legacy-"), src_bytes);
    assert_eq!(role_attrs(&target, "legacy-"), role_attrs(&src, "legacy-"));
    let want = facts(&src, &["lat1"], &["postgres"]);
    let got = facts(&target, &["lat1"], &["postgres"]);
    assert_same(&want, &got);

    // The target now holds that name: it is read, and a restore that would reuse the role
    // (roles.sql names it in UTF-8) is refused before anything changes.
    let o = restore(&rspec(
        &s.final_dir,
        conn(&target),
        root.path(),
        5,
        "lat1_copy",
    ))
    .await;
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "check", "{message}");
            assert!(
                message.contains("role \"legacy-ø\" (stored bytes 6c65676163792df8")
                    && message.contains("drop or rename it there"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(o.cleanup.is_empty(), "{:?}", o.cleanup);
    assert_eq!(role_bytes(&target, "legacy-"), src_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_named_with_non_utf8_bytes_in_a_sql_ascii_database_is_refused_by_name() {
    // SQL_ASCII converts nothing: a role named there with a byte that is not UTF-8 (f8, as a
    // LATIN1 client sends ø) has bytes no encoding of the cluster vouches for. The backup
    // refuses it at its roles step, naming the role and its bytes, rather than writing a set
    // that cannot restore it.
    let root = tempfile::tempdir().unwrap();
    let src = TestCluster::start();
    psql_utf8(
        &src,
        "postgres",
        "create database sqa1 encoding 'SQL_ASCII' template template0 locale 'C'",
    );
    let conninfo = format!(
        "host={} port={} user=postgres dbname=sqa1",
        src.socket_dir().display(),
        src.port()
    );
    // chr(248) is the byte f8 in a SQL_ASCII database.
    src.psql_conninfo(
        &conninfo,
        "do $$ begin execute format('create role %I login', 'legacy-' || chr(248)); \
         create table t (i int); \
         execute format('grant select on t to %I', 'legacy-' || chr(248)); end $$",
    );
    assert_eq!(role_bytes(&src, "legacy-"), hex::encode(b"legacy-\xf8"));
    let s = spec(&src, root.path(), 1, BackupCode::Full, "sqa1");
    let out =
        pgbackman_dump::run_backup(&s, pgbackman_dump::CancellationToken::new(), &|_| {}).await;
    match &out.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "roles", "{message}");
            assert!(
                message.contains("reading the roles of \"sqa1\"")
                    && message.contains("bytes 6c65676163792df8")
                    && message.contains("neither UTF-8 nor valid"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!s.final_dir.exists());
}
