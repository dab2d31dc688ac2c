//! Encryption at rest with age (issue 13): the writer and reader layers around a set's files.
//!
//! A backup encrypts every object that holds data or secrets (the dump, roles.sql with its
//! password hashes, database.sql) to the set's recipients in the same pass as zstd and sha256:
//! dump → zstd → age → sha256 → file or upload. The format is the standard age format
//! (`age-encryption.org/v1`, X25519 recipients, ChaCha20-Poly1305 in 64 KiB authenticated
//! chunks), so `age -d -i key.txt dump.pgdump.zst | zstd -d` reads a file without pgbackman.
//! The manifest and backup.log stay plain: they hold names, sizes, checksums and row counts
//! (no row data, no secret), and level-1 verification, listings and a catalog rebuild need them
//! without an identity. Agents hold recipients (public keys) only; identities are loaded only
//! where a restore or drill runs.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One recipient of a set, as the catalog gives it (public).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecipient {
    /// The key's name in the catalog (for messages).
    pub name: String,
    /// `age1…`.
    pub recipient: String,
    /// 16 hex digits (`api.encryption_fingerprint`).
    pub fingerprint: String,
}

/// What a set is encrypted to (part of a [`BackupSpec`](crate::BackupSpec)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetEncryption {
    /// The definition's key first, then the escrow key; at least one.
    pub recipients: Vec<SetRecipient>,
}

/// `encryption` of a manifest: the scheme, who can read the set (by fingerprint and name), and
/// which files are encrypted (the others are plain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEncryption {
    /// `age` (age-encryption.org/v1).
    pub scheme: String,
    /// Fingerprint and name of each recipient.
    pub recipients: Vec<ManifestRecipient>,
    /// The encrypted files of the set.
    pub files: Vec<String>,
}

/// One recipient as the manifest records it (no key material is needed to find its identity:
/// the fingerprint names it in the catalog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecipient {
    /// 16 hex digits (`api.encryption_fingerprint`).
    pub fingerprint: String,
    /// The key's name in the catalog when the set was written.
    pub name: String,
}

/// The parsed recipients, ready to encrypt.
pub(crate) struct Seal {
    recipients: Vec<age::x25519::Recipient>,
}

impl Seal {
    /// Parses the recipients of `e`; an empty list or a malformed key is an error naming it.
    pub(crate) fn new(e: &SetEncryption) -> Result<Seal, String> {
        if e.recipients.is_empty() {
            return Err("the set is to be encrypted but has no recipient (no encryption key on its definition or backup server)".into());
        }
        let recipients = e
            .recipients
            .iter()
            .map(|r| {
                r.recipient
                    .parse::<age::x25519::Recipient>()
                    .map_err(|err| {
                        format!(
                            "encryption key {} is not a valid age recipient: {err}",
                            r.name
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Seal { recipients })
    }

    fn encryptor(&self) -> io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("age: {e}")))
    }

    /// Encrypts a small file's content in memory (roles.sql, database.sql).
    pub(crate) fn seal_bytes(&self, plain: &[u8]) -> io::Result<Vec<u8>> {
        let mut w = self
            .encryptor()?
            .wrap_output(Vec::with_capacity(plain.len() + 256))?;
        w.write_all(plain)?;
        w.finish()
    }
}

/// A writer that encrypts into `W` when the set is encrypted, else passes through.
pub(crate) enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    pub(crate) fn new(inner: W, seal: Option<&Seal>) -> io::Result<Sealed<W>> {
        match seal {
            None => Ok(Sealed::Plain(inner)),
            Some(s) => Ok(Sealed::Age(s.encryptor()?.wrap_output(inner)?)),
        }
    }

    /// Writes the last chunk (age's final flag: a truncated file fails to decrypt) and returns
    /// the inner writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// The identities a restore or drill may use: loaded from files (the shell's `--identity`,
/// the agent's `[agent.encryption] identity_files`). Never logged, never in argv.
pub struct Identities {
    ids: Vec<Box<dyn age::Identity + Send + Sync>>,
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The files, never the keys.
        f.debug_struct("Identities")
            .field("files", &self.files)
            .finish()
    }
}

impl Identities {
    /// Reads every identity of `files` (age identity files: `AGE-SECRET-KEY-1…` lines,
    /// comments). A file that cannot be read or holds no identity is an error naming it.
    pub fn load(files: &[PathBuf]) -> Result<Identities, String> {
        let mut ids = Vec::new();
        for f in files {
            let file = age::IdentityFile::from_file(f.to_string_lossy().into_owned())
                .map_err(|e| format!("cannot read the identity file {}: {e}", f.display()))?;
            let mut got = file
                .into_identities()
                .map_err(|e| format!("the identity file {} is not usable: {e}", f.display()))?;
            if got.is_empty() {
                return Err(format!(
                    "the identity file {} holds no age identity (AGE-SECRET-KEY-1… line)",
                    f.display()
                ));
            }
            ids.append(&mut got);
        }
        Ok(Identities {
            ids,
            files: files.to_vec(),
        })
    }

    /// No identity at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.ids.iter().map(|b| b.as_ref() as &dyn age::Identity)
    }

    /// Opens an encrypted file for reading its plaintext. The header is checked here: an
    /// identity that matches none of the file's recipients fails now, before anything reads.
    pub fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let f = BufReader::with_capacity(1 << 20, File::open(path)?);
        self.open_reader(f, path)
    }

    /// [`open`](Self::open) on any reader (`what` names it in errors).
    pub fn open_reader<R: io::BufRead + Send + 'static>(
        &self,
        r: R,
        what: &Path,
    ) -> io::Result<Box<dyn Read + Send>> {
        let d = age::Decryptor::new_buffered(r).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not an age file: {e}", what.display()),
            )
        })?;
        match d.decrypt(self.iter()) {
            Ok(r) => Ok(Box::new(r)),
            Err(age::DecryptError::NoMatchingKeys) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} cannot be decrypted with the identities of {}: none matches its recipients",
                    what.display(),
                    self.files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", what.display()),
            )),
        }
    }
}

