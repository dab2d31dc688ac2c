//! The Debian package, as a new operator meets it: `packaging/build-deb` builds it from the
//! binaries under test, `dpkg -i` installs it into this machine (root only: CI runs as root), the
//! installed files are checked (owners, modes, conffiles, man pages, completions), the installed
//! unit passes `systemd-analyze verify`, and the agent is started as the pgbackman user with the
//! unit's own ExecStartPre and ExecStart lines against a test catalog until /healthz answers.
//! Everything is removed afterwards (`dpkg --purge`, the backup directory, the user if this test
//! made it).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;

const UNIT: &str = "/lib/systemd/system/pgbackman-agent.service";
const AGENT_TOML: &str = "/etc/pgbackman/pgbackman-agent.toml";

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[track_caller]
fn ok(o: std::process::Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn exists(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        return Some("installing a package needs root (CI runs as root)".into());
    }
    for p in ["dpkg", "dpkg-deb", "useradd", "setpriv"] {
        if !exists(p) {
            return Some(format!("{p} is not installed (not a Debian system)"));
        }
    }
    let q = sh("dpkg-query", &["-W", "-f=${Status}", "pgbackman"]);
    if String::from_utf8_lossy(&q.stdout).contains("installed") {
        return Some("a pgbackman package is installed on this machine: not touching it".into());
    }
    for p in [
        "/srv/pgbackman",
        "/var/lib/pgbackman-agent",
        "/etc/pgbackman",
    ] {
        if Path::new(p).exists() {
            return Some(format!("{p} exists: not touching an installation"));
        }
    }
    None
}

/// Undoes the installation, whatever the test reached.
struct Cleanup {
    made_user: bool,
    agent: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh("dpkg", &["--purge", "pgbackman"]);
        // Purge keeps backups (and a state directory with spooled results): ours are test data.
        let _ = std::fs::remove_dir_all("/srv/pgbackman");
        let _ = std::fs::remove_dir_all("/var/lib/pgbackman-agent");
        if self.made_user {
            let _ = sh("userdel", &["pgbackman"]);
            let _ = sh("groupdel", &["pgbackman"]);
        }
    }
}

/// `Key=value` lines of the installed unit (the last one wins, as in systemd).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// A unit's command line as argv: systemd splits on whitespace with quotes; the unit's lines use
/// no quoting, no `-`/`+` prefixes and no specifiers, which this checks.
fn argv(line: &str) -> Vec<String> {
    assert!(
        !line.contains(['"', '\'', '%', '$']) && !line.starts_with(['-', '+', '@', '!', ':']),
        "the unit's command line needs a real systemd parser: {line}"
    );
    line.split_whitespace().map(str::to_string).collect()
}

fn id(what: &str, name: &str) -> u32 {
    ok(sh("id", &[what, name])).trim().parse().unwrap()
}

