//! The agent end to end: real `pgbackman` and `pgbackman-agent` binaries, a catalog cluster, two
//! node clusters (127.0.0.2 and 127.0.0.3) and two agents with their own state directories.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Env;
use common::agent::*;

#[test]
fn run_now_and_snapshot_on_two_agents_produce_verified_sets() {
    let f = fleet();
    let a1 = Agent::start(&f.env, "bs1.example.org", None);
    let a2 = Agent::start(&f.env, "bs2.example.org", None);
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    f.env.cmd("run_backup_definition_now 1").ok();
    f.env.cmd("register_snapshot_definition bs2.example.org 127.0.0.3 crm \"\" now FULL \"2 days\" \"\" snap1").ok();
    wait_for(&f.env, "select count(*) from backup_catalog", "2", 60, &a1);
    assert_eq!(f.env.sql("select string_agg(execution_status || ':' || execution_method, ',' order by execution_method) from backup_catalog"), "SUCCEEDED:AT,SUCCEEDED:MANUAL", "{}", a2.log());
    // Each set is on its own server, and every file's checksum in the catalog matches the disk.
    // Which job finishes first is not promised: find each row by what it is.
    let id = |q: &str| -> i64 {
        f.env
            .sql(&format!("select bck_id from backup_catalog where {q}"))
            .parse()
            .unwrap()
    };
    let (by_def, by_snap) = (id("def_id is not null"), id("snapshot_id is not null"));
    for (bck, agent) in [(by_def, &a1), (by_snap, &a2)] {
        let dir = f.env.sql(&format!(
            "select backup_dir from backup_catalog where bck_id = {bck}"
        ));
        assert!(Path::new(&dir).starts_with(agent.backups()), "{dir}");
        let files: serde_json::Value = serde_json::from_str(&f.env.sql(&format!(
            "select files from backup_catalog where bck_id = {bck}"
        )))
        .unwrap();
        let files = files.as_array().unwrap();
        assert!(files.len() >= 3, "{files:?}");
        for file in files {
            let p = Path::new(&dir).join(file["name"].as_str().unwrap());
            assert_eq!(
                sha256(&p),
                file["sha256"].as_str().unwrap(),
                "{}",
                p.display()
            );
        }
        let roles = f.env.sql(&format!(
            "select array_to_string(role_list, ',') from backup_catalog where bck_id = {bck}"
        ));
        assert!(
            roles.contains("app_owner") && roles.contains("app_reader"),
            "{roles}"
        );
    }
    assert_eq!(
        f.env.sql("select status from snapshot_definition"),
        "SUCCEEDED"
    );
    let _ = (&f.a, &f.b);
}

#[test]
fn scheduled_backups_fire_on_time_and_once_across_restarts() {
    let f = fleet();
    let mut a1 = Agent::start(&f.env, "bs1.example.org", None);
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" \"*\" \"*\"")
        .ok();
    wait_for(
        &f.env,
        "select count(*) > 0 from backup_catalog where execution_method = 'CRON'",
        "t",
        75,
        &a1,
    );
    // It started within a few seconds of its minute.
    assert_eq!(f.env.sql("select bool_and(claimed_at - scheduled_for < interval '3 seconds') from job where scheduled_for is not null"), "t", "{}", a1.log());
    assert_eq!(f.env.sql("select bool_and(extract(second from scheduled_for) = 0) from job where scheduled_for is not null"), "t");
    // A clean stop and an immediate restart: the instant that just ran is not run again.
    assert!(a1.sigterm().success(), "{}", a1.log());
    a1.spawn(None);
    std::thread::sleep(Duration::from_secs(3));
    // The unique index alone would hide a second pg_dump run of an instant: count what reached
    // the disk. Every backup set on disk belongs to one catalog row, one per scheduled instant.
    std::thread::sleep(Duration::from_secs(1));
    let sets = std::fs::read_dir(a1.backups().join("pgsql_node_1").join("shop"))
        .map(|d| d.count())
        .unwrap_or(0);
    let instants: usize = f
        .env
        .sql("select count(distinct j.scheduled_for) from backup_catalog c join job j using (job_id) where j.scheduled_for is not null and c.execution_status = 'SUCCEEDED'")
        .parse()
        .unwrap();
    assert_eq!(
        sets,
        instants,
        "backup sets on disk vs scheduled instants\n{}",
        a1.log()
    );
    assert!(a1.log().contains("already ran"), "{}", a1.log());
}

