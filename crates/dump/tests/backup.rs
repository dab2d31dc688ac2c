//! Backups of real throwaway clusters (pgbackman-testkit): sets, roles, formats, failures,
//! cancellation, timeouts, odd names, verification.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgbackman_core::model::{BackupCode, NodeProfile};
use pgbackman_core::paths::encode_path_component;
use pgbackman_dump::{
    BackupOutcome, BackupSpec, CancellationToken, DumpFormat, NodeConn, RowCountSource, Status,
    pick_client, read_manifest, run_backup, verify_set,
};
use pgbackman_testkit::TestCluster;
use sha2::{Digest, Sha256};

mod common;
use common::bin_dir;

/// The shared spec, with the database named even for cluster-wide codes, sets under the
/// encoded database (or code) name, and a definition in the manifest.
fn spec(pg: &TestCluster, root: &Path, job_id: i64, code: BackupCode, db: &str) -> BackupSpec {
    let what = if code.is_cluster_wide() {
        code.to_string()
    } else {
        db.to_string()
    };
    BackupSpec {
        dbname: db.into(),
        final_dir: root
            .join("sets")
            .join(encode_path_component(&what))
            .join(format!("job{job_id}")),
        definition: serde_json::json!({"def_id": 7, "dbname": db}),
        encryption: None,
        ..common::spec(pg, root, job_id, code, db)
    }
}

async fn backup(spec: &BackupSpec) -> BackupOutcome {
    run_backup(spec, CancellationToken::new(), &|_| {}).await
}

