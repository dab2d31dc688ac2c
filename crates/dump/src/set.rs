//! The backup set on disk: private directories and files, streaming compression and hashing,
//! fsync, the no-replace rename into place, the manifest, verification and staging cleanup.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DumpError;
use crate::spec::{FileEntry, TableRowCounts};

/// Name of the manifest in a set.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the log in a set.
pub const LOG_FILE: &str = "backup.log";
/// Version of the manifest layout.
pub const MANIFEST_FORMAT: u32 = 1;
/// The layout of an encrypted set: format 1 plus `encryption` (a reader of format 1 only
/// refuses it instead of reading ciphertext as zstd).
pub const MANIFEST_FORMAT_ENCRYPTED: u32 = 2;

/// Creates `path` with mode 0700 (exactly: the umask is not allowed to matter).
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Creates `path` and its missing parents with mode 0700 (existing ones are not touched).
pub(crate) fn create_private_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        create_private_dir_all(parent)?;
    }
    match create_private_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Creates a new file with mode 0600.
pub(crate) fn create_private_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Writes `content` to a new 0600 file, fsynced; returns its entry.
pub(crate) fn write_private_file(dir: &Path, name: &str, content: &[u8]) -> io::Result<FileEntry> {
    let mut f = create_private_file(&dir.join(name))?;
    f.write_all(content)?;
    f.sync_all()?;
    Ok(FileEntry {
        name: name.to_string(),
        size: content.len() as u64,
        sha256: hex::encode(Sha256::digest(content)),
    })
}

/// fsync of a directory (makes the names in it durable).
pub(crate) fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Renames `from` to `to`, failing when `to` exists (rename(2) alone would replace an empty
/// directory).
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // Filesystems without RENAME_NOREPLACE: check, then rename.
            Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", to.display()),
        ));
    }
    fs::rename(from, to)
}

/// Why a streaming pass failed.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// Reading the child's output.
    Read(io::Error),
    /// The compressor.
    Compress(io::Error),
    /// Writing the file (disk full, IO error).
    Write(io::Error),
    /// Uploading to a repository: the store's error (repository, key) and what became of the
    /// upload.
    Upload(String),
}

/// Bytes written between two background flushes of a streamed dump (small in unit tests, so
/// that they flush).
const WRITEBACK_EVERY: u64 = if cfg!(test) { 64 << 10 } else { 32 << 20 };

