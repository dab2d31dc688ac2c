//! WAL file names: segments, `.partial` segments, timeline `.history` files and backup
//! history `.backup` files, as `src/include/access/xlog_internal.h` writes them
//! (`XLogFileName`, `TLHistoryFileName`, `BackupHistoryFileName`).

use std::fmt;

use thiserror::Error;

use super::lsn::Lsn;
use super::segment::{SegNo, SegmentSize, Tli};

/// What kind of file a WAL file name names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WalFileKind {
    /// A complete segment, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment {
        /// Its segment number.
        segno: SegNo,
    },
    /// A segment still being written, or the last one of a timeline before a promotion
    /// (`…YYYYYYYY.partial`, written by pg_receivewal and at the end of archive recovery).
    Partial {
        /// Its segment number.
        segno: SegNo,
    },
    /// A timeline history file, `TTTTTTTT.history`.
    History,
    /// A backup history file, `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`, named for the
    /// backup's start: its segment and the offset inside it.
    BackupHistory {
        /// The segment the backup started in.
        segno: SegNo,
        /// The start LSN's offset inside that segment.
        offset: u32,
    },
}

/// A parsed WAL file name. Displays as the file name PostgreSQL would write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalFileName {
    /// The timeline (never 0).
    pub tli: Tli,
    /// Which kind of file.
    pub kind: WalFileKind,
    /// The segment size the name's segment number is counted in.
    pub size: SegmentSize,
}

/// A name that is not a WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{name:?} is not a WAL file name: {reason}")]
pub struct WalNameError {
    /// The rejected name, cut to 80 characters.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn upper_hex(s: &str) -> bool {
    s.bytes().all(|b| HEX_UPPER.contains(&b))
}

impl WalFileName {
    /// The name of complete segment `segno` of timeline `tli`.
    pub fn segment(tli: Tli, segno: SegNo, size: SegmentSize) -> WalFileName {
        WalFileName {
            tli,
            kind: WalFileKind::Segment { segno },
            size,
        }
    }
    /// The name of the history file of timeline `tli`.
    pub fn history(tli: Tli, size: SegmentSize) -> WalFileName {
        WalFileName {
            tli,
            kind: WalFileKind::History,
            size,
        }
    }

