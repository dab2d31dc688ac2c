//! What the agent does with one pushed file once its bytes are in a temporary file beside the
//! store: the timeline lineage check, the content check against a stored copy (other content
//! is kept aside in `refused/` and reported, so the catalog records it in `wal_conflict` and
//! raises WAL_CONFLICT), then `wal::store::take` (the receiver's header check, zstd, hashes,
//! durable rename), and the ledger report made durable in `wal_pending/`. Blocking: run it on
//! a blocking thread.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pgbackman_core::wal::{Lsn, WalFileKind, WalFileName};
use pgbackman_db::wal::WalObject;

use super::Answer;
use crate::wal::pending;
use crate::wal::store::{self, ArchiveDirs, Intake, NodeIdentity};

/// A pushed file, its bytes in `tmp` (already checked against the client's SHA-256).
pub(super) struct Pushed {
    pub name: WalFileName,
    pub tmp: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Stores `p` and spools its report; the answer for the client. `tmp` is gone afterwards
/// (stored, or kept aside in `refused/`).
pub(super) fn take(
    state_dir: &Path,
    dirs: &ArchiveDirs,
    node: &NodeIdentity,
    p: &Pushed,
) -> Answer {
    let answer = take_inner(state_dir, dirs, node, p).unwrap_or_else(|e| {
        Answer::no(
            "retry",
            format!(
                "the backup server could not store {}: {e:#} (PostgreSQL retries it; the agent's log says more)",
                p.name
            ),
        )
    });
    let _ = fs::remove_file(&p.tmp);
    answer
}

fn take_inner(
    state_dir: &Path,
    dirs: &ArchiveDirs,
    node: &NodeIdentity,
    p: &Pushed,
) -> Result<Answer> {
    let name = &p.name;
    // A later timeline is taken only once its history file is: the lineage must be known
    // (PostgreSQL archives the history file of a new timeline before its segments).
    if name.tli > 1 && !matches!(name.kind, WalFileKind::History) {
        let h = WalFileName::history(name.tli, node.seg_size);
        if !dirs.stored(node.sysid, &h).exists() {
            return Ok(Answer::no(
                "retry",
                format!(
                    "{name} is on timeline {}, whose history file {h} has not been archived on this backup server: \
                     PostgreSQL archives it first, so it is pushed next; if it is lost, push it from the node's pg_wal/ \
                     (pgbackman-agent wal-push pg_wal/{h})",
                    name.tli
                ),
            ));
        }
    }
    let dest = dirs.stored(node.sysid, name);
    if dest.exists() {
        // Streamed: a 16 MB segment is never held whole (see store::sha256_file).
        if store::hash_stored(&dest)?.0 != p.sha256 {
            return conflict(state_dir, dirs, node, p, &dest);
        }
    }
    if let WalFileKind::BackupHistory { segno, offset } = name.kind {
        return backup_history(state_dir, dirs, node, p, segno, offset);
    }
    let existed = dest.exists();
    match store::take(dirs, node, name, &p.tmp)? {
        Intake::Stored(mut o) => {
            o.arrival = "archive_command".into();
            pending::add(state_dir, &o)?;
            Ok(if existed {
                Answer::ok(
                    "duplicate",
                    format!("{name} was already archived with the same content: nothing to do"),
                )
            } else {
                Answer::ok("stored", format!("{name} stored as {}", dest.display()))
            })
        }
        Intake::Skipped => Ok(Answer::no(
            "retry",
            match name.kind {
                WalFileKind::Partial { .. } => format!(
                    "{name} ends timeline {}: it is taken once the history file of the next timeline is archived \
                     (PostgreSQL pushes that file first; it is retried)",
                    name.tli
                ),
                _ => format!(
                    "{name} is not a complete segment of PgSQL node {} ({} bytes, the node's segments have {})",
                    node.label,
                    p.size,
                    node.seg_size.bytes()
                ),
            },
        )),
        Intake::Refused(why) => {
            tracing::error!(
                node = node.node_id,
                "refused WAL file {name} pushed by PgSQL node {}: {why}",
                node.label
            );
            Ok(Answer::no(
                "refused",
                format!(
                    "{name} was refused by the backup server: {why}. Check that archive_command on this host pushes \
                     for PgSQL node {} only (a clone or a restored copy must not archive as it)",
                    node.label
                ),
            ))
        }
    }
}

/// Other content under a stored name: kept aside, reported (the catalog records it in
/// `wal_conflict` and raises WAL_CONFLICT once), refused. The stored copy stays.
fn conflict(
    state_dir: &Path,
    dirs: &ArchiveDirs,
    node: &NodeIdentity,
    p: &Pushed,
    dest: &Path,
) -> Result<Answer> {
    let name = &p.name;
    let aside = dirs.refused();
    crate::state::create_dir_0700(&aside)?;
    let kept = aside.join(format!(
        "{name}.{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.fZ")
    ));
    fs::rename(&p.tmp, &kept)
        .with_context(|| format!("moving {} to {}", p.tmp.display(), kept.display()))?;
    store::sync_dir(&aside)?;
    let (kind, segno, start, end) = describe(node, name);
    let o = WalObject {
        node_id: node.node_id,
        system_identifier: node.sysid.to_string(),
        timeline: name.tli,
        segno,
        kind: kind.into(),
        seg_size: node.seg_size.bytes(),
        start_lsn: start.map(|l| l.to_string()),
        end_lsn: end.map(|l| l.to_string()),
        size: p.size,
        stored_size: p.size,
        sha256: p.sha256.clone(),
        stored_sha256: p.sha256.clone(),
        codec: "none".into(),
        stored_path: kept.display().to_string(),
        arrival: "archive_command".into(),
        header_check: "NOT_CHECKED".into(),
        header_detail: None,
        arrived_at: chrono::Utc::now(),
        history: Vec::new(),
    };
    // After the stored copy's own report in name order, so the catalog sees the original first.
    let file =
        pending::file_name(&o).replace(".json", &format!(".x-conflict-{}.json", &p.sha256[..16]));
    let d = pending::dir(state_dir);
    crate::state::create_dir_0700(&d)?;
    crate::state::write_atomic(&d.join(file), &serde_json::to_vec(&o)?)?;
    tracing::error!(
        node = node.node_id,
        "WAL file {name} pushed by PgSQL node {} has other content (sha256 {}) than the stored {}: refused, kept as {} \
         (WAL_CONFLICT alert); another cluster may be archiving as this node",
        node.label,
        &p.sha256[..16],
        dest.display(),
        kept.display()
    );
    Ok(Answer::no(
        "conflict",
        format!(
            "{name} was already archived with other content; this copy was refused and kept aside on the backup server \
             as {} (nothing was overwritten, a WAL_CONFLICT alert is raised). Another cluster may be archiving as PgSQL \
             node {}: find it and stop its archive_command",
            kept.display(),
            node.label
        ),
    ))
}

