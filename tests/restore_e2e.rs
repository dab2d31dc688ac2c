//! Restores end to end: the reference database (../shared/bench/reference-db.sql, scale 1) on
//! node A (127.0.0.2) is backed up by a real agent, then restored by the agent onto node B
//! (127.0.0.3), a fresh cluster where none of its roles exist. The restored database is compared
//! with the original through catalog queries. Then the conflicts: the target exists (renamed),
//! the roles exist (reused), the backup comes from a newer pg_dump (refused).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Env;
use common::agent::{Agent, wait_for};
use pgbackman_testkit::TestCluster;

/// ../shared/bench/reference-db.sql, wherever this checkout is.
fn reference_db() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("PGBACKMAN_REFERENCE_DB").map(PathBuf::from),
        Some(manifest.join("../shared/bench/reference-db.sql")),
        Some(manifest.join("../../shared/bench/reference-db.sql")),
        Some(PathBuf::from("/work/shared/bench/reference-db.sql")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect("reference-db.sql not found: set PGBACKMAN_REFERENCE_DB to its path")
}

/// The same catalog queries on the original and on the restored database.
fn facts(pg: &TestCluster, host: &str, db: &str) -> Vec<(&'static str, String)> {
    let on_db = |q: &str| pg.psql_conninfo(&pg.tcp_conninfo(host, db), q);
    let on_postgres = |q: &str| pg.psql_conninfo(&pg.tcp_conninfo(host, "postgres"), q);
    vec![
        (
            "tables and exact row counts",
            on_db(
                "select string_agg(format('%I.%I=%s', table_schema, table_name,
                        (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', table_schema, table_name), false, true, '')))[1]::text), ', ' order by table_schema, table_name)
                   from information_schema.tables where table_schema = 'app' and table_type = 'BASE TABLE'",
            ),
        ),
        (
            "content checksums",
            on_db(
                "select concat_ws(' ', (select md5(string_agg(u::text, '' order by id)) from app.users u),
                        (select sum(amount) from app.events), (select md5(string_agg(md5(pdf), '' order by id)) from app.invoices where pdf is not null))",
            ),
        ),
        (
            "owners and privileges of relations",
            on_db(
                "select string_agg(format('%s %s %s %s', c.relname, c.relkind, pg_get_userbyid(c.relowner), coalesce(c.relacl::text, '-')), ', ' order by c.relname)
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'app'",
            ),
        ),
        (
            "schema owner and privileges",
            on_db(
                "select format('%s %s', pg_get_userbyid(nspowner), nspacl) from pg_namespace where nspname = 'app'",
            ),
        ),
        (
            "database owner, privileges and settings",
            on_postgres(&format!(
                "select format('%s %s %s', pg_get_userbyid(d.datdba), coalesce(d.datacl::text, '-'),
                        (select string_agg(coalesce(r.rolname, '*') || '=' || array_to_string(s.setconfig, ','), ';' order by r.rolname nulls first)
                           from pg_db_role_setting s left join pg_roles r on r.oid = s.setrole where s.setdatabase = d.oid))
                   from pg_database d where d.datname = '{db}'"
            )),
        ),
        (
            "roles",
            on_postgres(
                "select string_agg(format('%s login=%s member of %s', r.rolname, r.rolcanlogin,
                        coalesce((select string_agg(g.rolname, ',' order by g.rolname) from pg_auth_members m join pg_roles g on g.oid = m.roleid where m.member = r.oid), '-')), '; ' order by r.rolname)
                   from pg_roles r where r.rolname like 'bench%'",
            ),
        ),
        (
            "large objects",
            on_db(
                "select string_agg(format('%s %s', pg_get_userbyid(lomowner), length(lo_get(oid))), ',') from pg_largeobject_metadata",
            ),
        ),
        (
            "functions and views",
            on_db(
                "select concat_ws(' ', md5(pg_get_functiondef('app.user_event_count(integer)'::regprocedure)),
                        md5(pg_get_viewdef('app.daily_revenue'::regclass)), obj_description('app.events'::regclass, 'pg_class'),
                        (select string_agg(indexname, ',' order by indexname) from pg_indexes where schemaname = 'app'))",
            ),
        ),
    ]
}

