//! `pgbackman db import-pgbackman`: a PgBackMan 1.x catalog (tests/fixtures/pgbackman1_catalog.sql,
//! with hostile rows) in one database, pgbackman's catalog in another, the old backup files on
//! disk, a node on 127.0.0.2; the dry run, the import, a second run, the show_* commands and an
//! agent running an imported definition.

mod common;

use std::path::Path;

use common::agent::*;
use common::{Env, Run};

fn import(env: &Env, old: &str, extra: &[&str]) -> Run {
    env.db(&[&["import-pgbackman", old], extra].concat())
}

/// The old backup files a PgBackMan server would hold (row 2's dump and row 7's log are gone).
fn old_files(root: &Path) {
    let n = root.join("pgsql_node_1");
    let dump = n.join("dump");
    let log = n.join("log");
    std::fs::create_dir_all(&log).unwrap();
    // A FULL "file" is a pg_dump directory.
    std::fs::create_dir_all(
        dump.join("shop-127.0.0.2-v9_6-defid1-cFULL-20180110T021000-DATABASE.sql"),
    )
    .unwrap();
    for f in [
        "dump/shop-127.0.0.2-v9_6-defid1-cFULL-20180110T021000-USERS.sql",
        "dump/shop-127.0.0.2-v9_6-defid1-cFULL-20180110T021000-DBCONFIG.sql",
        "log/shop-127.0.0.2-v9_6-defid1-cFULL-20180110T021000-DATABASE.log",
        "log/shop-127.0.0.2-v9_6-defid1-cFULL-20180110T021000-USERS.log",
        "log/shop-127.0.0.2-v9_6-defid1-cFULL-20180110T021000-DBCONFIG.log",
        "dump/CLUSTER-127.0.0.2-v9_6-defid4-cCLUSTER-20180114T054000.sql.gz",
        "log/CLUSTER-127.0.0.2-v9_6-defid4-cCLUSTER-20180114T054000.log",
        "dump/shop-127.0.0.2-v9_6-snapid1-cFULL-20171102T100000-DATABASE.sql",
        "log/shop-127.0.0.2-v9_6-snapid1-cFULL-20171102T100000-DATABASE.log",
        "dump/shop-defid6.sql",
        "dump/shop-127.0.0.2-v9_6-defid3-cDATA-20180113T043000-DATABASE.sql",
    ] {
        std::fs::write(n.join(f), "old").unwrap();
    }
}

