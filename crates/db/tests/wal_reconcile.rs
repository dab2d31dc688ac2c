//! WAL files lost on disk against a real catalog (`sql/89_wal_missing.sql`): the rows of files
//! the agent no longer lists become a hole and MISSING findings; rows recorded after the scan
//! started, rows below the WAL retention tombstone and rows stored outside the listed directory
//! are kept; the comparison at 500,000 segments.

use std::time::{Duration, Instant};

use pgbackman_db::wal_reconcile::WalDirListing;
use pgbackman_db::{Catalog, migrate};
use pgbackman_testkit::TestCluster;

const SEG: u64 = 16 * 1024 * 1024;
const SYSID: &str = "7412345678901234567";
/// Segments per log (4 GB / 16 MB): a name's log changes every 256 segments.
const PER_LOG: i64 = 256;
/// The archive root the agent lists.
const ROOT: &str = "/b/wal/node1";

struct Env {
    _pg: TestCluster,
    owner: tokio_postgres::Client,
    cat: Catalog,
}

async fn env() -> Env {
    let pg = TestCluster::start();
    pg.psql("postgres", "create database pgbackman");
    let cfg: tokio_postgres::Config = pg.conninfo("pgbackman").parse().unwrap();
    let mut owner = pgbackman_db::connect_once(&cfg, "test catalog")
        .await
        .unwrap();
    migrate::init(&mut owner).await.unwrap();
    owner
        .batch_execute(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING');",
        )
        .await
        .unwrap();
    let cat =
        Catalog::lazy_with_deadline(cfg, "test", "test catalog", Duration::from_secs(60)).unwrap();
    Env {
        _pg: pg,
        owner,
        cat,
    }
}

/// Segments `from..=to` of timeline 1, recorded at `at` (the triggers keep wal_run).
async fn segments(e: &Env, from: u64, to: u64, at: &str) {
    e.owner
        .batch_execute(&format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                     arrival, header_check, arrived_at, recorded_at)
             select 1, 1, {SYSID}, 1, g, 'full', {SEG}, ('0/0'::pg_lsn + g * {SEG}::numeric),
                    ('0/0'::pg_lsn + (g + 1) * {SEG}::numeric), {SEG}, 1000, md5(g::text) || md5('1'),
                    md5(g::text) || md5('1'), 'zstd',
                    '/b/wal/node1/{SYSID}/00000001/' || api.wal_file_name(1, g, {SEG}, 'full', null) || '.zst',
                    'stream', 'PASSED', {at}, {at}
               from generate_series({from}, {to}) g"
        ))
        .await
        .unwrap();
}

/// The name number (log * 2^32 + seg) of a segment, as the agent reports it.
fn num(segno: i64) -> i64 {
    ((segno / PER_LOG) << 32) | (segno % PER_LOG)
}

/// The listing of timeline 1 holding exactly `segs` (inclusive ranges of segment numbers), cut
/// at log boundaries as names are.
fn listing(segs: &[(i64, i64)], names: &[&str]) -> Vec<WalDirListing> {
    let mut ranges = Vec::new();
    for &(a, b) in segs {
        let mut s = a;
        while s <= b {
            let end = b.min((s / PER_LOG + 1) * PER_LOG - 1);
            ranges.push([num(s), num(end)]);
            s = end + 1;
        }
    }
    vec![WalDirListing {
        sysid: SYSID.into(),
        timeline: 1,
        ranges,
        names: names.iter().map(|s| s.to_string()).collect(),
    }]
}

