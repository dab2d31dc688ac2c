//! Retention and maintenance end to end: real `pgbackman` and `pgbackman-agent` binaries, a
//! catalog cluster and node clusters. Backups are made by the agent, then aged in the catalog
//! (the only thing a test cannot wait for); every test asserts the final catalog and the files
//! on disk.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Env;
use common::agent::{Agent, Site, age, dir_of, run_now, site, wait_for};

/// An agent of one backup server, not started: the daemon for making backups (maintenance off,
/// so each test decides when a pass runs), and `--maintenance` for one pass.
fn agent(env: &Env, server: &str) -> Agent {
    Agent::configure(env, server, "maintenance_seconds = 0")
}

fn ids(v: &serde_json::Value, key: &str) -> Vec<i64> {
    let mut out: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_i64().unwrap())
        .collect();
    out.sort_unstable();
    out
}

fn catalog_ids(env: &Env) -> Vec<i64> {
    let s = env.sql(
        "select coalesce(string_agg(bck_id::text, ',' order by bck_id), '') from backup_catalog",
    );
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

/// The shared site, with a table of 100 rows in "shop".
fn fleet() -> Site {
    let s = site();
    s.node.psql(
        "shop",
        "create table t (id int primary key); insert into t select generate_series(1, 100)",
    );
    s
}

#[test]
fn the_plan_shown_is_what_the_agent_deletes_and_the_last_good_backups_survive_failures() {
    let f = fleet();
    let env = &f.env;
    let mut a1 = agent(env, "bs1.example.org");
    a1.spawn(None);
    // Period 7 days, redundancy 2.
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3 \"*\" \"*\" \"*\" FULL false \"7 days\" 2").ok();
    let s1 = run_now(env, &a1, 1);
    let s2 = run_now(env, &a1, 1);
    let s3 = run_now(env, &a1, 1);
    // Then every run fails (the database is away), the newest of them recently.
    f.node
        .psql("postgres", "alter database shop rename to shop_away");
    let f1 = run_now(env, &a1, 1);
    let f2 = run_now(env, &a1, 1);
    f.node
        .psql("postgres", "alter database shop_away rename to shop");
    // A snapshot kept 2 days, and a backup whose directory was taken by hand already.
    env.cmd("register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" now FULL \"2 days\" \"\" old").ok();
    wait_for(
        env,
        "select count(*) from backup_catalog where snapshot_id is not null",
        "1",
        60,
        &a1,
    );
    let snap = env
        .sql("select bck_id from backup_catalog where snapshot_id is not null")
        .parse::<i64>()
        .unwrap();
    a1.stop();
    for (bck, ago) in [
        (s1, "30 days"),
        (s2, "20 days"),
        (s3, "10 days"),
        (f1, "9 days"),
        (f2, "1 day"),
        (snap, "3 days"),
    ] {
        age(env, bck, ago);
    }
    assert_eq!(
        env.sql(&format!(
            "select count(*) from backup_catalog where bck_id in ({f1}, {f2}) and execution_status = 'ERROR'"
        )),
        "2"
    );
    let dirs: Vec<(i64, String)> = [s1, s2, s3, snap]
        .iter()
        .map(|&b| (b, dir_of(env, b)))
        .collect();
    for (_, d) in &dirs {
        assert!(Path::new(d).is_dir(), "{d}");
    }

    // The plan: the oldest good backup (beyond the 2 newest good ones, older than 7 days), the
    // old failure and the expired snapshot. The 2 last good backups stay although 10 and 20
    // days old and followed by failures (PgBackMan deleted them).
    let plan = env.json("show_retention_plan bs1.example.org all all --deletions-only");
    let planned = ids(&plan["retention_plan"], "bckid");
    let mut want = vec![s1, f1, snap];
    want.sort_unstable();
    assert_eq!(planned, want, "{plan:#}");
    let full = env.json("show_retention_plan all all all");
    let rule = |b: i64| {
        full["retention_plan"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["bckid"] == b)
            .map(|r| r["rule"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(rule(s3).contains("#1 (redundancy)"), "{}", rule(s3));
    assert!(rule(s2).contains("#2 (redundancy)"), "{}", rule(s2));
    assert!(rule(f2).contains("within"), "{}", rule(f2));

    // The agent deletes exactly the plan: rows and directories.
    let before = catalog_ids(env);
    a1.maintenance_ok();
    let after = catalog_ids(env);
    let deleted: Vec<i64> = before
        .iter()
        .copied()
        .filter(|b| !after.contains(b))
        .collect();
    assert_eq!(deleted, want, "{}", a1.log());
    for (b, d) in &dirs {
        assert_eq!(
            Path::new(d).exists(),
            !want.contains(b),
            "BckID {b}: {d}\n{}",
            a1.log()
        );
    }
    // The snapshot's definition went with its only backup; the plan is now empty.
    assert_eq!(env.sql("select count(*) from snapshot_definition"), "0");
    assert_eq!(
        env.json("show_retention_plan all all all --deletions-only"),
        serde_json::json!({"retention_plan": []})
    );
    // A second pass changes nothing.
    a1.maintenance_ok();
    assert_eq!(catalog_ids(env), after);
}

#[test]
fn deletion_is_two_phase_safe_to_interrupt_refuses_foreign_paths_and_waits_for_the_catalog() {
    let f = fleet();
    let env = &f.env;
    let mut a1 = agent(env, "bs1.example.org");
    a1.spawn(None);
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3 \"*\" \"*\" \"*\" FULL false \"1 day\" 1").ok();
    let b: Vec<i64> = (0..5).map(|_| run_now(env, &a1, 1)).collect();
    a1.stop();
    for (i, &bck) in b.iter().enumerate() {
        age(env, bck, &format!("{} days", 10 - i));
    }
    let dirs: Vec<String> = b.iter().map(|&x| dir_of(env, x)).collect();
    // b[0]: an agent died after marking it and deleting part of its files.
    env.sql(&format!(
        "update backup_catalog set retention_state = 'DELETING', delete_marked_at = now() where bck_id = {}",
        b[0]
    ));
    std::fs::remove_file(Path::new(&dirs[0]).join("manifest.json")).unwrap();
    // b[1]: its files are already gone.
    std::fs::remove_dir_all(&dirs[1]).unwrap();
    // b[2]: a row pointing outside this agent's backup directory is refused.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"x").unwrap();
    env.sql(&format!(
        "update backup_catalog set backup_dir = '{}' where bck_id = {}",
        outside.path().display(),
        b[2]
    ));
    // The catalog is down: the pass waits and deletes nothing; when it is back, it goes on.
    f.env.catalog.stop();
    let mut pass = a1
        .command()
        .arg("--maintenance")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(pass.try_wait().unwrap().is_none(), "the pass did not wait");
    assert!(Path::new(&dirs[0]).exists() && Path::new(&dirs[3]).exists());
    f.env.catalog.start_again();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = pass.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the pass did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(st.success());
    a1.maintenance_ok();
    // b[0], b[1], b[3] gone (rows and files); b[2] kept and untouched; b[4] is the newest good one.
    assert_eq!(catalog_ids(env), vec![b[2], b[4]], "{}", a1.log());
    for i in [0, 1, 3] {
        assert!(!Path::new(&dirs[i]).exists(), "{}", dirs[i]);
    }
    assert!(Path::new(&dirs[4]).is_dir());
    assert!(outside.path().join("precious").exists());
    assert_eq!(
        env.sql(&format!(
            "select retention_state from backup_catalog where bck_id = {}",
            b[2]
        )),
        "KEPT"
    );
    assert!(a1.log().contains("refusing to delete"), "{}", a1.log());
    // The API re-checks every mark: the redundancy rule itself, and the settings the plan was
    // made with (a plan made before the definition changed deletes nothing).
    assert_eq!(
        env.sql(&format!(
            "select count(*) from api.retention_mark(1, {}, '1 day', 1)",
            b[4]
        )),
        "0"
    );
    assert_eq!(
        env.sql(&format!(
            "select count(*) from api.retention_mark(1, {}, '1 day', 0)",
            b[4]
        )),
        "0"
    );
    assert!(Path::new(&dirs[4]).is_dir());
}

#[test]
fn quarantine_reactivation_expiry_alerts_and_autoregister() {
    let f = fleet();
    let env = &f.env;
    for db in ["d1", "d2", "d3", "d4"] {
        f.node.create_database(db);
    }
    let mut a1 = agent(env, "bs1.example.org");
    a1.spawn(None);
    // DefIDs 1-5: d1, d2, d3, d4, shop.
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 \"#all_databases#\" \"\"")
        .ok();
    assert_eq!(
        env.sql("select string_agg(dbname, ',' order by def_id) from backup_definition"),
        "d1,d2,d3,d4,shop"
    );
    let bck = run_now(env, &a1, 4);
    a1.stop();
    let d4_dir = dir_of(env, bck);
    assert!(Path::new(&d4_dir).is_dir());
    let status = |def: i64| {
        env.sql(&format!(
            "select job_status from backup_definition where def_id = {def}"
        ))
    };

    // First pass: the baseline (6 databases with postgres). Nothing changes.
    a1.maintenance_ok();
    assert_eq!(env.sql("select databases from pgsql_node_listing"), "6");
    // d4 dropped: its definition is quarantined, with an alert; it stops running.
    f.node.psql("postgres", "drop database d4");
    a1.maintenance_ok();
    assert_eq!(status(4), "DELETED", "{}", a1.log());
    let alert = env.sql("select error_message from alert where alert_type = 'QUARANTINE' and execution_status = 'DELETED'");
    assert!(
        alert.contains("\"d4\"") && alert.contains("STOPPED"),
        "{alert}"
    );
    // It comes back: ACTIVE again.
    f.node.create_database("d4");
    a1.maintenance_ok();
    assert_eq!(status(4), "ACTIVE", "{}", a1.log());
    // Gone again, for longer than automatic_deletion_retention: removed with its backups.
    f.node.psql("postgres", "drop database d4");
    a1.maintenance_ok();
    assert_eq!(status(4), "DELETED");
    env.sql(
        "update backup_definition set status_changed_at = now() - interval '15 days' where def_id = 4",
    );
    a1.maintenance_ok();
    assert_eq!(
        env.sql("select count(*) from backup_definition where def_id = 4"),
        "0",
        "{}",
        a1.log()
    );
    assert_eq!(env.sql("select count(*) from backup_catalog"), "0");
    assert_eq!(
        env.sql("select count(*) from catalog_entries_to_delete"),
        "0"
    );
    assert!(!Path::new(&d4_dir).exists(), "{d4_dir}");
    // A user's DELETED is never undone by maintenance.
    env.cmd("update_backup_definition 1 \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" DELETED \"\"")
        .ok();
    a1.maintenance_ok();
    assert_eq!(status(1), "DELETED");
    env.cmd("update_backup_definition 1 \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" ACTIVE \"\"")
        .ok();

    // Most databases vanish at once (baseline 5: d1-d3, shop, postgres): suspicious, nothing
    // changes, one alert that says what to run.
    f.node.psql("postgres", "drop database d1");
    f.node.psql("postgres", "drop database d2");
    f.node.psql("postgres", "drop database d3");
    a1.maintenance_ok();
    a1.maintenance_ok();
    assert_eq!(
        env.sql("select string_agg(job_status, ',' order by def_id) from backup_definition"),
        "ACTIVE,ACTIVE,ACTIVE,ACTIVE"
    );
    let alerts = env.sql("select count(*) || '|' || min(error_message) from alert where execution_status = 'SUSPICIOUS'");
    assert!(
        alerts.starts_with("1|") && alerts.contains("accept_pgsql_node_listing"),
        "{alerts}"
    );
    // The DBA dropped them on purpose and says so.
    env.cmd("accept_pgsql_node_listing 127.0.0.2").ok();
    a1.maintenance_ok();
    assert_eq!(
        env.sql("select string_agg(job_status, ',' order by def_id) from backup_definition"),
        "DELETED,DELETED,DELETED,ACTIVE",
        "{}",
        a1.log()
    );

    // Autoregister: new databases get definitions from the node's defaults on this server.
    env.cmd("update_pgsql_node_config 127.0.0.2 autoregister=true retention_redundancy=3")
        .ok();
    f.node.create_database("fresh");
    a1.maintenance_ok();
    assert_eq!(
        env.sql("select backup_server_id || ' ' || job_status || ' ' || retention_redundancy from backup_definition where dbname = 'fresh'"),
        "1 ACTIVE 3",
        "{}",
        a1.log()
    );
    // A quarantined database is not registered again; a second pass registers nothing new.
    a1.maintenance_ok();
    assert_eq!(env.sql("select count(*) from backup_definition"), "5");
    // Another server can be named for the node's automatic definitions (stored as its SrvID);
    // only that server's agent registers them.
    env.cmd("update_pgsql_node_config 127.0.0.2 autoregister_backup_server=nosuch.example.org")
        .fails_with("not registered");
    env.cmd("update_pgsql_node_config 127.0.0.2 autoregister_backup_server=bs2.example.org")
        .ok();
    assert_eq!(
        env.sql(
            "select value from pgsql_node_config where parameter = 'autoregister_backup_server'"
        ),
        "2"
    );
    f.node.create_database("fresh2");
    a1.maintenance_ok();
    assert_eq!(env.sql("select count(*) from backup_definition"), "5");
    let a2 = agent(env, "bs2.example.org");
    a2.maintenance_ok();
    assert_eq!(
        env.sql("select backup_server_id from backup_definition where dbname = 'fresh2'"),
        "2",
        "{}",
        a2.log()
    );

    // A STOPPED node is not listed: a definition a user set DELETED still goes after the
    // deadline; a quarantined one waits for a listing (its database may be back).
    env.cmd("update_backup_definition 5 \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" DELETED \"\"")
        .ok();
    env.cmd("update_pgsql_node 127.0.0.2 \"\" \"\" STOPPED \"\"")
        .ok();
    env.sql(
        "update backup_definition set status_changed_at = now() - interval '15 days' where def_id in (1, 5)",
    );
    a1.maintenance_ok();
    assert_eq!(
        env.sql("select string_agg(def_id || ' ' || job_status, ',' order by def_id) from backup_definition where def_id <= 5"),
        "1 DELETED,2 DELETED,3 DELETED",
        "{}",
        a1.log()
    );
}

#[test]
fn forced_deletions_and_deleted_nodes_are_cleaned_on_the_server_that_holds_them() {
    let f = fleet();
    let env = &f.env;
    let mut a1 = agent(env, "bs1.example.org");
    a1.spawn(None);
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    let b1 = run_now(env, &a1, 1);
    let b2 = run_now(env, &a1, 1);
    a1.stop();
    let d = [dir_of(env, b1), dir_of(env, b2)];
    // bs2 knows nothing of these files and must not touch the queue of bs1.
    let a2 = agent(env, "bs2.example.org");
    env.cmd("delete_backup_definition_id 1 force-deletion").ok();
    assert_eq!(
        env.sql("select count(*) from catalog_entries_to_delete"),
        "2"
    );
    a2.maintenance_ok();
    assert_eq!(
        env.sql("select count(*) from catalog_entries_to_delete"),
        "2"
    );
    assert!(Path::new(&d[0]).exists());
    // Sent alerts are kept for the server's sent_alerts_retention (90 days), unsent ones always.
    env.sql(
        "insert into alert (alert_type, backup_server_id, alert_sent, sent_at, registered, error_message) values \
         ('BACKUP', 1, true, now() - interval '100 days', now() - interval '100 days', 'old sent'), \
         ('BACKUP', 1, true, now() - interval '10 days', now() - interval '10 days', 'recent sent'), \
         ('BACKUP', 1, false, null, now() - interval '100 days', 'old unsent')",
    );
    // The daemon's own timer does it all (no --maintenance here).
    a1.set_maintenance_seconds(1);
    a1.spawn(None);
    wait_for(
        env,
        "select count(*) from catalog_entries_to_delete",
        "0",
        30,
        &a1,
    );
    wait_for(
        env,
        "select string_agg(error_message, ',' order by alert_id) from alert",
        "recent sent,old unsent",
        30,
        &a1,
    );
    a1.stop();
    a1.set_maintenance_seconds(0);
    assert!(!Path::new(&d[0]).exists() && !Path::new(&d[1]).exists());

    // The node is deleted: each server removes its directory for it, and only its own queue row.
    let node_dir = a1.backups().join("pgsql_node_1");
    assert!(node_dir.is_dir());
    std::fs::write(node_dir.join("stray"), b"x").unwrap();
    env.cmd("delete_pgsql_node 127.0.0.2").ok();
    assert_eq!(env.sql("select count(*) from pgsql_node_to_delete"), "2");
    a1.maintenance_ok();
    assert!(!node_dir.exists(), "{}", a1.log());
    assert!(a1.backups().is_dir());
    assert_eq!(
        env.sql("select string_agg(backup_server_id::text, ',') from pgsql_node_to_delete"),
        "2"
    );
    a2.maintenance_ok();
    assert_eq!(env.sql("select count(*) from pgsql_node_to_delete"), "0");
}