#[test]
fn a_pgbackman_catalog_is_imported_once_shown_and_run() {
    let env = Env::new();
    let node = pgbackman_testkit::TestCluster::start_on(&["127.0.0.2"]);
    node.create_database("shop");
    let root = tempfile::tempdir().unwrap();
    old_files(root.path());
    let fixture = include_str!("fixtures/pgbackman1_catalog.sql")
        .replace("@ROOT@", &root.path().display().to_string())
        .replace("@NODE_PORT@", &node.port().to_string());
    env.catalog.create_database("pgbackman_old");
    env.catalog.psql("pgbackman_old", &fixture);
    let old = env.catalog.conninfo("pgbackman_old");

    // The dry run names every value it cannot carry, and changes nothing.
    let dry = import(&env, &old, &["--dry-run"]).ok();
    let out = &dry.stdout;
    for needle in [
        "backup server bs1.example.org",
        "imported as SrvID 1",
        "backup server backup 02.example.org",
        "--file=/tmp/stolen.sql",
        "imported STOPPED",
        "-j 4 becomes dump format directory with 4 jobs",
        "invalid minute field \"75\"",
        "imported as FULL on a node with node_profile managed",
        "no such backup code",
        "imported DELETED",
        "PgBackMan never encrypted",
        "the file is missing on this host",
        "imported; the log file is missing",
        "pgbackman records SUCCEEDED or ERROR only",
        "not imported: their definition or snapshot was not imported",
        "/usr/pgsql-{major}/bin",
        "not used: the agent schedules and runs backups itself",
        "has no start time HINT: It cannot be dated",
        "[DRY RUN] Nothing was changed",
    ] {
        assert!(out.contains(needle), "dry run lacks {needle:?}:\n{out}");
    }
    assert_eq!(env.sql("select count(*) from backup_server"), "0");
    assert_eq!(env.sql("select count(*) from import_map"), "0");

    // The import: the same report, committed.
    let run = import(&env, &old, &[]).ok();
    assert!(
        run.stdout.contains("[DONE] Imported from"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("catalog rows: imported 5, already imported 0, not imported 4"),
        "{}",
        run.stdout
    );
    let servers = env.json("show_backup_servers");
    let servers = servers["backup_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(
        env.sql("select value from backup_server_config join backup_server using (server_id) where fqdn = 'bs1.example.org' and parameter = 'pgsql_bin_dir'"),
        "/usr/pgsql-{major}/bin"
    );
    let nodes = env.json("show_pgsql_nodes");
    assert_eq!(nodes["pgsql_nodes"].as_array().unwrap().len(), 2, "{nodes}");
    let cfg = env.cmd("show_pgsql_node_config 127.0.0.2").ok().stdout;
    assert!(cfg.contains("dba@example.org"), "{cfg}");
    assert_eq!(
        env.sql("select value from pgsql_node_config c join pgsql_node n using (node_id) where n.hostname = 'pg-rds' and parameter = 'node_profile'"),
        "managed"
    );
    // Definitions: by what each became.
    let defs = env.sql(
        "select string_agg(o.old_id || ':' || d.backup_code || ':' || d.job_status || ':' || d.dump_format || d.dump_jobs
                           || ':' || d.extra_backup_parameters, ' ' order by o.old_id)
           from import_map o join backup_definition d on d.def_id = o.new_id where o.kind = 'DEFINITION'",
    );
    assert_eq!(
        defs,
        "1:FULL:ACTIVE:custom1: 2:SCHEMA:ACTIVE:directory4:--no-owner 3:DATA:STOPPED:custom1: \
         4:CLUSTER:ACTIVE:custom1: 5:FULL:STOPPED:custom1: 9:FULL:DELETED:custom1:"
    );
    let shown = env.json("show_backup_definitions");
    assert_eq!(
        shown["backup_definitions"].as_array().unwrap().len(),
        6,
        "{shown}"
    );
    assert!(shown.to_string().contains("odd \\\"db\\\" ñame"), "{shown}");
    let cat = env.json("show_backup_catalog");
    let rows = cat["backup_catalog"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{cat}");
    let statuses = env.sql(
        "select string_agg(o.old_id || ':' || c.execution_status || ':' || c.execution_method, ' ' order by o.old_id)
           from import_map o join backup_catalog c on c.bck_id = o.new_id where o.kind = 'CATALOG'",
    );
    assert_eq!(
        statuses,
        "1:SUCCEEDED:CRON 3:ERROR:CRON 4:SUCCEEDED:CRON 5:SUCCEEDED:AT 7:SUCCEEDED:CRON"
    );
    let first = env.sql("select new_id from import_map where kind = 'CATALOG' and old_id = 1");
    let details = env.cmd(&format!("show_backup_details {first}")).ok().stdout;
    assert!(
        details.contains("imported from PgBackMan (BckID 1)"),
        "{details}"
    );
    assert!(details.contains("USERS.sql"), "{details}");
    // An old set has no manifest: pgbackman says so instead of failing in the agent.
    env.cmd(&format!("verify_backup {first}"))
        .fails_with("is a PgBackMan 1.x backup");
    env.cmd(&format!(
        "register_restore_definition now {first} 127.0.0.2 shop_copy \"\" --dry-run"
    ))
    .fails_with("pgbackman does not restore it");
    assert_eq!(
        env.sql("select status from snapshot_definition order by snapshot_id"),
        "SUCCEEDED\nCANCELLED"
    );
    assert_eq!(
        env.sql("select count(*) from job"),
        "0",
        "nothing imported runs by itself"
    );

    // A second run imports nothing and says so.
    let again = import(&env, &old, &[]).ok();
    assert!(
        again.stdout.contains("[DONE] Nothing new to import"),
        "{}",
        again.stdout
    );
    assert!(
        again
            .stdout
            .contains("catalog rows: imported 0, already imported 5, not imported 4"),
        "{}",
        again.stdout
    );
    assert_eq!(env.sql("select count(*) from backup_catalog"), "5");
    // A backup PgBackMan took after the first run comes over with the next one, as JSON here.
    env.catalog.psql(
        "pgbackman_old",
        "insert into backup_catalog (backup_server_id, pgsql_node_id, dbname, started, finished, pg_dump_file,
             pg_dump_log_file, execution_status, execution_method, error_message, def_id, role_list)
         values (1, 1, 'shop', now(), now(), 'None', 'None', 'ERROR', 'CRON', 'pg_dump returncode: 1', 1, '{}')",
    );
    let o = common::command(env.home.path())
        .args([
            "--catalog",
            &env.conninfo(),
            "-o",
            "json",
            "db",
            "import-pgbackman",
            &old,
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert!(v["import"].is_array(), "{v}");
    assert_eq!(env.sql("select count(*) from backup_catalog"), "6");

    // The agent of the imported server runs the imported definition.
    let def: i64 = env
        .sql("select new_id from import_map where kind = 'DEFINITION' and old_id = 1")
        .parse()
        .unwrap();
    let agent = Agent::start(&env, "bs1.example.org", None);
    let bck = run_now(&env, &agent, def);
    assert_eq!(
        env.sql(&format!(
            "select execution_status from backup_catalog where bck_id = {bck}"
        )),
        "SUCCEEDED",
        "{}",
        agent.log()
    );
    // Beside the old backups: the node's partition was carried over.
    let dir = dir_of(&env, bck);
    assert!(
        Path::new(&dir).starts_with(root.path().join("pgsql_node_1")),
        "{dir}"
    );
}

#[test]
fn a_database_that_is_not_pgbackman_is_refused() {
    let env = Env::new();
    let r = import(&env, &env.conninfo(), &["--dry-run"]);
    r.fails_with("not a PgBackMan 1.x catalog");
}

#[test]
fn an_old_pgbackman_conf_is_read_with_a_note_and_converted() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    // PgBackMan's file, pointing at this catalog.
    let mut ini =
        String::from("[backup_server]\nbackup_server = bs1.example.org\n\n[pgbackman_database]\n");
    for kv in env.conninfo().split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        ini.push_str(&format!("{k} = {v}\n"));
    }
    ini.push_str(
        "pg_connect_retry_interval = 10\n\n[pgbackman_alerts]\nsmtp_server = mail.example.org\n",
    );
    let old = env.home.path().join(".pgbackman");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("pgbackman.conf"), &ini).unwrap();

    let run = |args: &[&str]| {
        let o = common::command(env.home.path())
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["-C", "show_backup_servers"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("bs1.example.org"), "{out}");
    assert_eq!(err.matches("[NOTE]").count(), 1, "{err}");
    assert!(err.contains("pgbackman config convert"), "{err}");

    let (code, toml, err) = run(&["config", "convert"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(toml.contains("[catalog]\nconninfo = "), "{toml}");
    assert!(
        toml.contains("backup_server = \"bs1.example.org\""),
        "{toml}"
    );
    assert!(
        toml.contains("# [pgbackman_alerts] smtp_server = mail.example.org"),
        "{toml}"
    );
    let new = env.home.path().join(".config/pgbackman");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("pgbackman.toml"), &toml).unwrap();
    let (code, out, err) = run(&["-C", "show_backup_servers"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("bs1.example.org"), "{out}");
    assert!(!err.contains("[NOTE]"), "the TOML file wins: {err}");
}
