//! Physical restore drills end to end (issue 12): a node whose WAL the real agent archives, a
//! base backup, writes after it over several segments. `run_restore_drill <BckID>` of the base
//! backup restores it into a scratch instance on the backup server to an LSN drawn inside the
//! recoverable window, confirms the point reached, runs pg_amcheck, removes the instance and
//! records PASSED with the time to recover (show_verifications). Then the segment holding the
//! backup's end (needed whatever the point drawn) is corrupted on disk: wal-get refuses it by
//! sha256, recovery stops, the drill is FAILED with an alert naming the node, the base backup
//! and the reason, nothing is left running or on disk, and retention no longer counts the base
//! backup as good.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::Env;
use common::agent::*;
use pgbackman_testkit::TestCluster;

/// The agent, as the `postgres` OS user (PostgreSQL refuses root, and the scratch instance
/// reads the archive as the agent's user).
fn spawn_as_postgres(agent: &mut Agent) {
    let u = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    pgbackman_pgctl::chown_tree(agent.dir.path(), u.uid.as_raw(), u.gid.as_raw()).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&agent.log)
        .unwrap();
    let mut c = agent.command();
    c.uid(u.uid.as_raw())
        .gid(u.gid.as_raw())
        .env("HOME", agent.dir.path())
        .stdout(Stdio::null())
        .stderr(log);
    agent.child = Some(c.spawn().unwrap());
}

fn psql(node: &TestCluster, sql: &str) -> String {
    node.psql("postgres", sql).trim().to_string()
}

fn wait_archived(env: &Env, node: &TestCluster, agent: &Agent) {
    let lsn = psql(node, "select pg_switch_wal()");
    wait_for(
        env,
        &format!(
            "select coalesce(max(end_lsn) >= '{lsn}', false) from wal_object where kind = 'full'"
        ),
        "t",
        60,
        agent,
    );
}

/// Runs a drill of `bck` and waits for its verification row; returns (job, state).
fn drill(env: &Env, agent: &Agent, bck: i64) -> (i64, String) {
    let out = env.cmd(&format!("run_restore_drill {bck}")).ok();
    let job: i64 = env
        .sql(&format!(
            "select max(job_id) from job where kind = 'DRILL' and bck_id = {bck}"
        ))
        .parse()
        .unwrap_or_else(|_| panic!("no drill job: {}", out.stdout));
    wait_for(
        env,
        &format!("select count(*) from verification where job_id = {job}"),
        "1",
        240,
        agent,
    );
    (
        job,
        env.sql(&format!(
            "select state from verification where job_id = {job}"
        )),
    )
}

/// Waits until a drill's scratch instance has a live postmaster; returns its directory.
fn wait_scratch_running(drills: &Path, agent: &Agent) -> PathBuf {
    let mut found = None;
    wait_until("a drill's scratch instance running", 120, &[agent], || {
        for e in std::fs::read_dir(drills).into_iter().flatten().flatten() {
            let pid = std::fs::read_to_string(e.path().join("data/postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if pid.is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
            }) {
                found = Some(e.path());
                return true;
            }
        }
        false
    });
    found.unwrap()
}

