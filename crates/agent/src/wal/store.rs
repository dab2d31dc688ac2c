//! Intake of the files pg_receivewal completed in an archive's incoming directory: check,
//! compress, hash, store durably, and describe for the ledger.
//!
//! Layout (under the node's directory, `crate::roots::node_dir_for_write`, so retention may
//! delete there later):
//!
//! ```text
//! <node dir>/wal/node<NodeID>/incoming/                 pg_receivewal -D (segments, .partial)
//! <node dir>/wal/node<NodeID>/<sysid>/<TLI>/<name>.zst   stored segments and .history files
//! <node dir>/wal/node<NodeID>/refused/<name>             kept aside: failed the header check,
//!                                                        or other content under a stored name
//! ```
//!
//! The NodeID keeps two nodes that share a partition apart (a standby has its primary's system
//! identifier); the system identifier keeps a re-initialised node's WAL apart from the old one.
//! A file is removed from `incoming/` only after its stored copy and its pending report are
//! durable, so a crash at any point leaves the file to be taken again (same content: no-op).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pgbackman_core::wal::{
    HeaderVerdict, SegmentExpectation, SegmentSize, TimelineHistory, WalFileKind, WalFileName,
    check_segment_header,
};
use pgbackman_db::wal::{HistoryLine, WalObject};
use sha2::{Digest, Sha256};

/// zstd level of stored WAL: WAL compresses well already at low levels, and intake must keep
/// up with the node.
const ZSTD_LEVEL: i32 = 3;
/// What the header check reads of a segment: its first page (XLOG_BLCKSZ).
const HEAD: u64 = 8192;

/// Where one archive keeps its files.
#[derive(Debug, Clone)]
pub struct ArchiveDirs {
    /// `<node dir>/wal/node<NodeID>`.
    pub root: PathBuf,
}

impl ArchiveDirs {
    pub fn new(node_dir: &Path, node_id: i64) -> ArchiveDirs {
        ArchiveDirs {
            root: node_dir.join("wal").join(format!("node{node_id}")),
        }
    }
    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }
    pub fn refused(&self) -> PathBuf {
        self.root.join("refused")
    }
    pub fn stored(&self, sysid: u64, name: &WalFileName) -> PathBuf {
        self.root
            .join(sysid.to_string())
            .join(format!("{:08X}", name.tli))
            .join(format!("{name}.zst"))
    }
}

/// What the node said about itself when its receiver started.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: i64,
    pub label: String,
    pub sysid: u64,
    pub major: u32,
    pub seg_size: SegmentSize,
}

/// What became of one incoming file.
#[derive(Debug)]
pub enum Intake {
    /// Stored (or found stored with the same content): report this.
    Stored(Box<WalObject>),
    /// Not ours to take now (`.partial`, temporary files, other names).
    Skipped,
    /// Kept aside in `refused/`, with why.
    Refused(String),
}

