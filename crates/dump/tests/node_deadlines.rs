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
