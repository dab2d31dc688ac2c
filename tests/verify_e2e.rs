//! Verification levels and restore drills end to end: real `pgbackman` and `pgbackman-agent`
//! binaries, a catalog cluster, a node (127.0.0.2) and a drill node (127.0.0.3).

mod common;

use std::path::Path;
use std::time::Duration;

use common::Env;
use common::agent::{Agent, fake_tool, wait_for};
use pgbackman_testkit::TestCluster;

/// An agent that polls every second; `bin_dir`: client programs of major 15 to use instead of
/// the installed ones.
fn start_agent(env: &Env, server: &str, bin_dir: Option<&Path>) -> Agent {
    Agent::start_with(env, server, bin_dir, "repoll_seconds = 1")
}

struct Site {
    env: Env,
    node: TestCluster,
    drill: TestCluster,
}

fn site() -> Site {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "prod");
    let drill = env.start_node("127.0.0.3", "scratch");
    node.create_database("shop");
    node.psql(
        "shop",
        "create role shop_owner; create table t (id int primary key, v text); alter table t owner to shop_owner; \
         insert into t select g, md5(g::text) from generate_series(1, 2000) g; \
         create table \"Line Items\" (n int); insert into \"Line Items\" select generate_series(1, 77)",
    );
    Site { env, node, drill }
}

fn drill_databases(d: &TestCluster) -> String {
    d.psql(
        "postgres",
        "select count(*) from pg_database where datname like 'pgbackman_drill%'",
    )
}

