//! Every shell command through the real binary (`-C`), with its error cases. Each error case also
//! checks that nothing changed.

mod common;
use common::Env;
use pgbackman_testkit::TestCluster;
use serde_json::json;

/// A catalog with two backup servers and one node (a real cluster on 127.0.0.2).
struct Fleet {
    env: Env,
    /// Kept alive for the test; dropped (stopped) at the end.
    _node: TestCluster,
}

impl Fleet {
    fn new() -> Fleet {
        let env = Env::new();
        let node = TestCluster::start_on(&["127.0.0.2"]);
        for db in ["billing", "crm", "my db", "quo\"te's", "ünïcødé", "../x"] {
            node.create_database(db);
        }
        env.cmd("register_backup_server bs1 example.org first").ok();
        env.cmd("register_backup_server bs2 example.org second")
            .ok();
        env.cmd(&format!(
            "register_pgsql_node 127.0.0.2 \"\" {} postgres RUNNING \"node A\"",
            node.port()
        ))
        .ok();
        Fleet { env, _node: node }
    }

    fn node_ref(&self) -> String {
        "127.0.0.2".into()
    }

    fn defs(&self) -> i64 {
        self.env
            .sql("select count(*) from backup_definition")
            .parse()
            .unwrap()
    }
}

// ---- backup servers -------------------------------------------------------------------------

#[test]
fn backup_server_lifecycle() {
    let env = Env::new();
    let r = env
        .cmd("register_backup_server Backup01 Example.org \"Rack 4, row \\\"B\\\"\"")
        .ok();
    assert!(
        r.stdout
            .contains("[DONE] Backup server Backup01.Example.org registered with SrvID 1"),
        "{}",
        r.stdout
    );
    // Duplicates are found whatever the case of the name.
    env.cmd("register_backup_server backup01 example.org dup")
        .fails_with("already registered");
    assert_eq!(env.sql("select count(*) from backup_server"), "1");
    // Case of remarks is preserved; JSON is typed.
    let v = env.json("show_backup_servers");
    assert_eq!(v["backup_servers"][0]["srvid"], json!(1));
    assert_eq!(
        v["backup_servers"][0]["remarks"],
        json!("Rack 4, row \"B\"")
    );
    assert_eq!(v["backup_servers"][0]["status"], json!("RUNNING"));
    env.cmd("update_backup_server backup01.example.org \"new remarks\" --status STOPPED")
        .ok();
    assert_eq!(
        env.sql("select status || ':' || remarks from backup_server"),
        "STOPPED:new remarks"
    );
    env.cmd("update_backup_server 1 \"\" --status SLEEPING")
        .fails_with("Valid values: RUNNING, STOPPED");
    assert_eq!(env.sql("select status from backup_server"), "STOPPED");
    env.cmd("delete_backup_server 99")
        .fails_with("not registered");
    env.cmd("delete_backup_server nosuch.example.org")
        .fails_with("show_backup_servers lists");
    env.cmd("delete_backup_server 1").ok();
    assert_eq!(env.sql("select count(*) from backup_server"), "0");
}

#[test]
fn register_backup_server_rejects_bad_hostnames() {
    let env = Env::new();
    env.cmd("register_backup_server \"bad host\" example.org x")
        .fails_with("hostname \"bad host\" is not valid");
    env.cmd("register_backup_server")
        .fails_with("missing argument: Hostname");
    assert_eq!(env.sql("select count(*) from backup_server"), "0");
}

#[test]
fn backup_server_in_use_cannot_be_deleted() {
    let f = Fleet::new();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {} billing",
            f.node_ref()
        ))
        .ok();
    f.env
        .cmd("delete_backup_server bs1.example.org")
        .fails_with("still in use");
    assert_eq!(f.env.sql("select count(*) from backup_server"), "2");
}

