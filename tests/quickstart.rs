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
    // A second run reuses everything and registers nothing twice.
    run();
    let o = command(home.path())
        .args(["-C", "show_backup_catalog", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = v["backup_catalog"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "a rerun takes no second first backup");
    assert_eq!(backups[0]["status"], "SUCCEEDED");
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
}
