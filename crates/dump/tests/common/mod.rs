//! Shared helpers of the pgbackman-dump integration tests: the installed client tools, a
//! connection to a throwaway cluster, a backup spec for it, and a backup that must succeed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgbackman_core::model::{BackupCode, NodeProfile};
use pgbackman_dump::{
    BackupOutcome, BackupSpec, CancellationToken, Decompression, DumpFormat, NodeConn,
    RestoreOutcome, RestoreSpec, RolePolicy, restore_set, run_backup,
};
use pgbackman_testkit::TestCluster;

pub fn bin_dir() -> PathBuf {
    pgbackman_pgctl::find_bin_dir(None).expect("PostgreSQL client tools")
}

/// The cluster's superuser over its Unix socket.
pub fn conn(pg: &TestCluster) -> NodeConn {
    NodeConn {
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        user: "postgres".into(),
        admin_dbname: "postgres".into(),
        sslmode: String::new(),
        passfile: None,
        timeouts: None,
    }
}

/// A custom-format set of `db` (none for cluster-wide codes) into `root/sets/job<job_id>`.
pub fn spec(pg: &TestCluster, root: &Path, job_id: i64, code: BackupCode, db: &str) -> BackupSpec {
    BackupSpec {
        job_id,
        code,
        profile: NodeProfile::Standard,
        dbname: if code.is_cluster_wide() {
            String::new()
        } else {
            db.into()
        },
        node: conn(pg),
        node_label: format!("testnode:{}", pg.port()),
        bin_dir: bin_dir(),
        format: DumpFormat::Custom { zstd_level: 3 },
        extra_args: Vec::new(),
        lock_wait_timeout: Some(Duration::from_secs(30)),
        max_runtime: None,
        application_name: "pgbackman".into(),
        staging_root: root.join("staging"),
        final_dir: root.join("sets").join(format!("job{job_id}")),
        definition: serde_json::json!({}),
        encryption: None,
    }
}

/// Runs `spec`, which must succeed.
pub async fn backup_ok(spec: &BackupSpec) -> BackupOutcome {
    let o = run_backup(spec, CancellationToken::new(), &|_| {}).await;
    assert!(o.status.is_success(), "{:#?}", o.status);
    o
}
pub mod compare;

/// A restore spec of `set` onto `node` (database `target`), files under `root`.
pub fn rspec(set: &Path, node: NodeConn, root: &Path, job_id: i64, target: &str) -> RestoreSpec {
    RestoreSpec {
        job_id,
        set_dir: set.to_path_buf(),
        repository: None,
        node,
        node_label: "target".into(),
        target_dbname: target.into(),
        rename_existing_to: None,
        roles: RolePolicy::CreateMissing,
        jobs: 2,
        decompression: Decompression::Auto,
        extra_args: Vec::new(),
        bin_dir: bin_dir(),
        staging_root: root.join("staging"),
        log_file: Some(root.join("logs").join(format!("restore-{job_id}.log"))),
        application_name: "pgbackman".into(),
        max_runtime: Some(Duration::from_secs(300)),
        acknowledge_nonempty: false,
        verify_checksums: true,
        compare_row_counts: true,
        journal: None,
        identity_files: Vec::new(),
    }
}

pub async fn restore(spec: &RestoreSpec) -> RestoreOutcome {
    restore_set(spec, CancellationToken::new(), &|_| {}).await
}

#[track_caller]
pub fn assert_ok(o: &RestoreOutcome) {
    assert!(o.status.is_success(), "restore failed: {:#?}", o);
}