#[test]
fn cancel_and_failures_leave_a_true_row_and_no_files() {
    let f = fleet();
    let slow = fake_bin("sleep 30; exec /usr/lib/postgresql/15/bin/pg_dump \"$@\"");
    let mut a1 = Agent::start(&f.env, "bs1.example.org", Some(slow.path()));
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    f.env.cmd("run_backup_definition_now 1").ok();
    wait_for(&f.env, "select state from job", "RUNNING", 20, &a1);
    std::thread::sleep(Duration::from_millis(500));
    let r = f.env.cmd("cancel_job 1").ok();
    assert!(r.stdout.contains("being cancelled"), "{}", r.stdout);
    wait_for(
        &f.env,
        "select execution_status from backup_catalog",
        "CANCELLED",
        20,
        &a1,
    );
    assert_eq!(f.env.sql("select state from job"), "CANCELLED");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        processes_with(&slow.path().display().to_string()).is_empty(),
        "a pg_dump outlived the cancel"
    );
    assert!(
        files_under(&a1.backups()).is_empty(),
        "{:?}",
        files_under(&a1.backups())
    );
    a1.sigkill();

    // A failing pg_dump: the row names the step, the exit status and the stderr.
    let failing = fake_bin("echo 'pg_dump: error: simulated failure' >&2; exit 3");
    let a2 = Agent::start(&f.env, "bs1.example.org", Some(failing.path()));
    f.env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &f.env,
        "select count(*) from backup_catalog where execution_status = 'ERROR'",
        "1",
        20,
        &a2,
    );
    let row = f.env.sql("select error_step || '|' || error_exit_status || '|' || error_stderr_tail from backup_catalog where execution_status = 'ERROR'");
    assert!(
        row.starts_with("pg_dump|3|") && row.contains("simulated failure"),
        "{row}"
    );
    assert!(
        files_under(&a2.backups()).is_empty(),
        "{:?}",
        files_under(&a2.backups())
    );
    assert_eq!(f.env.sql("select alert_type from alert"), "BACKUP");
    let d = f.env.cmd("show_backup_details 2").ok();
    assert!(d.stdout.contains("simulated failure"), "{}", d.stdout);
}

#[test]
fn a_killed_agent_records_its_interrupted_job_at_restart() {
    let f = fleet();
    let slow = fake_bin("sleep 20; exec /usr/lib/postgresql/15/bin/pg_dump \"$@\"");
    let mut a1 = Agent::start(&f.env, "bs1.example.org", Some(slow.path()));
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    f.env.cmd("run_backup_definition_now 1").ok();
    wait_for(&f.env, "select state from job", "RUNNING", 20, &a1);
    a1.sigkill();
    // The fake's shell dies with the agent; its `sleep` grandchild is not the agent's to end.
    let _ = Command::new("pkill").arg("-f").arg(slow.path()).status();
    a1.spawn(Some(slow.path()));
    wait_for(
        &f.env,
        "select error_message from backup_catalog",
        "agent stopped during the run",
        20,
        &a1,
    );
    assert_eq!(f.env.sql("select state from job"), "FAILED");
}

