//! `pgbackman-agent --check` as the systemd unit's ExecStartPre: what must stop a start is an
//! ERROR (exit 1); a catalog or SMTP server that is down or frozen is a WARN (exit 0) within the
//! agent's own catalog deadline; `--strict` counts warnings; run as root it never leaves
//! directories the service user cannot write.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pgbackman_testkit::{Silence, SilentNode};

fn config(dir: &Path, conninfo: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "[catalog]\nconninfo = \"{conninfo}\"\n[agent]\nbackup_server = \"bs1.example.org\"\nstate_dir = \"{}\"\nbackup_dir = \"{}\"\nhttp_listen = \"\"\ncatalog_timeout_seconds = 1\n{extra}",
            dir.join("state").display(),
            dir.join("backups").display()
        ),
    )
    .unwrap();
    p
}

fn check(config: &Path, more: &[&str]) -> (Output, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pgbackman-agent"))
        .arg("--config")
        .arg(config)
        .arg("--check")
        .args(more)
        .env("PGBACKMAN_LOG", "warn")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGSSLCERT")
        .env_remove("PGSSLKEY")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o, out)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

#[test]
fn a_frozen_catalog_and_a_dead_smtp_server_are_warnings_within_the_deadline() {
    let frozen = SilentNode::start(Silence::AtOnce);
    let smtp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let smtp_port = smtp.local_addr().unwrap().port();
    drop(smtp); // nothing listens there now: connection refused
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "host=127.0.0.1 port={} dbname=pgbackman user=pgbackman sslmode=disable",
            frozen.port()
        ),
        &format!(
            "[agent.alerts]\nsmtp_server = \"127.0.0.1\"\nsmtp_port = {smtp_port}\nsmtp_security = \"none\"\nfrom_address = \"p@example.org\"\ntimeout_seconds = 2\n"
        ),
    );
    let t = Instant::now();
    let (o, out) = check(&cfg, &[]);
    let took = t.elapsed();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        // The catalog's line, with the error's HINT on the line after it.
        out.split("\n[").any(|l| l.starts_with("WARN] catalog ")
            && l.contains("within 1 s ([agent] catalog_timeout_seconds)")
            && l.contains("the agent starts anyway")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("[WARN] SMTP server 127.0.0.1:{smtp_port}"))),
        "{out}"
    );
    assert!(!out.contains("[ERROR]"), "{out}");
    // The catalog deadline (1 s) plus the runtime's shutdown, not a hang.
    assert!(took < Duration::from_secs(5), "--check took {took:?}");

    // The full check fails on the same warnings.
    let (o, out) = check(&cfg, &["--strict"]);
    assert!(!o.status.success(), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("2 warning(s), counted as failures by --strict"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn bad_tls_files_stop_the_start_whatever_the_catalog() {
    let frozen = SilentNode::start(Silence::AtOnce);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let missing = dir.path().join("no-such-ca.crt");
    let cfg = config(
        dir.path(),
        &format!(
            "host=127.0.0.1 port={} dbname=pgbackman user=pgbackman sslmode=verify-full sslrootcert={}",
            frozen.port(),
            missing.display()
        ),
        "",
    );
    let (o, out) = check(&cfg, &[]);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.lines().any(
            |l| l.starts_with("[ERROR] catalog connection: root certificate file")
                && l.contains(&missing.display().to_string())
                && l.contains("does not exist")
        ),
        "{out}"
    );
}

#[test]
fn run_as_root_it_leaves_no_directory_the_service_user_cannot_write() {
    if !is_root() {
        println!("SKIPPED: this test checks --check run as root; run it as root (CI does)");
        return;
    }
    let frozen = SilentNode::start(Silence::AtOnce);
    let dir = tempfile::tempdir().unwrap();
    // The service user must be able to reach the directories (tempdir makes its root 0700).
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=pgbackman user=pgbackman sslmode=disable",
        frozen.port()
    );
    let cfg = config(dir.path(), &conninfo, "");
    let (state, backups) = (dir.path().join("state"), dir.path().join("backups"));

    // As root without --user: nothing is created as root; the error says what to run.
    let (o, out) = check(&cfg, &[]);
    assert!(!o.status.success(), "{out}");
    assert!(!state.exists() && !backups.exists(), "{out}");
    let want = format!(
        "[ERROR] backup directory {b} does not exist, and --check run as root does not create it as root",
        b = backups.display()
    );
    assert!(out.contains(&want), "{out}");
    assert!(
        out.contains(&format!(
            "install -d -o pgbackman -g pgbackman -m 0700 {}",
            backups.display()
        )),
        "{out}"
    );

    // With --user (here postgres, the test clusters' user): created for that user, 0700.
    let (o, out) = check(&cfg, &["--user", "postgres"]);
    assert!(o.status.success(), "{out}");
    let id = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let pg_uid: u32 = String::from_utf8_lossy(&id.stdout).trim().parse().unwrap();
    for d in [&state, &backups] {
        let m = std::fs::metadata(d).unwrap();
        assert_eq!(m.uid(), pg_uid, "{}", d.display());
        assert_eq!(m.mode() & 0o7777, 0o700, "{}", d.display());
    }
    assert!(
        out.contains(&format!(
            "[OK] backup directory {} created for user postgres (mode 0700)",
            backups.display()
        )),
        "{out}"
    );

    // A directory left root:root 0700 (what --check used to make) is named, with the fix.
    std::os::unix::fs::chown(&backups, Some(0), Some(0)).unwrap();
    let (o, out) = check(&cfg, &["--user", "postgres"]);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.lines().any(|l| l
            .starts_with(&format!("[ERROR] backup directory {}", backups.display()))
            && l.contains("is owned by root:root, mode 700: user postgres cannot write it")
            && l.contains(&format!("chown postgres: {}", backups.display()))),
        "{out}"
    );
    // An unknown user is refused with what to do.
    let (o, _) = check(&cfg, &["--user", "no-such-user-pgbm"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--user no-such-user-pgbm: no such user"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
