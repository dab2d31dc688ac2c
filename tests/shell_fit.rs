//! The shell fits the screen: every listing of a populated catalog at 80, 120 and 200 columns,
//! the expanded display, failure-first backup details, and no Rust debug text in any output.

mod common;
use common::Env;
use common::agent::{Agent, Site, fake_bin, run_now, site, wait_for};

/// A catalog with something in every listing: a successful and a failed backup (an alert), a
/// verification, a restore, a snapshot and a backup queued for later, a drill schedule.
struct Populated {
    site: Site,
    _agent: Agent,
    _bin: tempfile::TempDir,
}

fn populated() -> Populated {
    let site = site();
    let env = &site.env;
    site.node.create_database("broken_db");
    // pg_dump fails for broken_db only (exit status 3 and an error line), as a real failure would.
    let bin = fake_bin(
        "case \"$*\" in *broken_db*) echo 'pg_dump: error: connection to database \"broken_db\" failed: FATAL:  permission denied for database \"broken_db\"' >&2; exit 3;; esac\nexec /usr/lib/postgresql/15/bin/pg_dump \"$@\"",
    );
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3 \"*\" \"*\" \"*\" FULL false \"7 days\" 2 \"--no-comments\" ACTIVE \"nightly dump of the shop database\"")
        .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 broken_db")
        .ok();
    env.cmd("register_backup_definition bs2.example.org 127.0.0.2 \"#all_databases#\" \"\" 15 1 \"*\" \"*\" 1-5 FULL false \"30 days\" 7 \"\" ACTIVE \"every database on weekdays\"")
        .ok();
    let agent = Agent::start(env, "bs1.example.org", Some(bin.path()));
    let good = run_now(env, &agent, 1);
    let bad = run_now(env, &agent, 2);
    assert_eq!(
        env.sql(&format!(
            "select execution_status from backup_catalog where bck_id = {good}"
        )),
        "SUCCEEDED"
    );
    assert_eq!(
        env.sql(&format!(
            "select execution_status from backup_catalog where bck_id = {bad}"
        )),
        "ERROR"
    );
    env.cmd(&format!("verify_backup {good}")).ok();
    env.cmd(&format!(
        "register_restore_definition now {good} 127.0.0.2 shop_copy \"\""
    ))
    .ok();
    wait_for(env, "select count(*) from restore_catalog", "1", 60, &agent);
    env.cmd("register_snapshot_definition bs2.example.org 127.0.0.2 shop \"\" \"2099-01-01 00:00\" FULL \"30 days\" \"\" before-upgrade")
        .ok();
    env.cmd("update_backup_server_config bs1.example.org drill_node=127.0.0.2")
        .ok();
    env.cmd("update_drill_schedule 1 \"30 5 * * 0\"").ok();
    Populated {
        site,
        _agent: agent,
        _bin: bin,
    }
}

/// Every listing and report, as a user types it (no prompts: -C).
const LISTINGS: &[&str] = &[
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
    "show_backup_catalog all all all all all",
    "show_retention_plan all all all",
    "show_backup_details 1",
    "show_backup_details 2",
    "show_snapshot_definitions all all all",
    "show_snapshots_in_progress",
    "show_jobs_queue all",
    "show_jobs_queue all --all",
    "show_verifications all",
    "show_restore_definitions all all all",
    "show_restore_catalog all all all",
    "show_restore_details 1",
    "show_restores_in_progress",
    "show_alerts all all all",
    "show_reconciliation all",
    "show_pgbackman_config",
    "show_pgbackman_stats",
    "show_audit_log 50",
];

fn run_at(env: &Env, line: &str, columns: Option<u16>, extra: &[&str]) -> common::Run {
    let mut c = common::command(env.home.path());
    c.arg("--catalog")
        .arg(env.conninfo())
        .arg("-C")
        .arg(line)
        .args(extra);
    match columns {
        Some(w) => c.env("COLUMNS", w.to_string()),
        None => c.env_remove("COLUMNS"),
    };
    let o = c.output().unwrap();
    common::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn widest(s: &str) -> usize {
    s.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[test]
fn measure() {
    let p = populated();
    for l in LISTINGS {
        let r = run_at(&p.site.env, l, None, &[]).ok();
        eprintln!(
            "{:>5}  {l}\n{}",
            widest(&r.stdout),
            r.stdout.lines().nth(1).unwrap_or("")
        );
    }
    let r = run_at(&p.site.env, "show_backup_details 2", None, &[]).ok();
    eprintln!("{}", r.stdout);
    let r = run_at(&p.site.env, "show_alerts all all all", None, &[]).ok();
    eprintln!("{}", r.stdout);
}
