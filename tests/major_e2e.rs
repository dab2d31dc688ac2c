//! A second PostgreSQL major end to end (issue 11): PostgreSQL 17 nodes (programs from
//! `.ci/install-pg-majors`, see `TestCluster::start_major`) archived with pg_receivewal 17,
//! dumped with pg_dump 17 and restored with pg_restore 17, each chosen by the agent among its
//! `[agent.bin_dirs]` by the node's major; a node newer than every client is refused with a
//! message that says what to install (and no slot is created); an older node is dumped with a
//! newer client when that is all there is.

mod common;

use std::path::Path;

use common::Env;
use common::agent::*;
use pgbackman_testkit::{TestCluster, major_bin_dir};

const SEG: u64 = 16 * 1024 * 1024;

/// The `[agent.bin_dirs]` table with these majors: 15 from the Debian package, others from
/// the cache of `.ci/install-pg-majors` (the PyPI layout: one directory a major, anywhere).
fn bin_dirs(majors: &[u32]) -> String {
    let mut t = String::from("[agent.bin_dirs]\n");
    for m in majors {
        t.push_str(&format!("\"{m}\" = \"{}\"\n", major_bin_dir(*m).display()));
    }
    t
}

fn register(env: &Env, node: &TestCluster, host: &str, remarks: &str) {
    env.cmd(&format!(
        "register_pgsql_node {host} \"\" {} postgres RUNNING {remarks}",
        node.port()
    ))
    .ok();
}

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

/// The command lines of the pg_receivewal processes that write under `dir`.
fn receivers_under(dir: &Path) -> Vec<String> {
    processes_with("pg_receivewal")
        .into_iter()
        .filter(|c| c.contains(&dir.display().to_string()))
        .collect()
}

#[test]
fn a_postgresql_17_node_is_archived_with_pg_receivewal_17() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = TestCluster::start_major(17, &["127.0.0.2"]);
    assert_eq!(node.psql("postgres", "show wal_level").trim(), "replica");
    register(&env, &node, "127.0.0.2", "pg17");
    node.psql("postgres", "create table t (x int)");
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();
    let mut agent = Agent::configure(&env, "bs1.example.org", &bin_dirs(&[15, 17]));
    let o = agent.command().arg("--check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("pg_receivewal for PostgreSQL 17"), "{out}");
    agent.spawn(None);
    let active =
        "select count(*) from pg_replication_slots where slot_name = 'pgbackman_bs1' and active";
    wait_until("the agent's slot streaming", 30, &[&agent], || {
        node.psql("postgres", active).trim() == "1"
    });
    // The client of the node's major streams, not the Debian 15 one.
    let running = receivers_under(&agent.backups());
    let want = major_bin_dir(17).join("pg_receivewal");
    assert!(
        running.len() == 1 && running[0].starts_with(&*want.to_string_lossy()),
        "{running:?}"
    );
    let mut current = 0;
    for _ in 0..3 {
        current = switch(&node);
    }
    let last = current - 1;
    wait_for(
        &env,
        &format!("select count(*) from wal_object where kind = 'full' and segno = {last}"),
        "1",
        30,
        &agent,
    );
    // Each segment once, contiguous, header checked against 17's magic (0xD116) by the agent;
    // the test reads the magic of every stored file itself too.
    let rows = env.sql(
        "select string_agg(concat_ws(' ', segno, header_check, stored_path), ';' order by segno)
           from wal_object where kind = 'full'",
    );
    let mut segnos = Vec::new();
    for r in rows.split(';') {
        let f: Vec<&str> = r.split(' ').collect();
        assert_eq!(f[1], "PASSED", "{r}");
        let plain = zstd::decode_all(&std::fs::read(f[2]).unwrap()[..]).unwrap();
        assert_eq!(plain.len() as u64, SEG, "{r}");
        assert_eq!(u16::from_le_bytes([plain[0], plain[1]]), 0xD116, "{r}");
        segnos.push(f[0].parse::<u64>().unwrap());
    }
    let first = segnos[0];
    assert_eq!(segnos, (first..=last).collect::<Vec<_>>(), "once each");
    assert_eq!(env.sql("select count(*) from api.wal_holes(1)"), "0");
    // The ledger ends where the node's current segment (the one being written) begins.
    let node_seg: u64 = node
        .psql(
            "postgres",
            &format!("select floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / {SEG})::int8"),
        )
        .trim()
        .parse()
        .unwrap();
    assert_eq!(node_seg, current);
    let end = current * SEG;
    assert_eq!(
        env.sql("select max(end_lsn)::text from wal_object where kind = 'full'"),
        format!("{:X}/{:X}", end >> 32, end & 0xffff_ffff)
    );
    agent.stop();
}

