//! Replication status, WAL alerts and the receiver's stall watchdog end to end (issue 11, part
//! M): a real primary and a real standby, each with a WAL archive run by the real agent;
//! `show_replication_status` on both from the agent's samples; a replication lag threshold
//! crossed (replay paused) raises one REPLICATION_LAG alert that clears; a gap in the ledger
//! raises WAL_HOLE; `/metrics` parses; a node frozen with SIGSTOP and a network path that stops
//! forwarding (StallingProxy) are detected as stalls, alerted, and the receiver recovers.

mod common;

use common::Env;
use common::agent::*;
use common::freeze::Frozen;
use openmetrics_parser::PrometheusValue;
use openmetrics_parser::prometheus::parse_prometheus;
use pgbackman_testkit::{StallingProxy, Standby, TestCluster};
use serde_json::Value as Json;

const SEG: u64 = 16 * 1024 * 1024;

/// Writes some WAL and switches to a new segment; returns the segment now being written.
fn switch(node: &TestCluster) -> u64 {
    node.psql(
        "postgres",
        "insert into t select g from generate_series(1, 1000) g; select pg_switch_wal();",
    );
    node.psql(
        "postgres",
        &format!("select floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / {SEG})::int8"),
    )
    .trim()
    .parse()
    .unwrap()
}

fn status(env: &Env, node: &str) -> Vec<Json> {
    env.json(&format!("show_replication_status {node}"))["replication_status"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn section<'a>(rows: &'a [Json], s: &str) -> Vec<&'a Json> {
    rows.iter().filter(|r| r["section"] == s).collect()
}

fn open(code: &str) -> String {
    format!("select count(*) from wal_condition where code = '{code}' and cleared is null")
}

/// One sample of a metric family with the given label value, parsed by a Prometheus parser.
fn metric(text: &str, family: &str, label: (&str, &str)) -> Option<f64> {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or(text);
    let m = parse_prometheus(body).unwrap_or_else(|e| panic!("not parsable ({e:?}):\n{body}"));
    let fam = m.families.get(family)?;
    fam.iter_samples()
        .find(|s| s.get_labelset().unwrap().get_label_value(label.0) == Some(label.1))
        .map(|s| match &s.value {
            PrometheusValue::Gauge(g) | PrometheusValue::Unknown(g) => g.as_f64(),
            PrometheusValue::Counter(c) => c.value.as_f64(),
            _ => panic!("{family}: not a gauge or counter"),
        })
}

