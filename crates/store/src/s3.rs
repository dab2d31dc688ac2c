//! A repository in an S3-compatible bucket, through `object_store` with rustls and ring (no
//! aws-lc, no OpenSSL; notes §3.1). Uploads are multipart, parts scheduled here: at most
//! `parts_in_flight` parts of `part_size` in flight plus the one being filled (the memory
//! bound, F16). Every request has a deadline and is retried with backoff within
//! `retry_timeout` (F6); an upload that fails is aborted, the abort retried within
//! `abort_timeout` (the store may answer again meanwhile), and one dropped unfinished is
//! aborted in the background. Small objects (a set's manifest) are written with
//! `If-None-Match: *` (conditional create); a multipart object is checked absent before its
//! upload starts, and its key names content that only its one writer produces (a set directory
//! carries the job's start instant), so nothing is ever rewritten.

use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};

use crate::{
    Credentials, ErrorKind, Hasher, ObjectInfo, ObjectWriter, Store, StoreError, Stored, layout,
};

/// Deadlines, retries and the memory bound of uploads.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connecting to the endpoint.
    pub connect_timeout: Duration,
    /// One request, from sending to the end of the answer (a part of `part_size` included).
    pub request_timeout: Duration,
    /// All retries of one request together.
    pub retry_timeout: Duration,
    pub max_retries: usize,
    pub part_size: usize,
    pub parts_in_flight: usize,
    /// How long an abort is retried (the store may come back meanwhile).
    pub abort_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry_timeout: Duration::from_secs(120),
            max_retries: 8,
            // Measured (bench/s3-upload.sh, 1 GB): 63 MB peak RSS for the whole upload
            // pipeline with 5 MiB × 2; 81 MB with 8 MiB × 2.
            part_size: 5 << 20,
            parts_in_flight: 2,
            abort_timeout: Duration::from_secs(60),
        }
    }
}

/// Bytes per ranged GET of a read (two held at most: the one read, the one fetched ahead).
pub const READ_CHUNK: u64 = 8 << 20;

#[derive(Debug)]
pub struct S3Store {
    name: String,
    display: String,
    prefix: String,
    store: Arc<AmazonS3>,
    parts_in_flight: usize,
    part_size: usize,
    abort_timeout: Duration,
}

static RING: Once = Once::new();

impl S3Store {
    pub fn new(
        name: &str,
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        region: &str,
        credentials: Option<Credentials>,
        limits: &Limits,
    ) -> Result<S3Store, StoreError> {
        // reqwest is built without a crypto provider: ring is the process default (another
        // part of the process may have installed it already).
        RING.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let display = format!(
            "{}/{bucket}{}",
            endpoint.trim_end_matches('/'),
            if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            }
        );
        let err = |m: String| StoreError::new(ErrorKind::Failed, name, "", m);
        let creds = match credentials {
            Some(c) => c,
            None => Credentials::from_env().map_err(|e| err(e.to_string()))?,
        };
        let mut b = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_region(region)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_connect_timeout(limits.connect_timeout)
                    .with_timeout(limits.request_timeout),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: limits.max_retries,
                retry_timeout: limits.retry_timeout,
            })
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        if let Some(t) = creds.session_token {
            b = b.with_token(t);
        }
        let store = b
            .build()
            .map_err(|e| err(format!("cannot use {display}: {e}")))?;
        Ok(S3Store {
            name: name.to_string(),
            display,
            prefix: prefix.trim_matches('/').to_string(),
            store: Arc::new(store),
            parts_in_flight: limits.parts_in_flight.max(1),
            part_size: limits.part_size.max(5 << 20),
            abort_timeout: limits.abort_timeout,
        })
    }

    fn path(&self, key: &str) -> Result<Path, StoreError> {
        layout::check_key(key)
            .map_err(|m| StoreError::new(ErrorKind::Failed, &self.name, key, m))?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(full)
            .map_err(|e| StoreError::new(ErrorKind::Failed, &self.name, key, e.to_string()))
    }

    /// The key as the repository's caller knows it (without the prefix).
    fn key_of(&self, p: &Path) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(s)
                .to_string()
        }
    }
}