#[test]
fn backup_server_config_and_defaults() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org x").ok();
    let v = env.json("show_backup_server_config bs1.example.org");
    let rows = v["backup_server_config"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["parameter"] == "root_backup_partition" && r["value"] == "/srv/pgbackman")
    );
    env.cmd("update_backup_server_config 1 root_backup_partition=/data/bk max_concurrent_jobs=8")
        .ok();
    assert_eq!(
        env.sql("select string_agg(parameter || '=' || value, ',' order by parameter) from backup_server_config where parameter in ('root_backup_partition', 'max_concurrent_jobs')"),
        "max_concurrent_jobs=8,root_backup_partition=/data/bk"
    );
    // One bad pair: nothing applied.
    env.cmd("update_backup_server_config 1 root_backup_partition=/other max_concurrent_jobs=zero")
        .fails_with("max_concurrent_jobs");
    assert_eq!(
        env.sql("select value from backup_server_config where parameter = 'root_backup_partition'"),
        "/data/bk"
    );
    env.cmd("update_backup_server_config 1 no_such=1")
        .fails_with("unknown backup server configuration parameter");
    env.cmd("update_backup_server_config 1 root_backup_partition=relative")
        .fails_with("not an absolute path");
    env.cmd("update_backup_server_default_config domain=example.net")
        .ok();
    // A missing domain takes the default; an explicit "" means none (input_e2e).
    env.cmd("register_backup_server bs2").ok();
    assert_eq!(
        env.sql("select fqdn from backup_server where hostname = 'bs2'"),
        "bs2.example.net"
    );
    env.cmd("show_backup_server_default_config").ok();
}

// ---- PgSQL nodes ----------------------------------------------------------------------------

#[test]
fn pgsql_node_lifecycle_and_errors() {
    let env = Env::new();
    env.cmd("register_pgsql_node pg01 example.org 70000 postgres RUNNING x")
        .fails_with("is not a port");
    env.cmd("register_pgsql_node pg01 example.org abc postgres RUNNING x")
        .fails_with("is not a port");
    env.cmd("register_pgsql_node pg01 example.org 5432 postgres ASLEEP x")
        .fails_with("Valid values: RUNNING, STOPPED");
    env.cmd("register_pgsql_node pg01 example.org 5432 postgres RUNNING x --sslmode sometimes")
        .fails_with("sslmode");
    assert_eq!(env.sql("select count(*) from pgsql_node"), "0");
    env.cmd("register_pgsql_node pg01 example.org 5432 BackupAdmin RUNNING \"Primary DB\" --admin-dbname admin --sslmode require").ok();
    env.cmd("register_pgsql_node PG01 example.org 5432 postgres RUNNING dup")
        .fails_with("already registered");
    // Same host, another port: another node.
    env.cmd("register_pgsql_node pg01 example.org 5433 postgres STOPPED second")
        .ok();
    let v = env.json("show_pgsql_nodes");
    let n = &v["pgsql_nodes"][0];
    assert_eq!(n["admin_user"], json!("BackupAdmin"));
    assert_eq!(n["pgport"], json!(5432));
    assert_eq!(n["ssl_mode"], json!("require"));
    assert_eq!(n["remarks"], json!("Primary DB"));
    // An FQDN shared by two nodes needs the port.
    env.cmd("update_pgsql_node pg01.example.org 5434 \"\" \"\" \"\"")
        .fails_with("ambiguous");
    env.cmd("update_pgsql_node pg01.example.org:5433 \"\" \"\" RUNNING \"\"")
        .ok();
    env.cmd("update_pgsql_node pg01.example.org:5433 5432 \"\" \"\" \"\"")
        .fails_with("already uses port");
    assert_eq!(
        env.sql("select string_agg(pgport || status, ',' order by node_id) from pgsql_node"),
        "5432RUNNING,5433RUNNING"
    );
    env.cmd("delete_pgsql_node pg01.example.org:5433").ok();
    env.cmd("delete_pgsql_node 77").fails_with("not registered");
}