#[test]
fn replication_status_lag_and_hole_alerts_and_metrics() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let primary = env.start_node("127.0.0.2", "primary");
    primary.psql("postgres", "create table t (x int)");
    let standby = Standby::of(&primary, &["127.0.0.5"]);
    standby.wait_replayed(&primary);
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.5 \"\" {} postgres RUNNING standby",
        standby.port()
    ))
    .ok();
    env.cmd("register_wal_archive bs1.example.org 127.0.0.2")
        .ok();
    env.cmd("register_wal_archive bs1.example.org 127.0.0.5")
        .ok();
    let agent = Agent::start_with(
        &env,
        "bs1.example.org",
        None,
        "http_listen = \"127.0.0.1:0\"",
    );

    // Both nodes as the agent sampled them: the primary with its standby and the two slots
    // (the standby's own archive slot lives on the standby), the standby with its receiver.
    wait_until("a sample of both nodes", 40, &[&agent], || {
        let p = status(&env, "127.0.0.2");
        let s = status(&env, "127.0.0.5");
        section(&p, "node")
            .first()
            .is_some_and(|r| r["state"] == "primary")
            && section(&s, "node")
                .first()
                .is_some_and(|r| r["state"] == "standby")
            && !section(&p, "standby").is_empty()
            && section(&p, "slot")
                .iter()
                .any(|r| r["name"] == "pgbackman_bs1 (physical, active)")
            && section(&s, "pgbackman receiver")
                .first()
                .is_some_and(|r| r["state"] == "streaming")
    });
    let p = status(&env, "127.0.0.2");
    let st = section(&p, "standby");
    assert!(
        st.iter()
            .any(|r| r["state"].as_str().unwrap().starts_with("streaming")
                && r["lsn"].as_str().unwrap().starts_with("sent ")),
        "{p:?}"
    );
    assert!(
        section(&p, "slot").iter().any(|r| r["name"]
            .as_str()
            .unwrap()
            .starts_with("pgbackman_bs1 (physical, active)")),
        "{p:?}"
    );
    let mine = section(&p, "pgbackman receiver");
    assert_eq!(mine.len(), 1, "{p:?}");
    assert!(
        mine[0]["as_of"].as_str().unwrap().ends_with(" ago"),
        "{p:?}"
    );
    let s = status(&env, "127.0.0.5");
    let wr = section(&s, "wal receiver");
    assert_eq!(wr.len(), 1, "{s:?}");
    assert_eq!(wr[0]["state"], "streaming", "{s:?}");
    assert_eq!(
        wr[0]["detail"].as_str().unwrap().split(';').next(),
        Some("replaying")
    );

    // Replay paused on the standby beyond the primary's threshold: one alert, then cleared.
    env.cmd("update_pgsql_node_config 127.0.0.2 replication_lag_threshold=1MB")
        .ok();
    env.cmd("update_pgsql_node_config 127.0.0.2 replication_lag_threshold=1kB")
        .fails_with("below 1 MB");
    standby.psql("postgres", "select pg_wal_replay_pause()");
    let mut current = 0;
    for _ in 0..3 {
        current = switch(&primary);
    }
    wait_for(&env, &open("REPLICATION_LAG"), "1", 40, &agent);
    let msg = env.sql("select error_message from alert where alert_type = 'REPLICATION_LAG'");
    assert!(
        msg.contains("of PgSQL node 127.0.0.2 has replayed"),
        "{msg}"
    );
    assert!(msg.contains("threshold 1024 kB"), "{msg}");
    let s = status(&env, "127.0.0.5");
    assert_eq!(
        section(&s, "wal receiver")[0]["detail"]
            .as_str()
            .unwrap()
            .split(';')
            .next(),
        Some("replay is PAUSED"),
        "{s:?}"
    );
    assert!(
        section(&status(&env, "127.0.0.2"), "alert")
            .iter()
            .any(|r| r["name"].as_str().unwrap().starts_with("REPLICATION_LAG")),
    );
    // Still true a few rounds later: still one alert.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'REPLICATION_LAG'"),
        "1"
    );
    standby.psql("postgres", "select pg_wal_replay_resume()");
    wait_for(&env, &open("REPLICATION_LAG"), "0", 40, &agent);
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'REPLICATION_LAG'"),
        "1"
    );

    // A gap in the ledger: WAL_HOLE names the missing file; gone once nothing is on both sides.
    wait_for(
        &env,
        &format!(
            "select count(*) from wal_object w join pgsql_node n on n.node_id = w.pgsql_node_id
              where n.fqdn = '127.0.0.2' and kind = 'full' and segno = {}",
            current - 1
        ),
        "1",
        40,
        &agent,
    );
    let gap = env.sql(
        "select min(segno) + 1 from wal_object w join pgsql_node n on n.node_id = w.pgsql_node_id
          where n.fqdn = '127.0.0.2' and kind = 'full'",
    );
    env.sql(&format!(
        "delete from wal_object w using pgsql_node n where n.node_id = w.pgsql_node_id
            and n.fqdn = '127.0.0.2' and kind = 'full' and segno = {gap}"
    ));
    wait_for(&env, &open("WAL_HOLE"), "1", 30, &agent);
    let msg = env.sql("select error_message from alert where alert_type = 'WAL_HOLE'");
    assert!(msg.contains("misses 1 segment(s) of timeline 1"), "{msg}");
    assert!(msg.contains("Take a new base backup"), "{msg}");

    // /metrics of the agent: the archives' series parse.
    let m = agent.http_get("/metrics");
    let id = env.sql(
        "select archive_id from wal_archive a join pgsql_node n on n.node_id = a.pgsql_node_id where n.fqdn = '127.0.0.2'",
    );
    assert_eq!(
        metric(&m, "pgbackman_agent_wal_receiver_up", ("archive", &id)),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "pgbackman_agent_wal_holes", ("archive", &id)),
        Some(1.0),
        "{m}"
    );
    assert!(metric(&m, "pgbackman_agent_wal_archived_end_lsn", ("archive", &id)).unwrap() > 0.0);
    assert!(
        metric(
            &m,
            "pgbackman_agent_wal_slot_retained_bytes",
            ("archive", &id)
        )
        .is_some()
    );
    assert_eq!(
        metric(
            &m,
            "pgbackman_agent_wal_receiver_stalls_total",
            ("archive", &id)
        ),
        Some(0.0)
    );
    // The status probe counts the archive with the hole as CRITICAL.
    let r = env.cmd("show_pgbackman_status --nagios");
    assert!(r.stdout.starts_with("PGBACKMAN CRITICAL"), "{}", r.stdout);
    assert!(
        r.stdout.contains("1 critical, 0 warning of 2 WAL archives"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("WAL_HOLE"), "{}", r.stdout);

    // serve-metrics: the recoverable window and the hole per node, parsed.
    let m = serve_metrics_once(&env);
    assert_eq!(
        metric(&m, "pgbackman_wal_holes", ("node", "127.0.0.2")),
        Some(1.0),
        "{m}"
    );
    let from = metric(
        &m,
        "pgbackman_wal_recoverable_from_lsn",
        ("node", "127.0.0.2"),
    )
    .unwrap();
    let to = metric(
        &m,
        "pgbackman_wal_recoverable_to_lsn",
        ("node", "127.0.0.2"),
    )
    .unwrap();
    assert_eq!(from as u64, (gap.parse::<u64>().unwrap() + 1) * SEG, "{m}");
    assert!(to > from, "{m}");
    assert!(
        metric(
            &m,
            "pgbackman_wal_recoverable_to_timestamp_seconds",
            ("node", "127.0.0.2")
        )
        .is_some()
    );
    assert_eq!(
        metric(&m, "pgbackman_wal_open_alerts", ("node", "127.0.0.2")),
        Some(1.0),
        "{m}"
    );

    env.sql(&format!(
        "delete from wal_object w using pgsql_node n where n.node_id = w.pgsql_node_id
            and n.fqdn = '127.0.0.2' and kind = 'full' and segno < {gap}"
    ));
    wait_for(&env, &open("WAL_HOLE"), "0", 30, &agent);
    assert_eq!(
        env.sql("select count(*) from alert where alert_type = 'WAL_HOLE'"),
        "1"
    );
}

