//! Base backups in the catalog against a real cluster: BASEBACKUP definitions and their options
//! (validated, clear errors), the WAL a base backup still misses in the ledger (a `.partial`
//! counts up to its end), the set recorded by report_backup with its physical facts, and the
//! recovery chains and windows that list it.

mod common;

use pgbackman_db::wal::{NewWalArchive, WalObject};
use pgbackman_db::{Audit, Catalog, DefinitionOptions, NewDefinition, Value};
use pgbackman_testkit::TestCluster;

const SEG: u64 = 16 * 1024 * 1024;
const SYSID: &str = "7412345678901234567";

struct Env {
    _pg: TestCluster,
    owner: tokio_postgres::Client,
    cat: Catalog,
}

async fn env() -> Env {
    let (pg, owner, cat) = common::catalog(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING');",
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

fn seg(segno: u64, kind: &str, end: u64) -> WalObject {
    let sha = format!("{:0>64}", format!("{segno:x}{}", kind.len()));
    WalObject {
        node_id: 1,
        system_identifier: SYSID.into(),
        timeline: 1,
        segno: Some(segno),
        kind: kind.into(),
        seg_size: SEG as u32,
        start_lsn: Some(lsn(segno * SEG)),
        end_lsn: Some(lsn(end)),
        size: SEG,
        stored_size: 1_000_000,
        sha256: sha.clone(),
        stored_sha256: sha,
        codec: "zstd".into(),
        stored_path: format!("wal/{segno:016X}.{kind}.zst"),
        arrival: "stream".into(),
        header_check: "PASSED".into(),
        header_detail: None,
        arrived_at: chrono::Utc::now(),
        history: vec![],
    }
}

fn def(code: &str, options: DefinitionOptions) -> NewDefinition {
    NewDefinition {
        server: "bs1.example.org".into(),
        node: "pg1.example.org".into(),
        dbname: if code == "FULL" {
            "app".into()
        } else {
            String::new()
        },
        minutes: Some("0".into()),
        hours: Some("1".into()),
        code: Some(code.into()),
        encryption: Some(false),
        encryption_key: None,
        options,
        ..Default::default()
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Text(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn basebackup_definitions_take_validated_pg_basebackup_options() {
    let e = env().await;
    let d = e
        .cat
        .register_backup_definitions(
            &audit(),
            &[def(
                "basebackup",
                DefinitionOptions {
                    checkpoint: Some("spread".into()),
                    max_rate: Some("50M".into()),
                    wal_wait: Some("5 minutes".into()),
                    ..Default::default()
                },
            )],
        )
        .await
        .unwrap();
    assert_eq!(d[0].code, "BASEBACKUP");
    assert_eq!(d[0].dbname, "", "node-level: no database");
    let r = e
        .owner
        .query_one(
            "select checkpoint, max_rate, wal_wait_timeout::text, compression_level from backup_definition where def_id = $1",
            &[&d[0].def_id],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "spread");
    assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some("50M"));
    assert_eq!(r.get::<_, String>(2), "00:05:00");
    // zstd 1 by default for a base backup's tar (bench/README.md), a level given wins.
    assert_eq!(r.get::<_, i32>(3), 1);
    let given = e
        .cat
        .register_backup_definitions(
            &audit(),
            &[NewDefinition {
                minutes: Some("30".into()),
                ..def(
                    "BASEBACKUP",
                    DefinitionOptions {
                        compression_level: Some(4),
                        ..Default::default()
                    },
                )
            }],
        )
        .await
        .unwrap();
    let level: i32 = e
        .owner
        .query_one(
            "select compression_level from backup_definition where def_id = $1",
            &[&given[0].def_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, 4);
    for (o, needle) in [
        (
            DefinitionOptions {
                checkpoint: Some("slow".into()),
                ..Default::default()
            },
            "checkpoint \"slow\" is not valid",
        ),
        (
            DefinitionOptions {
                max_rate: Some("10".into()),
                ..Default::default()
            },
            "outside 32k to 1024M",
        ),
        (
            DefinitionOptions {
                max_rate: Some("fast".into()),
                ..Default::default()
            },
            "is not a transfer rate",
        ),
    ] {
        let mut x = def("BASEBACKUP", o);
        x.minutes = Some("7".into());
        let err = e
            .cat
            .register_backup_definitions(&audit(), &[x])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
        assert!(err.contains("HINT"), "{err}");
    }
    // Base-backup options on a logical definition are refused, naming the code.
    let err = e
        .cat
        .register_backup_definitions(
            &audit(),
            &[def(
                "FULL",
                DefinitionOptions {
                    checkpoint: Some("fast".into()),
                    ..Default::default()
                },
            )],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("BASEBACKUP definitions only"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_base_backup_is_recorded_and_joins_the_ledger_by_lsn() {
    let e = env().await;
    e.cat
        .register_wal_archive(
            &audit(),
            &NewWalArchive {
                server: "bs1.example.org".into(),
                node: "pg1.example.org".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let d = e
        .cat
        .register_backup_definitions(&audit(), &[def("BASEBACKUP", Default::default())])
        .await
        .unwrap();
    // Segments 2 and 3 full, 4 partial up to 4*SEG + 100.
    e.cat
        .report_wal_objects(
            1,
            &[
                seg(2, "full", 3 * SEG),
                seg(3, "full", 4 * SEG),
                seg(4, "partial", 4 * SEG + 100),
            ],
        )
        .await
        .unwrap();
    let (start, stop) = (lsn(2 * SEG + 40), lsn(4 * SEG + 60));
    let missing = e
        .cat
        .base_backup_missing_wal(1, 1, SYSID, 1, &start, &stop, SEG as i32)
        .await
        .unwrap();
    assert!(
        missing.is_empty(),
        "a .partial reaching stop counts: {missing:?}"
    );
    let beyond = e
        .cat
        .base_backup_missing_wal(1, 1, SYSID, 1, &start, &lsn(5 * SEG + 8), SEG as i32)
        .await
        .unwrap();
    assert_eq!(
        beyond,
        ["000000010000000000000004", "000000010000000000000005"],
        "a .partial that ends before stop does not count"
    );

    // The job and its report.
    let job: i64 = e
        .owner
        .query_one(
            "insert into job (kind, backup_server_id, pgsql_node_id, def_id, state, attempt)
             values ('BACKUP', 1, 1, $1, 'RUNNING', 1) returning job_id",
            &[&d[0].def_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        e.cat
            .job_wait_note(1, job, 1, Some("WAL 000000010000000000000005"))
            .await
            .unwrap()
    );
    let q = e.cat.show_jobs_queue(&None, false).await.unwrap();
    assert_eq!(
        text(q.get(0, "Waiting for")),
        "WAL 000000010000000000000005"
    );
    let now = chrono::Utc::now().to_rfc3339();
    let result = serde_json::json!({
        "execution_status": "SUCCEEDED", "started": now, "finished": now,
        "backup_dir": "/b/x", "dump_file": "/b/x/base.tar.zst", "total_size": 5_000_000,
        "files": [], "verification_level": 1, "verification_state": "PASSED",
        "base_backup": {
            "system_identifier": SYSID, "timeline": 1, "start_lsn": start, "stop_lsn": stop,
            "start_time": now, "stop_time": now, "start_wal_file": "000000010000000000000002",
            "seg_size": SEG, "wal_method": "none", "tablespaces": [],
            "manifest_state": "PASSED", "files_checked": 950, "missing_wal": []
        }
    });
    let bck = e.cat.report_backup(job, 1, &result).await.unwrap();
    let det = e.cat.show_backup_details(bck).await.unwrap();
    assert_eq!(text(det.get(0, "Code")), "BASEBACKUP");
    assert_eq!(text(det.get(0, "Base backup state")), "SUCCEEDED");
    assert_eq!(text(det.get(0, "Start LSN")), start);
    assert_eq!(text(det.get(0, "Stop LSN")), stop);
    assert_eq!(text(det.get(0, "Manifest check")), "PASSED");
    // The chain: the base backup with the WAL after it, and the window lists it.
    let chains = e.cat.show_recovery_chains("pg1.example.org").await.unwrap();
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert_eq!(text(chains.get(0, "BckID")), bck.to_string());
    assert_eq!(text(chains.get(0, "WAL count")), "3");
    assert_eq!(text(chains.get(0, "Restorable to LSN")), lsn(4 * SEG + 100));
    let w = e.cat.show_recovery_window("pg1.example.org").await.unwrap();
    let listed = text(w.get(0, "Base backups"));
    assert!(
        listed.starts_with(&format!("BckID {bck} from {start}")),
        "{listed}"
    );
    // A base backup is not restored by restore_backup (yet), with a reason.
    let err = e
        .owner
        .query_one(
            "select api.register_restore_definition(now(), $1, 'pg1.example.org', 'x', null, null, null, null, null, null, null)",
            &[&bck],
        )
        .await
        .map(|_| ())
        .unwrap_err();
    let msg = pgbackman_db::DbError::from(err).to_string();
    assert!(msg.contains("is a base backup"), "{msg}");
}

#[tokio::test(flavor = "current_thread")]
async fn only_verified_base_backups_count_toward_redundancy() {
    let e = env().await;
    let mut d = def("BASEBACKUP", Default::default());
    d.retention_period = Some("1 day".into());
    d.retention_redundancy = Some(1);
    let d = e
        .cat
        .register_backup_definitions(&audit(), &[d])
        .await
        .unwrap();
    let row = |age: &str, state: &str| {
        format!(
            "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, backup_code, started, finished,
                                         execution_status, execution_method, verification_level, verification_state)
             values ({}, 1, 1, 'BASEBACKUP', now() - interval '{age}', now() - interval '{age}',
                     'SUCCEEDED', 'CRON', 1, '{state}') returning bck_id",
            d[0].def_id
        )
    };
    let old: i64 = e
        .owner
        .query_one(&row("3 days", "PASSED"), &[])
        .await
        .unwrap()
        .get(0);
    let newer: i64 = e
        .owner
        .query_one(&row("2 days", "FAILED"), &[])
        .await
        .unwrap()
        .get(0);
    let rows = e.cat.retention_rows_of_server(1).await.unwrap();
    let plan: Vec<(i64, String)> = rows
        .plan()
        .iter()
        .map(|(r, rule)| (r.bck_id, format!("{rule:?}")))
        .collect();
    assert!(
        plan.contains(&(old, "Redundancy(1)".into())),
        "the verified one is kept for redundancy: {plan:?}"
    );
    assert!(
        plan.contains(&(newer, "FailedExpired".into())),
        "a base backup that failed verification does not count: {plan:?}"
    );
}

/// Restore drills decide which base backups are good for redundancy (sql/90_drills.sql): the
/// last drill passed, or none yet and newer than the newest one whose drill passed; a failed
/// drill never counts; a definition never drilled counts every verified one.
#[tokio::test(flavor = "current_thread")]
async fn base_backups_count_toward_redundancy_by_their_drills() {
    let e = env().await;
    let mut d = def("BASEBACKUP", Default::default());
    d.retention_period = Some("1 day".into());
    d.retention_redundancy = Some(2);
    let d = e
        .cat
        .register_backup_definitions(&audit(), &[d])
        .await
        .unwrap();
    let mut ids = Vec::new();
    for age in ["5 days", "4 days", "3 days", "2 days"] {
        let id: i64 = e
            .owner
            .query_one(
                &format!(
                    "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, backup_code, started, finished,
                                                 execution_status, execution_method, verification_level, verification_state)
                     values ({}, 1, 1, 'BASEBACKUP', now() - interval '{age}', now() - interval '{age}',
                             'SUCCEEDED', 'CRON', 1, 'PASSED') returning bck_id",
                    d[0].def_id
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    let counts = async |id: i64| -> bool {
        e.owner
            .query_one("select api.base_backup_counts($1)", &[&id])
            .await
            .unwrap()
            .get(0)
    };
    for id in &ids {
        assert!(
            counts(*id).await,
            "never drilled: every verified one counts"
        );
    }
    // ids[1]'s drill passed, ids[2]'s failed; ids[0] is older than the passed one, ids[3] newer.
    for (id, state) in [(ids[1], "PASSED"), (ids[2], "FAILED")] {
        e.owner
            .batch_execute(&format!(
                "with j as (insert into job (kind, backup_server_id, bck_id, state) values ('DRILL', 1, {id}, 'SUCCEEDED') returning job_id)
                 insert into verification (job_id, bck_id, kind, level, state, started, finished)
                 select job_id, {id}, 'DRILL', 3, '{state}', now(), now() from j;
                 update backup_catalog set verification_level = 3, verification_state = '{state}' where bck_id = {id}"
            ))
            .await
            .unwrap();
    }
    let got: Vec<bool> = [
        counts(ids[0]).await,
        counts(ids[1]).await,
        counts(ids[2]).await,
        counts(ids[3]).await,
    ]
    .into();
    assert_eq!(got, vec![false, true, false, true]);
    // Redundancy 2 keeps the two good ones (Redundancy(1), (2)); the others expire.
    let rows = e.cat.retention_rows_of_server(1).await.unwrap();
    let plan: Vec<(i64, String)> = rows
        .plan()
        .iter()
        .map(|(r, rule)| (r.bck_id, format!("{rule:?}")))
        .collect();
    for id in [ids[1], ids[3]] {
        assert!(
            plan.iter()
                .any(|(b, r)| *b == id && r.starts_with("Redundancy")),
            "{id} kept: {plan:?}"
        );
    }
    for id in [ids[0], ids[2]] {
        assert!(
            !plan
                .iter()
                .any(|(b, r)| *b == id && r.starts_with("Redundancy")),
            "{id} not kept for redundancy: {plan:?}"
        );
    }
}

/// A year of a busy node (500,000 segments, one hole) with a base backup every ~3.5 days (100):
/// the recovery window with its base backups and the chains answer from the runs, in well under
/// the 100 ms on a quiet machine (bounded here for a loaded one).
#[tokio::test(flavor = "current_thread")]
async fn recovery_chains_at_500000_segments_and_100_base_backups() {
    let e = env().await;
    e.cat
        .register_wal_archive(
            &audit(),
            &NewWalArchive {
                server: "bs1.example.org".into(),
                node: "pg1.example.org".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let d = e
        .cat
        .register_backup_definitions(&audit(), &[def("BASEBACKUP", Default::default())])
        .await
        .unwrap();
    e.owner
        .batch_execute(&format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                     arrival, header_check, arrived_at)
             select 1, 1, {SYSID}, 1, g, 'full', {SEG}, ('0/0'::pg_lsn + g * {SEG}::numeric), ('0/0'::pg_lsn + (g + 1) * {SEG}::numeric),
                    {SEG}, 2000000, md5(g::text) || md5(g::text), md5(g::text) || md5(g::text), 'zstd',
                    'wal/' || g, 'stream', 'PASSED', timestamptz '2025-01-01' + g * interval '63 seconds'
               from generate_series(1, 500000) g where g <> 250000;
             with c as (
                 insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, backup_code, started, finished,
                                             execution_status, execution_method, total_size, verification_level,
                                             verification_state)
                 select {def}, 1, 1, 'BASEBACKUP', now(), now(), 'SUCCEEDED', 'CRON', 1000000000 + k, 1, 'PASSED'
                   from generate_series(1, 100) k
                 returning bck_id, total_size - 1000000000 as k)
             insert into base_backup (bck_id, pgsql_node_id, backup_server_id, system_identifier, timeline, start_lsn,
                                      stop_lsn, wal_method, manifest_state, state)
             select bck_id, 1, 1, {SYSID}, 1, '0/0'::pg_lsn + (k * 4900 + 10) * {SEG}::numeric + 40,
                    '0/0'::pg_lsn + (k * 4900 + 11) * {SEG}::numeric + 80, 'none', 'PASSED', 'SUCCEEDED'
               from c;
             analyze;",
            def = d[0].def_id
        ))
        .await
        .unwrap();
    let mut worst = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let w = e.cat.show_recovery_window("pg1.example.org").await.unwrap();
        let dw = t.elapsed();
        assert_eq!(w.len(), 2, "{w:?}");
        let newest = text(w.get(0, "Base backups"));
        assert_eq!(newest.matches("BckID").count(), 49, "{newest}");
        let t = std::time::Instant::now();
        let c = e.cat.show_recovery_chains("pg1.example.org").await.unwrap();
        let dc = t.elapsed();
        assert_eq!(c.len(), 100);
        // Backups before the hole (segment 250000) restore only up to it.
        let restorable = (0..c.len())
            .filter(|&i| text(c.get(i, "Restorable to LSN")) == lsn(500001 * SEG))
            .count();
        assert_eq!(restorable, 49);
        worst = (worst.0.max(dw), worst.1.max(dc));
    }
    eprintln!(
        "at 500,000 segments and 100 base backups: show_recovery_window {:?}, --chains {:?} (worst of 3)",
        worst.0, worst.1
    );
    assert!(worst.0 < std::time::Duration::from_millis(300), "{worst:?}");
    assert!(worst.1 < std::time::Duration::from_millis(300), "{worst:?}");
}
