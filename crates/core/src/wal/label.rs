//! `backup_label` as the server writes it into a base backup (PG 15: `do_pg_backup_start` in
//! src/backend/access/transam/xlog.c; PG 16+: `build_backup_content`,
//! src/backend/backup/backup_label.c): where a restore starts replay. It must reach the
//! restored data directory untouched.

use thiserror::Error;

use super::lsn::Lsn;
use super::segment::Tli;

/// The facts of a `backup_label` a catalog keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`: where replay starts.
    pub start_lsn: Lsn,
    /// The file name given with it (`(file 000000010000000000000002)`).
    pub start_wal_file: String,
    /// `CHECKPOINT LOCATION`.
    pub checkpoint_lsn: Option<Lsn>,
    /// `START TIMELINE`.
    pub timeline: Tli,
    /// `START TIME`, as written (`2026-12-03 15:00:00 UTC`).
    pub start_time: Option<String>,
    /// `LABEL`.
    pub label: Option<String>,
    /// `BACKUP FROM`: `primary` or `standby`.
    pub backup_from: Option<String>,
}

/// Why a `backup_label` cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LabelError {
    /// A line the label must have is missing or unreadable.
    #[error("backup_label: {0} is missing or unreadable")]
    Missing(&'static str),
}

impl BackupLabel {
    /// Parses the text of a `backup_label`.
    pub fn parse(text: &str) -> Result<BackupLabel, LabelError> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
                .map(str::trim)
        };
        let start = field("START WAL LOCATION").ok_or(LabelError::Missing("START WAL LOCATION"))?;
        let (lsn, rest) = start.split_once(' ').unwrap_or((start, ""));
        let start_lsn: Lsn = lsn
            .parse()
            .map_err(|_| LabelError::Missing("START WAL LOCATION"))?;
        let start_wal_file = rest
            .trim()
            .strip_prefix("(file ")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or(LabelError::Missing("START WAL LOCATION's file"))?
            .to_string();
        let timeline = field("START TIMELINE")
            .and_then(|t| t.parse().ok())
            .ok_or(LabelError::Missing("START TIMELINE"))?;
        Ok(BackupLabel {
            start_lsn,
            start_wal_file,
            checkpoint_lsn: field("CHECKPOINT LOCATION").and_then(|l| l.parse().ok()),
            timeline,
            start_time: field("START TIME").map(str::to_string),
            label: field("LABEL").map(str::to_string),
            backup_from: field("BACKUP FROM").map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_of_pg_basebackup_15() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\n\
                    BACKUP METHOD: streamed\n\
                    BACKUP FROM: primary\n\
                    START TIME: 2026-12-03 15:00:00 UTC\n\
                    LABEL: pgbackman job 12\n\
                    START TIMELINE: 1\n";
        let l = BackupLabel::parse(text).unwrap();
        assert_eq!(l.start_lsn.to_string(), "0/2000028");
        assert_eq!(l.start_wal_file, "000000010000000000000002");
        assert_eq!(l.checkpoint_lsn.unwrap().to_string(), "0/2000060");
        assert_eq!(l.timeline, 1);
        assert_eq!(l.start_time.as_deref(), Some("2026-12-03 15:00:00 UTC"));
        assert_eq!(l.label.as_deref(), Some("pgbackman job 12"));
        assert_eq!(l.backup_from.as_deref(), Some("primary"));
    }

    #[test]
    fn a_label_without_its_start_is_refused_by_name() {
        let e = BackupLabel::parse("START TIMELINE: 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "backup_label: START WAL LOCATION is missing or unreadable"
        );
        let e =
            BackupLabel::parse("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
                .unwrap_err();
        assert!(e.to_string().contains("START TIMELINE"));
    }
}
