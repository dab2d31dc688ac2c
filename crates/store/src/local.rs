//! A repository in a local directory (or a mounted one). An object is written to
//! `<root>/.incoming/`, fsynced, then hard-linked to its key: the link fails if the key exists
//! (write-once, no race), and a reader never sees a partial file. Directories 0700, files 0600.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWriteExt;

use crate::{ErrorKind, Hasher, ObjectInfo, ObjectWriter, Store, StoreError, Stored, layout};

#[derive(Debug)]
pub struct LocalStore {
    name: String,
    root: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    pub fn new(name: &str, root: &Path) -> LocalStore {
        LocalStore {
            name: name.to_string(),
            root: root.to_path_buf(),
        }
    }

    fn err(&self, kind: ErrorKind, key: &str, m: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.name, key, m)
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        layout::check_key(key).map_err(|m| self.err(ErrorKind::Failed, key, m))?;
        Ok(self.root.join(key))
    }

    fn io(&self, key: &str, what: &str, e: std::io::Error) -> StoreError {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::Exists,
            _ => ErrorKind::Failed,
        };
        self.err(kind, key, format!("{what} in {}: {e}", self.root.display()))
    }

    fn mkdirs(&self, dir: &Path, key: &str) -> Result<(), StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| self.io(key, "creating a directory", e))
    }
}

struct LocalWriter {
    repo: String,
    key: String,
    target: PathBuf,
    tmp: Option<PathBuf>,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    hash: Hasher,
}

impl LocalWriter {
    fn err(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::new(
            ErrorKind::Failed,
            &self.repo,
            &self.key,
            format!("{what}: {e}"),
        )
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.hash.update(&chunk);
        let f = self.file.as_mut().expect("writer open");
        if let Err(e) = f.write_all(&chunk).await {
            return Err(self.err("writing", e));
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Stored, StoreError> {
        let mut f = self.file.take().expect("writer open");
        if let Err(e) = f.flush().await {
            return Err(self.err("writing", e));
        }
        if let Err(e) = f.get_mut().sync_all().await {
            return Err(self.err("fsync", e));
        }
        drop(f);
        let tmp = self.tmp.clone().expect("temporary file");
        // link(2) refuses an existing target: the write-once check and the publication are
        // one step.
        if let Err(e) = std::fs::hard_link(&tmp, &self.target) {
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::new(
                    ErrorKind::Exists,
                    &self.repo,
                    &self.key,
                    "exists already: objects are written once, never replaced",
                )
            } else {
                self.err("publishing", e)
            });
        }
        if let Some(dir) = self.target.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        let (size, sha256) = std::mem::take(&mut self.hash).done();
        Ok(Stored {
            key: self.key.clone(),
            size,
            sha256,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StoreError> {
        self.file.take();
        if let Some(t) = self.tmp.take() {
            let _ = std::fs::remove_file(t);
        }
        Ok(())
    }
}

#[async_trait]
impl Store for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let target = self.path(key)?;
        if target.exists() {
            return Err(self.err(
                ErrorKind::Exists,
                key,
                "exists already: objects are written once, never replaced",
            ));
        }
        let incoming = self.root.join(".incoming");
        self.mkdirs(&incoming, key)?;
        if let Some(dir) = target.parent() {
            self.mkdirs(dir, key)?;
        }
        let tmp = incoming.join(format!(
            "{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.io(key, "creating a temporary file", e))?;
        Ok(Box::new(LocalWriter {
            repo: self.name.clone(),
            key: key.to_string(),
            target,
            tmp: Some(tmp),
            file: Some(tokio::io::BufWriter::with_capacity(
                1 << 20,
                tokio::fs::File::from_std(file),
            )),
            hash: Hasher::default(),
        }))
    }

    async fn put_once(&self, key: &str, bytes: Bytes) -> Result<Stored, StoreError> {
        let mut w = self.create(key).await?;
        w.write(bytes).await?;
        w.finish().await
    }

    async fn read(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let p = self.path(key)?;
        let f = tokio::fs::File::open(&p)
            .await
            .map_err(|e| self.io(key, "opening", e))?;
        let (repo, k) = (self.name.clone(), key.to_string());
        Ok(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)
            .map(move |r| {
                r.map_err(|e| {
                    StoreError::new(ErrorKind::Failed, &repo, &k, format!("reading: {e}"))
                })
            })
            .boxed())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match std::fs::metadata(self.path(key)?) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(key, "reading the size", e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(key, "deleting", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let start = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix.trim_end_matches('/'))?
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(prefix, "listing", e)),
            };
            for ent in rd.flatten() {
                let p = ent.path();
                let Ok(rel) = p.strip_prefix(&self.root) else {
                    continue;
                };
                let rel = rel.to_string_lossy().to_string();
                if rel.starts_with(".incoming") {
                    continue;
                }
                match ent.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => out.push(ObjectInfo {
                        key: rel,
                        size: ent.metadata().map(|m| m.len()).unwrap_or(0),
                    }),
                    _ => {}
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