/// The completed files of `incoming/` a pass takes: segments and history files, and the
/// `.partial` segment a timeline ended with once a later timeline exists (pg_receivewal leaves
/// it when the node was promoted: the tail of the old timeline, needed to replay up to the
/// switch point). Oldest name first (history files before the segments of their timeline).
pub fn completed(dirs: &ArchiveDirs, node: &NodeIdentity) -> Vec<(WalFileName, PathBuf)> {
    let mut v: Vec<(String, WalFileName, PathBuf)> = fs::read_dir(dirs.incoming())
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.to_string();
                    let w = WalFileName::parse(&n, node.seg_size).ok()?;
                    matches!(
                        w.kind,
                        WalFileKind::Segment { .. }
                            | WalFileKind::History
                            | WalFileKind::Partial { .. }
                    )
                    .then(|| (n, w, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    let newest = v
        .iter()
        .filter(|(_, w, _)| !matches!(w.kind, WalFileKind::Partial { .. }))
        .map(|(_, w, _)| w.tli)
        .chain(stored_timelines(dirs, node.sysid))
        .max()
        .unwrap_or(0);
    v.retain(|(_, w, _)| !matches!(w.kind, WalFileKind::Partial { .. }) || w.tli < newest);
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(_, w, p)| (w, p)).collect()
}

/// The timelines with a directory in the store.
fn stored_timelines(dirs: &ArchiveDirs, sysid: u64) -> Vec<u32> {
    fs::read_dir(dirs.root.join(sysid.to_string()))
        .map(|d| {
            d.flatten()
                .filter_map(|e| u32::from_str_radix(e.file_name().to_str()?, 16).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Where timeline `tli` ended, from the newest history file known (incoming or stored).
fn switch_point(
    dirs: &ArchiveDirs,
    node: &NodeIdentity,
    tli: u32,
) -> Option<pgbackman_core::wal::Lsn> {
    let mut later: Vec<u32> = stored_timelines(dirs, node.sysid)
        .into_iter()
        .filter(|t| *t > tli)
        .collect();
    later.sort_unstable();
    for t in later.into_iter().rev() {
        let name = WalFileName::history(t, node.seg_size);
        let incoming = dirs.incoming().join(name.to_string());
        let content = fs::read(&incoming).ok().or_else(|| {
            fs::read(dirs.stored(node.sysid, &name))
                .ok()
                .and_then(|z| zstd::decode_all(&z[..]).ok())
        });
        if let Some(c) = content
            && let Ok(h) = TimelineHistory::parse(t, &c)
            && let Ok(Some(lsn)) = h.switch_point(tli)
        {
            return Some(lsn);
        }
    }
    None
}

#[cfg(test)]
fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn mkdirs(dir: &Path) -> Result<()> {
    crate::state::create_dir_0700(dir)
}

/// What a stored file is: its plain bytes' sha256, and the size and sha256 of the stored ones.
struct Digests {
    sha256: String,
    stored_size: u64,
    stored_sha256: String,
}

/// Chunk of the streamed intake: the agent holds one, not a whole segment and its compressed
/// copy (32 MB a segment, which the allocator kept: 76.7 MB peak RSS of a debug agent under
/// bench/wal-intake.sh, 24.7 MB streamed).
const CHUNK: usize = 1 << 20;

/// The sha256 of everything `r` yields, read a chunk at a time.
fn sha256_of(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(hex::encode(h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A writer that hashes and counts what goes through it (the stored bytes, as they are written).
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.sha.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses the `len` bytes of `plain` (from its start) into `dest` durably: a temporary file
/// beside it, fsync, rename, fsync of the directory; streamed a chunk at a time, hashing the plain
/// and the stored bytes on the way.
fn compress_durable(plain: &mut File, len: u64, dest: &Path) -> Result<Digests> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    mkdirs(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal")
    ));
    let ctx = || format!("writing {}", tmp.display());
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(ctx)?;
    let out = Hashing {
        inner: BufWriter::with_capacity(CHUNK / 4, f),
        sha: Sha256::new(),
        n: 0,
    };
    let mut z = zstd::stream::Encoder::new(out, ZSTD_LEVEL).with_context(ctx)?;
    // The size in the frame header, as bulk compression wrote it; a file that is not `len`
    // bytes long fails `finish`.
    z.set_pledged_src_size(Some(len)).with_context(ctx)?;
    z.include_contentsize(true).with_context(ctx)?;
    plain.seek(SeekFrom::Start(0)).with_context(ctx)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(ctx),
        };
        h.update(&buf[..n]);
        z.write_all(&buf[..n]).with_context(ctx)?;
    }
    let out = z.finish().with_context(ctx)?;
    let Hashing { inner, sha, n } = out;
    let f = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    sync_dir(dir)?;
    Ok(Digests {
        sha256: hex::encode(h.finalize()),
        stored_size: n,
        stored_sha256: hex::encode(sha.finalize()),
    })
}

/// Moves a file aside into `refused/` (never overwriting what is there).
fn refuse(dirs: &ArchiveDirs, path: &Path, name: &WalFileName, why: String) -> Result<Intake> {
    let aside = dirs.refused();
    mkdirs(&aside)?;
    let dest = aside.join(format!(
        "{name}.{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.fZ")
    ));
    fs::rename(path, &dest)
        .with_context(|| format!("moving {} to {}", path.display(), dest.display()))?;
    sync_dir(&aside)?;
    Ok(Intake::Refused(format!(
        "{why} (kept as {})",
        dest.display()
    )))
}

/// Takes one completed file: checks it, stores it compressed, and describes it. The incoming
/// file is left in place (the caller removes it once the report is spooled).
pub fn take(
    dirs: &ArchiveDirs,
    node: &NodeIdentity,
    name: &WalFileName,
    path: &Path,
) -> Result<Intake> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    // Only the first page up front (the header check); a history file is small and read whole.
    let head_len = match name.kind {
        WalFileKind::History => len,
        _ => len.min(HEAD),
    };
    let mut plain = vec![0u8; usize::try_from(head_len)?];
    file.read_exact(&mut plain)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut history = Vec::new();
    let expect = SegmentExpectation {
        node: &node.label,
        major: node.major,
        system_identifier: node.sysid,
        seg_size: node.seg_size,
    };
    let (kind, segno, start, end) = match name.kind {
        WalFileKind::Segment { segno } => {
            if len != u64::from(node.seg_size.bytes()) {
                // pg_receivewal renames only full segments; anything else is not done yet.
                return Ok(Intake::Skipped);
            }
            if let HeaderVerdict::Invalid(p) = check_segment_header(name, &plain, &expect) {
                return refuse(dirs, path, name, p.to_string());
            }
            (
                "full",
                Some(segno),
                node.seg_size.segment_start(segno),
                node.seg_size.segment_end(segno),
            )
        }
        WalFileKind::Partial { segno } => {
            // Only once the history file saying where this timeline ended is stored.
            let Some(end) = switch_point(dirs, node, name.tli) else {
                return Ok(Intake::Skipped);
            };
            if let HeaderVerdict::Invalid(p) = check_segment_header(name, &plain, &expect) {
                return refuse(dirs, path, name, p.to_string());
            }
            (
                "partial",
                Some(segno),
                node.seg_size.segment_start(segno),
                Some(end),
            )
        }
        WalFileKind::History => {
            let h = match TimelineHistory::parse(name.tli, &plain) {
                Ok(h) => h,
                Err(e) => return refuse(dirs, path, name, e.to_string()),
            };
            for s in h.spans() {
                if let Some(end) = s.end {
                    history.push(HistoryLine {
                        timeline: s.tli,
                        switch_lsn: end.to_string(),
                        reason: reason_of(&plain, s.tli),
                    });
                }
            }
            ("history", None, None, None)
        }
        _ => return Ok(Intake::Skipped),
    };
    let dest = dirs.stored(node.sysid, name);
    let d = if dest.exists() {
        // Taken before (a crash between the store and the removal, or the slot replayed it).
        let rd = |p: &Path| File::open(p).with_context(|| format!("reading {}", p.display()));
        file.seek(SeekFrom::Start(0))
            .with_context(|| format!("reading {}", path.display()))?;
        let sha = sha256_of(&mut file).with_context(|| format!("reading {}", path.display()))?;
        let old = zstd::stream::Decoder::new(rd(&dest)?)
            .and_then(sha256_of)
            .with_context(|| format!("decompressing {}", dest.display()))?;
        if old != sha {
            return refuse(
                dirs,
                path,
                name,
                format!(
                    "{name} arrived again with other content than the copy stored in {}",
                    dest.display()
                ),
            );
        }
        Digests {
            sha256: sha,
            stored_size: fs::metadata(&dest)
                .with_context(|| format!("reading {}", dest.display()))?
                .len(),
            stored_sha256: sha256_of(rd(&dest)?)
                .with_context(|| format!("reading {}", dest.display()))?,
        }
    } else {
        compress_durable(&mut file, len, &dest)?
    };
    Ok(Intake::Stored(Box::new(WalObject {
        node_id: node.node_id,
        system_identifier: node.sysid.to_string(),
        timeline: name.tli,
        segno,
        kind: kind.into(),
        seg_size: node.seg_size.bytes(),
        start_lsn: start.map(|l| l.to_string()),
        end_lsn: end.map(|l| l.to_string()),
        size: len,
        stored_size: d.stored_size,
        sha256: d.sha256,
        stored_sha256: d.stored_sha256,
        codec: "zstd".into(),
        stored_path: dest.display().to_string(),
        arrival: "stream".into(),
        header_check: if kind != "history" {
            "PASSED"
        } else {
            "NOT_CHECKED"
        }
        .into(),
        header_detail: None,
        arrived_at: chrono::Utc::now(),
        history,
    })))
}

/// The reason text of timeline `tli`'s line in a history file (`<tli>\t<lsn>\t<reason>`).
fn reason_of(content: &[u8], tli: u32) -> String {
    String::from_utf8_lossy(content)
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, '\t');
            let t: u32 = f.next()?.trim().parse().ok()?;
            (t == tli).then(|| f.nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// Empties `incoming/` (files already taken or never completed); returns how many went.
pub fn clear_incoming(dirs: &ArchiveDirs) -> Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dirs.incoming())
        .with_context(|| format!("reading {}", dirs.incoming().display()))?
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            remove_incoming(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes the incoming file once what it became is durable elsewhere.
pub fn remove_incoming(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSID: u64 = 7_412_345_678_901_234_567;

    fn node() -> NodeIdentity {
        NodeIdentity {
            node_id: 7,
            label: "pg1:5432".into(),
            sysid: SYSID,
            major: 15,
            seg_size: SegmentSize::default(),
        }
    }

    /// A segment whose long page header says what a PostgreSQL 15 node `sysid` writes.
    fn segment(segno: u64, sysid: u64, fill: u8) -> Vec<u8> {
        let size = SegmentSize::default();
        let mut b = vec![fill; size.bytes() as usize];
        b[..40].fill(0);
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&2u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&(segno * u64::from(size.bytes())).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&size.bytes().to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn put(dirs: &ArchiveDirs, segno: u64, bytes: &[u8]) -> (WalFileName, PathBuf) {
        let name = WalFileName::segment(1, segno, SegmentSize::default());
        fs::create_dir_all(dirs.incoming()).unwrap();
        let p = dirs.incoming().join(name.to_string());
        fs::write(&p, bytes).unwrap();
        (name, p)
    }

    #[test]
    fn a_segment_is_stored_compressed_with_both_hashes_and_taken_again_as_the_same() {
        let t = tempfile::tempdir().unwrap();
        let dirs = ArchiveDirs::new(t.path(), 7);
        let seg = segment(3, SYSID, 0);
        let (name, p) = put(&dirs, 3, &seg);
        assert_eq!(completed(&dirs, &node()).len(), 1);
        let Intake::Stored(o) = take(&dirs, &node(), &name, &p).unwrap() else {
            panic!("not stored")
        };
        let dest = dirs.stored(SYSID, &name);
        assert_eq!(
            dest,
            t.path()
                .join("wal/node7/7412345678901234567/00000001/000000010000000000000003.zst")
        );
        let z = fs::read(&dest).unwrap();
        assert!(z.len() < seg.len() / 100);
        assert_eq!(o.stored_sha256, sha256_hex(&z));
        assert_eq!(o.sha256, sha256_hex(&seg));
        assert_eq!(o.start_lsn.as_deref(), Some("0/3000000"));
        assert_eq!(o.end_lsn.as_deref(), Some("0/4000000"));
        assert_eq!(
            (o.kind.as_str(), o.segno, o.header_check.as_str()),
            ("full", Some(3), "PASSED")
        );
        // Taken again (a crash before the incoming file was removed): the same object.
        let Intake::Stored(again) = take(&dirs, &node(), &name, &p).unwrap() else {
            panic!("not stored again")
        };
        assert_eq!(again.sha256, o.sha256);
        remove_incoming(&p).unwrap();
        assert!(completed(&dirs, &node()).is_empty());
    }

    #[test]
    fn other_content_under_a_stored_name_and_a_foreign_segment_are_kept_aside() {
        let t = tempfile::tempdir().unwrap();
        let dirs = ArchiveDirs::new(t.path(), 7);
        let (name, p) = put(&dirs, 3, &segment(3, SYSID, 0));
        assert!(matches!(
            take(&dirs, &node(), &name, &p).unwrap(),
            Intake::Stored(_)
        ));
        let (name, p) = put(&dirs, 3, &segment(3, SYSID, 1));
        let Intake::Refused(why) = take(&dirs, &node(), &name, &p).unwrap() else {
            panic!("overwritten")
        };
        assert!(why.contains("other content"), "{why}");
        assert!(!p.exists());
        let (name, p) = put(&dirs, 4, &segment(4, 42, 0));
        let Intake::Refused(why) = take(&dirs, &node(), &name, &p).unwrap() else {
            panic!("foreign segment stored")
        };
        assert!(why.contains("42"), "{why}");
        assert_eq!(fs::read_dir(dirs.refused()).unwrap().count(), 2);
        // A file shorter than a segment is not complete yet.
        let (name, p) = put(&dirs, 5, &segment(5, SYSID, 0)[..8192]);
        assert!(matches!(
            take(&dirs, &node(), &name, &p).unwrap(),
            Intake::Skipped
        ));
    }

    #[test]
    fn the_partial_tail_of_a_timeline_is_taken_once_its_successor_history_is_stored() {
        let t = tempfile::tempdir().unwrap();
        let dirs = ArchiveDirs::new(t.path(), 7);
        let size = SegmentSize::default();
        let partial = WalFileName::parse("000000010000000000000003.partial", size).unwrap();
        fs::create_dir_all(dirs.incoming()).unwrap();
        let pp = dirs.incoming().join(partial.to_string());
        fs::write(&pp, segment(3, SYSID, 0)).unwrap();
        // The timeline still being written: not taken.
        assert!(completed(&dirs, &node()).is_empty());
        let hist = dirs.incoming().join("00000002.history");
        fs::write(&hist, "1\t0/3000100\tno recovery target specified\n").unwrap();
        let names: Vec<String> = completed(&dirs, &node())
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(
            names,
            ["000000010000000000000003.partial", "00000002.history"]
        );
        // The partial first waits for the history file to be stored.
        assert!(matches!(
            take(&dirs, &node(), &partial, &pp).unwrap(),
            Intake::Skipped
        ));
        let h = WalFileName::history(2, size);
        let Intake::Stored(o) = take(&dirs, &node(), &h, &hist).unwrap() else {
            panic!("history not stored")
        };
        assert_eq!(o.history.len(), 1);
        assert_eq!(o.history[0].switch_lsn, "0/3000100");
        let Intake::Stored(o) = take(&dirs, &node(), &partial, &pp).unwrap() else {
            panic!("partial not stored")
        };
        assert_eq!(o.kind, "partial");
        assert_eq!(o.start_lsn.as_deref(), Some("0/3000000"));
        assert_eq!(o.end_lsn.as_deref(), Some("0/3000100"));
        assert!(
            o.stored_path
                .ends_with("00000001/000000010000000000000003.partial.zst")
        );
    }
}