#[test]
fn levels_verify_backup_and_drills_through_the_agent() {
    let s = site();
    let env = &s.env;
    let agent = start_agent(env, "bs1.example.org", None);
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(env, "select count(*) from backup_catalog", "1", 60, &agent);

    // Levels 1 and 2 ran with the backup and show in the catalog listing.
    assert_eq!(
        env.sql("select execution_status || ' ' || verification_level || ' ' || verification_state || ' ' || (verified_at is not null) from backup_catalog"),
        "SUCCEEDED 2 PASSED true",
        "{}",
        agent.log()
    );
    let list = env.json("show_backup_catalog");
    let row = &list["backup_catalog"][0];
    assert_eq!(row["verification_level"], 2);
    assert_eq!(row["verified"], "PASSED");
    assert!(row["verified_at"].is_string(), "{row}");

    // A drill without a drill node names the parameter to set.
    env.cmd("run_restore_drill 1")
        .fails_with("update_backup_server_config bs1.example.org drill_node=");
    env.cmd("update_backup_server_config bs1.example.org drill_node=nowhere.example.org")
        .fails_with("is not registered");
    env.cmd("update_backup_server_config bs1.example.org drill_node=127.0.0.3")
        .ok();

    // A drill of a good backup passes, with its restore time; nothing is left on the drill node,
    // not even the scratch database of a drill whose agent died (job 999 is not open).
    s.drill.create_database("pgbackman_drill_b1_j999");
    env.cmd("run_restore_drill 1").ok();
    wait_for(env, "select count(*) from verification", "1", 60, &agent);
    assert_eq!(
        env.sql("select kind || ' ' || level || ' ' || state || ' ' || (restore_duration > interval '0') from verification"),
        "DRILL 3 PASSED true",
        "{}\n{}",
        env.sql("select error_message from verification"),
        agent.log()
    );
    assert_eq!(
        env.sql("select verification_level || ' ' || verification_state || ' ' || (drill_duration is not null) from backup_catalog"),
        "3 PASSED true"
    );
    assert_eq!(
        env.sql("select is_drill || ' ' || execution_status || ' ' || (row_count_check ->> 'compared') || ' ' || backup_code || ' ' || (restored_size > 0) || ' ' || array_to_string(roles_created, ',') from restore_catalog"),
        "true SUCCEEDED 2 FULL true shop_owner"
    );
    assert_eq!(drill_databases(&s.drill), "0", "{}", agent.log());
    assert_eq!(
        s.drill.psql(
            "postgres",
            "select count(*) from pg_roles where rolname = 'shop_owner'"
        ),
        "0",
        "a drill creates no role on the drill node"
    );
    let v = env.json("show_verifications 1");
    assert_eq!(v["verifications"][0]["state"], "PASSED");
    assert!(v["verifications"][0]["restore_time"].is_string());

    // Counts recorded at backup time that differ: the drill fails and raises an alert.
    env.sql("update backup_catalog set table_row_counts = jsonb_set(table_row_counts, '{tables,public.t}', '1999')");
    env.cmd("run_restore_drill 1 --node 127.0.0.3").ok();
    wait_for(env, "select count(*) from verification", "2", 60, &agent);
    assert_eq!(
        env.sql("select state || ' ' || error_step from verification order by verification_id desc limit 1"),
        "FAILED row_counts"
    );
    let err = env.sql("select verification_error from backup_catalog");
    assert!(
        err.contains("public.t: 1999 rows at backup time, 2000 restored"),
        "{err}"
    );
    assert_eq!(
        env.sql("select alert_type || ' ' || execution_status || ' ' || (bck_id = 1) from alert"),
        "DRILL FAILED true"
    );
    assert_eq!(drill_databases(&s.drill), "0");

    // One byte flipped: verify_backup fails at level 1, with an alert.
    let dir = env.sql("select backup_dir from backup_catalog");
    let dump = Path::new(&dir).join("dump.pgdump.zst");
    assert!(dump.starts_with(agent.backups()));
    let good = std::fs::read(&dump).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    std::fs::write(&dump, &bad).unwrap();
    env.cmd("verify_backup 1").ok();
    wait_for(env, "select count(*) from verification", "3", 30, &agent);
    assert_eq!(
        env.sql("select verification_level || ' ' || verification_state from backup_catalog"),
        "1 FAILED"
    );
    assert!(
        env.sql("select verification_error from backup_catalog")
            .contains("dump.pgdump.zst: sha256")
    );
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'VERIFY'"),
        "1"
    );
    // A restore of it is refused when it is registered.
    let r = env
        .cmd("register_restore_definition now 1 127.0.0.2 shop_copy \"\" --reuse-roles all")
        .fails_with("failed verification level 1");
    assert!(r.stderr.contains("HINT"), "{}", r.stderr);
    // The drill gate refuses to restore it.
    env.cmd("run_restore_drill 1").ok();
    wait_for(env, "select count(*) from verification", "4", 30, &agent);
    assert_eq!(
        env.sql("select level || ' ' || state || ' ' || error_step from verification order by verification_id desc limit 1"),
        "1 FAILED verify"
    );
    assert_eq!(drill_databases(&s.drill), "0");

    // Repaired, and verified again by filter.
    std::fs::write(&dump, &good).unwrap();
    let out = env
        .cmd("verify_backup all --node 127.0.0.2 --dbname shop")
        .ok();
    assert!(
        out.stdout
            .contains("Verification of BckID 1 queued as JobID"),
        "{}",
        out.stdout
    );
    wait_for(env, "select count(*) from verification", "5", 30, &agent);
    assert_eq!(
        env.sql("select verification_level || ' ' || verification_state || ' ' || coalesce(verification_error, '-') from backup_catalog"),
        "2 PASSED -"
    );
    let _ = &s.node;
}

