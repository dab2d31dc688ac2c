//! pgbackman-testkit: throwaway PostgreSQL clusters for tests (dev-only).
//!
//! ```no_run
//! let pg = pgbackman_testkit::TestCluster::start();
//! assert_eq!(pg.psql("postgres", "select 1"), "1");
//! // dropped: server stopped, directory removed
//! ```
//!
//! * Fast: `initdb` runs once per machine, PostgreSQL version and settings, into a cached template
//!   (`<base>/template-<major>-<hash>`); each cluster is a copy of it (~0.15 s to start on tmpfs).
//! * Isolated: each cluster lives in `<base>/run-<pid>-<n>/` with its own socket directory and a
//!   free port; a start that loses a port race is retried on another port.
//! * Clean: `Drop` stops the server and removes the directory, also while a test panics. Leftovers
//!   of SIGKILLed test processes are swept by the next start in any process.
//! * `<base>` is [`base_dir()`]: `$PGBACKMAN_TESTKIT_DIR`, else `/dev/shm/pgbackman-testkit` if
//!   /dev/shm is roomy (much faster), else `/tmp/pgbackman-testkit`.
//! * As root the server runs as the `postgres` OS user (see `pgbackman-pgctl`).
//! * Another major: [`TestCluster::start_major`] takes its programs from [`major_bin_dir`]
//!   (`$PGBACKMAN_PG_CACHE/<major>/bin`, filled by `.ci/install-pg-majors`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::statvfs::statvfs;
use nix::unistd::{Pid, Uid};
use pgbackman_pgctl::{Cluster, StopMode, find_bin_dir, free_port, server_version};

pub mod s3;
mod silent;
mod stall;
pub mod standby;
pub mod tls;

pub use s3::S3Server;
pub use silent::{Silence, SilentNode};
pub use stall::StallingProxy;
pub use standby::Standby;

/// Server settings of every test cluster: durability off, small footprint.
const SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
    ("max_connections", "60"),
    ("log_line_prefix", "%m [%p] %q%u@%d "),
];
/// Bump when the template layout changes, so old templates are not reused.
const TEMPLATE_FORMAT: u32 = 1;
const START_ATTEMPTS: usize = 10;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running throwaway cluster. Stopped and deleted on drop.
pub struct TestCluster {
    cluster: Cluster,
    dir: PathBuf,
}

impl TestCluster {
    /// Starts a cluster reachable by unix socket and on 127.0.0.1. Panics with the reason.
    pub fn start() -> TestCluster {
        Self::start_on(&["127.0.0.1"])
    }

    /// Starts a cluster listening on the given addresses (plus its unix socket), e.g.
    /// `&["127.0.0.2"]` so that tests see distinct hosts (any 127.0.0.0/8 works on Linux).
    pub fn start_on(addrs: &[&str]) -> TestCluster {
        Self::start_with(None, addrs)
    }

    /// Starts a cluster of PostgreSQL `major` (programs from [`major_bin_dir`]) listening on
    /// `addrs`. Panics, saying how to install them, when that major is not on this machine.
    pub fn start_major(major: u32, addrs: &[&str]) -> TestCluster {
        Self::start_with(Some(major_bin_dir(major)), addrs)
    }

