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
        let old = fs::read(&dest).with_context(|| format!("reading {}", dest.display()))?;
        let old_plain = zstd::decode_all(&old[..])
            .with_context(|| format!("decompressing {}", dest.display()))?;
        if store::sha256_hex(&old_plain) != p.sha256 {
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