/// Flushes a file being written on a thread of its own, each time it is asked to, so that the
/// fsync at the end of a dump waits for the last few MB only, not for the whole file (a 220 MB
/// dump left dirty until the end took ~0.25 s more to fsync there, and dirty pages are only
/// written back by the kernel much later on a machine with free memory). The first error is
/// kept and reported at [`Writeback::finish`]: an fsync error is reported once per open file, so
/// the final fsync alone could miss it.
struct Writeback {
    tx: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Writeback {
    fn start(file: &File) -> io::Result<Writeback> {
        let file = file.try_clone()?;
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("pgbackman-writeback".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Writeback {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks for a flush; a flush already pending covers this one.
    fn kick(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }

    /// Stops the thread; its first error, if any.
    fn finish(&mut self) -> io::Result<()> {
        self.tx = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the writeback thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        // A failed run does not wait for its flush.
        self.tx = None;
    }
}

/// A writer that hashes and counts what it writes and remembers its own IO errors (so that an
/// error surfacing through the compressor can be told apart from a compressor error).
struct HashingWriter {
    file: File,
    hasher: Sha256,
    written: Arc<AtomicU64>,
    /// Set on this writer's own IO errors (shared: an age layer may sit between it and zstd).
    failed: Arc<AtomicBool>,
    writeback: Writeback,
    since_kick: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.write(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.written.fetch_add(n as u64, Ordering::Relaxed);
                self.since_kick += n as u64;
                if self.since_kick >= WRITEBACK_EVERY {
                    self.since_kick = 0;
                    self.writeback.kick();
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .flush()
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }
}

/// A new 0600 file written through zstd (content checksum on, zstd's worker threads) with the
/// sha256 and count of the compressed bytes taken as they reach the file, flushed in the
/// background as it grows. Blocking.
pub(crate) struct ZstdFile {
    encoder: zstd::stream::write::Encoder<'static, crate::crypt::Sealed<HashingWriter>>,
    failed: Arc<AtomicBool>,
}

impl ZstdFile {
    /// Creates `dest` (which must not exist); `written` counts compressed bytes.
    pub(crate) fn create(
        dest: &Path,
        level: i32,
        written: Arc<AtomicU64>,
    ) -> Result<ZstdFile, StreamError> {
        Self::create_sealed(dest, level, written, None)
    }

    /// [`create`](Self::create), encrypted with age to `seal` between zstd and the hash when
    /// given (crate::crypt): the sha256 and size are those of the stored ciphertext.
    pub(crate) fn create_sealed(
        dest: &Path,
        level: i32,
        written: Arc<AtomicU64>,
        seal: Option<&crate::crypt::Seal>,
    ) -> Result<ZstdFile, StreamError> {
        let file = create_private_file(dest).map_err(StreamError::Write)?;
        let writeback = Writeback::start(&file).map_err(StreamError::Write)?;
        let failed = Arc::new(AtomicBool::new(false));
        let sink = HashingWriter {
            file,
            hasher: Sha256::new(),
            written,
            failed: Arc::clone(&failed),
            writeback,
            since_kick: 0,
        };
        let sink = crate::crypt::Sealed::new(sink, seal).map_err(StreamError::Write)?;
        let mut encoder =
            zstd::stream::write::Encoder::new(sink, level).map_err(StreamError::Compress)?;
        encoder
            .include_checksum(true)
            .map_err(StreamError::Compress)?;
        // Compression runs on zstd's worker threads; this thread only feeds it and hashes the
        // output. Single-threaded, zstd plus sha256 in one thread was the slowest stage of a
        // backup (bench/README.md: 1.34x the pg_dump ceiling at scale 4).
        encoder
            .multithread(compression_workers())
            .map_err(StreamError::Compress)?;
        Ok(ZstdFile { encoder, failed })
    }

    fn classify(&self, e: io::Error) -> StreamError {
        if self.failed.load(Ordering::Relaxed) {
            StreamError::Write(e)
        } else {
            StreamError::Compress(e)
        }
    }

    /// Compresses `buf` into the file.
    pub(crate) fn write_all(&mut self, buf: &[u8]) -> Result<(), StreamError> {
        self.encoder.write_all(buf).map_err(|e| self.classify(e))
    }

    /// Ends the frame, waits for the background flushes and fsyncs: (size, sha256) of the file.
    pub(crate) fn finish(mut self) -> Result<(u64, String), StreamError> {
        if let Err(e) = self.encoder.do_finish() {
            return Err(self.classify(e));
        }
        let sealed = self.encoder.finish().map_err(StreamError::Compress)?;
        let mut sink = match sealed.finish() {
            Ok(s) => s,
            Err(e) if self.failed.load(Ordering::Relaxed) => return Err(StreamError::Write(e)),
            Err(e) => return Err(StreamError::Compress(e)),
        };
        sink.writeback.finish().map_err(StreamError::Write)?;
        sink.file.sync_all().map_err(StreamError::Write)?;
        let size = sink.written.load(Ordering::Relaxed);
        Ok((size, hex::encode(sink.hasher.finalize())))
    }
}

/// Reads `input` to its end, compresses it with zstd at `level` (content checksum on) and
/// writes it to the new 0600 file `dest`, hashing the compressed bytes in the same pass.
/// `written` counts compressed bytes as they reach the file. Returns (size, sha256). Blocking.
/// On any error it returns at once: dropping `input` closes the pipe, so the writer end sees
/// EPIPE and stops.
#[cfg(test)]
pub(crate) fn compress_stream(
    input: impl Read,
    dest: &Path,
    level: i32,
    written: Arc<AtomicU64>,
) -> Result<(u64, String), StreamError> {
    compress_stream_sealed(input, dest, level, written, None)
}

/// [`compress_stream`], encrypted to `seal` when given (crate::crypt).
pub(crate) fn compress_stream_sealed(
    mut input: impl Read,
    dest: &Path,
    level: i32,
    written: Arc<AtomicU64>,
    seal: Option<&crate::crypt::Seal>,
) -> Result<(u64, String), StreamError> {
    let mut out = ZstdFile::create_sealed(dest, level, written, seal)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::Read(e)),
        };
        out.write_all(&buf[..n])?;
    }
    out.finish()
}

/// zstd worker threads: the machine's cores, at most 8.
pub(crate) fn compression_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get().min(8)).unwrap_or(1))
}

