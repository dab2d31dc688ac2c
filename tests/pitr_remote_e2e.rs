//! A restore to a data directory on "another host" (issue 12): `pgbackman-agent restore-cluster`
//! run as the PostgreSQL user, reaching the backup server only through the agent's TLS wal-push
//! channel with the node's credential. The node archives by wal-push, gets a base backup, is
//! promoted to timeline 2, writes a named restore point; the restore follows 1 → 2 to the point
//! and holds exactly the rows recorded there. `wal-get --remote` keeps the exit codes: 0
//! restored, 1 for a file the ledger confirms absent, 126 for an unreachable agent or a damaged
//! stored file, and recovery then stops instead of promoting. A non-empty data directory is
//! refused, a running cluster even with --replace.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Env;
use common::agent::*;
use pgbackman_testkit::TestCluster;

const SEG: u64 = 16 * 1024 * 1024;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgbackman-agent")
}

/// Hands `p` to the server's user (postgres when the tests run as root).
fn give(p: &Path) {
    if is_root() {
        let s = Command::new("chown")
            .arg("-R")
            .arg("postgres")
            .arg(p)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

/// The agent binary as the server's user (restore-cluster refuses root, as PostgreSQL does).
fn as_pg_user(args: &[&str]) -> Output {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", agent_bin()]);
        c
    } else {
        Command::new(agent_bin())
    };
    c.args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wal_get(cfg: &Path, plan: &Path, name: &str, dest: &Path) -> Output {
    Command::new(agent_bin())
        .args(["wal-get", "--remote"])
        .arg(cfg)
        .arg("--plan")
        .arg(plan)
        .arg(name)
        .arg(dest)
        .output()
        .unwrap()
}

fn lsn_value(node: &TestCluster, q: &str) -> u64 {
    node.psql("postgres", &format!("select ({q} - '0/0'::pg_lsn)::int8"))
        .trim()
        .parse()
        .unwrap()
}

fn wal_name(tl: u32, segno: u64) -> String {
    format!(
        "{tl:08X}{:08X}{:08X}",
        segno / (0x1_0000_0000 / SEG),
        segno % (0x1_0000_0000 / SEG)
    )
}

/// psql on a restored server (its socket is the node's socket directory, another port).
fn psql_at(node: &TestCluster, port: u16, sql: &str) -> String {
    node.psql_conninfo(
        &format!(
            "host={} port={port} user=postgres dbname=postgres",
            node.socket_dir().display()
        ),
        sql,
    )
}

/// Stops a restored server on drop (an assertion failing must not leave it running).
struct Restored<'a>(&'a TestCluster, PathBuf);

impl Drop for Restored<'_> {
    fn drop(&mut self) {
        if self.1.join("postmaster.pid").exists() {
            pg_ctl_stop(self.0, &self.1);
        }
    }
}

fn pg_ctl_stop(node: &TestCluster, pgdata: &Path) {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(node.bin_dir().join("pg_ctl"));
        c
    } else {
        Command::new(node.bin_dir().join("pg_ctl"))
    };
    let _ = c
        .arg("-D")
        .arg(pgdata)
        .args(["-m", "immediate", "stop"])
        .output();
}

