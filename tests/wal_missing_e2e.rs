//! A WAL file deleted on disk is reported as a hole (issue 11): a real node with a WAL archive
//! kept by the real agent, a few segments switched, one stored segment in the middle deleted by
//! the test; one `pgbackman-agent --maintenance` pass removes its ledger row (the rest stays),
//! `show_recovery_window NODE --holes` names it, `show_reconciliation` has the MISSING finding,
//! and the WAL monitor raises WAL_HOLE. Nothing on disk is touched by the agent.

mod common;

use std::path::Path;

use common::Env;
use common::agent::*;

#[test]
fn a_stored_wal_file_deleted_on_disk_becomes_a_hole_and_a_finding() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let host = "127.0.0.2";
    let node = env.start_node(host, "n");
    env.cmd(&format!("register_wal_archive bs1.example.org {host}"))
        .ok();
    let mut agent = Agent::configure(&env, "bs1.example.org", "maintenance_seconds = 0");
    agent.spawn(None);
    wait_until("the agent's slot streaming", 30, &[&agent], || {
        node.psql(
            "postgres",
            "select count(*) from pg_replication_slots where slot_name = 'pgbackman_bs1' and active",
        )
        .trim()
            == "1"
    });
    for _ in 0..4 {
        node.psql(
            "postgres",
            "create table if not exists t (x int); insert into t select generate_series(1, 1000); select pg_switch_wal();",
        );
    }
    wait_for(
        &env,
        "select count(*) >= 4 from wal_object where kind = 'full'",
        "t",
        60,
        &agent,
    );
    agent.stop();
    assert_eq!(env.sql("select count(*) from api.wal_holes(1)"), "0");
    let before: i64 = env.sql("select count(*) from wal_object").parse().unwrap();
    // A segment between two others: its loss is a hole, not a shorter archive.
    let victim = env.sql(
        "select stored_path || ' ' || api.wal_file_name(timeline, segno, seg_size, kind, null) from wal_object
          where kind = 'full' and segno > (select min(segno) from wal_object where kind = 'full')
            and segno < (select max(segno) from wal_object where kind = 'full')
          order by segno limit 1",
    );
    let (path, name) = victim.split_once(' ').unwrap();
    assert!(Path::new(path).exists(), "{path}");
    std::fs::remove_file(path).unwrap();
    let others = env.sql("select string_agg(stored_path, ' ') from wal_object");

    agent.maintenance_ok();
    assert_eq!(
        env.sql(&format!(
            "select count(*) from wal_object where stored_path = '{path}'"
        )),
        "0",
        "{}",
        agent.log()
    );
    let after: i64 = env.sql("select count(*) from wal_object").parse().unwrap();
    assert_eq!(after, before - 1, "only the lost file's row goes");
    for p in others.split(' ').filter(|p| *p != path) {
        assert!(Path::new(p).exists(), "{p} must stay on disk");
    }

    let h = env.json(&format!("show_recovery_window {host} --holes"));
    let holes = h["wal_holes"].as_array().unwrap();
    assert_eq!(holes.len(), 1, "{h}");
    assert!(h.to_string().contains(name), "{h}");

    let r = env.json("show_reconciliation");
    assert!(
        r.to_string().contains(path) && r.to_string().contains("MISSING"),
        "{r}"
    );
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'MAINTENANCE' and execution_status = 'MISSING'"),
        "1"
    );

    // The WAL monitor (run at each replication sample of the daemon) raises WAL_HOLE on it.
    env.sql("select api.evaluate_wal_conditions(1, 1)");
    assert_eq!(
        env.sql(&format!(
            "select count(*) from wal_condition where code = 'WAL_HOLE' and subject = '{name}' and cleared is null"
        )),
        "1"
    );

    // A second pass finds nothing new: the finding stays, no second alert.
    agent.maintenance_ok();
    assert_eq!(
        env.sql("select count(*) from reconciliation where kind = 'MISSING'"),
        "1"
    );
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'MAINTENANCE' and execution_status = 'MISSING'"),
        "1"
    );
}
