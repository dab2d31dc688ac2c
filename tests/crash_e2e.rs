//! A crash at the wrong moment, and files nobody owns (issue 10), for real: the agent SIGKILLed
//! after a set is in place and before its report, sets on disk without a catalog row, rows whose
//! files are gone, an absolute node partition, and partitions the agent could not clean. Each test
//! asserts the catalog rows, the files on disk, the alerts and what the shell shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::agent::*;

/// Backup set directories (named like sets) under `root`, at any depth up to 4.
fn sets_under(root: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if !p.is_dir() || e.file_name() == "staging" {
                continue;
            }
            if e.file_name().to_string_lossy().contains("-job") {
                out.push(p);
            } else if depth < 4 {
                walk(&p, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, 0, &mut out);
    out.sort();
    out
}

#[test]
fn a_kill_after_the_set_is_in_place_records_it_succeeded_and_a_damaged_one_is_removed() {
    let f = fleet();
    // pg_restore --list (verification level 2, after the rename) never returns: the agent is
    // killed with both sets complete in place and neither reported.
    let pids = tempfile::tempdir().unwrap();
    // Each hanging pg_restore leaves its pid (the sleep keeps it through exec).
    let hang = fake_tool(
        "pg_restore",
        &format!("touch {}/$$; exec sleep 600", pids.path().display()),
    );
    let mut a = Agent::start_with(
        &f.env,
        "bs1.example.org",
        Some(hang.path()),
        "maintenance_seconds = 0",
    );
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.3 crm \"\" 0 3")
        .ok();
    f.env.cmd("run_backup_definition_now 1").ok();
    f.env.cmd("run_backup_definition_now 2").ok();
    let hung = || {
        std::fs::read_dir(pids.path())
            .unwrap()
            .flatten()
            .filter(|e| Path::new("/proc").join(e.file_name()).exists())
            .count()
    };
    wait_until(
        "both sets in place, verification hanging",
        60,
        &[&a],
        || {
            sets_under(&a.backups())
                .iter()
                .filter(|s| s.join("manifest.json").is_file())
                .count()
                == 2
                && hung() == 2
        },
    );
    a.sigkill();
    assert_eq!(f.env.sql("select count(*) from backup_catalog"), "0");
    let sets = sets_under(&a.backups());
    let (shop, crm) = (
        sets.iter()
            .find(|s| s.to_string_lossy().contains("/shop/"))
            .unwrap()
            .clone(),
        sets.iter()
            .find(|s| s.to_string_lossy().contains("/crm/"))
            .unwrap()
            .clone(),
    );
    // crm's set is damaged while the agent is down.
    std::fs::write(crm.join("dump.pgdump.zst"), b"not a dump").unwrap();
    // Verification children run through the agent's launcher: they die with the agent.
    wait_until(
        "the hanging pg_restore to die with the agent",
        15,
        &[&a],
        || hung() == 0,
    );

    a.spawn(None);
    wait_for(
        &f.env,
        "select string_agg(dbname || ' ' || execution_status, ', ' order by dbname) from backup_catalog",
        "crm ERROR, shop SUCCEEDED",
        30,
        &a,
    );
    // shop: recorded as what it is, with the note, kept on disk, counted by retention.
    assert_eq!(
        f.env
            .sql("select backup_dir from backup_catalog where dbname = 'shop'"),
        shop.display().to_string()
    );
    assert!(shop.join("dump.pgdump.zst").is_file());
    assert_eq!(
        f.env.sql("select verification_level || ' ' || verification_state || ' ' || (pg_dump_file_size > 0) || ' ' || jsonb_array_length(files) from backup_catalog where dbname = 'shop'"),
        "1 PASSED true 5"
    );
    assert_eq!(
        f.env.sql("select state from job where def_id = 1"),
        "SUCCEEDED"
    );
    let d = f.env.cmd("show_backup_details 1").ok();
    assert!(
        d.stdout
            .contains("agent stopped after this set was complete"),
        "{}",
        d.stdout
    );
    let plan = f.env.json("show_retention_plan")["retention_plan"].clone();
    assert!(
        plan.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dbname"] == "shop"),
        "{plan}"
    );
    // crm: the damaged set is gone, the row says why; no staging left, nothing spooled.
    assert!(!crm.exists(), "{}", a.log());
    let msg = f
        .env
        .sql("select error_message from backup_catalog where dbname = 'crm'");
    assert!(msg.contains("agent stopped during the run"), "{msg}");
    assert!(
        msg.contains("does not verify") && msg.contains("was removed"),
        "{msg}"
    );
    assert_eq!(
        f.env.sql("select state from job where def_id = 2"),
        "FAILED"
    );
    assert_eq!(
        std::fs::read_dir(a.backups().join("staging"))
            .unwrap()
            .count(),
        0
    );
    wait_until("an empty spool", 10, &[&a], || a.spooled().is_empty());
    assert!(!a.state().join("running").read_dir().unwrap().any(|_| true));
    // The restored agent backs up as before (with the real pg_restore).
    a.stop();
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let cfg = cfg.replace(
        &hang.path().display().to_string(),
        "/usr/lib/postgresql/15/bin",
    );
    std::fs::write(&a.config, cfg).unwrap();
    a.spawn(None);
    let b = run_now(&f.env, &a, 1);
    assert_eq!(
        f.env.sql(&format!("select execution_status || ' ' || coalesce(note, '-') from backup_catalog where bck_id = {b}")),
        "SUCCEEDED -"
    );
}

