//! A PgSQL node that accepts TCP and never answers (a stopped server, a proxy in front of a dead
//! one): shell commands and the agent's jobs end within the `[nodes]` deadlines with a message
//! naming the node, what timed out and the setting. And a password file libpq ignores (mode
//! 0644) is named, with why and how to fix it, by the error and by `pgbackman-agent --check`.
//!
//! Every run of a binary here has a hard limit of its own: on code without the deadlines they
//! hang, and the test fails by "still running after N s" instead of hanging CI.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::*;
use common::{Env, Run};
use pgbackman_testkit::{Silence, SilentNode};

/// Runs `c` to its end, or kills it after `limit` and fails the test.
#[track_caller]
fn run_within(mut c: Command, limit: Duration) -> (Run, Duration) {
    let t = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (a node that never answers hung it)\nstderr:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let elapsed = t.elapsed();
    (
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        elapsed,
    )
}

/// `pgbackman -C line` with the shell's config file holding `config`.
fn shell(env: &Env, config: &str, line: &str) -> Command {
    let dir = env.home.path().join(".config/pgbackman");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pgbackman.toml"), config).unwrap();
    let mut c = common::command(env.home.path());
    c.arg("--catalog").arg(env.conninfo()).arg("-C").arg(line);
    c
}

#[test]
fn shell_commands_give_up_on_a_silent_node_within_the_connect_timeout() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    // One node never answers at all, the other stops after reading the startup message.
    let mute = SilentNode::start_on("127.0.0.4", Silence::AtOnce);
    let stall = SilentNode::start_on("127.0.0.5", Silence::AfterStartup);
    for (host, n) in [("127.0.0.4", &mute), ("127.0.0.5", &stall)] {
        env.cmd(&format!(
            "register_pgsql_node {host} \"\" {} postgres RUNNING silent",
            n.port()
        ))
        .ok();
    }
    let config = "[nodes]\nconnect_timeout = 2\n";
    let limit = Duration::from_secs(30);

    // Both nodes are listed as failures, each with its address, the phase and the setting.
    let (r, took) = run_within(
        shell(&env, config, "show_databases_without_backup_definitions"),
        limit,
    );
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert!(
        r.stderr.contains("2 node(s) could not be checked"),
        "{}",
        r.stderr
    );
    for (n, phase) in [
        (&mute, "to the TLS request or the startup message"),
        (&stall, "to the TLS request or the startup message"),
    ] {
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains(&format!(":{} (NodeID", n.port())))
            .unwrap_or_else(|| panic!("no line for port {}:\n{}", n.port(), r.stderr));
        assert!(line.contains("timed out") && line.contains(phase), "{line}");
        assert!(
            line.contains("within the connect timeout (2 s, set by [nodes] connect_timeout in "),
            "{line}"
        );
    }

    // register_backup_definition lists the node's databases first: it fails the same way, and
    // registers nothing.
    let (r, took) = run_within(
        shell(
            &env,
            config,
            "register_backup_definition bs1.example.org 127.0.0.4 shop",
        ),
        limit,
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains(&format!("PgSQL node 127.0.0.4:{}", mute.port()))
            && r.stderr.contains("[nodes] connect_timeout")
            && r.stderr.contains("HINT: check that 127.0.0.4:"),
        "{}",
        r.stderr
    );
    assert_eq!(env.sql("select count(*) from backup_definition"), "0");

    // sslmode=disable: no TLS request, so the startup message is what is not answered; and
    // without a [nodes] setting, PGCONNECT_TIMEOUT bounds it and is named.
    env.cmd("update_pgsql_node 127.0.0.5 --sslmode disable")
        .ok();
    let mut c = shell(
        &env,
        "",
        "register_backup_definition bs1.example.org 127.0.0.5 shop",
    );
    c.env("PGCONNECT_TIMEOUT", "1");
    let (r, took) = run_within(c, limit);
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(
        r.stderr
            .contains("to the startup message (startup and authentication) within the connect timeout (1 s, set by PGCONNECT_TIMEOUT in the environment"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_run_now_backup_against_a_silent_node_fails_within_its_deadline() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let mute = SilentNode::start_on("127.0.0.4", Silence::AfterStartup);
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.4 \"\" {} postgres RUNNING silent",
        mute.port()
    ))
    .ok();
    // A cluster-wide code needs no database list, so the definition registers without the node.
    env.cmd("register_backup_definition bs1.example.org 127.0.0.4 \"\" \"\" 0 3 \"*\" \"*\" \"*\" GLOBALS")
        .ok();
    let a = Agent::start_with(
        &env,
        "bs1.example.org",
        None,
        "[nodes]\nconnect_timeout = 2\n",
    );
    let t = Instant::now();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &env,
        "select count(*) from backup_catalog where execution_status = 'ERROR'",
        "1",
        30,
        &a,
    );
    // The agent's repoll (2 s) plus the 2 s deadline, not the 10 s default nor for ever.
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let row = env.sql(
        "select error_step || '|' || error_message from backup_catalog where execution_status = 'ERROR'",
    );
    assert!(
        row.starts_with("connect|")
            && row.contains(&format!("127.0.0.4:{}", mute.port()))
            && row.contains("timed out")
            && row.contains("[nodes] connect_timeout"),
        "{row}"
    );
    assert!(mute.accepted() >= 1);
    assert!(
        processes_with(&format!("--port={}", mute.port())).is_empty(),
        "a client program was left running"
    );
    assert!(files_under(&a.backups()).is_empty());
}

