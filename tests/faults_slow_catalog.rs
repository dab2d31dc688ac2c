//! A catalog that accepts connections but does not answer: a lock held on `job`, or the whole
//! server frozen with SIGSTOP. Two agents with every-minute definitions go through three
//! fire-minutes of it, one of them stopped (SIGTERM) and restarted in the middle; afterwards
//! every (definition, minute) is in the catalog exactly once, with one set on disk per row, and
//! nothing is left in a spool. Each fault needs real minutes (the fires are minute-based), so
//! each of those two takes about four; they run in parallel. A third test stops an agent whose
//! running jobs all report into a catalog frozen a moment before (seconds).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::agent::*;
use common::freeze::Frozen;

/// Definitions per agent: enough to show a fire lost or waiting, few enough for 2 cores.
const DEFS: usize = 4;
/// `[agent] catalog_timeout_seconds` of the test agents.
const TIMEOUT: u64 = 2;

fn second_of_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60
}

/// Sleeps until the clock shows second `s` of a minute (the next time it does).
fn sleep_until_second(s: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = now.as_secs_f64() % 60.0;
    let wait = (s as f64 - into).rem_euclid(60.0);
    std::thread::sleep(Duration::from_secs_f64(wait));
}

fn spooled_offline_fires(a: &Agent) -> usize {
    a.spooled()
        .iter()
        .filter(|p| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p).unwrap_or_default()).unwrap_or_default();
            v["key"]["type"] == "scheduled"
        })
        .count()
}