#[test]
fn scheduled_drills_fire_each_instant_once() {
    let s = site();
    let env = &s.env;
    env.cmd("update_backup_server_config bs1.example.org drill_node=127.0.0.3")
        .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("update_drill_schedule 1 \"0 0 1 13 *\"")
        .fails_with("month");
    let out = env.cmd("update_drill_schedule 1 \"0 0 1 1 *\"").ok();
    assert!(
        out.stdout.contains("Drills of DefID 1: 0 0 1 1 *"),
        "{}",
        out.stdout
    );
    let defs = env.json("show_backup_definitions");
    assert!(defs.to_string().contains("drill 0 0 1 1 *"), "{defs}");
    let agent = start_agent(env, "bs1.example.org", None);
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(env, "select count(*) from backup_catalog", "1", 60, &agent);
    // Setting the schedule fired nothing from the past. Move its clock back over the last
    // January 1st: the agent's next re-poll fires that instant, once.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        env.sql("select count(*) from job where kind = 'DRILL'"),
        "0"
    );
    env.sql(
        "update drill_schedule_state set last_fire = date_trunc('year', now()) - interval '1 day'",
    );
    wait_for(env, "select count(*) from verification", "1", 30, &agent);
    assert_eq!(
        env.sql("select kind || ' ' || state from verification"),
        "DRILL PASSED",
        "{}",
        agent.log()
    );
    assert_eq!(
        env.sql("select last_fire = date_trunc('year', now()) from drill_schedule_state"),
        "t"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        env.sql("select count(*) from job where kind = 'DRILL'"),
        "1"
    );
    env.cmd("update_drill_schedule 1 none").ok();
    assert_eq!(
        env.sql("select drill_schedule is null from backup_definition"),
        "t"
    );
}

#[test]
fn verification_commands_refuse_what_cannot_be_verified() {
    let s = site();
    let env = &s.env;
    env.cmd("verify_backup 99")
        .fails_with("BckID 99 does not exist");
    env.cmd("verify_backup all")
        .fails_with("no SUCCEEDED backup matches");
    env.cmd("verify_backup 1 --node 127.0.0.2")
        .fails_with("give BckIDs or filters, not both");
    env.cmd("run_restore_drill 99")
        .fails_with("BckID 99 does not exist");
    env.cmd("run_restore_drill x").fails_with("is not a number");
    env.cmd("update_drill_schedule 99 \"0 4 * * *\"")
        .fails_with("DefID 99 does not exist");
    env.cmd(
        "register_backup_definition bs1.example.org 127.0.0.2 \"\" \"\" 0 3 \"\" \"\" \"\" CLUSTER",
    )
    .ok();
    env.cmd("update_drill_schedule 1 \"0 4 * * *\"")
        .fails_with("drills restore one database");
    env.cmd("update_drill_schedule 1 \"0 4 * *\"")
        .fails_with("not a cron line of 5 fields");
    // A failed backup has no set.
    env.sql("insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, backup_code, started, finished, execution_status, execution_method) values (1, 1, 1, 'FULL', now(), now(), 'ERROR', 'MANUAL')");
    env.cmd("verify_backup 1")
        .fails_with("has no backup set to verify");
    assert_eq!(env.sql("select count(*) from job"), "0");
    let v = env.json("show_verifications");
    assert_eq!(v["verifications"].as_array().unwrap().len(), 0);
}

