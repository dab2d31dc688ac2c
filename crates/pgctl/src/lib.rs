//! pgbackman-pgctl: drive a private PostgreSQL cluster with the stock binaries
//! (`initdb`, `pg_ctl`, `psql`).
//!
//! Used by `pgbackman quickstart` (a private catalog cluster) and by `pgbackman-testkit`
//! (throwaway clusters for tests).
//!
//! * Every command is an argv vector; no shell ever parses our arguments.
//! * PostgreSQL refuses to run as root. When the effective uid is 0, the server-side commands
//!   (`initdb`, `pg_ctl`, hence `postgres`) run as the `postgres` OS user, the data, socket and
//!   log directories are chowned to it, and every ancestor directory of them lacking `o+x` gets it,
//!   so that the server can reach them. `psql` is a client and runs as the caller.
//! * Children get no `PG*` environment variables, so a caller's `PGPORT`, `PGOPTIONS`, ... cannot
//!   change what we start or where we connect.
//! * Settings go to `pgbackman.conf` in the data directory, included from `postgresql.conf`;
//!   `ALTER SYSTEM` (postgresql.auto.conf) still overrides them.
//!
//! ```no_run
//! use pgbackman_pgctl::{Cluster, StopMode};
//! let c = Cluster::new("/var/lib/pgbackman/catalog".into(), 5433)
//!     .with_setting("shared_buffers", "64MB");
//! if !c.is_initialized() { c.initdb()?; }
//! c.start()?;
//! println!("{}", c.psql("postgres", "select version()")?);
//! c.stop(StopMode::Fast)?;
//! # Ok::<(), pgbackman_pgctl::PgCtlError>(())
//! ```

use std::ffi::OsString;
use std::fs::{self, Permissions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{PermissionsExt, lchown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use nix::sys::signal::kill;
use nix::unistd::{Pid, Uid, User};

/// Environment variable naming the directory of the PostgreSQL binaries (wins over the search).
pub const BIN_DIR_ENV: &str = "PGBACKMAN_PG_BIN_DIR";
/// OS user the server runs as when we are root.
pub const SERVER_OS_USER: &str = "postgres";
/// Config file (in the data directory) holding the settings this crate manages.
pub const CONF_FILE: &str = "pgbackman.conf";
const TAIL_LINES: usize = 25;

/// Shutdown mode of [`Cluster::stop`] (`pg_ctl stop -m <mode>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, shut down cleanly (checkpoint).
    Fast,
    /// Kill everything now; crash recovery at next start.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Errors of this crate. Each names the failed step; command failures carry the exit status,
/// the tail of stderr and (for the server) of the server log, plus a hint of what to do.
#[derive(Debug, thiserror::Error)]
pub enum PgCtlError {
    /// No usable PostgreSQL bin directory.
    #[error(
        "cannot find PostgreSQL binaries: {detail}; install the PostgreSQL server package \
         or set {BIN_DIR_ENV} to the directory holding initdb and pg_ctl"
    )]
    BinDirNotFound { detail: String },
    /// Running as root without a `postgres` OS user to run the server as.
    #[error(
        "{step}: running as root, but there is no `{SERVER_OS_USER}` OS user to run the server as \
         (PostgreSQL refuses to run as root); create it (useradd --system {SERVER_OS_USER}) \
         or run as an unprivileged user"
    )]
    NoServerUser { step: String },
    /// The program could not be executed at all.
    #[error("{step}: could not run {}: {source}; check the PostgreSQL bin directory ({BIN_DIR_ENV})", program.display())]
    Spawn {
        step: String,
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{step} failed ({status}){}{}\nhint: {hint}", section("stderr", .stderr), section("server log", .log))]
    Failed {
        step: String,
        status: ExitStatus,
        /// Last lines of the command's stderr.
        stderr: String,
        /// Last lines the server logged during this step (empty if none).
        log: String,
        hint: String,
    },
    /// A file system operation failed.
    #[error("{step}: {}: {source}", path.display())]
    Io {
        step: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A setting name that could inject configuration lines.
    #[error("invalid setting name {0:?}: only ASCII letters, digits, '_' and '.' are allowed")]
    InvalidSetting(String),
}

fn section(title: &str, text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- {title} (last lines) ---\n{}", text.trim_end())
    }
}