/// Ledger kind, segment number and LSN range a name stands for (a partial segment's end is
/// its segment's end here: only used to describe a refused copy).
fn describe(
    node: &NodeIdentity,
    name: &WalFileName,
) -> (&'static str, Option<u64>, Option<Lsn>, Option<Lsn>) {
    let z = node.seg_size;
    match name.kind {
        WalFileKind::Segment { segno } => (
            "full",
            Some(segno),
            z.segment_start(segno),
            z.segment_end(segno),
        ),
        WalFileKind::Partial { segno } => (
            "partial",
            Some(segno),
            z.segment_start(segno),
            z.segment_end(segno),
        ),
        WalFileKind::BackupHistory { segno, .. } => (
            "backup_history",
            Some(segno),
            name.start_lsn(),
            name.start_lsn(),
        ),
        _ => ("history", None, None, None),
    }
}

/// A backup history file (`…​.OFFSET.backup`, written by pg_backup_stop): stored and recorded
/// with the backup's start and stop LSNs from its text.
fn backup_history(
    state_dir: &Path,
    dirs: &ArchiveDirs,
    node: &NodeIdentity,
    p: &Pushed,
    segno: u64,
    _offset: u32,
) -> Result<Answer> {
    let name = &p.name;
    let plain = fs::read(&p.tmp).with_context(|| format!("reading {}", p.tmp.display()))?;
    let text = String::from_utf8_lossy(&plain);
    let lsn_of = |key: &str| -> Option<Lsn> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let (Some(start), Some(stop)) = (
        lsn_of("START WAL LOCATION: "),
        lsn_of("STOP WAL LOCATION: "),
    ) else {
        return Ok(Answer::no(
            "refused",
            format!("{name} is not a backup history file (no START and STOP WAL LOCATION lines)"),
        ));
    };
    let dest = dirs.stored(node.sysid, name);
    let existed = dest.exists();
    let z = if existed {
        fs::read(&dest).with_context(|| format!("reading {}", dest.display()))?
    } else {
        let z = zstd::bulk::compress(&plain, store::ZSTD_LEVEL)
            .with_context(|| format!("compressing {}", p.tmp.display()))?;
        store::write_durable(&dest, &z)?;
        z
    };
    let o = WalObject {
        node_id: node.node_id,
        system_identifier: node.sysid.to_string(),
        timeline: name.tli,
        segno: Some(segno),
        kind: "backup_history".into(),
        seg_size: node.seg_size.bytes(),
        start_lsn: Some(start.to_string()),
        end_lsn: Some(stop.to_string()),
        size: plain.len() as u64,
        stored_size: z.len() as u64,
        sha256: p.sha256.clone(),
        stored_sha256: store::sha256_hex(&z),
        codec: "zstd".into(),
        stored_path: dest.display().to_string(),
        arrival: "archive_command".into(),
        header_check: "NOT_CHECKED".into(),
        header_detail: None,
        arrived_at: chrono::Utc::now(),
        history: Vec::new(),
    };
    pending::add(state_dir, &o)?;
    Ok(Answer::ok(
        if existed { "duplicate" } else { "stored" },
        format!("{name} stored as {}", dest.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbackman_core::wal::SegmentSize;

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

    /// A segment of timeline `tli` whose long page header is a PostgreSQL 15 node's.
    fn segment(tli: u32, segno: u64, fill: u8) -> Vec<u8> {
        let size = SegmentSize::default();
        let mut b = vec![fill; size.bytes() as usize];
        b[..40].fill(0);
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&2u16.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&(segno * u64::from(size.bytes())).to_le_bytes());
        b[24..32].copy_from_slice(&SYSID.to_le_bytes());
        b[32..36].copy_from_slice(&size.bytes().to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn pushed(dirs: &ArchiveDirs, name: &str, bytes: &[u8]) -> Pushed {
        let name = WalFileName::parse(name, SegmentSize::default()).unwrap();
        let dir = dirs.root.join("push");
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        Pushed {
            name,
            tmp,
            sha256: store::sha256_hex(bytes),
            size: bytes.len() as u64,
        }
    }

    fn pending_names(state: &Path) -> Vec<String> {
        pending::list(state)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn stored_once_then_a_no_op_and_other_content_is_kept_aside_and_reported_after_it() {
        let t = tempfile::tempdir().unwrap();
        let (state, dirs) = (
            t.path().join("state"),
            ArchiveDirs::new(&t.path().join("b"), 7),
        );
        let seg = segment(1, 3, 0);
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000010000000000000003", &seg),
        );
        assert_eq!((a.ok, a.outcome.as_str()), (true, "stored"), "{a:?}");
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000010000000000000003", &seg),
        );
        assert_eq!((a.ok, a.outcome.as_str()), (true, "duplicate"), "{a:?}");
        let other = segment(1, 3, 1);
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000010000000000000003", &other),
        );
        assert_eq!((a.ok, a.outcome.as_str()), (false, "conflict"), "{a:?}");
        // The stored copy is the first one; the other is in refused/, reported after it.
        let stored =
            fs::read(dirs.stored(SYSID, &WalFileName::segment(1, 3, SegmentSize::default())))
                .unwrap();
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), seg);
        assert_eq!(fs::read_dir(dirs.refused()).unwrap().count(), 1);
        let names = pending_names(&state);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[1].contains(".x-conflict-"), "{names:?}");
        let o: WalObject =
            serde_json::from_slice(&fs::read(&pending::list(&state)[0]).unwrap()).unwrap();
        assert_eq!(
            (o.arrival.as_str(), o.kind.as_str()),
            ("archive_command", "full")
        );
        // Nothing is left in push/.
        assert_eq!(fs::read_dir(dirs.root.join("push")).unwrap().count(), 0);
    }

    #[test]
    fn a_later_timeline_waits_for_its_history_file_and_a_foreign_segment_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (state, dirs) = (
            t.path().join("state"),
            ArchiveDirs::new(&t.path().join("b"), 7),
        );
        let seg2 = segment(2, 4, 0);
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000020000000000000004", &seg2),
        );
        assert_eq!((a.ok, a.outcome.as_str()), (false, "retry"), "{a:?}");
        assert!(a.message.contains("00000002.history"), "{}", a.message);
        let h = b"1\t0/4000100\tno recovery target specified\n";
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "00000002.history", h),
        );
        assert_eq!(a.outcome, "stored", "{a:?}");
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000020000000000000004", &seg2),
        );
        assert_eq!(a.outcome, "stored", "{a:?}");
        // The old timeline's .partial tail is taken now that the history file says where it ends.
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000010000000000000004.partial", &segment(1, 4, 0)),
        );
        assert_eq!(a.outcome, "stored", "{a:?}");
        // A segment of another cluster: refused, kept aside, not reported.
        let mut foreign = segment(1, 5, 0);
        foreign[24..32].copy_from_slice(&42u64.to_le_bytes());
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000010000000000000005", &foreign),
        );
        assert_eq!((a.ok, a.outcome.as_str()), (false, "refused"), "{a:?}");
        assert_eq!(pending_names(&state).len(), 3);
    }

    #[test]
    fn a_backup_history_file_is_recorded_with_its_start_and_stop() {
        let t = tempfile::tempdir().unwrap();
        let (state, dirs) = (
            t.path().join("state"),
            ArchiveDirs::new(&t.path().join("b"), 7),
        );
        let text = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n";
        let a = take(
            &state,
            &dirs,
            &node(),
            &pushed(&dirs, "000000010000000000000002.00000028.backup", text),
        );
        assert_eq!(a.outcome, "stored", "{a:?}");
        let o: WalObject =
            serde_json::from_slice(&fs::read(&pending::list(&state)[0]).unwrap()).unwrap();
        assert_eq!(
            (
                o.kind.as_str(),
                o.start_lsn.as_deref(),
                o.end_lsn.as_deref()
            ),
            ("backup_history", Some("0/2000028"), Some("0/2000100"))
        );
    }
}
