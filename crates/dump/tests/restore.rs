//! Restores of real sets onto real throwaway clusters: roles created and reused, stream and
//! file feeds, rename of an existing target, undo after a failure, the downgrade rule, CLUSTER
//! sets onto empty and non-empty clusters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgbackman_core::model::BackupCode;
use pgbackman_dump::{
    BackupSpec, CancellationToken, Decompression, RestoreOutcome, RestoreSpec, RolePolicy, Status,
    restore_set,
};
use pgbackman_testkit::TestCluster;

mod common;
use common::{assert_ok, backup_ok, bin_dir, conn, restore, spec};

const SOURCE_SQL: &str = "
    create role app_owner login; create role app_reader; create role app_user login in role app_reader;
    alter database shop owner to app_owner;
    alter database shop set work_mem = '12MB';
    alter role app_user in database shop set statement_timeout = '7s';
    revoke all on database shop from public; grant connect on database shop to app_reader;";

const SOURCE_OBJECTS: &str = "
    create schema app authorization app_owner;
    create table app.t (id int primary key, v text); alter table app.t owner to app_owner;
    insert into app.t select g, md5(g::text) from generate_series(1, 5000) g;
    create view app.v as select count(*) from app.t; alter view app.v owner to app_owner;
    create function app.f() returns int language sql as 'select 42'; alter function app.f() owner to app_owner;
    grant usage on schema app to app_reader; grant select on app.t to app_reader;
    select lo_from_bytea(4242, 'large object');";

/// A cluster with database `shop`: its roles, settings, privileges and objects.
fn source_cluster() -> TestCluster {
    let pg = TestCluster::start();
    pg.create_database("shop");
    pg.psql("postgres", SOURCE_SQL);
    pg.psql("shop", SOURCE_OBJECTS);
    pg
}

/// A set of the source's `shop` (or of the whole cluster): node "source", no lock wait, no
/// definition.
fn source_spec(pg: &TestCluster, root: &Path, job_id: i64, code: BackupCode) -> BackupSpec {
    BackupSpec {
        node_label: "source".into(),
        lock_wait_timeout: None,
        definition: serde_json::Value::Null,
        encryption: None,
        ..spec(pg, root, job_id, code, "shop")
    }
}

/// A source cluster with database `shop` and its FULL set.
async fn source(root: &Path, job_id: i64) -> (TestCluster, PathBuf) {
    let pg = source_cluster();
    let spec = source_spec(&pg, root, job_id, BackupCode::Full);
    backup_ok(&spec).await;
    (pg, spec.final_dir)
}

fn rspec(set: &Path, pg: &TestCluster, root: &Path, job_id: i64, target: &str) -> RestoreSpec {
    common::rspec(set, conn(pg), root, job_id, target)
}

#[track_caller]
fn failed_step(o: &RestoreOutcome) -> (String, String) {
    match &o.status {
        Status::Failed { step, message, .. } => (step.clone(), message.clone()),
        s => panic!("expected a failure, got {s:?}"),
    }
}