impl PgCtlError {
    /// True when the server could not bind its TCP port (retry with another port).
    pub fn is_address_in_use(&self) -> bool {
        match self {
            PgCtlError::Failed { stderr, log, .. } => {
                // Only EADDRINUSE: "Cannot assign requested address" will not heal on retry.
                let hit = |s: &str| s.contains("Address already in use");
                hit(stderr) || hit(log)
            }
            _ => false,
        }
    }
}

fn io_err(step: &str, path: &Path) -> impl FnOnce(io::Error) -> PgCtlError {
    let (step, path) = (step.to_string(), path.to_path_buf());
    move |source| PgCtlError::Io { step, path, source }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A PostgreSQL cluster (data directory + how to run it). Cheap to build; nothing happens until
/// [`initdb`](Cluster::initdb) / [`start`](Cluster::start).
#[derive(Debug, Clone)]
pub struct Cluster {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    bin_dir: Option<PathBuf>,
    listen_addresses: Vec<String>,
    superuser: String,
    log_file: PathBuf,
    settings: Vec<(String, String)>,
    initdb_args: Vec<String>,
}

impl Cluster {
    /// A cluster in `data_dir` (made absolute) on `port`. Defaults: socket directory = data
    /// directory, unix socket only (no TCP), superuser `postgres`, server log
    /// `<data_dir>/server.log`, binaries from [`find_bin_dir(None)`](find_bin_dir) (resolved on use).
    pub fn new(data_dir: PathBuf, port: u16) -> Self {
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        Cluster {
            socket_dir: data_dir.clone(),
            log_file: data_dir.join("server.log"),
            data_dir,
            port,
            bin_dir: None,
            listen_addresses: Vec::new(),
            superuser: "postgres".into(),
            settings: Vec::new(),
            initdb_args: Vec::new(),
        }
    }
    /// TCP addresses to listen on (`listen_addresses`); empty = unix socket only.
    pub fn with_listen_addresses(mut self, addrs: Vec<String>) -> Self {
        self.listen_addresses = addrs;
        self
    }
    /// Directory of the unix socket (keep it short: socket paths are limited to 107 bytes).
    pub fn with_socket_dir(mut self, dir: PathBuf) -> Self {
        self.socket_dir = std::path::absolute(&dir).unwrap_or(dir);
        self
    }
    /// Directory holding initdb, pg_ctl, postgres and psql.
    pub fn with_bin_dir(mut self, dir: PathBuf) -> Self {
        self.bin_dir = Some(dir);
        self
    }
    /// Server log file written by `pg_ctl -l`.
    pub fn with_log_file(mut self, file: PathBuf) -> Self {
        self.log_file = std::path::absolute(&file).unwrap_or(file);
        self
    }
    /// Bootstrap superuser name (`initdb -U`), also the user of [`conninfo`](Cluster::conninfo).
    pub fn with_superuser(mut self, name: impl Into<String>) -> Self {
        self.superuser = name.into();
        self
    }
    /// Port (e.g. to retry on another one).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// A server setting written by [`write_config`](Cluster::write_config); replaces an earlier
    /// value of the same key.
    pub fn with_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        self.settings.retain(|(k, _)| *k != key);
        self.settings.push((key, value));
        self
    }
    /// Extra `initdb` arguments (e.g. `--wal-segsize=1`).
    pub fn with_initdb_args(mut self, args: Vec<String>) -> Self {
        self.initdb_args = args;
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }
    pub fn superuser(&self) -> &str {
        &self.superuser
    }
    pub fn listen_addresses(&self) -> &[String] {
        &self.listen_addresses
    }
    /// Settings given with [`with_setting`](Cluster::with_setting), in order.
    pub fn settings(&self) -> &[(String, String)] {
        &self.settings
    }
    /// The bin directory: the one given, else [`find_bin_dir(None)`](find_bin_dir).
    pub fn bin_dir(&self) -> Result<PathBuf, PgCtlError> {
        match &self.bin_dir {
            Some(d) => Ok(d.clone()),
            None => find_bin_dir(None),
        }
    }

    /// True when `PG_VERSION` exists in the data directory.
    pub fn is_initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// True when `postmaster.pid` names a live process (what `pg_ctl status` checks).
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(|pid| {
            !matches!(
                kill(Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            )
        })
    }

    /// Pid of the postmaster from `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok().filter(|p| *p > 0)
    }

    /// Creates the data directory (0700), socket directory and log directory; when root, chowns
    /// them recursively to the `postgres` user and adds `o+x` to ancestors that lack it.
    /// Called by [`initdb`](Cluster::initdb); call it yourself after copying a data directory.
    pub fn prepare_directories(&self) -> Result<(), PgCtlError> {
        const STEP: &str = "preparing cluster directories";
        let log_dir = self
            .log_file
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        for dir in [&self.data_dir, &self.socket_dir, &log_dir] {
            fs::create_dir_all(dir).map_err(io_err(STEP, dir))?;
        }
        let dd = &self.data_dir;
        fs::set_permissions(dd, Permissions::from_mode(0o700)).map_err(io_err(STEP, dd))?;
        let Some(user) = server_user(STEP)? else {
            return Ok(());
        };
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        for dir in [&self.data_dir, &self.socket_dir, &log_dir] {
            if dir != dd && dir.starts_with(dd) {
                continue; // already covered by the data directory
            }
            chown_tree(dir, uid, gid).map_err(io_err(STEP, dir))?;
            // The server must traverse every ancestor; inside the data dir it owns them, and the
            // data dir itself must stay 0700.
            for anc in dir.ancestors().skip(1).filter(|a| !a.starts_with(dd)) {
                let mode = fs::metadata(anc)
                    .map_err(io_err(STEP, anc))?
                    .permissions()
                    .mode();
                if mode & 0o001 == 0 {
                    let perm = Permissions::from_mode((mode | 0o001) & 0o7777);
                    fs::set_permissions(anc, perm).map_err(io_err(STEP, anc))?;
                }
            }
        }
        Ok(())
    }

    /// `initdb --no-sync -A trust -U <superuser> -E UTF8 --locale=C.UTF-8` (retried with
    /// `--locale=C` when that locale is missing), then writes `pg_hba.conf` (local, 127.0.0.0/8 and
    /// ::1 trusted, replication included) and [`write_config`](Cluster::write_config).
    /// The data directory must be absent or empty.
    pub fn initdb(&self) -> Result<(), PgCtlError> {
        self.prepare_directories()?;
        let mut args: Vec<OsString> = vec!["-D".into(), self.data_dir.clone().into()];
        for a in ["--no-sync", "-A", "trust", "-E", "UTF8", "-U"] {
            args.push(a.into());
        }
        args.push(self.superuser.clone().into());
        args.extend(self.initdb_args.iter().map(OsString::from));
        let hint = "check that the data directory is empty and writable by the server user";
        let with_locale = |loc: &str| {
            let mut a = args.clone();
            a.push(format!("--locale={loc}").into());
            self.run_checked("initdb", "initdb", a, true, None, hint)
        };
        if let Err(e) = with_locale("C.UTF-8") {
            match &e {
                PgCtlError::Failed { stderr, .. } if stderr.contains("locale") => with_locale("C")?,
                _ => return Err(e),
            };
        }
        let hba = "# written by pgbackman-pgctl: private cluster, trust on local connections only\n\
                   local all all trust\n\
                   host all all 127.0.0.0/8 trust\n\
                   host all all ::1/128 trust\n\
                   local replication all trust\n\
                   host replication all 127.0.0.0/8 trust\n\
                   host replication all ::1/128 trust\n";
        self.write_owned(&self.data_dir.join("pg_hba.conf"), hba)?;
        self.write_config()
    }

    /// (Re)writes `pgbackman.conf` with port, unix_socket_directories, listen_addresses and the
    /// given settings, and makes `postgresql.conf` include it. Takes effect at the next start.
    pub fn write_config(&self) -> Result<(), PgCtlError> {
        const STEP: &str = "writing server configuration";
        let sock = self.socket_dir.to_string_lossy();
        // unix_socket_directories is a comma list: double-quote a path that needs it.
        let sock = if sock.contains([',', ' ', '"']) {
            format!("\"{}\"", sock.replace('"', "\"\""))
        } else {
            sock.into_owned()
        };
        let mut conf = String::from("# written by pgbackman-pgctl; ALTER SYSTEM overrides it\n");
        let fixed = [
            ("port".to_string(), self.port.to_string()),
            ("unix_socket_directories".to_string(), sock),
            (
                "listen_addresses".to_string(),
                self.listen_addresses.join(","),
            ),
        ];
        for (k, v) in fixed.iter().chain(&self.settings) {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(PgCtlError::InvalidSetting(k.clone()));
            }
            conf.push_str(&format!(
                "{k} = '{}'\n",
                v.replace('\\', "\\\\").replace('\'', "''")
            ));
        }
        self.write_owned(&self.data_dir.join(CONF_FILE), &conf)?;
        let main = self.data_dir.join("postgresql.conf");
        let text = fs::read_to_string(&main).map_err(io_err(STEP, &main))?;
        let include = format!("include_if_exists = '{CONF_FILE}'");
        if !text.lines().any(|l| l.trim() == include) {
            let sep = if text.ends_with('\n') || text.is_empty() {
                ""
            } else {
                "\n"
            };
            fs::write(&main, format!("{text}{sep}{include}\n")).map_err(io_err(STEP, &main))?;
        }
        Ok(())
    }

    /// `pg_ctl start -w -t 60` with the log in [`log_file`](Cluster::log_file). On failure the
    /// error holds what the server logged during this attempt.
    pub fn start(&self) -> Result<(), PgCtlError> {
        const STEP: &str = "starting the server";
        if !self.socket_dir.is_dir() {
            // e.g. a socket dir on a tmpfs wiped by a reboot
            fs::create_dir_all(&self.socket_dir).map_err(io_err(STEP, &self.socket_dir))?;
            if let Some(u) = server_user(STEP)? {
                lchown(&self.socket_dir, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
                    .map_err(io_err(STEP, &self.socket_dir))?;
            }
        }
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let mut args = self.pg_ctl_args(&["-l".into(), self.log_file.clone().into_os_string()]);
        args.extend(["-w", "-t", "60", "start"].map(OsString::from));
        let hint = format!(
            "read the server log {}; usual causes: port {} already in use, a socket directory the \
             server user cannot write, too little shared memory",
            self.log_file.display(),
            self.port
        );
        self.run_checked(
            "pg_ctl start",
            "pg_ctl",
            args,
            true,
            Some(log_offset),
            &hint,
        )
        .map(drop)
    }

    /// `pg_ctl stop -m <mode> -w -t 60`; does nothing when the server is not running.
    pub fn stop(&self, mode: StopMode) -> Result<(), PgCtlError> {
        if !self.is_running() {
            return Ok(());
        }
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let args =
            self.pg_ctl_args(&["-m", mode.as_arg(), "-w", "-t", "60", "stop"].map(OsString::from));
        let hint = "the server did not stop in 60 s; retry with StopMode::Immediate or kill the postmaster";
        self.run_checked("pg_ctl stop", "pg_ctl", args, true, Some(log_offset), hint)
            .map(drop)
    }

    /// libpq key=value conninfo over the unix socket, as the superuser.
    pub fn conninfo(&self, dbname: &str) -> String {
        self.tcp_conninfo(&self.socket_dir.to_string_lossy(), dbname)
    }

    /// libpq key=value conninfo over TCP to `host` (one of the listen addresses), as the superuser.
    pub fn tcp_conninfo(&self, host: &str, dbname: &str) -> String {
        let kv = [
            ("host", host),
            ("port", &self.port.to_string()),
            ("user", &self.superuser),
            ("dbname", dbname),
        ];
        kv.iter()
            .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs `psql -X -q -v ON_ERROR_STOP=1 -At -c <sql>` on `dbname` over the unix socket and
    /// returns stdout without its final newline.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, PgCtlError> {
        self.psql_conninfo(&self.conninfo(dbname), sql)
    }

    /// Like [`psql`](Cluster::psql) with any conninfo (e.g. [`tcp_conninfo`](Cluster::tcp_conninfo)).
    /// The conninfo is in psql's argv and in errors: never put a password in it (use a pgpass file).
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> Result<String, PgCtlError> {
        let args = [
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-d",
            conninfo,
            "-c",
            sql,
        ]
        .map(OsString::from);
        let hint = "check the SQL, and that the server is running and reachable";
        let out = self.run_checked(
            &format!("psql ({conninfo})"),
            "psql",
            args.to_vec(),
            false,
            None,
            hint,
        )?;
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        if s.ends_with('\n') {
            s.pop();
        }
        Ok(s)
    }

    fn pg_ctl_args(&self, rest: &[OsString]) -> Vec<OsString> {
        let mut v = vec![OsString::from("-D"), self.data_dir.clone().into()];
        v.extend_from_slice(rest);
        v
    }

    /// Writes a file the server must read, owned by the server user when root.
    fn write_owned(&self, path: &Path, contents: &str) -> Result<(), PgCtlError> {
        const STEP: &str = "writing server configuration";
        fs::write(path, contents).map_err(io_err(STEP, path))?;
        if let Some(u) = server_user(STEP)? {
            lchown(path, Some(u.uid.as_raw()), Some(u.gid.as_raw())).map_err(io_err(STEP, path))?;
        }
        Ok(())
    }

    /// Runs `bin_dir/program args`; fails with stderr and the server log written since
    /// `log_offset` when it exits non-zero.
    fn run_checked(
        &self,
        step: &str,
        program: &str,
        args: Vec<OsString>,
        server_side: bool,
        log_offset: Option<u64>,
        hint: &str,
    ) -> Result<Output, PgCtlError> {
        let bin = self.bin_dir()?.join(program);
        let mut cmd = Command::new(&bin);
        cmd.args(args).stdin(Stdio::null()).current_dir("/"); // the server user may not reach our cwd
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("PGCLIENTENCODING", "UTF8");
        if server_side && let Some(u) = server_user(step)? {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw()); // std also drops supplementary groups
        }
        let out = cmd.output().map_err(|source| PgCtlError::Spawn {
            step: step.into(),
            program: bin,
            source,
        })?;
        if out.status.success() {
            return Ok(out);
        }
        let log = log_offset
            .map(|off| read_from(&self.log_file, off))
            .unwrap_or_default();
        Err(PgCtlError::Failed {
            step: step.into(),
            status: out.status,
            stderr: tail(&String::from_utf8_lossy(&out.stderr), TAIL_LINES),
            log: tail(&log, TAIL_LINES),
            hint: hint.into(),
        })
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_to_end(&mut buf));
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Quotes a libpq conninfo value when needed (empty, whitespace, quote or backslash).
fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// The OS user to run the server as: `Some(postgres)` when we are root, else `None` (ourselves).
pub fn server_user(step: &str) -> Result<Option<User>, PgCtlError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(SERVER_OS_USER) {
        Ok(Some(u)) => Ok(Some(u)),
        _ => Err(PgCtlError::NoServerUser { step: step.into() }),
    }
}

