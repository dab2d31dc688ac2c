//! Alerts end to end: real `pgbackman` and `pgbackman-agent` binaries, a catalog cluster, a node
//! cluster, and a real SMTP server process on loopback (Python's aiosmtpd, installed by
//! `.ci/run`) that stores every message it receives; the tests read those messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::agent::{Agent, Site, fake_bin, wait_for, wait_for_agents};

/// An SMTP server: aiosmtpd's Controller with a handler that writes each message as JSON
/// (envelope, data, whether the session was TLS and logged in) into a directory.
const SMTP_SERVER: &str = r#"
import json, os, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, outdir = int(sys.argv[1]), sys.argv[2]
cert = key = login = None
args = sys.argv[3:]
while args:
    if args[0] == '--tls':
        cert, key = args[1], args[2]; args = args[3:]
    elif args[0] == '--login':
        login = args[1]; args = args[2:]
    else:
        sys.exit('unknown argument ' + args[0])

class Store:
    n = 0
    async def handle_DATA(self, server, session, envelope):
        Store.n += 1
        rec = {'mail_from': envelope.mail_from, 'rcpt_tos': envelope.rcpt_tos,
               'data': envelope.content.decode('utf-8', 'replace'),
               'tls': session.ssl is not None, 'authenticated': bool(session.authenticated)}
        tmp = os.path.join(outdir, '.%04d.tmp' % Store.n)
        with open(tmp, 'w') as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(outdir, '%04d.json' % Store.n))
        return '250 OK'

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and \
        (auth_data.login.decode() + ':' + auth_data.password.decode()) == login
    return AuthResult(success=ok, handled=False)

kw = {}
if cert:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    kw.update(tls_context=ctx, require_starttls=True)
if login:
    kw.update(authenticator=authenticator, auth_required=True)
c = Controller(Store(), hostname='127.0.0.1', port=port, **kw)
c.start()
open(os.path.join(outdir, '.ready'), 'w').close()
while True:
    time.sleep(3600)
"#;

/// A Python interpreter that has aiosmtpd.
fn python() -> String {
    for p in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p.to_string();
        }
    }
    panic!(
        "no python3 with aiosmtpd: run .ci/install-test-deps, or install it (apt-get install python3-aiosmtpd, or pip install aiosmtpd)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Smtp {
    child: Child,
    dir: PathBuf,
}