/// The site of the retention tests: a node with "shop" (a table of 100 rows).
fn shop_site() -> Site {
    let s = site();
    s.node.psql(
        "shop",
        "create table t (id int primary key); insert into t select generate_series(1, 100)",
    );
    s
}

#[test]
fn an_absolute_partition_is_cleaned_where_it_is_written_and_an_uncleanable_one_is_refused() {
    let s = shop_site();
    let env = &s.env;
    let abs = tempfile::tempdir().unwrap();
    let part = abs.path().join("n1");
    // Partitions nobody could clean are refused when they are set.
    for bad in [
        "/",
        "/etc/pgbackman",
        "/usr/local/backups",
        "/var",
        "staging/x",
    ] {
        env.cmd(&format!(
            "update_pgsql_node_config 1 pgnode_backup_partition={bad}"
        ))
        .fails_with("cannot be used");
    }
    env.cmd(&format!(
        "update_pgsql_node_config 1 pgnode_backup_partition={}",
        part.display()
    ))
    .ok();
    let mut a = Agent::configure(env, "bs1.example.org", "maintenance_seconds = 0");
    a.spawn(None);
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3 \"*\" \"*\" \"*\" FULL false \"1 day\" 1").ok();
    let b1 = run_now(env, &a, 1);
    let b2 = run_now(env, &a, 1);
    let b3 = run_now(env, &a, 1);
    a.stop();
    let (d1, d2, d3) = (dir_of(env, b1), dir_of(env, b2), dir_of(env, b3));
    for d in [&d1, &d2, &d3] {
        assert!(d.starts_with(&part.display().to_string()), "{d}");
        assert!(Path::new(d).join("manifest.json").is_file());
    }
    age(env, b1, "10 days");
    age(env, b2, "9 days");
    // b2 was moved outside every directory the agent writes to: its deletion is refused.
    let outside = tempfile::tempdir().unwrap();
    let moved = outside.path().join("set");
    std::fs::rename(&d2, &moved).unwrap();
    env.sql(&format!(
        "update backup_catalog set backup_dir = '{}' where bck_id = {b2}",
        moved.display()
    ));
    a.maintenance_ok();
    // b1 deleted where it was written (row and files); b3 kept; b2 blocked, with an alert.
    assert!(!Path::new(&d1).exists(), "{}", a.log());
    assert_eq!(
        env.sql("select string_agg(bck_id::text, ',' order by bck_id) from backup_catalog"),
        format!("{b2},{b3}")
    );
    assert!(Path::new(&d3).is_dir());
    assert!(moved.join("manifest.json").is_file());
    let alert = env.sql("select alert_type || ' ' || execution_status || ' ' || bck_id from alert");
    assert_eq!(alert, format!("MAINTENANCE BLOCKED {b2}"));
    let plan =
        env.json("show_retention_plan all all all --deletions-only")["retention_plan"].clone();
    let row = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["bckid"] == b2)
        .unwrap_or_else(|| panic!("{plan}"));
    let why = row["blocked"].as_str().unwrap_or_default();
    assert!(why.contains("outside every backup root"), "{plan}");
    let shown = env.cmd("show_retention_plan").ok().stdout;
    assert!(shown.contains("Blocked"), "{shown}");
    // A second pass raises no second alert for the same refusal.
    a.maintenance_ok();
    assert_eq!(env.sql("select count(*) from alert"), "1");

    // A partition only the agent can tell it could not clean: its own directory, which holds
    // its backup_dir and state_dir. Nothing is written there; the backup fails and says why,
    // and maintenance raises an alert that the shell lists.
    env.cmd(&format!(
        "update_pgsql_node_config 1 pgnode_backup_partition={}",
        a.dir.path().display()
    ))
    .ok();
    a.stop();
    a.spawn(None);
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        env,
        "select execution_status || ' ' || error_step from backup_catalog order by bck_id desc limit 1",
        "ERROR partition",
        60,
        &a,
    );
    let msg = env.sql("select error_message from backup_catalog order by bck_id desc limit 1");
    assert!(msg.contains("contains the agent's backup_dir"), "{msg}");
    assert!(!a.dir.path().join("shop").exists());
    a.stop();
    a.maintenance_ok();
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'MAINTENANCE' and execution_status = 'PARTITION'"),
        "1"
    );
    let r = env.json("show_reconciliation all --kind PARTITION")["reconciliation"].clone();
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["path"], a.dir.path().display().to_string());
    assert!(
        r[0]["detail"]
            .as_str()
            .unwrap()
            .contains("update_pgsql_node_config"),
        "{r}"
    );
    // The sets written under the former partition stay deletable there.
    age(env, b3, "8 days");
    let b4 = {
        env.cmd(&format!(
            "update_pgsql_node_config 1 pgnode_backup_partition={}",
            part.display()
        ))
        .ok();
        a.spawn(None);
        let b = run_now(env, &a, 1);
        a.stop();
        b
    };
    a.maintenance_ok();
    assert!(!Path::new(&d3).exists(), "{}", a.log());
    assert!(Path::new(&dir_of(env, b4)).is_dir());
    // Settled: the PARTITION finding is gone.
    assert_eq!(
        env.sql("select string_agg(kind, ',' order by kind) from reconciliation"),
        "BLOCKED"
    );
}