/// Hashes a file (sha256) and fsyncs it. `abort` stops early (returns Interrupted).
pub(crate) fn hash_file(path: &Path, abort: &AtomicBool) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    f.sync_all()?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Makes the tree under `dir` private (dirs 0700, files 0600), hashes and fsyncs every file
/// and fsyncs every directory. Entries are named relative to `base`, `/`-separated, sorted.
pub(crate) fn hash_tree(base: &Path, dir: &Path, abort: &AtomicBool) -> io::Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.extend(hash_tree(base, &path, abort)?);
        } else if kind.is_file() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            let (size, sha256) = hash_file(&path, abort)?;
            out.push(FileEntry {
                name: relative_name(base, &path),
                size,
                sha256,
            });
        } else {
            return Err(io::Error::other(format!(
                "unexpected non-regular file {}",
                path.display()
            )));
        }
    }
    fsync_dir(dir)?;
    Ok(out)
}

/// Sum of the sizes of the regular files under `dir` (progress of a directory-format dump).
pub(crate) fn tree_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn relative_name(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// One command a run executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestCommand {
    /// The step.
    pub step: String,
    /// argv, no secret in it.
    pub argv: Vec<String>,
    /// Exit status.
    pub exit_status: Option<i32>,
}

/// Seconds spent in a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// The phase.
    pub phase: String,
    /// Seconds.
    pub seconds: f64,
}

/// `manifest.json` of a backup set (format 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version: 1.
    pub format: u32,
    /// Version of the pgbackman that wrote the set.
    pub pgbackman_version: String,
    /// The job.
    pub job_id: i64,
    /// Backup code (`FULL`, …).
    pub code: String,
    /// Node profile (`standard` / `managed`).
    pub profile: String,
    /// Database (empty for CLUSTER / GLOBALS).
    pub dbname: String,
    /// The node as people know it.
    pub node: String,
    /// The backup definition as it was.
    pub definition: serde_json::Value,
    /// Dump format and compression, e.g. `{"kind":"custom","compression":"zstd","level":3}`.
    pub dump_format: serde_json::Value,
    /// The main dump, relative to the set.
    pub dump_file: String,
    /// Server `server_version`.
    pub server_version: String,
    /// Server `server_version_num`.
    pub server_version_num: i32,
    /// `pg_dump --version` (or pg_dumpall's) of the client used.
    pub client_version: String,
    /// argv of the main dump command.
    pub command: Vec<String>,
    /// Every command run, in order.
    pub commands: Vec<ManifestCommand>,
    /// Every file of the set except the manifest itself, sorted by name.
    pub files: Vec<FileEntry>,
    /// Sum of the sizes of `files`.
    pub total_size: u64,
    /// Seconds per phase.
    pub phase_timings: Vec<PhaseTiming>,
    /// Roles in roles.sql, sorted.
    pub role_list: Vec<String>,
    /// The roles of `role_list` whose stored names are not UTF-8 (named from a session on a
    /// database of another encoding): name → stored bytes, in hex. roles.sql creates them under
    /// their UTF-8 name; a restore renames them to these bytes (from a session on the restored
    /// database) so that the dump's `OWNER TO` and `GRANT` lines find them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub role_name_bytes: BTreeMap<String, String>,
    /// Whether roles.sql holds password hashes, and why not.
    pub role_passwords: String,
    /// Database size in bytes.
    pub database_size: Option<i64>,
    /// Table row counts.
    pub table_row_counts: Option<TableRowCounts>,
    /// Notes (row counts skipped, warnings).
    pub notes: Vec<String>,
    /// Run start.
    pub started: DateTime<Utc>,
    /// When the content of the set was complete (before fsync and rename).
    pub finished: DateTime<Utc>,
    /// An encrypted set (format 2): who can read it and which files are encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::ManifestEncryption>,
}

