//! WAL conditions against a real catalog (sql/87_wal_monitor.sql): each sample an agent could
//! report opens the conditions it implies once (one alert each, naming the node and what to
//! do), keeps them while they hold, clears them when the cause goes, and leaves alone what a
//! node that did not answer cannot tell; and the report's cost with a year of ledger.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use pgbackman_db::wal::{NewWalArchive, WalObject};
use pgbackman_db::{Audit, Catalog};
use pgbackman_testkit::TestCluster;
use serde_json::json;

const SEG: u64 = 16 * 1024 * 1024;
const SYSID: &str = "7412345678901234567";

struct Env {
    _pg: TestCluster,
    owner: tokio_postgres::Client,
    cat: Catalog,
}

/// A catalog with backup server bs1 and node pg1, archived by bs1.
async fn env() -> Env {
    let (pg, owner, cat) = common::catalog(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING');",
    )
    .await;
    cat.register_wal_archive(
        &Audit {
            os_user: "tester".into(),
            command: "test".into(),
        },
        &NewWalArchive {
            server: "bs1.example.org".into(),
            node: "pg1.example.org".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Env {
        _pg: pg,
        owner,
        cat,
    }
}

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

fn seg(segno: u64) -> WalObject {
    let sha = format!("{segno:064x}");
    WalObject {
        node_id: 1,
        system_identifier: SYSID.into(),
        timeline: 1,
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
        stored_path: format!("wal/{segno:016X}.zst"),
        arrival: "stream".into(),
        header_check: "PASSED".into(),
        header_detail: None,
        arrived_at: Utc::now(),
        history: vec![],
    }
}

async fn one(e: &Env, q: &str) -> String {
    e.owner
        .query_one(&format!("select ({q})::text"), &[])
        .await
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

async fn open_codes(e: &Env) -> String {
    one(
        e,
        "select coalesce(string_agg(code || coalesce(':' || nullif(subject, ''), ''), ',' order by code, subject), '')
           from wal_condition where cleared is null",
    )
    .await
}

async fn report(e: &Env, s: serde_json::Value) -> (i32, i32) {
    e.cat
        .report_replication_sample(1, 1, Utc::now(), Some("primary"), None, &s)
        .await
        .unwrap()
}

async fn msg(e: &Env, alert_type: &str) -> String {
    one(
        e,
        &format!("select error_message from alert where alert_type = '{alert_type}'"),
    )
    .await
}

/// A healthy primary at `node_lsn`: the archive's slot active and small.
fn healthy(node_lsn: u64) -> serde_json::Value {
    json!({
        "role": "primary", "server_version": "15", "node_lsn": lsn(node_lsn),
        "standbys": [], "wal_receiver": null, "replay": null,
        "slots": [{"slot_name": "pgbackman_bs1", "slot_type": "physical", "active": true,
                   "restart_lsn": lsn(node_lsn), "wal_status": "reserved", "safe_wal_size": null,
                   "retained_bytes": 0}],
        "receiver": {"state": "streaming", "down_since": null, "stalls": 0}
    })
}

#[tokio::test(flavor = "current_thread")]
async fn conditions_open_once_hold_and_clear() {
    let e = env().await;
    e.cat
        .report_wal_objects(1, &[seg(1), seg(2), seg(4)])
        .await
        .unwrap();
    // A node far ahead of the ledger, a forgotten slot past the threshold, an old slot lost, a
    // standby behind, a receiver down for 10 minutes without a client of the node's major.
    let mut bad = healthy(5 * SEG + 200 * 1024 * 1024);
    bad["slots"] = json!([
        {"slot_name": "pgbackman_bs1", "slot_type": "physical", "active": false,
         "wal_status": "extended", "retained_bytes": 9u64 << 30, "safe_wal_size": null},
        {"slot_name": "old", "slot_type": "physical", "active": false, "wal_status": "lost",
         "retained_bytes": null}
    ]);
    bad["standbys"] = json!([
        {"application_name": "s1", "client_addr": "10.0.0.5", "replay_lag_bytes": 2u64 << 30,
         "replay_lag": "00:05:00"},
        {"application_name": "pgbackman_walreceiver", "client_addr": "10.0.0.9",
         "replay_lag_bytes": 3u64 << 30}
    ]);
    bad["receiver"] = json!({
        "state": "no_client", "error": "no pg_receivewal for PostgreSQL 18",
        "down_since": (Utc::now() - chrono::Duration::minutes(10)), "stalls": 0
    });
    let (open, holes) = report(&e, bad.clone()).await;
    assert_eq!((open, holes), (7, 1));
    let all = "REPLICATION_LAG:s1@10.0.0.5,WAL_HOLE:000000010000000000000003,WAL_RECEIVER_DOWN,\
               WAL_RECEIVER_LAG,WAL_SLOT_LOST:old,WAL_SLOT_RETAINED:pgbackman_bs1,WAL_VERSION";
    assert_eq!(open_codes(&e).await, all);
    assert_eq!(one(&e, "select count(*) from alert").await, "7");
    let m = msg(&e, "WAL_VERSION").await;
    assert!(m.contains("PgSQL node pg1.example.org"), "{m}");
    assert!(m.contains("Install the PostgreSQL client programs"), "{m}");
    let m = msg(&e, "WAL_SLOT_RETAINED").await;
    assert!(m.contains("holds 9216 MB of WAL (threshold 8192 MB"), "{m}");
    assert!(m.contains("nobody reads it now"), "{m}");
    let m = msg(&e, "WAL_RECEIVER_LAG").await;
    assert!(m.contains("is 200 MB behind the node"), "{m}");
    assert!(m.contains("the archive's --max-lag"), "{m}");
    let m = msg(&e, "WAL_HOLE").await;
    assert!(
        m.contains("000000010000000000000003 to 000000010000000000000003"),
        "{m}"
    );

    // Still true: no new alert. The node stops answering: what only it can tell stays open,
    // the receiver's and the ledger's conditions are still judged.
    report(&e, bad.clone()).await;
    let mut blind = json!({"receiver": bad["receiver"].clone()});
    blind["receiver"]["state"] = json!("restarting");
    let (open, _) = e
        .cat
        .report_replication_sample(1, 1, Utc::now(), None, Some("connection refused"), &blind)
        .await
        .unwrap();
    assert_eq!(open, 6, "WAL_VERSION cleared, the others kept");
    assert_eq!(one(&e, "select count(*) from alert").await, "7");
    let rows = e
        .cat
        .show_replication_status("pg1.example.org")
        .await
        .unwrap();
    assert_eq!(rows.len(), 2 + 6, "node, pgbackman receiver, six alerts");

    // Healthy again, and the hole filled: everything clears, nothing new is raised.
    e.cat.report_wal_objects(1, &[seg(3)]).await.unwrap();
    let (open, holes) = report(&e, healthy(5 * SEG + 1000)).await;
    assert_eq!((open, holes), (0, 0));
    assert_eq!(one(&e, "select count(*) from alert").await, "7");
    assert_eq!(
        one(
            &e,
            "select count(*) from wal_condition where cleared is not null"
        )
        .await,
        "7"
    );
    // A new episode is a new alert.
    report(&e, bad).await;
    assert_eq!(one(&e, "select count(*) from alert").await, "13");

    // Thresholds are node parameters, checked.
    e.owner
        .batch_execute(
            "select api.update_pgsql_node_config('pg1.example.org', 'slot_retained_wal_threshold', '16GB')",
        )
        .await
        .unwrap();
    let err = e
        .owner
        .batch_execute(
            "select api.update_pgsql_node_config('pg1.example.org', 'replication_lag_threshold', 'lots')",
        )
        .await
        .unwrap_err();
    let m = pgbackman_db::DbError::from(err).to_string();
    assert!(
        m.contains("replication_lag_threshold \"lots\" is not a size"),
        "{m}"
    );
    assert!(m.contains("64MB"), "{m}");
}

/// The report's cost with a year of a busy node in the ledger (500,000 segments, 3 holes):
/// the conditions read the runs, never the segments.
#[tokio::test(flavor = "current_thread")]
async fn report_cost_at_500000_segments() {
    let e = env().await;
    e.owner
        .batch_execute(&format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                     arrival, header_check, arrived_at)
             select 1, 1, {SYSID}, 1, g, 'full', {SEG}, ('0/0'::pg_lsn + g * {SEG}::numeric), ('0/0'::pg_lsn + (g + 1) * {SEG}::numeric),
                    {SEG}, 2000000, md5(g::text) || md5(g::text), md5(g::text) || md5(g::text), 'zstd',
                    'wal/' || g, 'stream', 'PASSED', timestamptz '2025-01-01' + g * interval '63 seconds'
               from generate_series(1, 500003) g
              where g not in (1000, 250000, 400000);
             analyze wal_object; analyze wal_run;"
        ))
        .await
        .unwrap();
    let s = healthy(500004 * SEG);
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let (open, holes) = e
            .cat
            .report_replication_sample(1, 1, Utc::now(), Some("primary"), None, &s)
            .await
            .unwrap();
        worst = worst.max(t.elapsed());
        assert_eq!((open, holes), (3, 3));
    }
    let t = Instant::now();
    let rows = e
        .cat
        .show_replication_status("pg1.example.org")
        .await
        .unwrap();
    let show = t.elapsed();
    assert_eq!(rows.len(), 6);
    eprintln!(
        "report_replication_sample at 500,000 segments: worst of 5 {worst:?}; show_replication_status {show:?}"
    );
    assert!(worst < Duration::from_millis(500), "{worst:?}");
}
