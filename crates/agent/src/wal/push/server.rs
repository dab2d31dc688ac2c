//! The wal-push listener (`[agent.wal_push]`): TLS only, one file per connection, each client
//! held to the idle and overall deadlines (a stalled client is dropped), at most
//! `max_concurrent` files taken at once (each may hold a segment in memory while stored) and a
//! bounded number of connections waiting. It answers from the archive list the WAL task keeps
//! (catalog, else its cache): pushes are taken while the catalog is down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use pgbackman_config::WalPushSection;
use pgbackman_core::wal::{SegmentSize, WalFileKind, WalFileName};
use pgbackman_db::wal_agent::AgentWalArchive;
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::intake::{self, Pushed};
use super::{Answer, MAX_REQUEST_LINE, MAX_SMALL_FILE, Request, same_secret, sha256_hex};
use crate::job::Ctx;
use crate::wal::store::{ArchiveDirs, NodeIdentity};

/// Connections at once beyond the ones being taken (handshakes, waiting for a slot).
const MAX_WAITING: usize = 32;

/// The push archives of this server, as the WAL task last read them.
static ARCHIVES: RwLock<Vec<AgentWalArchive>> = RwLock::new(Vec::new());
/// Each node's identity, read from the node at its first push (again after a refusal).
static IDENTITIES: Mutex<Option<HashMap<i64, NodeIdentity>>> = Mutex::new(None);
/// A file was stored: the WAL task delivers the pending reports.
pub static PUSHED: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// Where the listener listens ("" when it does not), for the archive state report.
pub static LISTENING: RwLock<String> = RwLock::new(String::new());

/// Called by the WAL task with every list it reads.
pub fn set_archives(list: &[AgentWalArchive]) {
    let push: Vec<AgentWalArchive> = list
        .iter()
        .filter(|a| a.intake == "push" && a.status == "ACTIVE")
        .cloned()
        .collect();
    *ARCHIVES.write().unwrap_or_else(|e| e.into_inner()) = push;
}

fn archive_of(node_id: i64) -> Option<AgentWalArchive> {
    ARCHIVES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|a| a.pgsql_node_id == node_id)
        .cloned()
}

/// Binds the listener (the caller logs a failure: the rest of the agent runs on).
pub async fn bind(cfg: &WalPushSection) -> Result<(TcpListener, TlsAcceptor)> {
    let tls = super::server_tls(&cfg.cert, &cfg.key)?;
    let l = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("listening on {} ([agent.wal_push] listen)", cfg.listen))?;
    Ok((l, TlsAcceptor::from(Arc::new(tls))))
}

/// Accepts until `stop`.
pub async fn serve(
    ctx: Arc<Ctx>,
    cfg: WalPushSection,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) {
    *LISTENING.write().unwrap_or_else(|e| e.into_inner()) = cfg.listen.clone();
    let working = Arc::new(Semaphore::new(cfg.max_concurrent));
    // Restore transfers (restore-cluster, remote wal-get) wait for their own slots: a long
    // base backup download never holds up archive_command.
    let serving = Arc::new(Semaphore::new(cfg.max_concurrent));
    let open = Arc::new(Semaphore::new(cfg.max_concurrent + MAX_WAITING));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("wal-push listener on {}: {e}", cfg.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(conn) = open.clone().try_acquire_owned() else {
            tracing::warn!(
                "wal-push: too many connections at once, dropped the one from {peer} (its archive_command retries)"
            );
            continue;
        };
        let (ctx, acceptor, working, cfg) =
            (ctx.clone(), acceptor.clone(), working.clone(), cfg.clone());
        let stop = stop.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = connection(&ctx, &cfg, acceptor, tcp, peer, &working, &serving) => {
                    if let Err(e) = r {
                        tracing::warn!("wal-push listener, client {peer}: {e:#}");
                    }
                }
                _ = stop.cancelled() => {}
            }
            drop(conn);
        });
    }
    LISTENING.write().unwrap_or_else(|e| e.into_inner()).clear();
}

