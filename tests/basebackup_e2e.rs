//! Base backups end to end (issue 11): a node with a WAL archive kept by the real agent, BASEBACKUP
//! definitions registered through the shell, pg_basebackup run by the agent under pgbench load;
//! a backup waits for its WAL in the ledger (receiver frozen with SIGSTOP: waiting_for_wal,
//! then SUCCEEDED once it resumes), fails with an alert past its deadline, leaves nothing behind
//! when the agent is SIGKILLed mid-backup, succeeds from the backup server's own archive when
//! the catalog is frozen during its WAL wait; an extracted base backup with the WAL from the
//! archive passes pg_verifybackup; a byte flipped in a stored set fails level 1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::Env;
use common::agent::*;
use common::freeze::Frozen;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgbackman_testkit::TestCluster;

fn bin_dir() -> PathBuf {
    pgbackman_pgctl::find_bin_dir(None).unwrap()
}

/// pgbench writing on the node until killed.
struct Load(Child);

impl Load {
    fn start(node: &TestCluster) -> Load {
        let pgbench = |args: &[&str]| {
            let mut c = Command::new(bin_dir().join("pgbench"));
            c.args(["-h", &node.socket_dir().display().to_string()])
                .args(["-p", &node.port().to_string(), "-U", "postgres"])
                .args(args)
                .arg("postgres");
            c
        };
        let o = pgbench(&["-i", "-s", "2", "-q"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let child = pgbench(&["-c", "2", "-T", "600", "-n"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Load(child)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pids of this test's pg_receivewal (the one writing under `backups`).
fn receivewal_pids(backups: &Path) -> Vec<i32> {
    let needle = backups.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("pg_receivewal") && cmd.contains(&needle) && !cmd.contains("launch") {
            out.push(pid);
        }
    }
    out
}

fn signal_receiver(backups: &Path, sig: Signal) {
    let pids = receivewal_pids(backups);
    assert!(!pids.is_empty(), "no pg_receivewal found");
    for p in pids {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// A node with an archive on bs1, the agent streaming it, and a BASEBACKUP definition.
fn setup(env: &Env, host: &str, wal_wait: &str) -> (TestCluster, Agent, i64) {
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node(host, "n");
    env.cmd(&format!("register_wal_archive bs1.example.org {host}"))
        .ok();
    let mut agent = Agent::configure(env, "bs1.example.org", "");
    agent.spawn(None);
    wait_until("the agent's slot streaming", 30, &[&agent], || {
        node.psql(
            "postgres",
            "select count(*) from pg_replication_slots where slot_name = 'pgbackman_bs1' and active",
        )
        .trim()
            == "1"
    });
    env.cmd(&format!(
        "register_backup_definition bs1.example.org {host} \"\" \"\" 0 1 \"*\" \"*\" \"*\" BASEBACKUP false \"7 days\" 1 \"\" ACTIVE phys --wal-wait \"{wal_wait}\""
    ))
    .ok();
    let def: i64 = env
        .sql("select def_id from backup_definition where backup_code = 'BASEBACKUP'")
        .parse()
        .unwrap();
    (node, agent, def)
}

/// Extracts a base backup set and the WAL of its range from the archive (decompressed from
/// the ledger's stored files), then runs pg_verifybackup on it.
fn pg_verifybackup(env: &Env, bck: i64, to: &Path) {
    let dir = PathBuf::from(dir_of(env, bck));
    let f = std::fs::File::open(dir.join("base.tar.zst")).unwrap();
    let mut a = tar::Archive::new(zstd::stream::read::Decoder::new(f).unwrap());
    std::fs::create_dir_all(to).unwrap();
    a.unpack(to).unwrap();
    std::fs::copy(dir.join("backup_manifest"), to.join("backup_manifest")).unwrap();
    let wal = env.sql(&format!(
        "select string_agg(o.stored_path, ' ' order by o.segno)
           from wal_object o join base_backup b on b.pgsql_node_id = o.pgsql_node_id
                and b.system_identifier = o.system_identifier and b.timeline = o.timeline
          where b.bck_id = {bck} and o.kind = 'full'
            and o.end_lsn > b.start_lsn and o.start_lsn <= b.stop_lsn"
    ));
    assert!(!wal.is_empty(), "no WAL of BckID {bck} in the ledger");
    for p in wal.split(' ') {
        let name = Path::new(p).file_stem().unwrap();
        let plain = zstd::decode_all(&std::fs::read(p).unwrap()[..]).unwrap();
        std::fs::write(to.join("pg_wal").join(name), plain).unwrap();
    }
    let out = Command::new(bin_dir().join("pg_verifybackup"))
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn base_backups_under_load_wait_for_their_wal_and_verify() {
    let env = Env::new();
    let (node, agent, def) = setup(&env, "127.0.0.2", "3 minutes");
    let _load = Load::start(&node);

    // A first base backup: SUCCEEDED once its WAL is in the ledger, checked in flight.
    let b1 = run_now(&env, &agent, def);
    let d = env.json(&format!("show_backup_details {b1}"));
    let d = &d["backup_details"][0];
    assert_eq!(d["execution_status"], "SUCCEEDED", "{d}\n{}", agent.log());
    assert_eq!(d["code"], "BASEBACKUP");
    assert_eq!(d["base_backup_state"], "SUCCEEDED", "{d}");
    assert_eq!(d["manifest_check"], "PASSED", "{d}");
    assert_eq!(d["timeline"], 1);
    assert_eq!(d["wal"], "from the WAL archive (ledger)", "{d}");
    assert_eq!(d["verification"], "PASSED");
    let sysid = node.psql(
        "postgres",
        "select system_identifier from pg_control_system()",
    );
    assert_eq!(d["system_identifier"], sysid.trim());

    // A second one with the receiver frozen: it waits, saying for which segments, and
    // succeeds once the receiver resumes.
    signal_receiver(&agent.backups(), Signal::SIGSTOP);
    env.cmd(&format!("run_backup_definition_now {def}")).ok();
    wait_for(
        &env,
        "select count(*) from job where wait_note like 'WAL of the base backup: % not in the archive yet (0000000100000000%'",
        "1",
        90,
        &agent,
    );
    let q = env.json("show_jobs_queue");
    assert!(q.to_string().contains("not in the archive yet"), "{q}");
    signal_receiver(&agent.backups(), Signal::SIGCONT);
    wait_for(
        &env,
        &format!("select count(*) from backup_catalog where def_id = {def} and bck_id > {b1}"),
        "1",
        90,
        &agent,
    );
    let b2: i64 = env
        .sql(&format!(
            "select max(bck_id) from backup_catalog where def_id = {def}"
        ))
        .parse()
        .unwrap();
    assert_eq!(
        env.sql(&format!(
            "select c.execution_status || ' ' || b.state from backup_catalog c join base_backup b using (bck_id) where bck_id = {b2}"
        )),
        "SUCCEEDED SUCCEEDED",
        "{}",
        agent.log()
    );
    assert_eq!(
        env.sql("select count(*) from job where wait_note is not null"),
        "0"
    );

    // The recovery window lists both base backups (the chains).
    let w = env.json("show_recovery_window 127.0.0.2");
    let listed = w.to_string();
    assert!(
        listed.contains(&format!("BckID {b1} from"))
            && listed.contains(&format!("BckID {b2} from")),
        "{w}"
    );
    let c = env.json("show_recovery_window 127.0.0.2 --chains");
    let chains = c["recovery_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{c}");
    assert!(
        chains
            .iter()
            .all(|r| r["restorable_to_lsn"].is_string() && r["wal_count"].as_i64().unwrap() >= 1),
        "{c}"
    );

    // pg_verifybackup on the extracted second backup with its WAL from the archive.
    pg_verifybackup(&env, b2, &node.dir().join("verify_b2"));

    // A byte flipped in the first set fails level 1.
    let tar = PathBuf::from(dir_of(&env, b1)).join("base.tar.zst");
    let mut bytes = std::fs::read(&tar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&tar, bytes).unwrap();
    env.cmd(&format!("verify_backup {b1}")).ok();
    wait_for(
        &env,
        &format!(
            "select verification_state || ' ' || verification_level from backup_catalog where bck_id = {b1}"
        ),
        "FAILED 1",
        60,
        &agent,
    );
    let err = env.sql(&format!(
        "select verification_error from backup_catalog where bck_id = {b1}"
    ));
    assert!(err.contains("base.tar.zst"), "{err}");
}

#[test]
fn a_base_backup_whose_wal_never_arrives_fails_with_an_alert() {
    let env = Env::new();
    let (_node, agent, def) = setup(&env, "127.0.0.2", "10 seconds");
    signal_receiver(&agent.backups(), Signal::SIGSTOP);
    let bck = run_now(&env, &agent, def);
    signal_receiver(&agent.backups(), Signal::SIGCONT);
    let row = env.sql(&format!(
        "select c.execution_status || '|' || c.error_step || '|' || b.state || '|' || cardinality(b.missing_wal)
           from backup_catalog c join base_backup b using (bck_id) where bck_id = {bck}"
    ));
    let f: Vec<&str> = row.split('|').collect();
    assert_eq!(&f[..3], ["ERROR", "wait_for_wal", "FAILED"], "{row}");
    assert!(f[3].parse::<i32>().unwrap() >= 1, "{row}");
    let alert = env.sql(&format!(
        "select error_message from alert where bck_id = {bck} and alert_type = 'BACKUP'"
    ));
    for want in [
        "PgSQL node 127.0.0.2",
        "did not reach the archive within 10 s",
        "missing (00000001",
        "show_wal_archives",
        &format!("run_backup_definition_now {def}"),
    ] {
        assert!(alert.contains(want), "{want:?} in {alert}");
    }
}

#[test]
fn a_base_backup_whose_wal_wait_sees_the_catalog_frozen_succeeds_from_this_servers_archive() {
    let env = Env::new();
    let (_node, agent, def) = setup(&env, "127.0.0.2", "3 minutes");
    // The WAL cannot arrive: the backup waits for it, and says so.
    signal_receiver(&agent.backups(), Signal::SIGSTOP);
    env.cmd(&format!("run_backup_definition_now {def}")).ok();
    wait_for(
        &env,
        &format!(
            "select count(*) from job where def_id = {def} and state = 'RUNNING' \
                and wait_note like 'WAL of the base backup:%'"
        ),
        "1",
        120,
        &agent,
    );
    // Now the catalog answers nothing while the WAL arrives: only this server knows it is here.
    let frozen = Frozen::freeze(&env.catalog);
    signal_receiver(&agent.backups(), Signal::SIGCONT);
    wait_until("the WAL found on the backup server", 120, &[&agent], || {
        agent
            .log()
            .contains("WAL of the base backup: every segment is stored on this server")
    });
    drop(frozen);
    // The spooled result reaches the catalog once it answers: SUCCEEDED, nothing missing, no
    // alert; the WAL itself reaches the ledger from the pending objects.
    wait_for(
        &env,
        &format!(
            "select c.execution_status || '|' || b.state || '|' || cardinality(b.missing_wal) \
               from backup_catalog c join base_backup b using (bck_id) where c.def_id = {def}"
        ),
        "SUCCEEDED|SUCCEEDED|0",
        90,
        &agent,
    );
    let bck: i64 = env
        .sql(&format!(
            "select bck_id from backup_catalog where def_id = {def}"
        ))
        .parse()
        .unwrap();
    assert_eq!(
        env.sql(&format!("select count(*) from alert where bck_id = {bck}")),
        "0"
    );
    wait_for(
        &env,
        &format!(
            "select count(*) from base_backup b where b.bck_id = {bck} and exists \
               (select 1 from wal_object o where o.pgsql_node_id = b.pgsql_node_id and o.kind = 'full' \
                   and o.start_lsn <= b.stop_lsn and o.end_lsn > b.stop_lsn)"
        ),
        "1",
        90,
        &agent,
    );
    let t = tempfile::tempdir().unwrap();
    pg_verifybackup(&env, bck, &t.path().join("restored"));
}

#[test]
fn an_agent_killed_mid_base_backup_leaves_no_files_nor_processes() {
    let env = Env::new();
    let (node, mut agent, def) = setup(&env, "127.0.0.2", "1 minute");
    node.psql(
        "postgres",
        "create table filler as select g, md5(g::text) from generate_series(1, 200000) g",
    );
    env.sql(&format!(
        "update backup_definition set max_rate = '32k' where def_id = {def}"
    ));
    env.cmd(&format!("run_backup_definition_now {def}")).ok();
    wait_until("pg_basebackup running", 60, &[&agent], || {
        !processes_with("pg_basebackup").is_empty()
            && node
                .psql(
                    "postgres",
                    "select count(*) from pg_stat_progress_basebackup",
                )
                .trim()
                == "1"
    });
    agent.sigkill();
    wait_until("pg_basebackup gone with the agent", 15, &[&agent], || {
        processes_with("pg_basebackup").is_empty()
    });
    wait_until("the node's walsender for it gone", 15, &[&agent], || {
        node.psql(
            "postgres",
            "select count(*) from pg_stat_progress_basebackup",
        )
        .trim()
            == "0"
    });
    agent.spawn(None);
    wait_for(
        &env,
        &format!("select count(*) from backup_catalog where def_id = {def}"),
        "1",
        60,
        &agent,
    );
    let row = env.sql(&format!(
        "select execution_status || '|' || error_message from backup_catalog where def_id = {def}"
    ));
    assert!(row.starts_with("ERROR|"), "{row}");
    assert!(row.contains("agent stopped"), "{row}");
    // No set, no staging left (the WAL archive's files are the receiver's).
    let left: Vec<_> = files_under(&agent.backups())
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/wal/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