#[test]
fn pgsql_node_config_validation_is_all_or_nothing() {
    let env = Env::new();
    env.cmd("register_pgsql_node pg01 example.org 5432 postgres RUNNING x")
        .ok();
    env.cmd("update_pgsql_node_config 1 backup_hours_interval=02-04 \"retention_period=14 days\" logs_email=dba@example.org").ok();
    assert_eq!(
        env.sql("select string_agg(value, ',' order by parameter) from pgsql_node_config where parameter in ('backup_hours_interval', 'retention_period', 'logs_email')"),
        "02-04,dba@example.org,14 days"
    );
    for (bad, msg) in [
        ("backup_hours_interval=7-3", "not a valid range"),
        ("backup_minutes_interval=10-75", "not a valid range"),
        ("retention_period=forever", "is not an interval"),
        ("retention_redundancy=-1", "retention_redundancy"),
        (
            "backup_code=INCREMENTAL",
            "Valid values: FULL, SCHEMA, DATA, CLUSTER, GLOBALS",
        ),
        ("logs_email=nobody", "not an e-mail address"),
        ("pgport=5433", "not a per-node setting"),
        ("bogus=1", "unknown PgSQL node configuration parameter"),
    ] {
        env.cmd(&format!(
            "update_pgsql_node_config 1 retention_redundancy=5 {bad}"
        ))
        .fails_with(msg);
    }
    assert_eq!(env.sql("select value from pgsql_node_config where node_id = 1 and parameter = 'retention_redundancy'"), "1");
    env.cmd("update_pgsql_node_default_config logs_email=team@example.org")
        .ok();
    env.cmd("show_pgsql_node_default_config").ok();
    // %%pgnode%% is replaced by the NodeID in the node's copy.
    assert_eq!(env.sql("select value from pgsql_node_config where node_id = 1 and parameter = 'pgnode_backup_partition'"), "pgsql_node_1");
}

// ---- backup definitions ---------------------------------------------------------------------

#[test]
fn register_backup_definition_for_one_database() {
    let f = Fleet::new();
    let r = f
        .env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {} billing \"\" 30 2 \"*\" \"*\" mon-fri FULL false \"10 days\" 3 \"--exclude-table=Audit\" ACTIVE \"Nightly Billing\"",
            f.node_ref()
        ))
        .ok();
    assert!(
        r.stdout
            .contains("DefID 1 for dbname [billing] registered: 30 2 * * mon-fri"),
        "{}",
        r.stdout
    );
    let v = f.env.json("show_backup_definitions all all billing");
    let d = &v["backup_definitions"][0];
    assert_eq!(d["schedule"], json!("30 2 * * mon-fri"));
    assert_eq!(d["retention"], json!("10 days (3)"));
    assert_eq!(
        d["parameters"],
        json!("--exclude-table=Audit"),
        "extra parameters keep their case"
    );
    assert_eq!(d["remarks"], json!("Nightly Billing"));
}

#[test]
fn register_backup_definition_errors_change_nothing() {
    let f = Fleet::new();
    let node = f.node_ref();
    let cases = [
        (
            format!("register_backup_definition bs1.example.org {node} nosuchdb"),
            "nosuchdb",
        ),
        (
            format!("register_backup_definition bs1.example.org {node} billing,nosuchdb"),
            "nosuchdb",
        ),
        (
            format!("register_backup_definition bs1.example.org {node} billing \"\" 61 2"),
            "minute",
        ),
        (
            format!("register_backup_definition bs1.example.org {node} billing \"\" 0 25"),
            "hour",
        ),
        (
            format!("register_backup_definition bs1.example.org {node} billing \"\" 0 2 32"),
            "day-of-month",
        ),
        (
            format!("register_backup_definition bs1.example.org {node} billing \"\" 0 2 \"*\" 13"),
            "month",
        ),
        (
            format!(
                "register_backup_definition bs1.example.org {node} billing \"\" 0 2 \"*\" \"*\" funday"
            ),
            "day-of-week",
        ),
        (
            format!(
                "register_backup_definition bs1.example.org {node} billing \"\" 0 2 \"*\" \"*\" \"*\" WEEKLY"
            ),
            "FULL",
        ),
        (
            format!(
                "register_backup_definition bs1.example.org {node} billing \"\" 0 2 \"*\" \"*\" \"*\" FULL false someday"
            ),
            "not an interval",
        ),
        (
            format!(
                "register_backup_definition bs1.example.org {node} billing \"\" 0 2 \"*\" \"*\" \"*\" FULL false \"7 days\" many"
            ),
            "redundancy",
        ),
        (
            format!(
                "register_backup_definition bs1.example.org {node} billing \"\" 0 2 \"*\" \"*\" \"*\" FULL false \"7 days\" 1 \"--file=/tmp/x\""
            ),
            "--file",
        ),
        (
            format!("register_backup_definition nosuch.example.org {node} billing"),
            "not registered",
        ),
        (
            "register_backup_definition bs1.example.org 99 billing".to_string(),
            "not registered",
        ),
    ];
    for (line, msg) in cases {
        f.env.cmd(&line).fails_with(msg);
        assert_eq!(f.defs(), 0, "{line} changed the catalog");
    }
    // The cron error says which field and why, and shows valid schedules in words.
    let r = f.env.cmd(&format!(
        "register_backup_definition bs1.example.org {node} billing \"\" 0 25"
    ));
    assert!(r.stderr.contains("25"), "{}", r.stderr);
    assert!(r.stderr.contains("30 2 * * *"), "{}", r.stderr);
    // Duplicate definition.
    let line = format!("register_backup_definition bs1.example.org {node} billing \"\" 0 2");
    f.env.cmd(&line).ok();
    f.env
        .cmd(&line)
        .fails_with("identical backup definition already exists");
    assert_eq!(f.defs(), 1);
}