    fn start_with(bin: Option<PathBuf>, addrs: &[&str]) -> TestCluster {
        sweep_stale();
        let template = template(bin.as_deref())
            .unwrap_or_else(|e| panic!("testkit: cannot build the template cluster: {e}"));
        let template = &template;
        let dir = base_dir().join(format!(
            "run-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("testkit: cannot create {}: {e}", dir.display()));
        // From here on Drop cleans up, even if a step below panics.
        let mut cluster = configured(Cluster::new(dir.join("data"), 0))
            .with_socket_dir(dir.join("socket"))
            .with_listen_addresses(addrs.iter().map(|a| a.to_string()).collect());
        if let Some(b) = bin {
            cluster = cluster.with_bin_dir(b);
        }
        let mut tc = TestCluster { cluster, dir };
        let _ = fs::set_permissions(&tc.dir, fs::Permissions::from_mode(0o755)); // server must traverse it
        copy_tree(template, tc.cluster.data_dir()).unwrap_or_else(|e| {
            panic!(
                "testkit: cannot copy the template {}: {e}",
                template.display()
            )
        });
        tc.cluster
            .prepare_directories()
            .unwrap_or_else(|e| panic!("testkit: {e}"));
        for attempt in 1..=START_ATTEMPTS {
            tc.cluster = tc.cluster.clone().with_port(free_port());
            let started = tc.cluster.write_config().and_then(|()| tc.cluster.start());
            match started {
                Ok(()) => return tc,
                // Another process took the port between free_port() and the server's bind.
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => panic!(
                    "testkit: cannot start the test cluster in {}: {e}",
                    tc.dir.display()
                ),
            }
        }
        unreachable!()
    }

    /// libpq conninfo over the unix socket, as superuser `postgres`.
    pub fn conninfo(&self, db: &str) -> String {
        self.cluster.conninfo(db)
    }
    /// libpq conninfo over TCP to `host` (one of the addresses given to [`start_on`](Self::start_on)).
    pub fn tcp_conninfo(&self, host: &str, db: &str) -> String {
        self.cluster.tcp_conninfo(host, db)
    }
    pub fn port(&self) -> u16 {
        self.cluster.port()
    }
    pub fn socket_dir(&self) -> &Path {
        self.cluster.socket_dir()
    }
    pub fn data_dir(&self) -> &Path {
        self.cluster.data_dir()
    }
    /// The run directory holding data, socket and log; removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The directory of the server's programs (and of the matching client programs).
    pub fn bin_dir(&self) -> PathBuf {
        self.cluster
            .bin_dir()
            .unwrap_or_else(|e| panic!("testkit: {e}"))
    }
    /// The underlying [`Cluster`], for anything not wrapped here.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Stops the server (fast shutdown); data, port and directory stay. Panics on failure.
    pub fn stop(&self) {
        self.cluster
            .stop(StopMode::Fast)
            .unwrap_or_else(|e| panic!("testkit: {e}"));
    }
    /// Starts the server again after [`stop`](Self::stop), on the same port and data. Panics on failure.
    pub fn start_again(&self) {
        self.cluster
            .start()
            .unwrap_or_else(|e| panic!("testkit: {e}"));
    }

    /// Runs SQL with psql on `db` over the unix socket; returns unaligned tuples-only output
    /// without the final newline. Panics on error (with psql's stderr).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.cluster
            .psql(db, sql)
            .unwrap_or_else(|e| panic!("testkit: {e}"))
    }
    /// Like [`psql`](Self::psql) with any conninfo, e.g. [`tcp_conninfo`](Self::tcp_conninfo).
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> String {
        self.cluster
            .psql_conninfo(conninfo, sql)
            .unwrap_or_else(|e| panic!("testkit: {e}"))
    }
    /// `CREATE DATABASE` with `name` quoted as an identifier (spaces, quotes, unicode are fine).
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Never panic here: this may run while unwinding.
        if self.cluster.stop(StopMode::Immediate).is_err()
            && let Some(pid) = self.cluster.postmaster_pid()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `"name"` with embedded double quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn configured(mut c: Cluster) -> Cluster {
    for (k, v) in SETTINGS {
        c = c.with_setting(*k, *v);
    }
    c
}

/// Directory names for clusters and templates: RAM-backed `/dev/shm` first (file creation on a
/// disk can cost ~1 ms per file: a copy of the ~1000-file template took 1 s on /tmp, 0.03 s on
/// tmpfs), then `/tmp`.
fn base_candidates() -> [PathBuf; 2] {
    let uid = Uid::effective();
    let name = if uid.is_root() {
        "pgbackman-testkit".to_string()
    } else {
        format!("pgbackman-testkit-{uid}")
    };
    [
        Path::new("/dev/shm").join(&name),
        Path::new("/tmp").join(name),
    ]
}

/// Where clusters and templates live: `$PGBACKMAN_TESTKIT_DIR`, else `/dev/shm/pgbackman-testkit`
/// when /dev/shm has 2 GiB free (not in a default Docker container: 64 MB), else
/// `/tmp/pgbackman-testkit` (non-root: `-<uid>` appended). Created 0755 so the server user can
/// traverse it.
pub fn base_dir() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let [shm, tmp] = base_candidates();
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        let roomy = statvfs("/dev/shm")
            .is_ok_and(|s| s.blocks_available() as u64 * s.fragment_size() as u64 >= 2 << 30);
        let dir = match std::env::var_os("PGBACKMAN_TESTKIT_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ if roomy => shm,
            _ => tmp,
        };
        let _ = fs::create_dir_all(&dir);
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        dir
    })
    .clone()
}

/// Where `.ci/install-pg-majors` puts other majors: `$PGBACKMAN_PG_CACHE`, else this.
pub const PG_CACHE_DEFAULT: &str = "/var/cache/pgbackman/postgresql";
pub const PG_CACHE_ENV: &str = "PGBACKMAN_PG_CACHE";

