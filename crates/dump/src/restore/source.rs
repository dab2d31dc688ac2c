//! Where a restore (or a drill, or level 2) reads the bytes of a set: the files of a directory
//! ([`RestoreSpec::set_dir`](super::RestoreSpec)) or the objects of a repository
//! ([`RepositorySet`]). [`Source::open`] hands the blocking pumps the bytes *as stored*
//! (compressed, and once part B lands, encrypted: its decrypting reader wraps what `open`
//! returns), so the feeds never know where the set lives.
//!
//! A set in a repository is never copied whole to this disk: its small files (roles.sql,
//! database.sql, a directory dump's members) are fetched into the run's staging directory,
//! each checked against its manifest sha256 as it arrives; the dump itself is streamed, its
//! size and sha256 checked as the bytes pass, a mismatch failing the read at its end
//! ([`Mismatch`]) naming the repository and the key.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use pgbackman_store::{Store, StoreError};
use sha2::{Digest, Sha256};

use crate::error::DumpError;
use crate::set::{self, MANIFEST_FILE, Manifest};
use crate::spec::FileEntry;

/// The largest manifest read from a repository (a manifest lists files, it is small).
const MAX_MANIFEST: usize = 64 << 20;

/// A set stored in a repository: the store and the key prefix of its objects (a file `f` of
/// the manifest is the object `<prefix>/f`).
#[derive(Clone)]
pub struct RepositorySet {
    /// The repository.
    pub store: Arc<dyn Store>,
    /// The key prefix of the set (`sets/node<N>/<set dir>`).
    pub prefix: String,
}

impl RepositorySet {
    /// The key of one file of the set.
    pub fn key(&self, file: &str) -> String {
        format!("{}/{file}", self.prefix)
    }
    /// `object <key> of repository <name>`, for messages.
    pub fn describe(&self, file: &str) -> String {
        format!(
            "object {} of repository {}",
            self.key(file),
            self.store.name()
        )
    }
}

impl fmt::Debug for RepositorySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.store.describe(), self.prefix)
    }
}

impl PartialEq for RepositorySet {
    fn eq(&self, other: &Self) -> bool {
        self.store.name() == other.store.name()
            && self.store.describe() == other.store.describe()
            && self.prefix == other.prefix
    }
}

/// Bytes read that are not the bytes the manifest recorded: a verdict on the set itself.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what}: {size} bytes with sha256 {sha256}, the manifest says {want_size} bytes with sha256 {want_sha256}"
)]
pub struct Mismatch {
    /// The file or object.
    pub what: String,
    /// Bytes read.
    pub size: u64,
    /// Their sha256.
    pub sha256: String,
    /// The manifest's size.
    pub want_size: u64,
    /// The manifest's sha256.
    pub want_sha256: String,
}

/// The mismatch an IO error carries, if it is one (the pumps' errors are `io::Error`s).
pub(crate) fn mismatch_of(e: &io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<Mismatch>())
        .map(ToString::to_string)
}

/// Where the set's bytes are.
#[derive(Clone)]
pub(crate) enum Source {
    Dir(PathBuf),
    Repository {
        set: RepositorySet,
        /// The runtime the blocking pumps wait on for the store's answers.
        handle: tokio::runtime::Handle,
    },
}

impl Source {
    /// The source of a spec's set; called within the runtime.
    pub(crate) fn new(set_dir: &Path, repository: Option<&RepositorySet>) -> Source {
        match repository {
            Some(r) => Source::Repository {
                set: r.clone(),
                handle: tokio::runtime::Handle::current(),
            },
            None => Source::Dir(set_dir.to_path_buf()),
        }
    }

    pub(crate) fn repository(&self) -> Option<&RepositorySet> {
        match self {
            Source::Repository { set, .. } => Some(set),
            Source::Dir(_) => None,
        }
    }

    /// A file of the set, for messages: its path, or its object and repository.
    pub(crate) fn describe(&self, file: &str) -> String {
        match self {
            Source::Dir(d) => d.join(file).display().to_string(),
            Source::Repository { set, .. } => set.describe(file),
        }
    }

