//! Every PostgreSQL connection of the Rust code is made here: the catalog pool, the agent's
//! LISTEN connection, the shell's and the agent's node connections, the backup executor's
//! sessions and their cancel requests. TLS is rustls (ring provider, no OpenSSL), with libpq's
//! sslmode rules (<https://www.postgresql.org/docs/15/libpq-ssl.html>):
//!
//! * disable: plain. allow: plain first, TLS if the server refuses the plain connection.
//!   prefer: TLS if the server offers it, plain when the TLS attempt fails (handshake or refusal).
//! * require: TLS; the certificate is checked against the root certificate file only when one
//!   exists (libpq's rule; then require behaves as verify-ca). The same holds for allow and prefer.
//! * verify-ca: the chain against `sslrootcert` (which must exist); the host name is not checked.
//!   verify-full: the chain and the host name. `sslrootcert=system`: the system trust store.
//! * A client certificate (`sslcert`/`sslkey`) is sent when the certificate file exists; its key
//!   must then exist and be private (libpq's permission rule).
//!
//! Unverified modes still check the handshake signatures against the presented certificate.
//! The files are read at each TLS handshake, as libpq does, so renewed certificates are picked up.
//! Unix-socket connections never use TLS (the server does not offer it there; libpq skips it).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use pgbackman_config::tls::SslMode;
use pgbackman_config::{ConnConfig, Limit, RootCert, TlsSettings};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{DbError, describe as describe_plain, server_message};

mod handshake;

use handshake::MakeTls;
pub use handshake::client_config;

/// The TLS stream type of every connection.
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
/// The connection half of every client this module makes (drive it, e.g. `tokio::spawn`).
pub type Connection = tokio_postgres::Connection<Socket, TlsStream>;

/// Connects as libpq would with `cfg`'s sslmode (see the module doc). Errors are tokio-postgres
/// errors; [`describe`] turns them into a message saying what failed and what to do.
pub async fn connect_raw(cfg: &ConnConfig) -> Result<(Client, Connection), tokio_postgres::Error> {
    connect_tracked(cfg, &Progress::default()).await
}

/// How far a connection attempt got, for the message of a connect timeout: tokio-postgres calls
/// the TLS factory once the TCP connection is up, and the TLS connector when the server agreed
/// to TLS.
#[derive(Clone, Default)]
struct Progress(Arc<AtomicU8>);

const TCP_UP: u8 = 1;
const TLS_STARTED: u8 = 2;
const TLS_DONE: u8 = 4;
const ASKS_TLS: u8 = 8;

impl Progress {
    fn set(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::SeqCst);
    }

    /// What the server did not answer, as a phrase after "no answer from HOST".
    fn phase(&self) -> &'static str {
        let p = self.0.load(Ordering::SeqCst);
        if p & TCP_UP == 0 {
            "to the TCP connection (connect)"
        } else if p & TLS_STARTED != 0 && p & TLS_DONE == 0 {
            "during the TLS handshake"
        } else if p & ASKS_TLS != 0 && p & TLS_STARTED == 0 {
            "to the TLS request or the startup message (TLS negotiation, startup and authentication)"
        } else {
            "to the startup message (startup and authentication)"
        }
    }
}