/// The bin directory of PostgreSQL `major`: `$PGBACKMAN_PG_CACHE/<major>/bin` (default
/// [`PG_CACHE_DEFAULT`]), else the Debian package's `/usr/lib/postgresql/<major>/bin`. Panics
/// with what to do when neither has `initdb`.
pub fn major_bin_dir(major: u32) -> PathBuf {
    let cache = std::env::var_os(PG_CACHE_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(PG_CACHE_DEFAULT), PathBuf::from);
    let candidates = [
        cache.join(major.to_string()).join("bin"),
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
    ];
    for c in &candidates {
        if c.join("initdb").is_file() && c.join("pg_receivewal").is_file() {
            return c.clone();
        }
    }
    panic!(
        "testkit: PostgreSQL {major} is not installed here (looked in {} and {}): run `.ci/install-pg-majors {major}` (or .ci/install-test-deps), or set {PG_CACHE_ENV} to the directory that holds {major}/bin",
        candidates[0].display(),
        candidates[1].display()
    )
}

/// The template data directory of a bin dir (None: the default one), built at most once per
/// process and reused across processes.
fn template(bin: Option<&Path>) -> Result<PathBuf, String> {
    static TEMPLATES: Mutex<BTreeMap<Option<PathBuf>, Result<PathBuf, String>>> =
        Mutex::new(BTreeMap::new());
    // Held while building: two threads never initdb the same template at once.
    let mut t = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    t.entry(bin.map(Path::to_path_buf))
        .or_insert_with(|| build_template(bin).map_err(|e| e.to_string()))
        .clone()
}

fn build_template(bin: Option<&Path>) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let bin = match bin {
        Some(b) => b.to_path_buf(),
        None => find_bin_dir(None)?,
    };
    let version = server_version(&bin)?; // "postgres (PostgreSQL) 15.18 (Debian ...)"
    let major = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .unwrap_or("x");
    let key = format!("{TEMPLATE_FORMAT}|{}|{version}|{SETTINGS:?}", bin.display());
    let final_dir = base_dir().join(format!("template-{major}-{:016x}", fnv1a(&key)));
    if final_dir.join("PG_VERSION").is_file() {
        return Ok(final_dir);
    }
    // Build under a private name, then rename: the template appears complete or not at all.
    let tmp = base_dir().join(format!(
        "tmp-template-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = configured(Cluster::new(tmp.clone(), 5432).with_bin_dir(bin)).initdb();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    match fs::rename(&tmp, &final_dir) {
        Ok(()) => Ok(final_dir),
        // Another process won the race: use its template.
        Err(_) if final_dir.join("PG_VERSION").is_file() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(final_dir)
        }
        Err(e) => Err(format!("renaming {} to {}: {e}", tmp.display(), final_dir.display()).into()),
    }
}

/// FNV-1a: a hash that is stable across Rust releases, for template names.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Recursive copy keeping permission bits (ownership is fixed by `prepare_directories`).
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        } else {
            fs::copy(entry.path(), &to)?;
        }
    }
    fs::set_permissions(dst, fs::metadata(src)?.permissions())
}

/// Whether a process exists and is not a zombie (in containers pid 1 may never reap orphans).
pub(crate) fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // state is the field after the parenthesised command name
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) if Path::new("/proc/self").exists() => false,
        Err(_) => !matches!(
            kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        ),
    }
}

