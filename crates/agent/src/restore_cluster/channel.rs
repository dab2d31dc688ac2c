//! The client's side of a restore request to the backup server's agent (protocol in
//! `wal::push::restore`): one request per connection, the answer line, and a `data` body
//! written to a file while its SHA-256 is computed, each read within the connect deadline.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgbackman_config::{PushCredential, WalPushClient};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use crate::wal::push::restore::{RestoreAnswer, RestoreRequest};

/// The client config, its credential and TLS settings, read once.
pub struct Channel {
    pub cfg: WalPushClient,
    cred: PushCredential,
    tls: rustls::ClientConfig,
}

/// What one request brought.
pub enum Reply {
    /// The answer line (no body).
    Answer(RestoreAnswer),
    /// A `data` answer whose body is now in the file, its SHA-256 checked when the answer
    /// gave one.
    Data { answer: RestoreAnswer },
}

impl Channel {
    pub fn open(config: &Path) -> Result<Channel> {
        let cfg = WalPushClient::load(Some(config))?;
        let text = std::fs::read_to_string(&cfg.credential).with_context(|| {
            format!(
                "reading the credential {} (`credential` of {}; the file create_wal_push_credential --restore wrote, readable by this user)",
                cfg.credential.display(),
                config.display()
            )
        })?;
        let cred = PushCredential::parse(&cfg.credential, &text)?;
        let tls = crate::wal::push::client_tls(&cfg.ca)?;
        Ok(Channel { cfg, cred, tls })
    }

    pub fn node_id(&self) -> i64 {
        self.cred.node_id
    }

    /// A request with this node's credential; a `data` body goes to `body` (created, or
    /// truncated).
    pub async fn ask(&self, mut req: RestoreRequest, body: Option<&Path>) -> Result<Reply> {
        req.v = 1;
        req.node_id = self.cred.node_id;
        req.token = self.cred.token.clone();
        let idle = Duration::from_secs(self.cfg.timeout_seconds);
        let stream = crate::wal::push::client::connect(&self.cfg, self.tls.clone()).await?;
        let (rd, mut wr) = tokio::io::split(stream);
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        timeout(idle, async {
            wr.write_all(&line).await?;
            wr.flush().await
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the agent {} read nothing for {} s",
                self.cfg.agent,
                idle.as_secs()
            )
        })?
        .with_context(|| format!("sending the request to the agent {}", self.cfg.agent))?;
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let mut head = Vec::new();
        timeout(idle, (&mut rd).take(1 << 20).read_until(b'\n', &mut head))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no answer from the agent {} within {} s (timeout_seconds)",
                    self.cfg.agent,
                    idle.as_secs()
                )
            })??;
        let answer: RestoreAnswer = serde_json::from_slice(&head).map_err(|_| {
            anyhow::anyhow!(
                "the agent {} gave no answer (the connection closed, or it is an older pgbackman that does not serve restores)",
                self.cfg.agent
            )
        })?;
        if answer.outcome != "data" {
            return Ok(Reply::Answer(answer));
        }
        let Some(dest) = body else {
            bail!(
                "the agent {} sent data where none was asked for",
                self.cfg.agent
            );
        };
        let size = answer.size.unwrap_or(0);
        let mut f = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("creating {}", dest.display()))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = timeout(idle, rd.read(&mut buf[..want]))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the agent {} sent nothing for {} s",
                        self.cfg.agent,
                        idle.as_secs()
                    )
                })??;
            if n == 0 {
                bail!(
                    "the agent {} closed the connection {left} bytes before the end",
                    self.cfg.agent
                );
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n])
                .await
                .with_context(|| format!("writing {}", dest.display()))?;
            left -= n as u64;
        }
        f.sync_all()
            .await
            .with_context(|| format!("writing {}", dest.display()))?;
        let got = hex::encode(h.finalize());
        if let Some(want) = &answer.sha256
            && !want.eq_ignore_ascii_case(&got)
        {
            bail!(
                "{} arrived damaged: SHA-256 {got}, the catalog recorded {want}",
                dest.display()
            );
        }
        Ok(Reply::Data { answer })
    }
}
