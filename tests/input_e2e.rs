//! Bad input gets a clear refusal, and output cannot be abused: the real `pgbackman` binary
//! (`-C`, `-f FILE`, piped standard input) against a testkit catalog. Each case checks the
//! message a user reads and that the catalog did not change.

mod common;
use std::io::Write;
use std::process::Stdio;

use common::{Env, Run, command};
use pgbackman_testkit::TestCluster;
use serde_json::json;

fn count(env: &Env, table: &str) -> String {
    env.sql(&format!("select count(*) from {table}"))
}

/// `pgbackman --catalog … [args]` with `input` on its standard input (a pipe).
fn piped(env: &Env, args: &[&str], input: &[u8]) -> Run {
    let mut c = command(env.home.path());
    c.arg("--catalog").arg(env.conninfo()).args(args);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn host_names_and_domains_are_validated() {
    let env = Env::new();
    let long = "a".repeat(100_000);
    for bad in [
        "'a\"b'",
        "'a;b'",
        "'$(id)'",
        "../../etc/passwd",
        "'100%'",
        "'*'",
        "pg\u{202e}01",
        "pg\u{200b}01",
        "'pg\x1b[2J'",
        long.as_str(),
    ] {
        let r = env
            .cmd(&format!("register_backup_server {bad} example.org x"))
            .fails_with("hostname ");
        assert!(r.stderr.contains("is not valid"), "{bad}: {}", r.stderr);
        assert!(r.stderr.contains("HINT: "), "{bad}: {}", r.stderr);
        assert!(r.stderr.len() < 1000, "{} bytes of error", r.stderr.len());
        assert!(!r.stderr.contains('\x1b') && !r.stderr.contains('\u{202e}'));
        env.cmd(&format!(
            "register_pgsql_node {bad} example.org 5432 postgres STOPPED x"
        ))
        .fails_with("is not valid");
    }
    env.cmd("register_backup_server bs1 'exa;mple.org' x")
        .fails_with("domain \"exa;mple.org\" is not valid");
    env.cmd("update_pgsql_node_default_config 'domain=$(id)'")
        .fails_with("domain \"$(id)\" is not valid");
    assert_eq!(count(&env, "backup_server"), "0");
    assert_eq!(count(&env, "pgsql_node"), "0");
    // A node may be an IP address (v4, v6) or a socket directory.
    env.cmd("register_pgsql_node 10.0.0.7 '' 5432 postgres STOPPED v4")
        .ok();
    env.cmd("register_pgsql_node ::1 '' 5433 postgres STOPPED v6")
        .ok();
    env.cmd("register_pgsql_node /var/run/postgresql '' 5432 postgres STOPPED sock")
        .ok();
    env.cmd("register_pgsql_node 10.0.0.300 '' 5432 postgres STOPPED x")
        .fails_with("not an IPv4 or IPv6 address");
    assert_eq!(count(&env, "pgsql_node"), "3");
}

#[test]
fn explicit_empty_domain_means_none() {
    let env = Env::new();
    env.cmd("update_backup_server_default_config domain=example.org")
        .ok();
    env.cmd("register_backup_server vm ''")
        .ok()
        .stdout
        .contains("Backup server vm registered");
    env.cmd("register_backup_server vm2").ok();
    assert_eq!(
        env.sql("select string_agg(fqdn, ',' order by fqdn) from backup_server"),
        "vm,vm2.example.org"
    );
}

#[test]
fn node_defaults_are_checked_like_definitions() {
    let env = Env::new();
    let before = env.sql(
        "select string_agg(parameter || '=' || value, ',' order by parameter) from pgsql_node_default_config",
    );
    env.cmd("update_pgsql_node_default_config 'extra_backup_parameters=--host=evil'")
        .fails_with("pg_dump option \"--host=evil\" is not allowed");
    env.cmd("update_pgsql_node_default_config 'extra_backup_parameters=-f /tmp/x'")
        .fails_with("is not allowed");
    env.cmd("update_pgsql_node_default_config backup_month_cron=13")
        .fails_with("13 is out of range 1-12");
    env.cmd("update_pgsql_node_default_config backup_weekday_cron=8")
        .fails_with("8 is out of range 0-7");
    env.cmd("update_pgsql_node_default_config backup_day_month_cron=32")
        .fails_with("32 is out of range 1-31");
    env.cmd("update_pgsql_node_default_config encryption=nosuch")
        .fails_with("neither true, false nor a registered encryption key");
    env.cmd("register_pgsql_node pg01 example.org 5432 postgres STOPPED x")
        .ok();
    env.cmd("update_pgsql_node_config pg01.example.org backup_month_cron=13")
        .fails_with("out of range");
    env.cmd("update_pgsql_node_config pg01.example.org 'extra_backup_parameters=--port=1'")
        .fails_with("is not allowed");
    assert_eq!(
        env.sql(
            "select string_agg(parameter || '=' || value, ',' order by parameter) from pgsql_node_default_config"
        ),
        before
    );
    assert_eq!(
        env.sql("select count(*) from pgsql_node_config where value in ('13', '--port=1')"),
        "0"
    );
    // Good values still pass.
    env.cmd("update_pgsql_node_config pg01.example.org backup_weekday_cron=mon-fri 'extra_backup_parameters=--no-owner'")
        .ok();
}

#[test]
fn encryption_client_major_and_the_node() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "node");
    node.create_database("billing");
    let major: i32 = node
        .psql(
            "postgres",
            "select current_setting('server_version_num')::int / 10000",
        )
        .trim()
        .parse()
        .unwrap();
    let reg =
        "register_backup_definition bs1.example.org 127.0.0.2 billing '' 30 2 '*' '*' '*' FULL";
    env.cmd(&format!("{reg} true '7 days' 1 '' ACTIVE x"))
        .fails_with("needs an encryption key on backup server bs1.example.org");
    assert_eq!(count(&env, "backup_definition"), "0");
    let r = env
        .cmd(&format!(
            "{reg} false '7 days' 1 '' ACTIVE x --client-major {}",
            major - 1
        ))
        .fails_with(&format!("major {major}"));
    assert!(
        r.stderr.contains("HINT: give --client-major"),
        "{}",
        r.stderr
    );
    assert_eq!(count(&env, "backup_definition"), "0");
    env.cmd(&format!(
        "{reg} false '7 days' 1 '' ACTIVE x --client-major {major}"
    ))
    .ok();
    env.cmd(&format!(
        "update_backup_definition 1 --client-major {}",
        major - 1
    ))
    .fails_with(&format!("major {major}"));
    assert_eq!(
        env.sql("select client_major from backup_definition"),
        major.to_string()
    );
    env.cmd("update_backup_definition 1 --client-major none")
        .ok();
    assert_eq!(
        env.sql("select coalesce(client_major::text, 'NULL') from backup_definition"),
        "NULL"
    );
    // The flag is shown.
    let v = env.json("show_backup_definitions");
    assert_eq!(v["backup_definitions"][0]["encryption"], json!("false"));
    // `--jobs -3` is read as --jobs=-3 is: a value, refused as a value.
    let a = env.cmd("update_backup_definition 1 --jobs -3");
    let b = env.cmd("update_backup_definition 1 --jobs=-3");
    assert_ne!(a.code, 0);
    assert_eq!(a.stderr, b.stderr);
    assert!(a.stderr.contains("parallel jobs \"-3\""), "{}", a.stderr);
}

