//! Point-in-time planning from the catalog alone (issue 12), on a ledger with a promotion: the
//! base backup is the newest before the target on the target timeline's lineage (one taken on
//! the old timeline after the fork is not), each segment comes from the timeline that holds it
//! (the switch segment from the child), the history file is planned; refusals for an unknown
//! timeline, a point before the first base backup, a hole and a point after the archive's end.

mod common;

use common::Env;

const SEG: i64 = 16 * 1024 * 1024;

fn lsn(seg: i64, off: i64) -> String {
    let v = seg * SEG + off;
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The ledger of node 1 on server 1: timeline 1 segments 1..=10, timeline 2 (from 0/8000100)
/// segments 8..=12, its history file; base backups 1 (timeline 1, segment 2), 2 (timeline 1,
/// segment 9: after the fork), 3 (timeline 2, segment 11).
fn ledger(env: &Env) {
    env.register_backup_servers(&["bs1"]);
    env.cmd("register_pgsql_node 127.0.0.9 \"\" 5432 postgres RUNNING n")
        .ok();
    env.cmd(
        "register_backup_definition bs1.example.org 127.0.0.9 \"\" \"\" 0 1 \"*\" \"*\" \"*\" BASEBACKUP false \"7 days\" 1 \"\" ACTIVE phys",
    )
    .ok();
    let obj = |tl: i64, from: i64, to: i64| {
        format!(
            "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                     start_lsn, end_lsn, size, stored_size, sha256, stored_sha256, codec, stored_path,
                                     arrival, header_check, arrived_at)
             select 1, 1, 42, {tl}, s, 'full', {SEG}, ('0/0'::pg_lsn + s * {SEG}), ('0/0'::pg_lsn + (s + 1) * {SEG}),
                    {SEG}, 1000, repeat('a', 64), repeat('b', 64), 'zstd', '/wal/' || {tl} || '/' || s, 'stream', 'PASSED',
                    timestamptz '2026-01-01 00:00+00' + s * interval '1 minute' + {tl} * interval '1 second'
               from generate_series({from}, {to}) s"
        )
    };
    env.sql(&obj(1, 1, 10));
    env.sql(&obj(2, 8, 12));
    env.sql(&format!(
        "insert into wal_object (pgsql_node_id, backup_server_id, system_identifier, timeline, segno, kind, seg_size,
                                 size, stored_size, sha256, stored_sha256, codec, stored_path, arrival, header_check, arrived_at)
         values (1, 1, 42, 2, null, 'history', {SEG}, 40, 30, repeat('c', 64), repeat('d', 64), 'zstd', '/wal/2.history',
                 'stream', 'NOT_CHECKED', '2026-01-01 00:08+00');
         insert into timeline_history (pgsql_node_id, system_identifier, timeline, parent, switch_lsn)
         values (1, 42, 2, 1, '{}')",
        lsn(8, 0x100)
    ));
    for (bck, tl, seg) in [(1, 1, 2), (2, 1, 9), (3, 2, 11)] {
        env.sql(&format!(
            "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, backup_code, started, finished, execution_status,
                                         execution_method, backup_dir, total_size)
             values (1, 1, 1, 'BASEBACKUP', '2026-01-01 00:00+00', '2026-01-01 00:00+00', 'SUCCEEDED', 'MANUAL', '/sets/{bck}', 5000);
             insert into base_backup (bck_id, pgsql_node_id, backup_server_id, system_identifier, timeline, start_lsn,
                                      stop_lsn, start_time, stop_time, seg_size, wal_method, manifest_state, state)
             values ({bck}, 1, 1, 42, {tl}, '{}', '{}', timestamptz '2026-01-01 00:00+00' + {seg} * interval '1 minute',
                     timestamptz '2026-01-01 00:00:30+00' + {seg} * interval '1 minute', {SEG}, 'none', 'PASSED', 'SUCCEEDED')",
            lsn(seg, 0x28),
            lsn(seg, 0x100)
        ));
    }
}

fn plan(env: &Env, bck: &str, kind: &str, value: &str, tl: &str) -> serde_json::Value {
    serde_json::from_str(&env.sql(&format!(
        "select api.pitr_plan(1, {bck}, '{kind}', '{value}', '{tl}')"
    )))
    .unwrap()
}

