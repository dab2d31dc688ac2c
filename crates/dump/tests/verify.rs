//! Verification levels 1 and 2 and restore drills against real throwaway clusters.

use std::fs;
use std::path::{Path, PathBuf};

use pgbackman_core::model::BackupCode;
use pgbackman_dump::verify::{DrillSpec, DrillState, run_drill, scratch_dbname, verify_levels};
use pgbackman_dump::{CancellationToken, DumpFormat, RowCountSource, VerifyState};
use pgbackman_testkit::TestCluster;
use sha2::{Digest, Sha256};

mod common;
use common::{backup_ok, bin_dir, conn, spec};

/// A drill of `set_dir` onto `node` (as "drill:<port>", scratch database of server 1, one
/// restore job, no counts to compare).
fn drill_spec(job_id: i64, set_dir: PathBuf, node: &TestCluster, root: &Path) -> DrillSpec {
    DrillSpec {
        job_id,
        set_dir,
        repository: None,
        bin_dir: bin_dir(),
        node: conn(node),
        node_label: format!("drill:{}", node.port()),
        scratch_dbname: scratch_dbname(1, job_id),
        application_name: "pgbackman".into(),
        jobs: 1,
        staging_root: root.join("staging"),
        expected_counts: None,
        manifest_sha256: None,
        journal: None,
        identity_files: Vec::new(),
    }
}

fn app_db(pg: &TestCluster, db: &str) {
    pg.create_database(db);
    pg.psql(
        db,
        "CREATE ROLE drill_owner; CREATE SCHEMA app AUTHORIZATION drill_owner; \
         CREATE TABLE app.orders (id int primary key, note text); ALTER TABLE app.orders OWNER TO drill_owner; \
         INSERT INTO app.orders SELECT g, md5(g::text) FROM generate_series(1, 3000) g; \
         CREATE TABLE \"Odd Name\" (x int); INSERT INTO \"Odd Name\" VALUES (1), (2); \
         CREATE TABLE empty_one (x int)",
    );
}

