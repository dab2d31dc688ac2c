//! One source of truth, visible (issue 14): the catalog's backup-server configuration is what
//! the agents run with (their file overrides a value only visibly), agents heartbeat into the
//! catalog, the shell shows their state and warns when it queues work nobody will run, and a
//! schedule names the zone it fires in. Real binaries, a real catalog and node.

mod common;

use common::Env;
use common::agent::{Agent, fake_tool, site, wait_for, wait_for_agents};

/// The row of `parameter` in show_backup_server_config of `server`.
fn config_row(env: &Env, server: &str, parameter: &str) -> serde_json::Value {
    let v = env.json(&format!("show_backup_server_config {server}"));
    v["backup_server_config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["parameter"] == parameter)
        .unwrap_or_else(|| panic!("no {parameter} in {v}"))
        .clone()
}

/// The row of `fqdn` in show_backup_servers.
fn server_row(env: &Env, fqdn: &str) -> serde_json::Value {
    let v = env.json("show_backup_servers");
    v["backup_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["fqdn"] == fqdn)
        .unwrap_or_else(|| panic!("no {fqdn} in {v}"))
        .clone()
}

/// An agent of `server` whose file does not set `backup_dir` (the catalog's
/// root_backup_partition counts), with `extra` `[agent]` lines.
fn agent_without_backup_dir(env: &Env, server: &str, extra: &str, bin: &std::path::Path) -> Agent {
    let mut a = Agent::configure(env, server, extra);
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("backup_dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&a.config, cfg).unwrap();
    a.spawn(Some(bin));
    a
}

#[test]
fn the_catalog_configuration_counts_and_each_value_shows_its_source() {
    let s = site();
    let env = &s.env;
    s.node.create_database("crm");
    let root = tempfile::tempdir().unwrap();
    let catalog_root = root.path().join("from-catalog");
    env.cmd(&format!(
        "update_backup_server_config bs1.example.org root_backup_partition={} max_concurrent_jobs=1",
        catalog_root.display()
    ))
    .ok();
    // Every dump takes a second: two jobs at once would overlap.
    let slow = fake_tool(
        "pg_dump",
        "sleep 1; exec /usr/lib/postgresql/15/bin/pg_dump \"$@\"",
    );
    let a = agent_without_backup_dir(env, "bs1.example.org", "", slow.path());
    // bs2's agent file sets max_jobs: an override, shown as such.
    let b = Agent::start_with(env, "bs2.example.org", Some(slow.path()), "max_jobs = 3");
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 crm \"\" 0 3")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    env.cmd("run_backup_definition_now 2").ok();
    wait_for(
        env,
        "select count(*) from backup_catalog where execution_status = 'SUCCEEDED'",
        "2",
        60,
        &a,
    );
    // max_concurrent_jobs = 1 from the catalog: the two runs did not overlap.
    assert_eq!(
        env.sql(
            "select count(*) from backup_catalog x join backup_catalog y on x.bck_id < y.bck_id \
             where x.started < y.finished and y.started < x.finished"
        ),
        "0"
    );
    // root_backup_partition from the catalog: the sets are there.
    for dir in env
        .sql("select string_agg(backup_dir, ' ') from backup_catalog")
        .split(' ')
    {
        assert!(
            dir.starts_with(&catalog_root.display().to_string()),
            "{dir} is not under {}",
            catalog_root.display()
        );
        assert!(std::path::Path::new(dir).is_dir(), "{dir}");
    }

    // The sources, as the heartbeats reported them.
    wait_for_agents(env, "select count(*) from agent_status", "2", 20, &[&a, &b]);
    let r = config_row(env, "bs1.example.org", "root_backup_partition");
    assert_eq!(r["source"], "catalog", "{r}");
    assert_eq!(r["agent_uses"], catalog_root.display().to_string(), "{r}");
    let r = config_row(env, "bs1.example.org", "max_concurrent_jobs");
    assert_eq!(
        (r["value"].as_str(), r["source"].as_str()),
        (Some("1"), Some("catalog")),
        "{r}"
    );
    let r = config_row(env, "bs1.example.org", "pgsql_bin_dir");
    assert_eq!(r["source"], "agent file", "{r}");
    assert_eq!(
        r["agent_uses"],
        format!("15={}", slow.path().display()),
        "{r}"
    );
    let r = config_row(env, "bs2.example.org", "max_concurrent_jobs");
    assert_eq!(r["value"], "4", "{r}");
    assert_eq!(r["agent_uses"], "3", "{r}");
    assert_eq!(r["source"], "agent file", "{r}");
    let r = config_row(env, "bs2.example.org", "root_backup_partition");
    assert_eq!(r["source"], "agent file", "{r}");
    assert_eq!(r["agent_uses"], b.backups().display().to_string(), "{r}");
    // A value only the catalog uses.
    assert_eq!(
        config_row(env, "bs2.example.org", "agent_not_seen_threshold")["source"],
        "catalog"
    );
    let table = env.cmd("show_backup_server_config bs2.example.org").ok();
    assert!(table.stdout.contains("agent file"), "{}", table.stdout);

    // A change in the catalog reaches the running agent.
    env.cmd("update_backup_server_config bs1.example.org max_concurrent_jobs=2")
        .ok();
    wait_for(
        env,
        "select config -> 'max_concurrent_jobs' ->> 'value' from agent_status where server_id = 1",
        "2",
        20,
        &a,
    );
    assert!(
        a.log().contains("configuration value in use"),
        "{}",
        a.log()
    );

    // The catalog's values are cached: a restart while the catalog is down runs with them.
    let mut a = a;
    a.stop();
    env.catalog.stop();
    a.spawn(None);
    let started = std::time::Instant::now();
    let line = loop {
        let log = a.log();
        if let Some(l) = log
            .lines()
            .filter(|l| l.contains("pgbackman-agent started"))
            .nth(1)
        {
            break l.to_string();
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "no second start in:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        line.contains(&format!("backup_dir={}", catalog_root.display()))
            && line.contains("max_jobs=2"),
        "{line}"
    );
    a.stop();
    env.catalog.start_again();
}

#[test]
fn agents_are_seen_and_work_for_an_unseen_one_says_so() {
    let s = site();
    let env = &s.env;
    let a = Agent::start_with(env, "bs1.example.org", None, "time_zone = \"Europe/Oslo\"");
    wait_for(
        env,
        "select count(*) from agent_status where health = 'online'",
        "1",
        20,
        &a,
    );
    let r = server_row(env, "bs1.example.org");
    assert_eq!(r["agent"], "online", "{r}");
    assert!(r["last_seen"].is_string(), "{r}");
    assert_eq!(r["agent_version"], env!("CARGO_PKG_VERSION"), "{r}");
    assert_eq!(r["spooled_results"], 0, "{r}");
    assert_eq!(server_row(env, "bs2.example.org")["agent"], "never seen");

    // The zone a schedule fires in: the agent's, or unknown for a server never seen.
    let reg = env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 30 2")
        .ok();
    assert!(
        reg.stdout.contains("in Europe/Oslo (the agent's zone)"),
        "{}",
        reg.stdout
    );
    let reg = env
        .cmd("register_backup_definition bs2.example.org 127.0.0.2 shop \"\" 30 3")
        .ok();
    assert!(
        reg.stdout.contains("unknown until its agent is seen"),
        "{}",
        reg.stdout
    );
    // Registering work for a server whose agent never ran warns at once.
    assert!(
        reg.stderr
            .contains("[WARNING] the agent of backup server bs2.example.org has never been seen"),
        "{}",
        reg.stderr
    );
    let v = env.json("show_backup_definitions");
    let zones: Vec<_> = v["backup_definitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["time_zone"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(zones, ["Europe/Oslo", "agent zone unknown"], "{v}");

    // run_now for the unseen server: the warning, and the queue says why the job waits.
    let run = env.cmd("run_backup_definition_now 2").ok();
    assert!(run.stderr.contains("[WARNING]"), "{}", run.stderr);
    assert!(
        run.stderr.contains("systemctl start pgbackman-agent"),
        "{}",
        run.stderr
    );
    let q = env.json("show_jobs_queue");
    let job = &q["jobs_queue"][0];
    assert!(
        job["agent_warning"]
            .as_str()
            .is_some_and(|w| w.contains("never been seen")),
        "{q}"
    );
    // bs1's agent runs: no warning for its jobs, and its backup's schedule names its zone.
    let run = env.cmd("run_backup_definition_now 1").ok();
    assert!(!run.stderr.contains("[WARNING]"), "{}", run.stderr);
    wait_for(
        env,
        "select count(*) from backup_catalog where def_id = 1",
        "1",
        60,
        &a,
    );
    let d = env.json("show_backup_details 1");
    assert_eq!(
        d["backup_details"][0]["schedule"], "30 2 * * * (Europe/Oslo)",
        "{d}"
    );

    // A lock on the job table: the agent's calls time out (degraded, as /healthz says), its
    // heartbeat still gets through and says so; online again once the lock is gone.
    let mut locker = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .arg(env.conninfo())
        .arg("-c")
        .arg("begin; lock table job in access exclusive mode; select pg_sleep(600);")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        env,
        "select health from agent_status where server_id = 1",
        "degraded",
        30,
        &a,
    );
    assert_eq!(server_row(env, "bs1.example.org")["agent"], "degraded");
    env.sql(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where query like '%lock table job%' and pid <> pg_backend_pid()",
    );
    let _ = locker.kill();
    let _ = locker.wait();
    wait_for(
        env,
        "select health from agent_status where server_id = 1",
        "online",
        30,
        &a,
    );
}