/// One client: the TLS handshake and the request line, each within the idle deadline; then a
/// push (whole, within `push_timeout_seconds`) or a restore request (`restore`: each write
/// within the idle deadline, so a stalled reader is dropped however long the file).
async fn connection(
    ctx: &Arc<Ctx>,
    cfg: &WalPushSection,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    working: &Arc<Semaphore>,
    serving: &Arc<Semaphore>,
) -> Result<()> {
    let idle = Duration::from_secs(cfg.idle_timeout_seconds);
    let _ = tcp.set_nodelay(true);
    let tls = timeout(idle, acceptor.accept(tcp))
        .await
        .map_err(|_| anyhow::anyhow!("no TLS handshake within {} s", idle.as_secs()))?
        .context("TLS handshake")?;
    let (rd, mut wr) = tokio::io::split(tls);
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut line = Vec::with_capacity(512);
    let n = timeout(
        idle,
        (&mut rd)
            .take(MAX_REQUEST_LINE as u64)
            .read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no request within {} s", idle.as_secs()))??;
    if n > 0 && line.last() == Some(&b'\n') && super::restore::is_restore_request(&line) {
        return super::restore::serve(ctx, idle, &line, &mut wr, peer, serving).await;
    }
    let overall = Duration::from_secs(cfg.push_timeout_seconds);
    let r = timeout(overall, async {
        let answer = if n == 0 || line.last() != Some(&b'\n') {
            Answer::no("refused", "the request line is missing or too long".into())
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => push(ctx, cfg, req, &mut rd, peer, working).await,
                Err(_) => Answer::no(
                    "refused",
                    "not a wal-push request: is `agent` in the wal-push config this agent's [agent.wal_push] listen?".into(),
                ),
            }
        };
        let mut out = serde_json::to_vec(&answer)?;
        out.push(b'\n');
        timeout(idle, async {
            wr.write_all(&out).await?;
            wr.flush().await?;
            wr.shutdown().await
        })
        .await
        .map_err(|_| anyhow::anyhow!("the answer was not read within {} s", idle.as_secs()))??;
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match r {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "dropped, not done within {} s ([agent.wal_push] push_timeout_seconds)",
            cfg.push_timeout_seconds
        ),
    }
}

/// Authenticates, receives and takes one file.
async fn push<R: AsyncRead + Unpin>(
    ctx: &Arc<Ctx>,
    cfg: &WalPushSection,
    req: Request,
    rd: &mut R,
    peer: SocketAddr,
    working: &Arc<Semaphore>,
) -> Answer {
    if req.v != 1 {
        return Answer::no(
            "refused",
            format!(
                "wal-push protocol version {} is not this agent's (1): use the same pgbackman version on both hosts",
                req.v
            ),
        );
    }
    let a = match authenticate(ctx, req.node_id, &req.token, peer) {
        Ok(a) => a,
        Err(no) => return no,
    };
    let lbl = format!("{}:{}", a.node_fqdn, a.pgport);
    // From here on the client is who it says: one slot of memory each.
    let Ok(_permit) = working.acquire().await else {
        return Answer::no("retry", "the agent is stopping".into());
    };
    let node = match identity(ctx, &a, &lbl).await {
        Ok(n) => n,
        Err(e) => {
            return Answer::no(
                "retry",
                format!(
                    "the backup server cannot read the identity of PgSQL node {lbl} (system identifier, version, segment size): {e:#}"
                ),
            );
        }
    };
    let name = match WalFileName::parse(&req.name, node.seg_size) {
        Ok(n) => n,
        Err(e) => {
            return Answer::no(
                "refused",
                format!("{e}: wal-push takes only files PostgreSQL archives (%p)"),
            );
        }
    };
    let limit = match name.kind {
        WalFileKind::Segment { .. } | WalFileKind::Partial { .. } => {
            u64::from(node.seg_size.bytes())
        }
        _ => MAX_SMALL_FILE,
    };
    if req.size > limit {
        return Answer::no(
            "refused",
            format!(
                "{} has {} bytes, more than the {limit} a file of its kind has on PgSQL node {lbl}",
                req.name, req.size
            ),
        );
    }
    let node_dir = match crate::roots::node_dir_for_write(&ctx.cfg_now(), &a.node_backup_partition)
    {
        Ok(d) => d,
        Err(e) => {
            return Answer::no(
                "retry",
                format!("the backup server cannot write for PgSQL node {lbl}: {e}"),
            );
        }
    };
    let dirs = ArchiveDirs::new(&node_dir, a.pgsql_node_id);
    let idle = Duration::from_secs(cfg.idle_timeout_seconds);
    let tmp = match receive(&dirs, &name, req.size, rd, idle).await {
        Ok((tmp, sha)) if sha == req.sha256.to_ascii_lowercase() => tmp,
        Ok((tmp, _)) => {
            let _ = std::fs::remove_file(&tmp);
            return Answer::no(
                "retry",
                format!("{name} arrived damaged (its SHA-256 differs from the one sent)"),
            );
        }
        Err(e) => return Answer::no("retry", format!("receiving {name}: {e:#}")),
    };
    let pushed = Pushed {
        name,
        tmp,
        sha256: req.sha256.to_ascii_lowercase(),
        size: req.size,
    };
    let state_dir = ctx.cfg.state_dir.clone();
    let node2 = node.clone();
    let answer =
        tokio::task::spawn_blocking(move || intake::take(&state_dir, &dirs, &node2, &pushed))
            .await
            .unwrap_or_else(|e| Answer::no("retry", format!("storing the file failed: {e}")));
    match answer.outcome.as_str() {
        "stored" | "duplicate" | "conflict" => PUSHED.notify_one(),
        // A refused header: the node may have been re-initialised; read it again next time.
        "refused" => forget_identity(a.pgsql_node_id),
        _ => {}
    }
    if answer.ok {
        tracing::debug!(
            node = a.pgsql_node_id,
            "wal-push {}: {}",
            answer.outcome,
            answer.message
        );
    }
    answer
}

/// The archive of `node_id` when `token` is its current credential; else the answer to give.
fn authenticate(
    ctx: &Ctx,
    node_id: i64,
    token: &str,
    peer: SocketAddr,
) -> Result<AgentWalArchive, Answer> {
    let Some(a) = archive_of(node_id) else {
        tracing::warn!(
            "wal-push from {peer}: NodeID {} has no push WAL archive on this backup server",
            node_id
        );
        return Err(Answer::no(
            "unauthorized",
            format!(
                "NodeID {} has no push WAL archive on backup server {}: register_wal_archive {} NODE --intake push, \
                 then create_wal_push_credential (a new archive reaches the agent within seconds)",
                node_id, ctx.agent_name, ctx.agent_name
            ),
        ));
    };
    let lbl = format!("{}:{}", a.node_fqdn, a.pgport);
    let Some(hash) = a.push_token_sha256.as_deref() else {
        return Err(Answer::no(
            "unauthorized",
            format!(
                "the push WAL archive of PgSQL node {lbl} has no credential yet: create_wal_push_credential {} {} --file PATH",
                ctx.agent_name, a.node_fqdn
            ),
        ));
    };
    if !same_secret(&sha256_hex(token.as_bytes()), hash) {
        tracing::warn!(
            node = a.pgsql_node_id,
            "wal-push from {peer} for PgSQL node {lbl}: wrong credential, refused"
        );
        return Err(Answer::no(
            "unauthorized",
            format!(
                "the credential for PgSQL node {lbl} is not the current one (replaced by create_wal_push_credential?): \
                 install the file it wrote and name it as `credential` in the wal-push config"
            ),
        ));
    }
    Ok(a)
}

/// The body into `<archive>/push/.<name>.<n>.tmp`, hashed on the way; each read within `idle`.
async fn receive<R: AsyncRead + Unpin>(
    dirs: &ArchiveDirs,
    name: &WalFileName,
    size: u64,
    rd: &mut R,
    idle: Duration,
) -> Result<(PathBuf, String)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = dirs.root.join("push");
    crate::state::create_dir_0700(&dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", N.fetch_add(1, Ordering::Relaxed)));
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    let r: Result<()> = async {
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = timeout(idle, rd.read(&mut buf[..want]))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("the client sent nothing for {} s", idle.as_secs())
                })??;
            if n == 0 {
                anyhow::bail!("the client closed the connection {left} bytes short");
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        f.flush().await?;
        Ok(())
    }
    .await;
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok((tmp, hex::encode(h.finalize())))
}