impl Manifest {
    /// Whether `name` is stored encrypted.
    pub fn is_encrypted(&self, name: &str) -> bool {
        self.encryption
            .as_ref()
            .is_some_and(|e| e.files.iter().any(|f| f == name))
    }
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, DumpError> {
    let path = dir.join(MANIFEST_FILE);
    let text = fs::read(&path).map_err(|e| DumpError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    parse_manifest(&text, path)
}

/// Parses the bytes of a manifest read from `path` (a file, or an object of a repository).
pub fn parse_manifest(text: &[u8], path: PathBuf) -> Result<Manifest, DumpError> {
    let m: Manifest = serde_json::from_slice(text).map_err(|e| DumpError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if m.format != MANIFEST_FORMAT && m.format != MANIFEST_FORMAT_ENCRYPTED {
        return Err(DumpError::Manifest {
            path,
            reason: format!(
                "format {} is not supported (this pgbackman reads formats {MANIFEST_FORMAT} and {MANIFEST_FORMAT_ENCRYPTED})",
                m.format
            ),
        });
    }
    Ok(m)
}

/// Whether a manifest name stays inside the set.
pub(crate) fn safe_relative(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Verification level 1: every file listed in `dir/manifest.json` exists with its size and
/// sha256, and no other file is there. Names that would leave the set are rejected.
pub fn verify_set(dir: &Path) -> Result<(), DumpError> {
    verify_set_with(dir, &AtomicBool::new(false)).map(|_| ())
}

/// [`verify_set`] that stops (an `Interrupted` IO error) when `abort` is raised; returns the
/// manifest it checked against.
pub(crate) fn verify_set_with(dir: &Path, never: &AtomicBool) -> Result<Manifest, DumpError> {
    verify_set_known(dir, &[], never)
}

/// [`verify_set_with`] right after this process wrote the set: a file listed in `written` with
/// the manifest's own size and sha256 was hashed as its bytes went to `write(2)` and has been
/// fsynced since, so only its size on disk is checked. Reading it back at once would come from
/// the page cache and return those same bytes (it cost ~3 % of a backup's wall time); the
/// scheduled verifications re-read every byte.
pub(crate) fn verify_set_known(
    dir: &Path,
    written: &[FileEntry],
    never: &AtomicBool,
) -> Result<Manifest, DumpError> {
    let m = read_manifest(dir)?;
    let mut problems = Vec::new();
    let mut listed: BTreeMap<&str, &FileEntry> = BTreeMap::new();
    for f in &m.files {
        if !safe_relative(&f.name) || f.name == MANIFEST_FILE {
            problems.push(format!("{:?}: not a valid file name", f.name));
            continue;
        }
        listed.insert(&f.name, f);
        let path = dir.join(&f.name);
        let known = written
            .iter()
            .find(|w| w.name == f.name && w.sha256 == f.sha256)
            .map(|w| w.sha256.clone());
        let checked = match known {
            Some(sha) => regular_file_size(&path).map(|size| (size, sha)),
            None => hash_file_readonly(&path, never),
        };
        match checked {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                return Err(DumpError::Io { path, source: e });
            }
            Ok((size, sha)) => {
                if size != f.size {
                    problems.push(format!("{}: size {size}, manifest says {}", f.name, f.size));
                } else if sha != f.sha256 {
                    problems.push(format!(
                        "{}: sha256 {sha}, manifest says {}",
                        f.name, f.sha256
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", f.name)),
        }
    }
    let base = dir.to_path_buf();
    let mut present = Vec::new();
    list_files(&base, &base, &mut present).map_err(|e| DumpError::Io {
        path: base.clone(),
        source: e,
    })?;
    for name in present {
        if name != MANIFEST_FILE && !listed.contains_key(name.as_str()) {
            problems.push(format!("{name}: not in the manifest"));
        }
    }
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(DumpError::Mismatch {
            dir: dir.to_path_buf(),
            problems: problems.join("; "),
        })
    }
}

/// The size of the regular file at `path` (not following a symlink).
fn regular_file_size(path: &Path) -> io::Result<u64> {
    let md = fs::symlink_metadata(path)?;
    if !md.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(md.len())
}

/// Like [`hash_file`] without fsync (verification only reads).
fn hash_file_readonly(path: &Path, abort: &AtomicBool) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(base, &path, out)?;
        } else {
            out.push(relative_name(base, &path));
        }
    }
    Ok(())
}

/// Removes what interrupted runs left in `staging_root`: every entry named like a job id
/// (`<integer>`). Call it when no run is active (at agent start). Returns how many were removed;
/// a missing `staging_root` is not an error. Other entries are never touched.
pub fn clean_staging(staging_root: &Path) -> io::Result<usize> {
    let rd = match fs::read_dir(staging_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_none_or(|n| n.parse::<i64>().is_err()) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        removed += 1;
    }
    if removed > 0 {
        fsync_dir(staging_root)?;
    }
    Ok(removed)
}

/// Removes a staging directory when dropped unless disarmed: no partial set survives a failure,
/// a cancel or a dropped future.
pub(crate) struct StagingGuard {
    pub path: PathBuf,
    armed: bool,
}

impl StagingGuard {
    pub(crate) fn new(path: PathBuf) -> StagingGuard {
        StagingGuard { path, armed: true }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Removes the directory now.
    pub(crate) fn remove(&mut self) -> io::Result<()> {
        self.armed = false;
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_and_hash_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..500_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let dest = dir.path().join("x.zst");
        let written = Arc::new(AtomicU64::new(0));
        let (size, sha) = compress_stream(&data[..], &dest, 3, written.clone()).unwrap();
        let on_disk = fs::read(&dest).unwrap();
        assert_eq!(size, on_disk.len() as u64);
        assert_eq!(written.load(Ordering::Relaxed), size);
        assert_eq!(sha, hex::encode(Sha256::digest(&on_disk)));
        assert_eq!(zstd::decode_all(&on_disk[..]).unwrap(), data);
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn flushes_in_the_background_while_streaming() {
        let dir = tempfile::tempdir().unwrap();
        // Incompressible, so that the output crosses WRITEBACK_EVERY many times.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let dest = dir.path().join("x.zst");
        let written = Arc::new(AtomicU64::new(0));
        let (size, sha) = compress_stream(&data[..], &dest, 3, written).unwrap();
        assert!(size > 20 * WRITEBACK_EVERY, "{size}");
        let on_disk = fs::read(&dest).unwrap();
        assert_eq!(
            (size, sha),
            (on_disk.len() as u64, hex::encode(Sha256::digest(&on_disk)))
        );
        assert_eq!(zstd::decode_all(&on_disk[..]).unwrap(), data);
    }

    #[test]
    fn rename_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        create_private_dir(&a).unwrap();
        create_private_dir(&b).unwrap();
        assert!(rename_no_replace(&a, &b).is_err());
        fs::remove_dir(&b).unwrap();
        rename_no_replace(&a, &b).unwrap();
        assert!(b.is_dir() && !a.exists());
    }

    #[test]
    fn private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("x/y/z");
        create_private_dir_all(&deep).unwrap();
        for p in [dir.path().join("x"), dir.path().join("x/y"), deep] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
    }

    #[test]
    fn staging_cleanup_touches_only_job_dirs() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("12/dump.dir")).unwrap();
        fs::write(dir.path().join("12/dump.dir/x"), b"x").unwrap();
        fs::create_dir(dir.path().join("-3")).unwrap();
        fs::create_dir(dir.path().join("keep")).unwrap();
        assert_eq!(clean_staging(dir.path()).unwrap(), 2);
        assert!(dir.path().join("keep").is_dir());
        assert_eq!(clean_staging(&dir.path().join("missing")).unwrap(), 0);
    }

    /// A set of two files: `dump` (known to the writer) and `log`, with its manifest.
    fn small_set(dir: &Path) -> Vec<FileEntry> {
        let entries: Vec<FileEntry> = [("dump", &b"dump bytes"[..]), ("log", &b"log"[..])]
            .iter()
            .map(|(n, c)| write_private_file(dir, n, c).unwrap())
            .collect();
        let m = serde_json::json!({
            "format": 1, "pgbackman_version": "t", "job_id": 1, "code": "FULL",
            "profile": "standard", "dbname": "d", "node": "n", "definition": {},
            "dump_format": {}, "dump_file": "dump", "server_version": "15",
            "server_version_num": 150000, "client_version": "15", "command": [],
            "commands": [], "files": entries, "total_size": 13, "phase_timings": [],
            "role_list": [], "role_passwords": "", "database_size": null,
            "table_row_counts": null, "notes": [], "started": "2026-12-03T00:00:00Z",
            "finished": "2026-12-03T00:00:00Z"
        });
        fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        entries
    }

    #[test]
    fn right_after_the_backup_the_written_files_are_checked_by_size_the_others_reread() {
        let never = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let entries = small_set(dir.path());
        let dump = vec![entries[0].clone()];
        verify_set_known(dir.path(), &dump, &never).unwrap();
        // Same size, other bytes in the known file: not re-read (its hash was taken as it was
        // written); in the other file: found.
        fs::write(dir.path().join("dump"), b"dump BYTES").unwrap();
        verify_set_known(dir.path(), &dump, &never).unwrap();
        assert!(verify_set_with(dir.path(), &never).is_err());
        fs::write(dir.path().join("log"), b"LOG").unwrap();
        let e = verify_set_known(dir.path(), &dump, &never).unwrap_err();
        assert!(e.to_string().contains("log: sha256"), "{e}");
        // A known file of another size, or gone, or an entry whose hash differs from what was
        // written: failed.
        let dir = tempfile::tempdir().unwrap();
        let entries = small_set(dir.path());
        fs::write(dir.path().join("dump"), b"dump").unwrap();
        let e = verify_set_known(dir.path(), &entries, &never).unwrap_err();
        assert!(e.to_string().contains("dump: size 4"), "{e}");
        fs::remove_file(dir.path().join("dump")).unwrap();
        assert!(verify_set_known(dir.path(), &entries, &never).is_err());
        let dir = tempfile::tempdir().unwrap();
        let mut entries = small_set(dir.path());
        fs::write(dir.path().join("dump"), b"DUMP BYTES").unwrap();
        entries[0].sha256 = "0".repeat(64);
        assert!(verify_set_known(dir.path(), &entries, &never).is_err());
    }

    #[test]
    fn manifest_names_must_stay_inside() {
        assert!(safe_relative("dump.dir/toc.dat"));
        for bad in ["", "../x", "/etc/passwd", "a/../../b", "./x"] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }
}