fn running_jobs(a: &Agent) -> u64 {
    let h = a.http_get("/healthz");
    let body = h.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["running_jobs"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

struct Setup {
    f: Fleet,
    a: Agent,
    b: Agent,
}

/// bs1 backs up DEFS databases of node a, bs2 DEFS of node b, every minute.
fn setup() -> Setup {
    let f = fleet();
    let mut names = Vec::new();
    for i in 1..=DEFS {
        let name = format!("s{i:02}");
        for n in [&f.a, &f.b] {
            n.create_database(&name);
            n.psql(
                &name,
                "create table t (id int primary key); insert into t select generate_series(1, 100)",
            );
        }
        names.push(name);
    }
    let list = names.join(",");
    for (server, node) in [("bs1", "127.0.0.2"), ("bs2", "127.0.0.3")] {
        f.env
            .cmd(&format!(
                "register_backup_definition {server}.example.org {node} {list} \"\" \"*\" \"*\""
            ))
            .ok();
    }
    let extra = format!(
        "max_jobs = 8\nmax_jobs_per_node = {DEFS}\nhttp_listen = \"127.0.0.1:0\"\ncatalog_timeout_seconds = {TIMEOUT}\nmaintenance_seconds = 0"
    );
    let a = Agent::start_with(&f.env, "bs1.example.org", None, &extra);
    let b = Agent::start_with(&f.env, "bs2.example.org", None, &extra);
    for x in [&a, &b] {
        let cache = x.state().join("definitions.json");
        wait_until("a cache of the definitions", 30, &[x], || {
            std::fs::read(&cache)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["definitions"].as_array().map(Vec::len) == Some(DEFS))
        });
        assert!(x.http_get("/healthz").contains("\"status\":\"online\""));
    }
    Setup { f, a, b }
}

/// The fault for three fire-minutes, `fault` starting it and `heal` ending it (returning when
/// the catalog answers again). During it: /healthz says degraded, agent a is stopped with
/// SIGTERM (it must exit within 15 s) and restarted (from its cache, within seconds). After it:
/// every (definition, minute) exactly once, one set per row, empty spools, all within ~5 s.
fn three_minutes_of(
    s: &mut Setup,
    fault: impl FnOnce(&common::Env),
    heal: impl FnOnce(&common::Env),
) {
    let Setup { f, a, b } = s;
    // Start just after a minute's fires are done, so that no fire straddles the fault's start.
    sleep_until_second(20);
    let started = f.env.sql("select now()");
    fault(&f.env);
    let t0 = Instant::now();

    // First fire-minute: every fire runs, offline, and is spooled, on both agents.
    wait_until(
        "the first minute's fires in both spools",
        100,
        &[&*a, &*b],
        || spooled_offline_fires(a) >= DEFS && spooled_offline_fires(b) >= DEFS,
    );
    for x in [&*a, &*b] {
        let h = x.http_get("/healthz");
        assert!(h.contains("\"status\":\"degraded\""), "{h}\n{}", x.log());
        assert!(
            h.contains("\"call\":\""),
            "the failing calls are named: {h}"
        );
        assert!(
            x.http_get("/metrics")
                .contains("pgbackman_agent_catalog_degraded 1")
        );
    }
    assert!(a.log().contains("running DEGRADED"), "{}", a.log());
    assert_eq!(
        a.log().matches("running DEGRADED").count(),
        1,
        "one line per transition:\n{}",
        a.log()
    );

    // SIGTERM in the middle of the fault, between fires: honoured within 15 s.
    wait_until("agent a idle", 40, &[&*a], || running_jobs(a) == 0);
    if second_of_minute() > 45 {
        sleep_until_second(10);
    }
    let t = Instant::now();
    let status = a.sigterm();
    let stop = t.elapsed();
    assert!(status.success(), "{}", a.log());
    assert!(
        stop < Duration::from_secs(15),
        "SIGTERM took {stop:?}\n{}",
        a.log()
    );
    // Restarted during the fault: it runs from its cache after one bounded probe.
    let t = Instant::now();
    a.spawn(None);
    wait_until("a restart from the cache", 10 + TIMEOUT, &[&*a], || {
        a.log().contains("running from the cached definitions")
    });
    eprintln!(
        "SIGTERM honoured in {stop:?}; restart ran from its cache after {:?}",
        t.elapsed()
    );
    assert!(
        a.http_get("/healthz").contains("\"status\":\"degraded\""),
        "{}",
        a.log()
    );

    // Three fire-minutes in all, spooled on both agents.
    wait_until(
        "three minutes of fires in both spools",
        200,
        &[&*a, &*b],
        || spooled_offline_fires(a) >= 3 * DEFS && spooled_offline_fires(b) >= 3 * DEFS,
    );
    wait_until("both agents idle", 60, &[&*a, &*b], || {
        running_jobs(a) == 0 && running_jobs(b) == 0
    });
    assert!(
        t0.elapsed() < Duration::from_secs(4 * 60),
        "{:?}",
        t0.elapsed()
    );
    heal(&f.env);
    let back = Instant::now();
    wait_until("both spools to drain", 60, &[&*a, &*b], || {
        a.spooled().is_empty() && b.spooled().is_empty()
    });
    let drained = back.elapsed();
    eprintln!("spooled results in the catalog {drained:?} after it answered again");
    assert!(
        drained < Duration::from_secs(5),
        "results reached the catalog {drained:?} after it answered\n{}\n----\n{}",
        a.log(),
        b.log()
    );
    let ended = f.env.sql("select now()");
    wait_until("healthz online", 10, &[&*a, &*b], || {
        a.http_get("/healthz").contains("\"status\":\"online\"")
            && b.http_get("/healthz").contains("\"status\":\"online\"")
    });
    // Stop between fires, so that nothing runs while the catalog is compared with the disks.
    wait_until("both agents idle", 60, &[&*a, &*b], || {
        running_jobs(a) == 0 && running_jobs(b) == 0
    });
    if !(10..=45).contains(&second_of_minute()) {
        sleep_until_second(10);
    }
    assert!(a.sigterm().success());
    assert!(b.sigterm().success());

    let env = &f.env;
    let summary = || catalog_summary(env);
    // Three instants of every definition during the fault, each exactly once.
    assert_eq!(
        env.sql(&format!(
            "select count(*) from job where scheduled_for > '{started}'::timestamptz and scheduled_for < '{ended}'::timestamptz"
        )),
        (2 * DEFS * 3).to_string(),
        "{}",
        summary()
    );
    assert_eq!(
        env.sql(&format!(
            "select count(distinct scheduled_for) from job where scheduled_for > '{started}'::timestamptz and scheduled_for < '{ended}'::timestamptz"
        )),
        "3"
    );
    assert_eq!(
        env.sql("select count(*) = count(distinct (def_id, scheduled_for)) from job where scheduled_for is not null"),
        "t"
    );
    // Every definition has one job for each minute from its first fire to its last: none lost.
    assert_eq!(
        env.sql(
            "select count(*) from (select def_id, count(*) as n, extract(epoch from max(scheduled_for) - min(scheduled_for)) / 60 + 1 as span
               from job where scheduled_for is not null group by def_id) d where n <> span"
        ),
        "0",
        "{}",
        summary()
    );
    assert_eq!(
        env.sql("select string_agg(distinct state, ',') from job"),
        "SUCCEEDED",
        "no job RUNNING, LOST or failed\n{}",
        summary()
    );
    assert_eq!(
        env.sql("select count(*) from job j where (select count(*) from backup_catalog c where c.job_id = j.job_id) <> 1"),
        "0",
        "one catalog row per job\n{}",
        summary()
    );
    assert_eq!(
        env.sql("select string_agg(distinct execution_status || '/' || execution_method, ',') from backup_catalog"),
        "SUCCEEDED/CRON"
    );
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'LOST_JOB'"),
        "0"
    );
    let rows: usize = env
        .sql("select count(*) from backup_catalog")
        .parse()
        .unwrap();
    let mut sets = sets_on_disk(&a.backups());
    sets.extend(sets_on_disk(&b.backups()));
    assert_eq!(sets.len(), rows, "one set on disk per row: {sets:?}");
    for d in env
        .sql("select string_agg(backup_dir, E'\\n') from backup_catalog")
        .lines()
    {
        assert!(Path::new(d).join("manifest.json").is_file(), "{d}");
    }
    for x in [&*a, &*b] {
        assert!(x.spooled().is_empty());
        assert!(!x.state().join("spool").join("rejected").exists());
        assert!(!x.state().join("running").read_dir().unwrap().any(|_| true));
    }
}