/// Maps an object_store error to ours: the key and what to do next.
fn map(repo: &str, key: &str, e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    let (kind, hint) = match &e {
        E::AlreadyExists { .. } | E::Precondition { .. } => (
            ErrorKind::Exists,
            "exists already: objects are written once, never replaced",
        ),
        E::NotFound { .. } => (
            ErrorKind::NotFound,
            "not found (removed from the bucket, or a wrong bucket or prefix: show_repositories)",
        ),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => (
            ErrorKind::Failed,
            "the object store refused the credentials; check the keys the agent uses (the repository's credentials file, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and their permissions on the bucket",
        ),
        _ => {
            // No answer at all (connect, deadline) versus an answer that refuses.
            let text = format!("{e:?}").to_ascii_lowercase();
            if !text.contains("status code")
                && (text.contains("timeout")
                    || text.contains("timed out")
                    || text.contains("connect")
                    || text.contains("retries"))
            {
                (
                    ErrorKind::Unavailable,
                    "the object store did not answer within its deadline and retries; check the endpoint and the network, the next run retries",
                )
            } else {
                (
                    ErrorKind::Failed,
                    "the object store refused the request; check the bucket, the credentials and their permissions",
                )
            }
        }
    };
    StoreError::new(kind, repo, key, format!("{hint} ({e})"))
}

struct S3Writer {
    repo: String,
    key: String,
    /// None once completed or aborted.
    upload: Option<Box<dyn MultipartUpload>>,
    tasks: tokio::task::JoinSet<object_store::Result<()>>,
    buf: Vec<Bytes>,
    buffered: usize,
    part_size: usize,
    parts_in_flight: usize,
    parts_sent: usize,
    abort_timeout: Duration,
    hash: Hasher,
}