#[test]
fn verification_reports_are_fenced_idempotent_and_interrupted_jobs_recorded() {
    let s = site();
    let env = &s.env;
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.sql("insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished, execution_status, execution_method, backup_dir) values (1, 1, 1, 'shop', 'FULL', now(), now(), 'SUCCEEDED', 'MANUAL', '/nonexistent')");
    env.cmd("verify_backup 1").ok();
    let again = env.cmd("verify_backup 1").ok();
    assert!(
        again
            .stdout
            .contains("BckID 1 is already being verified by JobID 1"),
        "{}",
        again.stdout
    );
    let q = env.json("show_jobs_queue");
    assert_eq!(q["jobs_queue"][0]["kind"], "VERIFY");
    assert_eq!(q["jobs_queue"][0]["dbname"], "shop");
    let claim = "select string_agg(job_id || '/' || attempt, ',') from api.claim_jobs(1, 'tester', '1 minute', 10, 1, array['VERIFY'])";
    assert_eq!(env.sql(claim), "1/1");
    let try_report = |job: i64, attempt: i32, result: &str| {
        env.sql(&format!(
            "create function pg_temp.try_report() returns text language plpgsql as $$ \
             begin return api.report_verification({job}, {attempt}, '{result}'); \
             exception when others then return sqlstate || ' ' || sqlerrm; end $$; \
             select pg_temp.try_report()"
        ))
    };
    // A report of another attempt is dropped (PB001); the first report of the attempt is kept,
    // a replay returns it and changes nothing.
    assert!(try_report(1, 2, r#"{"state": "PASSED", "level": 2}"#).starts_with("PB001"));
    assert_eq!(
        try_report(
            1,
            1,
            r#"{"state": "FAILED", "level": 1, "error_step": "checksums", "error_message": "dump.pgdump.zst: sha256 differs"}"#
        ),
        "FAILED"
    );
    assert_eq!(
        try_report(1, 1, r#"{"state": "PASSED", "level": 2}"#),
        "FAILED"
    );
    assert_eq!(
        env.sql("select verification_level || ' ' || verification_state || ' ' || verification_error from backup_catalog"),
        "1 FAILED checksums: dump.pgdump.zst: sha256 differs"
    );
    assert_eq!(env.sql("select count(*) from verification"), "1");
    assert_eq!(env.sql("select state from job where job_id = 1"), "FAILED");
    assert_eq!(
        env.sql("select alert_type || ' ' || execution_status from alert"),
        "VERIFY FAILED"
    );
    // A job its agent died in is recorded through report_backup (as every kind is at agent
    // start): an ERROR that leaves the backup's verdict alone.
    env.cmd("verify_backup 1").ok();
    assert_eq!(env.sql(claim), "2/1");
    assert_eq!(
        env.sql(r#"select api.report_backup(2, 1, '{"execution_status": "ERROR", "error_step": "agent", "error_message": "agent stopped during the run"}')"#),
        "1"
    );
    assert_eq!(
        env.sql("select state || ' ' || error_step from verification where job_id = 2"),
        "ERROR agent"
    );
    assert_eq!(
        env.sql("select verification_level || ' ' || verification_state from backup_catalog"),
        "1 FAILED"
    );
    assert_eq!(
        env.sql("select count(*) from alert where execution_status = 'ERROR'"),
        "1"
    );
    let v = env.json("show_verifications 1");
    assert_eq!(v["verifications"].as_array().unwrap().len(), 2);
}

/// A bin dir of the real client programs except pg_restore, which fails like it does on a
/// damaged archive (a test double; the product never runs a shell).
fn broken_pg_restore() -> tempfile::TempDir {
    fake_tool(
        "pg_restore",
        "cat >/dev/null\necho 'pg_restore: error: could not read from input file: end of file' >&2\nexit 1",
    )
}

#[test]
fn a_set_that_cannot_be_read_back_is_flagged_right_after_the_backup() {
    let s = site();
    let env = &s.env;
    let bin = broken_pg_restore();
    let agent = start_agent(env, "bs1.example.org", Some(bin.path()));
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(env, "select count(*) from backup_catalog", "1", 60, &agent);
    // The backup ran; its archive does not read back: level 2 FAILED, with an alert.
    assert_eq!(
        env.sql("select execution_status || ' ' || verification_level || ' ' || verification_state from backup_catalog"),
        "SUCCEEDED 2 FAILED",
        "{}",
        agent.log()
    );
    let err = env.sql("select verification_error from backup_catalog");
    assert!(
        err.contains(
            "pg_restore exited with status 1: pg_restore: error: could not read from input file"
        ),
        "{err}"
    );
    assert_eq!(
        env.sql("select alert_type || ' ' || execution_status from alert"),
        "VERIFY FAILED"
    );
    assert!(
        env.sql("select error_message from alert")
            .contains("verification level 2 of BckID 1 failed")
    );
    let details = env.json("show_backup_details 1");
    let d = &details["backup_details"][0];
    assert_eq!(d["verification"], "FAILED");
    assert!(
        d["verification_error"]
            .as_str()
            .unwrap()
            .contains("pg_restore")
    );
}
