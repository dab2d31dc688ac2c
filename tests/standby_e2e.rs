//! `pause_recovery_on_standby` with a real primary / standby pair: while a dump of the standby
//! runs, writes on the primary do not advance the standby's replay position; after the last
//! dump of the node ends (succeeded, failed, cancelled, its agent SIGKILLed and restarted, or
//! the maximum pause reached) they do.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Env;
use common::agent::{Agent, fake_bin, wait_for};
use pgbackman_testkit::{Standby, TestCluster};

/// A pg_dump that waits until the test writes `<dir>/go-<db>` ("fail": it fails, anything
/// else: it runs the real pg_dump), so the test decides when each dump ends.
fn gated_pg_dump(dir: &Path) -> tempfile::TempDir {
    let d = dir.display();
    fake_bin(&format!(
        "f=x\nfor a in \"$@\"; do case \"$a\" in --dbname=*shop*) f=shop;; --dbname=*crm*) f=crm;; esac; done\n\
         while [ ! -e {d}/go-$f ]; do sleep 0.1; done\n\
         how=$(cat {d}/go-$f); rm -f {d}/go-$f\n\
         if [ \"$how\" = fail ]; then echo 'pg_dump: error: simulated failure' >&2; exit 3; fi\n\
         exec /usr/lib/postgresql/15/bin/pg_dump \"$@\""
    ))
}

fn go(dir: &Path, db: &str, how: &str) {
    std::fs::write(dir.join(format!("go-{db}")), how).unwrap();
}

/// A write on the primary that the standby receives; returns once it has it.
fn write_on_primary(primary: &TestCluster, standby: &Standby) {
    primary.psql(
        "shop",
        "insert into t (v) select md5(g::text) from generate_series(1, 100) g",
    );
    standby.wait_received(primary);
}

/// Replay does not move: what the standby received stays unreplayed.
#[track_caller]
fn assert_held(primary: &TestCluster, standby: &Standby, agent: &Agent, what: &str) {
    let before = standby.replay_lsn();
    write_on_primary(primary, standby);
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        standby.replay_paused() && standby.replay_lsn() == before && !standby.has_replayed(primary),
        "{what}: replay moved from {before} to {} (paused: {})\nagent log:\n{}",
        standby.replay_lsn(),
        standby.replay_paused(),
        agent.log()
    );
}

/// Replay resumed: the standby catches up with a new write.
#[track_caller]
fn assert_resumed(primary: &TestCluster, standby: &Standby, agent: &Agent, what: &str) {
    primary.psql("shop", "insert into t (v) values ('after')");
    let t0 = Instant::now();
    while !standby.has_replayed(primary) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what}: replay not resumed (paused: {}, at {})\nagent log:\n{}",
            standby.replay_paused(),
            standby.replay_lsn(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!standby.replay_paused(), "{what}");
}

