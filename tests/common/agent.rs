//! The agent fixture of the end-to-end tests: a `pgbackman-agent` process with its own config,
//! state and backup directories and log; a fleet of a catalog and two node clusters; fake client
//! programs; process and file probes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgbackman_testkit::TestCluster;
use sha2::Digest;

use super::Env;

pub struct Agent {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(env: &Env, server: &str, extra_path: Option<&Path>) -> Agent {
        Agent::start_with(env, server, extra_path, "")
    }

    /// `extra` is more of the `[agent]` section (`key = value` lines), then, from its first
    /// `[table]` line on, more tables (`[agent.alerts]` ...) taken as they are.
    pub fn start_with(env: &Env, server: &str, extra_path: Option<&Path>, extra: &str) -> Agent {
        let mut a = Agent::configure(env, server, extra);
        a.spawn(extra_path);
        a
    }

    /// An agent whose config is written but which does not run yet (`spawn`, `command`).
    pub fn configure(env: &Env, server: &str, extra: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        let mut agent = format!(
            "backup_server = \"{server}\"\nstate_dir = \"{}\"\nbackup_dir = \"{}\"\nrepoll_seconds = 2\nlease_seconds = 6\n",
            dir.path().join("state").display(),
            dir.path().join("backups").display()
        );
        let (keys, tables) = match extra.find("\n[").map(|i| i + 1) {
            _ if extra.starts_with('[') => ("", extra),
            Some(i) => extra.split_at(i),
            None => (extra, ""),
        };
        for line in keys.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            // A key given in `extra` replaces the default above.
            agent = agent
                .lines()
                .filter(|l| l.split('=').next().unwrap_or("").trim() != key)
                .map(|l| format!("{l}\n"))
                .collect();
            agent.push_str(line);
            agent.push('\n');
        }
        if !keys.contains("http_listen") {
            agent.push_str("http_listen = \"\"\n");
        }
        std::fs::write(
            &config,
            format!(
                "[catalog]\nconninfo = \"{}\"\n[agent]\n{agent}{tables}\n",
                env.conninfo()
            ),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        Agent {
            child: None,
            config,
            dir,
            log,
        }
    }

