//! WAL retention against a real catalog: the plan over two timelines after a promotion (ranges
//! deleted and kept with why, history files kept), nothing deleted without a kept base backup or
//! while a base backup runs, the two phases (tombstone and trimmed runs, then the rows), and the
//! plan, mark and deletion at 500,000 segments.

mod common;

use std::time::{Duration, Instant};

use pgbackman_db::{Catalog, DefinitionOptions, NewDefinition, Value};
use pgbackman_testkit::TestCluster;

const SEG: u64 = 16 * 1024 * 1024;
const SYSID: &str = "7412345678901234567";

struct Env {
    _pg: TestCluster,
    owner: tokio_postgres::Client,
    cat: Catalog,
    def_id: i64,
}

async fn env() -> Env {
    let (pg, owner, cat) = common::catalog(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING');",
    )
    .await;
    let audit = pgbackman_db::Audit {
        os_user: "tester".into(),
        command: "test".into(),
    };
    let d = cat
        .register_backup_definitions(
            &audit,
            &[NewDefinition {
                server: "bs1.example.org".into(),
                node: "pg1.example.org".into(),
                dbname: String::new(),
                minutes: Some("0".into()),
                hours: Some("1".into()),
                code: Some("BASEBACKUP".into()),
                encryption: Some(false),
                encryption_key: None,
                options: DefinitionOptions::default(),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    Env {
        _pg: pg,
        owner,
        cat,
        def_id: d[0].def_id,
    }
}

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// Segments `from..=to` of a timeline, straight into the ledger (the triggers keep wal_run).
async fn segments(e: &Env, tli: u32, from: u64, to: u64) {
    e.owner
        .batch_execute(&format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                     arrival, header_check, arrived_at)
             select 1, 1, {SYSID}, {tli}, g, 'full', {SEG}, ('0/0'::pg_lsn + g * {SEG}::numeric),
                    ('0/0'::pg_lsn + (g + 1) * {SEG}::numeric), {SEG}, 1000, md5(g::text) || md5({tli}::text),
                    md5(g::text) || md5({tli}::text), 'zstd', '/wal/{tli}/' || g, 'stream', 'PASSED',
                    timestamptz '2025-01-01' + g * interval '63 seconds'
               from generate_series({from}, {to}) g"
        ))
        .await
        .unwrap();
}

/// Timeline `tli` began at `switch` on `parent`: its history file and its parsed history.
async fn promotion(e: &Env, tli: u32, parent: u32, switch: u64) {
    e.owner
        .batch_execute(&format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     size, stored_size, sha256, stored_sha256, codec, stored_path, arrival,
                                     header_check, arrived_at)
             values (1, 1, {SYSID}, {tli}, null, 'history', {SEG}, 40, 40, repeat('a', 64), repeat('a', 64), 'zstd',
                     '/wal/{tli}.history', 'stream', 'PASSED', now());
             insert into timeline_history (pgsql_node_id, system_identifier, timeline, parent, switch_lsn)
             values (1, {SYSID}, {tli}, {parent}, '{}');",
            lsn(switch)
        ))
        .await
        .unwrap();
}

