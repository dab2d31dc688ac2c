//! Monitoring: `show_pgbackman_status` (listing, `--nagios` exit statuses, Zabbix discovery)
//! and `pgbackman serve-metrics` read by a real Prometheus text-format parser, against a
//! catalog whose database names hold quotes, backslashes, braces and a newline.
//!
//! The catalog state (an overdue definition, a failed one, a stuck queue, a healthy one) is
//! written with SQL as an agent would have left it: no agent needs to run for a probe to read it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Env, command};
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusType, PrometheusValue};
use serde_json::Value as Json;

/// A database name no label, JSON string or Nagios line may break on.
const HOSTILE: &str = "q\"uo\\te}, x=\"1\"\nline2";

fn sql_literal(s: &str) -> String {
    format!(
        "E'{}'",
        s.replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\n', "\\n")
    )
}

struct Fleet {
    env: Env,
    ok: i64,
    overdue: i64,
    stuck: i64,
}

/// One server, one node, three definitions: OK (hostile name, a verified success an hour ago),
/// overdue (hourly, registered two days ago, last success yesterday), stuck (a job queued an
/// hour ago that no agent took).
fn fleet() -> Fleet {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    env.sql("insert into pgsql_node (hostname, domain_name, pgport, status) values ('pg01', 'example.org', 5432, 'RUNNING')");
    let def = |db: &str, cron: &str, age: &str| -> i64 {
        env.sql(&format!(
            "insert into backup_definition (backup_server_id, pgsql_node_id, dbname, minutes_cron, hours_cron,
                                            registered, status_changed_at)
             select 1, node_id, {}, {cron}, now() - interval '{age}', now() - interval '{age}'
               from pgsql_node returning def_id",
            sql_literal(db)
        ))
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap()
    };
    let ok = def(HOSTILE, "'0', '3'", "1 minute");
    let overdue = def("late", "'0', '*'", "2 days");
    let stuck = def("stuck", "'0', '3'", "1 minute");
    let success = |d: i64, ago: &str| {
        env.sql(&format!(
            "insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                         total_size, execution_status, execution_method, verification_state, verification_level, verified_at)
             select def_id, backup_server_id, pgsql_node_id, dbname, 'FULL', now() - interval '{ago}' - interval '90 seconds',
                    now() - interval '{ago}', 123456, 'SUCCEEDED', 'CRON', 'PASSED', 1, now() - interval '{ago}'
               from backup_definition where def_id = {d}"
        ));
    };
    success(ok, "1 hour");
    success(overdue, "1 day");
    env.sql(&format!(
        "insert into job (kind, backup_server_id, pgsql_node_id, def_id, not_before, registered)
         select 'BACKUP', backup_server_id, pgsql_node_id, def_id, now() - interval '1 hour', now() - interval '1 hour'
           from backup_definition where def_id = {stuck}"
    ));
    Fleet {
        env,
        ok,
        overdue,
        stuck,
    }
}

