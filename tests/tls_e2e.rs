//! TLS end to end, real binaries and real TLS clusters (testkit, a private CA made with openssl):
//! the shell on a catalog that accepts only TLS (verify-full), the refusals and what they say,
//! and an agent backing up TLS-only nodes with sslmode=require and verify-ca.

mod common;

use std::path::Path;

use common::agent::{Agent, wait_for};
use common::{Env, Run, command};
use pgbackman_testkit::tls::{Hba, TlsCluster, TlsFiles};

/// An installed catalog on a cluster that accepts TCP connections over TLS only; its certificate
/// names 127.0.0.1. (The fixtures' own queries go through the unix socket.)
fn tls_catalog() -> (Env, TlsFiles) {
    let TlsCluster { cluster, files } =
        TlsCluster::start(&["127.0.0.1"], &["127.0.0.1"], Hba::SslOnly);
    let env = Env {
        catalog: cluster,
        home: tempfile::tempdir().unwrap(),
    };
    env.db(&["init"]).ok();
    (env, files)
}

fn tcp(env: &Env, host: &str) -> String {
    env.catalog.tcp_conninfo(host, "pgbackman")
}

/// `pgbackman --catalog <catalog> <args>` with `vars` in its (otherwise clean) environment.
fn shell(env: &Env, catalog: &str, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut c = command(env.home.path());
    c.arg("--catalog").arg(catalog).args(args);
    c.envs(vars.iter().copied());
    let o = c.output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn shell_on_a_tls_only_catalog() {
    let (env, files) = tls_catalog();
    let ca = files.ca.display().to_string();
    let full = format!(
        "{} sslmode=verify-full sslrootcert={ca}",
        tcp(&env, "127.0.0.1")
    );
    shell(
        &env,
        &full,
        &["-C", "register_backup_server bs1 example.org x"],
        &[],
    )
    .ok();
    let out = shell(
        &env,
        &full,
        &["-C", "show_backup_servers", "-o", "csv"],
        &[],
    )
    .ok();
    assert!(out.stdout.contains("bs1.example.org"), "{}", out.stdout);
    shell(&env, &full, &["db", "status"], &[]).ok();
    // The root certificate from PGSSLROOTCERT, as libpq takes it; the mode from PGSSLMODE.
    shell(
        &env,
        &tcp(&env, "127.0.0.1"),
        &["-C", "show_backup_servers"],
        &[("PGSSLROOTCERT", &ca), ("PGSSLMODE", "verify-full")],
    )
    .ok();
    // A URI works the same.
    let uri = format!(
        "postgresql://postgres@127.0.0.1:{}/pgbackman?sslmode=verify-full&sslrootcert={ca}",
        env.catalog.port()
    );
    shell(&env, &uri, &["-C", "show_backup_servers"], &[]).ok();
    // require without a root certificate: encrypted, not verified.
    let require = format!("{} sslmode=require", tcp(&env, "127.0.0.1"));
    shell(&env, &require, &["-C", "show_backup_servers"], &[]).ok();
}

#[test]
fn tls_refusals_say_what_to_do() {
    let (env, files) = tls_catalog();
    let port = env.catalog.port();
    // The certificate names 127.0.0.1, not localhost: verify-full refuses, verify-ca accepts.
    let by_name = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=pgbackman sslrootcert={}",
        files.ca.display()
    );
    let r = shell(
        &env,
        &format!("{by_name} sslmode=verify-full"),
        &["-C", "show_backup_servers"],
        &[],
    )
    .fails_with(
        "the server certificate of localhost is not valid for the name localhost (it names 127.0.0.1)",
    );
    assert!(r.stderr.contains("sslmode=verify-ca"), "{}", r.stderr);
    shell(
        &env,
        &format!("{by_name} sslmode=verify-ca"),
        &["-C", "show_backup_servers"],
        &[],
    )
    .ok();
    // Signed by another CA.
    let other = files.other_ca.display().to_string();
    shell(
        &env,
        &format!(
            "{} sslmode=verify-ca sslrootcert={other}",
            tcp(&env, "127.0.0.1")
        ),
        &["-C", "show_backup_servers"],
        &[],
    )
    .fails_with(&format!(
        "is not signed by a CA in the root certificate file {other}"
    ));
    // A TLS-only server refuses a plain connection, and the message says which sslmode to use.
    let r = shell(
        &env,
        &format!("{} sslmode=disable", tcp(&env, "127.0.0.1")),
        &["-C", "show_backup_servers"],
        &[],
    )
    .fails_with("no encryption");
    assert!(
        r.stderr.contains("accepts only TLS") && r.stderr.contains("sslmode=require"),
        "{}",
        r.stderr
    );
    // verify-full without any root certificate file: the default path is named.
    shell(
        &env,
        &format!("{} sslmode=verify-full", tcp(&env, "127.0.0.1")),
        &["-C", "show_backup_servers"],
        &[],
    )
    .fails_with(".postgresql/root.crt (the default) does not exist");
    // sslrootcert=system asks for verify-full (libpq 16's rule).
    shell(
        &env,
        &format!(
            "{} sslmode=require sslrootcert=system",
            tcp(&env, "127.0.0.1")
        ),
        &["-C", "show_backup_servers"],
        &[],
    )
    .fails_with("may not be used with sslrootcert=system");
}