#[test]
fn all_databases_with_exceptions_and_random_times_inside_the_interval() {
    let f = Fleet::new();
    f.env
        .cmd("update_pgsql_node_config 1 backup_minutes_interval=10-12 backup_hours_interval=03-04")
        .ok();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {} \"#all_databases#\" \"crm,my db\"",
            f.node_ref()
        ))
        .ok();
    let names = f
        .env
        .sql("select string_agg(dbname, '|' order by dbname) from backup_definition");
    assert_eq!(names, "../x|billing|quo\"te's|ünïcødé");
    let bad = f.env.sql(
        "select count(*) from backup_definition where minutes_cron::int not between 10 and 12 or hours_cron::int not between 3 and 4",
    );
    assert_eq!(bad, "0");
    // Then the rest: databases without definitions.
    f.env.cmd(&format!("register_backup_definition bs2.example.org {} \"#databases_without_backup_definitions#\"", f.node_ref())).ok();
    assert_eq!(f.env.sql("select string_agg(dbname, '|' order by dbname) from backup_definition where backup_server_id = 2"), "crm|my db");
    let v = f.env.json("show_databases_without_backup_definitions all");
    assert_eq!(v["databases_without_backup_definitions"], json!([]));
}

#[test]
fn cluster_definitions_need_no_database() {
    let f = Fleet::new();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {} \"\" \"\" 0 1 \"*\" \"*\" \"*\" CLUSTER",
            f.node_ref()
        ))
        .ok();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {} \"\" \"\" 0 1 \"*\" \"*\" \"*\" GLOBALS",
            f.node_ref()
        ))
        .ok();
    assert_eq!(f.env.sql("select string_agg(backup_code || ':' || dbname, ',' order by def_id) from backup_definition"), "CLUSTER:,GLOBALS:");
}

#[test]
fn update_backup_definition_keeps_each_field_in_place() {
    let f = Fleet::new();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {} billing \"\" 0 1",
            f.node_ref()
        ))
        .ok();
    // day-of-month 15, weekday 1: PgBackMan swapped these two.
    f.env
        .cmd("update_backup_definition 1 5 3 15 \"*\" 1 \"21 days\" 4 \"\" STOPPED \"changed\"")
        .ok();
    assert_eq!(
        f.env.sql("select concat_ws(' ', minutes_cron, hours_cron, day_month_cron, month_cron, weekday_cron, retention_period, retention_redundancy, job_status, remarks) from backup_definition"),
        "5 3 15 * 1 21 days 4 STOPPED changed"
    );
    // Empty values keep the current ones; registered stays the creation time.
    let registered = f.env.sql("select registered from backup_definition");
    f.env
        .cmd("update_backup_definition 1 \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" ACTIVE \"\"")
        .ok();
    assert_eq!(f.env.sql("select concat_ws(' ', minutes_cron, hours_cron, day_month_cron, job_status) from backup_definition"), "5 3 15 ACTIVE");
    assert_eq!(
        f.env.sql("select registered from backup_definition"),
        registered
    );
    f.env
        .cmd("update_backup_definition 1 99")
        .fails_with("minute");
    f.env
        .cmd("update_backup_definition abc")
        .fails_with("DefID \"abc\" is not a number");
    f.env
        .cmd("update_backup_definition 42 1")
        .fails_with("DefID 42 does not exist");
    f.env
        .cmd("update_backup_definition 1 \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" PAUSED")
        .fails_with("ACTIVE, STOPPED, DELETED");
    assert_eq!(
        f.env
            .sql("select minutes_cron || job_status from backup_definition"),
        "5ACTIVE"
    );
}

