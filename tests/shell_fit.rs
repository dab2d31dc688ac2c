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
    "help",
    "help register_backup_definition",
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

/// Runs `lines` as piped input (one shell session, as in the bulk mode).
fn piped(env: &Env, lines: &str, columns: u16) -> common::Run {
    use std::io::Write;
    let mut c = common::command(env.home.path());
    c.arg("--catalog")
        .arg(env.conninfo())
        .env("COLUMNS", columns.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    common::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Every listing in one piped session at `columns` (None: unset), with `extra` arguments:
/// the output of each listing, in [`LISTINGS`] order.
fn all_listings(env: &Env, columns: Option<u16>, extra: &[&str]) -> Vec<String> {
    use std::io::Write;
    // `help clear` separates the outputs: its text is known and short.
    let marker = run_at(env, "help clear", None, &[]).ok().stdout;
    let mut c = common::command(env.home.path());
    c.arg("--catalog").arg(env.conninfo()).args(extra);
    match columns {
        Some(w) => c.env("COLUMNS", w.to_string()),
        None => c.env_remove("COLUMNS"),
    };
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let input: String = LISTINGS
        .iter()
        .map(|l| format!("{l}\nhelp clear\n"))
        .collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let parts: Vec<String> = stdout.split(&marker).map(String::from).collect();
    assert_eq!(parts.len(), LISTINGS.len() + 1, "{stdout}");
    parts
}

#[test]
fn every_listing_fits_80_120_and_200_columns() {
    let p = populated();
    let env = &p.site.env;
    // Not a terminal and no COLUMNS: whole lines, as before (the measurement).
    let natural = all_listings(env, None, &[]);
    let fitted: Vec<(u16, Vec<String>)> = [80u16, 120, 200]
        .into_iter()
        .map(|w| (w, all_listings(env, Some(w), &[])))
        .collect();
    let mut too_wide = 0;
    for (i, l) in LISTINGS.iter().enumerate() {
        let w0 = widest(&natural[i]);
        if w0 > 200 {
            too_wide += 1;
        }
        assert!(!natural[i].contains("hidden"), "{l}:\n{}", natural[i]);
        let mut report = format!("{w0:>5}");
        for (w, out) in &fitted {
            let got = widest(&out[i]);
            report.push_str(&format!(" {got:>4}"));
            assert!(
                got <= usize::from(*w),
                "{l} at {w} columns is {got} wide:\n{}",
                out[i]
            );
        }
        eprintln!(
            "{report}  {l}   {}",
            fitted[0].1[i].lines().nth(1).unwrap_or("")
        );
    }
    if std::env::var_os("SHOW").is_some() {
        eprintln!("{}", fitted[0].1.join("\n"));
    }
    assert!(
        too_wide >= 10,
        "the populated catalog no longer has wide listings"
    );
    // CSV and JSON never depend on the width. The agent stops first: its heartbeat would change
    // `last_seen` between the two readings.
    let mut p = p;
    p._agent.stop();
    let env = &p.site.env;
    // show_pgbackman_config reports the width in use: the one listing that must differ.
    let config = LISTINGS
        .iter()
        .position(|l| *l == "show_pgbackman_config")
        .unwrap();
    let without_config = |mut v: Vec<String>| {
        v.remove(config);
        v
    };
    for f in ["csv", "json"] {
        assert_eq!(
            without_config(all_listings(env, Some(80), &["-o", f])),
            without_config(all_listings(env, None, &["-o", f])),
            "-o {f}"
        );
    }
    // What was dropped is said, with the way to see it.
    let alerts = &fitted[0].1[LISTINGS
        .iter()
        .position(|l| l.starts_with("show_alerts"))
        .unwrap()];
    assert!(
        alerts.contains("AlertID") && alerts.contains("broken_db"),
        "{alerts}"
    );
    assert!(alerts.contains("pg_dump exited"), "{alerts}");
    assert!(
        alerts.contains("columns hidden to fit 80 columns: SrvID, NodeID, Ref ID"),
        "{alerts}"
    );
    assert!(alerts.contains("set expanded on"), "{alerts}");
}

#[test]
fn expanded_display_and_failure_first_details() {
    let p = populated();
    let env = &p.site.env;
    // -x: one record per block, every column, fitted.
    let r = run_at(env, "show_alerts all all all", Some(80), &["-x"]).ok();
    assert!(r.stdout.starts_with("-[ RECORD 1 ]"), "{}", r.stdout);
    assert!(r.stdout.contains("\nMessage-ID    |"), "{}", r.stdout);
    assert!(
        r.stdout.contains("\nDBname        | broken_db\n"),
        "{}",
        r.stdout
    );
    assert!(widest(&r.stdout) <= 80, "{}", r.stdout);
    // auto: a table when it fits, blocks when it does not.
    let r = run_at(
        env,
        "show_backup_servers",
        Some(200),
        &["--expanded", "auto"],
    )
    .ok();
    assert!(r.stdout.starts_with("+--"), "{}", r.stdout);
    let r = run_at(
        env,
        "show_jobs_queue all --all",
        Some(100),
        &["--expanded=auto"],
    )
    .ok();
    assert!(r.stdout.starts_with("-[ RECORD 1 ]"), "{}", r.stdout);
    // In a session: set expanded on|off|auto, also as name=value.
    let r = piped(
        env,
        "set expanded on\nshow_backup_servers\nset expanded=off\nshow_pgsql_nodes\nset expanded sometimes\n",
        120,
    );
    assert!(
        r.stdout.contains("[DONE] expanded = on\n-[ RECORD 1 ]"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("[DONE] expanded = off\n+--"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("expanded \"sometimes\" is not valid: use on, off or auto"),
        "{}",
        r.stderr
    );
    // show_pgbackman_config says how tables are laid out.
    let r = run_at(env, "show_pgbackman_config", Some(100), &["-x"]).ok();
    assert!(r.stdout.contains("| Expanded display "), "{}", r.stdout);
    assert!(r.stdout.contains("| on "), "{}", r.stdout);
    assert!(r.stdout.contains("| 100 columns "), "{}", r.stdout);
    // A failed backup's details start with its failure.
    let r = run_at(env, "show_backup_details 2", Some(120), &[]).ok();
    let order: Vec<usize> = [
        "BckID",
        "Execution status",
        "Failed step",
        "Exit status",
        "Error message",
        "Stderr tail",
        "JobID",
        "Command",
    ]
    .iter()
    .map(|k| {
        r.stdout
            .find(&format!("| {k} "))
            .unwrap_or_else(|| panic!("{k} missing:\n{}", r.stdout))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", r.stdout);
    assert!(
        r.stdout.contains("| Exit status          | 3 "),
        "{}",
        r.stdout
    );
    assert!(widest(&r.stdout) <= 120, "{}", r.stdout);
    // A successful one keeps the catalog's order; CSV always does.
    let ok = run_at(env, "show_backup_details 1", Some(120), &[]).ok();
    assert!(
        ok.stdout.find("| JobID ").unwrap() < ok.stdout.find("| Execution status").unwrap(),
        "{}",
        ok.stdout
    );
    let csv = run_at(env, "show_backup_details 2", Some(120), &["-o", "csv"]).ok();
    let head = csv.stdout.lines().next().unwrap();
    assert!(head.starts_with("bckid,jobid,"), "{head}");
}

/// Commands that change things, their errors, help and the shell's own commands, after the
/// listings: what a day in the shell prints.
const CHANGES: &[&str] = &[
    "help",
    "help show_backup_catalog",
    "register_backup_server bs3 example.org \"third one\"",
    "register_backup_server bs3 example.org dup",
    "update_backup_server bs3.example.org \"new remarks\" --status STOPPED",
    "update_backup_server_config bs3.example.org max_concurrent_jobs=3",
    "update_backup_server_config bs3.example.org max_concurrent_jobs=zero",
    "delete_backup_server bs3.example.org",
    "delete_backup_server 99",
    "update_pgsql_node 127.0.0.2 \"\" \"\" RUNNING \"node A\"",
    "update_pgsql_node_config 127.0.0.2 backup_minutes_interval=01-59",
    "accept_pgsql_node_listing 127.0.0.2",
    "register_pgsql_node bad_host \"\" 5432 postgres RUNNING x",
    "register_backup_definition bs2.example.org 127.0.0.2 \"#databases_without_backup_definitions#\"",
    "register_backup_definition bs1.example.org 127.0.0.2 no_such_db",
    "update_backup_definition 1 \"\" \"\" \"\" \"\" \"\" \"14 days\" 3 \"\" ACTIVE \"\"",
    "move_backup_definition bs1.example.org bs2.example.org all all 2",
    "run_backup_definition_now 1",
    "run_backup_definition_now 999",
    "register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" \"2099-01-02 00:00\" FULL \"30 days\" \"\" second",
    "cancel_job 999",
    "verify_backup all",
    "verify_backup 999",
    "update_drill_schedule 1 none",
    "register_restore_definition now 1 127.0.0.2 shop_again \"\" --dry-run",
    "show_backup_details 999",
    "retry_alerts all",
    "delete_backup_definition_id 1",
    "delete_backup_definition_dbname 127.0.0.2 broken_db force-deletion",
    "set output_format=csv",
    "show_backup_servers",
    "set output_format=table",
    "set nothing=1",
    "show_history",
    "no_such_command",
];

#[test]
fn no_debug_text_or_wording_slips_in_any_output() {
    let p = populated();
    let env = &p.site.env;
    let lines: Vec<&str> = LISTINGS.iter().chain(CHANGES).copied().collect();
    let r = piped(env, &(lines.join("\n") + "\n"), 120);
    let log = p._agent.log();
    if std::env::var_os("SHOW").is_some() {
        eprintln!("{}\n----\n{}\n----\n{log}", r.stdout, r.stderr);
    }
    for (what, text) in [
        ("stdout", &r.stdout),
        ("stderr", &r.stderr),
        ("agent log", &log),
    ] {
        for bad in ["Some(", "None", "(\"", "..", ".).", "1 backups", ":?"] {
            let hit = text.lines().find(|l| l.contains(bad) && !l.contains("..."));
            assert!(
                hit.is_none(),
                "{what} shows {bad:?}: {}\n{text}",
                hit.unwrap_or("")
            );
        }
        // Counts in messages agree with their noun ("1 backup definition moved").
        let hit = text
            .lines()
            .find(|l| (l.starts_with("[DONE]") || l.starts_with("[ERROR]")) && l.contains("(s)"));
        assert!(hit.is_none(), "{what}: {}", hit.unwrap_or(""));
    }
    // The commands did run: a day's output, not a wall of errors.
    assert!(
        r.stdout
            .contains("[DONE] Backup server bs3.example.org registered"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("[DONE] 1 backup definition moved from bs1.example.org"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("(At 03:00 every day)."), "{}", r.stdout);
    // Schedules have one form: no zero-padded numbers, whether drawn at random or typed.
    for l in r.stdout.lines().filter(|l| l.contains("registered: ")) {
        let sched = l.split("registered: ").nth(1).unwrap_or("");
        for field in sched.split_whitespace().take(2) {
            assert!(!(field.len() > 1 && field.starts_with('0')), "{l}");
        }
    }
    // An id is said as an id, not echoed as if it were a name; a node is named once.
    assert!(
        r.stderr
            .contains("backup server SrvID 99 is not registered"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("database \"no_such_db\" does not exist on PgSQL node 127.0.0.2\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("lines of standard input failed: lines "),
        "{}",
        r.stderr
    );
}