    /// The agent binary with this config, the log level and time zone of the daemon.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgbackman-agent"));
        c.arg("--config")
            .arg(&self.config)
            .env("PGBACKMAN_LOG", "info")
            .env("TZ", "UTC");
        c
    }

    pub fn spawn(&mut self, extra_path: Option<&Path>) {
        if let Some(p) = extra_path {
            // A directory of fake client programs: the agent takes them as the client bin dir.
            let mut cfg = std::fs::read_to_string(&self.config).unwrap();
            if !cfg.contains("[agent.bin_dirs]") {
                cfg.push_str(&format!("[agent.bin_dirs]\n\"15\" = \"{}\"\n", p.display()));
                std::fs::write(&self.config, cfg).unwrap();
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = self.command();
        c.stdout(Stdio::null()).stderr(log);
        self.child = Some(c.spawn().unwrap());
    }

    /// Sets `key` of the `[agent]` section in the config (read at the next start).
    pub fn set(&self, key: &str, value: &str) {
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        let mut out = String::new();
        let mut section = "";
        let mut done = false;
        for l in cfg.lines() {
            if l.starts_with('[') {
                if section == "[agent]" && !done {
                    out.push_str(&format!("{key} = {value}\n"));
                    done = true;
                }
                section = l.trim();
            } else if section == "[agent]" && l.split('=').next().unwrap_or("").trim() == key {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
                continue;
            }
            out.push_str(l);
            out.push('\n');
        }
        if !done {
            out.push_str(&format!("{key} = {value}\n"));
        }
        std::fs::write(&self.config, out).unwrap();
    }

    /// The daemon's own maintenance timer (0: off).
    pub fn set_maintenance_seconds(&self, n: u64) {
        self.set("maintenance_seconds", &n.to_string());
    }

    /// One maintenance pass (`--maintenance`); its stderr is appended to the log.
    pub fn maintenance(&self) -> Output {
        let o = self.command().arg("--maintenance").output().unwrap();
        let mut log = self.log();
        log.push_str(&String::from_utf8_lossy(&o.stderr));
        std::fs::write(&self.log, log).unwrap();
        o
    }

    #[track_caller]
    pub fn maintenance_ok(&self) {
        let o = self.maintenance();
        assert!(o.status.success(), "maintenance failed:\n{}", self.log());
    }

    /// The running agent's pid (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Spooled results waiting for the catalog.
    pub fn spooled(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.state().join("spool"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// GET `path` from the agent's HTTP listener (its address is in the log).
    pub fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let log = self.log();
        let addr = log
            .lines()
            .rev()
            .find_map(|l| l.split("on http://").nth(1))
            .unwrap_or_else(|| panic!("no HTTP listener in the log:\n{log}"))
            .trim()
            .to_string();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    pub fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        c.wait().unwrap()
    }

    /// SIGTERM if it runs, and waits for it to exit.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.sigterm();
        }
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Polls `q` (one value) until it equals `want` or `secs` pass.
#[track_caller]
pub fn wait_for(env: &Env, q: &str, want: &str, secs: u64, agent: &Agent) {
    wait_for_agents(env, q, want, secs, &[agent]);
}

/// `wait_for` where several agents may do the work: all their logs tell what went wrong.
#[track_caller]
pub fn wait_for_agents(env: &Env, q: &str, want: &str, secs: u64, agents: &[&Agent]) {
    let t = Instant::now();
    loop {
        let v = env.sql(q);
        if v == want {
            return;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            panic!(
                "waited {secs}s for {q:?} = {want:?}, got {v:?}\n{}\nagent log:\n{}",
                catalog_summary(env),
                agents
                    .iter()
                    .map(|a| a.log())
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `f` until it holds or `secs` pass; the panic names `what` and shows the agents' logs.
#[track_caller]
pub fn wait_until(what: &str, secs: u64, agents: &[&Agent], mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > Duration::from_secs(secs) {
            let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
            panic!(
                "waited {secs}s for {what}\nagent logs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Backup set directories under a backup dir (`<node>/<db>/<set>`), staging excluded, sorted.
pub fn sets_on_disk(backups: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for node in std::fs::read_dir(backups).into_iter().flatten().flatten() {
        if node.file_name() == "staging" || !node.path().is_dir() {
            continue;
        }
        for db in std::fs::read_dir(node.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for set in std::fs::read_dir(db.path()).into_iter().flatten().flatten() {
                out.push(set.path());
            }
        }
    }
    out.sort();
    out
}

/// What the agents did, as the catalog has it: one line per table, for failure messages.
pub fn catalog_summary(env: &Env) -> String {
    [
        ("jobs", "select string_agg(concat_ws(' ', job_id, kind, state, error_message), '; ' order by job_id) from job"),
        ("catalog", "select string_agg(concat_ws(' ', bck_id, execution_status, error_step, error_message), '; ' order by bck_id) from backup_catalog"),
        ("verifications", "select string_agg(concat_ws(' ', job_id, state, error_message), '; ' order by job_id) from verification"),
        ("restores", "select string_agg(concat_ws(' ', restore_id, execution_status, error_step, error_message, error_stderr_tail), '; ' order by restore_id) from restore_catalog"),
        ("alerts", "select string_agg(concat_ws(' ', alert_id, alert_type, state, attempts, last_error), '; ' order by alert_id) from alert"),
    ]
    .iter()
    .map(|(name, q)| format!("{name}: {}", env.sql(q)))
    .collect::<Vec<_>>()
    .join("\n")
}

pub fn sha256(p: &Path) -> String {
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(p).unwrap());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Fleet {
    pub env: Env,
    pub a: TestCluster,
    pub b: TestCluster,
}

/// A catalog, backup servers bs1 and bs2, nodes 127.0.0.2 ("shop") and 127.0.0.3 ("crm"), each
/// database with a table `t` of 2000 rows owned by app_owner and readable by app_reader.
pub fn fleet() -> Fleet {
    let env = Env::new();
    env.register_backup_servers(&["bs1", "bs2"]);
    let a = env.start_node("127.0.0.2", "a");
    let b = env.start_node("127.0.0.3", "b");
    for (n, name) in [(&a, "shop"), (&b, "crm")] {
        n.create_database(name);
        n.psql(
            name,
            "create role app_owner; create role app_reader; create table t (id int primary key, v text) ; \
             alter table t owner to app_owner; grant select on t to app_reader; \
             insert into t select g, md5(g::text) from generate_series(1, 2000) g",
        );
    }
    Fleet { env, a, b }
}

pub struct Site {
    pub env: Env,
    pub node: TestCluster,
}

/// A catalog, backup servers bs1 and bs2, and a node on 127.0.0.2 ("a") with an empty
/// database "shop".
pub fn site() -> Site {
    let env = Env::new();
    env.register_backup_servers(&["bs1", "bs2"]);
    let node = env.start_node("127.0.0.2", "a");
    node.create_database("shop");
    Site { env, node }
}

/// A bin dir whose pg_dump runs `body` (a test double; the product itself never runs a shell).
pub fn fake_bin(body: &str) -> tempfile::TempDir {
    fake_tool("pg_dump", body)
}

/// A bin dir of the real client programs of major 15 but `tool`, which runs `body` (after
/// answering `--version` as the real one does).
pub fn fake_tool(tool: &str, body: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let real = "/usr/lib/postgresql/15/bin";
    for other in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        if other != tool {
            std::os::unix::fs::symlink(format!("{real}/{other}"), d.path().join(other)).unwrap();
        }
    }
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real}/{tool} --version; fi\n{body}\n"
    );
    let p = d.path().join(tool);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    d
}

/// Processes whose command line mentions `needle`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && !c.contains("agent_e2e") {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                if !stat.contains(") Z ") {
                    out.push(c);
                }
            }
        }
    }
    out
}

pub fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

impl Agent {
    /// An agent whose catalog is `catalog` (any conninfo, e.g. over TLS with `sslrootcert`) and
    /// whose process also gets `vars` (e.g. HOME, PGSSLROOTCERT for its node connections).
    pub fn start_with_catalog(catalog: &str, server: &str, vars: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[catalog]\nconninfo = \"{catalog}\"\n[agent]\nbackup_server = \"{server}\"\nstate_dir = \"{}\"\nbackup_dir = \"{}\"\nrepoll_seconds = 2\nlease_seconds = 6\nhttp_listen = \"\"\n",
                dir.path().join("state").display(),
                dir.path().join("backups").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgbackman-agent"));
        c.arg("--config")
            .arg(&config)
            .env("PGBACKMAN_LOG", "info")
            .env("TZ", "UTC")
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(out);
        Agent {
            child: Some(c.spawn().unwrap()),
            config,
            dir,
            log,
        }
    }
}

/// Runs definition `def` now and waits for its new catalog row; returns its BckID.
pub fn run_now(env: &Env, agent: &Agent, def: i64) -> i64 {
    let before: i64 = env
        .sql("select coalesce(max(bck_id), 0) from backup_catalog")
        .parse()
        .unwrap();
    env.cmd(&format!("run_backup_definition_now {def}")).ok();
    wait_for(
        env,
        &format!(
            "select count(*) > 0 from backup_catalog where def_id = {def} and bck_id > {before}"
        ),
        "t",
        60,
        agent,
    );
    env.sql(&format!(
        "select max(bck_id) from backup_catalog where def_id = {def}"
    ))
    .parse()
    .unwrap()
}

/// Ages a backup: it finished `age` ago (a test cannot wait for days).
pub fn age(env: &Env, bck: i64, age: &str) {
    env.sql(&format!(
        "update backup_catalog set started = now() - interval '{age}' - interval '1 second', \
         finished = now() - interval '{age}' where bck_id = {bck}"
    ));
}

/// The set directory of a backup ("" when it has none).
pub fn dir_of(env: &Env, bck: i64) -> String {
    env.sql(&format!(
        "select coalesce(backup_dir, '') from backup_catalog where bck_id = {bck}"
    ))
}