#[test]
fn maintenance_reports_orphan_sets_and_rows_whose_files_are_gone_and_deletes_neither() {
    let s = shop_site();
    let env = &s.env;
    let mut a = Agent::configure(env, "bs1.example.org", "maintenance_seconds = 0");
    a.spawn(None);
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    let b1 = run_now(env, &a, 1);
    let b2 = run_now(env, &a, 1);
    a.stop();
    let d1 = PathBuf::from(dir_of(env, b1));
    let d2 = PathBuf::from(dir_of(env, b2));
    let parent = d1.parent().unwrap();
    // Two sets no row names (a complete one, a damaged one), and a row whose set is gone.
    let complete = parent.join("20260101T000000Z-job999001-def1-FULL");
    let damaged = parent.join("20260101T000000Z-job999002-def1-FULL");
    for to in [&complete, &damaged] {
        assert!(
            Command::new("cp")
                .arg("-a")
                .arg(&d1)
                .arg(to)
                .status()
                .unwrap()
                .success()
        );
    }
    std::fs::write(damaged.join("roles.sql"), b"-- changed\n").unwrap();
    std::fs::remove_dir_all(&d2).unwrap();
    // Not a set: a directory of the administrator's is never looked at.
    std::fs::create_dir_all(parent.join("notes")).unwrap();

    a.maintenance_ok();
    let found = env.sql(
        "select string_agg(kind || ' ' || path || ' ' || coalesce(bck_id::text, '-'), E'\\n' order by kind, path) from reconciliation",
    );
    assert_eq!(
        found,
        format!(
            "MISSING {} {b2}\nORPHAN {} -\nORPHAN {} -",
            d2.display(),
            complete.display(),
            damaged.display()
        ),
        "{}",
        a.log()
    );
    let detail = |p: &Path| {
        env.sql(&format!(
            "select detail from reconciliation where path = '{}'",
            p.display()
        ))
    };
    assert!(
        detail(&complete).contains("complete and verifies"),
        "{}",
        detail(&complete)
    );
    assert!(
        detail(&damaged).contains("does not verify"),
        "{}",
        detail(&damaged)
    );
    // Nothing is deleted: neither the orphans nor the row.
    assert!(complete.join("manifest.json").is_file() && damaged.is_dir());
    assert_eq!(
        env.sql(&format!(
            "select count(*) from backup_catalog where bck_id = {b2}"
        )),
        "1"
    );
    // One alert each, not one per pass.
    assert_eq!(
        env.sql("select string_agg(execution_status, ',' order by execution_status) from alert where alert_type = 'MAINTENANCE'"),
        "MISSING,ORPHAN,ORPHAN"
    );
    a.maintenance_ok();
    assert_eq!(env.sql("select count(*) from alert"), "3");
    // The shell lists them.
    let out = env.cmd("show_reconciliation").ok().stdout;
    for needle in ["ORPHAN", "MISSING", "job999001", "job999002"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let only =
        env.json("show_reconciliation bs1.example.org --kind missing")["reconciliation"].clone();
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only[0]["bckid"], b2);
    env.cmd("show_reconciliation all --kind LOST")
        .fails_with("ORPHAN, MISSING, BLOCKED, PARTITION");
    let help = env.cmd("show_reconciliation --help").ok().stdout;
    assert!(help.contains("never deleted automatically"), "{help}");
    // Settled by hand: the findings go at the next pass.
    std::fs::remove_dir_all(&damaged).unwrap();
    a.maintenance_ok();
    assert_eq!(
        env.sql("select string_agg(kind, ',' order by kind) from reconciliation"),
        "MISSING,ORPHAN"
    );
}