#[test]
fn a_restore_on_another_host_follows_a_promotion_and_wal_get_remote_keeps_its_exit_codes() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "n");
    node.psql("postgres", "create table t (x int)");
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2 --intake push")
        .ok();
    // The "other host": its own directory, the node's credential and the agent's CA only.
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cred = host.path().join("node.credential");
    env.cmd(&format!(
        "create_wal_push_credential bs1.example.org 127.0.0.2 --file {}",
        cred.display()
    ))
    .ok();
    give(&cred);
    // The restore host's own credential: read-only, apart from the node's wal-push one.
    let restore_cred = host.path().join("restore.credential");
    env.cmd(&format!(
        "create_wal_push_credential bs1.example.org 127.0.0.2 --restore --file {}",
        restore_cred.display()
    ))
    .ok();
    assert_eq!(
        std::fs::metadata(&restore_cred).unwrap().mode() & 0o777,
        0o600
    );
    give(&restore_cred);
    let tls = pgbackman_testkit::tls::make_files(&host.path().join("tls"), &["127.0.0.1"]).unwrap();
    std::fs::set_permissions(&tls.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::configure(
        &env,
        "bs1.example.org",
        &format!(
            "[agent.wal_push]\nlisten = \"{listen}\"\ncert = \"{}\"\nkey = \"{}\"\nidle_timeout_seconds = 5\n",
            tls.dir.join("server.crt").display(),
            tls.dir.join("server.key").display()
        ),
    );
    agent.spawn(None);
    wait_until("the wal-push listener", 30, &[&agent], || {
        agent.log().contains("taking wal-push (TLS)")
    });
    let config = |name: &str, agent_addr: &str, cred: &Path| {
        let p = host.path().join(name);
        std::fs::write(
            &p,
            format!(
                "agent = \"{agent_addr}\"\nca = \"{}\"\ncredential = \"{}\"\nconnect_timeout_seconds = 3\ntimeout_seconds = 30\n",
                tls.ca.display(),
                cred.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    };
    let push_cfg = config("wal-push.toml", &listen, &cred);
    let cfg = config("restore.toml", &listen, &restore_cred);
    node.psql("postgres", "alter system set archive_mode = on");
    node.psql(
        "postgres",
        &format!(
            "alter system set archive_command = '{} wal-push --config {} %p'",
            agent_bin(),
            push_cfg.display()
        ),
    );
    node.stop();
    node.start_again();

    // A base backup on timeline 1.
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 \"\" \"\" 0 1 \"*\" \"*\" \"*\" BASEBACKUP false \"7 days\" 1 \"\" ACTIVE phys --wal-wait \"3 minutes\"")
        .ok();
    let def: i64 = env
        .sql("select def_id from backup_definition where backup_code = 'BASEBACKUP'")
        .parse()
        .unwrap();
    env.cmd(&format!("run_backup_definition_now {def}")).ok();
    wait_until("the base backup", 180, &[&agent], || {
        node.psql("postgres", "select pg_switch_wal()");
        std::thread::sleep(Duration::from_millis(500));
        env.sql("select count(*) from base_backup where state = 'SUCCEEDED'") == "1"
    });
    let bck = env.sql("select bck_id from base_backup");
    node.psql(
        "postgres",
        "insert into t select g from generate_series(1, 100) g",
    );

    // Promoted: a standby of itself (standby.signal, no primary), then pg_promote → timeline 2.
    node.stop();
    let signal = node.data_dir().join("standby.signal");
    std::fs::write(&signal, "").unwrap();
    give(&signal);
    node.start_again();
    node.psql("postgres", "select pg_promote()");
    assert_eq!(
        node.psql(
            "postgres",
            "select timeline_id from pg_control_checkpoint()"
        )
        .trim(),
        "2"
    );
    node.psql(
        "postgres",
        "insert into t select g from generate_series(101, 150) g",
    );
    node.psql("postgres", "select pg_create_restore_point('after_promo')");
    node.psql(
        "postgres",
        "insert into t select g from generate_series(151, 200) g",
    );
    let end = lsn_value(&node, "pg_current_wal_lsn()");
    node.psql("postgres", "select pg_switch_wal()");
    wait_for(
        &env,
        &format!(
            "select count(*) > 0 from wal_object where timeline = 2 and kind = 'full' and end_lsn >= '{:X}/{:X}'",
            end >> 32,
            end & 0xffff_ffff
        ),
        "t",
        90,
        &agent,
    );
    wait_for(
        &env,
        "select count(*) from wal_object where kind = 'history' and timeline = 2",
        "1",
        30,
        &agent,
    );

    // The wal-push credential does not serve restores (nor does a restore one push).
    let o = as_pg_user(&[
        "restore-cluster",
        "--config",
        push_cfg.to_str().unwrap(),
        "--pgdata",
        host.path().join("never").to_str().unwrap(),
        "--immediate",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not the current restore credential"),
        "{}",
        text(&o)
    );
    assert!(!host.path().join("never").exists());
    let fake = host.path().join("000000010000000000000001");
    std::fs::write(&fake, b"not pushed").unwrap();
    let o = Command::new(agent_bin())
        .args(["wal-push", "--config"])
        .arg(&cfg)
        .arg(&fake)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not the current one"), "{}", text(&o));

    // Refused: a non-empty data directory; a running cluster even with --replace.
    let parent_owned = host.path().join("pg");
    std::fs::create_dir(&parent_owned).unwrap();
    give(&parent_owned);
    let busy = parent_owned.join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    give(&busy);
    let common_args = |dir: &Path| -> Vec<String> {
        vec![
            "restore-cluster".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--bck-id".into(),
            bck.clone(),
            "--pgdata".into(),
            dir.display().to_string(),
        ]
    };
    let run = |dir: &Path, extra: &[&str]| {
        let mut a = common_args(dir);
        a.extend(extra.iter().map(|s| s.to_string()));
        as_pg_user(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&busy, &["--immediate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not empty"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(busy.join("keep.txt")).unwrap(),
        "mine"
    );
    let o = run(node.data_dir(), &["--immediate", "--replace"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("runs on"), "{}", text(&o));
    assert_eq!(
        node.psql("postgres", "select count(*) from t").trim(),
        "200"
    );

    // The restore, to the named point on timeline 2, started and promoted.
    let pgdata = parent_owned.join("restored");
    let port = free_port();
    let bin = node.bin_dir();
    let t = std::time::Instant::now();
    let o = run(
        &pgdata,
        &[
            "--target-name",
            "after_promo",
            "--target-action",
            "promote",
            "--port",
            &port.to_string(),
            "--start",
            "--pg-bin",
            bin.to_str().unwrap(),
            "--wait-seconds",
            "120",
        ],
    );
    let _running = Restored(&node, pgdata.clone());
    eprintln!("restore-cluster --start to after_promo: {:?}", t.elapsed());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("Recovery reached the target"), "{out}");
    assert!(out.contains("lineage 2 ← 1"), "{out}");
    assert_eq!(psql_at(&node, port, "select count(*) from t").trim(), "150");
    assert_eq!(
        psql_at(&node, port, "select min(x) || ' ' || max(x) from t").trim(),
        "1 150"
    );
    assert_eq!(psql_at(&node, port, "show archive_mode").trim(), "off");
    // backup_label was the backup's, exactly (recovery renames it).
    let set = PathBuf::from(dir_of(&env, bck.parse().unwrap()));
    assert_eq!(
        std::fs::read(pgdata.join("backup_label.old")).unwrap(),
        std::fs::read(set.join("backup_label")).unwrap()
    );
    // The restored copy archives nothing into the node's archive (no timeline 3).
    psql_at(&node, port, "select pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        env.sql("select count(*) from wal_object where timeline > 2"),
        "0"
    );
    pg_ctl_stop(&node, &pgdata);

    // --replace over the stopped copy: the old content goes, the base backup comes back whole.
    let o = run(&pgdata, &["--immediate", "--replace"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("Next, as this user: pg_ctl -D"), "{out}");
    assert!(!pgdata.join("backup_label.old").exists(), "{out}");
    assert_eq!(
        std::fs::read(pgdata.join("backup_label")).unwrap(),
        std::fs::read(set.join("backup_label")).unwrap()
    );
    assert!(pgdata.join("recovery.signal").exists());
    assert!(!pgdata.join(".pgbackman-fetch").exists());

    // wal-get --remote: 0, 1 at the end of the archive, 126 for an unreachable agent.
    let plan = pgdata.join("pgbackman_wal_get.json");
    let dest_dir = tempfile::tempdir().unwrap();
    let dest = dest_dir.path().join("RECOVERYXLOG");
    let last: u64 = env
        .sql("select max(segno) from wal_object where timeline = 2 and kind = 'full'")
        .parse()
        .unwrap();
    let o = wal_get(&cfg, &plan, &wal_name(2, last), &dest);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stored = env.sql(&format!(
        "select stored_path from wal_object where timeline = 2 and segno = {last} and kind = 'full'"
    ));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        zstd::decode_all(&std::fs::read(&stored).unwrap()[..]).unwrap()
    );
    std::fs::remove_file(&dest).unwrap();
    for name in [wal_name(2, last + 1), "00000009.history".to_string()] {
        let o = wal_get(&cfg, &plan, &name, &dest);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
        assert!(text(&o).contains("not in the archive"), "{}", text(&o));
        assert!(!dest.exists());
    }
    let nowhere = config(
        "nowhere.toml",
        &format!("127.0.0.1:{}", free_port()),
        &restore_cred,
    );
    let o = wal_get(&nowhere, &plan, &wal_name(2, last), &dest);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    assert!(text(&o).contains("attempt 3 of 3"), "{}", text(&o));
    assert!(!dest.exists());

    // A damaged stored segment that recovery needs: 126, and recovery stops, not promoted.
    let first = env.sql(&format!(
        "select o.stored_path from wal_object o join base_backup b on b.bck_id = {bck}
          where o.kind = 'full' and o.timeline = 1
            and o.segno = floor((b.start_lsn - '0/0'::pg_lsn) / {SEG})"
    ));
    let good = std::fs::read(&first).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x55;
    std::fs::write(&first, &bad).unwrap();
    let name = Path::new(&first)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let o = wal_get(&cfg, &plan, &name, &dest);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(dest_dir.path()).unwrap().count(), 0);
    let second = parent_owned.join("second");
    let port2 = free_port();
    let o = run(
        &second,
        &[
            "--target-name",
            "after_promo",
            "--target-action",
            "promote",
            "--port",
            &port2.to_string(),
            "--start",
            "--pg-bin",
            bin.to_str().unwrap(),
            "--wait-seconds",
            "120",
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("stopped before recovery reached the target"),
        "{out}"
    );
    assert!(!second.join("postmaster.pid").exists(), "{out}");
    assert!(!second.join("pg_wal/00000003.history").exists(), "{out}");
    let control = Command::new(bin.join("pg_controldata"))
        .arg(&second)
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout);
    // Never promoted: no checkpoint on a new timeline; the log says why it stopped.
    assert!(
        control.contains("Latest checkpoint's TimeLineID:       1"),
        "{control}"
    );
    let log = std::fs::read_to_string(second.join("pgbackman_restore.log")).unwrap();
    assert!(log.contains("giving up on"), "{log}");
    assert!(!log.contains("selected new timeline"), "{log}");
    std::fs::write(&first, &good).unwrap();

    // The catalog down: the agent cannot confirm anything, so never "absent" (126).
    env.catalog.stop();
    let o = wal_get(&cfg, &plan, &wal_name(2, last + 1), &dest);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    assert!(
        text(&o).contains("could not ask the catalog"),
        "{}",
        text(&o)
    );
    agent.stop();
}