/// Inserts a finished backup row for a definition, as the agent will.
fn fake_backup(env: &Env, def_id: i64) {
    env.sql(&format!(
        "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                     execution_status, execution_method, backup_dir, pg_dump_file)
         select def_id, backup_server_id, pgsql_node_id, dbname, backup_code, now() - interval '1 minute', now(),
                'SUCCEEDED', 'CRON', '/srv/x/' || def_id, '/srv/x/' || def_id || '/dump'
           from backup_definition where def_id = {def_id}"
    ));
}

#[test]
fn delete_definitions_with_and_without_force() {
    let f = Fleet::new();
    let node = f.node_ref();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {node} billing \"\" 0 1"
        ))
        .ok();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {node} crm \"\" 0 1"
        ))
        .ok();
    fake_backup(&f.env, 1);
    f.env
        .cmd("delete_backup_definition_id 1")
        .fails_with("force-deletion");
    f.env
        .cmd("delete_backup_definition_id 1 please")
        .fails_with("must be force-deletion");
    assert_eq!(f.defs(), 2);
    f.env
        .cmd("delete_backup_definition_id 1 force-deletion")
        .ok();
    assert_eq!(f.defs(), 1);
    assert_eq!(f.env.sql("select count(*) from backup_catalog"), "0");
    assert_eq!(
        f.env
            .sql("select array_to_string(paths, ',') from catalog_entries_to_delete"),
        "/srv/x/1,/srv/x/1/dump"
    );
    // By name: every server's definitions of that database.
    f.env
        .cmd(&format!(
            "register_backup_definition bs2.example.org {node} crm \"\" 0 3"
        ))
        .ok();
    f.env
        .cmd(&format!("delete_backup_definition_dbname {node} nosuch"))
        .fails_with("no backup definition for database");
    f.env
        .cmd(&format!("delete_backup_definition_dbname {node} crm"))
        .ok();
    assert_eq!(f.defs(), 0);
    f.env
        .cmd("delete_backup_definition_id 1")
        .fails_with("does not exist");
}

#[test]
fn move_backup_definitions_between_servers() {
    let f = Fleet::new();
    let node = f.node_ref();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {node} billing,crm"
        ))
        .ok();
    f.env
        .cmd(&format!(
            "move_backup_definition bs1.example.org bs1.example.org {node} all all"
        ))
        .fails_with("the same");
    f.env
        .cmd(&format!(
            "move_backup_definition bs1.example.org bs2.example.org {node} nosuchdb all"
        ))
        .fails_with("nothing was moved");
    let r = f
        .env
        .cmd(&format!(
            "move_backup_definition bs1.example.org bs2.example.org {node} crm all"
        ))
        .ok();
    assert!(
        r.stdout.contains("1 backup definition(s) moved"),
        "{}",
        r.stdout
    );
    assert_eq!(f.env.sql("select string_agg(dbname || '@' || backup_server_id, ',' order by dbname) from backup_definition"), "billing@1,crm@2");
}

#[test]
fn show_filters_take_all_star_and_lists() {
    let f = Fleet::new();
    let node = f.node_ref();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {node} billing,crm,\"my db\""
        ))
        .ok();
    let count = |line: &str| {
        f.env.json(line)["backup_definitions"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("show_backup_definitions"), 3);
    assert_eq!(count("show_backup_definitions all * all"), 3);
    assert_eq!(
        count("show_backup_definitions bs1.example.org,bs2.example.org all billing,crm"),
        2
    );
    assert_eq!(count("show_backup_definitions bs2.example.org"), 0);
    assert_eq!(count("show_backup_definitions 1 1 \"my db\""), 1);
    f.env
        .cmd("show_backup_definitions nosuch")
        .fails_with("not registered");
    let e = f.env.json("show_empty_backup_catalogs");
    assert_eq!(e["empty_backup_catalogs"].as_array().unwrap().len(), 3);
}

#[test]
fn csv_output_is_rfc4180() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org \"a, \\\"quoted\\\" remark\"")
        .ok();
    let r = env.cmd_args("show_backup_servers", &["-o", "csv"]).ok();
    assert!(
        r.stdout.starts_with(
            "srvid,fqdn,status,agent,last_seen,agent_version,spooled_results,registered,remarks\r\n"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("\"a, \"\"quoted\"\" remark\""),
        "{}",
        r.stdout
    );
}