/// Rewrites a file of the set and its manifest entry, so that level 1 passes on altered content.
fn replace_consistently(dir: &Path, name: &str, content: &[u8]) {
    fs::write(dir.join(name), content).unwrap();
    let p = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["name"] == name {
            f["size"] = serde_json::json!(content.len());
            f["sha256"] = serde_json::json!(hex::encode(Sha256::digest(content)));
        }
    }
    fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn databases(pg: &TestCluster) -> String {
    pg.psql(
        "postgres",
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_one_and_two_after_every_backup_and_on_demand() {
    let pg = TestCluster::start();
    app_db(&pg, "shop");
    let root = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();

    // Custom format: the TOC is read from in-process zstd decoding.
    let o = backup_ok(&spec(&pg, root.path(), 1, BackupCode::Full, "shop")).await;
    let v = o.verification.clone().expect("verified after the backup");
    assert_eq!((v.level, v.state), (2, VerifyState::Passed), "{v:?}");
    assert!(v.toc_entries.unwrap() >= 5, "{v:?}");
    assert!(o.phase_timings.iter().any(|(p, _)| p == "verify"));
    let dir = o.backup_dir.clone().unwrap();
    let manifest_sha = o
        .files
        .iter()
        .find(|f| f.name == "manifest.json")
        .unwrap()
        .sha256
        .clone();
    let v = verify_levels(&dir, &bin_dir(), Some(&manifest_sha), &cancel)
        .await
        .unwrap();
    assert_eq!((v.level, v.state), (2, VerifyState::Passed), "{v:?}");

    // Directory format.
    let mut s = spec(&pg, root.path(), 2, BackupCode::Full, "shop");
    s.format = DumpFormat::Directory { jobs: 2 };
    let v = backup_ok(&s).await.verification.unwrap();
    assert_eq!((v.level, v.state), (2, VerifyState::Passed), "{v:?}");
    assert!(v.toc_entries.unwrap() >= 5);

    // SQL sets: the zstd stream decodes with its checksum.
    let v = backup_ok(&spec(&pg, root.path(), 3, BackupCode::Globals, ""))
        .await
        .verification
        .unwrap();
    assert_eq!(
        (v.level, v.state, v.toc_entries),
        (2, VerifyState::Passed, None),
        "{v:?}"
    );

    // One byte flipped: level 1 fails.
    let dump = dir.join("dump.pgdump.zst");
    let good = fs::read(&dump).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    fs::write(&dump, &bad).unwrap();
    let v = verify_levels(&dir, &bin_dir(), Some(&manifest_sha), &cancel)
        .await
        .unwrap();
    assert_eq!((v.level, v.state), (1, VerifyState::Failed), "{v:?}");
    assert!(
        v.error
            .as_deref()
            .unwrap()
            .contains("dump.pgdump.zst: sha256"),
        "{v:?}"
    );
    fs::write(&dump, &good).unwrap();

    // An edited manifest that still matches the files: caught by the catalog's sha256 of it.
    let mp = dir.join("manifest.json");
    let manifest = fs::read(&mp).unwrap();
    fs::write(
        &mp,
        String::from_utf8_lossy(&manifest).replace("\"FULL\"", "\"DATA\""),
    )
    .unwrap();
    let v = verify_levels(&dir, &bin_dir(), Some(&manifest_sha), &cancel)
        .await
        .unwrap();
    assert_eq!((v.level, v.state), (1, VerifyState::Failed), "{v:?}");
    assert!(
        v.error.as_deref().unwrap().contains("the catalog recorded"),
        "{v:?}"
    );
    fs::write(&mp, &manifest).unwrap();

    // Both levels fail (no archive, and not the manifest's bytes): level 1 is reported, as
    // when the levels ran one after the other (they run side by side now).
    fs::write(&dump, zstd::encode_all(&b"not an archive"[..], 3).unwrap()).unwrap();
    let v = verify_levels(&dir, &bin_dir(), Some(&manifest_sha), &cancel)
        .await
        .unwrap();
    assert_eq!((v.level, v.state), (1, VerifyState::Failed), "{v:?}");
    assert!(
        v.error
            .as_deref()
            .unwrap()
            .contains("dump.pgdump.zst: size"),
        "{v:?}"
    );
    fs::write(&dump, &good).unwrap();

    // A dump whose checksums match but which is no archive: level 2 fails.
    let garbage = zstd::encode_all(&b"this is not a pg_dump archive at all"[..], 3).unwrap();
    replace_consistently(&dir, "dump.pgdump.zst", &garbage);
    let v = verify_levels(&dir, &bin_dir(), None, &cancel)
        .await
        .unwrap();
    assert_eq!((v.level, v.state), (2, VerifyState::Failed), "{v:?}");
    assert!(
        v.error
            .as_deref()
            .unwrap()
            .contains("pg_restore exited with status 1"),
        "{v:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_restore_compare_counts_and_drop_the_scratch_database() {
    let pg = TestCluster::start();
    let drill = TestCluster::start();
    app_db(&pg, "shop");
    let root = tempfile::tempdir().unwrap();
    let o = backup_ok(&spec(&pg, root.path(), 11, BackupCode::Full, "shop")).await;
    let counts = o.table_row_counts.clone().unwrap();
    assert_eq!(counts.source, RowCountSource::Snapshot);
    assert_eq!(counts.tables.get("app.orders"), Some(&3000));
    let dspec = |job: i64, expected| DrillSpec {
        expected_counts: expected,
        ..drill_spec(job, o.backup_dir.clone().unwrap(), &drill, root.path())
    };
    let before = databases(&drill);

    // A good backup passes, with the restore timed; the drill node gets no role and keeps no database.
    let d = run_drill(&dspec(100, None), CancellationToken::new()).await;
    assert_eq!(d.state, DrillState::Passed, "{d:#?}");
    assert_eq!(d.level, 3);
    assert!(d.restore_seconds.unwrap() > 0.0);
    let check = d.row_counts.unwrap();
    assert_eq!(check.compared, 3);
    assert!(check.mismatches.is_empty());
    assert!(d.scratch_dropped);
    assert_eq!(d.roles_created, vec!["drill_owner".to_string()]);
    assert!(d.restored_size.unwrap() > 0);
    assert_eq!(databases(&drill), before);
    assert_eq!(
        drill.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'drill_owner'"
        ),
        "0"
    );

    // Counts recorded at backup time that differ: a failure naming the table.
    let mut altered = counts.clone();
    altered.tables.insert("app.orders".into(), 2999);
    altered.tables.insert("app.gone".into(), 5);
    let d = run_drill(&dspec(101, Some(altered)), CancellationToken::new()).await;
    assert_eq!(d.state, DrillState::Failed, "{d:#?}");
    assert_eq!(d.step.as_deref(), Some("row_counts"));
    let msg = d.message.unwrap();
    assert!(
        msg.contains("app.orders: 2999 rows at backup time, 3000 restored"),
        "{msg}"
    );
    assert!(
        msg.contains("app.gone: 5 rows at backup time, table missing"),
        "{msg}"
    );
    assert!(d.restore_seconds.is_some());
    assert_eq!(databases(&drill), before);

    // A corrupt set is never restored.
    let dump = o.backup_dir.clone().unwrap().join("dump.pgdump.zst");
    let mut bytes = fs::read(&dump).unwrap();
    bytes[100] ^= 1;
    fs::write(&dump, &bytes).unwrap();
    let d = run_drill(&dspec(102, None), CancellationToken::new()).await;
    assert_eq!(
        (d.state, d.level, d.step.as_deref()),
        (DrillState::Failed, 1, Some("verify")),
        "{d:#?}"
    );
    assert!(d.restore_seconds.is_none());
    assert_eq!(databases(&drill), before);
    bytes[100] ^= 1;
    fs::write(&dump, &bytes).unwrap();

    // Drill node down: an error that says nothing about the backup.
    drill.stop();
    let d = run_drill(&dspec(103, None), CancellationToken::new()).await;
    assert_eq!(
        (d.state, d.step.as_deref()),
        (DrillState::Error, Some("connect")),
        "{d:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_of_a_directory_set_and_a_schema_set() {
    let pg = TestCluster::start();
    app_db(&pg, "shop");
    let root = tempfile::tempdir().unwrap();
    let mut s = spec(&pg, root.path(), 21, BackupCode::Full, "shop");
    s.format = DumpFormat::Directory { jobs: 2 };
    let o = backup_ok(&s).await;
    let schema = backup_ok(&spec(&pg, root.path(), 22, BackupCode::Schema, "shop")).await;
    let data = backup_ok(&spec(&pg, root.path(), 23, BackupCode::Data, "shop")).await;
    for (job, o) in [(200, &o), (201, &schema), (202, &data)] {
        let d = run_drill(
            &DrillSpec {
                node_label: "same node".into(),
                scratch_dbname: scratch_dbname(2, job),
                jobs: 2,
                ..drill_spec(job, o.backup_dir.clone().unwrap(), &pg, root.path())
            },
            CancellationToken::new(),
        )
        .await;
        if job == 202 {
            // Data without its schema is refused before anything is touched (the catalog does
            // not queue such drills either).
            assert_eq!(
                (d.state, d.step.as_deref()),
                (DrillState::Error, Some("check")),
                "{d:#?}"
            );
            assert!(d.message.unwrap().contains("holds no schema"));
            continue;
        }
        assert_eq!(d.state, DrillState::Passed, "{d:#?}");
        if job == 200 {
            assert_eq!(d.row_counts.unwrap().compared, 3);
        } else {
            assert!(d.row_counts.is_none());
            assert!(
                d.notes.iter().any(|n| n.contains("no row counts")),
                "{:?}",
                d.notes
            );
        }
    }
    assert!(!databases(&pg).contains("pgbackman_drill"));
}

/// Not a timed test: prints what verification costs next to the backup, and a drill's restore
/// time (`PGBACKMAN_BENCH_SCALE=30 cargo nextest run -p pgbackman-dump --test verify
/// --run-ignored only measure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_verification_cost() {
    let scale: u32 = std::env::var("PGBACKMAN_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let pg = TestCluster::start();
    pg.create_database("bench");
    // Hashes compress about 2:1, like much real data (pgbench tables compress 200:1 and would
    // make hashing look free).
    pg.psql(
        "bench",
        &format!(
            "CREATE TABLE r (id int primary key, a text, b text); \
             INSERT INTO r SELECT g, md5(g::text), md5((g * 7)::text) FROM generate_series(1, {}) g",
            scale * 100_000
        ),
    );
    let root = tempfile::tempdir().unwrap();
    for (job, format) in [
        (1, DumpFormat::Custom { zstd_level: 3 }),
        (2, DumpFormat::Directory { jobs: 2 }),
    ] {
        let mut s = spec(&pg, root.path(), job, BackupCode::Full, "bench");
        s.format = format;
        let o = backup_ok(&s).await;
        let t = |p: &str| {
            o.phase_timings
                .iter()
                .find(|(n, _)| n == p)
                .map_or(0.0, |(_, s)| *s)
        };
        let total: f64 = o.phase_timings.iter().map(|(_, s)| s).sum();
        let dir = o.backup_dir.clone().unwrap();
        let t0 = std::time::Instant::now();
        let v = verify_levels(&dir, &bin_dir(), None, &CancellationToken::new())
            .await
            .unwrap();
        let again = t0.elapsed().as_secs_f64();
        let d = run_drill(
            &DrillSpec {
                node_label: "bench".into(),
                scratch_dbname: scratch_dbname(9, job),
                jobs: 2,
                ..drill_spec(900 + job, dir, &pg, root.path())
            },
            CancellationToken::new(),
        )
        .await;
        assert_eq!(d.state, DrillState::Passed, "{d:#?}");
        println!(
            "scale {scale} {format:?}: set {} MB, database {} MB; backup {total:.2} s of which pg_dump {:.2} s and verify (levels 1+2) {:.2} s ({:.0}%); verify again {again:.2} s ({} TOC entries); drill: restore {:.2} s ({}), whole drill {:.2} s",
            o.total_size / 1_000_000,
            o.database_size.unwrap_or(0) / 1_000_000,
            t("pg_dump"),
            t("verify"),
            100.0 * t("verify") / total,
            v.toc_entries.unwrap_or(0),
            d.restore_seconds.unwrap(),
            d.feed.unwrap_or_default(),
            (d.finished - d.started).num_milliseconds() as f64 / 1000.0,
        );
    }
}
