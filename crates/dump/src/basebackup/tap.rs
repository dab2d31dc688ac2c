//! pg_basebackup's tar stream read in flight: every byte goes on to zstd and the set's file
//! unchanged, while a tar reader hashes each member (SHA-256) and keeps the few small ones the
//! catalog needs (`backup_label`, `backup_manifest`, `tablespace_map`, `global/pg_control`).
//! The members are then checked against `backup_manifest`, which pg_basebackup sends last: a
//! base backup is verified with no second read.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use pgbackman_core::wal::BackupManifest;
use pgbackman_core::wal::manifest::ChecksumAlgorithm;
use sha2::{Digest, Sha256};

use crate::set::{StreamError, ZstdFile};

/// Members whose bytes are kept (all small).
const KEPT: &[&str] = &[
    "backup_label",
    "backup_manifest",
    "tablespace_map",
    "global/pg_control",
];

/// What the stream held.
pub(crate) struct Tapped {
    /// Regular members: path → (size, sha256).
    pub files: BTreeMap<Vec<u8>, (u64, [u8; 32])>,
    /// The bytes of the [`KEPT`] members present.
    pub kept: BTreeMap<&'static str, Vec<u8>>,
    /// (size, sha256) of the stored file.
    pub stored: (u64, String),
    /// Bytes of tar read.
    pub tar_bytes: u64,
}

/// Why a tap failed.
#[derive(Debug)]
pub(crate) enum TapError {
    /// Reading the pipe, compressing, writing the file.
    Stream(StreamError),
    /// The stream is not a readable tar.
    Tar(String),
}

/// A reader that hands every byte it reads to the compressor too.
struct Tee<R> {
    inner: R,
    out: ZstdFile,
    failed: Option<StreamError>,
    read: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = Some(StreamError::Read(io::Error::new(e.kind(), e.to_string())));
                }
                return Err(e);
            }
        };
        if let Err(e) = self.out.write_all(&buf[..n]) {
            self.failed = Some(e);
            return Err(io::Error::other("the compressed file could not be written"));
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads the tar `input` to its end into the zstd file `dest`, hashing its members. Blocking.
pub(crate) fn tap(
    input: impl Read,
    dest: &Path,
    level: i32,
    written: Arc<AtomicU64>,
) -> Result<Tapped, TapError> {
    let out = ZstdFile::create(dest, level, written).map_err(TapError::Stream)?;
    let mut tee = Tee {
        inner: io::BufReader::with_capacity(1 << 20, input),
        out,
        failed: None,
        read: 0,
    };
    let mut files = BTreeMap::new();
    let mut kept = BTreeMap::new();
    let parsed = members(&mut tee, &mut files, &mut kept);
    // The stream's own failure first: the tar reader only saw its consequence.
    if let Some(e) = tee.failed.take() {
        return Err(TapError::Stream(e));
    }
    parsed.map_err(|e| TapError::Tar(e.to_string()))?;
    // After the end-of-archive blocks: whatever is left goes to the file as it is.
    let drained = io::copy(&mut tee, &mut io::sink());
    if let Some(e) = tee.failed.take() {
        return Err(TapError::Stream(e));
    }
    drained.map_err(|e| TapError::Stream(StreamError::Read(e)))?;
    let tar_bytes = tee.read;
    let stored = tee.out.finish().map_err(TapError::Stream)?;
    Ok(Tapped {
        files,
        kept,
        stored,
        tar_bytes,
    })
}

fn members<R: Read>(
    tee: &mut R,
    files: &mut BTreeMap<Vec<u8>, (u64, [u8; 32])>,
    kept: &mut BTreeMap<&'static str, Vec<u8>>,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(tee);
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries()? {
        let mut e = entry?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let raw = e.path_bytes().into_owned();
        let path = raw.strip_prefix(b"./").map(<[u8]>::to_vec).unwrap_or(raw);
        let keep = KEPT.iter().find(|k| k.as_bytes() == path.as_slice());
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut bytes = Vec::new();
        loop {
            let n = match e.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            hasher.update(&buf[..n]);
            if keep.is_some() {
                bytes.extend_from_slice(&buf[..n]);
            }
            size += n as u64;
        }
        if let Some(k) = keep {
            kept.insert(*k, bytes);
        }
        files.insert(path, (size, hasher.finalize().into()));
    }
    Ok(())
}

/// The members checked against `backup_manifest`.
pub(crate) struct ManifestCheck {
    /// `PASSED`, `FAILED` or `NOT_CHECKED` (a file without a SHA-256 in the manifest).
    pub state: &'static str,
    /// What failed (the first problems), or why some files were not checked.
    pub detail: Option<String>,
    /// Files whose SHA-256 matched.
    pub files_checked: usize,
    /// The parsed manifest, when it was there and sound.
    pub manifest: Option<BackupManifest>,
}

/// Compares the members with `backup_manifest` (sizes, SHA-256 digests, no member missing and
/// none unlisted but the WAL of `-X fetch`).
pub(crate) fn check_against_manifest(t: &Tapped) -> ManifestCheck {
    let failed = |detail: String| ManifestCheck {
        state: "FAILED",
        detail: Some(detail),
        files_checked: 0,
        manifest: None,
    };
    let Some(bytes) = t.kept.get("backup_manifest") else {
        return failed("the stream held no backup_manifest (pg_basebackup older than 13?)".into());
    };
    let m = match BackupManifest::parse(bytes) {
        Ok(m) => m,
        Err(e) => return failed(format!("backup_manifest: {e}")),
    };
    let mut problems = Vec::new();
    let mut checked = 0usize;
    let mut unchecked = 0usize;
    let listed = m.files_by_path();
    for f in &m.files {
        match t.files.get(f.path.as_slice()) {
            None => problems.push(format!(
                "{}: in backup_manifest, not in the tar",
                f.display_path()
            )),
            Some((size, _)) if *size != f.size => problems.push(format!(
                "{}: {size} bytes in the tar, {} in backup_manifest",
                f.display_path(),
                f.size
            )),
            Some((_, sha)) => match &f.checksum {
                Some(c) if c.algorithm == ChecksumAlgorithm::Sha256 => {
                    if c.value.as_slice() == sha.as_slice() {
                        checked += 1;
                    } else {
                        problems.push(format!(
                            "{}: SHA-256 differs from backup_manifest",
                            f.display_path()
                        ));
                    }
                }
                _ => unchecked += 1,
            },
        }
    }
    for path in t.files.keys() {
        let wal = path.starts_with(b"pg_wal/");
        if !wal && path.as_slice() != b"backup_manifest" && !listed.contains_key(path.as_slice()) {
            problems.push(format!(
                "{}: in the tar, not in backup_manifest",
                String::from_utf8_lossy(path)
            ));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(5);
        return ManifestCheck {
            state: "FAILED",
            detail: Some(format!("{} problem(s): {}", n, problems.join("; "))),
            files_checked: checked,
            manifest: Some(m),
        };
    }
    ManifestCheck {
        state: if unchecked == 0 { "PASSED" } else { "NOT_CHECKED" },
        detail: (unchecked > 0).then(|| {
            format!("{unchecked} file(s) have no SHA-256 in backup_manifest (taken without --manifest-checksums=SHA256)")
        }),
        files_checked: checked,
        manifest: Some(m),
    }
}
