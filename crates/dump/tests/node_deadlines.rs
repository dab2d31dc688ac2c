//! The node deadlines in the backup executor: a node that never answers fails the run at its
//! connect step within `[nodes] connect_timeout` (not at the maximum runtime, nor never), and
//! the client programs get the connect timeout and the TCP keepalives (never a statement
//! timeout).

mod common;

use std::time::{Duration, Instant};

use pgbackman_config::{NodeTimeouts, NodesSection};
use pgbackman_core::model::BackupCode;
use pgbackman_dump::{CancellationToken, Status, run_backup};
use pgbackman_testkit::{Silence, SilentNode, TestCluster};

fn timeouts(connect: u64) -> NodeTimeouts {
    let s = NodesSection {
        connect_timeout: Some(connect),
        keepalives_idle: Some(17),
        ..NodesSection::default()
    };
    NodeTimeouts::resolve(&s, Some(std::path::Path::new("/etc/p.toml")), &|_| None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_silent_node_fails_at_connect_within_the_deadline() {
    let pg = TestCluster::start(); // only for the spec's shape; the node is the silent one
    let root = tempfile::tempdir().unwrap();
    let silent = SilentNode::start(Silence::AfterStartup);
    let mut spec = common::spec(&pg, root.path(), 1, BackupCode::Full, "postgres");
    spec.node.host = "127.0.0.1".into();
    spec.node.port = silent.port();
    spec.node.timeouts = Some(timeouts(1));
    spec.max_runtime = Some(Duration::from_secs(600));
    let t = Instant::now();
    let o = run_backup(&spec, CancellationToken::new(), &|_| {}).await;
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "connect");
            assert!(
                message.contains(&format!("127.0.0.1:{}", silent.port()))
                    && message.contains("timed out")
                    && message.contains("1 s, set by [nodes] connect_timeout in /etc/p.toml"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!root.path().join("sets/job1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_children_get_the_connect_timeout_and_keepalives() {
    let pg = TestCluster::start_on(&["127.0.0.1"]);
    let root = tempfile::tempdir().unwrap();
    // A pg_dump that records how it was called, then fails (the real one answers --version).
    let bin = tempfile::tempdir().unwrap();
    let real = common::bin_dir();
    for p in ["pg_dumpall", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(real.join(p), bin.path().join(p)).unwrap();
    }
    let seen = root.path().join("seen");
    std::fs::write(
        bin.path().join("pg_dump"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {}/pg_dump --version; fi\n\
             {{ echo \"PGCONNECT_TIMEOUT=$PGCONNECT_TIMEOUT\"; for a in \"$@\"; do echo \"$a\"; done; }} > {}\nexit 3\n",
            real.display(),
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.path().join("pg_dump"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut spec = common::spec(&pg, root.path(), 2, BackupCode::Full, "postgres");
    spec.node.host = "127.0.0.1".into();
    spec.node.timeouts = Some(timeouts(7));
    spec.bin_dir = bin.path().to_path_buf();
    let o = run_backup(&spec, CancellationToken::new(), &|_| {}).await;
    assert!(
        matches!(&o.status, Status::Failed { step, .. } if step == "pg_dump"),
        "{:?}",
        o.status
    );
    let seen = std::fs::read_to_string(&seen).unwrap();
    assert!(seen.contains("PGCONNECT_TIMEOUT=7\n"), "{seen}");
    let dbname = seen
        .lines()
        .find(|l| l.starts_with("--dbname="))
        .unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(
        dbname,
        "--dbname=dbname='postgres' keepalives=1 keepalives_idle=17 keepalives_interval=10 keepalives_count=3"
    );
    assert!(!seen.contains("statement_timeout"), "{seen}");
}

/// No pg_dump (nor pg_dumpall) of this run left (their argv names the proxy's port).
fn dumps_left(port: u16) -> Vec<String> {
    let needle = format!("--port={port}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle) && c.contains("pg_dump"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stalls_mid_dump_fails_the_run_after_the_stall_timeout() {
    let pg = TestCluster::start_on(&["127.0.0.1"]);
    pg.create_database("big");
    // About 7 MB of COPY output: pg_dump's connection crosses the proxy's 1 MiB, the
    // introspection session (versions, roles, row counts) never does.
    pg.psql(
        "big",
        "create table t as select g, md5(g::text) || md5((g * 7)::text) as v \
         from generate_series(1, 100000) g",
    );
    let proxy = pgbackman_testkit::StallingProxy::start(pg.port(), 1 << 20);
    let root = tempfile::tempdir().unwrap();
    let mut spec = common::spec(&pg, root.path(), 3, BackupCode::Full, "big");
    spec.node.host = "127.0.0.1".into();
    spec.node.port = proxy.port();
    spec.node_label = format!("stuck:{}", proxy.port());
    let s = NodesSection {
        connect_timeout: Some(5),
        stall_timeout: Some(2),
        ..NodesSection::default()
    };
    spec.node.timeouts = Some(
        NodeTimeouts::resolve(&s, Some(std::path::Path::new("/etc/p.toml")), &|_| None).unwrap(),
    );
    // Only the maximum runtime bounded a stalled dump before.
    spec.max_runtime = Some(Duration::from_secs(600));
    let t = Instant::now();
    let o = run_backup(&spec, CancellationToken::new(), &|_| {}).await;
    let took = t.elapsed();
    assert!(
        proxy.stalled() >= 1,
        "the dump never crossed the proxy's limit"
    );
    match &o.status {
        Status::Failed {
            step,
            message,
            exit_status,
            ..
        } => {
            assert_eq!(step, "pg_dump", "{message}");
            assert_eq!(*exit_status, None);
            assert!(
                message.contains(&format!(
                    "pg_dump stalled: no data from stuck:{}",
                    proxy.port()
                )) && message.contains("2 s, set by [nodes] stall_timeout in /etc/p.toml"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The watchdog's 2 s, plus the kill's grace at most: not the 600 s of --max-runtime.
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(!root.path().join("sets/job3").exists());
    assert!(!root.path().join("staging/3").exists());
    assert!(
        dumps_left(proxy.port()).is_empty(),
        "{:?}",
        dumps_left(proxy.port())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_dump_is_not_a_stall() {
    // A pg_dumpall whose output trickles for 3 s (a line each 0.5 s, through a real pg_dumpall
    // of the globals) under a 1 s stall timeout: alive, so it completes.
    let pg = TestCluster::start_on(&["127.0.0.1"]);
    let root = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let real = common::bin_dir();
    for p in ["pg_dump", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(real.join(p), bin.path().join(p)).unwrap();
    }
    std::fs::write(
        bin.path().join("pg_dumpall"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {}/pg_dumpall --version; fi\n\
             for i in 1 2 3 4 5 6; do echo \"-- $i\"; sleep 0.5; done\nexec {}/pg_dumpall \"$@\"\n",
            real.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.path().join("pg_dumpall"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut spec = common::spec(&pg, root.path(), 4, BackupCode::Globals, "");
    spec.node.host = "127.0.0.1".into();
    spec.bin_dir = bin.path().to_path_buf();
    let s = NodesSection {
        stall_timeout: Some(1),
        ..NodesSection::default()
    };
    spec.node.timeouts = Some(NodeTimeouts::resolve(&s, None, &|_| None).unwrap());
    let o = run_backup(&spec, CancellationToken::new(), &|_| {}).await;
    assert!(o.status.is_success(), "{:#?}", o.status);
}

/// SIGCONTs a stopped backend on drop (also when the test fails).
struct Stopped(nix::unistd::Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restores_own_statement_on_a_target_that_stops_answering_fails_within_the_statement_timeout()
 {
    let pg = TestCluster::start();
    pg.create_database("src");
    pg.psql("src", "create table t(i int); insert into t values (1)");
    let root = tempfile::tempdir().unwrap();
    let o = common::backup_ok(&common::spec(&pg, root.path(), 5, BackupCode::Full, "src")).await;
    let set = o.backup_dir.unwrap();
    // A psql that says when it is called, then waits a little before doing its work: the time
    // to stop the restore's admin session (the only one then under its application name).
    let bin = tempfile::tempdir().unwrap();
    let real = common::bin_dir();
    for p in ["pg_dump", "pg_dumpall", "pg_restore"] {
        std::os::unix::fs::symlink(real.join(p), bin.path().join(p)).unwrap();
    }
    let mark = root.path().join("psql-called");
    std::fs::write(
        bin.path().join("psql"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {r}/psql --version; fi\n\
             touch {m}\nsleep 2\nexec {r}/psql \"$@\"\n",
            r = real.display(),
            m = mark.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.path().join("psql"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut r = common::rspec(&set, common::conn(&pg), root.path(), 6, "copy");
    r.bin_dir = bin.path().to_path_buf();
    r.application_name = "pgbackman-stalled-target".into();
    // Only the run's maximum runtime bounded these statements before.
    r.max_runtime = Some(Duration::from_secs(300));
    let s = NodesSection {
        statement_timeout: Some(2),
        ..NodesSection::default()
    };
    r.node.timeouts = Some(
        NodeTimeouts::resolve(&s, Some(std::path::Path::new("/etc/p.toml")), &|_| None).unwrap(),
    );
    let run = tokio::spawn(async move { common::restore(&r).await });
    let t = Instant::now();
    while !mark.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "psql never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid: i32 = pg
        .psql(
            "postgres",
            "select pid from pg_stat_activity where application_name = 'pgbackman-stalled-target' \
             and backend_type = 'client backend'",
        )
        .parse()
        .expect("one admin session");
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let _resume = Stopped(pid);
    let stopped_at = Instant::now();
    let o = run.await.unwrap();
    let took = stopped_at.elapsed();
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "roles", "{message}");
            assert!(
                message.contains("timed out: no answer from")
                    && message.contains("while reading the roles after roles.sql")
                    && message.contains("2 s, set by [nodes] statement_timeout in /etc/p.toml"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // psql's 2 s, the statement's 2 s, the undo's read (2 s): not the 300 s of --max-runtime.
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(
        o.cleanup
            .iter()
            .any(|l| l.contains("could not read the target") && l.contains("statement_timeout")),
        "{:?}",
        o.cleanup
    );
}