#[test]
fn an_ignored_password_file_is_named_with_why_and_the_fix() {
    let s = site();
    // The node wants a password for "secure"; the only password file is world-readable.
    s.node.psql(
        "postgres",
        "create role secure login superuser password 'pw-secret'",
    );
    let hba = s.node.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all secure 127.0.0.0/8 scram-sha-256\n{old}"),
    )
    .unwrap();
    s.node.psql("postgres", "select pg_reload_conf()");
    s.env.cmd("update_pgsql_node 127.0.0.2 \"\" secure").ok();
    let pgpass = s.env.home.path().join(".pgpass");
    std::fs::write(&pgpass, "*:*:*:secure:pw-secret\n").unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    // The shell: not "password missing" alone, but which file, why, and the fix.
    let r = s
        .env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop");
    assert_ne!(r.code, 0);
    let shown = pgpass.display().to_string();
    for needle in [
        format!("password file {shown} is ignored"),
        "its mode 0644 gives group or world access".to_string(),
        format!("chmod 0600 {shown}"),
    ] {
        assert!(r.stderr.contains(&needle), "{needle}\n{}", r.stderr);
    }
    assert!(!r.stderr.contains("pw-secret"));

    // The agent's --check: an ERROR line saying the same, for [agent] passfile.
    let a = Agent::configure(
        &s.env,
        "bs1.example.org",
        &format!("passfile = \"{}\"", pgpass.display()),
    );
    let o = a.command().arg("--check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[ERROR] PgSQL nodes: password file")
                && l.contains("is ignored")
                && l.contains("0644")
                && l.contains(&format!("chmod 0600 {shown}"))),
        "{out}"
    );
    // Fixed as told: the shell works and --check says OK for the file.
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    s.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop")
        .ok();
    let o = a.command().arg("--check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "[OK] password file for the PgSQL nodes: {shown} (private)"
        )),
        "{out}"
    );
}

#[test]
fn a_node_that_stalls_mid_dump_fails_the_job_after_the_stall_timeout() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = pgbackman_testkit::TestCluster::start_on(&["127.0.0.1"]);
    node.create_database("big");
    // About 7 MB of COPY output: only pg_dump's connection crosses the proxy's 1 MiB.
    node.psql(
        "big",
        "create table t as select g, md5(g::text) || md5((g * 7)::text) as v \
         from generate_series(1, 100000) g",
    );
    let proxy = pgbackman_testkit::StallingProxy::start(node.port(), 1 << 20);
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.1 \"\" {} postgres RUNNING stalling",
        proxy.port()
    ))
    .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.1 big \"\" 0 3")
        .ok();
    let a = Agent::start_with(
        &env,
        "bs1.example.org",
        None,
        "[nodes]\nstall_timeout = 2\n",
    );
    let t = Instant::now();
    env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &env,
        "select count(*) from backup_catalog where execution_status = 'ERROR'",
        "1",
        60,
        &a,
    );
    // The repoll, the dump up to the stall, the watchdog's 2 s and the kill: not the
    // definition's maximum runtime.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(proxy.stalled() >= 1);
    let row = env.sql(
        "select error_step || '|' || error_message from backup_catalog where execution_status = 'ERROR'",
    );
    assert!(
        row.starts_with("pg_dump|pg_dump stalled: no data from")
            && row.contains(&proxy.port().to_string())
            && row.contains("2 s, set by [nodes] stall_timeout in")
            && row.contains("agent.toml"),
        "{row}"
    );
    assert!(
        processes_with(&format!("--port={}", proxy.port())).is_empty(),
        "a pg_dump was left running"
    );
    assert!(sets_on_disk(&a.backups()).is_empty());
}
