//! The wal-push intake end to end (issue 11): a real node with `archive_mode = on` whose
//! `archive_command` runs the real `pgbackman-agent wal-push %p` against the real agent over
//! TLS, with the credential `create_wal_push_credential` wrote. Segments under load reach the
//! ledger once; the agent down makes archive_command fail and PostgreSQL retry, losing
//! nothing; the catalog down leaves the record durably pending; the same file again is a
//! no-op, other content is refused, kept aside and alerted; a wrong credential is refused; a
//! silent listener costs the client its deadline, no more; no secret in the log or catalog.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::agent::*;
use pgbackman_testkit::TestCluster;
use pgbackman_testkit::{Silence, SilentNode};
use sha2::Digest;

const SEG: u64 = 16 * 1024 * 1024;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The files the node host needs, readable by the user the test server runs as.
struct NodeHost {
    dir: tempfile::TempDir,
}

impl NodeHost {
    fn new() -> NodeHost {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        NodeHost { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Hands `p` to the server's user (postgres when the tests run as root).
    fn give(&self, p: &Path) {
        if is_root() {
            let s = Command::new("chown")
                .arg("postgres")
                .arg(p)
                .status()
                .unwrap();
            assert!(s.success());
        }
    }
    fn config(&self, name: &str, agent: &str, ca: &Path, cred: &Path, extra: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(
            &p,
            format!(
                "agent = \"{agent}\"\nca = \"{}\"\ncredential = \"{}\"\n{extra}",
                ca.display(),
                cred.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn push_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgbackman-agent")
}

/// `pgbackman-agent wal-push --config cfg file`: (exit code, stdout, stderr, elapsed).
fn wal_push(cfg: &Path, file: &Path) -> (i32, String, String, Duration) {
    let t = Instant::now();
    let o = Command::new(push_bin())
        .arg("wal-push")
        .arg("--config")
        .arg(cfg)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        t.elapsed(),
    )
}

fn archived(node: &TestCluster) -> (i64, i64) {
    let r = node.psql(
        "postgres",
        "select archived_count || ' ' || failed_count from pg_stat_archiver",
    );
    let mut f = r.split_whitespace().map(|x| x.parse::<i64>().unwrap());
    (f.next().unwrap(), f.next().unwrap())
}

/// Writes WAL and switches segments `n` times; returns the last segment completed.
fn switches(node: &TestCluster, n: usize) -> u64 {
    for _ in 0..n {
        node.psql(
            "postgres",
            "insert into t select g from generate_series(1, 2000) g; select pg_switch_wal();",
        );
    }
    let cur: u64 = node
        .psql(
            "postgres",
            &format!("select floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / {SEG})::int8"),
        )
        .trim()
        .parse()
        .unwrap();
    cur - 1
}

fn hex_sha(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every full segment of the ledger: once each, pushed, contiguous up to `last`, the stored
/// files as the ledger says.
#[track_caller]
fn check_ledger(env: &Env, last: u64) {
    let rows = env.sql(
        "select string_agg(concat_ws(' ', segno, sha256, stored_sha256, stored_path, arrival), ';' order by segno)
           from wal_object where kind = 'full'",
    );
    let mut segnos = Vec::new();
    for r in rows.split(';') {
        let f: Vec<&str> = r.split(' ').collect();
        let stored = std::fs::read(f[3]).unwrap_or_else(|e| panic!("{}: {e}", f[3]));
        assert_eq!(hex_sha(&stored), f[2], "{}", f[3]);
        let plain = zstd::decode_all(&stored[..]).unwrap();
        assert_eq!(hex_sha(&plain), f[1], "{}", f[3]);
        assert_eq!(f[4], "archive_command");
        segnos.push(f[0].parse::<u64>().unwrap());
    }
    let first = segnos[0];
    assert_eq!(
        segnos,
        (first..=last).collect::<Vec<_>>(),
        "each segment once, no hole"
    );
    assert_eq!(env.sql("select count(*) from api.wal_holes(1)"), "0");
}

#[test]
fn pushed_wal_reaches_the_ledger_once_through_outages_and_conflicts_are_kept_aside() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "n");
    node.psql("postgres", "create table t (x int)");
    // A push archive: no slot; a credential written to a file for the node host.
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2 --intake push --slot s")
        .fails_with("--intake push takes no --slot");
    let out = env
        .cmd("register_wal_archive bs1.example.org 127.0.0.2 --intake push")
        .ok()
        .stdout;
    assert!(out.contains("create_wal_push_credential"), "{out}");
    let host = NodeHost::new();
    let cred = host.path("wal-push.credential");
    env.cmd(&format!(
        "create_wal_push_credential bs1.example.org 127.0.0.2 --file {}",
        cred.display()
    ))
    .ok();
    assert_eq!(std::fs::metadata(&cred).unwrap().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&cred).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    assert_eq!(token.len(), 64);
    // A second credential file over an existing one: refused; the catalog keeps the hash only.
    env.cmd(&format!(
        "create_wal_push_credential bs1.example.org 127.0.0.2 --file {}",
        cred.display()
    ))
    .fails_with("exists");
    assert_eq!(
        env.sql("select push_token_sha256 from wal_archive"),
        hex_sha(token.as_bytes())
    );
    let shown = env.json("show_wal_archives");
    let row = &shown["wal_archives"][0];
    assert_eq!(row["intake"], "push", "{shown}");
    assert!(row["slot"].is_null(), "{shown}");
    host.give(&cred);

    // The agent's listener: TLS with a certificate for 127.0.0.1.
    let tls = pgbackman_testkit::tls::make_files(&host.path("tls"), &["127.0.0.1"]).unwrap();
    std::fs::set_permissions(&tls.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = Agent::configure(
        &env,
        "bs1.example.org",
        &format!(
            "[agent.wal_push]\nlisten = \"{listen}\"\ncert = \"{}\"\nkey = \"{}\"\nidle_timeout_seconds = 3\n",
            tls.dir.join("server.crt").display(),
            tls.dir.join("server.key").display()
        ),
    );
    let o = agent.command().arg("--check").output().unwrap();
    let check = String::from_utf8_lossy(&o.stdout);
    for want in [
        "[OK] wal-push certificate",
        &format!("[OK] wal-push listens on {listen}"),
        "(intake push): credential present",
    ] {
        assert!(check.contains(want), "{want:?} in:\n{check}");
    }
    agent.spawn(None);
    wait_until("the wal-push listener", 30, &[&agent], || {
        agent.log().contains("taking wal-push (TLS)")
    });
    let cfg = host.config(
        "wal-push.toml",
        &listen,
        &tls.ca,
        &cred,
        "timeout_seconds = 30\n",
    );

    // A client that connects and says nothing is dropped after the idle deadline.
    let mut idle = std::net::TcpStream::connect(&listen).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let n = std::io::Read::read(&mut idle, &mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "the agent closes a silent client");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

    // archive_command runs the real client.
    node.psql("postgres", "alter system set archive_mode = on");
    node.psql(
        "postgres",
        &format!(
            "alter system set archive_command = '{} wal-push --config {} %p'",
            push_bin(),
            cfg.display()
        ),
    );
    node.stop();
    node.start_again();
    // Load: pgbench writing while segments switch.
    let bench = Path::new("/usr/lib/postgresql/15/bin/pgbench");
    let conn = node.tcp_conninfo("127.0.0.2", "postgres");
    let mut load = None;
    if bench.exists() {
        let init = Command::new(bench)
            .args(["-i", "-s", "1", "-q", &conn])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        load = Some(
            Command::new(bench)
                .args(["-c", "2", "-T", "15", "-n", &conn])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let mut last = 0;
    for _ in 0..6 {
        last = switches(&node, 1);
        std::thread::sleep(Duration::from_millis(500));
    }
    if let Some(mut l) = load {
        l.wait().unwrap();
    }
    last = last.max(switches(&node, 1));
    wait_for(
        &env,
        &format!("select count(*) > 0 from wal_object where kind = 'full' and segno = {last}"),
        "t",
        90,
        &agent,
    );
    check_ledger(&env, last);
    let (archived_before, failed_before) = archived(&node);
    assert!(archived_before >= 7, "{archived_before}");
    assert_eq!(failed_before, 0, "{}", agent.log());

    // The agent down: archive_command fails, PostgreSQL retries; nothing is lost once back.
    agent.stop();
    let last_down = switches(&node, 3);
    wait_until("archive_command failing", 60, &[&agent], || {
        archived(&node).1 > 0
    });
    let failed = node.psql("postgres", "select last_failed_wal from pg_stat_archiver");
    assert!(!failed.trim().is_empty());
    agent.spawn(None);
    wait_for(
        &env,
        &format!("select count(*) > 0 from wal_object where kind = 'full' and segno = {last_down}"),
        "t",
        120,
        &agent,
    );
    check_ledger(&env, last_down);

    // The catalog down: the push still succeeds (the record is durably pending), and is
    // recorded once the catalog is back.
    env.catalog.stop();
    let last_cat = switches(&node, 2);
    let pending = agent.state().join("wal_pending");
    wait_until(
        "pushes spooled while the catalog is down",
        60,
        &[&agent],
        || {
            std::fs::read_dir(&pending)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                        .count()
                })
                .unwrap_or(0)
                >= 2
        },
    );
    assert!(
        archived(&node).0 >= archived_before + 5,
        "archive_command succeeded without the catalog"
    );
    env.catalog.start_again();
    wait_for(
        &env,
        &format!("select count(*) > 0 from wal_object where kind = 'full' and segno = {last_cat}"),
        "t",
        120,
        &agent,
    );
    check_ledger(&env, last_cat);

    // The same segment again: a no-op.
    let path = env.sql(&format!(
        "select stored_path from wal_object where kind = 'full' and segno = {last}"
    ));
    let name = Path::new(&path)
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut plain = zstd::decode_all(&std::fs::read(&path).unwrap()[..]).unwrap();
    let again = host.path(&name);
    std::fs::write(&again, &plain).unwrap();
    let rows = env.sql("select count(*) from wal_object");
    let (code, out, err, _) = wal_push(&cfg, &again);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(env.sql("select count(*) from wal_object"), rows);

    // Other content under the same name: refused, kept aside, recorded and alerted.
    plain[100_000] ^= 0xff;
    std::fs::write(&again, &plain).unwrap();
    let (code, _, err, _) = wal_push(&cfg, &again);
    assert_eq!(code, 1);
    assert!(
        err.contains("already archived with other content") && err.contains("kept aside"),
        "{err}"
    );
    let stored = std::fs::read(&path).unwrap();
    assert_eq!(
        hex_sha(&zstd::decode_all(&stored[..]).unwrap()),
        env.sql(&format!(
            "select sha256 from wal_object where kind = 'full' and segno = {last}"
        )),
        "the stored copy is untouched"
    );
    wait_for(&env, "select count(*) from wal_conflict", "1", 30, &agent);
    assert_eq!(env.sql("select sha256 from wal_conflict"), hex_sha(&plain));
    let kept = env.sql("select stored_path from wal_conflict");
    assert!(
        kept.contains("/refused/") && Path::new(&kept).exists(),
        "{kept}"
    );
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'WAL_CONFLICT'"),
        "1"
    );

    // A wrong credential: refused, saying what to do.
    let wrong = host.path("wrong.credential");
    std::fs::write(&wrong, text.replace(&token, &"0".repeat(64))).unwrap();
    let wrong_cfg = host.config("wrong.toml", &listen, &tls.ca, &wrong, "");
    let (code, _, err, _) = wal_push(&wrong_cfg, &again);
    assert_eq!(code, 1);
    assert!(err.contains("is not the current one"), "{err}");
    // A CA that did not sign the agent's certificate: refused by the client.
    let other = host.config("other.toml", &listen, &tls.other_ca, &cred, "");
    let (code, _, err, _) = wal_push(&other, &again);
    assert_eq!(code, 1);
    assert!(err.contains("TLS with the backup server's agent"), "{err}");

    // Rotation asks first (batch mode: -C answers yes), and the old file stops working.
    let cred2 = host.path("wal-push-2.credential");
    env.cmd(&format!(
        "create_wal_push_credential bs1.example.org 127.0.0.2 --file {}",
        cred2.display()
    ))
    .ok();
    wait_until(
        "the new credential reaches the agent",
        30,
        &[&agent],
        || wal_push(&cfg, &again).2.contains("is not the current one"),
    );

    // No secret in the agent's log nor anywhere in the catalog.
    assert!(!agent.log().contains(&token), "token in the agent's log");
    let leaks = env.sql(&format!(
        "select count(*) from pg_tables t where schemaname = 'public'
            and query_to_xml(format('select * from public.%I', tablename), true, false, '')::text like '%{token}%'"
    ));
    assert_eq!(leaks, "0", "the token is in a catalog table");
    agent.stop();
}

#[test]
fn a_client_against_a_listener_that_never_answers_gives_up_within_its_deadline() {
    let silent = SilentNode::start(Silence::AtOnce);
    let host = NodeHost::new();
    let tls = pgbackman_testkit::tls::make_files(&host.path("tls"), &["127.0.0.1"]).unwrap();
    let cred = host.path("c");
    std::fs::write(
        &cred,
        format!("node_id = 1\ntoken = \"{}\"\n", "a".repeat(64)),
    )
    .unwrap();
    let cfg = host.config(
        "w.toml",
        &format!("127.0.0.1:{}", silent.port()),
        &tls.ca,
        &cred,
        "connect_timeout_seconds = 2\ntimeout_seconds = 4\n",
    );
    let seg = host.path("000000010000000000000001");
    std::fs::write(&seg, vec![0u8; 8192]).unwrap();
    let (code, out, err, took) = wal_push(&cfg, &seg);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("did not complete the TLS handshake within 2 s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(!err.contains(&"a".repeat(64)));
    // Nothing listening at all: a clear refusal at once.
    let closed = host.config(
        "c.toml",
        &format!("127.0.0.1:{}", free_port()),
        &tls.ca,
        &cred,
        "",
    );
    let (code, _, err, _) = wal_push(&closed, &seg);
    assert_eq!(code, 1);
    assert!(
        err.contains("is it running, with [agent.wal_push] listen"),
        "{err}"
    );
}
