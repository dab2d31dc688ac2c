//! Backup repositories (issue 13): where backup sets, and next base backups and WAL, are stored.
//! A [`Store`] holds write-once objects under keys (the layout is in [`layout`]); a local
//! directory ([`local::LocalStore`]) and an S3-compatible bucket ([`s3::S3Store`]) both
//! implement it, so the writers (the backup executor today, base backups and the WAL store next)
//! and the readers (restore, verify, retention) never know which one they talk to.
//!
//! Invariants: an object is written once and never rewritten (a key that exists is refused,
//! `ErrorKind::Exists`); an object is visible only complete (local: a link from a fsynced
//! temporary file; S3: a completed multipart upload, aborted on any failure); memory per upload
//! is bounded (S3: `PART_SIZE` × (`PARTS_IN_FLIGHT` + 1)); every S3 request has a deadline and
//! retries with backoff; no credential is ever part of a rendering (`Debug` included).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

pub mod credentials;
pub mod layout;
pub mod local;
pub mod s3;

pub use credentials::Credentials;

/// What went wrong, for the caller's decision (retry later, refuse, report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The key holds an object already: nothing was written.
    Exists,
    /// No object under the key.
    NotFound,
    /// The store did not answer within its deadline and retries.
    Unavailable,
    /// Refused or failed otherwise (permissions, a bad request, a local IO error).
    Failed,
}

/// An error naming the repository, the object key and what to do.
#[derive(Debug, thiserror::Error)]
#[error("repository {repository}: object {key}: {message}")]
pub struct StoreError {
    pub kind: ErrorKind,
    pub repository: String,
    pub key: String,
    pub message: String,
}

impl StoreError {
    pub fn new(
        kind: ErrorKind,
        repository: &str,
        key: &str,
        message: impl Into<String>,
    ) -> StoreError {
        StoreError {
            kind,
            repository: repository.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// An object written: its key, size and the sha256 of its bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// An object listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// Where a repository is, as the catalog describes it (`api.agent_repositories`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local {
        path: std::path::PathBuf,
    },
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
        region: String,
    },
}

/// A streaming upload of one object: bytes in order, then `finish` (the object appears) or
/// `abort` (nothing appears). Dropped unfinished, it aborts in the background.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes; waits while the upload is at its memory bound.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError>;
    /// Makes the object visible, complete; refused if the key was taken meanwhile.
    async fn finish(self: Box<Self>) -> Result<Stored, StoreError>;
    /// Removes every part written (retried within the store's deadlines).
    async fn abort(self: Box<Self>) -> Result<(), StoreError>;
}

/// A repository of write-once objects.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The repository's name, for messages.
    fn name(&self) -> &str;
    /// Where it is, for messages (`/srv/archive`, `http://host:8333/bucket/prefix`).
    fn describe(&self) -> String;
    /// Starts a streaming upload of a new object; refused if the key exists.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError>;
    /// Writes a small object in one request, only if the key is free (conditional create).
    async fn put_once(&self, key: &str, bytes: Bytes) -> Result<Stored, StoreError>;
    /// Reads an object as a stream of chunks.
    async fn read(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>;
    /// The size of an object, None when absent.
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Removes an object; an absent one is not an error (a deletion may be resumed).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// The objects under a key prefix (a "directory": `sets/node1/`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
}

/// Opens the repository `name` at `location`; an S3 one with `credentials` (from a file or
/// the environment, see [`Credentials`]) and `limits`.
pub fn open(
    name: &str,
    location: &Location,
    credentials: Option<Credentials>,
    limits: &s3::Limits,
) -> Result<Arc<dyn Store>, StoreError> {
    match location {
        Location::Local { path } => Ok(Arc::new(local::LocalStore::new(name, path))),
        Location::S3 {
            endpoint,
            bucket,
            prefix,
            region,
        } => Ok(Arc::new(s3::S3Store::new(
            name,
            endpoint,
            bucket,
            prefix,
            region,
            credentials,
            limits,
        )?)),
    }
}

/// Reads an object through and returns its size and sha256 (verification level 1).
pub async fn sha256_of(store: &dyn Store, key: &str) -> Result<(u64, String), StoreError> {
    use futures_util::StreamExt;
    use sha2::Digest;
    let mut s = store.read(key).await?;
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c?;
        n += c.len() as u64;
        h.update(&c);
    }
    Ok((n, hex::encode(h.finalize())))
}

/// A sha256 kept beside a writer: the digest of the bytes as stored.
#[derive(Default)]
pub(crate) struct Hasher {
    h: sha2::Sha256,
    n: u64,
}

impl Hasher {
    pub(crate) fn update(&mut self, b: &[u8]) {
        use sha2::Digest;
        self.h.update(b);
        self.n += b.len() as u64;
    }
    pub(crate) fn done(self) -> (u64, String) {
        use sha2::Digest;
        (self.n, hex::encode(self.h.finalize()))
    }
}