#[test]
fn stats_report_their_own_objects() {
    let f = Fleet::new();
    let node = f.node_ref();
    // bs2 (SrvID 2) holds the definitions; the node is NodeID 1: each report must use its own id.
    f.env
        .cmd(&format!(
            "register_backup_definition bs2.example.org {node} billing,crm"
        ))
        .ok();
    let n = f.env.json("show_pgsql_node_stats 1");
    let n = &n["pgsql_node_stats"][0];
    assert_eq!(n["pgsql_node"], json!("127.0.0.2"));
    assert_eq!(n["active_definitions"], json!(2));
    assert_eq!(n["backup_servers"], json!(1));
    let s1 = f.env.json("show_backup_server_stats 1");
    assert_eq!(s1["backup_server_stats"][0]["active_definitions"], json!(0));
    let s2 = f.env.json("show_backup_server_stats bs2.example.org");
    assert_eq!(s2["backup_server_stats"][0]["active_definitions"], json!(2));
    let all = f.env.json("show_pgbackman_stats");
    assert_eq!(
        all["pgbackman_stats"][0]["running_backup_servers"],
        json!(2)
    );
    assert_eq!(all["pgbackman_stats"][0]["full_definitions"], json!(2));
    // Table form is a key/value report.
    let t = f.env.cmd("show_pgbackman_stats").ok();
    assert!(t.stdout.contains("Running PgSQL nodes"), "{}", t.stdout);
}

#[test]
fn every_change_is_audited_with_who_and_what() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org audited")
        .ok();
    env.cmd("update_backup_server 1 changed").ok();
    let row = env.sql(
        "select os_user || '|' || command || '|' || operation from audit_log where table_name = 'backup_server' order by audit_id desc limit 1",
    );
    assert_eq!(row, "tester|update_backup_server 1 changed|UPDATE");
    assert_eq!(env.sql("select old_row->>'remarks' || '>' || (new_row->>'remarks') from audit_log where table_name = 'backup_server' and operation = 'UPDATE'"), "audited>changed");
    let v = env.json("show_audit_log 5");
    assert!(!v["audit_log"].as_array().unwrap().is_empty());
}

#[test]
fn definitions_notify_the_owning_backup_server() {
    let f = Fleet::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::StreamExt;
        let (client, mut conn) = tokio_postgres::connect(&f.env.conninfo(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(m)) = stream.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n.channel().to_string());
                }
            }
        });
        client
            .batch_execute("listen pgbackman_server_2")
            .await
            .unwrap();
        let env = &f.env;
        let line = format!(
            "register_backup_definition bs2.example.org {} billing",
            f.node_ref()
        );
        tokio::task::block_in_place(|| env.cmd(&line).ok());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("pgbackman_server_2"));
    });
}

#[test]
fn unknown_commands_and_bad_quoting() {
    let env = Env::new();
    env.cmd("show_backup_server")
        .fails_with("did you mean show_backup_servers");
    env.cmd("register_backup_server \"unterminated")
        .fails_with("unbalanced quotes");
    env.cmd("delete_backup_server 1 2")
        .fails_with("Usage: delete_backup_server");
    let h = env.cmd("help register_backup_definition").ok();
    assert!(h.stdout.contains("Examples:"), "{}", h.stdout);
    env.cmd("help").ok();
}

#[test]
fn show_pgbackman_config_never_shows_the_password() {
    let env = Env::new();
    env.catalog
        .psql("postgres", "alter role postgres password 's3cret-pw'");
    let r = env.cmd_args("show_pgbackman_config", &["-o", "json"]);
    let with_pw = format!("{} password=s3cret-pw", env.conninfo());
    let mut c = common::command(env.home.path());
    let o = c
        .arg("--catalog")
        .arg(&with_pw)
        .args(["-C", "show_pgbackman_config"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    assert!(err.contains("visible to every user"), "{err}");
    assert_eq!(r.code, 0);
}

#[test]
fn node_passwords_come_from_pgpass_and_never_show() {
    let env = Env::new();
    let node = TestCluster::start_on(&["127.0.0.3"]);
    node.create_database("secure");
    node.psql("postgres", "alter role postgres password 'n0de-Secret'");
    // Require a password over TCP from now on.
    let hba = node.data_dir().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 127.0.0.0/8 scram-sha-256\n",
    )
    .unwrap();
    node.psql("postgres", "select pg_reload_conf()");
    env.cmd("register_backup_server bs1 example.org x").ok();
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.3 \"\" {} postgres RUNNING x",
        node.port()
    ))
    .ok();
    let line = "register_backup_definition bs1.example.org 127.0.0.3 secure";
    // Without a pgpass entry: refused, with a hint about pgpass, nothing registered.
    env.cmd(line).fails_with("pgpass");
    assert_eq!(env.sql("select count(*) from backup_definition"), "0");
    // With PGPASSFILE (0600, as libpq requires).
    let pass = env.home.path().join("pgpass");
    std::fs::write(
        &pass,
        format!("127.0.0.3:{}:*:postgres:n0de-Secret\n", node.port()),
    )
    .unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = common::command(env.home.path())
        .env("PGPASSFILE", &pass)
        .arg("--catalog")
        .arg(env.conninfo())
        .args(["-C", line])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("n0de-Secret"), "{out}");
    // The secret is nowhere in the catalog.
    assert_eq!(env.sql("select count(*) from audit_log where new_row::text like '%n0de-Secret%' or command like '%n0de-Secret%'"), "0");
    assert_eq!(env.sql("select count(*) from backup_definition"), "1");
}