    /// Parses `name` for a cluster with segments of `size`. Refuses anything PostgreSQL would
    /// not write: lower-case hex, timeline 0, a segment part past the segments of one xlogid
    /// for this size, a backup offset outside the segment, other suffixes, paths.
    pub fn parse(name: &str, size: SegmentSize) -> Result<WalFileName, WalNameError> {
        let err = |reason: String| WalNameError {
            name: name.chars().take(80).collect(),
            reason,
        };
        let (stem, kind) = if let Some(stem) = name.strip_suffix(".partial") {
            (stem, "partial")
        } else if let Some(stem) = name.strip_suffix(".history") {
            (stem, "history")
        } else if let Some(rest) = name.strip_suffix(".backup") {
            (rest, "backup")
        } else {
            (name, "segment")
        };
        let hex_part = |s: &str, what: &str| -> Result<u32, WalNameError> {
            if s.len() != 8 {
                return Err(err(format!(
                    "the {what} must be 8 hexadecimal digits, found {:?}",
                    s.chars().take(20).collect::<String>()
                )));
            }
            if !upper_hex(s) {
                let reason = if s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    format!(
                        "the {what} {s:?} has lower-case hexadecimal; PostgreSQL names WAL files in upper case"
                    )
                } else {
                    format!("the {what} {s:?} is not hexadecimal")
                };
                return Err(err(reason));
            }
            Ok(u32::from_str_radix(s, 16).expect("8 upper-case hex digits"))
        };
        let tli_of = |s: &str| -> Result<Tli, WalNameError> {
            let tli = hex_part(s, "timeline")?;
            if tli == 0 {
                return Err(err(
                    "timeline 0 does not exist (timelines start at 1)".into()
                ));
            }
            Ok(tli)
        };
        let segno_of = |s: &str| -> Result<SegNo, WalNameError> {
            if s.len() != 16 {
                return Err(err(format!(
                    "a segment name has 24 hexadecimal digits (timeline, log, segment), found {}",
                    s.len() + 8
                )));
            }
            let log = hex_part(&s[..8], "log number")?;
            let seg = hex_part(&s[8..], "segment number")?;
            let per = size.segments_per_xlogid();
            if u64::from(seg) >= per {
                return Err(err(format!(
                    "segment part {seg:08X} is past the last one ({:08X}) for {size} segments; is the segment size right?",
                    per - 1
                )));
            }
            Ok(u64::from(log) * per + u64::from(seg))
        };
        if !stem.is_ascii() {
            return Err(err(
                "it holds characters other than hexadecimal digits".into()
            ));
        }
        let kind = match kind {
            "history" => {
                if stem.len() != 8 {
                    return Err(err(
                        "a history file is named TTTTTTTT.history (8 hexadecimal digits)".into(),
                    ));
                }
                WalFileKind::History
            }
            "backup" => {
                let (seg, off) = stem.split_once('.').ok_or_else(|| {
                    err("a backup history file is named <segment>.<offset>.backup".into())
                })?;
                if seg.len() != 24 {
                    return Err(err(
                        "a backup history file is named <24-digit segment>.<8-digit offset>.backup"
                            .into(),
                    ));
                }
                let offset = hex_part(off, "backup start offset")?;
                if offset >= size.bytes() {
                    return Err(err(format!(
                        "offset {offset:08X} is past the end of a {size} segment"
                    )));
                }
                WalFileKind::BackupHistory {
                    segno: segno_of(&seg[8..])?,
                    offset,
                }
            }
            _ => {
                if stem.len() != 24 {
                    return Err(err(format!(
                        "a segment is named with 24 hexadecimal digits (optionally .partial), found {} characters",
                        stem.len()
                    )));
                }
                let segno = segno_of(&stem[8..])?;
                if kind == "partial" {
                    WalFileKind::Partial { segno }
                } else {
                    WalFileKind::Segment { segno }
                }
            }
        };
        let tli = tli_of(&stem[..8])?;
        Ok(WalFileName { tli, kind, size })
    }

    /// The segment number of a segment, partial segment or backup history file.
    pub fn segno(&self) -> Option<SegNo> {
        match self.kind {
            WalFileKind::Segment { segno }
            | WalFileKind::Partial { segno }
            | WalFileKind::BackupHistory { segno, .. } => Some(segno),
            WalFileKind::History => None,
        }
    }
    /// The LSN the file starts at: a segment's first byte, a backup's start LSN; `None` for a
    /// history file (or past the 64-bit space).
    pub fn start_lsn(&self) -> Option<Lsn> {
        match self.kind {
            WalFileKind::Segment { segno } | WalFileKind::Partial { segno } => {
                self.size.segment_start(segno)
            }
            WalFileKind::BackupHistory { segno, offset } => self
                .size
                .segment_start(segno)
                .and_then(|l| l.checked_add(u64::from(offset))),
            WalFileKind::History => None,
        }
    }
    /// The name of the complete segment this file is, or is a part of (a `.partial` becomes
    /// its full segment; a backup history file the segment its backup started in).
    pub fn as_segment(&self) -> Option<WalFileName> {
        self.segno()
            .map(|segno| WalFileName::segment(self.tli, segno, self.size))
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = self.size.segments_per_xlogid();
        let seg = |f: &mut fmt::Formatter<'_>, segno: SegNo| {
            write!(
                f,
                "{:08X}{:08X}{:08X}",
                self.tli,
                (segno / per) as u32,
                (segno % per) as u32
            )
        };
        match self.kind {
            WalFileKind::Segment { segno } => seg(f, segno),
            WalFileKind::Partial { segno } => {
                seg(f, segno)?;
                f.write_str(".partial")
            }
            WalFileKind::History => write!(f, "{:08X}.history", self.tli),
            WalFileKind::BackupHistory { segno, offset } => {
                seg(f, segno)?;
                write!(f, ".{offset:08X}.backup")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S16: SegmentSize = SegmentSize::DEFAULT;

    fn parse(n: &str) -> Result<WalFileName, WalNameError> {
        WalFileName::parse(n, S16)
    }

    #[test]
    fn round_trips_every_kind() {
        for n in [
            "000000010000000000000001",
            "0000000A00000001000000FF",
            "FFFFFFFFFFFFFFFF000000FF",
            "000000020000000000000003.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            assert_eq!(parse(n).unwrap().to_string(), n);
        }
    }

    #[test]
    fn segment_numbers_and_lsns() {
        let n = parse("0000000A00000001000000FF").unwrap();
        assert_eq!(n.tli, 10);
        assert_eq!(n.segno(), Some(256 + 255));
        assert_eq!(n.start_lsn().unwrap().to_string(), "1/FF000000");
        let p = parse("000000020000000000000003.partial").unwrap();
        assert_eq!(p.kind, WalFileKind::Partial { segno: 3 });
        assert_eq!(
            p.as_segment().unwrap().to_string(),
            "000000020000000000000003"
        );
        let b = parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(b.start_lsn().unwrap().to_string(), "0/2000028");
        assert_eq!(
            b.as_segment().unwrap().to_string(),
            "000000010000000000000002"
        );
        let h = parse("0000000B.history").unwrap();
        assert_eq!(
            (h.tli, h.kind, h.segno(), h.start_lsn()),
            (11, WalFileKind::History, None, None)
        );
        assert_eq!(h.as_segment(), None);
        assert_eq!(WalFileName::history(11, S16), h);
    }

    #[test]
    fn the_segment_part_depends_on_the_segment_size() {
        // 64 MiB: 64 segments per xlogid, so ...0000003F is the last one.
        let s64 = SegmentSize::new(64 << 20).unwrap();
        let n = WalFileName::parse("00000001000000010000003F", s64).unwrap();
        assert_eq!(n.segno(), Some(64 + 63));
        assert_eq!(n.start_lsn().unwrap().to_string(), "1/FC000000");
        let e = WalFileName::parse("000000010000000100000040", s64).unwrap_err();
        assert!(e.reason.contains("past the last one (0000003F)"), "{e}");
        // 1 MiB: 4096 per xlogid.
        let s1 = SegmentSize::new(1 << 20).unwrap();
        let n = WalFileName::parse("000000010000000000000FFF", s1).unwrap();
        assert_eq!(n.start_lsn().unwrap().to_string(), "0/FFF00000");
        assert!(parse("000000010000000000000FFF").is_err());
        // The segment ↔ name ↔ LSN mapping agrees for every size.
        for mb in [1u64, 16, 64, 1024] {
            let s = SegmentSize::new(mb << 20).unwrap();
            for segno in [
                0,
                1,
                s.segments_per_xlogid() - 1,
                s.segments_per_xlogid(),
                123_456,
            ] {
                let name = WalFileName::segment(3, segno, s);
                let back = WalFileName::parse(&name.to_string(), s).unwrap();
                assert_eq!(back, name);
                assert_eq!(s.segment_of(back.start_lsn().unwrap()), segno);
            }
        }
    }

    #[test]
    fn refuses_everything_else_naming_the_file() {
        let cases = [
            ("", "24 hexadecimal digits"),
            ("00000001000000000000000", "24 hexadecimal digits"),
            ("0000000100000000000000011", "24 hexadecimal digits"),
            ("00000001000000000000000a", "lower-case"),
            ("0000000100000000000000ag", "not hexadecimal"),
            ("000000000000000000000001", "timeline 0"),
            ("000000010000000000000100", "past the last one"),
            ("000000010000000000000001.gz", "24 hexadecimal digits"),
            (
                "000000010000000000000001.partial.zst",
                "24 hexadecimal digits",
            ),
            ("00000001.partial", "24 hexadecimal digits"),
            ("0000001.history", "TTTTTTTT.history"),
            ("0000000a.history", "lower-case"),
            ("00000000.history", "timeline 0"),
            ("000000010000000000000001.backup", "<segment>.<offset>"),
            (
                "000000010000000000000001.0000002.backup",
                "8 hexadecimal digits",
            ),
            ("000000010000000000000001.01000000.backup", "past the end"),
            ("00000001000000000000001.00000028.backup", "24-digit"),
            ("../000000010000000000000001", "24 hexadecimal digits"),
            ("000000010000000000000001/", "24 hexadecimal digits"),
            ("+00000010000000000000001", "not hexadecimal"),
            ("ÀÀ0000010000000000000001", "other than hexadecimal"),
        ];
        for (name, why) in cases {
            let e = parse(name).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(why), "{name:?}: {msg}");
            assert!(
                msg.starts_with(&format!("{:?}", name.chars().take(80).collect::<String>())),
                "{msg}"
            );
        }
        let long = "0".repeat(5000);
        assert!(parse(&long).unwrap_err().to_string().len() < 300);
    }
}