fn def_row(v: &Json, id: i64) -> &Json {
    v["pgbackman_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["level"] == "definition" && r["defid"] == id)
        .unwrap_or_else(|| panic!("no row for DefID {id}: {v}"))
}

fn set_status(env: &Env, id: i64, status: &str) {
    env.sql(&format!(
        "update backup_definition set job_status = '{status}' where def_id = {id}"
    ));
}

#[test]
fn status_probe_nagios_and_zabbix() {
    let f = fleet();
    let env = &f.env;

    let v = env.json("show_pgbackman_status");
    let rows = v["pgbackman_status"].as_array().unwrap();
    assert_eq!(rows[0]["level"], "fleet");
    assert_eq!(rows[0]["verdict"], "CRITICAL", "{v}");
    assert_eq!(rows[0]["queued"], 1);
    let node = rows.iter().find(|r| r["level"] == "node").unwrap();
    assert_eq!(node["node"], "pg01.example.org");
    assert_eq!(node["verdict"], "CRITICAL");

    let ok = def_row(&v, f.ok);
    assert_eq!(ok["dbname"], HOSTILE, "JSON keeps the exact name");
    assert_eq!(ok["verdict"], "OK");
    assert_eq!(ok["last_status"], "SUCCEEDED");
    let age = ok["success_age_s"].as_i64().unwrap();
    assert!(
        (3590..3700).contains(&age),
        "age of the last success: {age}"
    );
    assert!(ok["next_run"].is_string(), "{ok}");
    assert!(ok["overdue_since"].is_null());

    let late = def_row(&v, f.overdue);
    assert_eq!(late["verdict"], "CRITICAL");
    assert!(late["overdue_since"].is_string(), "{late}");
    assert!(late["reason"].as_str().unwrap().starts_with("overdue"));

    let stuck = def_row(&v, f.stuck);
    assert_eq!(stuck["verdict"], "WARNING");
    assert_eq!(stuck["queued"], 1);
    assert!(
        stuck["reason"].as_str().unwrap().contains("queue"),
        "{stuck}"
    );

    // The table shows the name escaped, one verdict per line.
    let table = env.cmd("show_pgbackman_status").ok().stdout;
    assert!(
        table.contains("CRITICAL") && table.contains("WARNING"),
        "{table}"
    );

    // Nagios: one line, the exit status of the worst verdict.
    let r = env.cmd("show_pgbackman_status --nagios");
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(
        r.stdout
            .starts_with("PGBACKMAN CRITICAL - 1 critical, 1 warning, 0 unknown, 1 ok of 3"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&format!("DefID {} late", f.overdue)));
    assert!(r.stdout.contains("| critical=1 warning=1 unknown=0 ok=1"));

    // The monitoring login needs no more than the readonly role.
    env.sql("create role mon login");
    env.db(&["grant", "mon", "readonly"]).ok();
    let mon = env.conninfo().replace("user=postgres", "user=mon");
    assert!(mon.contains("user=mon"), "{mon}");
    let as_mon = |line: &str| {
        command(env.home.path())
            .args(["--catalog", &mon, "-C", line])
            .output()
            .unwrap()
    };
    let o = as_mon("show_pgbackman_status --nagios");
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = as_mon("show_pgbackman_status --zabbix-discovery definitions");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    set_status(env, f.overdue, "STOPPED");
    let r = env.cmd("show_pgbackman_status --nagios");
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.starts_with("PGBACKMAN WARNING - "), "{}", r.stdout);
    // The threshold of a stuck queue is the operator's.
    let r = env.cmd("show_pgbackman_status --nagios --queue-warning 120");
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.starts_with("PGBACKMAN OK - "), "{}", r.stdout);

    // A catalog that cannot be read is UNKNOWN (3), within the deadline.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let t = Instant::now();
    let o = command(env.home.path())
        .args([
            "--catalog",
            &format!("host=127.0.0.1 port={port} dbname=pgbackman user=x"),
            "-C",
            "show_pgbackman_status --nagios --timeout 3",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.starts_with("PGBACKMAN UNKNOWN - "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // Zabbix low-level discovery, whatever -o says.
    let d = env
        .cmd("show_pgbackman_status --zabbix-discovery nodes")
        .ok()
        .json();
    assert_eq!(
        d,
        serde_json::json!({"data": [{"{#NODEID}": "1", "{#NODE}": "pg01.example.org"}]})
    );
    let d = env
        .cmd_args(
            "show_pgbackman_status --zabbix-discovery definitions",
            &["-o", "csv"],
        )
        .ok()
        .json();
    let data = d["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let mine = data
        .iter()
        .find(|e| e["{#DEFID}"].as_str().and_then(|s| s.parse().ok()) == Some(f.ok))
        .unwrap();
    assert_eq!(mine["{#DBNAME}"], HOSTILE);
    assert_eq!(mine["{#NODE}"], "pg01.example.org");
    assert_eq!(mine["{#SERVER}"], "bs1.example.org");
    env.cmd("show_pgbackman_status --zabbix-discovery servers")
        .fails_with("use nodes or definitions");
}

struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn serve_metrics(env: &Env) -> Served {
    let mut child = command(env.home.path())
        .args([
            "--catalog",
            &env.conninfo(),
            "serve-metrics",
            "--listen",
            "127.0.0.1:0",
            "--refresh-seconds",
            "1",
            "--timeout-seconds",
            "2",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    err.read_line(&mut line).unwrap();
    // Keep reading its log, so that it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Served { child, addr }
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn gauge(v: &PrometheusValue) -> f64 {
    match v {
        PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
        PrometheusValue::Counter(c) => c.value.as_f64(),
        other => panic!("not a gauge: {other:?}"),
    }
}

/// The value of the sample of `family` whose labels include `labels`.
fn value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let m = parse_prometheus(text).unwrap_or_else(|e| panic!("not parsable ({e:?}):\n{text}"));
    let fam = m.families.get(family)?;
    fam.iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| gauge(&s.value))
}

fn wait_scrape(addr: &str, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = scrape(addr);
        if until(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting; last scrape:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn serve_metrics_is_parsable_with_hostile_names_and_survives_the_catalog() {
    let f = fleet();
    let env = &f.env;
    env.sql(&format!(
        "insert into alert (alert_type, backup_server_id, ref_id, dbname) values ('OVERDUE', 1, {}, 'late')",
        f.overdue
    ));
    // The agent of bs1 heartbeats from Tokyo: its schedules fire there.
    env.sql(
        "insert into agent_status (server_id, agent_name, last_seen, health, time_zone)
         values (1, 'bs1.example.org', now() - interval '10 seconds', 'online', 'Asia/Tokyo')",
    );
    let served = serve_metrics(env);
    let text = wait_scrape(&served.addr, |t| t.contains("\npgbackman_catalog_up 1\n"));

    // A real text-format parser reads it all, and the hostile name comes back intact.
    let m = parse_prometheus(&text).unwrap();
    let fam = m
        .families
        .get("pgbackman_definition_last_success_timestamp_seconds")
        .unwrap_or_else(|| {
            panic!(
                "families: {:?}\n{text}",
                m.families.keys().collect::<Vec<_>>()
            )
        });
    assert_eq!(fam.family_type, PrometheusType::Gauge);
    let id = f.ok.to_string();
    let success = value(
        &text,
        "pgbackman_definition_last_success_timestamp_seconds",
        &[
            ("def_id", &id),
            ("dbname", HOSTILE),
            ("node", "pg01.example.org"),
        ],
    )
    .unwrap_or_else(|| panic!("no sample for the hostile name:\n{text}"));
    let expected = env.sql(&format!(
        "select extract(epoch from finished) from backup_catalog where def_id = {}",
        f.ok
    ));
    let expected: f64 = expected.parse().unwrap();
    assert!((success - expected).abs() < 0.01, "{success} vs {expected}");
    let one = [("def_id", id.as_str())];
    let verified = value(
        &text,
        "pgbackman_definition_last_verified_timestamp_seconds",
        &one,
    )
    .unwrap();
    assert!((verified - expected).abs() < 0.01);
    assert_eq!(
        value(&text, "pgbackman_definition_last_size_bytes", &one),
        Some(123456.0)
    );
    assert_eq!(
        value(&text, "pgbackman_definition_last_duration_seconds", &one),
        Some(90.0)
    );
    let next = value(
        &text,
        "pgbackman_definition_expected_next_run_timestamp_seconds",
        &one,
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(next > now && next <= now + 86_400.0, "next run {next}");
    // 03:00 in the agent's zone (Asia/Tokyo, UTC+9) is 18:00 UTC.
    assert_eq!(next as i64 % 86_400, 18 * 3600, "next run {next}");
    let late = f.overdue.to_string();
    let late = [("def_id", late.as_str())];
    assert_eq!(
        value(&text, "pgbackman_definition_overdue", &late),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "pgbackman_definition_status", &late),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "pgbackman_definition_overdue", &one),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "pgbackman_jobs",
            &[
                ("server", "bs1.example.org"),
                ("kind", "BACKUP"),
                ("state", "QUEUED")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "pgbackman_jobs",
            &[
                ("server", "bs1.example.org"),
                ("kind", "BACKUP"),
                ("state", "RUNNING")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "pgbackman_alerts",
            &[("state", "QUEUED"), ("type", "OVERDUE")]
        ),
        Some(1.0)
    );
    let seen = value(
        &text,
        "pgbackman_agent_last_report_timestamp_seconds",
        &[("server", "bs1.example.org")],
    )
    .unwrap();
    assert!(seen >= expected - 0.01, "last report {seen}");
    let hb = value(
        &text,
        "pgbackman_agent_last_seen_timestamp_seconds",
        &[("server", "bs1.example.org")],
    )
    .unwrap();
    assert!((now - hb - 10.0).abs() < 30.0, "heartbeat {hb}");
    let state = |s: &str| {
        value(
            &text,
            "pgbackman_agent_state",
            &[("server", "bs1.example.org"), ("state", s)],
        )
    };
    assert_eq!(state("online"), Some(1.0));
    assert_eq!(state("offline"), Some(0.0));
    assert_eq!(
        value(
            &text,
            "pgbackman_backup_server_running",
            &[("server", "bs1.example.org")]
        ),
        Some(1.0)
    );

    // The catalog goes away: scrapes still answer at once, with the last good figures.
    env.catalog.stop();
    let t = Instant::now();
    let down = wait_scrape(&served.addr, |t| t.contains("\npgbackman_catalog_up 0\n"));
    assert!(t.elapsed() < Duration::from_secs(10));
    let t = Instant::now();
    let again = scrape(&served.addr);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a scrape waited on the catalog"
    );
    assert!(value(&down, "pgbackman_catalog_read_failures_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        value(
            &again,
            "pgbackman_definition_last_success_timestamp_seconds",
            &one
        ),
        Some(success)
    );
}

#[test]
fn serve_metrics_starts_without_a_catalog_and_warns_off_loopback() {
    let home = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let catalog = format!(
        "host=127.0.0.1 port={} dbname=pgbackman user=x",
        dead.local_addr().unwrap().port()
    );
    drop(dead);
    let o = command(home.path())
        .args([
            "--catalog",
            &catalog,
            "serve-metrics",
            "--listen",
            "localhost",
        ])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not an address such as 127.0.0.1:9188"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut child = command(home.path())
        .args([
            "--catalog",
            &catalog,
            "serve-metrics",
            "--listen",
            "0.0.0.0:0",
            "--refresh-seconds",
            "1",
            "--timeout-seconds",
            "1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let (mut warning, mut started) = (String::new(), String::new());
    err.read_line(&mut warning).unwrap();
    err.read_line(&mut started).unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let port = started
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.rsplit(':').next())
        .unwrap_or_else(|| panic!("no address in {started:?}"))
        .to_string();
    let served = Served {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    assert!(
        warning.contains("[WARNING]") && warning.contains("not on loopback"),
        "{warning}"
    );
    // No catalog from the start: it serves its own state, and no fleet figure.
    let text = wait_scrape(&served.addr, |t| {
        value(t, "pgbackman_catalog_read_failures_total", &[]).unwrap_or(0.0) >= 1.0
    });
    assert_eq!(value(&text, "pgbackman_catalog_up", &[]), Some(0.0));
    assert!(!text.contains("pgbackman_definition_"), "{text}");
}