#[test]
fn control_characters_from_a_node_and_the_catalog_are_escaped() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "node");
    let evil = "evil\x1b]0;owned\x07\u{202e}db";
    node.create_database(evil);
    env.cmd("update_backup_server bs1.example.org 'rack \x1b[2J\u{9b}31m'")
        .ok();
    let shown = "evil\\x1b]0;owned\\x07\\u{202e}db";
    let r = env
        .cmd("show_databases_without_backup_definitions all")
        .ok();
    assert!(r.stdout.contains(shown), "{}", r.stdout);
    let r = env
        .cmd_args(
            "show_databases_without_backup_definitions all",
            &["-o", "csv"],
        )
        .ok();
    assert!(r.stdout.contains(shown), "{}", r.stdout);
    for f in ["table", "csv"] {
        let r = env.cmd_args("show_backup_servers", &["-o", f]).ok();
        assert!(r.stdout.contains("rack \\x1b[2J\\u{9b}31m"), "{}", r.stdout);
        assert!(!r.stdout.contains('\x1b') && !r.stdout.contains('\u{9b}'));
    }
    let r = env
        .cmd(&format!(
            "register_backup_definition bs1.example.org 127.0.0.2 '{evil}' '' 30 2 '*' '*' '*' FULL false '7 days' 1 '' ACTIVE x"
        ))
        .ok();
    assert!(
        r.stdout.contains(&format!(
            "[DONE] Backup definition DefID 1 for dbname [{shown}]"
        )),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains('\x1b') && !r.stdout.contains('\x07'));
    // JSON keeps the exact text.
    let v = env.json("show_backup_servers");
    assert_eq!(
        v["backup_servers"][0]["remarks"],
        json!("rack \x1b[2J\u{9b}31m")
    );
    // The audit log shows the command line escaped too.
    let r = env.cmd("show_audit_log 5").ok();
    assert!(!r.stdout.contains('\x1b'), "{}", r.stdout);
}