#[test]
fn every_backup_code_produces_a_readable_set() {
    let f = fleet();
    let a1 = Agent::start(&f.env, "bs1.example.org", None);
    for code in ["SCHEMA", "DATA", "CLUSTER", "GLOBALS"] {
        let db = if code == "SCHEMA" || code == "DATA" {
            "shop"
        } else {
            "\"\""
        };
        f.env.cmd(&format!("register_backup_definition bs1.example.org 127.0.0.2 {db} \"\" 0 3 \"*\" \"*\" \"*\" {code}")).ok();
    }
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 4 --format directory --jobs 2")
        .ok();
    for id in 1..=5 {
        f.env.cmd(&format!("run_backup_definition_now {id}")).ok();
    }
    wait_for(
        &f.env,
        "select count(*) filter (where execution_status = 'SUCCEEDED') from backup_catalog",
        "5",
        60,
        &a1,
    );
    // The directory-format set: its table of contents reads, and every member is in the catalog.
    let dir = f
        .env
        .sql("select pg_dump_file from backup_catalog where dump_format = 'directory'");
    assert!(dir.ends_with("dump.dir"), "{dir}");
    let o = Command::new("/usr/lib/postgresql/15/bin/pg_restore")
        .arg("--list")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let members: i32 = f
        .env
        .sql("select count(*) from backup_catalog, jsonb_array_elements(files) e where dump_format = 'directory' and e->>'name' like 'dump.dir/%'")
        .parse()
        .unwrap();
    assert!(members >= 2, "{members} directory members in the catalog");
    for (code, file) in [
        ("SCHEMA", "dump.pgdump.zst"),
        ("DATA", "dump.pgdump.zst"),
        ("CLUSTER", "cluster.sql.zst"),
        ("GLOBALS", "globals.sql.zst"),
    ] {
        let p = f.env.sql(&format!(
            "select pg_dump_file from backup_catalog where backup_code = '{code}'"
        ));
        assert!(p.ends_with(file), "{code}: {p}");
        let bytes = zstd::decode_all(std::fs::File::open(&p).unwrap()).unwrap();
        if file == "dump.pgdump.zst" {
            let tmp = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(tmp.path(), &bytes).unwrap();
            let o = Command::new("/usr/lib/postgresql/15/bin/pg_restore")
                .arg("--list")
                .arg(tmp.path())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{code}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        } else {
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains("CREATE ROLE"), "{code}");
        }
    }
}

#[test]
fn check_reports_each_precondition() {
    let env = Env::new();
    let a = Agent::start(&env, "bs9.example.org", None);
    let o = Command::new(env!("CARGO_BIN_EXE_pgbackman-agent"))
        .arg("--config")
        .arg(&a.config)
        .arg("--check")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(out.contains("[OK] catalog reachable"), "{out}");
    assert!(
        out.contains("[ERROR] this host (bs9.example.org) is not a registered backup server"),
        "{out}"
    );
    assert!(out.contains("[OK] pg_dump 15"), "{out}");
    env.cmd("register_backup_server bs9 example.org x").ok();
    let o = Command::new(env!("CARGO_BIN_EXE_pgbackman-agent"))
        .arg("--config")
        .arg(&a.config)
        .arg("--check")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn sigterm_cancels_running_dumps_and_records_them() {
    let f = fleet();
    let slow = fake_bin("sleep 30; exec /usr/lib/postgresql/15/bin/pg_dump \"$@\"");
    let mut a1 = Agent::start(&f.env, "bs1.example.org", Some(slow.path()));
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    f.env.cmd("run_backup_definition_now 1").ok();
    wait_for(&f.env, "select state from job", "RUNNING", 20, &a1);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert!(a1.sigterm().success(), "{}", a1.log());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(
        f.env.sql(
            "select execution_status || '|' || state from backup_catalog join job using (job_id)"
        ),
        "CANCELLED|CANCELLED"
    );
    assert!(
        processes_with(&slow.path().display().to_string()).is_empty(),
        "a pg_dump outlived the agent"
    );
    assert!(
        files_under(&a1.backups()).is_empty(),
        "{:?}",
        files_under(&a1.backups())
    );
}

#[test]
fn tricky_database_names_back_up_inside_the_backup_directory() {
    let f = fleet();
    for db in ["my db", "quo\"te's", "ünïcødé", "../x", "a/b"] {
        f.a.create_database(db);
    }
    let a1 = Agent::start(&f.env, "bs1.example.org", None);
    f.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 \"#all_databases#\" shop")
        .ok();
    let n: usize = f
        .env
        .sql("select count(*) from backup_definition")
        .parse()
        .unwrap();
    assert_eq!(n, 5);
    for id in 1..=n {
        f.env.cmd(&format!("run_backup_definition_now {id}")).ok();
    }
    wait_for(
        &f.env,
        "select count(*) filter (where execution_status = 'SUCCEEDED') from backup_catalog",
        "5",
        60,
        &a1,
    );
    let root = a1.backups().canonicalize().unwrap();
    for dir in f
        .env
        .sql("select string_agg(backup_dir, E'\\n') from backup_catalog")
        .lines()
    {
        let real = Path::new(dir).canonicalize().unwrap();
        assert!(
            real.starts_with(&root),
            "{dir} is outside {}",
            root.display()
        );
        assert_eq!(
            real.parent().unwrap().parent().unwrap().parent().unwrap(),
            root,
            "{dir}: one level per node, database, set"
        );
    }
}