#[test]
fn definition_run_options_are_validated_and_shown() {
    let f = Fleet::new();
    let node = f.node_ref();
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org {node} billing \"\" 0 1 --format directory --jobs 2 --max-runtime \"1 hour\" --lock-wait-timeout \"30 seconds\""
        ))
        .ok();
    let v = f.env.json("show_backup_definitions");
    assert_eq!(
        v["backup_definitions"][0]["options"],
        json!("directory -j 2, max 01:00:00, lock wait 00:00:30")
    );
    for (opts, msg) in [
        (
            "--format custom --jobs 4",
            "--jobs needs --format directory",
        ),
        ("--format tar", "Valid values: custom, directory"),
        ("--jobs 99 --format directory", "parallel jobs"),
        ("--compression-level 40", "compression level"),
        ("--max-runtime forever", "is not an interval"),
        ("--client-major x", "is not a PostgreSQL major"),
    ] {
        f.env
            .cmd(&format!(
                "register_backup_definition bs1.example.org {node} crm \"\" 0 1 {opts}"
            ))
            .fails_with(msg);
    }
    assert_eq!(f.defs(), 1, "a refused option registers nothing");
    f.env.cmd("update_backup_definition 1 --format custom --jobs 1 --compression-level 9 --max-runtime none").ok();
    let v = f.env.json("show_backup_definitions");
    assert_eq!(
        v["backup_definitions"][0]["options"],
        json!("custom zstd:9, lock wait 00:00:30")
    );
}

#[test]
fn retention_plan_keeps_the_last_good_backups_and_says_why() {
    let f = Fleet::new();
    let node = f.node_ref();
    f.env
        .cmd(&format!("register_backup_definition bs1.example.org {node} billing \"\" 0 1 \"*\" \"*\" \"*\" FULL false \"7 days\" 1"))
        .ok();
    // Oldest first: two good backups 30 and 20 days old, then failures only, the newest today.
    for (days, status) in [
        (30, "SUCCEEDED"),
        (20, "SUCCEEDED"),
        (10, "ERROR"),
        (2, "ERROR"),
        (0, "ERROR"),
    ] {
        f.env.sql(&format!(
            "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                         execution_status, execution_method)
             values (1, 1, 1, 'billing', 'FULL', now() - interval '{days} days 1 minute', now() - interval '{days} days',
                     '{status}', 'CRON')"
        ));
    }
    let v = f.env.json("show_retention_plan all all billing");
    let plan: Vec<(i64, bool)> = v["retention_plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["bckid"].as_i64().unwrap(), r["delete"].as_bool().unwrap()))
        .collect();
    // The newest good backup (BckID 2, 20 days old) is kept although every later run failed;
    // the older good one and the old failure go; recent failures stay within the period.
    assert_eq!(
        plan,
        vec![(5, false), (4, false), (3, true), (2, false), (1, true)]
    );
    let t = f
        .env
        .cmd("show_retention_plan all all billing --deletions-only")
        .ok();
    assert!(
        t.stdout
            .contains("older than the retention period, beyond the redundancy"),
        "{}",
        t.stdout
    );
    assert!(!t.stdout.contains("(redundancy)"), "{}", t.stdout);
    // Nothing was deleted by looking.
    assert_eq!(f.env.sql("select count(*) from backup_catalog"), "5");
}
