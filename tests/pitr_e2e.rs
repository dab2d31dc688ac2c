//! Point-in-time recovery into clones end to end (issue 12): a node whose WAL the real agent
//! archives, pgbench writes, a base backup, more writes with a named restore point and recorded
//! times and counts, a table dropped by mistake. Clones restored by the agent (running as its
//! own non-root user, as in production) to the time just before the drop, to the restore point
//! and to the base backup's consistent point hold exactly the rows the test counted then.
//! Refusals at planning (before the first base backup, on an unknown timeline, in a hole)
//! create nothing; a corrupt segment makes wal-get exit 126 and the recovery stop (the job
//! fails naming the segment, nothing is left running or on disk) instead of promoting.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Env;
use common::agent::*;
use pgbackman_testkit::TestCluster;

fn bin_dir() -> PathBuf {
    pgbackman_pgctl::find_bin_dir(None).unwrap()
}

/// The agent, as the `postgres` OS user (PostgreSQL refuses root, and the clone reads the
/// archive as the agent's user).
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

/// Stops every clone's server under `root` when the test ends, however it ends (SIGQUIT:
/// immediate shutdown; root may not run pg_ctl).
struct StopClones(PathBuf);

impl Drop for StopClones {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let pid = std::fs::read_to_string(e.path().join("data/postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn psql(node: &TestCluster, sql: &str) -> String {
    node.psql("postgres", sql).trim().to_string()
}

/// A query on a clone, through its socket directory.
fn clone_sql(dir: &Path, port: &str, sql: &str) -> String {
    let o = Command::new(bin_dir().join("psql"))
        .args(["-X", "-At", "-h"])
        .arg(dir)
        .args(["-p", port, "-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGOPTIONS", "-c lock_timeout=20s -c statement_timeout=30s")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Registers a clone and waits for its job to end; returns (state, port, error).
fn clone(env: &Env, agent: &Agent, args: &str) -> (String, String, String) {
    let out = env.cmd(&format!("register_pitr_restore {args}")).ok();
    let text = out.stdout.clone();
    let id: i64 = text
        .split("CloneID ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no CloneID in {text}"));
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
        "select state || '|' || port || '|' || coalesce(error_step || ': ' || error_message, '') from clone where clone_id = {id}"
    ));
    let f: Vec<&str> = row.splitn(3, '|').collect();
    (f[0].into(), f[1].into(), f[2].into())
}

/// Pids of the processes whose command line holds every needle.
fn pids_with(needles: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
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

#[test]
fn clones_restore_to_a_time_a_name_and_the_backup_and_refuse_what_they_cannot() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "n");
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();
    let mut agent = Agent::configure(&env, "bs1.example.org", "maintenance_seconds = 2");
    spawn_as_postgres(&mut agent);
    let _stop = StopClones(agent.backups().join("clones"));
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