async fn identity(ctx: &Arc<Ctx>, a: &AgentWalArchive, lbl: &str) -> Result<NodeIdentity> {
    if let Some(n) = IDENTITIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .get(&a.pgsql_node_id)
    {
        return Ok(n.clone());
    }
    let config = crate::wal::receiver::node_config(ctx, a)?;
    let ident = pgbackman_db::wal_node::node_identity(config, lbl).await?;
    let n = NodeIdentity {
        node_id: a.pgsql_node_id,
        label: lbl.to_string(),
        sysid: ident.system_identifier,
        major: pgbackman_dump::server_major(ident.server_version_num),
        seg_size: SegmentSize::new(ident.seg_size)
            .map_err(|e| anyhow::anyhow!("PgSQL node {lbl}: {e}"))?,
    };
    IDENTITIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .insert(a.pgsql_node_id, n.clone());
    Ok(n)
}

fn forget_identity(node_id: i64) {
    if let Some(m) = IDENTITIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        m.remove(&node_id);
    }
}

/// Starts the listener when `[agent.wal_push]` names one; a failure is logged (the agent runs
/// on, and the push archives' state says it does not listen).
pub async fn start(ctx: &Arc<Ctx>, stop: &CancellationToken) {
    let Some(cfg) = ctx.cfg.wal_push.clone() else {
        return;
    };
    if let Some(w) = pgbackman_config::wal_push_exposure(&cfg.listen) {
        tracing::info!("{w}");
    }
    match bind(&cfg).await {
        Ok((l, acceptor)) => {
            if let Ok(a) = l.local_addr() {
                tracing::info!("taking wal-push (TLS) on {a}");
            }
            tokio::spawn(serve(ctx.clone(), cfg, l, acceptor, stop.clone()));
        }
        Err(e) => tracing::error!("wal-push is not taken: {e:#}"),
    }
}