#[test]
fn agent_backs_up_tls_only_nodes_with_require_and_verify_ca() {
    let (env, files) = tls_catalog();
    // Node a: certificate for its address; node b: for a name that is not its address, so
    // only verify-ca (chain, no host name) accepts it.
    let a = TlsCluster::start(&["127.0.0.2"], &["127.0.0.2"], Hba::SslOnly);
    let b = TlsCluster::start(&["127.0.0.3"], &["db.example.org"], Hba::SslOnly);
    for (n, db) in [(&a, "shop"), (&b, "crm")] {
        n.create_database(db);
        n.psql(
            db,
            "create table t as select g as id from generate_series(1, 100) g",
        );
    }
    env.cmd("register_backup_server bs1 example.org x").ok();
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.2 \"\" {} postgres RUNNING a --sslmode require",
        a.port()
    ))
    .ok();
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.3 \"\" {} postgres RUNNING b --sslmode verify-full",
        b.port()
    ))
    .ok();
    // The shell checks node b's host name with verify-full, and says so.
    let b_ca = b.files.ca.display().to_string();
    let r = shell(
        &env,
        &env.conninfo(),
        &[
            "-C",
            "register_backup_definition bs1.example.org 127.0.0.3 crm \"\" 0 3",
        ],
        &[("PGSSLROOTCERT", &b_ca)],
    )
    .fails_with("is not valid for the name 127.0.0.3 (it names db.example.org)");
    assert!(r.stderr.contains("verify-ca"), "{}", r.stderr);
    env.cmd("update_pgsql_node 127.0.0.3 \"\" \"\" \"\" \"\" --sslmode verify-ca")
        .ok();
    shell(
        &env,
        &env.conninfo(),
        &[
            "-C",
            "register_backup_definition bs1.example.org 127.0.0.3 crm \"\" 0 3",
        ],
        &[("PGSSLROOTCERT", &b_ca)],
    )
    .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();

    // The agent reaches the catalog over TLS (verify-full) too.
    let catalog = format!(
        "{} sslmode=verify-full sslrootcert={}",
        tcp(&env, "127.0.0.1"),
        files.ca.display()
    );
    // First without any root certificate for the nodes: require encrypts without checking,
    // verify-ca cannot check and refuses, naming the file it looked for.
    let home = tempfile::tempdir().unwrap();
    let h = home.path().display().to_string();
    let mut agent = Agent::start_with_catalog(&catalog, "bs1.example.org", &[("HOME", &h)]);
    env.cmd("run_backup_definition_now 1").ok();
    env.cmd("run_backup_definition_now 2").ok();
    let status = "select string_agg(def_id || ':' || execution_status, ',' order by def_id, bck_id) from backup_catalog";
    wait_for(&env, status, "1:ERROR,2:SUCCEEDED", 60, &agent);
    let err = env.sql("select error_message from backup_catalog where def_id = 1");
    assert!(
        err.contains(&format!(
            "{h}/.postgresql/root.crt (the default) does not exist"
        )) && err.contains("sslmode=verify-ca"),
        "{err}"
    );
    assert!(agent.sigterm().success(), "{}", agent.log());

    // Then with both nodes' CAs in PGSSLROOTCERT (for our connections and pg_dump's alike):
    // verify-ca passes, and require now verifies (libpq's rule) and passes too.
    let bundle = home.path().join("nodes-ca.crt");
    let ca_text = [&a.files.ca, &b.files.ca]
        .map(|p| std::fs::read_to_string(p).unwrap())
        .concat();
    std::fs::write(&bundle, ca_text).unwrap();
    let agent = Agent::start_with_catalog(
        &catalog,
        "bs1.example.org",
        &[
            ("HOME", &h),
            ("PGSSLROOTCERT", &bundle.display().to_string()),
        ],
    );
    env.cmd("run_backup_definition_now 1").ok();
    env.cmd("run_backup_definition_now 2").ok();
    wait_for(
        &env,
        status,
        "1:ERROR,1:SUCCEEDED,2:SUCCEEDED,2:SUCCEEDED",
        60,
        &agent,
    );
    // The sets are complete (verified at level 2 by the agent).
    let dir = env.sql(
        "select backup_dir from backup_catalog where def_id = 1 and execution_status = 'SUCCEEDED'",
    );
    assert!(Path::new(&dir).join("manifest.json").is_file(), "{dir}");
    assert!(dir.starts_with(&agent.backups().display().to_string()));
    let log = agent.log();
    assert!(
        !log.contains("LISTEN connection to the catalog lost"),
        "{log}"
    );
}