#[test]
fn a_postgresql_17_database_is_dumped_and_restored_with_the_17_client() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let a = TestCluster::start_major(17, &["127.0.0.2"]);
    let b = TestCluster::start_major(17, &["127.0.0.3"]);
    register(&env, &a, "127.0.0.2", "a17");
    register(&env, &b, "127.0.0.3", "b17");
    a.create_database("shop");
    // MAINTAIN (new in 17) would not restore onto an older server: the set is a 17 one.
    a.psql(
        "shop",
        "create table item (id int primary key, name text);
         insert into item select g, 'item ' || g from generate_series(1, 5000) g;
         create role shop_maint; grant maintain on item to shop_maint;",
    );
    let agent = Agent::start_with(&env, "bs1.example.org", None, &bin_dirs(&[15, 17]));
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &env,
        "select execution_status from backup_catalog",
        "SUCCEEDED",
        120,
        &agent,
    );
    // Node major, then the pg_dump major.
    assert_eq!(
        env.sql("select pgsql_node_release || ' ' || pg_dump_release from backup_catalog"),
        "17 17"
    );

    env.cmd("register_restore_definition now 1 127.0.0.3 shop \"\"")
        .ok();
    wait_for(
        &env,
        "select execution_status from restore_catalog",
        "SUCCEEDED",
        120,
        &agent,
    );
    assert_eq!(
        b.psql("shop", "select count(*), sum(id) from item"),
        "5000|12502500"
    );
    assert_eq!(
        b.psql(
            "shop",
            "select has_table_privilege('shop_maint', 'item', 'MAINTAIN')"
        ),
        "t"
    );
    let client = env.sql("select client_version from restore_catalog");
    assert!(client.contains("17."), "{client}");
}

#[test]
fn a_node_newer_than_every_client_is_refused_and_an_older_one_uses_the_newer_client() {
    let env = Env::new();
    env.register_backup_servers(&["bs1", "bs2"]);
    let new = TestCluster::start_major(17, &["127.0.0.2"]);
    let old = TestCluster::start_on(&["127.0.0.3"]);
    register(&env, &new, "127.0.0.2", "pg17");
    register(&env, &old, "127.0.0.3", "pg15");
    for (n, db) in [(&new, "shop"), (&old, "legacy")] {
        n.create_database(db);
        n.psql(
            db,
            "create table t as select g from generate_series(1, 100) g",
        );
    }

    // bs1 has the Debian 15 client only.
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();
    let bs1 = Agent::start_with(&env, "bs1.example.org", None, &bin_dirs(&[15]));
    wait_for(
        &env,
        "select receiver_state from wal_archive",
        "no_client",
        30,
        &bs1,
    );
    // pghoard's "client/server version mismatch" alert, raised once from the agent's sample.
    wait_for(
        &env,
        "select count(*) from wal_condition where code = 'WAL_VERSION' and cleared is null",
        "1",
        60,
        &bs1,
    );
    let error = env.sql("select receiver_error from wal_archive");
    for want in [
        "runs PostgreSQL 17",
        "no pg_receivewal of major 17 or newer (client majors: 15)",
        "HINT: install the client programs of PostgreSQL 17",
    ] {
        assert!(error.contains(want), "{want:?} in {error}");
    }
    // pg_receivewal 15 never ran against 17, and no slot holds WAL for nothing.
    assert!(receivers_under(&bs1.backups()).is_empty());
    assert_eq!(
        new.psql("postgres", "select count(*) from pg_replication_slots"),
        "0"
    );
    let shown = env.cmd("show_wal_archives").ok();
    assert!(shown.stdout.contains("no_client"), "{}", shown.stdout);
    // pg_dump 15 refuses the 17 node too, saying what to install.
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &env,
        "select execution_status from backup_catalog where def_id = 1",
        "ERROR",
        60,
        &bs1,
    );
    let msg = env.sql("select error_message from backup_catalog where def_id = 1");
    assert!(msg.contains("no pg_dump for PostgreSQL 17"), "{msg}");

    // bs2 has the 17 client only: it dumps the 15 node with it (pg_dump reads older servers).
    let bs2 = Agent::start_with(&env, "bs2.example.org", None, &bin_dirs(&[17]));
    env.cmd("register_backup_definition bs2.example.org 127.0.0.3 legacy \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 2").ok();
    wait_for(
        &env,
        "select execution_status from backup_catalog where def_id = 2",
        "SUCCEEDED",
        60,
        &bs2,
    );
    assert_eq!(
        env.sql(
            "select pgsql_node_release || ' / ' || pg_dump_release from backup_catalog where def_id = 2"
        ),
        "15 / 17"
    );
}
