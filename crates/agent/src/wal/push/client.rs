//! `pgbackman-agent wal-push PATH`: PostgreSQL's archive_command on a node host. Exit 0 only
//! when the backup server's agent answered that the file is stored durably and recorded (or
//! durably pending); anything else exits 1 with one line on stderr (PostgreSQL logs it and
//! retries). Every step is bounded: the connection and handshake by `connect_timeout_seconds`,
//! the whole push by `timeout_seconds`. Nothing secret is printed: the token goes only into
//! the TLS stream.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgbackman_config::{PushCredential, WalPushClient};
use rustls::pki_types::ServerName;
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use super::{Answer, Request};

/// Runs one push; Ok(message) when the agent took the file.
pub async fn run(config: Option<&Path>, file: &Path) -> Result<String> {
    let cfg = WalPushClient::load(config)?;
    let text = std::fs::read_to_string(&cfg.credential).with_context(|| {
        format!(
            "reading the wal-push credential {} (`credential` of the wal-push config; readable by the user PostgreSQL runs as)",
            cfg.credential.display()
        )
    })?;
    let cred = PushCredential::parse(&cfg.credential, &text)?;
    let tls = super::client_tls(&cfg.ca)?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a WAL file path (%p)", file.display()))?
        .to_string();
    // Files are at most one segment (1 GB at the most): read whole, hash, send.
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let overall = Duration::from_secs(cfg.timeout_seconds);
    timeout(overall, push(&cfg, tls, cred, name.clone(), bytes))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from the backup server's agent {} within {} s (timeout_seconds); PostgreSQL retries {name}",
                cfg.agent,
                cfg.timeout_seconds
            )
        })?
}

/// The TLS connection to the backup server's agent, each step within `connect_timeout_seconds`.
pub(crate) async fn connect(
    cfg: &WalPushClient,
    tls: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connect = Duration::from_secs(cfg.connect_timeout_seconds);
    let server_name = ServerName::try_from(cfg.server_name()).with_context(|| {
        format!(
            "{} is not a host name to check the agent's certificate against",
            cfg.server_name()
        )
    })?;
    let tcp = timeout(connect, tokio::net::TcpStream::connect(&cfg.agent))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the backup server's agent {} did not accept a connection within {} s (connect_timeout_seconds)",
                cfg.agent,
                connect.as_secs()
            )
        })?
        .with_context(|| {
            format!(
                "connecting to the backup server's agent {} (is it running, with [agent.wal_push] listen = that address?)",
                cfg.agent
            )
        })?;
    let _ = tcp.set_nodelay(true);
    timeout(
        connect,
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the backup server's agent {} did not complete the TLS handshake within {} s (connect_timeout_seconds)",
            cfg.agent,
            connect.as_secs()
        )
    })?
    .with_context(|| {
        format!(
            "TLS with the backup server's agent {} (its certificate must chain to {} and name {})",
            cfg.agent,
            cfg.ca.display(),
            cfg.server_name()
        )
    })
}

async fn push(
    cfg: &WalPushClient,
    tls: rustls::ClientConfig,
    cred: PushCredential,
    name: String,
    bytes: Vec<u8>,
) -> Result<String> {
    let stream = connect(cfg, tls).await?;
    let (rd, mut wr) = tokio::io::split(stream);
    let req = Request {
        v: 1,
        node_id: cred.node_id,
        token: cred.token,
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        name: name.clone(),
    };
    let mut head = serde_json::to_vec(&req)?;
    head.push(b'\n');
    // The agent may answer (a refusal) before it reads the body: read its answer then.
    let sent = async {
        wr.write_all(&head).await?;
        wr.write_all(&bytes).await?;
        wr.flush().await
    }
    .await;
    let mut line = String::new();
    let read = BufReader::new(rd)
        .take(64 * 1024)
        .read_line(&mut line)
        .await;
    let answer: Answer = match (read, serde_json::from_str::<Answer>(&line)) {
        (Ok(_), Ok(a)) => a,
        (r, _) => {
            let why = match (sent, r) {
                (Err(e), _) | (_, Err(e)) => e.to_string(),
                _ => "the connection closed without an answer".into(),
            };
            bail!(
                "the backup server's agent {} gave no answer for {name}: {why}; PostgreSQL retries it",
                cfg.agent
            );
        }
    };
    if answer.ok {
        Ok(answer.message)
    } else {
        bail!("{}", answer.message)
    }
}

/// `pgbackman-agent wal-push`: see the long help.
#[derive(clap::Args, Debug)]
#[command(
    about = "Deliver one WAL file to the backup server's agent (PostgreSQL's archive_command)",
    long_about = "PostgreSQL's archive_command on a node whose WAL archive was registered with --intake push: \
        archive_command = 'pgbackman-agent wal-push %p'. It sends the file over TLS, with the node's credential \
        (create_wal_push_credential), to the agent named in the config file, and exits 0 only once that agent \
        stored it durably and recorded it (or spooled the record while the catalog is down). The same file \
        again with the same content is a no-op (exit 0); other content under an archived name is refused \
        (exit 1), kept aside on the backup server and alerted (WAL_CONFLICT), never overwritten. Any failure \
        exits 1 with one line on stderr, which PostgreSQL logs before it retries. It changes nothing on this host.",
    after_help = "Config file (default /etc/pgbackman/wal-push.toml, readable by the user PostgreSQL runs as):\n  \
        agent = \"bs01.example.org:7433\"         # the agent's [agent.wal_push] listen\n  \
        ca = \"/etc/pgbackman/wal-push-ca.pem\"   # CA of the agent's certificate\n  \
        credential = \"/etc/pgbackman/wal-push.credential\"   # from create_wal_push_credential (0600)\n  \
        # server_name = \"bs01.example.org\"   connect_timeout_seconds = 10   timeout_seconds = 120\n\n\
        Examples:\n  archive_command = 'pgbackman-agent wal-push %p'\n  \
        archive_command = 'pgbackman-agent wal-push --config /etc/pgbackman/wal-push-bs02.toml %p'"
)]
pub struct WalPushArgs {
    /// The client's config file (default /etc/pgbackman/wal-push.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// The file to deliver (%p: relative to the data directory, as PostgreSQL gives it).
    #[arg(value_name = "PATH")]
    pub path: std::path::PathBuf,
}

/// The subcommand's whole life: exit 0 or one line on stderr and exit 1.
pub fn main(args: &WalPushArgs) -> std::process::ExitCode {
    use std::io::Write;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "pgbackman-agent wal-push: cannot start: {e}"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args.config.as_deref(), &args.path)) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let t = c.to_string();
                if !msg.contains(&t) {
                    msg = format!("{msg}: {t}");
                }
            }
            let _ = writeln!(std::io::stderr(), "pgbackman-agent wal-push: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
