//! `pgbackman db init | upgrade | status` and the version gate, against a real cluster.

mod common;
use common::{Env, command};

#[test]
fn init_creates_the_database_and_the_catalog() {
    let env = Env::bare();
    let r = env.db(&["init"]).ok();
    assert!(
        r.stdout.contains("Database pgbackman created"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Catalog installed"), "{}", r.stdout);
    assert_eq!(env.sql("select count(*) from backup_server_default_config where parameter = 'root_backup_partition'"), "1");
    let st = env.db(&["status"]).ok();
    assert!(
        st.stdout.contains("OK, this binary matches"),
        "{}",
        st.stdout
    );
}

#[test]
fn init_twice_is_refused_and_changes_nothing() {
    let env = Env::new();
    env.db(&["init"])
        .fails_with("already holds a pgbackman catalog");
}

#[test]
fn init_refuses_a_database_with_other_tables() {
    let env = Env::bare();
    env.catalog.psql("postgres", "create database pgbackman");
    env.catalog
        .psql("pgbackman", "create table app_data (id int)");
    env.db(&["init"]).fails_with("is not empty");
    assert_eq!(
        env.sql("select count(*) from pg_tables where tablename = 'backup_server'"),
        "0"
    );
}

#[test]
fn shell_refuses_an_uninitialised_catalog_and_says_what_to_run() {
    let env = Env::bare();
    env.catalog.psql("postgres", "create database pgbackman");
    env.cmd("show_backup_servers")
        .fails_with("pgbackman db init");
}

#[test]
fn shell_refuses_a_mismatched_catalog_until_upgrade() {
    let env = Env::new();
    // As if another pgbackman version had installed the functions.
    env.sql("update catalog_info set sql_version = 'other', software = '0.0.1'");
    env.cmd("show_backup_servers")
        .fails_with("pgbackman db upgrade");
    let st = env.db(&["status"]);
    assert_ne!(st.code, 0);
    assert!(st.stdout.contains("MISMATCH"), "{}", st.stdout);
    env.db(&["upgrade"]).ok();
    env.cmd("show_backup_servers").ok();
}

#[test]
fn shell_refuses_a_newer_catalog() {
    let env = Env::new();
    env.sql("insert into refinery_schema_history (version, name, applied_on, checksum) values (999, 'future', now()::text, '0')");
    env.cmd("show_backup_servers")
        .fails_with("newer than this pgbackman");
    env.db(&["upgrade"]).fails_with("newer than this pgbackman");
}

#[test]
fn upgrade_keeps_data_and_reapplies_functions() {
    let env = Env::new();
    env.cmd("register_backup_server bs1 example.org keep").ok();
    env.sql("drop function api.server_fqdn(bigint) cascade");
    env.db(&["upgrade"]).ok();
    assert_eq!(env.sql("select api.server_fqdn(1)"), "bs1.example.org");
    assert_eq!(env.sql("select remarks from backup_server"), "keep");
}

#[test]
fn concurrent_upgrades_serialise_on_the_advisory_lock() {
    let env = Env::new();
    let spawn = || {
        let mut c = command(env.home.path());
        c.arg("--catalog")
            .arg(env.conninfo())
            .args(["db", "upgrade"]);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..4).map(|_| spawn()).collect();
    for ch in children {
        let o = ch.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    env.db(&["status"]).ok();
}

#[test]
fn catalog_is_found_through_env_and_config_file() {
    let env = Env::new();
    // PGBACKMAN_CATALOG
    let o = command(env.home.path())
        .env("PGBACKMAN_CATALOG", env.conninfo())
        .args(["-C", "show_backup_servers"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // --config FILE
    let cfg = env.home.path().join("x.toml");
    std::fs::write(
        &cfg,
        format!("[catalog]\nconninfo = \"{}\"\n", env.conninfo()),
    )
    .unwrap();
    let o = command(env.home.path())
        .arg("--config")
        .arg(&cfg)
        .args(["-C", "show_pgbackman_config"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("x.toml"));
    // ~/.config/pgbackman/pgbackman.toml
    let dir = env.home.path().join(".config/pgbackman");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&cfg, dir.join("pgbackman.toml")).unwrap();
    let o = command(env.home.path())
        .args(["-C", "show_backup_servers"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn no_catalog_configured_says_how_to_configure_one() {
    let home = tempfile::tempdir().unwrap();
    let o = command(home.path())
        .args(["-C", "show_backup_servers"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--catalog") && err.contains("PGBACKMAN_CATALOG"),
        "{err}"
    );
}

#[test]
fn help_needs_no_catalog() {
    let home = tempfile::tempdir().unwrap();
    for (line, want) in [
        ("help", "register_restore_definition"),
        ("help verify_backup", "level 2"),
        ("show_alerts --help", "Alerts, newest first"),
    ] {
        let o = command(home.path()).args(["-C", line]).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains(want), "{line}: {out}");
    }
    let o = command(home.path())
        .args(["-C", "help nosuch"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no command \"nosuch\""));
}

#[test]
fn unreachable_catalog_is_a_clear_error() {
    let env = Env::new();
    env.catalog.stop();
    let r = env.cmd("show_backup_servers");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("cannot connect"), "{}", r.stderr);
    env.catalog.start_again();
    env.cmd("show_backup_servers").ok();
}
