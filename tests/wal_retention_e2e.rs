//! WAL retention end to end (issue 11): a real node with a WAL archive kept by the real agent,
//! three base backups with pg_switch_wal between them, redundancy 1; the two older ones aged
//! past the period. One maintenance pass deletes the two sets and then the WAL below the start
//! of the one kept: the files and the ledger rows of the old range are gone, nothing of the kept
//! range, no hole is reported, and the kept base backup is still covered by its WAL. A pass
//! stopped after marking is resumed; a file outside the backup roots is refused (BLOCKED), the
//! rest still goes.

mod common;

use std::path::Path;

use common::Env;
use common::agent::*;
use pgbackman_testkit::TestCluster;

fn switch_wal(node: &TestCluster) {
    node.psql(
        "postgres",
        "create table if not exists t (x int); insert into t select generate_series(1, 1000); select pg_switch_wal();",
    );
}

#[test]
fn retention_deletes_the_wal_the_kept_base_backup_does_not_need() {
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
    env.cmd(&format!(
        "register_backup_definition bs1.example.org {host} \"\" \"\" 0 1 \"*\" \"*\" \"*\" BASEBACKUP false \"7 days\" 1 \"\" ACTIVE phys --wal-wait \"3 minutes\""
    ))
    .ok();
    let def: i64 = env
        .sql("select def_id from backup_definition where backup_code = 'BASEBACKUP'")
        .parse()
        .unwrap();

    // Nothing is deleted before a base backup exists.
    switch_wal(&node);
    switch_wal(&node);
    wait_for(
        &env,
        "select count(*) >= 2 from wal_object where kind = 'full'",
        "t",
        60,
        &agent,
    );
    let plan = env.json(&format!("show_retention_plan all {host} all --wal"));
    let rows = plan["wal_retention_plan"].as_array().unwrap();
    assert!(!rows.is_empty(), "{plan}");
    assert!(
        rows.iter().all(|r| r["action"] == "hold"
            && r["reason"]
                .as_str()
                .unwrap()
                .contains("no kept base backup")),
        "{plan}"
    );

    let mut bcks = Vec::new();
    for _ in 0..3 {
        bcks.push(run_now(&env, &agent, def));
        switch_wal(&node);
        switch_wal(&node);
    }
    for b in &bcks {
        assert_eq!(
            env.sql(&format!(
                "select c.execution_status || ' ' || b.state || ' ' || c.verification_state
                   from backup_catalog c join base_backup b using (bck_id) where bck_id = {b}"
            )),
            "SUCCEEDED SUCCEEDED PASSED",
            "{}",
            agent.log()
        );
    }
    let kept = bcks[2];
    age(&env, bcks[0], "30 days");
    age(&env, bcks[1], "20 days");
    // The floor: the segment holding the kept backup's start LSN.
    let floor: i64 = env
        .sql(&format!(
            "select api.wal_segno(start_lsn, seg_size) from base_backup where bck_id = {kept}"
        ))
        .parse()
        .unwrap();
    // The WAL after the kept one is in the ledger too (the range kept up to now).
    wait_for(
        &env,
        &format!("select max(segno) > {floor} from wal_object where kind = 'full'"),
        "t",
        60,
        &agent,
    );
    let old_paths: Vec<String> = env
        .sql(&format!(
            "select string_agg(stored_path, ' ') from wal_object where kind in ('full', 'partial') and segno < {floor}"
        ))
        .split(' ')
        .map(str::to_string)
        .collect();
    assert!(old_paths.len() >= 4, "{old_paths:?}");
    assert!(old_paths.iter().all(|p| Path::new(p).exists()));
    let kept_before: i64 = env
        .sql(&format!(
            "select count(*) from wal_object where kind in ('full', 'partial') and segno >= {floor}"
        ))
        .parse()
        .unwrap();

    // An earlier pass stopped after phase 1 and one file (the agent was killed): marked below the
    // oldest base backup kept then (the first), one file already gone.
    assert_eq!(
        env.sql("select count(*) from api.wal_retention_mark(1, 1)"),
        "1"
    );
    let plan = env.json(&format!(
        "show_retention_plan all {host} all --wal --deletions-only"
    ));
    let rows = plan["wal_retention_plan"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["action"] == "deleting"), "{plan}");
    std::fs::remove_file(&old_paths[0]).unwrap();
    // One row names a file outside the agent's backup roots: refused, the others still go.
    let outside = tempfile::tempdir().unwrap();
    let foreign = outside.path().join("not-wal");
    std::fs::write(&foreign, b"keep me").unwrap();
    env.sql(&format!(
        "update wal_object set stored_path = '{}' where stored_path = '{}'",
        foreign.display(),
        old_paths[1]
    ));

    // One pass (`--maintenance`, the daemon stopped first: one agent per state directory):
    // the sets first (the two aged ones), then the WAL below the kept one's start.
    agent.stop();
    agent.maintenance_ok();
    assert_eq!(
        env.sql(&format!(
            "select string_agg(bck_id::text, ' ' order by bck_id) from backup_catalog where def_id = {def}"
        )),
        kept.to_string(),
        "{}",
        agent.log()
    );
    let plan = env.json(&format!("show_retention_plan all {host} all --wal"));
    eprintln!("{plan:#}");
    assert!(
        plan["wal_retention_plan"]
            .as_array()
            .unwrap()
            .iter()
            // The refused segment is still marked (deleting); everything else is kept for it.
            .all(|r| (r["action"] == "deleting" && r["segments"] == 1)
                || r["action"] == "keep"
                    && r["reason"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("needed by base backup {kept} from LSN"))),
        "{plan}"
    );

    // The refused one stays, in the ledger and on disk, and is a BLOCKED finding; the files
    // and rows of the rest of the old range are gone; the kept range whole, no hole.
    assert!(foreign.exists());
    assert_eq!(
        env.sql(&format!(
            "select count(*) from wal_object where kind in ('full', 'partial') and segno < {floor}"
        )),
        "1"
    );
    assert_eq!(
        env.sql("select kind || ' ' || pgsql_node_id from reconciliation where path = 'WAL archive of NodeID 1'"),
        "BLOCKED 1"
    );
    for p in old_paths.iter().skip(2) {
        assert!(!Path::new(p).exists(), "{p} still on disk");
    }
    let kept_after: i64 = env
        .sql(&format!(
            "select count(*) from wal_object where kind in ('full', 'partial') and segno >= {floor}"
        ))
        .parse()
        .unwrap();
    assert!(kept_after >= kept_before, "{kept_after} < {kept_before}");
    assert_eq!(env.sql("select count(*) from api.wal_holes(1)"), "0");
    assert_eq!(
        env.sql("select min(first_segno) from wal_run where pgsql_node_id = 1"),
        floor.to_string()
    );
    let c = env.json(&format!("show_recovery_window {host} --chains"));
    let chains = c["recovery_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{c}");
    assert!(chains[0]["restorable_to_lsn"].is_string(), "{c}");
    assert!(chains[0]["note"].is_null(), "{c}");

    // Repaired, the next pass deletes it and nothing more; the finding clears.
    env.sql(&format!(
        "update wal_object set stored_path = '{}' where stored_path = '{}'",
        old_paths[1],
        foreign.display()
    ));
    agent.maintenance_ok();
    assert!(foreign.exists());
    for p in &old_paths {
        assert!(!Path::new(p).exists(), "{p} still on disk");
    }
    assert_eq!(
        env.sql(&format!(
            "select count(*) from wal_object where kind in ('full', 'partial') and segno < {floor}"
        )),
        "0"
    );
    assert_eq!(
        env.sql(&format!(
            "select count(*) = {kept_after} from wal_object where kind in ('full', 'partial')"
        )),
        "t"
    );
    assert_eq!(
        env.sql("select count(*) from reconciliation where path = 'WAL archive of NodeID 1'"),
        "0"
    );
}
