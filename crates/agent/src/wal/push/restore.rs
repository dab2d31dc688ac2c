//! Restores to another host over the wal-push channel (issue 12): `restore-cluster` and its
//! `wal-get --remote` ask this agent, with the node's restore credential (read-only, apart from
//! the wal-push one), for the plan of a restore, the files of a base backup set of that node,
//! and WAL files of that node from this server's archive (any intake). Nothing of another node
//! is served: the credential names the node.
//!
//! Protocol, one request per connection: one JSON line ([`RestoreRequest`], `op` = `plan`,
//! `base` or `wal`), answered by one JSON line ([`RestoreAnswer`]); `outcome` = `data` is
//! followed by exactly `size` bytes whose SHA-256 is `sha256` (base: from the catalog's record
//! of the set; wal: the stored object, whose plain content the client checks against the
//! ledger's `wal.sha256` after decompressing). `absent` (wal only) is said only when the
//! catalog's ledger confirms the file is not in this archive; a catalog that does not answer
//! is `retry`, never `absent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use pgbackman_db::pitr::PlannedWal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::{same_secret, sha256_hex};
use crate::job::Ctx;

/// The files of a base backup set a restore needs (the rest is the set's bookkeeping).
pub const SET_FILES: [&str; 3] = [
    pgbackman_dump::basebackup::BASE_TAR_FILE,
    pgbackman_dump::basebackup::BACKUP_MANIFEST_FILE,
    pgbackman_dump::basebackup::BACKUP_LABEL_FILE,
];
/// The deadline of one catalog question.
const CATALOG_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// Protocol version: 1.
    pub v: u32,
    /// `plan`, `base` or `wal`.
    pub op: String,
    pub node_id: i64,
    pub token: String,
    /// plan: the base backup (None: the newest that fits); base: the set.
    #[serde(default)]
    pub bck_id: Option<i64>,
    /// plan: time | lsn | xid | name | immediate, its value, the timeline.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub timeline: Option<String>,
    /// base: a file of the set; wal: the name PostgreSQL asks for (`%f`).
    #[serde(default)]
    pub name: Option<String>,
    /// wal: the incarnation restored (from the plan).
    #[serde(default)]
    pub system_identifier: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreAnswer {
    pub ok: bool,
    /// `plan`, `data`, `absent`, or why not: `unauthorized`, `refused`, `retry`.
    pub outcome: String,
    pub message: String,
    #[serde(default)]
    pub plan: Option<Value>,
    /// data: the bytes that follow the line, and their SHA-256.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// wal: the ledger's record (codec, plain size and SHA-256).
    #[serde(default)]
    pub wal: Option<PlannedWal>,
}

impl RestoreAnswer {
    fn no(outcome: &str, message: String) -> RestoreAnswer {
        RestoreAnswer {
            outcome: outcome.into(),
            message,
            ..Default::default()
        }
    }
}

/// Whether a request line is a restore request (it has `op`); a wal-push request has none.
pub fn is_restore_request(line: &[u8]) -> bool {
    serde_json::from_slice::<Value>(line)
        .ok()
        .is_some_and(|v| v.get("op").is_some())
}

/// A name PostgreSQL asks for: a segment or a history file, nothing with a path in it.
pub fn is_wal_name(name: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    };
    (name.len() == 24 && hex(name))
        || (name.len() == 16 && name.ends_with(".history") && hex(&name[..8]))
}

/// Answers one restore request; a `data` answer streams its file, each write within `idle`.
pub async fn serve<W: AsyncWrite + Unpin>(
    ctx: &Arc<Ctx>,
    idle: Duration,
    line: &[u8],
    wr: &mut W,
    peer: SocketAddr,
    serving: &Arc<Semaphore>,
) -> Result<()> {
    let (answer, body) = match serde_json::from_slice::<RestoreRequest>(line) {
        Err(_) => (
            RestoreAnswer::no(
                "refused",
                "not a restore request this agent reads: use the same pgbackman version on both hosts".into(),
            ),
            (None, None),
        ),
        Ok(req) => answer(ctx, &req, peer, serving).await,
    };
    let mut out = serde_json::to_vec(&answer)?;
    out.push(b'\n');
    let w = |what: &'static str| {
        move |_| anyhow::anyhow!("the client read nothing for {} s ({what})", idle.as_secs())
    };
    timeout(idle, wr.write_all(&out))
        .await
        .map_err(w("answer"))??;
    if let (Some((path, size)), Some(_permit)) = body {
        let mut f = tokio::fs::File::open(&path).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = f.read(&mut buf[..want]).await?;
            if n == 0 {
                // Shorter than when it was opened: the client sees a short body and retries.
                anyhow::bail!("{} shrank while it was sent", path.display());
            }
            timeout(idle, wr.write_all(&buf[..n]))
                .await
                .map_err(w("body"))??;
            left -= n as u64;
        }
    }
    timeout(idle, async {
        wr.flush().await?;
        wr.shutdown().await
    })
    .await
    .map_err(w("end"))??;
    Ok(())
}