#[test]
fn the_package_installs_and_its_unit_starts_the_agent_as_pgbackman() {
    if let Some(why) = cannot_run() {
        println!("SKIPPED: {why}");
        return;
    }
    let bindir = Path::new(env!("CARGO_BIN_EXE_pgbackman"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let built = ok(sh(
        concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/build-deb"),
        &[bindir.to_str().unwrap(), out.path().to_str().unwrap()],
    ));
    let deb = PathBuf::from(built.lines().last().unwrap().trim());
    println!("built {} in {:?}", deb.display(), t.elapsed());

    let made_user = sh("id", &["pgbackman"]).status.code() != Some(0);
    let mut cleanup = Cleanup {
        made_user,
        agent: None,
    };
    let t = Instant::now();
    ok(sh("dpkg", &["-i", deb.to_str().unwrap()]));
    println!("installed in {:?}", t.elapsed());

    // Files, owners and modes.
    for b in ["/usr/bin/pgbackman", "/usr/bin/pgbackman-agent"] {
        let m = std::fs::metadata(b).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{b}");
    }
    let uid = id("-u", "pgbackman");
    let gid = id("-g", "pgbackman");
    assert!(uid < 1000, "pgbackman is a system user (uid {uid})");
    for d in ["/var/lib/pgbackman-agent", "/srv/pgbackman"] {
        let m = std::fs::metadata(d).unwrap();
        assert!(m.is_dir(), "{d}");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (uid, gid, 0o700),
            "{d}"
        );
    }
    let conffiles = ok(sh("dpkg-query", &["-W", "-f=${Conffiles}", "pgbackman"]));
    for f in [
        AGENT_TOML,
        "/etc/pgbackman/pgbackman.toml",
        "/etc/pgbackman/pgbackman_alerts.template",
    ] {
        assert!(conffiles.contains(f), "{f} is no conffile:\n{conffiles}");
        assert!(Path::new(f).is_file(), "{f}");
    }
    for f in [
        "/usr/share/man/man1/pgbackman.1.gz",
        "/usr/share/man/man1/pgbackman-agent.1.gz",
        "/usr/share/bash-completion/completions/pgbackman",
        "/usr/share/bash-completion/completions/pgbackman-agent",
        "/usr/share/zsh/vendor-completions/_pgbackman",
        "/usr/share/zsh/vendor-completions/_pgbackman-agent",
    ] {
        assert!(Path::new(f).is_file(), "{f} missing");
    }
    let man = ok(sh(
        "sh",
        &["-c", "gzip -dc /usr/share/man/man1/pgbackman-agent.1.gz"],
    ));
    assert!(man.contains("\\-\\-strict"), "{man}");

    let unit = std::fs::read_to_string(UNIT).unwrap();
    if exists("systemd-analyze") {
        for u in [UNIT, "/lib/systemd/system/pgbackman-metrics.service"] {
            let o = sh("systemd-analyze", &["verify", u]);
            assert!(
                o.status.success(),
                "systemd-analyze verify {u}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    } else {
        println!("systemd-analyze verify skipped: systemd-analyze is not installed here");
    }

    // The operator's edit of the conffile: our catalog, this server, a port for /healthz.
    let env = Env::new();
    env.cmd("register_backup_server pkgtest example.org \"package test\"")
        .ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let edited = format!(
        "[catalog]\nconninfo = \"{}\"\n[agent]\nbackup_server = \"pkgtest.example.org\"\nhttp_listen = \"127.0.0.1:{port}\"\ntime_zone = \"UTC\"\n",
        env.catalog.tcp_conninfo("127.0.0.1", "pgbackman")
    );
    std::fs::write(AGENT_TOML, &edited).unwrap();
    // An upgrade (the same package again) keeps it.
    ok(sh("dpkg", &["-i", deb.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(AGENT_TOML).unwrap(), edited);

    // The unit's lines, run as its User= and Group= with its Environment=.
    assert_eq!(unit_values(&unit, "User"), ["pgbackman"]);
    assert_eq!(unit_values(&unit, "Group"), ["pgbackman"]);
    let run_as = |line: &str| {
        // setpriv (util-linux) drops root's supplementary groups too, then execs the line.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "pgbackman",
            "--regid",
            "pgbackman",
            "--clear-groups",
            "--",
        ])
        .args(argv(line))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/var/lib/pgbackman-agent")
        .env("USER", "pgbackman")
        .current_dir("/");
        for e in unit_values(&unit, "Environment") {
            for kv in e.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                c.env(k, v);
            }
        }
        c
    };
    let pre = unit_values(&unit, "ExecStartPre");
    assert_eq!(pre.len(), 1, "{pre:?}");
    let check = run_as(&pre[0]).stdin(Stdio::null()).output().unwrap();
    let report = ok(check);
    assert!(
        report.contains(&format!("[OK] configuration {AGENT_TOML}")),
        "the agent reads {AGENT_TOML} by default:\n{report}"
    );
    assert!(
        report.contains("[OK] registered as backup server SrvID 1"),
        "{report}"
    );

    let start = unit_values(&unit, "ExecStart");
    assert_eq!(start.len(), 1, "{start:?}");
    let log = out.path().join("agent.log");
    let child = run_as(&start[0])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    cleanup.agent = Some(child);
    // Its main loop answers /healthz, as the pgbackman user.
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Some(h) = healthz(port).filter(|h| h.contains("\"status\":\"online\"")) {
            break h;
        }
        if let Some(Ok(Some(st))) = cleanup.agent.as_mut().map(|c| c.try_wait()) {
            panic!(
                "the agent exited ({st}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz within 30 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        health.starts_with("HTTP/1.1 200") || health.starts_with("HTTP/1.0 200"),
        "{health}"
    );
    let pid = cleanup.agent.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())),
        "{status}"
    );
    // Its state went where the package made room for it.
    assert!(Path::new("/var/lib/pgbackman-agent/agent.lock").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = cleanup.agent.take().unwrap().wait().unwrap();
    assert!(st.success(), "{st}");
    drop(cleanup);
    assert!(
        !Path::new(AGENT_TOML).exists(),
        "purge removes the conffiles"
    );
}

fn healthz(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /healthz HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