fn refusal(env: &Env, bck: &str, kind: &str, value: &str, tl: &str) -> String {
    let o = env
        .catalog
        .cluster()
        .psql(
            "pgbackman",
            &format!("select api.pitr_plan(1, {bck}, '{kind}', '{value}', '{tl}')"),
        )
        .unwrap_err();
    o.to_string()
}

fn names(p: &serde_json::Value, key: &str) -> Vec<String> {
    p[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn plans_follow_the_timeline_lineage_and_refuse_what_the_archive_lacks() {
    let env = Env::new();
    ledger(&env);

    // On timeline 2 (latest) past the fork: base backup 1 (2 is on timeline 1 after the fork,
    // 3 ends after the target), timeline 1 up to the segment before the switch, then 2.
    let p = plan(&env, "null", "lsn", &lsn(10, 0), "latest");
    assert_eq!(p["bck_id"], 1, "{p}");
    assert_eq!(p["timeline"], 2);
    let wal = names(&p, "wal");
    assert_eq!(wal.first().unwrap(), "000000010000000000000002");
    assert!(
        wal.contains(&"000000010000000000000007".to_string()),
        "{wal:?}"
    );
    assert!(
        wal.contains(&"000000020000000000000008".to_string()),
        "{wal:?}"
    );
    assert!(
        !wal.contains(&"000000010000000000000008".to_string()),
        "{wal:?}"
    );
    assert_eq!(wal.last().unwrap(), "00000002000000000000000A");
    assert_eq!(names(&p, "history"), ["00000002.history"]);
    assert_eq!(p["wal_segments"], 9);
    assert_eq!(p["fetch_bytes"], 5000 + 9 * 1000);

    // On timeline 1 after the fork: base backup 2, its own segment only.
    let p = plan(&env, "null", "lsn", &lsn(9, 0x800000), "1");
    assert_eq!(p["bck_id"], 2, "{p}");
    assert_eq!(names(&p, "wal"), ["000000010000000000000009"]);
    assert_eq!(names(&p, "history"), Vec::<String>::new());
    // current = the base backup's timeline.
    assert_eq!(plan(&env, "3", "immediate", "", "current")["timeline"], 2);
    // A time target: up to the first segment that arrived at or after it.
    let p = plan(&env, "null", "time", "2026-01-01 00:12:00.5+00", "latest");
    assert_eq!(p["bck_id"], 3, "{p}");
    assert_eq!(
        names(&p, "wal"),
        ["00000002000000000000000B", "00000002000000000000000C"]
    );
    let p = plan(&env, "null", "time", "2026-01-01 00:10:00.5+00", "latest");
    assert_eq!(p["bck_id"], 1, "{p}");
    assert_eq!(p["wal_segments"], 9);

    // Refusals.
    let e = refusal(&env, "null", "lsn", &lsn(10, 0), "3");
    assert!(
        e.contains("timeline 3 of PgSQL node 127.0.0.9 is not in the archive"),
        "{e}"
    );
    let e = refusal(&env, "null", "lsn", &lsn(2, 0x50), "latest");
    assert!(e.contains("before the end of the first base backup"), "{e}");
    let e = refusal(&env, "2", "lsn", &lsn(10, 0), "latest");
    assert!(
        e.contains("no base backup of PgSQL node 127.0.0.9 is on the lineage of timeline 2"),
        "{e}"
    );
    let e = refusal(&env, "null", "lsn", &lsn(14, 0), "latest");
    assert!(e.contains("after the end of the WAL archive"), "{e}");
    env.sql("delete from wal_object where timeline = 2 and segno = 9");
    let e = refusal(&env, "null", "lsn", &lsn(10, 0), "latest");
    assert!(e.contains("falls in a hole"), "{e}");
    assert!(e.contains("000000020000000000000009"), "{e}");
    // Before the hole, still restorable.
    assert_eq!(
        plan(&env, "null", "lsn", &lsn(8, 0x800000), "latest")["bck_id"],
        1
    );

    // wal-get's question: present, and confirmed absent.
    assert_ne!(
        env.sql("select api.wal_get_lookup(1, 1, 42, '00000002000000000000000A') is null"),
        "t"
    );
    assert_eq!(
        env.sql("select api.wal_get_lookup(1, 1, 42, '00000003.history') is null"),
        "t"
    );
    assert_eq!(
        env.sql("select api.wal_get_lookup(1, 1, 42, '000000020000000000000009') is null"),
        "t"
    );
}