async fn holes(e: &Env) -> Vec<(i64, i64)> {
    e.owner
        .query(
            "select first_missing, last_missing from api.wal_holes(1)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn count(e: &Env, sql: &str) -> i64 {
    e.owner.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_lost_segment_becomes_a_hole_and_a_finding_new_and_retained_rows_are_kept() {
    let e = env().await;
    // 1..=600 recorded long ago; 601..=610 after the scan started (not listed yet); a history
    // file of timeline 1 does not exist, but a backup history file does.
    segments(&e, 1, 600, "now() - interval '1 hour'").await;
    segments(&e, 601, 610, "now() + interval '1 hour'").await;
    e.owner
        .batch_execute(&format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                     arrival, header_check, arrived_at, recorded_at)
             values (1, 1, {SYSID}, 1, 300, 'backup_history', {SEG}, '0/0'::pg_lsn + 300 * {SEG}::numeric + 40,
                     '0/0'::pg_lsn + 300 * {SEG}::numeric + 4000, 300, 200, repeat('b', 64), repeat('b', 64), 'zstd',
                     '/b/wal/node1/{SYSID}/00000001/00000001000000010000002C.00000028.backup.zst', 'stream',
                     'NOT_CHECKED', now() - interval '1 hour', now() - interval '1 hour');
             -- Retention deletes below 100 on purpose (the files go first, the rows after).
             insert into wal_retention (pgsql_node_id, backup_server_id, system_identifier, below_segno, below_lsn, bck_id)
             values (1, 1, {SYSID}, 100, '0/0'::pg_lsn + 100 * {SEG}::numeric, 1);"
        ))
        .await
        .unwrap();
    let started = chrono::Utc::now();
    // All present: nothing changes.
    let all = listing(&[(100, 600)], &["00000001000000010000002C.00000028.backup"]);
    let lost = e
        .cat
        .reconcile_wal_files(1, 1, ROOT, started, &all)
        .await
        .unwrap();
    assert!(lost.is_empty(), "{lost:?}");
    assert!(holes(&e).await.is_empty());
    // Segment 257 (000000010000000100000001) and the backup history file are gone; 1..=99
    // (below the tombstone) and 601..=610 (recorded after the scan began) are not listed.
    let some = listing(&[(100, 256), (258, 600)], &[]);
    let lost = e
        .cat
        .reconcile_wal_files(1, 1, ROOT, started, &some)
        .await
        .unwrap();
    let names: Vec<&str> = lost.iter().map(|l| l.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "000000010000000100000001",
            "00000001000000010000002C.00000028.backup"
        ]
    );
    assert!(
        lost[0].detail.contains("show_recovery_window"),
        "{}",
        lost[0].detail
    );
    assert_eq!(holes(&e).await, [(257, 257)]);
    assert_eq!(count(&e, "select count(*) from wal_object").await, 609);
    assert_eq!(
        count(&e, "select count(*) from wal_object where segno < 100").await,
        99,
        "rows below the tombstone are retention's"
    );
    let findings = e
        .owner
        .query(
            "select path, detail from reconciliation where kind = 'MISSING' order by path",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(findings.len(), 2);
    let p: String = findings[0].get(0);
    assert!(p.ends_with("/00000001/000000010000000100000001.zst"), "{p}");
    assert_eq!(
        count(&e, "select count(*) from alert where alert_type = 'MAINTENANCE' and execution_status = 'MISSING'").await,
        2
    );
    // A walk of the sets does not settle WAL findings; the same scan again changes nothing.
    e.cat
        .record_reconciliation(1, &["ORPHAN", "MISSING"], &[])
        .await
        .unwrap();
    let again = e
        .cat
        .reconcile_wal_files(1, 1, ROOT, started, &some)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    // The node's partition moved: the new directory holds none of the older files, which are
    // still where their rows say. Nothing is removed.
    let moved = e
        .cat
        .reconcile_wal_files(1, 1, "/elsewhere/wal/node1", started, &[])
        .await
        .unwrap();
    assert!(moved.is_empty(), "{moved:?}");
    assert_eq!(count(&e, "select count(*) from wal_object").await, 609);
    assert_eq!(count(&e, "select count(*) from reconciliation").await, 2);
    assert_eq!(
        count(
            &e,
            "select count(*) from alert where alert_type = 'MAINTENANCE'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn wal_reconciliation_at_500000_segments() {
    let e = env().await;
    segments(&e, 1, 500_000, "now() - interval '1 hour'").await;
    let started = chrono::Utc::now();
    let all = listing(&[(1, 500_000)], &[]);
    // The connection and the plans first (another node: nothing to compare).
    e.cat
        .reconcile_wal_files(1, 2, ROOT, started, &[])
        .await
        .unwrap();
    let t = Instant::now();
    let lost = e
        .cat
        .reconcile_wal_files(1, 1, ROOT, started, &all)
        .await
        .unwrap();
    let d_none = t.elapsed();
    assert!(lost.is_empty());
    let json = serde_json::to_string(&all).unwrap().len();
    let some = listing(&[(1, 249_999), (250_001, 500_000)], &[]);
    let t = Instant::now();
    let lost = e
        .cat
        .reconcile_wal_files(1, 1, ROOT, started, &some)
        .await
        .unwrap();
    let d_one = t.elapsed();
    assert_eq!(lost.len(), 1);
    assert_eq!(holes(&e).await, [(250_000, 250_000)]);
    eprintln!(
        "WAL reconciliation at 500,000 segments: report of {} ranges ({json} bytes of JSON); \
         nothing lost {d_none:?}, one segment lost (row removed, runs rebuilt, finding) {d_one:?}",
        all[0].ranges.len()
    );
    assert!(d_none < Duration::from_secs(5), "{d_none:?}");
    assert!(d_one < Duration::from_secs(20), "{d_one:?}");
}