    /// The set as people see it: its directory, or its prefix in its repository.
    pub(crate) fn label(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Repository { set, .. } => format!(
                "{} in repository {} ({})",
                set.prefix,
                set.store.name(),
                set.store.describe()
            ),
        }
    }

    /// Reads and parses the manifest (blocking).
    pub(crate) fn read_manifest(&self) -> Result<Manifest, DumpError> {
        match self {
            Source::Dir(d) => set::read_manifest(d),
            Source::Repository { set, .. } => {
                let text = self.manifest_bytes()?;
                set::parse_manifest(&text, PathBuf::from(set.describe(MANIFEST_FILE)))
            }
        }
    }

    /// The bytes of the manifest (blocking; bounded).
    pub(crate) fn manifest_bytes(&self) -> Result<Vec<u8>, DumpError> {
        let what = PathBuf::from(self.describe(MANIFEST_FILE));
        let err = |reason: String| DumpError::Manifest {
            path: what.clone(),
            reason,
        };
        let r: Box<dyn Read> = match self {
            Source::Dir(d) => {
                Box::new(fs::File::open(d.join(MANIFEST_FILE)).map_err(|e| err(e.to_string()))?)
            }
            Source::Repository { set, handle } => Box::new(
                ObjectReader::open(set, handle, MANIFEST_FILE, None)
                    .map_err(|e| err(e.to_string()))?,
            ),
        };
        let mut text = Vec::new();
        r.take(MAX_MANIFEST as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| err(e.to_string()))?;
        if text.len() > MAX_MANIFEST {
            return Err(err(format!("larger than {MAX_MANIFEST} bytes")));
        }
        Ok(text)
    }

    /// The bytes of one file of the set as stored (blocking reads). From a repository, the
    /// reader checks size and sha256 against `entry` at its end ([`Mismatch`]); a directory's
    /// files are checked beforehand (`verify_set`).
    pub(crate) fn open(&self, entry: &FileEntry) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Source::Dir(d) => Ok(Box::new(fs::File::open(d.join(&entry.name))?)),
            Source::Repository { set, handle } => Ok(Box::new(ObjectReader::open(
                set,
                handle,
                &entry.name,
                Some(entry),
            )?)),
        }
    }

    /// The plaintext of one file of the set: [`open`](Self::open), decrypted with `ids` when the
    /// set is encrypted (its dump, roles.sql and database.sql are).
    pub(crate) fn open_plain(
        &self,
        entry: &FileEntry,
        ids: Option<&crate::crypt::Identities>,
    ) -> io::Result<Box<dyn Read + Send>> {
        crate::crypt::plain(self.open(entry)?, ids, &entry.name)
    }

    /// Fetches `entry` into `dir` (its parents created 0700, the file 0600), checked against
    /// the manifest (blocking). Stops when `abort` is raised.
    pub(crate) fn fetch(
        &self,
        entry: &FileEntry,
        dir: &Path,
        abort: &AtomicBool,
    ) -> io::Result<()> {
        let dst = dir.join(&entry.name);
        if let Some(parent) = dst.parent() {
            set::create_private_dir_all(parent)?;
        }
        let mut r = self.open(entry)?;
        let mut f = io::BufWriter::new(set::create_private_file(&dst)?);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if abort.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
            }
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => f.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

/// Reads what is left of `r` (the end of a stream a decoder stopped short of), so that an
/// [`ObjectReader`] reaches its end and checks the whole object.
pub(crate) fn drain(mut r: impl Read) -> io::Result<()> {
    io::copy(&mut r, &mut io::sink()).map(|_| ())
}

/// One object read with blocking calls (from a blocking thread, never from the runtime),
/// its size and sha256 checked at its end when `want` is given.
struct ObjectReader {
    handle: tokio::runtime::Handle,
    stream: BoxStream<'static, Result<Bytes, StoreError>>,
    buf: Bytes,
    hash: Sha256,
    size: u64,
    what: String,
    want: Option<(u64, String)>,
    ended: bool,
}

impl ObjectReader {
    fn open(
        set: &RepositorySet,
        handle: &tokio::runtime::Handle,
        file: &str,
        want: Option<&FileEntry>,
    ) -> io::Result<ObjectReader> {
        let key = set.key(file);
        let stream = handle
            .block_on(set.store.read(&key))
            .map_err(io::Error::other)?;
        Ok(ObjectReader {
            handle: handle.clone(),
            stream,
            buf: Bytes::new(),
            hash: Sha256::new(),
            size: 0,
            what: set.describe(file),
            want: want.map(|e| (e.size, e.sha256.clone())),
            ended: false,
        })
    }

    fn check(&mut self) -> io::Result<()> {
        let Some((want_size, want_sha256)) = self.want.clone() else {
            return Ok(());
        };
        let sha256 = hex::encode(std::mem::take(&mut self.hash).finalize());
        if self.size == want_size && sha256 == want_sha256 {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            Mismatch {
                what: self.what.clone(),
                size: self.size,
                sha256,
                want_size,
                want_sha256,
            },
        ))
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.buf.is_empty() {
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf.split_to(n));
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(b)) => {
                    self.hash.update(&b);
                    self.size += b.len() as u64;
                    self.buf = b;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => {
                    self.ended = true;
                    self.check()?;
                    return Ok(0);
                }
            }
        }
    }
}