/// `--check`: the listener's certificate and key, and whether its address can be bound.
pub async fn check(cfg: &pgbackman_config::AgentSection) -> Vec<(crate::check::Level, String)> {
    use crate::check::Level;
    let Some(w) = &cfg.wal_push else {
        return vec![(
            Level::Ok,
            "wal-push: not taken ([agent.wal_push] is not set; push WAL archives need it)".into(),
        )];
    };
    let mut out = Vec::new();
    match super::server_tls(&w.cert, &w.key) {
        Ok(_) => out.push((
            Level::Ok,
            format!(
                "wal-push certificate {} and key {} go together",
                w.cert.display(),
                w.key.display()
            ),
        )),
        Err(e) => out.push((Level::Error, format!("wal-push: {e:#}"))),
    }
    match TcpListener::bind(&w.listen).await {
        Ok(l) => out.push((
            Level::Ok,
            format!(
                "wal-push listens on {} (TLS only, at most {} pushes at once)",
                l.local_addr().map_or(w.listen.clone(), |a| a.to_string()),
                w.max_concurrent
            ),
        )),
        Err(e) => out.push((
            Level::Warn,
            format!(
                "wal-push cannot listen on {} now: {e} (another process, or this agent already running, holds it)",
                w.listen
            ),
        )),
    }
    if let Some(x) = pgbackman_config::wal_push_exposure(&w.listen) {
        out.push((Level::Ok, x));
    }
    out
}
