//! `pgbackman quickstart` on a machine with nothing set up: a private catalog cluster, this host
//! as backup server, a RUNNING node, a config file that later commands find by themselves.

mod common;
use common::command;

struct Stop<'a>(&'a std::path::Path, &'a std::path::Path);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = command(self.1)
            .args(["quickstart", "--stop", "--dir"])
            .arg(self.0)
            .output();
    }
}

#[test]
fn quickstart_sets_up_a_working_installation_and_can_be_rerun() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    let _stop = Stop(&qs, home.path());
    let run = || {
        let o = command(home.path())
            .args(["quickstart", "--no-shell", "--dir"])
            .arg(&qs)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    };
    let first = run();
    assert!(first.contains("[OK] Backup server"), "{first}");
    assert!(first.contains("[OK] PgSQL node"), "{first}");
    assert!(
        home.path()
            .join(".config/pgbackman/pgbackman.toml")
            .exists()
    );
    // It ends with a real first backup, shown in detail.
    assert!(first.contains("Running the first backup"), "{first}");
    assert!(
        first.contains("| Execution status     | SUCCEEDED"),
        "{first}"
    );
    // The physical half: a WAL archive of the node and a first base backup, so that the
    // recovery window answers right away.
    assert!(first.contains("[OK] WAL archive of"), "{first}");
    assert!(
        first.contains("The agent takes a first base backup"),
        "{first}"
    );
    // It leaves the agent running, and says so in its last lines.
    let pid = agent_pid(&first, "The agent runs in the background (pid ");
    assert!(alive(pid), "{first}");
    assert!(
        first.contains("`pgbackman quickstart --stop` stops both and keeps everything on disk"),
        "{first}"
    );
    // A second run reuses everything and registers nothing twice, nor starts a second agent.
    let second = run();
    assert_eq!(agent_pid(&second, "The agent runs (pid "), pid, "{second}");
    let o = command(home.path())
        .args(["-C", "show_backup_catalog", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = v["backup_catalog"].as_array().unwrap();
    assert_eq!(
        backups.len(),
        2,
        "a rerun takes no second first backup nor base backup: {v}"
    );
    assert!(backups.iter().all(|b| b["status"] == "SUCCEEDED"), "{v}");
    assert!(
        backups.iter().any(|b| b["code"] == "BASEBACKUP"),
        "a base backup: {v}"
    );
    let o = command(home.path())
        .args(["-C", "show_recovery_window 1", "-o", "json"])
        .output()
        .unwrap();
    let window = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{window}");
    // The window lists the base backup it restores.
    assert!(window.contains("BckID "), "{window}");
    let o = command(home.path())
        .args(["-C", "show_pgsql_nodes", "-o", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nodes = v["pgsql_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["status"], "RUNNING");
    let o = command(home.path())
        .args(["-C", "show_backup_servers", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["backup_servers"].as_array().unwrap().len(), 1);
    // The local server default resolves to the registered one.
    let o = command(home.path())
        .args(["-C", "show_backup_server_config"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The next thing a user types is run by the agent quickstart left running.
    let o = command(home.path())
        .args(["-C", "run_backup_definition_now 1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = std::time::Instant::now();
    loop {
        let o = command(home.path())
            .args(["-C", "show_backup_catalog", "-o", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let done = v["backup_catalog"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["status"] == "SUCCEEDED")
            .count();
        if done == 3 {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "the queued backup did not run:\n{}",
            std::fs::read_to_string(qs.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // --stop stops the agent and the catalog, and keeps what is on disk.
    let o = command(home.path())
        .args(["quickstart", "--stop", "--dir"])
        .arg(&qs)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("[DONE] Agent stopped."), "{out}");
    assert!(!alive(pid), "the agent still runs after --stop");
    assert!(qs.join("agent.toml").exists() && qs.join("backups").is_dir());
    assert!(qs.join("data/PG_VERSION").exists());
}

#[test]
fn quickstart_help_says_what_it_writes_starts_and_keeps() {
    let home = tempfile::tempdir().unwrap();
    let o = command(home.path())
        .args(["quickstart", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for needle in [
        "It writes:",
        "~/.config/pgbackman/pgbackman.toml",
        "DIR/agent.toml",
        "It starts: the catalog cluster, a first backup",
        "then the agent\nin the background",
        "--stop stops the agent and the catalog cluster and keeps everything on disk",
    ] {
        assert!(help.contains(needle), "{needle:?} not in:\n{help}");
    }
}

/// The agent's pid from quickstart's line starting with `prefix`.
fn agent_pid(out: &str, prefix: &str) -> u32 {
    let rest = out
        .split(prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{out}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether `pid` is a live pgbackman-agent (a zombie or a reused pid is not).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("pgbackman-agent"))
}