fn paused_markers(agent: &Agent) -> usize {
    std::fs::read_dir(agent.state().join("recovery_paused"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[track_caller]
fn wait_paused(standby: &Standby, agent: &Agent) {
    let t0 = Instant::now();
    while !standby.replay_paused() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "replay never paused\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Pair {
    env: Env,
    primary: TestCluster,
    standby: Standby,
}

/// A catalog, backup server bs1, a primary on 127.0.0.2 with databases shop and crm (table t),
/// and its standby on 127.0.0.5 registered as NodeID 1 with pause_recovery_on_standby=true.
fn pair() -> Pair {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let primary = TestCluster::start_on(&["127.0.0.2"]);
    for db in ["shop", "crm"] {
        primary.create_database(db);
        primary.psql(db, "create table t (id bigserial primary key, v text)");
    }
    let standby = Standby::of(&primary, &["127.0.0.5"]);
    standby.wait_replayed(&primary);
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.5 \"\" {} postgres RUNNING standby",
        standby.port()
    ))
    .ok();
    env.cmd("update_pgsql_node_config 1 pause_recovery_on_standby=true")
        .ok();
    for db in ["shop", "crm"] {
        env.cmd(&format!(
            "register_backup_definition bs1.example.org 127.0.0.5 {db} \"\" 0 3"
        ))
        .ok();
    }
    Pair {
        env,
        primary,
        standby,
    }
}

#[test]
fn replay_stays_paused_until_the_last_dump_of_the_standby_ends() {
    let Pair {
        env,
        primary,
        standby,
    } = pair();
    let gate = tempfile::tempdir().unwrap();
    let bin = gated_pg_dump(gate.path());
    let mut agent = Agent::start(&env, "bs1.example.org", Some(bin.path()));
    let rows = |state: &str| {
        format!("select count(*) from backup_catalog where execution_status = '{state}'")
    };

    // Two dumps of the node at once: the first pauses, the last one to end resumes.
    env.cmd("run_backup_definition_now 1").ok();
    env.cmd("run_backup_definition_now 2").ok();
    wait_for(
        &env,
        "select count(*) from job where state = 'RUNNING'",
        "2",
        20,
        &agent,
    );
    wait_paused(&standby, &agent);
    assert_eq!(paused_markers(&agent), 1);
    assert_held(&primary, &standby, &agent, "two dumps running");
    go(gate.path(), "shop", "ok");
    wait_for(&env, &rows("SUCCEEDED"), "1", 30, &agent);
    assert_held(&primary, &standby, &agent, "one dump still running");
    go(gate.path(), "crm", "ok");
    wait_for(&env, &rows("SUCCEEDED"), "2", 30, &agent);
    assert_resumed(&primary, &standby, &agent, "both dumps ended");
    assert_eq!(paused_markers(&agent), 0);
    assert!(
        agent
            .log()
            .contains("paused WAL replay on standby node 127.0.0.5")
    );

    // A failed dump resumes replay.
    env.cmd("run_backup_definition_now 1").ok();
    wait_paused(&standby, &agent);
    assert_held(&primary, &standby, &agent, "before a failure");
    go(gate.path(), "shop", "fail");
    wait_for(&env, &rows("ERROR"), "1", 30, &agent);
    assert_resumed(&primary, &standby, &agent, "after a failed dump");

    // A cancelled dump resumes replay.
    env.cmd("run_backup_definition_now 1").ok();
    wait_paused(&standby, &agent);
    let job = env.sql("select job_id from job where state = 'RUNNING'");
    env.cmd(&format!("cancel_job {job}")).ok();
    wait_for(&env, &rows("CANCELLED"), "1", 30, &agent);
    assert_resumed(&primary, &standby, &agent, "after a cancel");

    // An agent SIGKILLed mid-dump leaves replay paused; its next start resumes it.
    env.cmd("run_backup_definition_now 1").ok();
    wait_paused(&standby, &agent);
    agent.sigkill();
    assert_held(&primary, &standby, &agent, "agent killed");
    assert_eq!(paused_markers(&agent), 1);
    agent.spawn(Some(bin.path()));
    assert_resumed(&primary, &standby, &agent, "agent restarted");
    assert_eq!(paused_markers(&agent), 0);
    assert!(
        agent
            .log()
            .contains("by a run of the agent that stopped during a dump"),
        "{}",
        agent.log()
    );
    let _ = std::fs::remove_file(gate.path().join("go-shop"));
    wait_for(
        &env,
        "select count(*) from job where state = 'RUNNING'",
        "0",
        30,
        &agent,
    );

    // The maximum pause fails the dump and resumes replay.
    env.cmd("update_pgsql_node_config 1 max_recovery_pause=\"2 seconds\"")
        .ok();
    // A stop (SIGTERM) during a dump resumes replay before the agent exits; the new value is
    // read at the next start.
    env.cmd("run_backup_definition_now 1").ok();
    wait_paused(&standby, &agent);
    agent.stop();
    assert!(!standby.replay_paused(), "{}", agent.log());
    assert_resumed(&primary, &standby, &agent, "agent stopped");
    assert_eq!(paused_markers(&agent), 0);
    agent.spawn(Some(bin.path()));
    let errors: i64 = env.sql(&rows("ERROR")).parse().unwrap();
    env.cmd("run_backup_definition_now 1").ok();
    wait_paused(&standby, &agent);
    wait_for(&env, &rows("ERROR"), &(errors + 1).to_string(), 30, &agent);
    let (step, message) = (
        env.sql("select error_step from backup_catalog order by bck_id desc limit 1"),
        env.sql("select error_message from backup_catalog order by bck_id desc limit 1"),
    );
    assert_eq!(step, "recovery_pause");
    assert!(
        message.contains("max_recovery_pause (2 s)") && message.contains("replay resumed"),
        "{message}"
    );
    assert_resumed(&primary, &standby, &agent, "max pause reached");
    assert_eq!(paused_markers(&agent), 0);
    agent.stop();
}

#[test]
fn a_primary_is_left_alone_and_a_role_without_the_right_is_told_what_to_grant() {
    let Pair {
        env,
        primary,
        standby,
    } = pair();
    // A role that may read but not control replay (created on the primary: it replicates).
    primary.psql("postgres", "create role dumper login");
    standby.wait_replayed(&primary);
    env.cmd("update_pgsql_node 1 \"\" dumper \"\" standby").ok();
    let mut agent = Agent::start(&env, "bs1.example.org", None);
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &env,
        "select count(*) from backup_catalog where execution_status = 'ERROR'",
        "1",
        30,
        &agent,
    );
    let (step, message) = (
        env.sql("select error_step from backup_catalog"),
        env.sql("select error_message from backup_catalog"),
    );
    assert_eq!(step, "recovery_pause");
    assert!(
        message.contains("role \"dumper\" may not control WAL replay")
            && message.contains("GRANT EXECUTE ON FUNCTION pg_catalog.pg_wal_replay_pause(), pg_catalog.pg_wal_replay_resume() TO \"dumper\""),
        "{message}"
    );
    assert!(!standby.replay_paused());
    assert_eq!(paused_markers(&agent), 0);

    // The primary itself with the flag: no pause, a log line, the dump succeeds.
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.2 \"\" {} postgres RUNNING primary",
        primary.port()
    ))
    .ok();
    env.cmd(
        "update_pgsql_node_config 2 pause_recovery_on_standby=true max_recovery_pause=\"30 minutes\"",
    )
    .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 3").ok();
    wait_for(
        &env,
        "select execution_status from backup_catalog where def_id = 3",
        "SUCCEEDED",
        30,
        &agent,
    );
    assert!(
        agent.log().contains("PgSQL node 127.0.0.2:")
            && agent
                .log()
                .contains("is not in recovery: pause_recovery_on_standby has no effect"),
        "{}",
        agent.log()
    );
    agent.stop();

    // The values are validated like every node setting, and shown.
    env.cmd("update_pgsql_node_config 1 max_recovery_pause=0")
        .fails_with("max_recovery_pause");
    env.cmd("update_pgsql_node_config 1 max_recovery_pause=\"8 days\"")
        .fails_with("from 1 second to 7 days");
    env.cmd("update_pgsql_node_config 1 pause_recovery_on_standby=maybe")
        .fails_with("is not a boolean");
    let shown = env.cmd("show_pgsql_node_config 2").ok().stdout;
    assert!(
        shown.contains("pause_recovery_on_standby")
            && shown.contains("max_recovery_pause")
            && shown.contains("00:30:00"),
        "{shown}"
    );
}
