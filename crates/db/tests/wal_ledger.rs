//! The WAL ledger against a real cluster: archives registered and deleted, reports that are
//! idempotent, conflicting content refused and alerted, holes found, recovery windows across a
//! timeline switch, and the hole check and recovery window at 500,000 segments.

mod common;

use std::time::{Duration, Instant};

use pgbackman_db::wal::{HistoryLine, NewWalArchive, Outcome, WalObject};
use pgbackman_db::{Audit, Catalog, DbError, Value};
use pgbackman_testkit::TestCluster;

const SEG: u64 = 16 * 1024 * 1024;
const SYSID: &str = "7412345678901234567";

struct Env {
    _pg: TestCluster,
    owner: tokio_postgres::Client,
    cat: Catalog,
}

/// A catalog with backup servers bs1, bs2 and nodes pg1, pg2.
async fn env() -> Env {
    let (pg, owner, cat) = common::catalog(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             select api.register_backup_server('bs2', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING'),
                                                                          ('pg2', 'example.org', 'RUNNING');",
    )
    .await;
    Env {
        _pg: pg,
        owner,
        cat,
    }
}

fn audit() -> Audit {
    Audit {
        os_user: "tester".into(),
        command: "test".into(),
    }
}

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// A full segment `segno` of timeline `tli`, content `tag`.
fn seg(node: i64, tli: u32, segno: u64, tag: &str) -> WalObject {
    let sha = format!("{:0>64}", format!("{tli:x}{segno:x}{}", hex(tag)));
    WalObject {
        node_id: node,
        system_identifier: SYSID.into(),
        timeline: tli,
        segno: Some(segno),
        kind: "full".into(),
        seg_size: SEG as u32,
        start_lsn: Some(lsn(segno * SEG)),
        end_lsn: Some(lsn((segno + 1) * SEG)),
        size: SEG,
        stored_size: 1_000_000,
        sha256: sha.clone(),
        stored_sha256: sha,
        codec: "zstd".into(),
        stored_path: format!("wal/{tli:08X}/{segno:016X}.zst"),
        arrival: "stream".into(),
        header_check: "PASSED".into(),
        header_detail: None,
        arrived_at: chrono::Utc::now(),
        history: vec![],
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn archive(e: &Env, server: &str, node: &str) -> (i64, String) {
    e.cat
        .register_wal_archive(
            &audit(),
            &NewWalArchive {
                server: server.into(),
                node: node.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Text(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn register_and_delete_a_wal_archive() {
    let e = env().await;
    let (id, slot) = archive(&e, "bs1.example.org", "pg1.example.org").await;
    assert_eq!(
        slot, "pgbackman_bs1",
        "default slot from the server's host name"
    );
    let rows = e.cat.show_wal_archives(&None, &None, false).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(text(rows.get(0, "Slot")), "pgbackman_bs1");
    assert_eq!(text(rows.get(0, "Max lag")), "64 MB");
    assert!(
        text(rows.get(0, "Receiver")).starts_with("not started"),
        "{:?}",
        rows.get(0, "Receiver")
    );

    // One archive per node and server; a slot name once per node; valid names and sizes only.
    let again = NewWalArchive {
        server: "bs1.example.org".into(),
        node: "pg1.example.org".into(),
        ..Default::default()
    };
    let err = e.cat.register_wal_archive(&audit(), &again).await;
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("already has a WAL archive"), "{msg}");
    assert!(msg.contains("delete_wal_archive"), "{msg}");
    let same_slot = NewWalArchive {
        server: "bs2.example.org".into(),
        node: "pg1.example.org".into(),
        slot: Some("pgbackman_bs1".into()),
        ..Default::default()
    };
    let msg = e
        .cat
        .register_wal_archive(&audit(), &same_slot)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("already used by the WAL archive"), "{msg}");
    for (slot, lag, expect) in [
        (Some("Bad-Name"), None, "is not valid"),
        (Some(&*"x".repeat(64)), None, "is not valid"),
        (None, Some("lots"), "is not a size"),
        (None, Some("1kB"), "below 1 MB"),
    ] {
        let a = NewWalArchive {
            server: "bs2.example.org".into(),
            node: "pg1.example.org".into(),
            slot: slot.map(str::to_string),
            synchronous: true,
            max_lag: lag.map(str::to_string),
            ..Default::default()
        };
        let msg = e
            .cat
            .register_wal_archive(&audit(), &a)
            .await
            .unwrap_err()
            .to_string();
        assert!(msg.contains(expect), "{slot:?} {lag:?}: {msg}");
        assert!(msg.contains("HINT"), "{msg}");
    }
    let ok = NewWalArchive {
        server: "bs2.example.org".into(),
        node: "pg1.example.org".into(),
        slot: None,
        synchronous: true,
        max_lag: Some("1GB".into()),
        ..Default::default()
    };
    let (_, slot2) = e.cat.register_wal_archive(&audit(), &ok).await.unwrap();
    assert_eq!(slot2, "pgbackman_bs2");

    // Deletion: DELETING until the agent dropped the slot; a second delete says so.
    assert_eq!(
        e.cat
            .delete_wal_archive(&audit(), "bs1.example.org", "pg1.example.org")
            .await
            .unwrap(),
        id
    );
    let rows = e
        .cat
        .show_wal_archives(&Some(vec!["bs1.example.org".into()]), &None, false)
        .await
        .unwrap();
    assert_eq!(text(rows.get(0, "Status")), "DELETING");
    assert!(text(rows.get(0, "Receiver")).contains("drops slot pgbackman_bs1"));
    let msg = e
        .cat
        .delete_wal_archive(&audit(), "bs1.example.org", "pg1.example.org")
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("already being deleted"), "{msg}");
    let r = e
        .owner
        .query_one("select api.wal_archive_slot_dropped(1, $1)", &[&id])
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(
        e.cat
            .show_wal_archives(&None, &None, false)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        e.cat
            .show_wal_archives(&None, &None, true)
            .await
            .unwrap()
            .len(),
        2
    );
    // After that the node may be archived by bs1 again, with the same slot.
    archive(&e, "bs1.example.org", "pg1.example.org").await;
    let audited: i64 = e
        .owner
        .query_one(
            "select count(*) from audit_log where table_name = 'wal_archive'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(audited >= 4, "{audited} audit rows");
}

#[tokio::test(flavor = "current_thread")]
async fn reports_are_idempotent_and_conflicts_are_refused_and_alerted() {
    let e = env().await;
    archive(&e, "bs1.example.org", "pg1.example.org").await;
    let batch: Vec<_> = (1..=3).map(|s| seg(1, 1, s, "a")).collect();
    let r = e.cat.report_wal_objects(1, &batch).await.unwrap();
    assert!(r.iter().all(|x| x.outcome == Outcome::Recorded), "{r:?}");
    assert_eq!(r[0].detail, "000000010000000000000001");
    // The same batch again (a spool replay): nothing changes.
    let again = e.cat.report_wal_objects(1, &batch).await.unwrap();
    assert!(
        again.iter().all(|x| x.outcome == Outcome::Duplicate),
        "{again:?}"
    );
    let n: i64 = e
        .owner
        .query_one("select count(*) from wal_object", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // Different content under the key of segment 2: refused, recorded aside, alerted once.
    let mut other = seg(1, 1, 2, "b");
    other.stored_path = "wal/refused/000000010000000000000002.zst".into();
    other.arrival = "archive_command".into();
    for _ in 0..2 {
        let r = e
            .cat
            .report_wal_objects(1, std::slice::from_ref(&other))
            .await
            .unwrap();
        assert_eq!(r[0].outcome, Outcome::Refused, "{r:?}");
    }
    let row = e
        .owner
        .query_one(
            "select o.sha256, c.sha256, c.times_seen from wal_object o join wal_conflict c using (wal_id)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        batch[1].sha256,
        "never overwritten"
    );
    assert_eq!(row.get::<_, String>(1), other.sha256);
    assert_eq!(row.get::<_, i32>(2), 2);
    let alerts = e
        .cat
        .show_alerts(&None, &None, &None, &Some(vec!["WAL_CONFLICT".into()]), 10)
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1, "one alert per conflict, not per report");
    let msg = text(alerts.get(0, "Error"));
    assert!(msg.contains("000000010000000000000002"), "{msg}");
    assert!(msg.contains("refused and kept aside"), "{msg}");

    // A .partial and the full segment of the same number are two objects.
    let mut partial = seg(1, 1, 4, "p");
    partial.kind = "partial".into();
    partial.end_lsn = Some(lsn(4 * SEG + 4096));
    let full = seg(1, 1, 4, "f");
    let r = e.cat.report_wal_objects(1, &[partial, full]).await.unwrap();
    assert!(r.iter().all(|x| x.outcome == Outcome::Recorded), "{r:?}");
    assert_eq!(r[0].detail, "000000010000000000000004.partial");

    // No archive of that node on that server: refused with what to do.
    let msg = e
        .cat
        .report_wal_objects(2, &[seg(1, 1, 9, "a")])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("has no WAL archive on backup server bs2"),
        "{msg}"
    );
    // A malformed item names itself and the field, never a constraint name.
    let mut bad = seg(1, 1, 10, "a");
    bad.sha256 = "xyz".into();
    let err = e.cat.report_wal_objects(1, &[bad]).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sha256 and stored_sha256 must be"), "{msg}");
    assert!(!msg.contains("wal_object_"), "{msg}");
    assert!(matches!(err, DbError::Server(_)), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn holes_and_recovery_window_across_a_timeline_switch() {
    let e = env().await;
    archive(&e, "bs1.example.org", "pg1.example.org").await;
    // Timeline 1: segments 1..=10 with 5 and 6 missing; the node was promoted at 0/A800000
    // (inside segment 10) to timeline 2, which has segments 10..=14.
    let mut batch: Vec<_> = (1..=10)
        .filter(|s| *s != 5 && *s != 6)
        .map(|s| seg(1, 1, s, "a"))
        .collect();
    batch.extend((10..=14).map(|s| seg(1, 2, s, "a")));
    let mut history = seg(1, 2, 0, "h");
    history.kind = "history".into();
    history.segno = None;
    history.start_lsn = None;
    history.end_lsn = None;
    history.history = vec![HistoryLine {
        timeline: 1,
        switch_lsn: "0/A800000".into(),
        reason: "no recovery target specified".into(),
    }];
    batch.push(history);
    let r = e.cat.report_wal_objects(1, &batch).await.unwrap();
    assert!(r.iter().all(|x| x.outcome == Outcome::Recorded), "{r:?}");
    assert_eq!(r.last().unwrap().detail, "00000002.history");

    let holes = e.cat.wal_holes("pg1.example.org").await.unwrap();
    assert_eq!(holes.len(), 1, "{holes:?}");
    assert_eq!(
        text(holes.get(0, "First missing")),
        "000000010000000000000005"
    );
    assert_eq!(
        text(holes.get(0, "Last missing")),
        "000000010000000000000006"
    );
    assert_eq!(text(holes.get(0, "Segments missing")), "2");

    let w = e.cat.show_recovery_window("pg1.example.org").await.unwrap();
    eprintln!("{w:?}");
    // Newest first: timeline 2 reaches back through the switch to the hole on timeline 1.
    assert_eq!(text(w.get(0, "Timeline")), "2");
    assert_eq!(text(w.get(0, "Lineage")), "1 → 2");
    assert_eq!(text(w.get(0, "From LSN")), lsn(7 * SEG));
    assert_eq!(text(w.get(0, "To LSN")), lsn(15 * SEG));
    assert_eq!(
        text(w.get(0, "Segments")),
        "8",
        "7, 8, 9 of tl 1 and 10..14 of tl 2"
    );
    assert!(
        text(w.get(0, "Starts at"))
            .contains("000000010000000000000005 to 000000010000000000000006"),
        "{:?}",
        w.get(0, "Starts at")
    );
    // Timeline 1's own windows: 7..10 (after the hole) and 1..4.
    let tl1: Vec<_> = (0..w.len())
        .filter(|i| text(w.get(*i, "Timeline")) == "1")
        .map(|i| (text(w.get(i, "From LSN")), text(w.get(i, "To LSN"))))
        .collect();
    assert_eq!(
        tl1,
        [(lsn(7 * SEG), lsn(11 * SEG)), (lsn(SEG), lsn(5 * SEG))]
    );

    // The missing segments arrive (a backfill): the hole is gone and the window reaches back.
    let late: Vec<_> = [5, 6]
        .iter()
        .map(|s| {
            let mut o = seg(1, 1, *s, "a");
            o.arrival = "backfill".into();
            o
        })
        .collect();
    e.cat.report_wal_objects(1, &late).await.unwrap();
    assert!(e.cat.wal_holes("pg1.example.org").await.unwrap().is_empty());
    let w = e.cat.show_recovery_window("pg1.example.org").await.unwrap();
    assert_eq!(text(w.get(0, "From LSN")), lsn(SEG));
    assert_eq!(text(w.get(0, "Starts at")), "first segment archived");
    let archives = e.cat.show_wal_archives(&None, &None, false).await.unwrap();
    assert_eq!(
        text(archives.get(0, "Last segment")),
        "00000002000000000000000E"
    );
    assert_eq!(text(archives.get(0, "Restorable from")), lsn(SEG));

    // show_wal_segments: by timeline, by LSN range.
    let s = e
        .cat
        .show_wal_segments("pg1.example.org", None, None, Some(2), 100)
        .await
        .unwrap();
    assert_eq!(s.len(), 6, "5 segments and the history file");
    let s = e
        .cat
        .show_wal_segments(
            "pg1.example.org",
            Some("0/3000000"),
            Some("0/4FFFFFF"),
            None,
            100,
        )
        .await
        .unwrap();
    let names: Vec<_> = (0..s.len()).map(|i| text(s.get(i, "WAL file"))).collect();
    assert_eq!(
        names,
        ["000000010000000000000003", "000000010000000000000004"]
    );
    let msg = e
        .cat
        .show_wal_segments("pg1.example.org", Some("yesterday-ish"), None, None, 100)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("neither an LSN nor a time"), "{msg}");

    // Deleting ledger rows (retention, later) keeps the runs right.
    e.owner
        .batch_execute("delete from wal_object where timeline = 1 and segno = 8")
        .await
        .unwrap();
    let holes = e.cat.wal_holes("pg1.example.org").await.unwrap();
    assert_eq!(holes.len(), 1);
    assert_eq!(
        text(holes.get(0, "First missing")),
        "000000010000000000000008"
    );
}

/// A year of a busy node: 500,000 segments (and a few holes). The hole check and the recovery
/// window read the runs, not the segments: both answer in far under 100 ms.
#[tokio::test(flavor = "current_thread")]
async fn hole_check_and_recovery_window_at_500000_segments() {
    let e = env().await;
    archive(&e, "bs1.example.org", "pg1.example.org").await;
    let t = Instant::now();
    // One statement, as a bulk load would: the run trigger works set-wise.
    e.owner
        .batch_execute(&format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                     arrival, header_check, arrived_at)
             select 1, 1, {SYSID}, 1, g, 'full', {SEG}, ('0/0'::pg_lsn + g * {SEG}::numeric), ('0/0'::pg_lsn + (g + 1) * {SEG}::numeric),
                    {SEG}, 2000000, md5(g::text) || md5(g::text), md5(g::text) || md5(g::text), 'zstd',
                    'wal/' || g, 'stream', 'PASSED', timestamptz '2025-01-01' + g * interval '63 seconds'
               from generate_series(1, 500003) g
              where g not in (1000, 250000, 250001, 400000);
             analyze wal_object; analyze wal_run;"
        ))
        .await
        .unwrap();
    eprintln!("loaded 500,000 segments in {:?}", t.elapsed());
    // And one more the ordinary way (a report merges it into the last run).
    let r = e
        .cat
        .report_wal_objects(1, &[seg(1, 1, 500004, "a")])
        .await
        .unwrap();
    assert_eq!(r[0].outcome, Outcome::Recorded);

    let mut worst = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        let t = Instant::now();
        let holes = e.cat.wal_holes("pg1.example.org").await.unwrap();
        let dh = t.elapsed();
        assert_eq!(holes.len(), 3, "{holes:?}");
        let t = Instant::now();
        let w = e.cat.show_recovery_window("pg1.example.org").await.unwrap();
        let dw = t.elapsed();
        assert_eq!(w.len(), 4);
        assert_eq!(text(w.get(0, "From LSN")), lsn(400001 * SEG));
        assert_eq!(text(w.get(0, "To LSN")), lsn(500005 * SEG));
        assert_eq!(text(w.get(0, "Segments")), "100004");
        worst = (worst.0.max(dh), worst.1.max(dw));
    }
    let t = Instant::now();
    let a = e.cat.show_wal_archives(&None, &None, false).await.unwrap();
    let da = t.elapsed();
    assert_eq!(text(a.get(0, "Last segment")), "00000001000007A100000024");
    let t = Instant::now();
    let s = e
        .cat
        .show_wal_segments("pg1.example.org", Some("100/0"), None, None, 1000)
        .await
        .unwrap();
    let ds = t.elapsed();
    assert_eq!(s.len(), 1000);
    // For comparison only: the same hole check as a window query over the segments themselves
    // (what the runs spare every caller).
    let t = Instant::now();
    let raw: i64 = e
        .owner
        .query_one(
            "select count(*) from (select segno, lead(segno) over (partition by system_identifier, timeline order by segno) as nxt
                                     from wal_object where pgsql_node_id = 1 and kind in ('full', 'partial')) x
              where nxt > segno + 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, 3, "the runs agree with the segments");
    eprintln!(
        "window query over the 500,000 segment rows (not used): {:?}",
        t.elapsed()
    );
    eprintln!(
        "at 500,000 segments: wal_holes {:?}, show_recovery_window {:?}, show_wal_archives {da:?}, \
         show_wal_segments (1000 rows) {ds:?} (worst of 3 where repeated)",
        worst.0, worst.1
    );
    // The agent's intake path on top of the year: 1,000 segments in batches of 100.
    let t = Instant::now();
    for b in 0..10u64 {
        let batch: Vec<_> = (0..100u64)
            .map(|i| seg(1, 1, 500_005 + b * 100 + i, "a"))
            .collect();
        let r = e.cat.report_wal_objects(1, &batch).await.unwrap();
        assert!(r.iter().all(|x| x.outcome == Outcome::Recorded));
    }
    let di = t.elapsed();
    eprintln!(
        "report_wal_objects: 1,000 segments in batches of 100 in {di:?} ({:.0} segments/s)",
        1000.0 / di.as_secs_f64()
    );
    let w = e.cat.show_recovery_window("pg1.example.org").await.unwrap();
    assert_eq!(
        text(w.get(0, "Segments")),
        "101004",
        "merged into the last run"
    );
    // Under a loaded 2-core machine: the target is 100 ms; these read a handful of runs.
    assert!(
        worst.0 < Duration::from_millis(100),
        "wal_holes {:?}",
        worst.0
    );
    assert!(
        worst.1 < Duration::from_millis(100),
        "show_recovery_window {:?}",
        worst.1
    );
}

/// Who may do what: an agent records WAL only for its own server, a readonly role reads the
/// ledger but registers nothing.
#[tokio::test(flavor = "current_thread")]
async fn agents_report_only_for_their_own_server() {
    let e = env().await;
    archive(&e, "bs1.example.org", "pg1.example.org").await;
    e._pg.psql(
        "postgres",
        "create role agent_a login; create role agent_b login; create role ro login",
    );
    for (role, level, server) in [
        ("agent_a", "agent", Some("bs1.example.org")),
        ("agent_b", "agent", Some("bs2.example.org")),
        ("ro", "readonly", None),
    ] {
        pgbackman_db::roles::grant(&e.owner, role, level, server)
            .await
            .unwrap();
    }
    let as_role = |role: &str| {
        let cfg: tokio_postgres::Config = e
            ._pg
            .conninfo("pgbackman")
            .replace("user=postgres", &format!("user={role}"))
            .parse()
            .unwrap();
        Catalog::lazy_with_deadline(cfg, "test", role, Duration::from_secs(10)).unwrap()
    };
    let err = as_role("agent_b")
        .report_wal_objects(1, &[seg(1, 1, 1, "a")])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("acts for backup server bs2.example.org only"),
        "{err}"
    );
    let r = as_role("agent_a")
        .report_wal_objects(1, &[seg(1, 1, 1, "a")])
        .await
        .unwrap();
    assert_eq!(r[0].outcome, Outcome::Recorded);

    let ro = as_role("ro");
    let w = ro.show_recovery_window("pg1.example.org").await.unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(
        ro.show_wal_segments("pg1.example.org", None, None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ro.show_wal_archives(&None, &None, false)
            .await
            .unwrap()
            .len(),
        1
    );
    let err = ro
        .register_wal_archive(
            &audit(),
            &NewWalArchive {
                server: "bs2.example.org".into(),
                node: "pg1.example.org".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

/// The agent's state report shows in show_wal_archives (receiver, slot, lag); a node or server
/// with a live archive is not deleted, and once the archive is gone the node's ledger goes too.
#[tokio::test(flavor = "current_thread")]
async fn archive_state_and_deleting_what_an_archive_uses() {
    let e = env().await;
    let (id, _) = archive(&e, "bs1.example.org", "pg1.example.org").await;
    e.cat
        .report_wal_objects(1, &[seg(1, 1, 1, "a"), seg(1, 1, 2, "a")])
        .await
        .unwrap();
    let state = pgbackman_db::wal::ArchiveState {
        receiver_state: "streaming".into(),
        receiver_error: None,
        slot_wal_status: Some("reserved".into()),
        slot_retained_bytes: Some(48 << 20),
        node_lsn: Some(lsn(3 * SEG + (SEG / 2))),
    };
    assert!(e.cat.report_wal_archive_state(1, id, &state).await.unwrap());
    assert!(
        !e.cat.report_wal_archive_state(2, id, &state).await.unwrap(),
        "another server's archive is not changed"
    );
    let a = e.cat.show_wal_archives(&None, &None, false).await.unwrap();
    assert_eq!(text(a.get(0, "Receiver")), "streaming");
    assert_eq!(text(a.get(0, "Slot WAL status")), "reserved");
    assert_eq!(text(a.get(0, "Lag")), "8192 kB");

    for (sql, what) in [
        (
            "select api.delete_pgsql_node('pg1.example.org')",
            "PgSQL node pg1.example.org",
        ),
        (
            "select api.delete_backup_server('bs1.example.org')",
            "backup server bs1.example.org",
        ),
    ] {
        let err = e.owner.batch_execute(sql).await.unwrap_err();
        let msg = DbError::from(err).to_string();
        assert!(
            msg.contains(&format!("{what} still has a WAL archive")),
            "{msg}"
        );
        assert!(
            msg.contains("delete_wal_archive bs1.example.org pg1.example.org"),
            "{msg}"
        );
    }
    e.cat
        .delete_wal_archive(&audit(), "bs1.example.org", "pg1.example.org")
        .await
        .unwrap();
    e.owner
        .query_one("select api.wal_archive_slot_dropped(1, $1)", &[&id])
        .await
        .unwrap();
    e.owner
        .batch_execute("select api.delete_pgsql_node('pg1.example.org')")
        .await
        .unwrap();
    let left: i64 = e
        .owner
        .query_one(
            "select (select count(*) from wal_object) + (select count(*) from wal_run) + (select count(*) from wal_archive)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
