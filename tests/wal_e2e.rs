//! The WAL receiver end to end (issue 11): a real node (wal_level=replica), an archive
//! registered through the shell, the real agent running `pg_receivewal` on a slot it creates;
//! every completed segment is in the ledger once and on disk with its sha256, a SIGKILLed agent
//! loses no segment, and `delete_wal_archive` drops the slot.

mod common;

use std::path::Path;

use common::Env;
use common::agent::*;
use pgbackman_testkit::{Standby, TestCluster};
use sha2::Digest;

const SEG: u64 = 16 * 1024 * 1024;

/// Writes some WAL and switches to a new segment; returns the segment now being written.
fn switch(node: &TestCluster) -> u64 {
    node.psql(
        "postgres",
        "insert into t select g from generate_series(1, 1000) g; select pg_switch_wal();",
    );
    node.psql(
        "postgres",
        &format!("select floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / {SEG})::int8"),
    )
    .trim()
    .parse()
    .unwrap()
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn json_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count()
}

fn hex_sha(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every full segment of the ledger: once each, contiguous from the first to `last`, and each
/// stored file decompresses to the sha256 the ledger holds.
#[track_caller]
fn check_ledger(env: &Env, last: u64) -> u64 {
    let rows = env.sql(
        "select string_agg(concat_ws(' ', segno, sha256, stored_sha256, stored_path), ';' order by segno)
           from wal_object where kind = 'full'",
    );
    let mut segnos = Vec::new();
    for r in rows.split(';') {
        let f: Vec<&str> = r.split(' ').collect();
        let (segno, sha, stored_sha, path) = (f[0].parse::<u64>().unwrap(), f[1], f[2], f[3]);
        let stored = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(hex_sha(&stored), stored_sha, "{path}");
        let plain = zstd::decode_all(&stored[..]).unwrap();
        assert_eq!(plain.len() as u64, SEG, "{path}");
        assert_eq!(hex_sha(&plain), sha, "{path}");
        assert!(
            Path::new(path).ends_with(format!(
                "00000001/00000001{:08X}{:08X}.zst",
                segno >> 8,
                segno & 0xff
            )),
            "{path}"
        );
        segnos.push(segno);
    }
    let first = segnos[0];
    assert_eq!(
        segnos,
        (first..=last).collect::<Vec<_>>(),
        "each segment once, no hole"
    );
    assert_eq!(env.sql("select count(*) from api.wal_holes(1)"), "0");
    first
}

#[test]
fn receiver_archives_every_segment_once_across_a_kill_then_drops_its_slot() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "n");
    // What a slot and pg_receivewal need of the node.
    assert_eq!(node.psql("postgres", "show wal_level").trim(), "replica");
    assert!(
        node.psql("postgres", "show max_wal_senders")
            .trim()
            .parse::<i32>()
            .unwrap()
            >= 2
    );
    node.psql("postgres", "create table t (x int)");
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();

    // --check names what the receiver needs of the node and of this host.
    let mut agent = Agent::configure(&env, "bs1.example.org", "");
    let o = agent.command().arg("--check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "[OK] WAL archive 1 of PgSQL node 127.0.0.2:",
        "no slot yet; the agent creates it",
        "pg_receivewal for PostgreSQL 15",
        "replication connection accepted",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    assert!(!out.contains("[WARN] WAL archive"), "{out}");
    // A report the catalog will never take (a node without an archive here) is set aside and
    // holds back nothing.
    let pending = agent.state().join("wal_pending");
    std::fs::create_dir_all(&pending).unwrap();
    let sha = "0".repeat(64);
    let bogus = serde_json::json!({
        "node_id": 999, "system_identifier": "1", "timeline": 1, "segno": 1, "kind": "full",
        "seg_size": SEG, "start_lsn": "0/1000000", "end_lsn": "0/2000000", "size": SEG,
        "stored_size": 1, "sha256": sha, "stored_sha256": sha, "codec": "zstd",
        "stored_path": "/nowhere", "arrival": "stream", "header_check": "PASSED",
        "header_detail": null, "arrived_at": "2026-05-01T12:00:00Z"
    });
    std::fs::write(pending.join("n999-bogus.json"), bogus.to_string()).unwrap();
    agent.spawn(None);
    let active =
        "select count(*) from pg_replication_slots where slot_name = 'pgbackman_bs1' and active";
    wait_until("the agent's slot streaming", 30, &[&agent], || {
        node.psql("postgres", active).trim() == "1"
    });
    let mut current = 0;
    for _ in 0..3 {
        current = switch(&node);
    }
    let done = |last: u64| {
        format!("select count(*) from wal_object where kind = 'full' and segno = {last}")
    };
    wait_for(&env, &done(current - 1), "1", 30, &agent);
    let first = check_ledger(&env, current - 1);
    assert!(
        pending.join("rejected/n999-bogus.json").exists(),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("the catalog refuses WAL report"),
        "{}",
        agent.log()
    );
    assert!(current - 1 - first >= 2, "{first}..{current}");

    // A SIGKILLed agent takes pg_receivewal with it (PDEATHSIG); WAL written meanwhile stays
    // on the node for the slot, and the restarted agent loses none of it.
    agent.sigkill();
    wait_until("pg_receivewal gone with the agent", 15, &[&agent], || {
        node.psql("postgres", active).trim() == "0"
    });
    for _ in 0..2 {
        current = switch(&node);
    }
    agent.spawn(None);
    wait_for(&env, &done(current - 1), "1", 30, &agent);
    assert_eq!(check_ledger(&env, current - 1), first);

    // The catalog down: the receiver keeps storing, the reports wait in the state directory
    // and are delivered once when it is back.
    env.catalog.stop();
    for _ in 0..2 {
        current = switch(&node);
    }
    let stored = |segno: u64| {
        walk(&agent.backups()).iter().any(|p| {
            p.ends_with(format!(
                "00000001{:08X}{:08X}.zst",
                segno >> 8,
                segno & 0xff
            ))
        })
    };
    wait_until(
        "the segments stored while the catalog is down",
        30,
        &[&agent],
        || stored(current - 1),
    );
    assert!(
        json_files(&pending) >= 2,
        "reports pending in {}",
        pending.display()
    );
    env.catalog.start_again();
    wait_for(&env, &done(current - 1), "1", 30, &agent);
    assert_eq!(check_ledger(&env, current - 1), first);
    wait_until("the pending reports delivered", 10, &[&agent], || {
        json_files(&pending) == 0
    });

    // pg_receivewal's directory keeps only the newest stored segment (where a restarted
    // receiver resumes) and the one being written.
    let incoming: Vec<String> = walk(&agent.backups())
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("incoming")))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    assert_eq!(
        incoming,
        [format!(
            "00000001{:08X}{:08X}",
            (current - 1) >> 8,
            (current - 1) & 0xff
        )]
    );

    // The archive's state as the agent reports it, and the recovery window by SQL.
    wait_for(
        &env,
        "select slot_wal_status is not null and receiver_state like 'streaming%' from wal_archive",
        "t",
        20,
        &agent,
    );
    let w = env.json("show_recovery_window 127.0.0.2");
    let rows = w["recovery_window"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{w}");
    let end = current * SEG;
    assert_eq!(
        rows[0]["to_lsn"],
        format!("{:X}/{:X}", end >> 32, end & 0xffff_ffff),
        "{w}"
    );

    env.cmd("delete_wal_archive bs1.example.org 127.0.0.2").ok();
    wait_for(
        &env,
        "select status from wal_archive",
        "DELETED",
        30,
        &agent,
    );
    assert_eq!(
        node.psql("postgres", "select count(*) from pg_replication_slots")
            .trim(),
        "0"
    );

    // Registered again: a new slot holds WAL from now only, so what the old one left in
    // pg_receivewal's directory goes, and the archive goes on without a hole.
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();
    wait_until("the new slot streaming", 30, &[&agent], || {
        node.psql("postgres", active).trim() == "1"
    });
    for _ in 0..2 {
        current = switch(&node);
    }
    wait_for(&env, &done(current - 1), "1", 30, &agent);
    assert_eq!(check_ledger(&env, current - 1), first);
    assert!(
        agent.log().contains("by a previous slot"),
        "{}",
        agent.log()
    );
    agent.stop();
}