/// What a database looks like, as catalog queries.
fn fingerprint(pg: &TestCluster, db: &str) -> String {
    let q = format!(
        "select concat_ws(' | ',
            (select pg_get_userbyid(datdba) from pg_database where datname = '{db}'),
            (select datacl::text from pg_database where datname = '{db}'),
            (select string_agg(array_to_string(setconfig, ','), ';' order by setrole)
               from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = '{db}'))"
    );
    let db_level = pg.psql("postgres", &q);
    let inside = pg.psql(
        db,
        "select concat_ws(' | ',
            (select count(*) from app.t), (select sum(id) from app.t),
            (select pg_get_userbyid(relowner) || ':' || coalesce(relacl::text, '') from pg_class where oid = 'app.t'::regclass),
            (select pg_get_userbyid(relowner) from pg_class where oid = 'app.v'::regclass),
            (select app.f()), (select * from app.v),
            (select encode(lo_get(4242), 'escape')),
            (select nspacl::text from pg_namespace where nspname = 'app'))",
    );
    format!("{db_level} || {inside}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_onto_a_fresh_cluster_then_reuse_roles_and_rename() {
    let root = tempfile::tempdir().unwrap();
    let (src, set) = source(root.path(), 1).await;
    let want = fingerprint(&src, "shop");
    let dst = TestCluster::start();

    // A fresh cluster: every role is created, the database equals the original.
    let mut s = rspec(&set, &dst, root.path(), 10, "shop");
    s.decompression = Decompression::Stream;
    let o = restore(&s).await;
    assert_ok(&o);
    assert_eq!(o.feed.as_deref(), Some("stream"));
    assert_eq!(o.roles_created, vec!["app_owner", "app_reader", "app_user"]);
    assert_eq!(fingerprint(&dst, "shop"), want);
    let check = o.row_count_check.as_ref().unwrap();
    assert!(
        check.exact && check.tables >= 1 && check.mismatches.is_empty(),
        "{check:?}"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select pg_has_role('app_user', 'app_reader', 'member')"
        ),
        "t"
    );
    let log = std::fs::read_to_string(s.log_file.as_ref().unwrap()).unwrap();
    assert!(log.contains("restore succeeded"), "{log}");
    assert!(!root.path().join("staging/10").exists());

    // The tee feed: data streamed, post-data in parallel from the staging file; same result.
    let mut s = rspec(&set, &dst, root.path(), 14, "shop_tee");
    s.decompression = Decompression::Tee;
    let o = restore(&s).await;
    assert_ok(&o);
    assert_eq!(o.feed.as_deref(), Some("tee"));
    assert!(
        o.phase_timings.iter().any(|(p, _)| p == "post_data"),
        "{o:#?}"
    );
    assert!(
        o.command.contains(&"--section=post-data".to_string()),
        "{:?}",
        o.command
    );
    assert_eq!(fingerprint(&dst, "shop_tee"), want);
    // Whether the largest table's rows went through split COPYs (split.rs) shows in the
    // phases: the data step is then preceded by its own pre-data step.
    assert!(
        o.phase_timings.iter().any(|(p, _)| p == "pre_data"),
        "{:?}",
        o.phase_timings
    );
    assert!(o.row_count_check.as_ref().unwrap().mismatches.is_empty());
    assert!(!root.path().join("staging/14").exists());

    // Again onto the same cluster: the target exists (renamed out of the way) and the roles
    // exist (reused as decided, left as they are: no membership added between two of them).
    dst.psql("postgres", "revoke app_reader from app_user");
    let mut s = rspec(&set, &dst, root.path(), 11, "shop");
    s.decompression = Decompression::File;
    s.rename_existing_to = Some("shop_old".into());
    s.roles = RolePolicy::Decided {
        create: vec![],
        reuse: vec!["app_owner".into(), "app_reader".into(), "app_user".into()],
    };
    let o = restore(&s).await;
    assert_ok(&o);
    assert_eq!(o.feed.as_deref(), Some("file"));
    assert_eq!(o.jobs, 2);
    assert!(o.roles_created.is_empty());
    assert_eq!(o.renamed_dbname.as_deref(), Some("shop_old"));
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_database where datname in ('shop', 'shop_old')"
        ),
        "2"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select pg_has_role('app_user', 'app_reader', 'member')"
        ),
        "f"
    );
    assert!(!root.path().join("staging/11").exists());

    // A decision that no longer holds stops before anything changes.
    let mut s = rspec(&set, &dst, root.path(), 12, "shop2");
    s.roles = RolePolicy::Decided {
        create: vec!["app_owner".into()],
        reuse: vec![],
    };
    let o = restore(&s).await;
    let (step, msg) = failed_step(&o);
    assert_eq!(step, "check");
    assert!(msg.contains("app_owner exist(s) now"), "{msg}");
    assert!(o.cleanup.is_empty());

    // Existing target without a rename: refused.
    let o = restore(&rspec(&set, &dst, root.path(), 13, "shop")).await;
    let (step, msg) = failed_step(&o);
    assert_eq!(step, "check");
    assert!(msg.contains("database \"shop\" exists"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_is_undone() {
    let root = tempfile::tempdir().unwrap();
    let (_src, set) = source(root.path(), 2).await;
    let dst = TestCluster::start();
    dst.create_database("shop");
    dst.psql(
        "shop",
        "create table keep (x int); insert into keep values (1)",
    );
    let mut s = rspec(&set, &dst, root.path(), 20, "shop");
    s.rename_existing_to = Some("shop_before".into());
    // pg_restore fails after the roles and the database were created.
    s.extra_args = vec!["--use-list=/nonexistent/list".into()];
    let o = restore(&s).await;
    let (step, _) = failed_step(&o);
    assert_eq!(step, "pg_restore");
    assert_eq!(o.roles_created.len(), 3, "{o:#?}");
    assert!(
        o.cleanup
            .iter()
            .any(|c| c.contains("dropped the partly restored database \"shop\"")),
        "{:?}",
        o.cleanup
    );
    assert!(
        o.cleanup
            .iter()
            .any(|c| c.contains("renamed database \"shop_before\" back to \"shop\"")),
        "{:?}",
        o.cleanup
    );
    assert_eq!(o.renamed_dbname, None);
    // The target is as it was: the old database under its name, no new role.
    assert_eq!(dst.psql("shop", "select x from keep"), "1");
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_roles where rolname like 'app_%'"
        ),
        "0"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'shop_before'"
        ),
        "0"
    );
    if let Status::Failed { stderr_tail, .. } = &o.status {
        assert!(stderr_tail.contains("/nonexistent/list"), "{stderr_tail}");
    }
}

