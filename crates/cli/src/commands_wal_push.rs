//! `create_wal_push_credential`: a random token for a push WAL archive, written to a file for the
//! node host (0600, never shown); the catalog keeps only its SHA-256. Replacing one asks first.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};
use pgbackman_config::PushCredential;
use sha2::{Digest, Sha256};

use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

/// 32 random bytes from the kernel, as 64 hexadecimal digits.
fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for a new token")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The hash the catalog stores and the agent compares with (of the token's text).
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

pub async fn credential(s: &mut Session, inv: &Invocation) -> Result<Output> {
    if inv.flag("restore") {
        return restore_credential(s, inv).await;
    }
    let server = s.required(inv, "server", None)?;
    let node = s.required(inv, "node", None)?;
    let Some(file) = inv.given("file").map(std::path::PathBuf::from) else {
        bail!(
            "create_wal_push_credential needs --file PATH: where to write the credential for the node host (it is never shown)"
        );
    };
    if file.exists() {
        bail!(
            "{} exists: give a new file name (a credential file is never overwritten)",
            file.display()
        );
    }
    let replace = match s.catalog.wal_push_credential_state(&server, &node).await? {
        None => bail!(
            "PgSQL node {node} has no WAL archive on backup server {server}: register_wal_archive {server} {node} --intake push"
        ),
        Some((intake, _)) if intake != "push" => bail!(
            "the WAL archive of {node} on {server} receives through a replication slot, not by wal-push: \
             delete_wal_archive {server} {node}, then register_wal_archive {server} {node} --intake push"
        ),
        Some((_, Some(created))) => {
            s.confirm(&format!(
                "{node} already has a wal-push credential for {server} (created {created}). Replace it? \
                 Its archive_command fails from now until the new file is installed on the node host."
            ))?;
            true
        }
        Some((_, None)) => false,
    };
    let node_id = s.catalog.node_id(&node).await?;
    let token = new_token()?;
    // The file first: a catalog that took the hash of a token nobody holds locks the node out.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("creating {}", file.display()))?;
    let cred = PushCredential { node_id, token };
    let id = match s
        .catalog
        .set_wal_push_credential(
            &s.audit(),
            &server,
            &node,
            &token_sha256(&cred.token),
            replace,
        )
        .await
    {
        Ok(id) => id,
        Err(e) => {
            drop(f);
            let _ = std::fs::remove_file(&file);
            return Err(e.into());
        }
    };
    f.write_all(cred.render(&node, &server).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| {
            format!(
                "writing {} (the catalog already has the new credential: run create_wal_push_credential again)",
                file.display()
            )
        })?;
    Ok(Output::Done(vec![format!(
        "wal-push credential of {node} for {server} (ArchiveID {id}) written to {} (mode 0600){}. Copy it to the node \
         host, readable only by the user PostgreSQL runs as, and name it as `credential` in /etc/pgbackman/wal-push.toml.",
        file.display(),
        if replace {
            "; the old one no longer works"
        } else {
            ""
        }
    )]))
}

/// `--restore`: the node's restore credential (read-only, for `restore-cluster` on another
/// host), apart from its wal-push one. The file first, as above; a replacement asks first.
async fn restore_credential(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let server = s.required(inv, "server", None)?;
    let node = s.required(inv, "node", None)?;
    let Some(file) = inv.given("file").map(std::path::PathBuf::from) else {
        bail!(
            "create_wal_push_credential --restore needs --file PATH: where to write the credential for the restore host (it is never shown)"
        );
    };
    if file.exists() {
        bail!(
            "{} exists: give a new file name (a credential file is never overwritten)",
            file.display()
        );
    }
    let node_id = s.catalog.node_id(&node).await?;
    let token = new_token()?;
    let sha = token_sha256(&token);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("creating {}", file.display()))?;
    let audit = s.audit();
    let mut replace = false;
    let id = loop {
        match s
            .catalog
            .set_restore_credential(&audit, &server, &node, &sha, replace)
            .await
        {
            Ok(id) => break id,
            Err(e) if !replace && e.code() == Some("23505") => {
                let asked = s.confirm(&format!(
                    "{node} already has a restore credential for {server}. Replace it? The old file stops working at once."
                ));
                if let Err(e) = asked {
                    drop(f);
                    let _ = std::fs::remove_file(&file);
                    return Err(e);
                }
                replace = true;
            }
            Err(e) => {
                drop(f);
                let _ = std::fs::remove_file(&file);
                return Err(e.into());
            }
        }
    };
    let text = format!(
        "# pgbackman restore credential of PgSQL node {node} (NodeID {node_id}) for backup server {server}.\n\
         # Read-only: restore-cluster and wal-get --remote on a restore host. Keep it readable only by the\n\
         # user PostgreSQL runs as there (mode 0600), named by `credential` in its config. Never share it.\n\
         node_id = {node_id}\ntoken = \"{token}\"\n"
    );
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| {
            format!(
                "writing {} (the catalog already has the new credential: run create_wal_push_credential --restore again)",
                file.display()
            )
        })?;
    Ok(Output::Done(vec![format!(
        "restore credential of {node} for {server} (ArchiveID {id}) written to {} (mode 0600){}. Copy it to the restore \
         host, readable only by the user PostgreSQL runs as, and name it as `credential` in the config of \
         pgbackman-agent restore-cluster.",
        file.display(),
        if replace {
            "; the old one no longer works"
        } else {
            ""
        }
    )]))
}
