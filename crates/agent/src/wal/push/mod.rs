//! The wal-push intake (issue 11): `archive_command = 'pgbackman-agent wal-push %p'` on a node
//! host delivers each completed WAL file to this backup server's agent over TLS, authenticated
//! by the node's credential (a random token; the catalog holds only its SHA-256).
//!
//! Protocol, one file per connection: the client sends one JSON line ([`Request`]: node, token,
//! file name, size, SHA-256 of the bytes), then the bytes; the agent answers one JSON line
//! ([`Answer`]) only once the file is stored durably and its ledger report is recorded or
//! durably pending (`wal::pending`). `ok: false` carries what to do; the client prints it on
//! stderr (PostgreSQL logs it) and exits non-zero, so PostgreSQL retries.
//!
//! `client` is the `wal-push` subcommand; `server` the listener (`[agent.wal_push]`); `intake`
//! the checks and the store, shared with the receiver's `wal::store`.

pub(crate) mod client;
mod intake;
pub(crate) mod restore;
pub(crate) mod server;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// Longest request line accepted (a name, a token and a hash fit in a few hundred bytes).
const MAX_REQUEST_LINE: usize = 4096;
/// Largest history or backup history file accepted.
const MAX_SMALL_FILE: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
pub struct Request {
    /// Protocol version: 1.
    pub v: u32,
    pub node_id: i64,
    pub token: String,
    /// The file's name as PostgreSQL gives it (`%f`).
    pub name: String,
    pub size: u64,
    /// SHA-256 of the bytes sent (the transfer is checked against it).
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    /// `stored`, `duplicate`, or why not (`refused`, `conflict`, `retry`, `unauthorized`).
    pub outcome: String,
    pub message: String,
}

impl Answer {
    fn ok(outcome: &str, message: String) -> Answer {
        Answer {
            ok: true,
            outcome: outcome.into(),
            message,
        }
    }
    fn no(outcome: &str, message: String) -> Answer {
        Answer {
            ok: false,
            outcome: outcome.into(),
            message,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The listener's TLS configuration from its certificate chain and key files.
pub fn server_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "reading the wal-push certificate {} ([agent.wal_push] cert: a PEM certificate chain)",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "the wal-push certificate {} holds no PEM certificate ([agent.wal_push] cert)",
            cert.display()
        );
    }
    let k = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "reading the wal-push key {} ([agent.wal_push] key: a PEM private key readable by the agent's user)",
                key.display()
            )
        })?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_no_client_auth()
        .with_single_cert(certs, k)
        .with_context(|| {
            format!(
                "the wal-push certificate {} does not go with the key {}",
                cert.display(),
                key.display()
            )
        })
}

/// The client's TLS configuration: the agent's certificate must chain to `ca`.
pub fn client_tls(ca: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "reading the CA file {} (`ca` of the wal-push config)",
                ca.display()
            )
        })?
    {
        let c = c
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("reading the CA file {}", ca.display()))?;
        roots
            .add(c)
            .with_context(|| format!("a certificate of {} is not a usable CA", ca.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("the CA file {} holds no PEM certificate", ca.display());
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// SHA-256 of `b`, hexadecimal.
fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Equal in a time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcd", "abcd"));
        assert!(!same_secret("abcd", "abce"));
        assert!(!same_secret("abcd", "abc"));
    }

    #[test]
    fn a_conflict_report_sorts_after_the_original_one() {
        // pending::list sends in file name order: the catalog must see the stored copy first.
        let orig = "n7-1-00000001-0000000000000003-full.json";
        let conflict = orig.replace(".json", ".x-conflict-0123456789abcdef.json");
        assert!(orig < conflict.as_str());
        let next = "n7-1-00000001-0000000000000004-full.json";
        assert!(conflict.as_str() < next);
    }
}
