//! A backup set streamed to a repository (issue 13): the dump's output goes through zstd and
//! sha256 into a [`pgbackman_store::ObjectWriter`] in one pass — no copy of the dump on the
//! agent's disk, memory bounded by the channel (4 × 1 MiB) plus the store's own bound. The
//! small files (roles.sql, database.sql, backup.log) are written in staging as for a local set
//! and uploaded after the dump, `manifest.json` last (its presence means "complete"); staging
//! is then removed.
//!
//! Invariant: the dump object becomes visible only after pg_dump exited 0 (the writer is
//! finished by the run, not when the pipe ends: a killed dump also ends its pipe), and a run
//! that fails after it deletes what it uploaded, so a set in a repository without its
//! manifest is never left by a finished run.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use pgbackman_store::{ObjectWriter, Store, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, mpsc};

use crate::set::StreamError;

/// Where a set goes instead of `final_dir`: a repository and the key prefix of the set
/// (`pgbackman_store::layout::set_prefix`).
#[derive(Clone, Debug)]
pub struct StoreTarget {
    /// The repository.
    pub store: Arc<dyn Store>,
    /// The set's key prefix inside it (no trailing `/`).
    pub prefix: String,
}

impl StoreTarget {
    /// The key of one file of the set.
    pub fn key(&self, file: &str) -> String {
        format!("{}/{file}", self.prefix)
    }
}

/// Chunks handed from the compressor to the uploader.
const CHUNK: usize = 1 << 20;
const CHUNKS_QUEUED: usize = 4;

/// The writer of the dump object once the compressor has ended, for the run to finish (after
/// pg_dump's exit status) or drop (which aborts).
pub(crate) type PendingWriter = Arc<Mutex<Option<Box<dyn ObjectWriter>>>>;

struct ChannelSink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    hasher: Sha256,
    written: Arc<AtomicU64>,
}

impl ChannelSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let n = chunk.len() as u64;
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))?;
        self.written.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

impl Write for ChannelSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        self.hasher.update(b);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses `input` into the channel (blocking). Returns the compressed (size, sha256).
fn compress_to_channel(
    mut input: impl Read,
    tx: mpsc::Sender<Bytes>,
    level: i32,
    written: Arc<AtomicU64>,
    seal: Option<Arc<crate::crypt::Seal>>,
) -> Result<(u64, String), StreamError> {
    let sink = ChannelSink {
        tx,
        buf: Vec::with_capacity(CHUNK),
        hasher: Sha256::new(),
        written,
    };
    // Encrypted between zstd and the hash (crate::crypt): what is hashed and uploaded is the
    // ciphertext, one pass, bounded memory (age buffers one 64 KiB chunk).
    let sink = crate::crypt::Sealed::new(sink, seal.as_deref()).map_err(StreamError::Write)?;
    let mut enc = zstd::stream::write::Encoder::new(sink, level).map_err(StreamError::Compress)?;
    enc.include_checksum(true).map_err(StreamError::Compress)?;
    enc.multithread(crate::set::compression_workers())
        .map_err(StreamError::Compress)?;
    // zstd's default job (4 windows: 8 MiB at level 3) costs about 20 MiB per worker in
    // buffers; 2 MiB jobs keep the whole upload within its memory bound (bench/s3-upload.sh).
    enc.set_parameter(zstd::stream::raw::CParameter::JobSize(2 << 20))
        .map_err(StreamError::Compress)?;
    let upload_gone = |e: io::Error| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            StreamError::Write(e)
        } else {
            StreamError::Compress(e)
        }
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::Read(e)),
        };
        enc.write_all(&buf[..n]).map_err(upload_gone)?;
    }
    enc.do_finish().map_err(upload_gone)?;
    let sealed = enc.finish().map_err(StreamError::Compress)?;
    let mut sink = sealed.finish().map_err(upload_gone)?;
    sink.send().map_err(StreamError::Write)?;
    let size = sink.written.load(Ordering::Relaxed);
    Ok((size, hex::encode(sink.hasher.finalize())))
}

/// Starts the upload of `file` of the set: the object is created (refused if its key exists),
/// then `input` is compressed into it by a blocking task while an async task uploads. The
/// handle ends with the compressed (size, sha256) once every byte is uploaded; the writer is
/// then in `pending`, unfinished.
pub(crate) async fn start(
    target: &StoreTarget,
    file: &str,
    input: impl Read + Send + 'static,
    level: i32,
    written: Arc<AtomicU64>,
    pending: PendingWriter,
) -> Result<tokio::task::JoinHandle<Result<(u64, String), StreamError>>, StoreError> {
    start_sealed(target, file, input, level, written, pending, None).await
}

/// [`start`], encrypted to `seal` when given (crate::crypt).
pub(crate) async fn start_sealed(
    target: &StoreTarget,
    file: &str,
    input: impl Read + Send + 'static,
    level: i32,
    written: Arc<AtomicU64>,
    pending: PendingWriter,
    seal: Option<Arc<crate::crypt::Seal>>,
) -> Result<tokio::task::JoinHandle<Result<(u64, String), StreamError>>, StoreError> {
    let key = target.key(file);
    let mut w = target.store.create(&key).await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS_QUEUED);
    let compress =
        tokio::task::spawn_blocking(move || compress_to_channel(input, tx, level, written, seal));
    Ok(tokio::spawn(async move {
        let mut failed: Option<StoreError> = None;
        while let Some(c) = rx.recv().await {
            if let Err(e) = w.write(c).await {
                failed = Some(e);
                break;
            }
        }
        // The compressor's next send fails: it stops, and pg_dump meets a closed pipe.
        drop(rx);
        let compressed = compress.await;
        if let Some(e) = failed {
            return Err(StreamError::Upload(aborted(w, e).await));
        }
        match compressed {
            Ok(Ok(r)) => {
                *pending.lock().await = Some(w);
                Ok(r)
            }
            Ok(Err(e)) => {
                let _ = w.abort().await;
                Err(e)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(StreamError::Compress(io::Error::other(e.to_string())))
            }
        }
    }))
}