#[test]
fn a_physical_drill_passes_on_a_good_archive_and_fails_with_an_alert_on_a_corrupt_segment() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "n");
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();
    let mut agent = Agent::configure(&env, "bs1.example.org", "");
    spawn_as_postgres(&mut agent);
    wait_until("the agent's slot streaming", 30, &[&agent], || {
        psql(
            &node,
            "select count(*) from pg_replication_slots where slot_name = 'pgbackman_bs1' and active",
        ) == "1"
    });
    env.cmd(
        "register_backup_definition bs1.example.org 127.0.0.2 \"\" \"\" 0 1 \"*\" \"*\" \"*\" BASEBACKUP false \"7 days\" 1 \"\" ACTIVE phys --wal-wait \"2 minutes\"",
    )
    .ok();
    let def: i64 = env
        .sql("select def_id from backup_definition where backup_code = 'BASEBACKUP'")
        .parse()
        .unwrap();
    psql(
        &node,
        "create table t (id serial primary key, v text); insert into t (v) select md5(g::text) from generate_series(1, 1000) g",
    );
    let bck = run_now(&env, &agent, def);
    assert_eq!(
        env.sql(&format!(
            "select state from base_backup where bck_id = {bck}"
        )),
        "SUCCEEDED",
        "{}",
        agent.log()
    );
    // Writes after it, over a few segments: the window the drill draws its point from.
    for _ in 0..3 {
        psql(
            &node,
            "insert into t (v) select md5(g::text) from generate_series(1, 2000) g; select pg_switch_wal()",
        );
    }
    wait_archived(&env, &node, &agent);

    // A drill of a logical-only command still refuses what is not restorable: an unknown BckID.
    env.cmd("run_restore_drill 999999")
        .fails_with("does not exist");

    // Good archive: PASSED, the point reached at or past the target, pg_amcheck clean.
    let (job, state) = drill(&env, &agent, bck);
    let row = env.sql(&format!(
        "select level || '|' || coalesce(error_step || ': ' || error_message, '') || '|' || details::text
           from verification where job_id = {job}"
    ));
    assert_eq!(state, "PASSED", "{row}\n{}", agent.log());
    eprintln!("physical drill of BckID {bck}: {row}");
    assert!(row.starts_with("3|"), "{row}");
    // Three segments were written after the backup: the window is wider than its last segment.
    assert_eq!(
        env.sql(&format!(
            "select details ->> 'target_kind' from verification where job_id = {job}"
        )),
        "lsn",
        "{row}"
    );
    let target = env.sql(&format!(
        "select details ->> 'target_lsn' from verification where job_id = {job}"
    ));
    assert_eq!(
        env.sql(&format!(
            "select (details ->> 'reached_lsn')::pg_lsn >= '{target}'::pg_lsn
                    and '{target}'::pg_lsn between (details -> 'window' ->> 'from_lsn')::pg_lsn
                                               and (details -> 'window' ->> 'to_lsn')::pg_lsn
               from verification where job_id = {job}"
        )),
        "t",
        "{row}"
    );
    assert!(row.contains("pg_amcheck --all"), "{row}");
    assert_eq!(
        env.sql(&format!(
            "select verification_level || ' ' || verification_state || ' ' || (drill_duration > '0'::interval)
               from backup_catalog where bck_id = {bck}"
        )),
        "3 PASSED true"
    );
    assert_eq!(
        env.sql(&format!(
            "select count(*) from restore_catalog where job_id = {job} and is_drill and execution_status = 'SUCCEEDED'"
        )),
        "1"
    );
    let shown = env.json("show_verifications").to_string();
    assert!(
        shown.contains("PASSED") && shown.contains(&format!("drills/job-{job}")),
        "{shown}"
    );
    assert_eq!(
        env.sql(&format!("select api.base_backup_counts({bck})")),
        "t"
    );
    let drills = agent.backups().join("drills");
    assert_eq!(
        std::fs::read_dir(&drills).map(|d| d.count()).unwrap_or(0),
        0
    );
    assert!(processes_with(&format!("pgbackman_drill_{bck}")).is_empty());

    // A drill schedule on a BASEBACKUP definition needs no drill node.
    env.cmd(&format!("update_drill_schedule {def} \"30 5 * * 0\""))
        .ok();
    env.cmd(&format!("update_drill_schedule {def} none")).ok();

    // An agent killed while the scratch instance runs: its next start stops and removes it.
    env.cmd(&format!("run_restore_drill {bck}")).ok();
    let scratch = wait_scratch_running(&drills, &agent);
    agent.sigkill();
    spawn_as_postgres(&mut agent);
    wait_until(
        "the interrupted drill's scratch instance removed",
        60,
        &[&agent],
        || !scratch.exists() && processes_with(&format!("pgbackman_drill_{bck}")).is_empty(),
    );
    assert!(
        agent
            .log()
            .contains("of a drill interrupted by an agent stop")
    );
    wait_for(
        &env,
        &format!(
            "select count(*) from job where kind = 'DRILL' and bck_id = {bck} and state in ('QUEUED', 'RUNNING')"
        ),
        "0",
        120,
        &agent,
    );

    // The segment holding the backup's end, corrupted on disk: wal-get refuses it.
    let (seg, path) = {
        let row = env.sql(&format!(
            "select api.wal_file_name(o.timeline, o.segno, o.seg_size, 'full', null) || '|' || o.stored_path
               from wal_object o join base_backup b on b.pgsql_node_id = o.pgsql_node_id
              where b.bck_id = {bck} and o.kind = 'full' and o.timeline = b.timeline
                and o.segno = api.wal_segno(b.stop_lsn - 1, b.seg_size)"
        ));
        let (a, b) = row.split_once('|').unwrap();
        (a.to_string(), PathBuf::from(b))
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let (job2, state) = drill(&env, &agent, bck);
    let err = env.sql(&format!(
        "select coalesce(error_step || ': ' || error_message, '') || ' | ' || coalesce(error_stderr_tail, '')
           from verification where job_id = {job2}"
    ));
    assert_eq!(state, "FAILED", "{err}\n{}", agent.log());
    assert!(err.starts_with("recovery: "), "{err}");
    assert!(err.contains(&seg), "{seg} in {err}");
    let alert = env.sql(&format!(
        "select alert_type || ' ' || execution_status || ' ' || error_message from alert where job_id = {job2}"
    ));
    assert!(alert.starts_with("DRILL FAILED"), "{alert}");
    for want in [
        format!("BckID {bck}"),
        "base backup of PgSQL node 127.0.0.2".into(),
        "recovery: ".into(),
    ] {
        assert!(alert.contains(&want), "{want} in {alert}");
    }
    assert_eq!(
        env.sql(&format!(
            "select verification_state from backup_catalog where bck_id = {bck}"
        )),
        "FAILED"
    );
    assert_eq!(
        env.sql(&format!("select api.base_backup_counts({bck})")),
        "f"
    );
    assert_eq!(
        std::fs::read_dir(&drills).map(|d| d.count()).unwrap_or(0),
        0
    );
    assert!(processes_with(&format!("pgbackman_drill_{bck}")).is_empty());
    drop(node);
}