/// The identities for the encrypted set in `dir` (manifest `m`), from `files`: each encrypted
/// file's header is opened with them, so a missing or wrong identity is an error now, before a
/// restore changes anything, naming the keys that can read the set.
pub fn identities_for_set(
    dir: &Path,
    m: &crate::set::Manifest,
    files: &[PathBuf],
) -> Result<Identities, String> {
    identities_for_set_with(m, files, &|name: &str| {
        Ok(Box::new(File::open(dir.join(name))?) as Box<dyn Read + Send>)
    })
}

/// [`identities_for_set`] with the set's files opened by `open` (by manifest name, as stored):
/// a set in a repository is read from its objects.
pub fn identities_for_set_with(
    m: &crate::set::Manifest,
    files: &[PathBuf],
    open: &dyn Fn(&str) -> io::Result<Box<dyn Read + Send>>,
) -> Result<Identities, String> {
    let Some(e) = &m.encryption else {
        return Err("the set is not encrypted".into());
    };
    let keys = e
        .recipients
        .iter()
        .map(|r| format!("{} ({})", r.name, r.fingerprint))
        .collect::<Vec<_>>()
        .join(", ");
    if files.is_empty() {
        return Err(format!(
            "the set is encrypted to {keys}: give the identity file of one of these keys (--identity FILE, or identity_files in the [agent.encryption] section of the agent that restores)"
        ));
    }
    if !m.is_encrypted(&m.dump_file) {
        return Err(format!(
            "the manifest lists encrypted files but not its dump {}",
            m.dump_file
        ));
    }
    let ids = Identities::load(files)?;
    for f in &e.files {
        if !Path::new(f)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("the manifest names an invalid file {f:?}"));
        }
        open(f)
            .and_then(|r| ids.open_reader(BufReader::with_capacity(1 << 16, r), Path::new(f)))
            .map_err(|err| {
                format!(
                    "{err}; the set is encrypted to {keys}: give the identity of one of these keys"
                )
            })?;
    }
    Ok(ids)
}

/// The plaintext of a set's file read from `r` as stored: decrypted when `ids` is given (a file
/// of an encrypted set), as it is otherwise. age reads its input to the end, so a source that
/// checks its checksum at its end still does.
pub(crate) fn plain(
    r: Box<dyn Read + Send>,
    ids: Option<&Identities>,
    what: &str,
) -> io::Result<Box<dyn Read + Send>> {
    match ids {
        None => Ok(r),
        Some(ids) => ids.open_reader(BufReader::with_capacity(1 << 20, r), Path::new(what)),
    }
}

/// Opens a file of a set for reading its plaintext: through `ids` when the manifest lists it as
/// encrypted, as it is otherwise.
pub(crate) fn open_file(
    path: &Path,
    encrypted: bool,
    ids: Option<&Identities>,
) -> io::Result<Box<dyn Read + Send>> {
    if !encrypted {
        return Ok(Box::new(File::open(path)?));
    }
    match ids {
        Some(ids) => ids.open(path),
        None => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is encrypted and no identity was given", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn key(name: &str) -> (SetRecipient, String) {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        (
            SetRecipient {
                name: name.into(),
                fingerprint: "0123456789abcdef".into(),
                recipient,
            },
            id.to_string().expose_secret().to_string(),
        )
    }

    #[test]
    fn every_recipient_reads_and_a_stranger_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (k, k_id) = key("site");
        let (e, e_id) = key("escrow");
        let (_, other_id) = key("other");
        let seal = Seal::new(&SetEncryption {
            recipients: vec![k, e],
        })
        .unwrap();
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = Sealed::new(Vec::new(), Some(&seal)).unwrap();
        w.write_all(&plain).unwrap();
        let sealed = w.finish().unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        let path = dir.path().join("x.age");
        std::fs::write(&path, &sealed).unwrap();
        for (i, id) in [k_id, e_id].iter().enumerate() {
            let f = dir.path().join(format!("id{i}"));
            std::fs::write(&f, format!("# test\n{id}\n")).unwrap();
            let ids = Identities::load(&[f]).unwrap();
            let mut out = Vec::new();
            ids.open(&path).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
        }
        let f = dir.path().join("other");
        std::fs::write(&f, format!("{other_id}\n")).unwrap();
        let ids = Identities::load(std::slice::from_ref(&f)).unwrap();
        let e = ids.open(&path).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(!format!("{ids:?}").contains("AGE-SECRET"));
        // A truncated file fails (the last chunk is flagged).
        std::fs::write(&path, &sealed[..sealed.len() - 100]).unwrap();
        let f0 = dir.path().join("id0");
        let mut out = Vec::new();
        assert!(
            Identities::load(&[f0])
                .unwrap()
                .open(&path)
                .unwrap()
                .read_to_end(&mut out)
                .is_err()
        );
        // Small files the same way.
        assert!(
            seal.seal_bytes(b"x")
                .unwrap()
                .starts_with(b"age-encryption.org/v1\n")
        );
        assert!(
            Identities::load(&[dir.path().join("missing")])
                .unwrap_err()
                .contains("cannot read the identity file")
        );
    }

    #[test]
    fn no_recipient_is_an_error() {
        assert!(Seal::new(&SetEncryption { recipients: vec![] }).is_err());
    }
}