    // Writes before the base backup: pgbench and a table of our own.
    let pgbench = |args: &[&str]| {
        let o = Command::new(bin_dir().join("pgbench"))
            .args(["-h", &node.socket_dir().display().to_string()])
            .args(["-p", &node.port().to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    pgbench(&["-i", "-s", "1", "-q"]);
    psql(
        &node,
        "create table orders (id serial primary key, at timestamptz default clock_timestamp());
         insert into orders select from generate_series(1, 100)",
    );
    let before_backup = psql(&node, "select now()");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let bck = run_now(&env, &agent, def);
    assert_eq!(
        env.sql(&format!(
            "select state from base_backup where bck_id = {bck}"
        )),
        "SUCCEEDED",
        "{}",
        agent.log()
    );

    // After it (in a segment of its own): pgbench, 50 rows, a restore point, 50 rows, the time, then the mistake.
    psql(&node, "select pg_switch_wal()");
    pgbench(&["-t", "200", "-n"]);
    psql(
        &node,
        "insert into orders select from generate_series(1, 50)",
    );
    psql(&node, "select pg_create_restore_point('rp_150')");
    psql(
        &node,
        "insert into orders select from generate_series(1, 50)",
    );
    assert_eq!(psql(&node, "select count(*) from orders"), "200");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before_drop = psql(&node, "select now()");
    let lsn_before_drop = psql(&node, "select pg_current_wal_lsn()");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    psql(&node, "drop table orders");
    wait_archived(&env, &node, &agent);

    // The catalog answers from itself.
    let r = env.json(&format!(
        "show_restore_points 127.0.0.2 --time '{before_drop}'"
    ));
    assert!(r.to_string().contains(&format!("\"bckid\":{bck}")), "{r}");
    let r = env.json("show_restore_points 127.0.0.2");
    assert_eq!(r["restore_points"][0]["bckid"], bck, "{r}");
    let r = env.json(&format!(
        "show_restore_points 127.0.0.2 --lsn {lsn_before_drop}"
    ));
    assert!(r.to_string().contains("\"restorable\":\"yes\""), "{r}");
    let r = env.json(&format!(
        "show_restore_points 127.0.0.2 --time '{before_backup}'"
    ));
    assert!(
        r.to_string()
            .contains("before the end of the first base backup"),
        "{r}"
    );
    let dry = env
        .cmd(&format!(
            "register_pitr_restore latest --node 127.0.0.2 --clone dry --target-time '{before_drop}' --dry-run"
        ))
        .ok();
    assert!(dry.stdout.contains("WAL segments"), "{}", dry.stdout);
    assert_eq!(env.sql("select count(*) from clone"), "0");

    // Refusals at planning: nothing is created.
    for (args, want) in [
        (
            format!("latest --node 127.0.0.2 --clone early --target-time '{before_backup}'"),
            "before the end of the first base backup",
        ),
        (
            format!("{bck} --clone tl7 --immediate --timeline 7"),
            "timeline 7 of PgSQL node 127.0.0.2 is not in the archive",
        ),
        (
            format!("{bck} --clone \"x'; drop table clone; --\" --immediate"),
            "clone name",
        ),
        (
            format!("{bck} --clone \"../../etc\" --immediate"),
            "clone name",
        ),
        (format!("{bck} --clone \"é\" --immediate"), "clone name"),
    ] {
        env.cmd(&format!("register_pitr_restore {args}"))
            .fails_with(want);
    }
    assert_eq!(env.sql("select count(*) from clone"), "0");
    assert_eq!(
        env.sql("select count(*) from job where kind = 'CLONE'"),
        "0"
    );

    // The time just before the drop: the table with its 200 rows.
    let (state, port, err) = clone(
        &env,
        &agent,
        &format!("latest --node 127.0.0.2 --clone before-drop --target-time '{before_drop}'"),
    );
    assert_eq!(state, "RUNNING", "{err}\n{}", agent.log());
    let dir = agent.backups().join("clones/before-drop");
    assert_eq!(clone_sql(&dir, &port, "select count(*) from orders"), "200");
    eprintln!(
        "phases of clone before-drop (s): {}",
        env.sql("select phase_timings from clone where name = 'before-drop'")
    );
    let d = env.json("show_clone_details 1");
    let d = d.to_string();
    for want in [
        "\"fetch\"",
        "\"extract\"",
        "\"recovery\"",
        "\"check\"",
        "promoted",
        "host=",
    ] {
        assert!(d.contains(want), "{want} in {d}");
    }

    // The restore point, paused there: 150 rows, archiving and streaming nothing.
    let (state, port, err) = clone(
        &env,
        &agent,
        &format!("{bck} --clone at-rp --target-name rp_150 --target-action pause"),
    );
    assert_eq!(state, "RUNNING", "{err}\n{}", agent.log());
    let dir2 = agent.backups().join("clones/at-rp");
    assert_eq!(
        clone_sql(&dir2, &port, "select count(*) from orders"),
        "150"
    );
    assert_eq!(clone_sql(&dir2, &port, "select pg_is_in_recovery()"), "t");
    assert_eq!(
        clone_sql(&dir2, &port, "select pg_get_wal_replay_pause_state()"),
        "paused"
    );
    assert_eq!(clone_sql(&dir2, &port, "show archive_mode"), "off");
    assert_eq!(clone_sql(&dir2, &port, "show primary_conninfo"), "");

    // The base backup's consistent point: the 100 rows it held.
    let (state, port, err) = clone(&env, &agent, &format!("{bck} --clone base --immediate"));
    assert_eq!(state, "RUNNING", "{err}\n{}", agent.log());
    let dir3 = agent.backups().join("clones/base");
    assert_eq!(
        clone_sql(&dir3, &port, "select count(*) from orders"),
        "100"
    );

    // Stopped, started again, deleted from the shell.
    let id = env.sql("select clone_id from clone where name = 'base'");
    let state = |id: &str| format!("select state from clone where clone_id = {id}");
    env.cmd(&format!("stop_clone {id}")).ok();
    wait_for(&env, &state(&id), "STOPPED", 60, &agent);
    wait_until("clone base stopped", 15, &[&agent], || {
        processes_with("pgbackman_clone_base").is_empty()
    });
    env.cmd(&format!("stop_clone {id}"))
        .fails_with("it cannot be stopped");
    env.cmd(&format!("start_clone {id}")).ok();
    wait_for(&env, &state(&id), "RUNNING", 60, &agent);
    assert_eq!(
        clone_sql(&dir3, &port, "select count(*) from orders"),
        "100"
    );
    env.cmd(&format!("delete_clone {id}")).ok();
    wait_for(&env, &state(&id), "DELETED", 60, &agent);
    assert!(!dir3.exists());
    wait_until("clone base stopped", 15, &[&agent], || {
        processes_with("pgbackman_clone_base").is_empty()
    });

    // The server's clone limit.
    env.cmd("update_backup_server_config bs1.example.org max_clones=2")
        .ok();
    env.cmd(&format!(
        "register_pitr_restore {bck} --clone third --immediate"
    ))
    .fails_with("holds 2 clone(s), its limit (max_clones)");
    env.cmd("update_backup_server_config bs1.example.org max_clones=5")
        .ok();

    // A clone past its expiry is deleted by the maintenance pass.
    let (state, _, err) = clone(
        &env,
        &agent,
        &format!("{bck} --clone brief --immediate --expires '1 second'"),
    );
    assert_eq!(state, "RUNNING", "{err}");
    wait_for(
        &env,
        "select state from clone where name = 'brief'",
        "DELETED",
        60,
        &agent,
    );
    assert!(!agent.backups().join("clones/brief").exists());
    wait_until("clone brief stopped", 15, &[&agent], || {
        processes_with("pgbackman_clone_brief").is_empty()
    });

    // A corrupt segment after the backup: wal-get exits 126, recovery stops, the job fails
    // naming the segment, and nothing of the clone is left.
    let (seg, path) = {
        let row = env.sql(&format!(
            "select api.wal_file_name(o.timeline, o.segno, o.seg_size, 'full', null) || '|' || o.stored_path
               from wal_object o join base_backup b on b.pgsql_node_id = o.pgsql_node_id
              where b.bck_id = {bck} and o.kind = 'full' and o.start_lsn > b.stop_lsn
                and o.start_lsn <= '{lsn_before_drop}' and o.end_lsn > '{lsn_before_drop}'"
        ));
        let (a, b) = row.split_once('|').unwrap();
        (a.to_string(), PathBuf::from(b))
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let end = &lsn_before_drop;
    let (state, _, err) = clone(
        &env,
        &agent,
        &format!("{bck} --clone corrupt --target-lsn {end}"),
    );
    assert_eq!(state, "FAILED", "{err}");
    assert!(err.starts_with("recovery: "), "{err}");
    assert!(err.contains(&seg), "{seg} in {err}");
    assert!(!agent.backups().join("clones/corrupt").exists());
    wait_until("the failed clone's processes gone", 15, &[&agent], || {
        processes_with("pgbackman_clone_corrupt").is_empty()
    });

    // A hole (a segment the ledger lost) between the base backup and the target, with WAL
    // archived after it.
    psql(&node, "create table later as select 1 as x");
    wait_archived(&env, &node, &agent);
    env.sql(&format!(
        "delete from wal_object where kind = 'full' and stored_path = '{}'",
        path.display()
    ));
    env.cmd(&format!(
        "register_pitr_restore {bck} --clone holed --target-lsn {end}"
    ))
    .fails_with("falls in a hole");
    assert_eq!(
        env.sql("select count(*) from clone where name = 'holed'"),
        "0"
    );
    // An agent SIGKILLed mid-restore (its clone's recovery blocked in wal-get: the stored
    // segment replaced by a FIFO nobody writes): the next start stops and removes the
    // half-made clone, and its row says so.
    let first = PathBuf::from(env.sql(&format!(
        "select o.stored_path from wal_object o join base_backup b on b.pgsql_node_id = o.pgsql_node_id
          where b.bck_id = {bck} and o.kind = 'full' and o.start_lsn <= b.start_lsn and o.end_lsn > b.start_lsn"
    )));
    let kept = std::fs::read(&first).unwrap();
    std::fs::remove_file(&first).unwrap();
    nix::unistd::mkfifo(&first, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let u = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    nix::unistd::chown(&first, Some(u.uid), Some(u.gid)).unwrap();
    env.cmd(&format!(
        "register_pitr_restore {bck} --clone killed --immediate"
    ))
    .ok();
    wait_until("the clone blocked in wal-get", 60, &[&agent], || {
        !pids_with(&["wal-get", "clones/killed"]).is_empty()
    });
    assert!(!processes_with("pgbackman_clone_killed").is_empty());
    agent.sigkill();
    assert!(
        !processes_with("pgbackman_clone_killed").is_empty(),
        "the half-made clone runs on after the agent's death"
    );
    spawn_as_postgres(&mut agent);
    wait_for(
        &env,
        "select state from clone where name = 'killed'",
        "FAILED",
        60,
        &agent,
    );
    let err =
        env.sql("select error_step || ': ' || error_message from clone where name = 'killed'");
    assert!(
        err.starts_with("agent: agent stopped during the restore"),
        "{err}"
    );
    assert!(!agent.backups().join("clones/killed").exists());
    wait_until("the half-made clone stopped", 30, &[&agent], || {
        processes_with("pgbackman_clone_killed").is_empty()
    });
    for pid in pids_with(&["wal-get", "clones/killed"]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::fs::remove_file(&first).unwrap();
    std::fs::write(&first, kept).unwrap();

    drop(node);
}
