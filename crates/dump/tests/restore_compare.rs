//! Restores compared object by object (common/compare.rs), not by exit codes: a LATIN1 and a
//! SQL_ASCII database whose objects belong to and are granted to roles with non-ASCII names,
//! database grants made by another role than the owner, inherited tables (row counts of the
//! table ONLY), and a CLUSTER restore onto a cluster whose superuser has another password (it
//! must change no existing role, and a failed one changes nothing at all). Role names stored in
//! bytes that are not UTF-8: refused by name from a SQL_ASCII database; from a LATIN1 session a
//! known defect, reproduced by an ignored test.

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

/// Known defect, reproduced here (run with `--ignored`): the backup succeeds, roles.sql creates
/// the role under its UTF-8 name (c3 b8) from the UTF8 admin database, and pg_restore then
/// fails at pre_data: `GRANT SELECT ON TABLE public.t TO "legacy-ø"` finds no role with the
/// LATIN1 bytes (f8) the dump names. A UTF8 session cannot type those bytes; a fix must create
/// (or rename, by OID) the role from a session on a database of the source's encoding, e.g. the
/// new target database after database.sql, and `restore::target::read_state` must then read a
/// target holding such a name (today a name neither UTF-8 nor valid in the admin database's
/// encoding is an error there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_named_from_a_latin1_session_is_restored_byte_for_byte() {
    // A DBA connected to the LATIN1 database creates a role there: the server stores its name
    // in LATIN1 ("legacy-" f8), bytes that are not UTF-8.
    let root = tempfile::tempdir().unwrap();
    let src = TestCluster::start();
    psql_utf8(
        &src,
        "postgres",
        "create database lat1 encoding 'LATIN1' template template0 locale 'C'",
    );
    psql_utf8(&src, "lat1", "create role \"legacy-ø\" login");
    psql_utf8(
        &src,
        "lat1",
        "create table t (i int); insert into t values (1); grant select on t to \"legacy-ø\"",
    );
    let src_bytes = role_bytes(&src, "legacy-");
    assert_eq!(src_bytes, hex::encode(b"legacy-\xf8"));
    let s = spec(&src, root.path(), 1, BackupCode::Full, "lat1");
    let out = backup_ok(&s).await;
    assert_eq!(out.role_list, ["legacy-ø", "postgres"]);
    let target = TestCluster::start();
    let o = restore(&rspec(&s.final_dir, conn(&target), root.path(), 2, "lat1")).await;
    assert_ok(&o);
    assert_eq!(role_bytes(&target, "legacy-"), src_bytes);
    let want = facts(&src, &["lat1"], &["postgres"]);
    let got = facts(&target, &["lat1"], &["postgres"]);
    assert_same(&want, &got);
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
