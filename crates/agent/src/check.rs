//! `pgbackman-agent --check`: every precondition of a working agent, each line OK, WARN or
//! ERROR. ERROR is only what stops the agent from starting or working at all (its configuration,
//! its directories, TLS and password files, client programs, a catalog that answers "no"): the
//! unit's `ExecStartPre` fails on it. What the agent survives (a catalog that is down or slow,
//! an SMTP server that refuses) is a WARN and exits 0, so a reboot during an outage still starts
//! the agent from its cache; `--strict` counts warnings as failures.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use anyhow::{Result, bail};
use pgbackman_db::Catalog;

use crate::Setup;

/// The verdict of one line of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// The agent starts and survives it, but something does not work now.
    Warn,
    /// The agent cannot start, or cannot work at all, until this is fixed.
    Error,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// The user the service runs as, given with `--user` (root only): directories are checked, and
/// created when missing, for that user.
pub struct ServiceUser {
    name: String,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl ServiceUser {
    pub fn lookup(name: &str) -> Result<ServiceUser> {
        let Some(u) = nix::unistd::User::from_name(name)? else {
            bail!(
                "--user {name}: no such user\nHINT: create it (the Debian package does: useradd --system --user-group --home-dir /var/lib/pgbackman-agent pgbackman), or name the user the agent runs as"
            );
        };
        if !nix::unistd::geteuid().is_root() && u.uid != nix::unistd::geteuid() {
            bail!(
                "--user {name} needs root (it creates and checks directories for another user)\nHINT: run it with sudo, or run --check as that user: sudo -u {name} pgbackman-agent --check"
            );
        }
        let cname = std::ffi::CString::new(name)?;
        let groups = nix::unistd::getgrouplist(&cname, u.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![u.gid.as_raw()]);
        Ok(ServiceUser {
            name: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups,
        })
    }

    /// Whether this user may do `want` (unix permission bits rwx, as 0o7) on `meta`.
    fn may(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        let mode = meta.mode();
        let bits = if self.uid == 0 {
            return true;
        } else if meta.uid() == self.uid {
            mode >> 6
        } else if self.groups.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }
}

/// Runs every check and prints the report on stdout. Fails when a check failed (or, with
/// `strict`, warned).
pub(crate) async fn run(s: &Setup, strict: bool, user: Option<&ServiceUser>) -> Result<()> {
    let mut out = std::io::stdout();
    let (mut errors, mut warnings) = (0, 0);
    let mut line = |level: Level, what: String| {
        match level {
            Level::Ok => {}
            Level::Warn => warnings += 1,
            Level::Error => errors += 1,
        }
        let _ = writeln!(out, "[{}] {what}", level.tag());
    };
    line(
        Level::Ok,
        format!(
            "configuration {}: backup server {}, time zone {}",
            s.config_path
                .as_deref()
                .map_or("(none found: all defaults)".into(), |p| p
                    .display()
                    .to_string()),
            s.fqdn,
            s.tz
        ),
    );
    // Accepted, but said: /healthz and /metrics have no authentication.
    if let Some(w) = pgbackman_config::http_listen_exposure(&s.cfg.http_listen) {
        line(Level::Warn, w);
    }
    let tls = tls_files(s);
    // Without usable TLS files no catalog connection can succeed: not tried, not waited for.
    let tls_bad = tls
        .iter()
        .any(|(l, w)| *l == Level::Error && w.starts_with("catalog connection"));
    for (level, what) in tls {
        line(level, what);
    }
    let mut catalog_reachable = false;
    if !tls_bad {
        for (level, what) in catalog(s).await {
            catalog_reachable |= level == Level::Ok && what.starts_with("catalog reachable");
            line(level, what);
        }
    }
    for (level, what) in crate::alerts::check(&s.cfg, &s.fqdn).await {
        line(level, what);
    }
    for (ok, what) in pgpass(s) {
        line(if ok { Level::Ok } else { Level::Error }, what);
    }
    // The backup root the agent will use: the catalog's root_backup_partition as last cached,
    // unless the file sets backup_dir (see `effective`).
    let backup_dir = crate::effective::resolve(
        &s.cfg,
        crate::effective::load_cache(&s.cfg.state_dir).as_ref(),
    )
    .map(|l| l.backup_dir)
    .unwrap_or_else(|_| s.cfg.backup_dir.clone());
    for (what, dir) in [
        ("state directory", &s.cfg.state_dir),
        ("backup directory", &backup_dir),
    ] {
        let (level, msg) = directory(what, dir, user);
        line(level, msg);
    }
    for (level, what) in client_programs(s) {
        line(level, what);
    }
    for (level, what) in crate::wal::check::check(s, catalog_reachable).await {
        line(level, what);
    }
    for (level, what) in crate::wal::push::server::check(&s.cfg).await {
        line(level, what);
    }
    if errors > 0 {
        bail!("{errors} check(s) failed: the agent cannot start until they are fixed");
    }
    if strict && warnings > 0 {
        bail!("{warnings} warning(s), counted as failures by --strict");
    }
    Ok(())
}

/// The catalog, bounded by `[agent] catalog_timeout_seconds` as every call of the agent: a
/// frozen catalog costs the check that long, then a WARN.
async fn catalog(s: &Setup) -> Vec<(Level, String)> {
    let deadline = s.cfg.catalog_timeout();
    let c = match Catalog::lazy_with_deadline(
        s.catalog_cfg.clone(),
        "pgbackman-agent-check",
        &s.target,
        deadline,
    ) {
        Ok(c) => c,
        Err(e) => return vec![(Level::Error, format!("catalog: {e}"))],
    };
    let unreachable = |e: &pgbackman_db::DbError| {
        let cache = match crate::state::load_cache(&s.cfg.state_dir) {
            Ok(Some(c)) => format!(
                "it starts from its definition cache (written {})",
                c.written_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => "it has no definition cache yet, so it waits for the catalog before running anything".into(),
        };
        (
            Level::Warn,
            format!(
                "catalog {} is unreachable or did not answer within {} s ([agent] catalog_timeout_seconds): {e}; the agent starts anyway: {cache}, and spools results until the catalog is back",
                s.target,
                deadline.as_secs()
            ),
        )
    };
    let mut out = Vec::new();
    match c.within("check_compatible", c.check_compatible()).await {
        Ok(()) => {
            out.push((Level::Ok, format!("catalog reachable: {}", s.target)));
            out.push((Level::Ok, "catalog version matches this agent".into()));
        }
        Err(e) if e.is_unreachable() => {
            out.push(unreachable(&e));
            return out;
        }
        Err(e) => {
            out.push((Level::Ok, format!("catalog reachable: {}", s.target)));
            out.push((Level::Error, format!("catalog version: {e}")));
            return out;
        }
    }
    match c
        .within("agent_server_id", c.agent_server_id(&s.fqdn))
        .await
    {
        Ok(id) => out.push((Level::Ok, format!("registered as backup server SrvID {id}"))),
        Err(e) if e.is_unreachable() => out.push(unreachable(&e)),
        Err(e) => out.push((Level::Error, e.to_string())),
    }
    out
}

/// The catalog connection's certificate files (root, client certificate and key), read as a
/// connection would: a file that is missing, unreadable or not PEM fails every connection,
/// whatever the catalog's state. Also the nodes' PGSSLROOTCERT / PGSSLCERT / PGSSLKEY files.
fn tls_files(s: &Setup) -> Vec<(Level, String)> {
    use pgbackman_config::tls::SslMode;
    let mut out = Vec::new();
    if s.catalog_cfg.tls.mode != SslMode::Disable {
        match pgbackman_db::tls::client_config(&s.catalog_cfg.tls) {
            Ok(_) => out.push((
                Level::Ok,
                format!(
                    "catalog TLS files usable (sslmode={})",
                    s.catalog_cfg.tls.mode
                ),
            )),
            Err(e) => out.push((Level::Error, format!("catalog connection: {e}"))),
        }
    }
    for var in ["PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"] {
        let Some(p) = pgbackman_config::real_env(var).filter(|v| !v.is_empty() && v != "system")
        else {
            continue;
        };
        match std::fs::read(&p) {
            Ok(b) if String::from_utf8_lossy(&b).contains("-----BEGIN ") => {
                out.push((Level::Ok, format!("{var} {p} is readable")))
            }
            Ok(_) => out.push((
                Level::Error,
                format!("{var} {p} holds no PEM data: point {var} at a PEM file, or unset it"),
            )),
            Err(e) => out.push((
                Level::Error,
                format!(
                    "{var} {p} cannot be read: {e}; the nodes' TLS connections (and pg_dump's) need it: fix the path or its permissions, or unset {var}"
                ),
            )),
        }
    }
    out
}

/// The password files: the nodes' (`[agent] passfile`, else PGPASSFILE, else ~/.pgpass) and the
/// catalog's. A file libpq ignores (group or world access) is an error that says so and how to
/// fix it: every connection needing a password would fail.
fn pgpass(s: &Setup) -> Vec<(bool, String)> {
    use pgbackman_config::PgpassStatus;
    let mut out = Vec::new();
    let passfile = s.cfg.passfile.clone();
    let env = |k: &str| match (k, &passfile) {
        ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
        _ => pgbackman_config::real_env(k),
    };
    out.push(match pgbackman_config::pgpass_status(&env) {
        PgpassStatus::Used(p) => (
            true,
            format!("password file for the PgSQL nodes: {} (private)", p.display()),
        ),
        PgpassStatus::Missing(Some(p)) if s.cfg.passfile.is_some() => (
            false,
            format!(
                "password file for the PgSQL nodes: [agent] passfile {} does not exist; create it (mode 0600) or remove the setting",
                p.display()
            ),
        ),
        PgpassStatus::Missing(p) => (
            true,
            format!(
                "no password file for the PgSQL nodes{} (fine with certificates, trust or peer authentication)",
                p.map(|p| format!(" at {}", p.display())).unwrap_or_default()
            ),
        ),
        PgpassStatus::Ignored(_, why) => (false, format!("PgSQL nodes: {why}")),
    });
    if let Some(why) = &s.catalog_cfg.pgpass_ignored {
        out.push((false, format!("catalog connection: {why}")));
    }
    out
}

/// A directory the agent writes to. Run as the service user (the unit's ExecStartPre), a
/// missing one is created 0700 and written to. Run as root, nothing is created as root (the
/// service user could not write it): with `--user` it is created for that user and checked for
/// that user's access, without it a missing one is an error saying what to run.
fn directory(what: &str, dir: &Path, user: Option<&ServiceUser>) -> (Level, String) {
    let is_root = nix::unistd::geteuid().is_root();
    match user {
        Some(u) if is_root || u.uid != nix::unistd::geteuid().as_raw() => {
            return directory_for(what, dir, u);
        }
        _ => {}
    }
    if is_root && !dir.exists() {
        return (
            Level::Error,
            format!(
                "{what} {d} does not exist, and --check run as root does not create it as root (the agent's user could not write it); create it for the user the agent runs as: install -d -o pgbackman -g pgbackman -m 0700 {d} (or: pgbackman-agent --check --user pgbackman)",
                d = dir.display()
            ),
        );
    }
    let r = crate::state::create_dir_0700(dir).and_then(|_| {
        let probe = dir.join(".pgbackman-agent-check");
        std::fs::write(&probe, b"x")
            .map_err(|e| anyhow::anyhow!("{} is not writable by this user: {e}", dir.display()))?;
        std::fs::remove_file(&probe)?;
        Ok(())
    });
    match r {
        Ok(()) => (Level::Ok, format!("{what} {} is writable", dir.display())),
        Err(e) => (Level::Error, format!("{what}: {e:#}")),
    }
}

/// [`directory`] for another user, as root: created owned by that user (0700, parents 0755 as
/// `install -d` makes them) when missing; else its access checked along the whole path.
fn directory_for(what: &str, dir: &Path, u: &ServiceUser) -> (Level, String) {
    let d = dir.display();
    let fix = format!(
        "install -d -o {n} -g {g} -m 0700 {d}",
        n = u.name,
        g = group_name(u.gid)
    );
    if !dir.exists() {
        let made = dir
            .parent()
            .map_or(Ok(()), |p| {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(p)
            })
            .and_then(|_| std::fs::DirBuilder::new().mode(0o700).create(dir))
            .and_then(|_| {
                std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
                    .map_err(std::io::Error::other)
            });
        if let Err(e) = made {
            return (
                Level::Error,
                format!("{what} {d} cannot be created: {e}; create it: {fix}"),
            );
        }
        return (
            Level::Ok,
            format!("{what} {d} created for user {} (mode 0700)", u.name),
        );
    }
    // Every ancestor must be searchable by the user, the directory itself writable.
    let mut blocked = None;
    for a in dir.ancestors().skip(1) {
        match std::fs::metadata(a) {
            Ok(m) if u.may(&m, 0o1) => {}
            Ok(m) => blocked = Some((a.to_path_buf(), m)),
            Err(_) => {}
        }
    }
    if let Some((a, m)) = blocked {
        return (
            Level::Error,
            format!(
                "{what} {d}: user {} cannot reach it: {} is {} {:o}; open that directory to the user (chmod o+x {}), or choose another {}",
                u.name,
                a.display(),
                owner_of(&m),
                m.mode() & 0o7777,
                a.display(),
                if what.starts_with("state") {
                    "state_dir"
                } else {
                    "backup_dir"
                }
            ),
        );
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() && u.may(&m, 0o3) => (
            Level::Ok,
            format!("{what} {d} is writable by user {}", u.name),
        ),
        Ok(m) => (
            Level::Error,
            format!(
                "{what} {d} is owned by {}, mode {:o}: user {} cannot write it; run: chown {}: {d} && chmod 0700 {d}",
                owner_of(&m),
                m.mode() & 0o7777,
                u.name,
                u.name
            ),
        ),
        Err(e) => (Level::Error, format!("{what} {d}: {e}; create it: {fix}")),
    }
}

fn owner_of(m: &std::fs::Metadata) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(m.uid()))
        .ok()
        .flatten()
        .map_or(m.uid().to_string(), |u| u.name);
    format!("{user}:{}", group_name(m.gid()))
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or(gid.to_string(), |g| g.name)
}

/// The PostgreSQL client programs: without one fitting, no backup can run.
fn client_programs(s: &Setup) -> Vec<(Level, String)> {
    match s.cfg.client_bin_dirs() {
        Ok(dirs) if dirs.is_empty() => vec![(
            Level::Error,
            "no PostgreSQL client programs found: install postgresql-client-<major>, or set [agent] bin_dirs".into(),
        )],
        Ok(dirs) => dirs
            .into_iter()
            .map(|(m, d)| match pgbackman_dump::client_major(&d) {
                Ok(v) if v == m => (Level::Ok, format!("pg_dump {m} in {}", d.display())),
                Ok(v) => (
                    Level::Error,
                    format!("{} holds pg_dump {v}, configured as {m}", d.display()),
                ),
                Err(e) => (Level::Error, format!("{}: {e}", d.display())),
            })
            .collect(),
        Err(e) => vec![(Level::Error, e.to_string())],
    }
}