/// A node connection that failed: refused or broken ([`describe`] says why), or not established
/// within its connect deadline.
#[derive(Debug)]
pub enum ConnectError {
    Failed(tokio_postgres::Error),
    TimedOut { phase: &'static str, limit: Limit },
}

/// [`connect_raw`] bounded as a whole (TCP, TLS handshake, startup and authentication) by
/// `cfg.limits.connect` (tokio-postgres' own `connect_timeout` covers the TCP connect only, so
/// a server that accepts and never answers would hang it for ever). Used for every connection
/// to a PgSQL node.
pub async fn connect_bounded(cfg: &ConnConfig) -> Result<(Client, Connection), ConnectError> {
    let progress = Progress::default();
    let Some(limit) = &cfg.limits.connect else {
        return connect_tracked(cfg, &progress)
            .await
            .map_err(ConnectError::Failed);
    };
    match tokio::time::timeout(limit.after, connect_tracked(cfg, &progress)).await {
        Ok(r) => r.map_err(ConnectError::Failed),
        Err(_) => Err(ConnectError::TimedOut {
            phase: progress.phase(),
            limit: limit.clone(),
        }),
    }
}

/// A [`ConnectError`] in words: [`describe`] for a refusal; for a timeout, the address, what the
/// server did not answer, the limit and the setting that controls it.
pub fn describe_connect(e: &ConnectError, cfg: &ConnConfig) -> String {
    match e {
        ConnectError::Failed(e) => describe(e, cfg),
        ConnectError::TimedOut { phase, limit } => {
            let addr = address(cfg);
            format!(
                "timed out: no answer from {addr} {phase} within the connect timeout ({limit})
\
                 HINT: check that {addr} is a PostgreSQL server that is up and not overloaded \
                 (a proxy, a firewall or a stopped server process can accept a connection and \
                 never answer); raise {setting} only if the node is just slow to answer",
                setting = limit.setting,
            )
        }
    }
}

/// `host:port` of the first host (what a timeout message names).
pub fn address(cfg: &ConnConfig) -> String {
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let host = host_label(cfg);
    let host = host.split(',').next().unwrap_or_default();
    match host.contains(':') && !host.starts_with('/') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// Runs `fut`, one statement (or a few) of our own on a node connection, within
/// `cfg.limits.statement`. On time out, asks the server to cancel it (bounded by the connect
/// deadline) and says which node, what and which setting. Unbounded when there is no limit.
pub async fn within_statement_limit<T>(
    cfg: &ConnConfig,
    client: &Client,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, String> {
    let Some(limit) = &cfg.limits.statement else {
        return Ok(fut.await);
    };
    match tokio::time::timeout(limit.after, fut).await {
        Ok(v) => Ok(v),
        Err(_) => {
            let _ = cancel_query(&client.cancel_token(), cfg).await;
            Err(statement_timed_out(cfg, what, limit))
        }
    }
}

/// The message of a statement that hit its deadline.
pub fn statement_timed_out(cfg: &ConnConfig, what: &str, limit: &Limit) -> String {
    format!(
        "timed out: no answer from {} while {what} within the statement timeout ({limit})
\
         HINT: check the node (a stopped or overloaded server, a lock held for long); raise {} \
         only if the node is just slow to answer",
        address(cfg),
        limit.setting
    )
}

async fn connect_tracked(
    cfg: &ConnConfig,
    progress: &Progress,
) -> Result<(Client, Connection), tokio_postgres::Error> {
    let mut pg = cfg.pg.clone();
    // tokio-postgres cannot do TLS without a host name; libpq then uses the address.
    if pg.get_hosts().is_empty() {
        for a in pg.get_hostaddrs().to_vec() {
            pg.host(a.to_string());
        }
    }
    let unix_only =
        !pg.get_hosts().is_empty() && pg.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)));
    let mode = if unix_only {
        SslMode::Disable
    } else {
        cfg.tls.mode
    };
    use tokio_postgres::config::SslMode as T;
    let done = |r: Attempt| r.map_err(|(e, _)| e);
    let p = progress;
    match mode {
        SslMode::Disable => done(attempt(&mut pg, T::Disable, &cfg.tls, p).await),
        // libpq retries with TLS only when the server answered the plain attempt with an error.
        SslMode::Allow => match attempt(&mut pg, T::Disable, &cfg.tls, p).await {
            Err((e, _)) if e.as_db_error().is_some() => {
                done(attempt(&mut pg, T::Require, &cfg.tls, p).await)
            }
            r => done(r),
        },
        // libpq retries without TLS when a TLS attempt failed, in the handshake or after it.
        SslMode::Prefer => match attempt(&mut pg, T::Prefer, &cfg.tls, p).await {
            Err((e, true)) => match attempt(&mut pg, T::Disable, &cfg.tls, p).await {
                Ok(ok) => Ok(ok),
                // The TLS failure is the one worth reporting when the server refuses plain too.
                Err(_) => Err(e),
            },
            r => done(r),
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            done(attempt(&mut pg, T::Require, &cfg.tls, p).await)
        }
    }
}