/// A base backup set starting in segment `segno` of `tli`; `kept` false: retention is deleting it.
async fn base_backup(e: &Env, tli: u32, segno: u64, kept: bool) -> i64 {
    e.owner
        .query_one(
            &format!(
                "with c as (
                     insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, backup_code, started, finished,
                                                 execution_status, execution_method, verification_level,
                                                 verification_state, retention_state)
                     values ({def}, 1, 1, 'BASEBACKUP', now(), now(), 'SUCCEEDED', 'CRON', 1, 'PASSED', '{state}')
                     returning bck_id)
                 insert into base_backup (bck_id, pgsql_node_id, backup_server_id, system_identifier, timeline, start_lsn,
                                          stop_lsn, seg_size, wal_method, manifest_state, state)
                 select bck_id, 1, 1, {SYSID}, {tli}, '{start}', '{stop}', {SEG}, 'none', 'PASSED', 'SUCCEEDED' from c
                 returning bck_id",
                def = e.def_id,
                state = if kept { "KEPT" } else { "DELETING" },
                start = lsn(segno * SEG + 40),
                stop = lsn(segno * SEG + 4000),
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Text(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// The plan as (timeline, action, first file, last file, segments, reason).
async fn plan(e: &Env) -> Vec<(String, String, String, String, String, String)> {
    let p = e.cat.wal_retention_plan(&None, &None).await.unwrap();
    (0..p.len())
        .map(|i| {
            (
                text(p.get(i, "Timeline")),
                text(p.get(i, "Action")),
                text(p.get(i, "First file")),
                text(p.get(i, "Last file")),
                text(p.get(i, "Segments")),
                text(p.get(i, "Reason")),
            )
        })
        .collect()
}

async fn count(e: &Env, sql: &str) -> i64 {
    e.owner.query_one(sql, &[]).await.unwrap().get(0)
}

fn name(tli: u32, segno: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", segno >> 8, segno & 0xff)
}

#[tokio::test(flavor = "current_thread")]
async fn two_timelines_after_a_promotion_keep_what_the_kept_base_backups_need() {
    let e = env().await;
    // Timeline 1: segments 1..100; the node was promoted in segment 60 (timeline 2: 60..150).
    segments(&e, 1, 1, 100).await;
    promotion(&e, 2, 1, 60 * SEG + 100).await;
    segments(&e, 2, 60, 150).await;
    let expired = base_backup(&e, 1, 20, false).await;
    let b2 = base_backup(&e, 1, 40, true).await;
    let b3 = base_backup(&e, 2, 120, true).await;
    let p = plan(&e).await;
    eprintln!("{p:#?}");
    let before = format!(
        "before the oldest kept base backup {b2} (start LSN {})",
        lsn(40 * SEG + 40)
    );
    assert_eq!(
        p[0],
        (
            "1".into(),
            "delete".into(),
            name(1, 1),
            name(1, 39),
            "39".into(),
            before
        ),
        "{p:#?}"
    );
    let by2 = format!(
        "needed by base backup {b2} from LSN {} (timeline 1)",
        lsn(40 * SEG + 40)
    );
    let by3 = format!(
        "needed by base backup {b3} from LSN {} (timeline 2)",
        lsn(120 * SEG + 40)
    );
    // Timeline 2 descends from the backup's timeline 1: on its lineage, kept for it.
    assert!(
        p.contains(&(
            "1".into(),
            "keep".into(),
            name(1, 40),
            name(1, 100),
            "61".into(),
            by2.clone()
        )),
        "{p:#?}"
    );
    assert!(
        p.contains(&(
            "2".into(),
            "keep".into(),
            name(2, 60),
            name(2, 119),
            "60".into(),
            by2
        )),
        "{p:#?}"
    );
    assert!(
        p.contains(&(
            "2".into(),
            "keep".into(),
            name(2, 120),
            name(2, 150),
            "31".into(),
            by3
        )),
        "{p:#?}"
    );
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        !p.iter()
            .any(|r| r.5.contains(&format!("base backup {expired} ")))
    );

    // Phase 1: one tombstone, the runs trimmed at once.
    let m = e.cat.wal_retention_mark(1, 1).await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].below_segno, m[0].bck_id), (40, b2));
    assert_eq!(
        count(
            &e,
            "select min(first_segno) from wal_run where timeline = 1"
        )
        .await,
        40
    );
    assert_eq!(
        count(&e, "select stored_bytes from wal_run where timeline = 1").await,
        61 * 1000
    );
    let p = plan(&e).await;
    assert_eq!(p[0].1, "deleting", "{p:#?}");
    assert_eq!(p[0].4, "39", "{p:#?}");
    // Phase 2 and 3 in batches: only segments below the floor, never a history file.
    let mut gone = 0;
    loop {
        let batch = e.cat.wal_retention_marked(1, 10).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(
            batch.iter().all(|w| w.stored_path.starts_with("/wal/1/")),
            "{batch:?}"
        );
        let ids: Vec<i64> = batch.iter().map(|w| w.wal_id).collect();
        gone += e.cat.wal_retention_forget(1, &ids).await.unwrap();
    }
    assert_eq!(gone, 39);
    assert_eq!(
        count(&e, "select count(*) from wal_object where kind = 'history'").await,
        1
    );
    assert_eq!(
        count(&e, "select min(segno) from wal_object where timeline = 1").await,
        40
    );
    assert_eq!(count(&e, "select count(*) from api.wal_holes(1)").await, 0);
    // The window of timeline 2 reaches back along timeline 1 to the floor, and says why it
    // starts there (not a hole).
    let w = e
        .owner
        .query_one(
            "select from_lsn::text, starts_at from api.recovery_window(1) where timeline = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(w.get::<_, String>(0), lsn(40 * SEG));
    assert!(
        w.get::<_, String>(1).contains("deleted by retention"),
        "{w:?}"
    );
    // The newest backup is still covered by a recovery window.
    let chains = e.cat.show_recovery_chains("pg1.example.org").await.unwrap();
    let covered: Vec<String> = (0..chains.len())
        .filter(|&i| matches!(chains.get(i, "Note"), Some(Value::Null) | None))
        .map(|i| text(chains.get(i, "BckID")))
        .collect();
    assert!(covered.contains(&b3.to_string()), "{chains:?}");
    assert!(covered.contains(&b2.to_string()), "{chains:?}");
    // A second pass has nothing more to do; a forget of a row above the floor is refused.
    e.cat.wal_retention_mark(1, 1).await.unwrap();
    assert!(e.cat.wal_retention_marked(1, 10).await.unwrap().is_empty());
    let above = count(
        &e,
        "select wal_id from wal_object where timeline = 1 and segno = 40",
    )
    .await;
    assert_eq!(e.cat.wal_retention_forget(1, &[above]).await.unwrap(), 0);
    let p = plan(&e).await;
    assert!(p.iter().all(|r| r.1 == "keep"), "{p:#?}");
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_is_deleted_without_a_kept_base_backup_or_while_one_runs() {
    let e = env().await;
    segments(&e, 1, 1, 50).await;
    base_backup(&e, 1, 20, false).await;
    let p = plan(&e).await;
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].1, "hold");
    assert!(p[0].5.contains("no kept base backup"), "{p:#?}");
    assert!(e.cat.wal_retention_mark(1, 1).await.unwrap().is_empty());
    assert!(e.cat.wal_retention_marked(1, 100).await.unwrap().is_empty());

    let b = base_backup(&e, 1, 30, true).await;
    let job: i64 = e
        .owner
        .query_one(
            &format!(
                "insert into job (kind, backup_server_id, pgsql_node_id, def_id, state)
                 values ('BACKUP', 1, 1, {}, 'RUNNING') returning job_id",
                e.def_id
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let p = plan(&e).await;
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].1, "hold");
    assert!(
        p[0].5.contains(&format!("base backup job {job} runs")),
        "{p:#?}"
    );
    assert!(e.cat.wal_retention_mark(1, 1).await.unwrap().is_empty());
    e.owner
        .batch_execute(&format!(
            "update job set state = 'SUCCEEDED' where job_id = {job}"
        ))
        .await
        .unwrap();
    let m = e.cat.wal_retention_mark(1, 1).await.unwrap();
    assert_eq!((m[0].below_segno, m[0].bck_id), (30, b));
}