/// Removes the run and temporary template directories of test processes that are gone
/// (SIGKILLed, aborted), stopping a postmaster that outlived them. Called by every start.
pub fn sweep_stale() {
    let me = std::process::id() as i32;
    let mut bases = base_candidates().to_vec();
    bases.push(base_dir()); // maybe a third, from the environment
    bases.dedup();
    let entries = bases
        .iter()
        .flat_map(|b| fs::read_dir(b).into_iter().flatten().flatten());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("run-")
            .or_else(|| name.strip_prefix("tmp-template-"))
        else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<i32>) else {
            continue;
        };
        if pid == me || alive(pid) {
            continue;
        }
        stop_orphan(&entry.path().join("data"));
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// Immediate shutdown (SIGQUIT) of the postmaster of `data`, if it runs. Signals only a process
/// whose working directory is `data` (a postmaster chdirs there), never a reused pid.
fn stop_orphan(data: &Path) {
    let Some(pid) = Cluster::new(data.to_path_buf(), 0).postmaster_pid() else {
        return;
    };
    let (Ok(cwd), Ok(data)) = (
        fs::read_link(format!("/proc/{pid}/cwd")),
        fs::canonicalize(data),
    ) else {
        return;
    };
    if cwd != data || !alive(pid) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[test]
    fn start_and_select_one() {
        let t0 = Instant::now();
        let pg = TestCluster::start();
        let took = t0.elapsed();
        assert_eq!(pg.psql("postgres", "select 1"), "1");
        assert_eq!(pg.psql("postgres", "show fsync"), "off");
        println!(
            "testkit: cluster started in {} ms (port {})",
            took.as_millis(),
            pg.port()
        );
    }

    #[test]
    fn startup_time() {
        let _warm = TestCluster::start(); // template built, caches warm
        let mut times = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let pg = TestCluster::start();
            times.push(t0.elapsed().as_millis());
            drop(pg);
        }
        println!("testkit: warm cluster start times (ms): {times:?}");
    }

    #[test]
    fn a_cluster_of_another_major() {
        let pg = TestCluster::start_major(17, &["127.0.0.1"]);
        assert_eq!(pg.psql("postgres", "show server_version_num")[..2], *"17");
        assert_eq!(pg.bin_dir(), major_bin_dir(17));
        // The default major still comes from the Debian package.
        let default = TestCluster::start();
        assert_ne!(default.bin_dir(), pg.bin_dir());
    }

    #[test]
    fn a_missing_major_says_how_to_install_it() {
        let err = catch_unwind(|| major_bin_dir(99)).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains(".ci/install-pg-majors 99"), "{msg}");
        assert!(msg.contains(PG_CACHE_ENV), "{msg}");
    }

    #[test]
    fn stop_then_start_again_keeps_data() {
        let pg = TestCluster::start();
        pg.psql(
            "postgres",
            "create table t(x int); insert into t values (42)",
        );
        let port = pg.port();
        pg.stop();
        assert!(!pg.cluster().is_running());
        assert!(pg.cluster().psql("postgres", "select 1").is_err());
        pg.start_again();
        assert_eq!(pg.port(), port);
        assert_eq!(pg.psql("postgres", "select x from t"), "42");
    }

    #[test]
    fn two_clusters_on_two_hosts() {
        let a = TestCluster::start_on(&["127.0.0.2"]);
        let b = TestCluster::start_on(&["127.0.0.3"]);
        let addr = "select host(inet_server_addr())";
        assert_eq!(
            a.psql_conninfo(&a.tcp_conninfo("127.0.0.2", "postgres"), addr),
            "127.0.0.2"
        );
        assert_eq!(
            b.psql_conninfo(&b.tcp_conninfo("127.0.0.3", "postgres"), addr),
            "127.0.0.3"
        );
        // a does not listen on b's address
        assert!(
            a.cluster()
                .psql_conninfo(&a.tcp_conninfo("127.0.0.3", "postgres"), "select 1")
                .is_err()
        );
    }

    #[test]
    fn create_database_with_odd_name() {
        let pg = TestCluster::start();
        let name = "it's a \"db\" ünï cödé";
        pg.create_database(name);
        assert_eq!(pg.psql(name, "select current_database()"), name);
    }

    #[test]
    fn drop_removes_everything() {
        let pg = TestCluster::start();
        let dir = pg.dir().to_path_buf();
        let pid = pg.cluster().postmaster_pid().unwrap();
        assert!(dir.is_dir() && alive(pid));
        drop(pg);
        assert!(!dir.exists() && !alive(pid));
    }

    #[test]
    fn panic_in_test_still_cleans_up() {
        let mut seen = None;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let pg = TestCluster::start();
            seen = Some((
                pg.dir().to_path_buf(),
                pg.cluster().postmaster_pid().unwrap(),
            ));
            panic!("test failure while a cluster runs");
        }));
        assert!(result.is_err());
        let (dir, pid) = seen.unwrap();
        assert!(!dir.exists() && !alive(pid));
    }

    #[test]
    fn leftovers_of_a_killed_process_are_swept() {
        // Set up elsewhere (a concurrent sweep must not see a half-built dir), then move it
        // under the name a SIGKILLed process would have left.
        let pg = TestCluster::start();
        let pid = pg.cluster().postmaster_pid().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = base_dir().join(format!("run-{dead}-0"));
        fs::rename(pg.dir(), &stale).unwrap();
        std::mem::forget(pg); // as if the test process had been killed
        sweep_stale();
        assert!(!stale.exists(), "{} not swept", stale.display());
        assert!(!alive(pid), "orphan postmaster {pid} still alive");
    }
}
