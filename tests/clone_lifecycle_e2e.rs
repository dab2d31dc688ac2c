//! The clone lifecycle end to end (issue 12; part E's additions over part A's commands), with
//! the real agent running as its own non-root user: clones restored by register_pitr_restore,
//! counted against max_clones (a stopped one too), kept running across an agent restart (one
//! whose server died meanwhile is started again and its note says so), measured by maintenance
//! for show_backup_server_stats, warned about once (CLONE_EXPIRY, clone_expiry_warning before
//! their expiry) then deleted when it passes, and deleted on demand (delete_clone): nothing of
//! them left running or on disk.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::Env;
use common::agent::*;
use pgbackman_testkit::TestCluster;

fn postgres_user() -> nix::unistd::User {
    nix::unistd::User::from_name("postgres").unwrap().unwrap()
}

/// The agent, as the `postgres` OS user (PostgreSQL refuses root).
fn spawn_as_postgres(agent: &mut Agent) {
    let u = postgres_user();
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

/// One maintenance pass as the agent's user.
fn maintenance(agent: &Agent) -> Output {
    let u = postgres_user();
    let mut c = agent.command();
    c.arg("--maintenance")
        .uid(u.uid.as_raw())
        .gid(u.gid.as_raw())
        .env("HOME", agent.dir.path());
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "maintenance failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Stops every clone's server under `root` when the test ends, however it ends.
struct StopClones(PathBuf);

impl Drop for StopClones {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if let Some(pid) = postmaster(&e.path()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The live postmaster of the clone in `dir`, if any.
fn postmaster(dir: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(dir.join("data/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        .is_ok()
        .then_some(pid)
}

fn psql(node: &TestCluster, sql: &str) -> String {
    node.psql("postgres", sql).trim().to_string()
}

fn clone_sql(dir: &Path, port: &str, sql: &str) -> String {
    let bin = pgbackman_pgctl::find_bin_dir(None).unwrap();
    let o = Command::new(bin.join("psql"))
        .args(["-X", "-At", "-h"])
        .arg(dir)
        .args(["-p", port, "-U", "postgres", "-d", "postgres", "-c", sql])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Registers a clone and waits until it runs; returns (CloneID, port).
fn clone(env: &Env, agent: &Agent, args: &str) -> (i64, String) {
    let out = env
        .cmd(&format!("register_pitr_restore {args}"))
        .ok()
        .stdout;
    let id: i64 = out
        .split("CloneID ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no CloneID in {out}"));
    wait_for(
        env,
        &format!(
            "select state in ('RUNNING', 'STOPPED', 'FAILED') from clone where clone_id = {id}"
        ),
        "t",
        180,
        agent,
    );
    let row = env.sql(&format!(
        "select state || '|' || port || '|' || coalesce(error_message, '') from clone where clone_id = {id}"
    ));
    let f: Vec<&str> = row.splitn(3, '|').collect();
    assert_eq!(f[0], "RUNNING", "{row}\n{}", agent.log());
    (id, f[1].to_string())
}

fn state(env: &Env, id: i64) -> String {
    env.sql(&format!("select state from clone where clone_id = {id}"))
}

#[test]
fn clones_stop_start_count_survive_an_agent_restart_expire_and_delete() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "n");
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();
    env.cmd(
        "update_backup_server_config bs1.example.org max_clones=2 clone_expiry_warning='30 minutes'",
    )
    .ok();
    let mut agent = Agent::configure(&env, "bs1.example.org", "");
    spawn_as_postgres(&mut agent);
    let clones = agent.backups().join("clones");
    let _stop = StopClones(clones.clone());
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
        "create table t as select g from generate_series(1, 100) g",
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

    // Ports of their own (part A's tests take the first free ones from 55432). Two clones, the server's limit; a third is refused with the hint, nothing made.
    let (a, port_a) = clone(
        &env,
        &agent,
        &format!("{bck} --clone a --port 56101 --immediate --expires '1 hour'"),
    );
    let (b, port_b) = clone(
        &env,
        &agent,
        &format!("{bck} --clone b --port 56102 --immediate"),
    );
    let dir_a = clones.join("a");
    let dir_b = clones.join("b");
    assert_eq!(clone_sql(&dir_a, &port_a, "select count(*) from t"), "100");
    env.cmd(&format!(
        "register_pitr_restore {bck} --clone c --immediate"
    ))
    .fails_with("max_clones");
    assert_eq!(env.sql("select count(*) from clone where name = 'c'"), "0");

    // stop_clone, start_clone (part A's CLONE jobs): a stopped clone counts against the limit.
    env.cmd(&format!("stop_clone {a}")).ok();
    wait_for(
        &env,
        &format!("select state from clone where clone_id = {a}"),
        "STOPPED",
        60,
        &agent,
    );
    assert!(postmaster(&dir_a).is_none());
    assert!(dir_a.join("data/PG_VERSION").exists());
    env.cmd(&format!(
        "register_pitr_restore {bck} --clone c --immediate"
    ))
    .fails_with("max_clones");
    env.cmd(&format!("start_clone {a}")).ok();
    wait_for(
        &env,
        &format!("select state from clone where clone_id = {a}"),
        "RUNNING",
        60,
        &agent,
    );
    assert_eq!(clone_sql(&dir_a, &port_a, "select count(*) from t"), "100");

    // An agent restart: a keeps running; b, whose server died meanwhile, is started again.
    let pid_a = postmaster(&dir_a).unwrap();
    agent.sigkill();
    let pid_b = postmaster(&dir_b).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_b),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .unwrap();
    wait_until("clone b's server gone", 30, &[&agent], || {
        postmaster(&dir_b).is_none()
    });
    spawn_as_postgres(&mut agent);
    wait_for(
        &env,
        &format!(
            "select coalesce(note, '') like '%started again%' from clone where clone_id = {b}"
        ),
        "t",
        60,
        &agent,
    );
    assert_eq!(state(&env, b), "RUNNING");
    assert_eq!(clone_sql(&dir_b, &port_b, "select count(*) from t"), "100");
    assert_eq!(postmaster(&dir_a), Some(pid_a));
    let log = agent.log();
    assert!(log.contains("clone still running"), "{log}");
    assert!(log.contains("started again"), "{log}");

    // Maintenance (a pass of its own: the daemon stopped, which leaves clones running): the
    // disk use measured; a's expiry an hour away, past the 30 minutes' warning: no alert yet.
    agent.stop();
    assert_eq!(postmaster(&dir_a), Some(pid_a));
    maintenance(&agent);
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'CLONE_EXPIRY'"),
        "0"
    );
    let stats = env
        .json("show_backup_server_stats bs1.example.org")
        .to_string();
    assert!(stats.contains("\"clones\":2"), "{stats}");
    assert_eq!(
        env.sql("select bool_and(disk_bytes > 1000000) from clone where state = 'RUNNING'"),
        "t"
    );
    // Within the warning: one alert, once.
    env.sql(&format!(
        "update clone set expires_at = now() + interval '20 minutes' where clone_id = {a}"
    ));
    maintenance(&agent);
    let alert = env.sql(&format!(
        "select alert_type || ' ' || error_message from alert where alert_type = 'CLONE_EXPIRY' and ref_id = {a}"
    ));
    assert!(
        alert.contains("clone a") && alert.contains("is then deleted"),
        "{alert}"
    );
    maintenance(&agent);
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'CLONE_EXPIRY'"),
        "1"
    );

    // Its expiry passed: maintenance queues its deletion, which the agent runs.
    env.sql(&format!(
        "update clone set expires_at = now() - interval '1 second' where clone_id = {a}"
    ));
    maintenance(&agent);
    spawn_as_postgres(&mut agent);
    wait_for(
        &env,
        &format!("select state from clone where clone_id = {a}"),
        "DELETED",
        60,
        &agent,
    );
    assert!(!dir_a.exists());
    assert!(processes_with("pgbackman_clone_a").is_empty());
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'CLONE_EXPIRY'"),
        "1"
    );

    // delete_clone on demand; a deleted clone is gone for the commands.
    env.cmd(&format!("delete_clone {b}")).ok();
    wait_for(
        &env,
        &format!("select state from clone where clone_id = {b}"),
        "DELETED",
        60,
        &agent,
    );
    assert!(!dir_b.exists());
    assert!(processes_with("pgbackman_clone_b").is_empty());
    env.cmd(&format!("start_clone {b}"))
        .fails_with("does not exist");
    // The limit counts live clones only: a new one fits again.
    let (_c, _) = clone(
        &env,
        &agent,
        &format!("{bck} --clone c --port 56103 --immediate"),
    );
    drop(node);
}