/// A bin dir whose psql and pg_restore claim major 99 (and otherwise run the real ones).
fn future_tools(dir: &Path) -> PathBuf {
    let b = dir.join("bin99");
    std::fs::create_dir_all(&b).unwrap();
    for tool in ["psql", "pg_restore"] {
        let real = bin_dir().join(tool);
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{tool} (PostgreSQL) 99.0'; exit 0; fi\nexec {} \"$@\"\n",
            real.display()
        );
        let p = b.join(tool);
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_an_older_major_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (src, set) = source(root.path(), 3).await;
    // The set claims to come from pg_dump 99 (the manifest is not part of its own checksums).
    let mpath = set.join("manifest.json");
    let m = std::fs::read_to_string(&mpath).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["client_version"] = "pg_dump (PostgreSQL) 99.0".into();
    std::fs::write(&mpath, serde_json::to_vec(&v).unwrap()).unwrap();
    // With the real (older) client tools: refused at the client.
    let o = restore(&rspec(&set, &src, root.path(), 30, "copy")).await;
    let (step, msg) = failed_step(&o);
    assert_eq!(step, "client");
    assert!(
        msg.contains("cannot read a set written by pg_dump 99"),
        "{msg}"
    );
    // With tools of major 99: refused because the server is older.
    let mut s = rspec(&set, &src, root.path(), 31, "copy");
    s.bin_dir = future_tools(root.path());
    let o = restore(&s).await;
    let (step, msg) = failed_step(&o);
    assert_eq!(step, "check");
    assert!(
        msg.contains("restore refused") && msg.contains("an older major"),
        "{msg}"
    );
    assert_eq!(
        src.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'copy'"
        ),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sets_restore_onto_an_empty_cluster_only_when_acknowledged_otherwise() {
    let root = tempfile::tempdir().unwrap();
    let src = source_cluster();
    let final_dir = root.path().join("sets/cluster");
    let spec = BackupSpec {
        final_dir: final_dir.clone(),
        ..source_spec(&src, root.path(), 4, BackupCode::Cluster)
    };
    backup_ok(&spec).await;

    let empty = TestCluster::start();
    let o = restore(&rspec(&final_dir, &empty, root.path(), 40, "")).await;
    assert_ok(&o);
    assert_eq!(o.feed.as_deref(), Some("sql"));
    assert_eq!(o.databases_created, vec!["shop"]);
    assert!(o.roles_reused.contains(&"postgres".to_string()), "{o:#?}");
    assert_eq!(fingerprint(&empty, "shop"), fingerprint(&src, "shop"));

    // Not empty any more: refused, unless acknowledged (then the existing database stops it,
    // and what it created is undone).
    let o = restore(&rspec(&final_dir, &empty, root.path(), 41, "")).await;
    let (step, msg) = failed_step(&o);
    assert_eq!(step, "check");
    assert!(
        msg.contains("is not empty") && msg.contains("shop"),
        "{msg}"
    );
    let mut s = rspec(&final_dir, &empty, root.path(), 42, "");
    s.acknowledge_nonempty = true;
    empty.psql("postgres", "create role extra_role");
    let o = restore(&s).await;
    let (step, _) = failed_step(&o);
    assert_eq!(step, "psql");
    assert!(
        matches!(&o.status, Status::Failed { exit_status: Some(3), stderr_tail, .. } if stderr_tail.contains("already exists")),
        "{:#?}",
        o.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_restore_is_undone_and_kills_its_client() {
    let root = tempfile::tempdir().unwrap();
    let (_src, set) = source(root.path(), 5).await;
    let dst = TestCluster::start();
    // psql is the real one; pg_restore hangs long enough to be cancelled mid-step.
    let b = root.path().join("slow");
    std::fs::create_dir_all(&b).unwrap();
    std::os::unix::fs::symlink(bin_dir().join("psql"), b.join("psql")).unwrap();
    let real = bin_dir().join("pg_restore");
    std::fs::write(
        b.join("pg_restore"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {r} --version; fi\necho $$ > {pid}\nsleep 60\nexec {r} \"$@\"\n",
            r = real.display(),
            pid = root.path().join("pid").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(b.join("pg_restore"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = rspec(&set, &dst, root.path(), 50, "shop");
    s.bin_dir = b;
    s.decompression = Decompression::Stream;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let pidfile = root.path().join("pid");
    let p = pidfile.clone();
    tokio::spawn(async move {
        for _ in 0..300 {
            if p.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.cancel();
    });
    let t = std::time::Instant::now();
    let o = restore_set(&s, cancel, &|_| {}).await;
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        matches!(&o.status, Status::Cancelled { reason } if reason.contains("pg_restore")),
        "{o:#?}"
    );
    assert!(
        o.cleanup
            .iter()
            .any(|c| c.contains("dropped the partly restored database")),
        "{:?}",
        o.cleanup
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'shop'"
        ),
        "0"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_roles where rolname like 'app_%'"
        ),
        "0"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "pg_restore {pid} outlived the cancel"
    );
}

/// The split data load (tee feed, the largest table's rows over several COPYs): a COPY child
/// that fails stops every other child and the restore is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_split_copy_is_undone() {
    let root = tempfile::tempdir().unwrap();
    let (_src, set) = source(root.path(), 4).await;
    let dst = TestCluster::start();
    let b = root.path().join("bin_copyfail");
    std::fs::create_dir_all(&b).unwrap();
    let psql = format!(
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --command=COPY*) head -c 100 >/dev/null; echo 'ERROR: injected COPY failure' >&2; exit 3;; esac; done\nexec {} \"$@\"\n",
        bin_dir().join("psql").display()
    );
    std::fs::write(b.join("psql"), psql).unwrap();
    std::os::unix::fs::symlink(bin_dir().join("pg_restore"), b.join("pg_restore")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(b.join("psql"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = rspec(&set, &dst, root.path(), 40, "shop_split");
    s.bin_dir = b;
    s.decompression = Decompression::Tee;
    let o = restore(&s).await;
    let (step, _) = failed_step(&o);
    assert_eq!(step, "split_copy", "{o:#?}");
    if let Status::Failed { stderr_tail, .. } = &o.status {
        assert!(
            stderr_tail.contains("injected COPY failure"),
            "{stderr_tail}"
        );
    }
    assert!(
        o.cleanup
            .iter()
            .any(|c| c.contains("dropped the partly restored database \"shop_split\"")),
        "{:?}",
        o.cleanup
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'shop_split'"
        ),
        "0"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "select count(*) from pg_roles where rolname like 'app_%'"
        ),
        "0"
    );
    assert!(!root.path().join("staging/40").exists());
}