#[test]
fn no_raw_database_error_reaches_the_user() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    for line in [
        "show_backup_server_config 99999999999999999999",
        "delete_backup_server 99999999999999999999",
        "show_backup_details 99999999999999999999",
        "cancel_job 99999999999999999999",
        "update_backup_definition 99999999999999999999",
    ] {
        let r = env.cmd(line).fails_with("is out of range");
        assert!(!r.stderr.contains("type bigint"), "{line}: {}", r.stderr);
        assert!(
            r.stderr.contains("9223372036854775807"),
            "{line}: {}",
            r.stderr
        );
    }
    // A rule the API does not check first: the column is named, never the constraint.
    env.sql("alter table backup_server add check (char_length(remarks) < 20)");
    let r = env
        .cmd("update_backup_server bs1.example.org 'a remark much longer than twenty'")
        .fails_with("the catalog refused the value of remarks");
    assert!(!r.stderr.contains("_check"), "{}", r.stderr);
    // A role that does not own the catalog.
    env.sql("create role reader login");
    let mut c = command(env.home.path());
    let conninfo = env.conninfo().replace("user=postgres", "user=reader");
    let o = c
        .arg("--catalog")
        .arg(&conninfo)
        .arg("-C")
        .arg("show_backup_servers")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("catalog role reader may not read table refinery_schema_history"),
        "{stderr}"
    );
    assert!(
        stderr.contains("HINT: as the catalog owner run `pgbackman db grant reader readonly`"),
        "{stderr}"
    );
    assert!(!stderr.starts_with("[ERROR] permission denied"), "{stderr}");
    // A 100 kB value makes a short message.
    let long = "x".repeat(100_000);
    let r = env
        .cmd(&format!(
            "update_pgsql_node_default_config 'logs_email={long}'"
        ))
        .fails_with("100000 bytes");
    assert!(r.stderr.len() < 1000, "{} bytes", r.stderr.len());
    let r = env.cmd(&format!(
        "show_backup_catalog all all all all all --code {long}"
    ));
    assert!(r.stderr.len() < 1000, "{} bytes", r.stderr.len());
}

#[test]
fn piped_input_and_command_files_go_on_after_a_bad_line() {
    let env = Env::new();
    let input = b"# bulk registration\n\nregister_backup_server bs1 example.org x\n\xff\xfe not utf-8\nregister_backup_server bs1 example.org dup\nregister_backup_server bs2 example.org x\n";
    let r = piped(&env, &[], input);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("[ERROR] line 4: not valid UTF-8"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("[ERROR] line 5: backup server bs1.example.org is already registered"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("2 of 4 lines of"), "{}", r.stderr);
    assert_eq!(count(&env, "backup_server"), "2", "line 6 ran");
    // -f FILE, with --stop-on-error.
    let file = env.home.path().join("bulk.txt");
    std::fs::write(
        &file,
        b"register_backup_server bs3 example.org x\nregister_backup_server 'bad;name' example.org x\nregister_backup_server bs4 example.org x\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let r = piped(&env, &["-f", f, "--stop-on-error"], b"");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("[ERROR] line 2: hostname \"bad;name\""),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("stopped at line 2"), "{}", r.stderr);
    assert_eq!(count(&env, "backup_server"), "3", "bs4 not registered");
    let r = piped(&env, &["-f", f], b"");
    assert_ne!(r.code, 0);
    assert_eq!(count(&env, "backup_server"), "4", "bs4 registered");
    // All good: exit 0.
    let r = piped(&env, &[], b"show_backup_servers\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("bs4.example.org"));
}

#[test]
fn show_backup_catalog_says_when_it_stopped_at_its_limit() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    env.cmd("register_pgsql_node pg01 example.org 5432 postgres STOPPED x")
        .ok();
    let node = TestCluster::start_on(&["127.0.0.3"]);
    node.create_database("db1");
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.3 '' {} postgres RUNNING y",
        node.port()
    ))
    .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.3 db1 '' 30 2 '*' '*' '*' FULL false '7 days' 1 '' ACTIVE x")
        .ok();
    env.sql(
        "insert into backup_catalog (backup_server_id, pgsql_node_id, dbname, def_id, backup_code, started, finished, execution_status, execution_method)
         select 1, 2, 'db1', 1, 'FULL', now() - i * interval '1 hour', now() - i * interval '1 hour', 'SUCCEEDED', 'CRON' from generate_series(1, 3) i",
    );
    let r = env.cmd("show_backup_catalog --limit 2").ok();
    assert!(r.stdout.contains("(2 rows)"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("Only the newest 2 matching backups are shown"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--limit 20"), "{}", r.stderr);
    let r = env.cmd("show_backup_catalog --limit 3").ok();
    assert!(!r.stderr.contains("Only the newest"), "{}", r.stderr);
}
