//! Shared fixtures of the end-to-end tests: a catalog cluster with an installed catalog, and a
//! runner for the real `pgbackman` binary with an isolated HOME (no stray config or history).
#![allow(dead_code)]

pub mod agent;
pub mod freeze;

use std::path::Path;
use std::process::{Command, Output};

use pgbackman_testkit::TestCluster;

pub struct Env {
    pub catalog: TestCluster,
    pub home: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails_with(self, needle: &str) -> Run {
        assert_ne!(self.code, 0, "expected failure\nstdout:\n{}", self.stdout);
        assert!(
            self.stderr.contains(needle),
            "stderr does not contain {needle:?}\nstderr:\n{}\nstdout:\n{}",
            self.stderr,
            self.stdout
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgbackman")
}

/// A command with a clean environment: HOME in a temp dir, no PG*/PGBACKMAN_* variables.
pub fn command(home: &Path) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            c.env_remove(&k);
        }
    }
    // COLUMNS would fit tables to a width: tests read whole lines unless they set it.
    c.env("HOME", home)
        .env_remove("COLUMNS")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env("USER", "tester");
    c.env("TZ", "UTC");
    c
}

impl Env {
    /// A catalog cluster with `pgbackman db init` already run.
    pub fn new() -> Env {
        let env = Env::bare();
        env.db(&["init"]).ok();
        env
    }

    /// A catalog cluster without a catalog.
    pub fn bare() -> Env {
        Env {
            catalog: TestCluster::start(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn conninfo(&self) -> String {
        self.catalog.conninfo("pgbackman")
    }

    pub fn db(&self, args: &[&str]) -> Run {
        let mut c = command(self.home.path());
        c.arg("--catalog").arg(self.conninfo()).arg("db").args(args);
        Run::from(c.output().unwrap())
    }

    /// `pgbackman --catalog ... -C line [extra args]`
    pub fn cmd(&self, line: &str) -> Run {
        self.cmd_args(line, &[])
    }

    pub fn cmd_args(&self, line: &str, extra: &[&str]) -> Run {
        let mut c = command(self.home.path());
        c.arg("--catalog")
            .arg(self.conninfo())
            .arg("-C")
            .arg(line)
            .args(extra);
        Run::from(c.output().unwrap())
    }

    pub fn json(&self, line: &str) -> serde_json::Value {
        self.cmd_args(line, &["-o", "json"]).ok().json()
    }

    /// One value from the catalog database.
    pub fn sql(&self, q: &str) -> String {
        self.catalog.psql("pgbackman", q).trim().to_string()
    }
}

impl Env {
    /// Registers backup servers `<name>.example.org`, SrvIDs in the order given.
    pub fn register_backup_servers(&self, names: &[&str]) {
        for name in names {
            self.cmd(&format!("register_backup_server {name} example.org x"))
                .ok();
        }
    }

    /// A node cluster listening on `host`, registered (RUNNING, admin postgres) as `remarks`.
    pub fn start_node(&self, host: &str, remarks: &str) -> TestCluster {
        let node = TestCluster::start_on(&[host]);
        self.cmd(&format!(
            "register_pgsql_node {host} \"\" {} postgres RUNNING {remarks}",
            node.port()
        ))
        .ok();
        node
    }
}