fn assert_ok(o: &BackupOutcome) {
    assert!(o.status.is_success(), "backup failed: {:#?}", o.status);
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory of the set is private, and no staging is left.
fn assert_private_and_clean(spec: &BackupSpec, o: &BackupOutcome) {
    let dir = o.backup_dir.as_ref().unwrap();
    assert_eq!(mode(dir), 0o700);
    for f in &o.files {
        assert_eq!(mode(&dir.join(&f.name)), 0o600, "{}", f.name);
    }
    assert!(!spec.staging_root.join(spec.job_id.to_string()).exists());
}

/// The manifest's sha256 values match a fresh hash of every file.
fn assert_hashes(o: &BackupOutcome) {
    let dir = o.backup_dir.as_ref().unwrap();
    let m = read_manifest(dir).unwrap();
    assert_eq!(m.format, 1);
    assert!(!m.files.is_empty());
    for f in &m.files {
        let data = fs::read(dir.join(&f.name)).unwrap();
        assert_eq!(data.len() as u64, f.size, "{}", f.name);
        assert_eq!(hex::encode(Sha256::digest(&data)), f.sha256, "{}", f.name);
    }
    verify_set(dir).unwrap();
    // The outcome lists the manifest's files plus the manifest.
    assert_eq!(o.files.len(), m.files.len() + 1);
    assert_eq!(o.files.last().unwrap().name, "manifest.json");
    assert_eq!(o.total_size, o.files.iter().map(|f| f.size).sum::<u64>());
}

/// Decompresses a zstd file into a temporary file.
fn decompress(path: &Path) -> tempfile::NamedTempFile {
    let mut out = tempfile::NamedTempFile::new().unwrap();
    let input = fs::File::open(path).unwrap();
    zstd::stream::copy_decode(input, &mut out).unwrap();
    out
}

fn pg_restore_list(path: &Path) -> String {
    let out = Command::new(bin_dir().join("pg_restore"))
        .arg("--list")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore --list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a client tool against a cluster over its socket; panics with stderr on failure.
fn run_tool(pg: &TestCluster, tool: &str, args: &[&str]) -> String {
    let port = pg.port().to_string();
    let sock = pg.socket_dir().display().to_string();
    let out = Command::new(bin_dir().join(tool))
        .args(["-h", &sock, "-p", &port, "-U", "postgres"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// pg_dump / pg_dumpall processes (not zombies) working on the cluster at `port`.
fn dump_processes(port: u16) -> Vec<String> {
    let port_arg = format!("--port={port}");
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_dump = args
            .first()
            .is_some_and(|a| a.ends_with("pg_dump") || a.ends_with("pg_dumpall"));
        let zombie = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if is_dump && !zombie && args.iter().any(|a| a == &port_arg) {
            found.push(format!("{pid}: {}", args.join(" ")));
        }
    }
    found
}

/// Waits up to 5 s for every dump process of the cluster to be gone.
async fn assert_no_dump_left(port: u16) {
    let t = Instant::now();
    loop {
        let left = dump_processes(port);
        if left.is_empty() {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_nothing_kept(spec: &BackupSpec, o: &BackupOutcome) {
    assert!(o.backup_dir.is_none());
    assert!(o.files.is_empty());
    assert!(
        !spec.staging_root.join(spec.job_id.to_string()).exists(),
        "staging left"
    );
    assert!(!spec.final_dir.exists(), "final dir exists");
}

const ROLES_SETUP: &str = "
    CREATE ROLE app_owner LOGIN PASSWORD 'secret-1';
    CREATE ROLE readers NOLOGIN;
    CREATE ROLE \"Reader One\" LOGIN PASSWORD 'pw' CONNECTION LIMIT 3 VALID UNTIL '2099-01-01 00:00:00+00';
    GRANT readers TO \"Reader One\";
    CREATE ROLE admin_grp NOLOGIN;
    GRANT app_owner TO admin_grp WITH ADMIN OPTION;
    CREATE ROLE setting_only NOLOGIN;
    CREATE ROLE unrelated LOGIN;
    ALTER ROLE \"Reader One\" SET work_mem = '8MB';
    COMMENT ON ROLE readers IS 'read-only people';
";

fn setup_app_db(pg: &TestCluster) {
    pg.psql("postgres", ROLES_SETUP);
    pg.psql("postgres", "CREATE DATABASE appdb OWNER app_owner");
    pg.psql(
        "postgres",
        "ALTER DATABASE appdb SET search_path = app, public;
         ALTER ROLE readers IN DATABASE appdb SET statement_timeout = '5s';
         ALTER ROLE setting_only IN DATABASE appdb SET work_mem = '1MB';
         GRANT CONNECT ON DATABASE appdb TO readers;
         REVOKE TEMPORARY ON DATABASE appdb FROM PUBLIC;
         COMMENT ON DATABASE appdb IS 'the app''s data';",
    );
    pg.psql(
        "appdb",
        "CREATE SCHEMA app AUTHORIZATION app_owner;
         CREATE TABLE app.t (id int PRIMARY KEY, v text);
         INSERT INTO app.t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
         ALTER TABLE app.t OWNER TO app_owner;
         GRANT SELECT ON app.t TO readers;
         CREATE TABLE public.\"Empty Table\" ();
         SELECT lo_from_bytea(4242, 'hello large object');
         ANALYZE;",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_custom_set_restores_onto_an_empty_cluster() {
    let pg = TestCluster::start();
    setup_app_db(&pg);
    let root = tempfile::tempdir().unwrap();
    let s = spec(&pg, root.path(), 101, BackupCode::Full, "appdb");
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = Arc::clone(&seen);
    let o = run_backup(&s, CancellationToken::new(), &move |n| {
        seen2.store(n, Ordering::Relaxed)
    })
    .await;
    assert_ok(&o);
    assert_private_and_clean(&s, &o);
    assert_hashes(&o);
    let dir = o.backup_dir.clone().unwrap();
    assert_eq!(dir, s.final_dir);
    let names: Vec<&str> = o.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "backup.log",
            "database.sql",
            "dump.pgdump.zst",
            "roles.sql",
            "manifest.json"
        ]
    );
    assert_eq!(o.dump_file.as_deref(), Some("dump.pgdump.zst"));
    assert_eq!(o.manifest_file.as_deref(), Some("manifest.json"));
    let dump_size = o
        .files
        .iter()
        .find(|f| f.name == "dump.pgdump.zst")
        .unwrap()
        .size;
    assert_eq!(
        seen.load(Ordering::Relaxed),
        dump_size,
        "progress ends at the file size"
    );

    // Facts.
    assert!(o.server_version_num.unwrap() >= 100000);
    assert!(
        o.client_version
            .as_deref()
            .unwrap()
            .starts_with("pg_dump (PostgreSQL)")
    );
    assert!(o.database_size.unwrap() > 0);
    assert!(o.command.iter().any(|a| a == "--format=custom"));
    assert!(o.command.iter().any(|a| a == "--dbname=dbname='appdb'"));
    assert!(o.command.iter().any(|a| a.starts_with("--snapshot=")));
    assert!(
        !o.command
            .iter()
            .any(|a| a.to_lowercase().contains("password="))
    );
    let phases: Vec<&str> = o.phase_timings.iter().map(|(p, _)| p.as_str()).collect();
    for p in [
        "connect", "roles", "database", "pg_dump", "manifest", "fsync", "rename",
    ] {
        assert!(phases.contains(&p), "{phases:?}");
    }
    let counts = o.table_row_counts.as_ref().unwrap();
    assert_eq!(counts.source, RowCountSource::Snapshot);
    assert_eq!(counts.tables.get("app.t"), Some(&1000));
    assert_eq!(counts.tables.get("public.\"Empty Table\""), Some(&0));

    // Roles: found by querying, closed over memberships, nothing unrelated.
    for r in [
        "Reader One",
        "admin_grp",
        "app_owner",
        "readers",
        "setting_only",
    ] {
        assert!(
            o.role_list.iter().any(|x| x == r),
            "{r} missing from {:?}",
            o.role_list
        );
    }
    assert!(!o.role_list.iter().any(|x| x == "unrelated"));
    let mut sorted = o.role_list.clone();
    sorted.sort();
    assert_eq!(sorted, o.role_list);
    let roles = fs::read_to_string(dir.join("roles.sql")).unwrap();
    assert!(roles.contains("CREATE ROLE app_owner;"), "{roles}");
    assert!(roles.contains("CREATE ROLE \"Reader One\";"));
    assert!(roles.contains(
        "ALTER ROLE \"Reader One\" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 3 PASSWORD 'SCRAM-SHA-256$"
    ));
    assert!(roles.contains("VALID UNTIL '2099-01-01 00:00:00+00'"));
    assert!(roles.contains("ALTER ROLE \"Reader One\" SET work_mem TO '8MB';"));
    assert!(roles.contains("COMMENT ON ROLE readers IS 'read-only people';"));
    assert!(roles.contains("GRANT readers TO \"Reader One\" GRANTED BY postgres;"));
    assert!(roles.contains("GRANT app_owner TO admin_grp WITH ADMIN OPTION GRANTED BY postgres;"));
    assert!(!roles.contains("unrelated"));
    let database = fs::read_to_string(dir.join("database.sql")).unwrap();
    assert!(
        database
            .contains("CREATE DATABASE :\"dbname\" WITH TEMPLATE = template0 ENCODING = 'UTF8'"),
        "{database}"
    );
    assert!(database.contains("ALTER DATABASE :\"dbname\" OWNER TO app_owner;"));
    assert!(database.contains("ALTER DATABASE :\"dbname\" SET search_path TO 'app', 'public';"));
    assert!(
        database
            .contains("ALTER ROLE readers IN DATABASE :\"dbname\" SET statement_timeout TO '5s';")
    );
    assert!(
        database.contains("ALTER ROLE setting_only IN DATABASE :\"dbname\" SET work_mem TO '1MB';")
    );
    assert!(database.contains("GRANT CONNECT ON DATABASE :\"dbname\" TO readers;"));
    assert!(database.contains("COMMENT ON DATABASE :\"dbname\" IS 'the app''s data';"));

    // Manifest.
    let m = read_manifest(&dir).unwrap();
    assert_eq!(m.job_id, 101);
    assert_eq!(m.code, "FULL");
    assert_eq!(m.dbname, "appdb");
    assert_eq!(m.definition["def_id"], 7);
    assert_eq!(m.role_passwords, "included");
    assert_eq!(m.role_list, o.role_list);
    assert_eq!(m.command, o.command);
    assert!(m.started <= m.finished);
    let log = fs::read_to_string(dir.join("backup.log")).unwrap();
    assert!(log.contains("step pg_dump: ["), "{log}");
    assert!(
        log.contains("pg_dump: dumping contents of table \"app.t\""),
        "{log}"
    );

    // The dump is a valid custom-format archive, large object included.
    let plain = decompress(&dir.join("dump.pgdump.zst"));
    let list = pg_restore_list(plain.path());
    assert!(list.contains("TABLE DATA app t"), "{list}");
    assert!(list.contains("BLOB"), "{list}");

    // And the set restores onto an empty cluster under another name.
    let target = TestCluster::start();
    let roles_file = dir.join("roles.sql").display().to_string();
    let db_file = dir.join("database.sql").display().to_string();
    run_tool(
        &target,
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-f",
            &roles_file,
        ],
    );
    // Without the variable database.sql refuses to run.
    let port = target.port().to_string();
    let sock = target.socket_dir().display().to_string();
    let refused = Command::new(bin_dir().join("psql"))
        .args([
            "-X", "-q", "-h", &sock, "-p", &port, "-U", "postgres", "-d", "postgres", "-f",
            &db_file,
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs the name of the database"));
    run_tool(
        &target,
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "dbname=restored db",
            "-d",
            "postgres",
            "-f",
            &db_file,
        ],
    );
    let plain_path = plain.path().display().to_string();
    run_tool(
        &target,
        "pg_restore",
        &["--exit-on-error", "-d", "restored db", &plain_path],
    );
    assert_eq!(
        target.psql("restored db", "SELECT count(*) FROM app.t"),
        "1000"
    );
    assert_eq!(
        target.psql("restored db", "SELECT convert_from(lo_get(4242), 'UTF8')"),
        "hello large object"
    );
    assert_eq!(
        target.psql("postgres", "SELECT pg_get_userbyid(datdba) || ' ' || shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'restored db'"),
        "app_owner the app's data"
    );
    assert_eq!(
        target.psql("postgres", "SELECT array_to_string(s.setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = 'restored db' AND s.setrole = 'readers'::regrole"),
        "statement_timeout=5s"
    );
    assert_eq!(
        target.psql("postgres", "SELECT has_database_privilege('readers', 'restored db', 'CONNECT')::text || has_database_privilege('readers', 'restored db', 'TEMP')::text"),
        "truefalse"
    );
    assert_eq!(
        target.psql("postgres", "SELECT pg_has_role('Reader One', 'readers', 'MEMBER')::text || ' ' || rolconnlimit FROM pg_roles WHERE rolname = 'Reader One'"),
        "true 3"
    );
    // roles.sql leaves existing roles alone: a second run changes nothing and succeeds.
    target.psql("postgres", "ALTER ROLE app_owner CONNECTION LIMIT 9");
    run_tool(
        &target,
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-f",
            &roles_file,
        ],
    );
    assert_eq!(
        target.psql(
            "postgres",
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app_owner'"
        ),
        "9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_data_sets() {
    let pg = TestCluster::start();
    setup_app_db(&pg);
    let root = tempfile::tempdir().unwrap();

    let s = spec(&pg, root.path(), 201, BackupCode::Schema, "appdb");
    let o = backup(&s).await;
    assert_ok(&o);
    assert_private_and_clean(&s, &o);
    assert_hashes(&o);
    assert!(o.command.iter().any(|a| a == "--schema-only"));
    assert!(o.table_row_counts.is_none());
    let dir = o.backup_dir.unwrap();
    let list = pg_restore_list(decompress(&dir.join("dump.pgdump.zst")).path());
    assert!(list.contains("TABLE app t"), "{list}");
    assert!(!list.contains("TABLE DATA"), "{list}");
    assert!(dir.join("roles.sql").is_file() && dir.join("database.sql").is_file());

    let s = spec(&pg, root.path(), 202, BackupCode::Data, "appdb");
    let o = backup(&s).await;
    assert_ok(&o);
    assert_hashes(&o);
    assert!(o.command.iter().any(|a| a == "--data-only"));
    assert_eq!(
        o.table_row_counts.as_ref().unwrap().tables.get("app.t"),
        Some(&1000)
    );
    let dir = o.backup_dir.unwrap();
    let list = pg_restore_list(decompress(&dir.join("dump.pgdump.zst")).path());
    assert!(list.contains("TABLE DATA app t"), "{list}");
    assert!(!list.contains(" TABLE app t "), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_format_with_two_jobs() {
    let pg = TestCluster::start();
    pg.create_database("dirdb");
    pg.psql(
        "dirdb",
        "CREATE TABLE a AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g;
         CREATE TABLE b AS SELECT g AS id FROM generate_series(1, 3000) g;",
    );
    let root = tempfile::tempdir().unwrap();
    let mut s = spec(&pg, root.path(), 301, BackupCode::Full, "dirdb");
    s.format = DumpFormat::Directory { jobs: 2 };
    let o = backup(&s).await;
    assert_ok(&o);
    assert_private_and_clean(&s, &o);
    assert_hashes(&o);
    assert!(o.command.iter().any(|a| a == "--jobs=2"));
    assert!(o.command.iter().any(|a| a == "--format=directory"));
    assert_eq!(o.dump_file.as_deref(), Some("dump.dir"));
    let dir = o.backup_dir.unwrap();
    assert_eq!(mode(&dir.join("dump.dir")), 0o700);
    assert!(o.files.iter().any(|f| f.name == "dump.dir/toc.dat"));
    assert!(
        o.files
            .iter()
            .filter(|f| f.name.starts_with("dump.dir/"))
            .count()
            >= 3
    );
    let list = pg_restore_list(&dir.join("dump.dir"));
    assert!(list.contains("TABLE DATA public a"), "{list}");
    let counts = o.table_row_counts.unwrap();
    assert_eq!(counts.tables.get("public.a"), Some(&5000));
    assert_eq!(counts.tables.get("public.b"), Some(&3000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_and_globals_standard_and_managed() {
    let pg = TestCluster::start();
    pg.psql("postgres", "CREATE ROLE alice LOGIN PASSWORD 'alice-pw'");
    pg.create_database("c1");
    pg.psql(
        "c1",
        "CREATE TABLE marker (x text); INSERT INTO marker VALUES ('in-c1');",
    );
    let root = tempfile::tempdir().unwrap();

    let s = spec(&pg, root.path(), 401, BackupCode::Cluster, "");
    let o = backup(&s).await;
    assert_ok(&o);
    assert_private_and_clean(&s, &o);
    assert_hashes(&o);
    assert_eq!(o.dump_file.as_deref(), Some("cluster.sql.zst"));
    assert!(o.role_list.is_empty());
    assert!(o.table_row_counts.is_none());
    assert!(o.command[0].ends_with("pg_dumpall"));
    let sql = fs::read_to_string(decompress(&o.backup_dir.unwrap().join("cluster.sql.zst")).path())
        .unwrap();
    assert!(sql.contains("CREATE ROLE alice;"), "{sql}");
    assert!(sql.contains("PASSWORD 'SCRAM-SHA-256$"));
    assert!(sql.contains("in-c1"));

    let s = spec(&pg, root.path(), 402, BackupCode::Globals, "");
    let o = backup(&s).await;
    assert_ok(&o);
    assert_hashes(&o);
    assert!(o.command.iter().any(|a| a == "--globals-only"));
    let sql = fs::read_to_string(decompress(&o.backup_dir.unwrap().join("globals.sql.zst")).path())
        .unwrap();
    assert!(sql.contains("CREATE ROLE alice;"), "{sql}");
    assert!(!sql.contains("in-c1"));

    // Managed profile: no password anywhere.
    let mut s = spec(&pg, root.path(), 403, BackupCode::Globals, "");
    s.profile = NodeProfile::Managed;
    let o = backup(&s).await;
    assert_ok(&o);
    assert!(o.command.iter().any(|a| a == "--no-role-passwords"));
    let sql = fs::read_to_string(decompress(&o.backup_dir.unwrap().join("globals.sql.zst")).path())
        .unwrap();
    assert!(sql.contains("CREATE ROLE alice;"));
    assert!(!sql.contains("PASSWORD"), "{sql}");

    let mut s = spec(&pg, root.path(), 404, BackupCode::Full, "c1");
    s.profile = NodeProfile::Managed;
    pg.psql("postgres", "ALTER DATABASE c1 OWNER TO alice");
    let o = backup(&s).await;
    assert_ok(&o);
    let dir = o.backup_dir.unwrap();
    let roles = fs::read_to_string(dir.join("roles.sql")).unwrap();
    assert!(roles.contains("CREATE ROLE alice;"), "{roles}");
    assert!(!roles.contains("PASSWORD '"), "{roles}");
    assert!(roles.contains("Passwords: NOT included"));
    let m = read_manifest(&dir).unwrap();
    assert!(
        m.role_passwords.starts_with("not included"),
        "{}",
        m.role_passwords
    );
}

/// A bin dir whose `tool` fails at dump time (its --version still answers) after printing
/// the connection variables it was given; the other tools are the real ones.
fn failing_bin_dir(root: &Path, tool: &str) -> PathBuf {
    let bin = root.join(format!("bad-{tool}"));
    fs::create_dir(&bin).unwrap();
    let real = bin_dir();
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then exec '{}' --version; fi\n\
         echo \"env: PGAPPNAME=$PGAPPNAME PGPASSFILE=$PGPASSFILE PGSSLMODE=$PGSSLMODE PGPASSWORD=${{PGPASSWORD:-unset}}\" >&2\n\
         echo '{tool}: error: simulated failure for the test' >&2\nexit 3\n",
        real.join(tool).display()
    );
    fs::write(bin.join(tool), script).unwrap();
    fs::set_permissions(bin.join(tool), fs::Permissions::from_mode(0o755)).unwrap();
    for other in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        if other != tool {
            std::os::unix::fs::symlink(real.join(other), bin.join(other)).unwrap();
        }
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pg_dump_keeps_nothing() {
    let pg = TestCluster::start();
    pg.create_database("faildb");
    let root = tempfile::tempdir().unwrap();
    let passfile = root.path().join("pgpass");
    fs::write(&passfile, "").unwrap();
    fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = spec(&pg, root.path(), 501, BackupCode::Full, "faildb");
    s.bin_dir = failing_bin_dir(root.path(), "pg_dump");
    s.node.passfile = Some(passfile.clone());
    s.node.sslmode = "disable".into();
    let o = backup(&s).await;
    match &o.status {
        Status::Failed {
            step,
            exit_status,
            message,
            stderr_tail,
        } => {
            assert_eq!(step, "pg_dump");
            assert_eq!(*exit_status, Some(3));
            assert!(message.contains("status 3"), "{message}");
            assert!(
                stderr_tail.contains("simulated failure for the test"),
                "{stderr_tail}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_kept(&s, &o);
    assert!(o.table_row_counts.is_none());

    // A database that does not exist fails at connect.
    let s = spec(&pg, root.path(), 502, BackupCode::Full, "no such db");
    let o = backup(&s).await;
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "connect");
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_kept(&s, &o);

    // Forbidden extra arguments are refused before anything runs.
    let mut s = spec(&pg, root.path(), 503, BackupCode::Full, "faildb");
    s.extra_args = vec!["--file=/tmp/elsewhere".into()];
    let o = backup(&s).await;
    assert!(
        matches!(&o.status, Status::Failed { step, .. } if step == "arguments"),
        "{:?}",
        o.status
    );
    assert_nothing_kept(&s, &o);
}

fn big_table(pg: &TestCluster, db: &str, rows: u32) {
    pg.create_database(db);
    pg.psql(
        db,
        &format!(
            "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v \
             FROM generate_series(1, {rows}) g"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_dump_kills_pg_dump_and_keeps_nothing() {
    let pg = TestCluster::start();
    // Big enough that pg_dump still runs when multithreaded zstd emits its first bytes.
    big_table(&pg, "bigdb", 1_500_000);
    let root = tempfile::tempdir().unwrap();
    let s = spec(&pg, root.path(), 601, BackupCode::Full, "bigdb");
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let o = run_backup(&s, cancel, &move |n| {
        if n > 0 {
            token.cancel();
        }
    })
    .await;
    match &o.status {
        Status::Cancelled { reason } => assert!(reason.contains("pg_dump"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_nothing_kept(&s, &o);
    assert_no_dump_left(pg.port()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_runtime_lock_wait_and_dropped_future() {
    let pg = TestCluster::start();
    pg.create_database("lockdb");
    pg.psql("lockdb", "CREATE TABLE locked (x int)");
    // Another session holds an exclusive lock: pg_dump waits on it.
    let (client, conn) = tokio_postgres::connect(&pg.conninfo("lockdb"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();

    // max_runtime
    let mut s = spec(&pg, root.path(), 701, BackupCode::Full, "lockdb");
    s.lock_wait_timeout = None;
    s.max_runtime = Some(Duration::from_secs(1));
    let t = Instant::now();
    let o = backup(&s).await;
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "pg_dump");
            assert_eq!(message, "maximum runtime 00:00:01 exceeded");
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_nothing_kept(&s, &o);
    assert_no_dump_left(pg.port()).await;

    // --lock-wait-timeout: pg_dump gives up by itself.
    let mut s = spec(&pg, root.path(), 702, BackupCode::Full, "lockdb");
    s.lock_wait_timeout = Some(Duration::from_millis(300));
    let o = backup(&s).await;
    match &o.status {
        Status::Failed {
            step,
            exit_status,
            stderr_tail,
            ..
        } => {
            assert_eq!(step, "pg_dump");
            assert_eq!(*exit_status, Some(1));
            assert!(
                stderr_tail.contains("LOCK TABLE public.locked"),
                "{stderr_tail}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(o.command.iter().any(|a| a == "--lock-wait-timeout=300"));
    assert_nothing_kept(&s, &o);

    // The run's future dropped mid-dump: no child survives, no staging either.
    let mut s = spec(&pg, root.path(), 703, BackupCode::Full, "lockdb");
    s.lock_wait_timeout = None;
    let r = tokio::time::timeout(Duration::from_millis(1500), backup(&s)).await;
    assert!(r.is_err(), "the dump should still be waiting for the lock");
    assert_no_dump_left(pg.port()).await;
    assert!(!s.staging_root.join("703").exists());
    assert!(!s.final_dir.exists());
    client.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_database_names_back_up_fine() {
    let pg = TestCluster::start();
    let root = tempfile::tempdir().unwrap();
    let names = [
        "my db",
        "it's \"quoted\"",
        "ünï cödé 日本",
        "../x",
        "a=b c",
        "back\\slash",
    ];
    for (i, name) in names.iter().enumerate() {
        pg.create_database(name);
        pg.psql(name, "CREATE TABLE t AS SELECT 1 AS x");
        let s = spec(&pg, root.path(), 800 + i as i64, BackupCode::Full, name);
        let o = backup(&s).await;
        assert_ok(&o);
        assert_hashes(&o);
        let dir = o.backup_dir.unwrap();
        // The set is where the caller said: inside sets/, whatever the name.
        assert!(dir.starts_with(root.path().join("sets")));
        assert_eq!(
            dir.parent().unwrap().file_name().unwrap().to_string_lossy(),
            encode_path_component(name)
        );
        let m = read_manifest(&dir).unwrap();
        assert_eq!(&m.dbname, name);
        assert_eq!(o.table_row_counts.unwrap().tables.get("public.t"), Some(&1));
        let list = pg_restore_list(decompress(&dir.join("dump.pgdump.zst")).path());
        assert!(list.contains("TABLE DATA public t"), "{name}: {list}");
    }
    assert!(!root.path().join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_set_detects_a_flipped_byte_and_strays() {
    let pg = TestCluster::start();
    pg.create_database("vdb");
    pg.psql(
        "vdb",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g",
    );
    let root = tempfile::tempdir().unwrap();
    let s = spec(&pg, root.path(), 901, BackupCode::Full, "vdb");
    let o = backup(&s).await;
    assert_ok(&o);
    let dir = o.backup_dir.unwrap();
    verify_set(&dir).unwrap();

    let dump = dir.join("dump.pgdump.zst");
    let mut bytes = fs::read(&dump).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&dump, &bytes).unwrap();
    let err = verify_set(&dir).unwrap_err().to_string();
    assert!(err.contains("dump.pgdump.zst: sha256"), "{err}");
    bytes[mid] ^= 0x01;
    fs::write(&dump, &bytes).unwrap();
    verify_set(&dir).unwrap();

    fs::write(dir.join("stray.txt"), b"x").unwrap();
    let err = verify_set(&dir).unwrap_err().to_string();
    assert!(err.contains("stray.txt: not in the manifest"), "{err}");
    fs::remove_file(dir.join("stray.txt")).unwrap();
    fs::remove_file(dir.join("roles.sql")).unwrap();
    let err = verify_set(&dir).unwrap_err().to_string();
    assert!(err.contains("roles.sql"), "{err}");
}

/// Disk full while the dump is written: step "write" with the OS error, nothing kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_at_write() {
    let root = tempfile::tempdir().unwrap();
    let small = root.path().join("small");
    fs::create_dir(&small).unwrap();
    let mounted = nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=256k,mode=0700"),
    );
    if let Err(e) = mounted {
        eprintln!("skipped: cannot mount a small tmpfs ({e}); run as root to test a full disk");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(small.clone());

    let pg = TestCluster::start();
    big_table(&pg, "fulldb", 100_000);
    let mut s = spec(&pg, &small, 1001, BackupCode::Full, "fulldb");
    s.format = DumpFormat::Custom { zstd_level: 1 };
    let o = backup(&s).await;
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "write");
            assert!(message.contains("No space left on device"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_kept(&s, &o);
    assert_no_dump_left(pg.port()).await;
}

#[test]
fn pick_client_rules() {
    let dirs: BTreeMap<u32, PathBuf> = [12, 15, 17]
        .into_iter()
        .map(|m| (m, PathBuf::from(format!("/usr/lib/postgresql/{m}/bin"))))
        .collect();
    assert_eq!(pick_client(&dirs, 12, None).unwrap().0, 12);
    assert_eq!(pick_client(&dirs, 13, None).unwrap().0, 15);
    assert_eq!(pick_client(&dirs, 10, None).unwrap().0, 12);
    let (m, d) = pick_client(&dirs, 16, None).unwrap();
    assert_eq!((m, d), (17, PathBuf::from("/usr/lib/postgresql/17/bin")));
    let e = pick_client(&dirs, 18, None).unwrap_err().to_string();
    assert!(
        e.contains("PostgreSQL 18") && e.contains("12, 15, 17"),
        "{e}"
    );
    assert_eq!(pick_client(&dirs, 13, Some(17)).unwrap().0, 17);
    let e = pick_client(&dirs, 15, Some(12)).unwrap_err().to_string();
    assert!(e.contains("cannot dump a PostgreSQL 15"), "{e}");
    let e = pick_client(&dirs, 13, Some(16)).unwrap_err().to_string();
    assert!(
        e.contains("16 is not available") && e.contains("12, 15, 17"),
        "{e}"
    );
    let e = pick_client(&BTreeMap::new(), 15, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none"), "{e}");
}

#[test]
fn client_major_of_the_installed_tools() {
    let m = pgbackman_dump::client_major(&bin_dir()).unwrap();
    assert!(m >= 10);
    assert!(pgbackman_dump::client_major(Path::new("/nonexistent")).is_err());
}

#[test]
fn run_future_is_send_and_spec_serializes() {
    fn assert_send<T: Send>(_: &T) {}
    let root = tempfile::tempdir().unwrap();
    let s = BackupSpec {
        job_id: 1,
        code: BackupCode::Full,
        profile: NodeProfile::Managed,
        dbname: "x".into(),
        node: NodeConn {
            host: "h".into(),
            port: 5432,
            user: "u".into(),
            admin_dbname: "postgres".into(),
            sslmode: "require".into(),
            passfile: Some("/p".into()),
            timeouts: None,
        },
        node_label: "h:5432".into(),
        bin_dir: "/b".into(),
        format: DumpFormat::Directory { jobs: 4 },
        extra_args: vec!["--no-owner".into()],
        lock_wait_timeout: Some(Duration::from_secs(5)),
        max_runtime: None,
        application_name: "pgbackman".into(),
        staging_root: root.path().join("s"),
        final_dir: root.path().join("f"),
        definition: serde_json::json!({"a": 1}),
        encryption: None,
    };
    let fut = run_backup(&s, CancellationToken::new(), &|_| {});
    assert_send(&fut);
    drop(fut);
    let json = serde_json::to_string(&s).unwrap();
    assert!(
        json.contains("\"code\":\"FULL\"") && json.contains("\"profile\":\"managed\""),
        "{json}"
    );
    let back: BackupSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let o = BackupOutcome {
        job_id: 1,
        status: Status::Failed {
            step: "pg_dump".into(),
            exit_status: Some(1),
            message: "m".into(),
            stderr_tail: "t".into(),
        },
        started: chrono::Utc::now(),
        finished: chrono::Utc::now(),
        backup_dir: None,
        files: vec![],
        total_size: 0,
        dump_file: None,
        manifest_file: None,
        role_list: vec![],
        client_version: None,
        server_version: None,
        server_version_num: None,
        command: vec![],
        phase_timings: vec![("connect".into(), 0.5)],
        database_size: None,
        table_row_counts: None,
        verification: None,
        object_prefix: None,
    };
    let json = serde_json::to_string(&o).unwrap();
    assert!(json.contains("\"status\":\"failed\""), "{json}");
    assert_eq!(serde_json::from_str::<BackupOutcome>(&json).unwrap(), o);
}