/// Aborts `upload`, retrying within `budget` (the store may answer again meanwhile: an abort
/// that gives up leaves parts billed in the bucket until a lifecycle rule removes them).
async fn abort_within(
    upload: &mut Box<dyn MultipartUpload>,
    budget: Duration,
) -> object_store::Result<()> {
    let t = tokio::time::Instant::now();
    loop {
        match upload.abort().await {
            Ok(()) => return Ok(()),
            Err(e) if t.elapsed() >= budget => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

impl S3Writer {
    fn send_part(&mut self) {
        let part: PutPayload = std::mem::take(&mut self.buf).into_iter().collect();
        self.buffered = 0;
        self.parts_sent += 1;
        let up = self.upload.as_mut().expect("upload open");
        self.tasks.spawn(up.put_part(part));
    }

    /// Waits until fewer than `n` parts are in flight.
    async fn wait_below(&mut self, n: usize) -> Result<(), StoreError> {
        while !self.tasks.is_empty() && self.tasks.len() >= n.max(1) {
            match self.tasks.join_next().await {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => return Err(map(&self.repo, &self.key, e)),
                Some(Err(e)) => {
                    return Err(StoreError::new(
                        ErrorKind::Failed,
                        &self.repo,
                        &self.key,
                        format!("internal error: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped unfinished (a cancelled job): abort in the background so that no part stays
        // billed in the bucket.
        self.tasks.abort_all();
        if let Some(mut u) = self.upload.take()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            let (key, budget) = (self.key.clone(), self.abort_timeout);
            h.spawn(async move {
                if let Err(e) = abort_within(&mut u, budget).await {
                    tracing::warn!(%key, error = %e, "aborting a dropped multipart upload failed");
                }
            });
        }
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.hash.update(&chunk);
        self.buffered += chunk.len();
        self.buf.push(chunk);
        // S3 takes at most 10,000 parts: every 1,000 parts the part size grows by the base
        // size (5 MiB parts reach 275 GB), so memory grows only for the largest dumps.
        if self.buffered >= self.part_size * (1 + self.parts_sent / 1000) {
            // Backpressure: never more than parts_in_flight parts uploading while one fills.
            self.wait_below(self.parts_in_flight).await?;
            self.send_part();
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Stored, StoreError> {
        // The last part (S3 takes one empty part for an empty object).
        if self.buffered > 0 || self.tasks.is_empty() {
            self.send_part();
        }
        let done = match self.wait_below(1).await {
            Ok(()) => {
                let up = self.upload.as_mut().expect("upload open");
                up.complete()
                    .await
                    .map_err(|e| map(&self.repo, &self.key, e))
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(_) => {
                self.upload = None;
                let (size, sha256) = std::mem::take(&mut self.hash).done();
                Ok(Stored {
                    key: self.key.clone(),
                    size,
                    sha256,
                })
            }
            Err(e) => {
                let key = self.key.clone();
                match self.abort().await {
                    Ok(()) => Err(e),
                    Err(a) => Err(StoreError::new(
                        e.kind,
                        &e.repository,
                        &key,
                        format!(
                            "{}; aborting the upload failed too: {}",
                            e.message, a.message
                        ),
                    )),
                }
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StoreError> {
        self.tasks.shutdown().await;
        match self.upload.take() {
            Some(mut u) => abort_within(&mut u, self.abort_timeout)
                .await
                .map_err(|e| map(&self.repo, &self.key, e)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        self.display.clone()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let p = self.path(key)?;
        if self.size(key).await?.is_some() {
            return Err(StoreError::new(
                ErrorKind::Exists,
                &self.name,
                key,
                "exists already: objects are written once, never replaced",
            ));
        }
        let up = self
            .store
            .put_multipart(&p)
            .await
            .map_err(|e| map(&self.name, key, e))?;
        Ok(Box::new(S3Writer {
            repo: self.name.clone(),
            key: key.to_string(),
            upload: Some(up),
            tasks: tokio::task::JoinSet::new(),
            buf: Vec::new(),
            buffered: 0,
            part_size: self.part_size,
            parts_in_flight: self.parts_in_flight,
            parts_sent: 0,
            abort_timeout: self.abort_timeout,
            hash: Hasher::default(),
        }))
    }

    async fn put_once(&self, key: &str, bytes: Bytes) -> Result<Stored, StoreError> {
        let p = self.path(key)?;
        let mut h = Hasher::default();
        h.update(&bytes);
        self.store
            .put_opts(
                &p,
                PutPayload::from(bytes),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map(&self.name, key, e))?;
        let (size, sha256) = h.done();
        Ok(Stored {
            key: key.to_string(),
            size,
            sha256,
        })
    }

    async fn read(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        // Ranged GETs of READ_CHUNK, one fetched ahead: each is a whole request with its own
        // deadline and retries, whatever the pace of the reader. One GET of the whole object
        // would hold its body open while a restore consumes it slowly, and object_store gives
        // up on a body past `retry_timeout` counted from the GET's start (a long restore).
        let p = self.path(key)?;
        let size = match self.store.head(&p).await {
            Ok(m) => m.size,
            Err(e) => return Err(map(&self.name, key, e)),
        };
        let (repo, k, store) = (self.name.clone(), key.to_string(), Arc::clone(&self.store));
        let ranges = (0..size.div_ceil(READ_CHUNK))
            .map(move |i| i * READ_CHUNK..((i + 1) * READ_CHUNK).min(size));
        Ok(futures_util::stream::iter(ranges)
            .map(move |r| {
                let (store, p, repo, k) = (Arc::clone(&store), p.clone(), repo.clone(), k.clone());
                async move {
                    let want = r.end - r.start;
                    let b = store
                        .get_range(&p, r)
                        .await
                        .map_err(|e| map(&repo, &k, e))?;
                    if b.len() as u64 != want {
                        return Err(StoreError::new(
                            ErrorKind::Failed,
                            &repo,
                            &k,
                            format!("a ranged read returned {} bytes instead of {want}", b.len()),
                        ));
                    }
                    Ok(b)
                }
            })
            .buffered(2)
            .boxed())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let p = self.path(key)?;
        match self.store.head(&p).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map(&self.name, key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let p = self.path(key)?;
        match self.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map(&self.name, key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let p = if prefix.is_empty() {
            if self.prefix.is_empty() {
                None
            } else {
                Some(Path::from(self.prefix.as_str()))
            }
        } else {
            Some(self.path(prefix.trim_end_matches('/'))?)
        };
        let metas: Vec<_> = self
            .store
            .list(p.as_ref())
            .try_collect()
            .await
            .map_err(|e| map(&self.name, prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .iter()
            .map(|m| ObjectInfo {
                key: self.key_of(&m.location),
                size: m.size,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