type Attempt = Result<(Client, Connection), (tokio_postgres::Error, bool)>;

/// One connection attempt; on failure also says whether a TLS handshake was started.
async fn attempt(
    pg: &mut tokio_postgres::Config,
    mode: tokio_postgres::config::SslMode,
    tls: &TlsSettings,
    progress: &Progress,
) -> Attempt {
    pg.ssl_mode(mode);
    let asks = match mode {
        tokio_postgres::config::SslMode::Disable => 0,
        _ => ASKS_TLS,
    };
    progress.0.store(asks, Ordering::SeqCst);
    let tried = Arc::new(AtomicBool::new(false));
    let maker = MakeTls {
        settings: Arc::new(tls.clone()),
        tried: tried.clone(),
        progress: progress.clone(),
    };
    match pg.connect(maker).await {
        Ok(ok) => Ok(ok),
        Err(e) => Err((e, tried.load(Ordering::SeqCst))),
    }
}

/// [`connect_raw`] with the error described for `target` (e.g. "PgSQL node pg01:5432"), the
/// connection driven by a spawned task.
pub async fn connect(cfg: &ConnConfig, target: &str) -> Result<Client, DbError> {
    let (client, conn) = connect_raw(cfg).await.map_err(|e| DbError::Connect {
        target: target.to_string(),
        reason: describe(&e, cfg),
    })?;
    tokio::spawn(conn);
    Ok(client)
}

/// Sends a cancel request for `token`'s query with `cfg`'s TLS settings (a server that only
/// accepts TLS also wants its cancel requests over TLS).
/// Bounded by the connect deadline when there is one (a node that does not answer must not hang
/// the cancel either): Ok(false) when it timed out.
pub async fn cancel_query(
    token: &tokio_postgres::CancelToken,
    cfg: &ConnConfig,
) -> Result<bool, tokio_postgres::Error> {
    let cancel = token.cancel_query(MakeTls {
        settings: Arc::new(cfg.tls.clone()),
        tried: Arc::default(),
        progress: Progress::default(),
    });
    match &cfg.limits.connect {
        Some(limit) => match tokio::time::timeout(limit.after, cancel).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        },
        None => cancel.await.map(|()| true),
    }
}

/// A connector for deadpool: connects with [`connect_raw`] (deadpool's own config is ignored: it
/// is `cfg`'s without the TLS settings).
pub(crate) struct PoolConnect(pub ConnConfig);

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        Box::pin(async move {
            let (client, conn) = connect_raw(&self.0).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("catalog connection closed: {e}");
                }
            });
            Ok((client, task))
        })
    }
}