type Body = (
    Option<(PathBuf, u64)>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

async fn answer(
    ctx: &Arc<Ctx>,
    req: &RestoreRequest,
    peer: SocketAddr,
    serving: &Arc<Semaphore>,
) -> (RestoreAnswer, Body) {
    let none = (None, None);
    if req.v != 1 {
        return (
            RestoreAnswer::no(
                "refused",
                format!(
                    "restore protocol version {} is not this agent's (1): use the same pgbackman version on both hosts",
                    req.v
                ),
            ),
            none,
        );
    }
    let (node_id, lbl) = match authenticate(ctx, req.node_id, &req.token, peer).await {
        Ok(x) => x,
        Err(no) => return (no, none),
    };
    let catalog_err = |what: &str, e: pgbackman_db::DbError| {
        RestoreAnswer::no(
            "retry",
            format!(
                "the backup server's agent could not ask the catalog for {what} of PgSQL node {lbl}: {e}"
            ),
        )
    };
    match req.op.as_str() {
        "plan" => {
            let kind = req.kind.as_deref().unwrap_or("immediate");
            let r = ctx
                .catalog
                .within(
                    "agent_remote_restore_plan",
                    ctx.catalog.agent_remote_restore_plan(
                        ctx.server_id,
                        node_id,
                        req.bck_id,
                        kind,
                        req.value.as_deref(),
                        req.timeline.as_deref(),
                    ),
                )
                .await;
            match r {
                Ok(plan) => (
                    RestoreAnswer {
                        ok: true,
                        outcome: "plan".into(),
                        plan: Some(plan),
                        ..Default::default()
                    },
                    none,
                ),
                // The catalog's refusal (message and hint) is the answer.
                Err(e @ pgbackman_db::DbError::Server(_)) => {
                    (RestoreAnswer::no("refused", e.to_string()), none)
                }
                Err(e) => (catalog_err("the plan", e), none),
            }
        }
        "base" => {
            let (Some(bck), Some(name)) = (req.bck_id, req.name.as_deref()) else {
                return (
                    RestoreAnswer::no("refused", "base needs bck_id and name".into()),
                    none,
                );
            };
            if !SET_FILES.contains(&name) {
                return (
                    RestoreAnswer::no("refused", format!("{name} is not a file a restore reads")),
                    none,
                );
            }
            let set = match ctx
                .catalog
                .within(
                    "agent_remote_restore_set",
                    ctx.catalog
                        .agent_remote_restore_set(ctx.server_id, node_id, bck),
                )
                .await
            {
                Ok(s) => s,
                Err(e @ pgbackman_db::DbError::Server(_)) => {
                    return (RestoreAnswer::no("refused", e.to_string()), none);
                }
                Err(e) => return (catalog_err(&format!("BckID {bck}"), e), none),
            };
            let Some(f) = set.files.iter().find(|f| f.name == name) else {
                return (
                    RestoreAnswer::no(
                        "absent",
                        format!(
                            "base backup BckID {bck} has no {name} (the catalog's record of the set)"
                        ),
                    ),
                    none,
                );
            };
            let Some(dir) = set.backup_dir else {
                return (
                    RestoreAnswer::no(
                        "refused",
                        format!("base backup BckID {bck} has no directory"),
                    ),
                    none,
                );
            };
            let path = Path::new(&dir).join(name);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == f.size => {}
                Ok(m) => {
                    return (
                        RestoreAnswer::no(
                            "retry",
                            format!(
                                "{} has {} bytes, the catalog recorded {}: the set is damaged (verify_backup {bck})",
                                path.display(),
                                m.len(),
                                f.size
                            ),
                        ),
                        none,
                    );
                }
                Err(e) => {
                    return (
                        RestoreAnswer::no("retry", format!("reading {}: {e}", path.display())),
                        none,
                    );
                }
            }
            data(serving, path, f.size, Some(f.sha256.clone()), None).await
        }
        "wal" => {
            let (Some(name), Some(sysid)) = (req.name.as_deref(), req.system_identifier.as_deref())
            else {
                return (
                    RestoreAnswer::no("refused", "wal needs name and system_identifier".into()),
                    none,
                );
            };
            if !is_wal_name(name) || sysid.parse::<u64>().is_err() {
                return (
                    RestoreAnswer::no(
                        "refused",
                        format!(
                            "\"{}\" is not a WAL segment or history file name",
                            name.escape_debug()
                        ),
                    ),
                    none,
                );
            }
            let r = ctx
                .catalog
                .within(
                    "wal_get_lookup",
                    ctx.catalog
                        .wal_get_lookup(ctx.server_id, node_id, sysid, name),
                )
                .await;
            let w = match r {
                Ok(Some(w)) => w,
                Ok(None) => {
                    return (
                        RestoreAnswer::no(
                            "absent",
                            format!(
                                "{name} is not in the archive of PgSQL node {lbl} on backup server {} (the catalog's WAL ledger has no such file)",
                                ctx.agent_name
                            ),
                        ),
                        none,
                    );
                }
                Err(e) => return (catalog_err(name, e), none),
            };
            let path = PathBuf::from(&w.stored_path);
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) => {
                    return (
                        RestoreAnswer::no(
                            "retry",
                            format!(
                                "{name} is in the ledger but reading {} failed: {e}",
                                path.display()
                            ),
                        ),
                        none,
                    );
                }
            };
            data(serving, path, size, None, Some(w)).await
        }
        other => (
            RestoreAnswer::no("refused", format!("unknown restore request {other}")),
            none,
        ),
    }
}

