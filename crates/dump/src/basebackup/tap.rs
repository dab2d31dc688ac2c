//! pg_basebackup's tar stream read in flight: every byte goes on to zstd and the set's file
//! unchanged, while a tar reader hashes each member (SHA-256) and keeps the few small ones the
//! catalog needs (`backup_label`, `backup_manifest`, `tablespace_map`, `global/pg_control`).
//! The members are then checked against `backup_manifest`, which pg_basebackup sends last: a
//! base backup is verified with no second read.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, mpsc};

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

/// Bytes handed from the reading thread to the member hasher at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued for the member hasher: the reading thread runs at most this far ahead of it.
const IN_FLIGHT: usize = 4;

/// The chunks of the stream as the member hasher reads them; each chunk goes back to the
/// reading thread once read, so that the stream reuses a few buffers.
struct Chunks {
    rx: mpsc::Receiver<Vec<u8>>,
    back: mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let used = std::mem::replace(&mut self.cur, next);
                    // A full pool only means one more allocation later.
                    let _ = self.back.try_send(used);
                    self.pos = 0;
                }
                // The reading thread is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

type Members = (
    BTreeMap<Vec<u8>, (u64, [u8; 32])>,
    BTreeMap<&'static str, Vec<u8>>,
);

/// Reads `input` until `buf` is full or the stream ends; the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn join_members(h: std::thread::JoinHandle<io::Result<Members>>) -> Result<Members, TapError> {
    match h.join() {
        Ok(r) => r.map_err(|e| TapError::Tar(e.to_string())),
        Err(_) => Err(TapError::Tar("the tar reader thread panicked".into())),
    }
}

/// Reads the tar `input` to its end into the zstd file `dest`, hashing its members. Blocking.
///
/// Three stages run at once (bench/README.md, base backups): this thread reads the pipe and
/// feeds zstd (whose own workers compress; the stored bytes are hashed as they reach the
/// file), a second thread parses the tar and hashes every member, fed with the same chunks.
/// On one thread, reading, hashing and feeding zstd took 2.4 x a plain `| zstd -T2` pipe.
pub(crate) fn tap(
    mut input: impl Read,
    dest: &Path,
    level: i32,
    written: Arc<AtomicU64>,
) -> Result<Tapped, TapError> {
    let mut out = ZstdFile::create(dest, level, written).map_err(TapError::Stream)?;
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
    let (back, pool) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    let hasher = std::thread::Builder::new()
        .name("pgbackman-tar".into())
        .spawn(move || {
            let mut chunks = Chunks {
                rx,
                back,
                cur: Vec::new(),
                pos: 0,
            };
            let mut files = BTreeMap::new();
            let mut kept = BTreeMap::new();
            members(&mut chunks, &mut files, &mut kept).map(|()| (files, kept))
        })
        .map_err(|e| TapError::Tar(format!("cannot start the tar reader thread: {e}")))?;
    let mut tx = Some(tx);
    let mut hasher = Some(hasher);
    let mut parsed = None;
    let mut tar_bytes = 0u64;
    loop {
        let mut buf = pool.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        // The stream's own failure first: the tar reader only sees its consequence (dropping
        // `tx` ends its input, it then stops by itself).
        let n = fill(&mut input, &mut buf).map_err(|e| TapError::Stream(StreamError::Read(e)))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        out.write_all(&buf).map_err(TapError::Stream)?;
        tar_bytes += n as u64;
        if let Some(t) = &tx
            && t.send(buf).is_err()
        {
            // The tar reader stopped: at the end-of-archive blocks (whatever follows goes to the
            // file as it is) or on a broken tar (which ends the backup now).
            tx = None;
            if let Some(h) = hasher.take() {
                parsed = Some(join_members(h)?);
            }
        }
    }
    drop(tx);
    let (files, kept) = match (parsed, hasher) {
        (Some(p), _) => p,
        (None, Some(h)) => join_members(h)?,
        (None, None) => unreachable!("the tar reader is joined once"),
    };
    let stored = out.finish().map_err(TapError::Stream)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `members` (path, bytes) followed by its end-of-archive blocks.
    fn tar_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, path, bytes.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    fn run(input: impl Read) -> (tempfile::TempDir, Result<Tapped, TapError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = tap(input, &dir.path().join("base.tar.zst"), 1, Arc::default());
        (dir, r)
    }

    #[test]
    fn members_spanning_many_chunks_are_hashed_and_every_byte_is_stored() {
        // Not a multiple of anything: members cross chunk boundaries.
        let big: Vec<u8> = (0..(3 * CHUNK + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let label = b"START WAL LOCATION: 0/2000028\n".to_vec();
        let mut stream = tar_of(&[
            ("./backup_label", label.clone()),
            ("base/1/1259", big.clone()),
            ("empty", Vec::new()),
        ]);
        // Bytes after the end-of-archive blocks go to the file as they are.
        stream.extend_from_slice(&[0u8; 9000]);
        let (dir, r) = run(stream.as_slice());
        let t = r.unwrap_or_else(|_| panic!("the tap failed"));
        assert_eq!(t.tar_bytes, stream.len() as u64);
        assert_eq!(
            t.files[b"base/1/1259".as_slice()],
            (big.len() as u64, sha(&big))
        );
        assert_eq!(
            t.files[b"backup_label".as_slice()],
            (label.len() as u64, sha(&label))
        );
        assert_eq!(t.files[b"empty".as_slice()], (0, sha(b"")));
        assert_eq!(t.kept["backup_label"], label);
        let stored = std::fs::read(dir.path().join("base.tar.zst")).unwrap();
        assert_eq!(t.stored, (stored.len() as u64, hex::encode(sha(&stored))));
        assert_eq!(zstd::decode_all(stored.as_slice()).unwrap(), stream);
    }

    #[test]
    fn a_broken_or_truncated_tar_is_a_tar_error() {
        let garbage = vec![0x5au8; 3 * CHUNK];
        assert!(matches!(run(garbage.as_slice()).1, Err(TapError::Tar(_))));
        let whole = tar_of(&[("base/1/1", vec![1u8; 2 * CHUNK])]);
        let cut = &whole[..CHUNK + 700];
        assert!(matches!(run(cut).1, Err(TapError::Tar(_))));
    }

    #[test]
    fn a_failing_pipe_is_a_stream_error_not_a_tar_error() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
                }
                let n = buf.len().min(self.0).min(4096);
                buf[..n].fill(0);
                self.0 -= n;
                Ok(n)
            }
        }
        let r = run(Failing(2 * CHUNK + 100)).1;
        assert!(matches!(r, Err(TapError::Stream(StreamError::Read(_)))));
    }
}