/// Streams `input` through zstd into the object `file` of the set and makes it visible: the
/// whole pipeline of a dump's upload without a dump (the memory benchmark and tools use it).
/// Returns the object (compressed size and sha256).
pub async fn upload_stream(
    target: &StoreTarget,
    file: &str,
    input: impl Read + Send + 'static,
    level: i32,
) -> Result<pgbackman_store::Stored, String> {
    let pending: PendingWriter = Default::default();
    let h = start(
        target,
        file,
        input,
        level,
        Arc::default(),
        Arc::clone(&pending),
    )
    .await
    .map_err(|e| e.to_string())?;
    match h.await {
        Ok(Ok(_)) => {}
        Ok(Err(StreamError::Upload(m))) => return Err(m),
        Ok(Err(StreamError::Read(e) | StreamError::Compress(e) | StreamError::Write(e))) => {
            return Err(e.to_string());
        }
        Err(e) => return Err(e.to_string()),
    }
    let w = pending.lock().await.take().ok_or("no upload to finish")?;
    w.finish().await.map_err(|e| e.to_string())
}

/// The upload's error, with what became of the parts already uploaded.
pub(crate) async fn aborted(w: Box<dyn ObjectWriter>, e: StoreError) -> String {
    match w.abort().await {
        Ok(()) => format!("{e}; the upload was aborted, nothing was kept"),
        Err(a) => format!(
            "{e}; aborting the upload failed too ({}): a bucket lifecycle rule AbortIncompleteMultipartUpload removes its parts",
            a.message
        ),
    }
}

/// Files above this size are streamed into their object (a multipart upload) instead of read
/// whole: the members of a directory-format dump may be large.
const WHOLE_MAX: u64 = 8 << 20;

/// Uploads the files of the set from staging (write-once) other than the streamed dump,
/// `manifest.json` last.
pub(crate) async fn put_files(
    target: &StoreTarget,
    staging: &std::path::Path,
    names: &[String],
    uploaded: &mut Vec<String>,
) -> Result<(), StoreError> {
    for name in names {
        let key = target.key(name);
        let path = staging.join(name);
        let io = |e: std::io::Error| {
            StoreError::new(
                pgbackman_store::ErrorKind::Failed,
                target.store.name(),
                &key,
                format!("reading {}: {e}", path.display()),
            )
        };
        let size = tokio::fs::metadata(&path).await.map_err(io)?.len();
        if size <= WHOLE_MAX {
            let bytes = tokio::fs::read(&path).await.map_err(io)?;
            target.store.put_once(&key, Bytes::from(bytes)).await?;
        } else {
            put_streamed(target, &key, &path).await?;
        }
        uploaded.push(key);
    }
    Ok(())
}

/// One large file of staging streamed into a new object, 1 MiB at a time (aborted on error).
async fn put_streamed(
    target: &StoreTarget,
    key: &str,
    path: &std::path::Path,
) -> Result<(), StoreError> {
    use tokio::io::AsyncReadExt;
    let mut w = target.store.create(key).await?;
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let _ = w.abort().await;
            return Err(StoreError::new(
                pgbackman_store::ErrorKind::Failed,
                target.store.name(),
                key,
                format!("reading {}: {e}", path.display()),
            ));
        }
    };
    loop {
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        match f.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {
                if let Err(e) = w.write(buf.freeze()).await {
                    let _ = w.abort().await;
                    return Err(e);
                }
            }
            Err(e) => {
                let _ = w.abort().await;
                return Err(StoreError::new(
                    pgbackman_store::ErrorKind::Failed,
                    target.store.name(),
                    key,
                    format!("reading {}: {e}", path.display()),
                ));
            }
        }
    }
    w.finish().await.map(|_| ())
}

/// Removes what a failed run uploaded (best effort: a failure is logged; retention's
/// reconciliation of repositories will find the rest).
pub(crate) async fn remove(target: &StoreTarget, keys: &[String]) {
    for k in keys {
        if let Err(e) = target.store.delete(k).await {
            tracing::warn!(key = %k, error = %e, "cannot remove an object of a failed run");
        }
    }
}

/// Level 1 against the repository: every object of the set re-read, its sha256 against the
/// manifest's list. Returns the first mismatch.
pub async fn verify_objects(
    target: &StoreTarget,
    files: &[crate::spec::FileEntry],
) -> Result<(), String> {
    for f in files {
        let key = target.key(&f.name);
        match pgbackman_store::sha256_of(target.store.as_ref(), &key).await {
            Ok((size, sha)) if size == f.size && sha == f.sha256 => {}
            Ok((size, sha)) => {
                return Err(format!(
                    "object {key} of repository {}: {size} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}",
                    target.store.name(),
                    f.size,
                    f.sha256
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