/// The node and its label when `token` is the restore credential of its archive on this server
/// (asked of the catalog: a restore needs it anyway). The wal-push credential does not serve:
/// it writes WAL, this reads the node's data; a restore host never holds both.
async fn authenticate(
    ctx: &Arc<Ctx>,
    node_id: i64,
    token: &str,
    peer: SocketAddr,
) -> Result<(i64, String), RestoreAnswer> {
    let r = ctx
        .catalog
        .within(
            "agent_restore_credential",
            ctx.catalog.agent_restore_credential(ctx.server_id, node_id),
        )
        .await;
    let c = match r {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::warn!(
                "restore request from {peer}: NodeID {node_id} has no WAL archive on this backup server"
            );
            return Err(RestoreAnswer::no(
                "unauthorized",
                format!(
                    "NodeID {node_id} has no WAL archive on backup server {}: a restore reads the archive (register_wal_archive {} NODE)",
                    ctx.agent_name, ctx.agent_name
                ),
            ));
        }
        Err(e) => {
            return Err(RestoreAnswer::no(
                "retry",
                format!(
                    "the backup server's agent could not ask the catalog for the credential of NodeID {node_id}: {e}"
                ),
            ));
        }
    };
    let Some(hash) = c.sha256.as_deref() else {
        return Err(RestoreAnswer::no(
            "unauthorized",
            format!(
                "the WAL archive of PgSQL node {} has no restore credential yet: create_wal_push_credential {} NODE --restore --file PATH",
                c.label, ctx.agent_name
            ),
        ));
    };
    if !same_secret(&sha256_hex(token.as_bytes()), hash) {
        tracing::warn!(
            node = node_id,
            "restore request from {peer} for PgSQL node {}: not its restore credential, refused",
            c.label
        );
        return Err(RestoreAnswer::no(
            "unauthorized",
            format!(
                "the credential is not the current restore credential of PgSQL node {} (a wal-push credential does not serve restores; \
                 make one with create_wal_push_credential {} NODE --restore --file PATH)",
                c.label, ctx.agent_name
            ),
        ));
    }
    Ok((node_id, c.label))
}

/// A `data` answer once a serving slot is free (bounded: each transfer holds one buffer).
async fn data(
    serving: &Arc<Semaphore>,
    path: PathBuf,
    size: u64,
    sha256: Option<String>,
    wal: Option<PlannedWal>,
) -> (RestoreAnswer, Body) {
    let permit = match timeout(CATALOG_DEADLINE, serving.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            return (
                RestoreAnswer::no(
                    "retry",
                    "the backup server's agent is busy serving other restores; retry".into(),
                ),
                (None, None),
            );
        }
    };
    (
        RestoreAnswer {
            ok: true,
            outcome: "data".into(),
            size: Some(size),
            sha256,
            wal,
            ..Default::default()
        },
        (Some((path, size)), Some(permit)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_requests_are_told_from_pushes_and_names_checked() {
        assert!(is_restore_request(
            br#"{"v":1,"op":"wal","node_id":1,"token":"x"}"#
        ));
        assert!(!is_restore_request(
            br#"{"v":1,"node_id":1,"token":"x","name":"a","size":1,"sha256":"y"}"#
        ));
        assert!(!is_restore_request(b"garbage"));
        assert!(is_wal_name("000000010000000000000003"));
        assert!(is_wal_name("0000000A.history"));
        assert!(!is_wal_name("../../etc/passwd"));
        assert!(!is_wal_name("000000010000000000000003.partial"));
    }
}
