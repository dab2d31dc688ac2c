//! libpq's sslmode rules against real TLS clusters (testkit, openssl-made CA): what connects,
//! over TLS or not, and what each refusal says.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgbackman_config::ConnConfig;
use pgbackman_testkit::TestCluster;
use pgbackman_testkit::tls::{Hba, TlsCluster};

/// Resolves `conninfo` with only HOME (none: no ~/.postgresql files) and `vars`.
fn cfg(conninfo: &str, vars: &[(&str, &str)]) -> ConnConfig {
    let mut m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.entry("HOME".into())
        .or_insert_with(|| "/nonexistent-home".into());
    m.insert("USER".into(), "postgres".into());
    m.insert("PGPASSFILE".into(), "/nonexistent".into());
    pgbackman_config::resolve_conninfo(conninfo, &move |k: &str| m.get(k).cloned()).unwrap()
}

/// Connects; Ok(whether the session is over TLS) or the described error.
async fn try_connect(c: &ConnConfig) -> Result<bool, String> {
    let client = pgbackman_db::tls::connect(c, "test server")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "current_thread")]
async fn sslmodes_against_a_tls_server() {
    let pg = TlsCluster::start(&["127.0.0.2"], &["127.0.0.2"], Hba::Any);
    let tcp = pg.tcp_conninfo("127.0.0.2", "postgres");
    let ca = pg.files.ca.display().to_string();
    let other = pg.files.other_ca.display().to_string();
    let over = |extra: &str| cfg(&format!("{tcp} {extra}"), &[]);

    assert_eq!(try_connect(&over("sslmode=disable")).await, Ok(false));
    // allow: plain first, and the server accepts it.
    assert_eq!(try_connect(&over("sslmode=allow")).await, Ok(false));
    assert_eq!(try_connect(&over("sslmode=prefer")).await, Ok(true));
    // require without a root certificate file: encrypted, not verified.
    assert_eq!(try_connect(&over("sslmode=require")).await, Ok(true));
    assert_eq!(
        try_connect(&over(&format!("sslmode=verify-ca sslrootcert={ca}"))).await,
        Ok(true)
    );
    assert_eq!(
        try_connect(&over(&format!("sslmode=verify-full sslrootcert={ca}"))).await,
        Ok(true)
    );
    // The root file from the environment, the libpq way.
    assert_eq!(
        try_connect(&cfg(
            &format!("{tcp} sslmode=verify-full"),
            &[("PGSSLROOTCERT", &ca)]
        ))
        .await,
        Ok(true)
    );
    // The default ~/.postgresql/root.crt.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(&pg.files.ca, home.path().join(".postgresql/root.crt")).unwrap();
    let h = home.path().display().to_string();
    assert_eq!(
        try_connect(&cfg(&format!("{tcp} sslmode=verify-full"), &[("HOME", &h)])).await,
        Ok(true)
    );

    // A certificate not signed by the root certificate.
    let e = try_connect(&over(&format!("sslmode=verify-ca sslrootcert={other}")))
        .await
        .unwrap_err();
    assert!(
        e.contains("not signed by a CA in the root certificate file")
            && e.contains(&other)
            && e.contains("HINT")
            && e.contains("sslmode=require"),
        "{e}"
    );
    // libpq's rule: require verifies when a root certificate file exists.
    let e = try_connect(&over(&format!("sslmode=require sslrootcert={other}")))
        .await
        .unwrap_err();
    assert!(e.contains("not signed by"), "{e}");
    // prefer falls back to plain when the TLS attempt fails, as libpq does.
    assert_eq!(
        try_connect(&over(&format!("sslmode=prefer sslrootcert={other}"))).await,
        Ok(false)
    );

    // verify-full checks the host name; verify-ca does not.
    let wrong = format!(
        "host=wrong.example.org hostaddr=127.0.0.2 port={} user=postgres dbname=postgres",
        pg.port()
    );
    let e = try_connect(&cfg(
        &format!("{wrong} sslmode=verify-full sslrootcert={ca}"),
        &[],
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("not valid for the name wrong.example.org (it names 127.0.0.2)")
            && e.contains("127.0.0.2")
            && e.contains("verify-ca"),
        "{e}"
    );
    assert_eq!(
        try_connect(&cfg(
            &format!("{wrong} sslmode=verify-ca sslrootcert={ca}"),
            &[]
        ))
        .await,
        Ok(true)
    );

    // A host name rustls cannot take matters only when it is checked.
    let odd = format!(
        "host=bad..name hostaddr=127.0.0.2 port={} user=postgres dbname=postgres",
        pg.port()
    );
    assert_eq!(
        try_connect(&cfg(
            &format!("{odd} sslmode=verify-ca sslrootcert={ca}"),
            &[]
        ))
        .await,
        Ok(true)
    );
    let e = try_connect(&cfg(
        &format!("{odd} sslmode=verify-full sslrootcert={ca}"),
        &[],
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("\"bad..name\"") && e.contains("verify-ca"),
        "{e}"
    );

    // verify-* without the root file.
    let e = try_connect(&over("sslmode=verify-full")).await.unwrap_err();
    assert!(
        e.contains("root.crt") && e.contains("does not exist") && e.contains("sslrootcert"),
        "{e}"
    );
    let e = try_connect(&over("sslmode=verify-ca sslrootcert=/nonexistent/ca.crt"))
        .await
        .unwrap_err();
    assert!(e.contains("/nonexistent/ca.crt"), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn hostssl_only_server() {
    let pg = TlsCluster::start(&["127.0.0.2"], &["127.0.0.2"], Hba::SslOnly);
    let tcp = pg.tcp_conninfo("127.0.0.2", "postgres");
    let e = try_connect(&cfg(&format!("{tcp} sslmode=disable"), &[]))
        .await
        .unwrap_err();
    assert!(
        e.contains("no encryption")
            && e.contains("accepts only TLS")
            && e.contains("sslmode=require"),
        "{e}"
    );
    // allow: the plain attempt is refused, then TLS.
    assert_eq!(
        try_connect(&cfg(&format!("{tcp} sslmode=allow"), &[])).await,
        Ok(true)
    );
    assert_eq!(
        try_connect(&cfg(&format!("{tcp} sslmode=prefer"), &[])).await,
        Ok(true)
    );
    // A cancel request over TLS reaches a TLS-only server.
    let c = cfg(&format!("{tcp} sslmode=require"), &[]);
    let session = pgbackman_db::introspect::connect(c, None).await.unwrap();
    let t = Instant::now();
    let (r, _) = tokio::join!(session.client.simple_query("select pg_sleep(30)"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        session.cancel_query().await.unwrap();
    });
    assert!(r.is_err() && t.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "current_thread")]
async fn a_server_without_tls() {
    let pg = TestCluster::start();
    let tcp = pg.tcp_conninfo("127.0.0.1", "postgres");
    assert_eq!(
        try_connect(&cfg(&format!("{tcp} sslmode=prefer"), &[])).await,
        Ok(false)
    );
    let e = try_connect(&cfg(&format!("{tcp} sslmode=require"), &[]))
        .await
        .unwrap_err();
    assert!(
        e.contains("does not support TLS") && e.contains("sslmode=prefer"),
        "{e}"
    );
    // No TLS over a unix socket, whatever the mode (libpq does not try either).
    assert_eq!(
        try_connect(&cfg(
            &format!("{} sslmode=verify-full", pg.conninfo("postgres")),
            &[]
        ))
        .await,
        Ok(false)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn client_certificates() {
    let pg = TlsCluster::start(&["127.0.0.2"], &["127.0.0.2"], Hba::ClientCert);
    let tcp = pg.tcp_conninfo("127.0.0.2", "postgres");
    let f = &pg.files;
    let (crt, key) = (
        f.client_cert.display().to_string(),
        f.client_key.display().to_string(),
    );
    let ca = f.ca.display().to_string();
    assert_eq!(
        try_connect(&cfg(
            &format!("{tcp} sslmode=verify-full sslrootcert={ca} sslcert={crt} sslkey={key}"),
            &[]
        ))
        .await,
        Ok(true)
    );
    // From the environment.
    assert_eq!(
        try_connect(&cfg(
            &format!("{tcp} sslmode=require"),
            &[("PGSSLCERT", &crt), ("PGSSLKEY", &key)]
        ))
        .await,
        Ok(true)
    );
    // Without a certificate the server refuses, and the message says what to give.
    let e = try_connect(&cfg(&format!("{tcp} sslmode=require"), &[]))
        .await
        .unwrap_err();
    assert!(e.contains("sslcert"), "{e}");
    // A key others can read is refused before anything is sent.
    let loose = f.dir.join("loose.key");
    std::fs::copy(&f.client_key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = try_connect(&cfg(
        &format!(
            "{tcp} sslmode=require sslcert={crt} sslkey={}",
            loose.display()
        ),
        &[],
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("group or world access") && e.contains("chmod 0600"),
        "{e}"
    );
    // A certificate without its key.
    let e = try_connect(&cfg(
        &format!("{tcp} sslmode=require sslcert={crt} sslkey=/nonexistent.key"),
        &[],
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("/nonexistent.key") && e.contains("sslkey"),
        "{e}"
    );
}

/// What TLS costs per connection (printed, never asserted: timings are not tests).
#[tokio::test(flavor = "current_thread")]
async fn connection_cost() {
    let pg = TlsCluster::start(&["127.0.0.2"], &["127.0.0.2"], Hba::Any);
    let tcp = pg.tcp_conninfo("127.0.0.2", "postgres");
    let ca = pg.files.ca.display().to_string();
    for extra in [
        "sslmode=disable".to_string(),
        "sslmode=require".to_string(),
        format!("sslmode=verify-full sslrootcert={ca}"),
    ] {
        let label = extra.split(' ').next().unwrap_or_default();
        let c = cfg(&format!("{tcp} {extra}"), &[]);
        let n = 20;
        let t = Instant::now();
        for _ in 0..n {
            let client = pgbackman_db::tls::connect(&c, "test server").await.unwrap();
            client.simple_query("select 1").await.unwrap();
        }
        println!(
            "tls: {label:<20} {:.2} ms per connection + select 1",
            t.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
        );
    }
}