/// `chown -R` without following symlinks.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    lchown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The PostgreSQL bin directory: `$PGBACKMAN_PG_BIN_DIR` if set, else the highest (or the given)
/// major among `/usr/lib/postgresql/<major>/bin` (Debian) and `/usr/pgsql-<major>/bin` (RHEL)
/// that holds `initdb`.
pub fn find_bin_dir(major: Option<u32>) -> Result<PathBuf, PgCtlError> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(PgCtlError::BinDirNotFound {
            detail: format!("{BIN_DIR_ENV}={} holds no initdb", dir.display()),
        });
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for (root, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        for entry in fs::read_dir(root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(Ok(m)) = name.strip_prefix(prefix).map(str::parse::<u32>) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("initdb").is_file() && major.is_none_or(|want| want == m) {
                found.push((m, bin));
            }
        }
    }
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| PgCtlError::BinDirNotFound {
            detail: match major {
                Some(m) => {
                    format!("no /usr/lib/postgresql/{m}/bin or /usr/pgsql-{m}/bin with initdb")
                }
                None => "no /usr/lib/postgresql/<major>/bin or /usr/pgsql-<major>/bin with initdb"
                    .into(),
            },
        })
}

/// `postgres --version` of a bin directory, e.g. `postgres (PostgreSQL) 15.18 (Debian ...)`.
pub fn server_version(bin_dir: &Path) -> Result<String, PgCtlError> {
    let bin = bin_dir.join("postgres");
    let out = Command::new(&bin)
        .arg("--version")
        .current_dir("/")
        .output();
    let out = out.map_err(|source| PgCtlError::Spawn {
        step: "postgres --version".into(),
        program: bin,
        source,
    })?;
    if !out.status.success() {
        return Err(PgCtlError::Failed {
            step: "postgres --version".into(),
            status: out.status,
            stderr: tail(&String::from_utf8_lossy(&out.stderr), TAIL_LINES),
            log: String::new(),
            hint: "check the PostgreSQL installation".into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A TCP port free on 127.0.0.1 right now (bound to port 0, then released). Another process may
/// take it before the server does: retry on [`PgCtlError::is_address_in_use`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        // Binding loopback port 0 cannot really fail; if it does, a pid-derived high port.
        .unwrap_or(20000 + (std::process::id() % 40000) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stops a cluster even when an assertion fails, before its tempdir goes away.
    struct Guard<'a>(&'a Cluster);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let _ = self.0.stop(StopMode::Immediate);
        }
    }

    #[test]
    fn conninfo_quotes_per_libpq() {
        let c = Cluster::new("/tmp/x y".into(), 5433);
        assert_eq!(
            c.conninfo("db"),
            "host='/tmp/x y' port=5433 user=postgres dbname=db"
        );
        assert_eq!(
            c.tcp_conninfo("127.0.0.2", "it's"),
            r"host=127.0.0.2 port=5433 user=postgres dbname='it\'s'"
        );
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn bad_setting_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("postgresql.conf"), "").unwrap();
        let c = Cluster::new(dir.path().into(), 1).with_setting("a\nb", "x");
        assert!(matches!(
            c.write_config(),
            Err(PgCtlError::InvalidSetting(_))
        ));
    }

    #[test]
    fn initdb_start_psql_stop() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::new(dir.path().join("data"), free_port())
            .with_socket_dir(dir.path().join("sock"))
            .with_listen_addresses(vec!["127.0.0.1".into()])
            .with_setting("fsync", "off")
            .with_setting("cluster_name", "it's \\ fine");
        assert!(!c.is_initialized());
        c.initdb().unwrap();
        assert!(c.is_initialized() && !c.is_running());
        c.start().unwrap();
        let _guard = Guard(&c);
        assert!(c.is_running());
        assert_eq!(
            c.psql("postgres", "show cluster_name").unwrap(),
            "it's \\ fine"
        );
        assert_eq!(c.psql("postgres", "select 1").unwrap(), "1");
        let err = c.psql("postgres", "select nope").unwrap_err().to_string();
        assert!(err.contains("psql") && err.contains("nope"), "{err}");
        // Another cluster on the same TCP address and port fails and says why.
        let twin = Cluster::new(dir.path().join("twin"), c.port())
            .with_listen_addresses(vec!["127.0.0.1".into()]);
        twin.initdb().unwrap();
        let _twin_guard = Guard(&twin);
        let err = twin.start().unwrap_err();
        assert!(err.is_address_in_use(), "{err}");
        c.stop(StopMode::Fast).unwrap();
        assert!(!c.is_running());
        c.stop(StopMode::Fast).unwrap(); // idempotent
    }

    #[test]
    fn start_error_names_step_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::new(dir.path().join("data"), free_port())
            .with_setting("shared_buffers", "nonsense");
        c.initdb().unwrap();
        let err = c.start().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("pg_ctl start failed") && msg.contains("shared_buffers"),
            "{msg}"
        );
        assert!(!err.is_address_in_use());
    }

    #[test]
    fn find_bin_dir_finds_initdb() {
        let dir = find_bin_dir(None).unwrap();
        assert!(dir.join("initdb").is_file());
        assert!(server_version(&dir).unwrap().contains("PostgreSQL"));
    }
}