/// A connection error in words, with what to do for the TLS and pg_hba cases: a certificate not
/// signed by the root certificate, a name mismatch, an expired certificate, a server refusing
/// plain connections (hostssl) or TLS (hostnossl), a missing file.
pub fn describe(e: &tokio_postgres::Error, cfg: &ConnConfig) -> String {
    let tls = &cfg.tls;
    let host = host_label(cfg);
    if let Some(mut m) = server_message(e) {
        if m.hint.is_none() && m.code == "28000" && m.message.contains("no encryption") {
            m.hint = Some(format!(
                "the server accepts only TLS connections from here; set sslmode=require (or \
                 verify-ca / verify-full with sslrootcert) instead of sslmode={}",
                tls.mode
            ));
        }
        if m.hint.is_none() && m.code == "28000" && m.message.contains("client certificate") {
            m.hint = Some(CLIENT_CERT_HINT.into());
        }
        return m.to_string();
    }
    if let Some(s) = find::<SetupError>(e) {
        return s.to_string();
    }
    if let Some(r) = find::<rustls::Error>(e) {
        return rustls_reason(r, &host, tls);
    }
    let plain = describe_plain(e);
    if let Some(why) = &cfg.pgpass_ignored
        && plain.contains("password missing")
    {
        return format!(
            "the server asks for a password and none was found: {why}\nHINT: make the file \
             private as said, or point PGPASSFILE (for the agent: [agent] passfile) to a private one"
        );
    }
    if plain.contains("server does not support TLS") {
        return format!(
            "{plain}\nHINT: enable ssl on the server {host}, or use sslmode=prefer (or disable) for it"
        );
    }
    plain
}

fn rustls_reason(r: &rustls::Error, host: &str, tls: &TlsSettings) -> String {
    let roots = match &tls.root_cert {
        Some(RootCert::File { path, .. }) => format!("root certificate file {}", path.display()),
        Some(RootCert::System) => "the system's trusted roots (sslrootcert=system)".into(),
        None => "no root certificate".into(),
    };
    match r {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server certificate of {host} is not signed by a CA in the {roots}\n\
                 HINT: set sslrootcert (or PGSSLROOTCERT) to the CA that signed the server's certificate, \
                 or use sslmode=require to encrypt without checking the certificate"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = match c {
                    CertificateError::NotValidForNameContext { presented, .. } => format!(
                        " (it names {})",
                        presented
                            .iter()
                            .map(|n| bare_name(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => String::new(),
                };
                format!(
                    "the server certificate of {host} is not valid for the name {host}{names}\n\
                     HINT: connect with a host name the certificate lists, reissue the certificate \
                     with this name, or use sslmode=verify-ca to check only the CA"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the server certificate of {host} has expired\nHINT: renew the server's certificate"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "the server certificate of {host} is not valid yet\nHINT: check the clocks of both hosts"
            ),
            other => format!(
                "the server certificate of {host} was refused: {other:?}\nHINT: check it against the {roots}"
            ),
        },
        rustls::Error::AlertReceived(a) => format!(
            "the server {host} ended the TLS handshake ({a:?})\nHINT: if it requires a client \
             certificate: {CLIENT_CERT_HINT}"
        ),
        other => format!("TLS handshake with {host} failed: {other}"),
    }
}

const CLIENT_CERT_HINT: &str = "set sslcert and sslkey (or PGSSLCERT and PGSSLKEY, or put them in \
     ~/.postgresql/postgresql.crt and postgresql.key) to a certificate, for this user name, signed \
     by a CA the server trusts (its ssl_ca_file)";

/// `db.example.org` out of rustls' `DnsName("db.example.org")` (and `IpAddress(10.0.0.1)`).
fn bare_name(n: &str) -> &str {
    match (n.find('('), n.strip_suffix(')')) {
        (Some(i), Some(rest)) => rest[i + 1..].trim_matches('"'),
        _ => n,
    }
}

fn host_label(cfg: &ConnConfig) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    match hosts.is_empty() {
        false => hosts.join(","),
        true => cfg
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// An error of type `E` in `e`'s causes, also inside `io::Error`s (whose `source` skips their
/// payload: rustls' error travels as the payload of tokio-rustls' io::Error).
fn find<E: StdError + 'static>(e: &tokio_postgres::Error) -> Option<&E> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(x) = c.downcast_ref::<E>() {
            return Some(x);
        }
        if let Some(inner) = c.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(x) = inner.downcast_ref::<E>() {
                return Some(x);
            }
            cur = Some(inner);
            continue;
        }
        cur = c.source();
    }
    None
}

/// A local problem preparing TLS (a missing or unreadable file): said as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);