/// One scrape of `pgbackman serve-metrics` after its first read of the catalog.
fn serve_metrics_once(env: &Env) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = common::command(env.home.path())
        .args([
            "--catalog",
            &env.conninfo(),
            "serve-metrics",
            "--listen",
            "127.0.0.1:0",
            "--refresh-seconds",
            "1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    err.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let mut out = String::new();
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        out.clear();
        s.read_to_string(&mut out).unwrap();
        if out.contains("pgbackman_wal_holes{") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

#[test]
fn a_stalled_stream_and_a_frozen_node_are_detected_alerted_and_recovered() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = TestCluster::start_on(&["127.0.0.1"]);
    node.psql("postgres", "create table t (x int)");
    // The walsender of a stalled stream holds the slot until the node's wal_sender_timeout (it
    // cannot even be terminated: its last message waits on a socket nobody reads); the default
    // minute would only make the test longer.
    node.psql("postgres", "alter system set wal_sender_timeout = '5s'");
    node.psql("postgres", "select pg_reload_conf()");
    // Every connection through the proxy stops forwarding after 40 MB: the stream freezes
    // in its third segment with the TCP connection up (keepalives answered).
    let proxy = StallingProxy::start(node.port(), 40 << 20);
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.1 \"\" {} postgres RUNNING proxied",
        proxy.port()
    ))
    .ok();
    env.cmd("register_wal_archive bs1.example.org 127.0.0.1")
        .ok();
    let agent = Agent::start_with(
        &env,
        "bs1.example.org",
        None,
        "http_listen = \"127.0.0.1:0\"\n[nodes]\nstall_timeout = 4\nconnect_timeout = 2\nstatement_timeout = 3\n",
    );
    wait_until("the receiver streaming", 30, &[&agent], || {
        node.psql(
            "postgres",
            "select count(*) from pg_replication_slots where slot_name = 'pgbackman_bs1' and active",
        )
        .trim()
            == "1"
    });
    let mut current = 0;
    for _ in 0..5 {
        current = switch(&node);
    }
    // Stalled (the node answers, ahead of the receiver), restarted, and every segment arrives.
    wait_for(
        &env,
        &format!(
            "select count(*) from wal_object where kind = 'full' and segno = {}",
            current - 1
        ),
        "1",
        90,
        &agent,
    );
    assert!(proxy.stalled() >= 1);
    let log = agent.log();
    assert!(log.contains("stalled: no WAL received for"), "{log}");
    assert!(log.contains("while PgSQL node 127.0.0.1:"), "{log}");
    wait_for(
        &env,
        "select count(*) from alert where alert_type = 'WAL_RECEIVER_DOWN'",
        "1",
        10,
        &agent,
    );
    let msg = env.sql("select error_message from alert where alert_type = 'WAL_RECEIVER_DOWN'");
    assert!(msg.contains("after a stall"), "{msg}");
    let first_alerts = env.sql("select count(*) from alert");
    let holes = env.sql("select count(*) from api.wal_holes(1)");
    assert_eq!(holes, "0");

    // Frozen: the node accepts TCP and answers nothing; the receiver is restarted, the state
    // says stalled until the node is back, and the receiver streams again after SIGCONT.
    let streaming_again = "select count(*) from replication_sample
                            where sample -> 'receiver' ->> 'state' = 'streaming'";
    wait_for(&env, streaming_again, "1", 60, &agent);
    let stalls_before: i64 = env
        .sql("select (sample -> 'receiver' ->> 'stalls')::int from replication_sample")
        .parse()
        .unwrap();
    {
        let _frozen = Frozen::freeze(&node);
        wait_until("a stall of the frozen node", 40, &[&agent], || {
            env.sql("select (sample -> 'receiver' ->> 'stalls')::int from replication_sample")
                .parse::<i64>()
                .unwrap()
                > stalls_before
        });
        let s = status(&env, "127.0.0.1");
        let n = section(&s, "node");
        assert_eq!(n[0]["state"], "not answering", "{s:?}");
        let log = agent.log();
        assert!(log.contains("did not answer"), "{log}");
    }
    let newer = switch(&node);
    wait_for(
        &env,
        &format!(
            "select count(*) from wal_object where kind = 'full' and segno = {}",
            newer - 1
        ),
        "1",
        90,
        &agent,
    );
    wait_for(&env, streaming_again, "1", 60, &agent);
    // One stall episode after another without 30 s of streaming in between is one alert; the
    // condition clears once the receiver has streamed for 30 s.
    wait_for(&env, &open("WAL_RECEIVER_DOWN"), "0", 90, &agent);
    assert!(
        env.sql("select count(*) from alert")
            .parse::<i64>()
            .unwrap()
            >= first_alerts.parse::<i64>().unwrap()
    );
    let m = agent.http_get("/metrics");
    assert!(
        metric(
            &m,
            "pgbackman_agent_wal_receiver_stalls_total",
            ("archive", "1")
        )
        .unwrap()
            >= 2.0,
        "{m}"
    );
}
