//! Catalog roles through the real binaries: `pgbackman db grant|revoke|roles`, the shell as a
//! readonly, operator and admin role (and the message a refused command gets), an agent that
//! logs in as an agent role and backs up end to end, and an agent role of another server that
//! is refused at its start.

mod common;

use common::agent::{Agent, site, wait_for};
use common::{Env, Run, command};

/// `pgbackman --catalog <as role> -C line`.
fn cmd_as(env: &Env, role: &str, line: &str) -> Run {
    let mut c = command(env.home.path());
    c.arg("--catalog")
        .arg(conninfo_as(env, role))
        .arg("-C")
        .arg(line);
    let o = c.output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn conninfo_as(env: &Env, role: &str) -> String {
    env.conninfo()
        .replace("user=postgres", &format!("user={role}"))
}

#[test]
fn roles_from_readonly_to_agent() {
    // `db init` says the group roles are there and how to hand them out.
    let fresh = Env::bare();
    let init = fresh.db(&["init"]).ok();
    assert!(
        init.stdout.contains(
            "[DONE] Group roles pgbackman_readonly, _operator, _admin and _agent are ready"
        ),
        "{}",
        init.stdout
    );
    drop(fresh);
    let s = site();
    let env = &s.env;
    env.sql(
        "create role ro login; create role op login; create role adm login; \
         create role agent1 login; create role agent2 login",
    );
    for args in [
        &["grant", "ro", "readonly"][..],
        &["grant", "op", "operator"],
        &["grant", "adm", "admin"],
        &["grant", "agent1", "agent", "--server", "bs1.example.org"],
        &["grant", "agent2", "agent", "--server", "bs2.example.org"],
    ] {
        let r = env.db(args).ok();
        assert!(r.stdout.starts_with("[DONE] Role "), "{}", r.stdout);
    }
    let r = env.db(&["roles"]).ok();
    assert!(
        r.stdout
            .contains("agent1: pgbackman_agent (acts for bs1.example.org)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("ro: pgbackman_readonly"), "{}", r.stdout);
    env.db(&["grant", "agent1", "agent"])
        .fails_with("an agent role is bound to one backup server: give it with --server");

    // readonly lists, and is told what a change would take.
    let listed = cmd_as(env, "ro", "show_backup_servers").ok();
    assert!(
        listed.stdout.contains("bs2.example.org"),
        "{}",
        listed.stdout
    );
    let r = cmd_as(env, "ro", "register_backup_server bs3 example.org x").fails_with(
        "catalog role ro may not run register_backup_server: that takes pgbackman_admin",
    );
    assert!(
        r.stderr
            .contains("HINT: as the catalog owner run `pgbackman db grant ro admin`"),
        "{}",
        r.stderr
    );

    // admin registers (and the audit log names the role), operator runs it now but may not
    // delete it.
    cmd_as(
        env,
        "adm",
        "register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3",
    )
    .ok();
    assert_eq!(
        env.sql("select db_user from audit_log where table_name = 'backup_definition' order by audit_id limit 1"),
        "adm"
    );
    cmd_as(env, "op", "delete_backup_definition_id 1 force-deletion").fails_with(
        "catalog role op may not run delete_backup_definition_id: that takes pgbackman_admin",
    );

    // An agent logging in as agent1 backs up bs1's definition end to end.
    let mut a = Agent::configure(env, "bs1.example.org", "");
    let toml = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        toml.replace(&env.conninfo(), &conninfo_as(env, "agent1")),
    )
    .unwrap();
    a.spawn(None);
    cmd_as(env, "op", "run_backup_definition_now 1").ok();
    wait_for(
        env,
        "select string_agg(execution_status, ',') from backup_catalog",
        "SUCCEEDED",
        60,
        &a,
    );
    assert_eq!(
        env.sql("select claimed_by like 'bs1.example.org:%' from job where def_id = 1"),
        "t"
    );

    // The operator's other commands, run by the agent as agent1: a verification, a restore, a
    // snapshot.
    cmd_as(env, "op", "verify_backup 1").ok();
    cmd_as(
        env,
        "op",
        "register_restore_definition now 1 127.0.0.2 shop_copy \"\"",
    )
    .ok();
    cmd_as(
        env,
        "op",
        "register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" now FULL \"2 days\" \"\" snap1",
    )
    .ok();
    wait_for(
        env,
        "select (select string_agg(state, ',') from verification) || '/' \
           || (select string_agg(execution_status, ',') from restore_catalog) || '/' \
           || (select string_agg(execution_status, ',' order by bck_id) from backup_catalog)",
        "PASSED/SUCCEEDED/SUCCEEDED,SUCCEEDED",
        60,
        &a,
    );
    assert_eq!(s.node.psql("shop_copy", "select 1"), "1");
    // A maintenance pass (retention, listings, reconciliation) as agent1 too, and nothing in
    // the agent's log was refused.
    a.stop();
    a.maintenance_ok();
    let log = a.log();
    for refused in ["permission denied", "may not", "42501"] {
        assert!(!log.contains(refused), "{refused}:\n{log}");
    }

    // readonly runs every listing (with a backup, a job and an audit trail to show).
    for line in [
        "show_backup_servers",
        "show_backup_server_config bs1.example.org",
        "show_backup_server_default_config",
        "show_backup_server_stats bs1.example.org",
        "show_pgsql_nodes",
        "show_pgsql_node_config 127.0.0.2",
        "show_pgsql_node_default_config",
        "show_pgsql_node_stats 127.0.0.2",
        "show_backup_definitions all all all",
        "show_databases_without_backup_definitions all",
        "show_empty_backup_catalogs",
        "show_backup_catalog all all all",
        "show_retention_plan all all",
        "show_backup_details 1",
        "show_snapshot_definitions all all",
        "show_snapshots_in_progress",
        "show_jobs_queue",
        "show_verifications",
        "show_restore_definitions all all",
        "show_restore_catalog all all all",
        "show_restores_in_progress",
        "show_alerts",
        "show_reconciliation",
        "show_pgbackman_config",
        "show_pgbackman_stats",
        "show_audit_log 20",
    ] {
        cmd_as(env, "ro", line).ok();
    }

    // agent2 (bound to bs2) configured as bs1 stops at its start, saying why.
    let b = Agent::configure(env, "bs1.example.org", "");
    let toml = std::fs::read_to_string(&b.config).unwrap();
    std::fs::write(
        &b.config,
        toml.replace(&env.conninfo(), &conninfo_as(env, "agent2")),
    )
    .unwrap();
    let out = b.command().arg("--once").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("catalog role agent2 acts for backup server bs2.example.org only, not for bs1.example.org"),
        "{log}"
    );
    let check = b.command().arg("--check").output().unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("[ERROR] catalog role agent2 acts for"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Revoked, the operator runs nothing more.
    env.db(&["revoke", "op"]).ok();
    cmd_as(env, "op", "run_backup_definition_now 1").fails_with("catalog role op");
}

/// `/healthz` on another address than loopback is served, with a warning in the log and in
/// `--check`.
#[test]
fn a_non_loopback_http_listen_is_accepted_with_a_warning() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let a = Agent::configure(&env, "bs1.example.org", "http_listen = \"0.0.0.0:0\"");
    let check = a.command().arg("--check").output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("[WARN] [agent] http_listen = \"0.0.0.0:0\" serves /healthz and /metrics, without authentication or TLS, on every interface"),
        "{stdout}"
    );
    let quiet = Agent::configure(&env, "bs1.example.org", "http_listen = \"127.0.0.1:0\"");
    let check = quiet.command().arg("--check").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&check.stdout).contains("[WARN] [agent] http_listen"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let out = a.command().arg("--once").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without authentication or TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