#[test]
fn reference_database_restored_onto_a_fresh_node_then_conflicts() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let a = env.start_node("127.0.0.2", "a");
    let b = env.start_node("127.0.0.3", "b");
    a.create_database("ref");
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "scale=1", "-d"])
        .arg(a.tcp_conninfo("127.0.0.2", "ref"))
        .arg("-f")
        .arg(reference_db())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loading reference-db.sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let original = facts(&a, "127.0.0.2", "ref");
    assert!(original[0].1.contains("app.events=1000000"), "{original:?}");

    let agent = Agent::start(&env, "bs1.example.org", None);
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 ref \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &env,
        "select execution_status from backup_catalog",
        "SUCCEEDED",
        300,
        &agent,
    );

    // B is fresh: none of the bench roles exist there. The plan says what will happen.
    let plan = env
        .cmd_args(
            "register_restore_definition now 1 127.0.0.3 ref \"\" --jobs 2 --dry-run",
            &["-o", "json"],
        )
        .ok()
        .json();
    let plan = &plan["restore_plan"][0];
    assert_eq!(
        plan["roles_to_create"],
        serde_json::json!(["bench_app", "bench_owner", "bench_reader"]),
        "{plan}"
    );
    assert!(
        plan["database_settings"]
            .as_str()
            .unwrap()
            .contains("ALTER DATABASE \"ref\" SET work_mem TO '16MB';"),
        "{plan}"
    );
    assert_eq!(env.sql("select count(*) from restore_definition"), "0");

    let done = env
        .cmd("register_restore_definition now 1 127.0.0.3 ref \"\" --jobs 2")
        .ok();
    assert!(
        done.stdout.contains("RestoreDef 1 registered"),
        "{}",
        done.stdout
    );
    wait_for(
        &env,
        "select execution_status from restore_catalog where restore_def = 1",
        "SUCCEEDED",
        300,
        &agent,
    );
    let restored = facts(&b, "127.0.0.3", "ref");
    for ((what, want), (_, got)) in original.iter().zip(&restored) {
        assert_eq!(got, want, "{what} differ");
    }

    // The restore catalog records it, and the shell shows it.
    let d = env.json("show_restore_details 1");
    let d = &d["restore_details"][0];
    assert_eq!(d["execution_status"], "SUCCEEDED", "{d}");
    assert_eq!(
        d["roles_created"],
        serde_json::json!(["bench_app", "bench_owner", "bench_reader"]),
        "{d}"
    );
    assert_eq!(d["flags"]["jobs"], 2, "{d}");
    // app.events holds 69 % of the rows: its load is serial anyway, so auto picks tee.
    assert_eq!(d["flags"]["feed"], "tee", "{d}");
    assert!(
        d["phase_timings"]["post_data"].as_f64().unwrap() > 0.0,
        "{d}"
    );
    assert_eq!(
        d["target_pgsql_node_release"]
            .as_str()
            .unwrap()
            .split('.')
            .next(),
        Some("15")
    );
    assert!(
        d["phase_timings"]["pg_restore"].as_f64().unwrap() > 0.0,
        "{d}"
    );
    assert!(d["restored_size"].as_i64().unwrap() > 100 << 20, "{d}");
    let log = d["restore_log_file"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("restore succeeded"),
        "{log}"
    );
    assert_eq!(
        env.json("show_restore_catalog all 127.0.0.3 ref")["restore_catalog"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        env.json("show_restore_definitions")["restore_definitions"][0]["status"],
        "SUCCEEDED"
    );
    assert!(
        env.json("show_restores_in_progress")["restores_in_progress"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Conflicts. The target exists and the roles exist: -C says how to go on.
    env.cmd("register_restore_definition now 1 127.0.0.3 ref \"\"")
        .fails_with("--rename-existing auto");
    env.cmd("register_restore_definition now 1 127.0.0.3 ref \"\" --rename-existing auto")
        .fails_with("--reuse-roles bench_app,bench_owner,bench_reader");
    // Rename chosen and reuse chosen: the existing database keeps its data under the new
    // name, the roles are left as they are.
    b.psql_conninfo(
        &b.tcp_conninfo("127.0.0.3", "ref"),
        "create table app.marker (x int)",
    );
    b.psql_conninfo(
        &b.tcp_conninfo("127.0.0.3", "postgres"),
        "alter role bench_app connection limit 7",
    );
    env.cmd("register_restore_definition now 1 127.0.0.3 ref \"\" --rename-existing ref_before --reuse-roles all --decompression stream")
        .ok();
    wait_for(
        &env,
        "select execution_status from restore_catalog where restore_def = 2",
        "SUCCEEDED",
        300,
        &agent,
    );
    let pg = |db: &str, q: &str| b.psql_conninfo(&b.tcp_conninfo("127.0.0.3", db), q);
    assert_eq!(
        pg(
            "ref_before",
            "select count(*) from pg_class where relname = 'marker'"
        ),
        "1"
    );
    assert_eq!(
        pg(
            "ref",
            "select count(*) from pg_class where relname = 'marker'"
        ),
        "0"
    );
    assert_eq!(
        pg(
            "postgres",
            "select rolconnlimit from pg_roles where rolname = 'bench_app'"
        ),
        "7"
    );
    assert_eq!(facts(&b, "127.0.0.3", "ref")[0], original[0]);
    assert_eq!(
        env.sql("select concat_ws(' ', renamed_dbname, cardinality(roles_created), array_to_string(roles_reused, ','), flags ->> 'feed') from restore_catalog where restore_def = 2"),
        "ref_before 0 bench_app,bench_owner,bench_reader,postgres stream"
    );

    // A backup written by a newer pg_dump is never restored into an older server.
    env.sql("update backup_catalog set pg_dump_release = '99' where bck_id = 1");
    env.cmd("register_restore_definition now 1 127.0.0.3 ref_new \"\"")
        .fails_with("restore refused");
    assert_eq!(env.sql("select count(*) from restore_definition"), "2");
    drop(agent);
}

/// The shell's checks, without an agent: what cannot be restored is refused with the way on,
/// the plan tells the decisions, and a queued restore can be followed and cancelled.
#[test]
fn restore_commands_decide_or_refuse_with_a_hint() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let n = env.start_node("127.0.0.2", "a");
    n.create_database("shop");
    n.psql("postgres", "create role app");
    env.cmd("register_pgsql_node stopped.example.org \"\" 5999 postgres STOPPED s")
        .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.sql(
        "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                     execution_status, execution_method, backup_dir, role_list, pg_dump_release)
         values (1, 1, 1, 'shop', 'FULL', now(), now(), 'SUCCEEDED', 'MANUAL', '/nonexistent/set', '{app,newrole,postgres}', '15'),
                (1, 1, 1, 'shop', 'FULL', now(), now(), 'ERROR', 'MANUAL', null, '{}', '15'),
                (1, 1, 1, 'shop', 'DATA', now(), now(), 'SUCCEEDED', 'MANUAL', '/nonexistent/data', '{app}', '15'),
                (1, 1, 1, '', 'CLUSTER', now(), now(), 'SUCCEEDED', 'MANUAL', '/nonexistent/cluster', '{}', '15')",
    );
    let r = |line: &str| env.cmd(&format!("register_restore_definition {line}"));
    r("now 99 127.0.0.2 shop \"\"").fails_with("BckID 99 does not exist");
    r("now 2 127.0.0.2 shop \"\"").fails_with("its backup ended ERROR");
    r("now 3 127.0.0.2 shop2 \"\"").fails_with("DATA backup");
    r("now 4 127.0.0.2 x \"\"").fails_with("restores the whole cluster");
    r("now 1 stopped.example.org shop \"\"").fails_with("is STOPPED");
    r("now 1 127.0.0.2 shop \"--jobs 4\"").fails_with("pg_restore option \"--jobs\"");
    r("now 1 127.0.0.2 shop2 \"\" --jobs 0").fails_with("--jobs \"0\"");
    r("now 1 127.0.0.2 shop2 \"\" --decompression fast").fails_with("auto, stream, file or tee");
    r("tomorrow 1 127.0.0.2 shop2 \"\"").fails_with("is not a time");
    // The target exists, then a role exists: each stop names the option that goes on.
    r("now 1 127.0.0.2 shop \"\"").fails_with("--rename-existing auto");
    r("now 1 127.0.0.2 shop \"\" --rename-existing auto").fails_with("--reuse-roles app");
    r("now 1 127.0.0.2 shop \"\" --rename-existing shop --reuse-roles app")
        .fails_with("give another --rename-existing name");
    let plan = env
        .cmd_args(
            "register_restore_definition now 1 127.0.0.2 shop \"--no-owner\" --rename-existing shop_old --reuse-roles app --jobs 3 --dry-run",
            &["-o", "json"],
        )
        .ok()
        .json();
    let p = &plan["restore_plan"][0];
    assert_eq!(p["roles_to_create"], serde_json::json!(["newrole"]), "{p}");
    assert_eq!(
        p["roles_reused_as_they_are"],
        serde_json::json!(["app"]),
        "{p}"
    );
    assert_eq!(
        p["system_roles_reused"],
        serde_json::json!(["postgres"]),
        "{p}"
    );
    assert_eq!(p["existing_database_renamed_to"], "shop_old", "{p}");
    assert_eq!(p["jobs"], 3, "{p}");
    assert_eq!(p["extra_parameters"], "--no-owner", "{p}");
    assert!(
        p["database_settings"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/set/database.sql on bs1.example.org"),
        "{p}"
    );
    // CLUSTER onto a cluster that has a database and a role: only when acknowledged.
    r("now 4 127.0.0.2 \"\" \"\"").fails_with("--acknowledge-nonempty");
    r("now 4 127.0.0.2 \"\" \"\" --acknowledge-nonempty --dry-run").ok();
    r("now 1 127.0.0.2 shop2 \"\" --acknowledge-nonempty").fails_with("for CLUSTER and GLOBALS");
    assert_eq!(env.sql("select count(*) from restore_definition"), "0");

    // Registered for later: queued, listed, cancelled.
    let done = r("\"2099-01-01 00:00\" 1 127.0.0.2 shop2 \"\" --reuse-roles all").ok();
    assert!(
        done.stdout.contains("RestoreDef 1 registered"),
        "{}",
        done.stdout
    );
    assert_eq!(
        env.sql("select concat_ws(' ', target_dbname, renamed_dbname is null, array_to_string(roles_to_restore, ','), restore_jobs, decompression) from restore_definition"),
        "shop2 t newrole 1 auto"
    );
    let defs = env.json("show_restore_definitions all 127.0.0.2 shop2");
    assert_eq!(
        defs["restore_definitions"][0]["status"], "WAITING",
        "{defs}"
    );
    let q = env.json("show_jobs_queue");
    assert_eq!(q["jobs_queue"][0]["kind"], "RESTORE", "{q}");
    assert_eq!(q["jobs_queue"][0]["dbname"], "shop2", "{q}");
    let job = q["jobs_queue"][0]["jobid"].as_i64().unwrap();
    env.cmd(&format!("cancel_job {job}")).ok();
    let defs = env.json("show_restore_definitions");
    assert_eq!(
        defs["restore_definitions"][0]["status"], "CANCELLED",
        "{defs}"
    );
    env.cmd("show_restore_details 5")
        .fails_with("RestoreID 5 does not exist");
    assert!(
        env.json("show_restore_catalog")["restore_catalog"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Every change is in the audit log.
    assert_eq!(
        env.sql("select count(*) from audit_log where table_name = 'restore_definition'"),
        "1"
    );
}

/// A restore that finds a byte of its set changed fails before touching the target, and the
/// backup is recorded as failing verification level 1 at once, as verify_backup would record
/// it (history row, the backup's verdict, a VERIFY alert): a second restore is refused.
#[test]
fn a_restore_that_finds_a_damaged_set_records_the_backup_failed() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let a = env.start_node("127.0.0.2", "a");
    let b = env.start_node("127.0.0.3", "b");
    a.create_database("shop");
    a.psql(
        "shop",
        "create table t (id int primary key, v text); insert into t select g, md5(g::text) from generate_series(1, 3000) g",
    );
    let agent = Agent::start_with(&env, "bs1.example.org", None, "repoll_seconds = 1");
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &env,
        "select execution_status || ' ' || verification_state from backup_catalog",
        "SUCCEEDED PASSED",
        60,
        &agent,
    );
    let dir = env.sql("select backup_dir from backup_catalog");
    let dump = Path::new(&dir).join("dump.pgdump.zst");
    let mut bytes = std::fs::read(&dump).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&dump, &bytes).unwrap();

    env.cmd("register_restore_definition now 1 127.0.0.3 shop_copy \"\"")
        .ok();
    wait_for(
        &env,
        "select execution_status || ' ' || error_step from restore_catalog",
        "ERROR verify",
        60,
        &agent,
    );
    assert_eq!(
        env.sql("select verification_level || ' ' || verification_state from backup_catalog"),
        "1 FAILED"
    );
    assert!(
        env.sql("select verification_error from backup_catalog")
            .contains("dump.pgdump.zst"),
    );
    assert_eq!(
        env.sql("select kind || ' ' || level || ' ' || state from verification"),
        "RESTORE 1 FAILED"
    );
    assert_eq!(
        env.sql("select string_agg(alert_type || ' ' || execution_status, ', ' order by alert_type) from alert"),
        "RESTORE ERROR, VERIFY FAILED"
    );
    assert_eq!(
        b.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'shop_copy'"
        ),
        "0"
    );
    let r = env
        .cmd("register_restore_definition now 1 127.0.0.3 shop_copy2 \"\"")
        .fails_with("failed verification level 1");
    assert!(r.stderr.contains("HINT"), "{}", r.stderr);
}