#[test]
fn a_promoted_standby_continues_the_archive_on_its_new_timeline() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let primary = TestCluster::start_on(&["127.0.0.2"]);
    primary.psql("postgres", "create table t (x int)");
    let standby = Standby::of(&primary, &["127.0.0.5"]);
    standby.wait_replayed(&primary);
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.5 \"\" {} postgres RUNNING standby",
        standby.port()
    ))
    .ok();
    env.cmd("register_wal_archive bs1.example.org 127.0.0.5")
        .ok();
    let mut agent = Agent::start(&env, "bs1.example.org", None);
    let active =
        "select count(*) from pg_replication_slots where slot_name = 'pgbackman_bs1' and active";
    wait_until(
        "the agent's slot streaming from the standby",
        30,
        &[&agent],
        || standby.psql("postgres", active).trim() == "1",
    );
    let mut current = 0;
    for _ in 0..2 {
        current = switch(&primary);
    }
    let full = |tli: u32, segno: u64| {
        format!(
            "select count(*) from wal_object where kind = 'full' and timeline = {tli} and segno = {segno}"
        )
    };
    wait_for(&env, &full(1, current - 1), "1", 30, &agent);

    // Promoted: timeline 2 begins; the archive follows it with the history file, and keeps the
    // partial tail of timeline 1 up to the switch point.
    standby.psql("postgres", "select pg_promote()");
    for _ in 0..2 {
        current = switch(&standby);
    }
    wait_for(&env, &full(2, current - 1), "1", 30, &agent);
    wait_for(
        &env,
        "select string_agg(kind || ':' || timeline, ',' order by timeline, kind) from wal_object where kind in ('history', 'partial')",
        "partial:1,history:2",
        20,
        &agent,
    );
    let switch_lsn = env.sql("select switch_lsn from timeline_history where timeline = 2");
    assert_eq!(
        env.sql("select end_lsn from wal_object where kind = 'partial'"),
        switch_lsn
    );
    let w = env.json("show_recovery_window 127.0.0.5");
    let rows = w["recovery_window"].as_array().unwrap();
    assert_eq!(rows[0]["timeline"], 2, "{w}");
    let end = current * SEG;
    assert_eq!(
        rows[0]["to_lsn"],
        format!("{:X}/{:X}", end >> 32, end & 0xffff_ffff),
        "{w}"
    );
    // Restorable across the promotion: from the first segment of timeline 1, along 1 → 2.
    assert_eq!(rows[0]["lineage"], "1 → 2", "{w}");
    assert_eq!(rows[0]["from_lsn"], rows[1]["from_lsn"], "{w}");
    assert_eq!(rows[1]["timeline"], 1, "{w}");
    // A stopped agent stops its pg_receivewal first (SIGTERM: it flushes and exits). The
    // receiver restarts across the timeline switch (--no-loop ends at it): stop it streaming,
    // not in its backoff (which has no pg_receivewal to stop, nor a line that says so).
    wait_until(
        "the agent's slot streaming from the promoted node",
        30,
        &[&agent],
        || standby.psql("postgres", active).trim() == "1",
    );
    assert!(agent.sigterm().success(), "{}", agent.log());
    assert!(
        agent.log().contains("stopped (exited after"),
        "{}",
        agent.log()
    );
    assert_eq!(standby.psql("postgres", active).trim(), "0");
}