#[test]
fn a_lock_held_on_the_job_table_for_three_fire_minutes_loses_no_fire() {
    let mut s = setup();
    let mut locker = None;
    three_minutes_of(
        &mut s,
        |env| {
            let c = Command::new("/usr/lib/postgresql/15/bin/psql")
                .arg(env.conninfo())
                .arg("-c")
                .arg("begin; lock table job in access exclusive mode; select pg_sleep(600);")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            locker = Some(c);
            let held = "select count(*) from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'job' and l.mode = 'AccessExclusiveLock' and l.granted";
            let t = Instant::now();
            while env.sql(held) != "1" {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "the lock was not taken"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        },
        |env| {
            // A backend in pg_sleep does not notice its client is gone: end it on the server.
            env.sql("select pg_terminate_backend(pid) from pg_stat_activity where query like '%lock table job%' and pid <> pg_backend_pid()");
        },
    );
    if let Some(mut c) = locker {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_frozen_catalog_for_three_fire_minutes_loses_no_fire() {
    let mut s = setup();
    let frozen = std::cell::RefCell::new(None);
    three_minutes_of(
        &mut s,
        |env| *frozen.borrow_mut() = Some(Frozen::freeze(&env.catalog)),
        |_| drop(frozen.borrow_mut().take()),
    );
}

/// SIGTERM while four jobs run and the catalog has just frozen (the agent still thinks it is
/// online): each cancelled job spools its result, and the first delivery finds the catalog
/// frozen; the others must not wait a deadline each (4 × 5 s) before the agent exits.
#[test]
fn sigterm_with_jobs_running_on_a_just_frozen_catalog_is_honoured_within_15_s() {
    let f = fleet();
    // A pg_dump that never ends (its shell's command line names the fake's path; the cancel
    // kills its process group, sleep included).
    let slow = fake_bin("sleep 120; exit 1");
    let mut names = Vec::new();
    for i in 1..=DEFS {
        let name = format!("t{i:02}");
        f.a.create_database(&name);
        names.push(name);
    }
    f.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org 127.0.0.2 {} \"\" 0 3",
            names.join(",")
        ))
        .ok();
    // The default deadline (5 s): four of them in a row would exceed 15 s.
    let extra = format!("max_jobs = 8\nmax_jobs_per_node = {DEFS}\nmaintenance_seconds = 0");
    let mut a = Agent::start_with(&f.env, "bs1.example.org", Some(slow.path()), &extra);
    for i in 1..=DEFS {
        f.env.cmd(&format!("run_backup_definition_now {i}")).ok();
    }
    wait_for(
        &f.env,
        "select count(*) from job where state = 'RUNNING'",
        &DEFS.to_string(),
        30,
        &a,
    );
    wait_until("every pg_dump started", 30, &[&a], || {
        processes_with(&slow.path().display().to_string()).len() >= DEFS
    });
    let frozen = Frozen::freeze(&f.env.catalog);
    let t = Instant::now();
    let status = a.sigterm();
    let stop = t.elapsed();
    drop(frozen);
    eprintln!("SIGTERM with {DEFS} jobs on a frozen catalog honoured in {stop:?}");
    assert!(status.success(), "{}", a.log());
    assert!(
        stop < Duration::from_secs(15),
        "SIGTERM took {stop:?}\n{}",
        a.log()
    );
    assert!(
        processes_with(&slow.path().display().to_string()).is_empty(),
        "a pg_dump outlived the agent"
    );
    // What did not reach the catalog waits in the spool, and the next start delivers it.
    a.spawn(Some(slow.path()));
    wait_for(
        &f.env,
        "select string_agg(distinct execution_status || '|' || state, ',') from backup_catalog join job using (job_id)",
        "CANCELLED|CANCELLED",
        30,
        &a,
    );
    wait_until("an empty spool", 30, &[&a], || a.spooled().is_empty());
    assert_eq!(
        f.env.sql("select count(*) from backup_catalog"),
        DEFS.to_string(),
        "{}",
        catalog_summary(&f.env)
    );
    assert!(files_under(&a.backups()).is_empty());
    assert!(a.sigterm().success());
}