impl Smtp {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> Smtp {
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let _ = std::fs::remove_file(dir.join(".ready"));
        let child = Command::new(python())
            .arg(&script)
            .arg(port.to_string())
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !dir.join(".ready").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the SMTP server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Smtp {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Messages received so far, in order.
    fn messages(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of header `name` in a raw message (first occurrence, unfolded).
fn header(data: &str, name: &str) -> Option<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or(data);
    let head = head.replace("\r\n ", " ").replace("\n ", " ");
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn body(data: &str) -> String {
    let b = data
        .split_once("\r\n\r\n")
        .or_else(|| data.split_once("\n\n"))
        .map(|(_, b)| b)
        .unwrap_or("");
    // lettre picks 7bit or quoted-printable; undo soft line breaks and =XX escapes.
    if data.contains("quoted-printable") {
        let b = b.replace("=\r\n", "").replace("=\n", "");
        let bytes = b.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && i + 2 < bytes.len()
                && let Ok(v) = u8::from_str_radix(&b[i + 1..i + 3], 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).replace("\r\n", "\n")
    } else {
        b.replace("\r\n", "\n")
    }
}

/// An agent with `alerts` as its `[agent.alerts]` body (None: no mail), overdue checks every
/// second, and a bin dir.
fn agent(env: &Env, server: &str, alerts: Option<&str>, bin: Option<&Path>) -> Agent {
    let mut extra = "overdue_check_seconds = 1\n".to_string();
    if let Some(a) = alerts {
        extra.push_str(&format!("[agent.alerts]\n{a}\n"));
    }
    Agent::start_with(env, server, bin, &extra)
}

/// The shared site; the node's alerts go to dba@example.org.
fn site() -> Site {
    let s = common::agent::site();
    s.env
        .cmd("update_pgsql_node_config 127.0.0.2 logs_email=dba@example.org")
        .ok();
    s
}

fn plain_smtp(port: u16) -> String {
    format!(
        "smtp_server = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_security = \"none\"\nfrom_address = \"pgbackman <pgbackman@bs1.example.org>\"\ncheck_seconds = 1\nretry_seconds = 1\nmax_retry_seconds = 2\ntimeout_seconds = 5\n"
    )
}

#[test]
fn a_failed_backup_stays_queued_while_smtp_is_down_then_is_mailed() {
    let s = site();
    let port = free_port();
    let failing = fake_bin("echo 'pg_dump: error: simulated failure' >&2; exit 3");
    let a = agent(
        &s.env,
        "bs1.example.org",
        Some(&plain_smtp(port)),
        Some(failing.path()),
    );
    s.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    s.env.cmd("run_backup_definition_now 1").ok();
    // Nobody listens on the port: the alert stays queued, with its attempts and the reason.
    wait_for(
        &s.env,
        "select state = 'QUEUED' and attempts >= 2 and last_error <> '' from alert",
        "t",
        60,
        &a,
    );
    let v = s.env.json("show_alerts all all QUEUED");
    let row = &v["alerts"][0];
    assert_eq!(row["type"], "BACKUP", "{v}");
    assert_eq!(row["send_to"], "dba@example.org");
    assert!(
        row["last_error"].as_str().unwrap().contains("SMTP"),
        "{row}"
    );
    assert!(row["next_attempt"].is_string(), "{row}");
    let table = s.env.cmd("show_alerts").ok();
    assert!(table.stdout.contains("QUEUED"), "{}", table.stdout);

    // The server comes up: the alert is mailed once, with Date and Message-ID.
    let mail = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(port, mail.path(), &[]);
    wait_for(&s.env, "select state from alert", "SENT", 30, &a);
    std::thread::sleep(Duration::from_secs(2));
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = &msgs[0];
    assert_eq!(m["rcpt_tos"], serde_json::json!(["dba@example.org"]));
    assert_eq!(m["mail_from"], "pgbackman@bs1.example.org");
    let data = m["data"].as_str().unwrap();
    assert_eq!(
        header(data, "Subject").as_deref(),
        Some("[pgbackman] Backup of shop on 127.0.0.2 failed (BckID 1)"),
        "{data}"
    );
    // RFC 5322: "Tue, 10 Mar 2026 03:31:00 +0000".
    let date = header(data, "Date").expect("a Date header");
    assert!(
        date.len() >= 29 && date.as_bytes()[3] == b',' && date.contains(':'),
        "{date}"
    );
    let id = header(data, "Message-ID").expect("a Message-ID header");
    assert!(
        id.starts_with("<pgbackman.alert.1.") && id.ends_with("@bs1.example.org>"),
        "{id}"
    );
    assert_eq!(header(data, "To").as_deref(), Some("dba@example.org"));
    let text = body(data);
    assert!(
        text.contains("pgbackman -C \"show_backup_details 1\""),
        "{text}"
    );
    assert!(text.contains("simulated failure"), "{text}");
    assert!(text.contains("bs1.example.org (SrvID 1)"), "{text}");
    assert!(!text.contains("{{"), "{text}");
    // The catalog records which message it was.
    let v = s.env.json("show_alerts all 127.0.0.2 SENT --type BACKUP");
    assert_eq!(v["alerts"][0]["message_id"], id.as_str(), "{v}");
    assert!(v["alerts"][0]["sent_at"].is_string());
    let _ = &s.node;
}

#[test]
fn a_lost_job_is_mailed_by_another_agent_and_no_alert_is_mailed_twice() {
    let s = site();
    let port = free_port();
    let mail = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(port, mail.path(), &[]);
    let slow = fake_bin("sleep 60; exec /usr/lib/postgresql/15/bin/pg_dump \"$@\"");
    let mut a1 = agent(
        &s.env,
        "bs1.example.org",
        Some(&plain_smtp(port)),
        Some(slow.path()),
    );
    let a2 = agent(&s.env, "bs2.example.org", Some(&plain_smtp(port)), None);
    s.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    s.env.cmd("run_backup_definition_now 1").ok();
    wait_for(&s.env, "select state from job", "RUNNING", 30, &a1);
    // The agent of bs1 dies and never comes back: after its lease, bs2 marks the job lost and,
    // bs1 being gone, mails the alert itself.
    a1.sigkill();
    wait_for(
        &s.env,
        "select string_agg(alert_type || ' ' || state, ',') from alert",
        "LOST_JOB SENT",
        40,
        &a2,
    );
    assert!(
        s.env
            .sql("select claimed_by from alert")
            .starts_with("bs2.example.org:"),
    );
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    let data = msgs[0]["data"].as_str().unwrap();
    let subject = header(data, "Subject").unwrap();
    assert!(
        subject.contains("Job 1") && subject.contains("was lost"),
        "{subject}"
    );
    assert!(body(data).contains("show_jobs_queue bs1.example.org --all"));

    // Two agents with mail and many alerts of no particular server: each is mailed once.
    let a1 = agent(&s.env, "bs1.example.org", Some(&plain_smtp(port)), None);
    s.env.sql(
        "insert into alert (alert_type, pgsql_node_id, dbname, execution_status, error_message, sendto)
         select 'QUARANTINE', 1, 'db' || g, 'QUARANTINE', 'test ' || g, 'ops@example.org' from generate_series(1, 40) g",
    );
    wait_for_agents(
        &s.env,
        "select count(*) from alert where state = 'SENT'",
        "41",
        60,
        &[&a1, &a2],
    );
    std::thread::sleep(Duration::from_secs(2));
    let msgs = smtp.messages();
    let ids: std::collections::BTreeSet<String> = msgs
        .iter()
        .map(|m| header(m["data"].as_str().unwrap(), "Message-ID").unwrap())
        .collect();
    assert_eq!(msgs.len(), 41, "every alert mailed exactly once");
    assert_eq!(ids.len(), 41);
    let by: Vec<String> = s
        .env
        .sql("select string_agg(distinct split_part(claimed_by, ':', 1), ',') from alert")
        .split(',')
        .map(str::to_string)
        .collect();
    assert!(!by.is_empty(), "{by:?}");
}

#[test]
fn a_silent_agent_is_alerted_by_the_other_and_is_online_again_when_back() {
    let s = site();
    let port = free_port();
    let mail = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(port, mail.path(), &[]);
    // bs1's agent mails in its own zone; bs2's agent goes silent past a short threshold.
    let mail_cfg = format!(
        "time_zone = \"Europe/Oslo\"\n[agent.alerts]\n{}",
        plain_smtp(port)
    );
    let a1 = Agent::start_with(&s.env, "bs1.example.org", None, &mail_cfg);
    let mut a2 = agent(&s.env, "bs2.example.org", None, None);
    s.env
        .cmd("update_backup_server_config bs2.example.org agent_not_seen_threshold=3s")
        .ok();
    s.env
        .cmd("register_backup_definition bs2.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    wait_for_agents(
        &s.env,
        "select string_agg(health, ',') from agent_status",
        "online,online",
        20,
        &[&a1, &a2],
    );
    a2.sigkill();
    wait_for(
        &s.env,
        "select string_agg(alert_type || ' ' || state, ',') from alert",
        "AGENT_NOT_SEEN SENT",
        30,
        &a1,
    );
    let v = s.env.json("show_backup_servers");
    let bs2 = &v["backup_servers"][1];
    assert_eq!(
        (bs2["fqdn"].as_str(), bs2["agent"].as_str()),
        (Some("bs2.example.org"), Some("offline")),
        "{v}"
    );
    assert_eq!(v["backup_servers"][0]["agent"], "online", "{v}");
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["rcpt_tos"], serde_json::json!(["dba@example.org"]));
    let data = msgs[0]["data"].as_str().unwrap();
    assert_eq!(
        header(data, "Subject").as_deref(),
        Some("[pgbackman] The agent on bs2.example.org is not seen any more"),
        "{data}"
    );
    let text = body(data);
    assert!(text.contains("has sent no heartbeat for"), "{text}");
    assert!(text.contains("systemctl status pgbackman-agent"), "{text}");
    // Times in the mailing agent's zone, the zone named.
    assert!(text.contains("(Europe/Oslo)"), "{text}");

    // A job queued now says that nobody runs it, at once and in the queue.
    let run = s.env.cmd("run_backup_definition_now 1").ok();
    assert!(
        run.stderr.contains(
            "[WARNING] the agent of backup server bs2.example.org has not been seen since"
        ),
        "{}",
        run.stderr
    );
    let q = s.env.json("show_jobs_queue");
    assert!(
        q["jobs_queue"][0]["agent_warning"]
            .as_str()
            .is_some_and(|w| w.contains("has not been seen since")),
        "{q}"
    );
    // Still silent: no second alert for the same silence.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.env.sql("select count(*) from alert"), "1");

    // Back: online again, the job runs, the warning is gone.
    a2.spawn(None);
    wait_for(
        &s.env,
        "select count(*) from backup_catalog where execution_status = 'SUCCEEDED'",
        "1",
        60,
        &a2,
    );
    let v = s.env.json("show_backup_servers");
    assert_eq!(v["backup_servers"][1]["agent"], "online", "{v}");
    let q = s.env.json("show_jobs_queue all --all");
    assert!(q["jobs_queue"][0]["agent_warning"].is_null(), "{q}");
}

#[test]
fn an_overdue_definition_raises_one_alert_per_episode() {
    let s = site();
    let port = free_port();
    let mail = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(port, mail.path(), &[]);
    // A daily schedule whose instant was about 12 hours ago: overdue past the default grace
    // (4 hours) once the definition is two days old, and no fire during the test.
    let hour = s
        .env
        .sql("select (extract(hour from now() at time zone 'UTC')::int + 12) % 24");
    s.env
        .cmd(&format!(
            "register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 {hour}"
        ))
        .ok();
    s.env.sql(
        "alter table backup_definition disable trigger bookkeeping;
         update backup_definition set registered = now() - interval '2 days', status_changed_at = now() - interval '2 days';
         alter table backup_definition enable trigger bookkeeping",
    );
    let a = agent(&s.env, "bs1.example.org", Some(&plain_smtp(port)), None);
    wait_for(
        &s.env,
        "select string_agg(alert_type || ' ' || state, ',') from alert",
        "OVERDUE SENT",
        30,
        &a,
    );
    // Checked every second: still one alert for this episode.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.env.sql("select count(*) from alert"), "1", "{}", a.log());
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    let data = msgs[0]["data"].as_str().unwrap();
    assert_eq!(
        header(data, "Subject").as_deref(),
        Some("[pgbackman] Backup of shop on 127.0.0.2 is overdue (DefID 1)")
    );
    let text = body(data);
    assert!(
        text.contains(&format!("\"0 {hour} * * *\"")) && text.contains("(grace period 4h)"),
        "{text}"
    );
    assert!(
        text.contains("no backup of this definition ever succeeded"),
        "{text}"
    );

    // A success ends the episode.
    s.env.cmd("run_backup_definition_now 1").ok();
    wait_for(
        &s.env,
        "select string_agg(execution_status, ',') from backup_catalog",
        "SUCCEEDED",
        60,
        &a,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.env.sql("select count(*) from alert"),
        "1",
        "{}\n{}",
        s.env.sql("select string_agg(alert_type || ': ' || coalesce(error_message, ''), E'\\n') from alert"),
        a.log()
    );
    // As if that success and the first alert were two days old: the instant of 12 hours ago
    // is missing again, a new episode, a second alert.
    s.env.sql(
        "update backup_catalog set started = started - interval '2 days', finished = finished - interval '2 days';
         update alert set registered = registered - interval '3 days'",
    );
    wait_for(
        &s.env,
        "select count(*) from alert where alert_type = 'OVERDUE'",
        "2",
        30,
        &a,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.env
            .sql("select count(*) from alert where alert_type = 'OVERDUE'"),
        "2"
    );
    assert!(
        s.env
            .sql("select error_message from alert order by alert_id desc limit 1")
            .contains("the last successful backup finished"),
    );
    let _ = &s.node;
}

#[test]
fn starttls_with_login_and_a_private_ca() {
    let s = site();
    let port = free_port();
    let mail = tempfile::tempdir().unwrap();
    // A private CA and a server certificate for "localhost" signed by it.
    let p = |n: &str| mail.path().join(n);
    let (ca, cert, key) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(mail.path())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl {args:?} failed");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pgbackman test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let smtp = Smtp::start(
        port,
        &mail.path().join("box"),
        &[
            "--tls",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "--login",
            "alerts:s3cret",
        ],
    );
    let pw = mail.path().join("smtp-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let alerts = format!(
        "smtp_server = \"localhost\"\nsmtp_port = {port}\nsmtp_security = \"starttls\"\nsmtp_ca_file = \"{}\"\nsmtp_user = \"alerts\"\nsmtp_password_file = \"{}\"\nfrom_address = \"pgbackman@bs1.example.org\"\ncheck_seconds = 1\n",
        ca.display(),
        pw.display()
    );
    let failing = fake_bin("echo 'pg_dump: error: simulated failure' >&2; exit 3");
    let a = agent(
        &s.env,
        "bs1.example.org",
        Some(&alerts),
        Some(failing.path()),
    );
    // --check logs in without sending anything.
    let check = a.command().arg("--check").output().unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains(&format!(
            "[OK] SMTP server localhost:{port} (starttls) accepts us"
        )),
        "{out}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    s.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    s.env.cmd("run_backup_definition_now 1").ok();
    wait_for(&s.env, "select state from alert", "SENT", 60, &a);
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["tls"], true);
    assert_eq!(msgs[0]["authenticated"], true);
    // The password is in no log.
    assert!(!a.log().contains("s3cret"));

