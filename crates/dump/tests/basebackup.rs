//! Base backups against a real cluster: pg_basebackup's tar checked in flight against its
//! backup_manifest, stored through zstd, a set that passes level 1 and, extracted, passes
//! pg_verifybackup; a flipped byte fails level 1; a node with a tablespace is refused by name;
//! a cancelled backup leaves nothing behind.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{bin_dir, conn};
use pgbackman_core::model::NodeProfile;
use pgbackman_dump::{
    BaseBackupSpec, CancellationToken, Status, WalMethod, run_base_backup, verify_set,
};
use pgbackman_testkit::TestCluster;

fn bspec(pg: &TestCluster, root: &Path, job_id: i64, wal: WalMethod) -> BaseBackupSpec {
    BaseBackupSpec {
        job_id,
        profile: NodeProfile::Standard,
        node: conn(pg),
        node_label: format!("testnode:{}", pg.port()),
        bin_dir: bin_dir(),
        checkpoint: "fast".into(),
        max_rate: None,
        wal_method: wal,
        zstd_level: 3,
        max_runtime: Some(Duration::from_secs(300)),
        application_name: "pgbackman".into(),
        staging_root: root.join("staging"),
        final_dir: root.join("sets").join(format!("job{job_id}")),
        definition: serde_json::json!({}),
    }
}

/// Unpacks `base.tar.zst` of `set` into `to` with its backup_manifest.
fn extract(set: &Path, to: &Path) {
    let f = std::fs::File::open(set.join("base.tar.zst")).unwrap();
    let mut a = tar::Archive::new(zstd::stream::read::Decoder::new(f).unwrap());
    std::fs::create_dir_all(to).unwrap();
    a.unpack(to).unwrap();
    std::fs::copy(set.join("backup_manifest"), to.join("backup_manifest")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_is_checked_in_flight_and_passes_pg_verifybackup() {
    let pg = TestCluster::start();
    pg.create_database("app");
    pg.psql(
        "app",
        "create table t as select g as id, md5(g::text) as v from generate_series(1, 50000) g",
    );
    let root = tempfile::tempdir_in(pgbackman_testkit::base_dir()).unwrap();
    let spec = bspec(&pg, root.path(), 1, WalMethod::Fetch);
    let o = run_base_backup(&spec, CancellationToken::new(), &|_| {}).await;
    assert!(o.outcome.status.is_success(), "{:#?}", o.outcome.status);
    let facts = o.facts.expect("facts");
    assert_eq!(facts.manifest_state, "PASSED", "{facts:?}");
    assert!(facts.files_checked > 500, "{facts:?}");
    assert_eq!(facts.timeline, 1);
    assert!(facts.start_lsn <= facts.stop_lsn || facts.start_lsn.len() < facts.stop_lsn.len());
    let sysid = pg.psql(
        "postgres",
        "select system_identifier from pg_control_system()",
    );
    assert_eq!(facts.system_identifier, sysid.trim());
    let set = &spec.final_dir;
    for f in [
        "base.tar.zst",
        "backup_manifest",
        "backup_label",
        "manifest.json",
        "backup.log",
    ] {
        assert!(set.join(f).is_file(), "{f} missing");
    }
    let names: Vec<_> = o.outcome.files.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"base.tar.zst"), "{names:?}");
    verify_set(set).expect("level 1");
    assert!(
        !root.path().join("staging").join("1").exists(),
        "staging left behind"
    );
    let mut label = String::new();
    std::fs::File::open(set.join("backup_label"))
        .unwrap()
        .read_to_string(&mut label)
        .unwrap();
    assert!(label.contains("LABEL: pgbackman job 1"), "{label}");

    // pg_verifybackup on the extracted backup (its WAL is in pg_wal: -X fetch).
    let x = pg.dir().join("extracted");
    extract(set, &x);
    let out = std::process::Command::new(bin_dir().join("pg_verifybackup"))
        .arg(&x)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A byte flipped in the stored tar fails level 1, naming the file.
    let p = set.join("base.tar.zst");
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&p, bytes).unwrap();
    let err = verify_set(set).unwrap_err().to_string();
    assert!(err.contains("base.tar.zst"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_tablespace_is_refused_naming_it() {
    let pg = TestCluster::start();
    let ts = pg.dir().join("ts_extra");
    std::fs::create_dir(&ts).unwrap();
    let m = std::fs::metadata(pg.data_dir()).unwrap();
    std::os::unix::fs::chown(&ts, Some(m.uid()), Some(m.gid())).unwrap();
    pg.psql(
        "postgres",
        &format!("create tablespace extra_space location '{}'", ts.display()),
    );
    let root = tempfile::tempdir_in(pgbackman_testkit::base_dir()).unwrap();
    let spec = bspec(&pg, root.path(), 2, WalMethod::None);
    let o = run_base_backup(&spec, CancellationToken::new(), &|_| {}).await;
    match &o.outcome.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "tablespaces");
            assert!(message.contains("extra_space"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!spec.final_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_base_backup_leaves_nothing_behind() {
    let pg = TestCluster::start();
    pg.create_database("big");
    pg.psql(
        "big",
        "create table t as select g as id, md5(g::text) as v from generate_series(1, 300000) g",
    );
    let root = tempfile::tempdir_in(pgbackman_testkit::base_dir()).unwrap();
    let mut spec = bspec(&pg, root.path(), 3, WalMethod::None);
    spec.max_rate = Some("32k".into());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.cancel();
    });
    let o = run_base_backup(&spec, cancel, &|_| {}).await;
    assert!(
        matches!(o.outcome.status, Status::Cancelled { .. }),
        "{:?}",
        o.outcome.status
    );
    assert!(!spec.final_dir.exists());
    assert!(!root.path().join("staging").join("3").exists());
    // Its walsender is gone too: no backup left open on the node.
    let mut left = String::new();
    for _ in 0..50 {
        left = pg.psql(
            "postgres",
            "select count(*) from pg_stat_activity where backend_type = 'walsender'",
        );
        if left.trim() == "0" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(left.trim(), "0");
}