/// A year of a busy node: plan, mark and the deletion of 250,000 rows in batches, timed.
#[tokio::test(flavor = "current_thread")]
async fn wal_retention_at_500000_segments() {
    let e = env().await;
    segments(&e, 1, 1, 500_000).await;
    base_backup(&e, 1, 100_000, false).await;
    let b = base_backup(&e, 1, 250_000, true).await;
    base_backup(&e, 1, 400_000, true).await;
    e.owner.batch_execute("analyze").await.unwrap();
    let t = Instant::now();
    let p = plan(&e).await;
    let dp = t.elapsed();
    assert_eq!(p[0].1, "delete");
    assert_eq!(p[0].4, "249999");
    let t = Instant::now();
    let m = e.cat.wal_retention_mark(1, 1).await.unwrap();
    let dm = t.elapsed();
    assert_eq!((m[0].below_segno, m[0].bck_id), (250_000, b));
    let t = Instant::now();
    let mut gone = 0;
    let mut batches = 0;
    loop {
        let batch = e.cat.wal_retention_marked(1, 5000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<i64> = batch.iter().map(|w| w.wal_id).collect();
        gone += e.cat.wal_retention_forget(1, &ids).await.unwrap();
        batches += 1;
    }
    let dd = t.elapsed();
    assert_eq!(gone, 249_999);
    assert_eq!(count(&e, "select count(*) from wal_run").await, 1);
    assert_eq!(count(&e, "select segments from wal_run").await, 250_001);
    assert_eq!(count(&e, "select count(*) from api.wal_holes(1)").await, 0);
    eprintln!(
        "WAL retention at 500,000 segments: plan {dp:?}, mark {dm:?}, \
         249,999 rows forgotten in {batches} batches of 5000 in {dd:?}"
    );
    assert!(dp < Duration::from_millis(300), "plan {dp:?}");
    assert!(dm < Duration::from_millis(2000), "mark {dm:?}");
    // Rebuilding the runs at each batch instead of trimming them took ~30 s here (10x).
    assert!(dd < Duration::from_secs(20), "deletion {dd:?}");
}

/// After a point-in-time recovery of the node, a kept base backup on the new timeline may start
/// below the tombstone: the tombstone comes down to it and the WAL it needs stays (F8: no WAL
/// of another timeline wiped).
#[tokio::test(flavor = "current_thread")]
async fn a_kept_base_backup_below_the_tombstone_lowers_it() {
    let e = env().await;
    segments(&e, 1, 1, 100).await;
    let old = base_backup(&e, 1, 10, true).await;
    let newer = base_backup(&e, 1, 80, true).await;
    e.owner
        .batch_execute(&format!(
            "update backup_catalog set retention_state = 'DELETING' where bck_id = {old}"
        ))
        .await
        .unwrap();
    let m = e.cat.wal_retention_mark(1, 1).await.unwrap();
    assert_eq!((m[0].below_segno, m[0].bck_id), (80, newer));
    // Before the agent deletes anything, the node is recovered to segment 50 (timeline 2) and
    // a base backup of timeline 2 starts in segment 55.
    promotion(&e, 2, 1, 50 * SEG + 10).await;
    segments(&e, 2, 50, 70).await;
    let pitr = base_backup(&e, 2, 55, true).await;
    let m = e.cat.wal_retention_mark(1, 1).await.unwrap();
    assert_eq!((m[0].below_segno, m[0].bck_id), (55, pitr));
    let p = plan(&e).await;
    let by = format!(
        "needed by base backup {pitr} from LSN {} (timeline 2)",
        lsn(55 * SEG + 40)
    );
    assert!(
        p.contains(&(
            "2".into(),
            "keep".into(),
            name(2, 55),
            name(2, 70),
            "16".into(),
            by
        )),
        "{p:#?}"
    );
    loop {
        let batch = e.cat.wal_retention_marked(1, 1000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<i64> = batch.iter().map(|w| w.wal_id).collect();
        e.cat.wal_retention_forget(1, &ids).await.unwrap();
    }
    assert_eq!(
        count(&e, "select min(segno) from wal_object where timeline = 2").await,
        55
    );
    assert_eq!(
        count(&e, "select min(segno) from wal_object where timeline = 1").await,
        55
    );
    assert_eq!(
        count(&e, "select sum(segments)::bigint from wal_run").await,
        (100 - 55 + 1) + (70 - 55 + 1)
    );
    assert_eq!(count(&e, "select count(*) from api.wal_holes(1)").await, 0);
}
