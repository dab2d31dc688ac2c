//! The WAL archive commands through the real `pgbackman` binary (`-C`): registering and deleting
//! an archive, and the ledger listings over rows an agent reported (api.report_wal_objects, as
//! the agent's WAL receiver will call it).

mod common;
use common::Env;
use serde_json::{Value, json};

const SEG: u64 = 16 * 1024 * 1024;

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

fn segment(tli: u32, segno: u64) -> Value {
    let sha = format!("{:0>64x}", segno * 7919 + u64::from(tli));
    json!({
        "node_id": 1, "system_identifier": "7412345678901234567", "timeline": tli, "segno": segno,
        "kind": "full", "seg_size": SEG, "start_lsn": lsn(segno * SEG), "end_lsn": lsn((segno + 1) * SEG),
        "size": SEG, "stored_size": 1_500_000, "sha256": sha, "stored_sha256": sha, "codec": "zstd",
        "stored_path": format!("wal/{tli:08X}/{segno:016X}.zst"), "arrival": "stream",
        "header_check": "PASSED", "arrived_at": "2026-05-01T12:00:00Z"
    })
}

fn field<'a>(v: &'a Value, list: &str, i: usize, key: &str) -> &'a Value {
    &v[list][i][key]
}

#[test]
fn wal_archive_commands() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    env.sql("insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING')");

    let out = env
        .cmd("register_wal_archive bs1.example.org pg1.example.org --max-lag 128MB")
        .ok();
    assert!(
        out.stdout
            .contains("[DONE] WAL archive registered as ArchiveID 1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("slot pgbackman_bs1"), "{}", out.stdout);
    env.cmd("register_wal_archive bs1.example.org pg1.example.org")
        .fails_with("already has a WAL archive on backup server bs1.example.org");
    env.cmd("register_wal_archive bs1.example.org pg1.example.org --slot Bad-Slot")
        .fails_with("replication slot name \"Bad-Slot\" is not valid");
    env.cmd("register_wal_archive bs1.example.org pg1.example.org --max-lag much")
        .fails_with("--max-lag \"much\" is not a size");

    // The agent of the server hears of every change of its archives (the state report too).
    let heard = env.catalog.psql(
        "pgbackman",
        "listen pgbackman_server_1; select api.report_wal_archive_state(1, 1, 'starting', null, null, null, null);",
    );
    assert!(
        heard.contains("pgbackman_server_1") && heard.contains("wal_archive"),
        "{heard}"
    );
    let a = env.json("show_wal_archives");
    assert_eq!(a["wal_archives"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(field(&a, "wal_archives", 0, "slot"), "pgbackman_bs1");
    assert_eq!(field(&a, "wal_archives", 0, "max_lag"), "128 MB");
    assert_eq!(field(&a, "wal_archives", 0, "receiver"), "starting");
    let table = env.cmd("show_wal_archives").ok().stdout;
    assert!(table.contains("starting"), "{table}");

    // What the agent's receiver will report: segments 1, 2 and 4 of timeline 1.
    let batch = json!([segment(1, 1), segment(1, 2), segment(1, 4)]);
    let recorded = env.sql(&format!(
        "select string_agg(outcome, ',' order by item) from api.report_wal_objects(1, '{batch}'::jsonb)"
    ));
    assert_eq!(recorded, "recorded,recorded,recorded");

    let s = env.json("show_wal_segments pg1.example.org --timeline 1");
    let names: Vec<_> = s["wal_segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["wal_file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000004"
        ]
    );
    assert_eq!(field(&s, "wal_segments", 0, "start_lsn"), "0/1000000");
    let s = env.json("show_wal_segments pg1.example.org --from 0/3000000");
    assert_eq!(s["wal_segments"].as_array().unwrap().len(), 1, "{s}");
    env.cmd("show_wal_segments pg1.example.org --timeline zero")
        .fails_with("--timeline \"zero\" is not a timeline");

    let w = env.json("show_recovery_window pg1.example.org");
    assert_eq!(w["recovery_window"].as_array().unwrap().len(), 2, "{w}");
    assert_eq!(field(&w, "recovery_window", 0, "from_lsn"), "0/4000000");
    assert_eq!(field(&w, "recovery_window", 0, "to_lsn"), "0/5000000");
    let why = field(&w, "recovery_window", 0, "starts_at")
        .as_str()
        .unwrap();
    assert!(
        why.contains("hole") && why.contains("000000010000000000000003"),
        "{why}"
    );
    assert_eq!(field(&w, "recovery_window", 1, "from_lsn"), "0/1000000");
    let h = env.json("show_recovery_window pg1.example.org --holes");
    assert_eq!(h["wal_holes"].as_array().unwrap().len(), 1, "{h}");
    assert_eq!(
        field(&h, "wal_holes", 0, "first_missing"),
        "000000010000000000000003"
    );
    let a = env.json("show_wal_archives");
    assert_eq!(
        field(&a, "wal_archives", 0, "last_segment"),
        "000000010000000000000004"
    );
    assert_eq!(field(&a, "wal_archives", 0, "restorable_from"), "0/4000000");

    let out = env
        .cmd("delete_wal_archive bs1.example.org pg1.example.org")
        .ok();
    assert!(out.stdout.contains("is being deleted"), "{}", out.stdout);
    let a = env.json("show_wal_archives");
    assert_eq!(field(&a, "wal_archives", 0, "status"), "DELETING");
    env.cmd("delete_wal_archive bs1.example.org pg1.example.org")
        .fails_with("already being deleted");
    // The ledger stays: retention, not the deletion, removes archived WAL.
    assert_eq!(env.sql("select count(*) from wal_object"), "3");
}
