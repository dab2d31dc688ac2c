//! Deadlines of node connections: a server that accepts and never answers is given up at the
//! connect timeout, whichever phase it stops in, and the message says the phase and the
//! setting; a statement of ours that does not finish in time is cancelled on the server.

use std::time::{Duration, Instant};

use pgbackman_config::{ConnConfig, NodeTimeouts, NodesSection};
use pgbackman_testkit::{Silence, SilentNode, TestCluster};

fn timeouts(connect: u64, statement: u64) -> NodeTimeouts {
    let s = NodesSection {
        connect_timeout: Some(connect),
        statement_timeout: Some(statement),
        ..NodesSection::default()
    };
    NodeTimeouts::resolve(
        &s,
        Some(std::path::Path::new("/etc/pgbackman/test.toml")),
        &|_| None,
    )
    .unwrap()
}

fn node(port: u16, sslmode: &str) -> ConnConfig {
    let env = |k: &str| match k {
        "HOME" => Some("/nonexistent-home".to_string()),
        "USER" => Some("postgres".to_string()),
        _ => None,
    };
    let mut c = pgbackman_config::node_config_with(
        "127.0.0.1",
        port,
        "postgres",
        "postgres",
        sslmode,
        &env,
    )
    .unwrap()
    .config;
    timeouts(1, 1).apply(&mut c);
    c
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_server_is_given_up_at_the_connect_timeout_naming_the_phase() {
    let cases = [
        (
            Silence::AtOnce,
            "disable",
            "to the startup message (startup and authentication)",
        ),
        (
            Silence::AtOnce,
            "require",
            "to the TLS request or the startup message",
        ),
        (
            Silence::AfterStartup,
            "prefer",
            "to the TLS request or the startup message",
        ),
        (Silence::AfterStartup, "disable", "to the startup message"),
        (
            Silence::InTlsHandshake,
            "require",
            "during the TLS handshake",
        ),
    ];
    // Concurrently: each case waits out its 1 s deadlines.
    let mut tasks = Vec::new();
    for (silence, sslmode, phase) in cases {
        tasks.push(tokio::spawn(async move {
            let n = SilentNode::start(silence);
            let cfg = node(n.port(), sslmode);
            let t = Instant::now();
            let e = pgbackman_db::node::node_facts(cfg, &format!("silent:{}", n.port()))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{silence:?} {sslmode}: {:?}",
                t.elapsed()
            );
            assert!(e.contains(&format!("PgSQL node silent:{}", n.port())), "{e}");
            assert!(e.contains(phase), "{silence:?} {sslmode}: {e}");
            assert!(
                e.contains(
                    "within the connect timeout (1 s, set by [nodes] connect_timeout in /etc/pgbackman/test.toml)"
                ),
                "{e}"
            );
            // The executor's sessions (pgbackman-dump) and the restore probe take the same path.
            let e = pgbackman_db::introspect::connect(node(n.port(), sslmode), None)
                .await
                .err()
                .unwrap();
            assert!(e.contains(phase) && e.contains("[nodes] connect_timeout"), "{e}");
            let e = pgbackman_db::restore::target::probe(node(n.port(), sslmode), "t")
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(phase), "{e}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_statement_past_its_deadline_is_cancelled_on_the_server() {
    let pg = TestCluster::start();
    let mut cfg = ConnConfig::from(
        pg.tcp_conninfo("127.0.0.1", "postgres")
            .parse::<tokio_postgres::Config>()
            .unwrap(),
    );
    timeouts(5, 1).apply(&mut cfg);
    let session = pgbackman_db::introspect::connect(cfg, None).await.unwrap();
    let t = Instant::now();
    let slow = async {
        session
            .client
            .simple_query("select pg_sleep(30)")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let e = session.bounded("sleeping", slow).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(
        e.contains(&format!(
            "no answer from 127.0.0.1:{} while sleeping",
            pg.port()
        )) && e.contains(
            "statement timeout (1 s, set by [nodes] statement_timeout in /etc/pgbackman/test.toml)"
        ),
        "{e}"
    );
    // The cancel request reached the server: the sleep is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = pg.psql(
            "postgres",
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
        );
        if n == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "the statement still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
}