    // A wrong password: --check says so (the running agent read its password at start), as a
    // warning (the agent starts without mail); --strict fails on it.
    std::fs::write(&pw, "wrong\n").unwrap();
    let check = a.command().arg("--check").output().unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(out.contains("[WARN] SMTP server localhost"), "{out}");
    let check = a.command().args(["--check", "--strict"]).output().unwrap();
    assert!(!check.status.success());
    let _ = &s.node;
}

#[test]
fn a_bad_template_or_password_file_stops_the_agent_at_start() {
    let s = site();
    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join("t.template");
    std::fs::write(&tpl, "Subject: {{sumary}}\n").unwrap();
    let cfg = |extra: &str| {
        format!(
            "smtp_server = \"127.0.0.1\"\nsmtp_security = \"none\"\nfrom_address = \"p@example.org\"\n{extra}"
        )
    };
    let mut a = agent(
        &s.env,
        "bs1.example.org",
        Some(&cfg(&format!("template = \"{}\"", tpl.display()))),
        None,
    );
    let status = a.child.take().unwrap().wait().unwrap();
    assert!(!status.success());
    assert!(
        a.log().contains("unknown placeholder {{sumary}}"),
        "{}",
        a.log()
    );
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut a = agent(
        &s.env,
        "bs1.example.org",
        Some(&cfg(&format!(
            "smtp_user = \"u\"\nsmtp_password_file = \"{}\"",
            pw.display()
        ))),
        None,
    );
    let status = a.child.take().unwrap().wait().unwrap();
    assert!(!status.success());
    assert!(a.log().contains("chmod 0600"), "{}", a.log());
    let _ = &s.node;
}

#[test]
fn show_alerts_filters_and_retry_alerts() {
    let s = site();
    s.env.sql(
        "insert into alert (alert_type, backup_server_id, pgsql_node_id, dbname, execution_status, error_message, sendto, state, attempts, last_error)
         values ('BACKUP', 1, 1, 'shop', 'ERROR', 'x', 'dba@example.org', 'FAILED', 10, '535 auth failed'),
                ('OVERDUE', 2, 1, 'shop', 'OVERDUE', 'y', 'dba@example.org', 'QUEUED', 0, null)",
    );
    let v = s.env.json("show_alerts bs1.example.org");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(v["alerts"][0]["state"], "FAILED");
    let v = s.env.json("show_alerts all all queued");
    assert_eq!(v["alerts"][0]["type"], "OVERDUE");
    let v = s
        .env
        .json("show_alerts all all all --type OVERDUE,BACKUP --limit 1");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
    s.env
        .cmd("show_alerts all all DONE")
        .fails_with("state \"DONE\" is not valid");
    s.env
        .cmd("show_alerts all nosuchnode")
        .fails_with("not registered");
    s.env
        .cmd("retry_alerts 99")
        .fails_with("AlertID 99 does not exist");
    let r = s.env.cmd("retry_alerts 1").ok();
    assert!(r.stdout.contains("1 alert(s) queued"), "{}", r.stdout);
    assert_eq!(
        s.env
            .sql("select state || ' ' || attempts || ' ' || coalesce(last_error, '-') from alert where alert_id = 1"),
        "QUEUED 0 -"
    );
    let r = s.env.cmd("retry_alerts all").ok();
    assert!(r.stdout.contains("No FAILED or EXPIRED"), "{}", r.stdout);
    // Overdue candidates: a node switched off and on again expects nothing from before.
    s.env
        .cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    let since = "select since > now() - interval '1 minute' from api.overdue_candidates(1)";
    s.env.sql(
        "alter table backup_definition disable trigger bookkeeping;
         update backup_definition set registered = now() - interval '2 days', status_changed_at = now() - interval '2 days';
         alter table backup_definition enable trigger bookkeeping",
    );
    assert_eq!(s.env.sql(since), "f");
    s.env
        .cmd("update_pgsql_node 127.0.0.2 \"\" \"\" STOPPED x")
        .ok();
    assert_eq!(
        s.env.sql("select count(*) from api.overdue_candidates(1)"),
        "0"
    );
    s.env
        .cmd("update_pgsql_node 127.0.0.2 \"\" \"\" RUNNING x")
        .ok();
    assert_eq!(s.env.sql(since), "t");
    let csv = s.env.cmd_args("show_alerts", &["-o", "csv"]).ok();
    assert!(
        csv.stdout.starts_with("alertid,registered,type,state"),
        "{}",
        csv.stdout
    );
    let _ = &s.node;
}

#[test]
fn claims_are_fenced_old_alerts_expire_and_only_mailed_ones_are_purged() {
    let s = site();
    s.env.sql(
        "insert into alert (alert_type, backup_server_id, pgsql_node_id, dbname, sendto, registered, next_attempt_at)
         values ('BACKUP', 1, 1, 'shop', 'x@example.org', now() - interval '10 days', now() - interval '10 days'),
                ('BACKUP', 1, 1, 'shop', 'x@example.org', now(), now()),
                ('BACKUP', 2, 1, 'shop', 'x@example.org', now(), now())",
    );
    // Agent a of server 1: the 10-day-old alert expires, the fresh one of server 1 is claimed,
    // server 2's is not (not due long enough for a hand-over).
    let claimed = s.env.sql(
        "select string_agg(alert_id || ':' || attempts || ':' || sendto, ',') from api.claim_alerts(1, 'a', 10, '1 minute', '10 minutes', '7 days')",
    );
    assert_eq!(
        claimed, "2:1:dba@example.org",
        "the node's logs_email as it is now"
    );
    assert_eq!(
        s.env
            .sql("select string_agg(alert_id || ' ' || state, ',' order by alert_id) from alert"),
        "1 EXPIRED,2 QUEUED,3 QUEUED"
    );
    // Claimed: nobody else gets it while the claim holds.
    assert_eq!(
        s.env.sql(
            "select count(*) from api.claim_alerts(1, 'b', 10, '1 minute', '10 minutes', '7 days')"
        ),
        "0"
    );
    // A report of another agent or attempt is dropped; the holder's lands.
    assert_eq!(s.env.sql("select api.alert_sent(2, 'b', 1, '<x>')"), "f");
    assert_eq!(s.env.sql("select api.alert_sent(2, 'a', 2, '<x>')"), "f");
    assert_eq!(
        s.env
            .sql("select api.alert_failed(2, 'a', 1, 'boom', '0 seconds', false)"),
        "QUEUED"
    );
    assert_eq!(
        s.env.sql(
            "select string_agg(alert_id::text, ',') from api.claim_alerts(1, 'b', 10, '1 minute', '10 minutes', '7 days')"
        ),
        "2"
    );
    assert_eq!(s.env.sql("select api.alert_sent(2, 'a', 1, '<x>')"), "f");
    assert_eq!(s.env.sql("select api.alert_sent(2, 'b', 2, '<x>')"), "t");
    // Purge: mailed long ago goes, undelivered stays whatever its age.
    s.env.sql(
        "update alert set sent_at = now() - interval '100 days' where alert_id = 2;
         update alert set state = 'FAILED', backup_server_id = 1, registered = now() - interval '100 days' where alert_id = 3",
    );
    assert_eq!(s.env.sql("select api.purge_sent_alerts(1)"), "1");
    assert_eq!(
        s.env
            .sql("select string_agg(alert_id || ' ' || state, ',' order by alert_id) from alert"),
        "1 EXPIRED,3 FAILED"
    );
    let _ = &s.node;
}

#[test]
fn the_sender_survives_a_catalog_outage() {
    let s = site();
    let port = free_port();
    let mail = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(port, mail.path(), &[]);
    let a = agent(&s.env, "bs1.example.org", Some(&plain_smtp(port)), None);
    std::thread::sleep(Duration::from_secs(2));
    s.env.catalog.stop();
    std::thread::sleep(Duration::from_secs(4));
    s.env.catalog.start_again();
    // An alert that reaches the catalog after the outage (as a replayed report would) is mailed.
    s.env.sql(
        "insert into alert (alert_type, backup_server_id, pgsql_node_id, dbname, execution_status, error_message, sendto)
         values ('BACKUP', 1, 1, 'shop', 'ERROR', 'replayed', 'dba@example.org')",
    );
    wait_for(&s.env, "select state from alert", "SENT", 40, &a);
    assert_eq!(smtp.messages().len(), 1);
    assert!(
        a.log().contains("claiming alerts to mail failed")
            || a.log()
                .contains("overdue check: reading the definitions failed"),
        "{}",
        a.log()
    );
    let _ = &s.node;
}
