//! The long page header at offset 0 of every WAL segment (`XLogLongPageHeaderData` in
//! `src/include/access/xlog_internal.h`), and the check of a segment against the node it is
//! said to come from.
//!
//! Layout (C struct with natural alignment, 40 bytes = `SizeOfXLogLongPHD`):
//!
//! | offset | field | type |
//! |---|---|---|
//! | 0 | `xlp_magic` | u16 |
//! | 2 | `xlp_info` | u16 |
//! | 4 | `xlp_tli` | u32 |
//! | 8 | `xlp_pageaddr` | u64 |
//! | 16 | `xlp_rem_len` | u32 (then 4 bytes of padding) |
//! | 24 | `xlp_sysid` | u64 |
//! | 32 | `xlp_seg_size` | u32 |
//! | 36 | `xlp_xlog_blcksz` | u32 |
//!
//! Byte order: PostgreSQL writes these fields in the server's native order and only reads WAL
//! of its own order. We read them as little-endian (x86_64, aarch64: every platform the agent
//! ships for). A segment from a big-endian server shows a byte-swapped magic; that is reported
//! as such instead of as an unknown version.

use std::fmt;

use super::lsn::Lsn;
use super::names::{WalFileKind, WalFileName};
use super::segment::{SegmentSize, Tli};

/// `SizeOfXLogLongPHD`: bytes needed to read the long header.
pub const LONG_HEADER_LEN: usize = 40;
/// `XLP_LONG_HEADER`: the flag of `xlp_info` saying the long fields follow.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLOG_PAGE_MAGIC` per supported major version.
///
/// Read in pgBackRest's per-release copy of `xlog_internal.h`
/// (`src/postgres/interface/version.vendor.h` at pgbackrest/pgbackrest bd22b68: 13 → D106,
/// 14 → D10D, 15 → D110, 16 → D113, 17 → D116, 18 → D118), cross-checked for 18 against
/// `src/include/access/xlog_internal.h` of a PostgreSQL 18.3 source tree
/// (darion-yaphet/postgresql-18.3) and for 15 against real segments
/// (crates/testkit/tests/wal_core.rs). Development versions change it often (19 has had D120
/// and D121), so 19 is not listed until it is released.
pub const XLOG_PAGE_MAGICS: &[(u32, u16)] = &[
    (13, 0xD106),
    (14, 0xD10D),
    (15, 0xD110),
    (16, 0xD113),
    (17, 0xD116),
    (18, 0xD118),
];

/// The page magic of PostgreSQL `major`, if known.
pub fn magic_for_major(major: u32) -> Option<u16> {
    XLOG_PAGE_MAGICS
        .iter()
        .find(|(m, _)| *m == major)
        .map(|(_, magic)| *magic)
}

/// The major version whose WAL carries `magic`, if known.
pub fn major_for_magic(magic: u16) -> Option<u32> {
    XLOG_PAGE_MAGICS
        .iter()
        .find(|(_, m)| *m == magic)
        .map(|(major, _)| *major)
}

/// The fields of a segment's first page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_magic`: the WAL format version.
    pub magic: u16,
    /// `xlp_info`: flag bits.
    pub info: u16,
    /// `xlp_tli`: timeline of the first record on the page.
    pub tli: Tli,
    /// `xlp_pageaddr`: the LSN of this page.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`: bytes of a record continued from the previous segment.
    pub rem_len: u32,
    /// `xlp_sysid`: the cluster's system identifier (`pg_control_system()`).
    pub sysid: u64,
    /// `xlp_seg_size`: the segment size.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: the WAL block size.
    pub xlog_blcksz: u32,
}

impl LongPageHeader {
    /// Reads the header from the first bytes of a segment; `None` when fewer than
    /// [`LONG_HEADER_LEN`] bytes are given.
    pub fn parse(bytes: &[u8]) -> Option<LongPageHeader> {
        let b = bytes.get(..LONG_HEADER_LEN)?;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Some(LongPageHeader {
            magic: u16_at(0),
            info: u16_at(2),
            tli: u32_at(4),
            pageaddr: Lsn(u64_at(8)),
            rem_len: u32_at(16),
            sysid: u64_at(24),
            seg_size: u32_at(32),
            xlog_blcksz: u32_at(36),
        })
    }
}

/// What the archive expects of a segment: where it claims to come from.
#[derive(Clone, Debug)]
pub struct SegmentExpectation<'a> {
    /// The node's name, for messages.
    pub node: &'a str,
    /// The node's major version (`server_version_num / 10000`).
    pub major: u32,
    /// The node's system identifier.
    pub system_identifier: u64,
    /// The node's `wal_segment_size`.
    pub seg_size: SegmentSize,
}

/// Why a segment does not belong where it was sent. Each variant's message names the file,
/// what is wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The file name is not a segment or partial segment.
    NotASegment {
        /// The file.
        file: String,
    },
    /// Fewer than 40 bytes.
    TooShort {
        /// The file.
        file: String,
        /// Its length.
        len: usize,
    },
    /// The magic is no known version, or not the node's.
    WrongMagic {
        /// The file.
        file: String,
        /// Magic found.
        found: u16,
        /// Magic of the node's major (None: a major this build does not know).
        expected: Option<u16>,
        /// The node's major.
        major: u32,
        /// The node's name.
        node: String,
    },
    /// `XLP_LONG_HEADER` is not set: this is not the first page of a segment.
    NotLongHeader {
        /// The file.
        file: String,
        /// `xlp_info` found.
        info: u16,
    },
    /// The system identifier is another cluster's.
    WrongSystem {
        /// The file.
        file: String,
        /// In the segment.
        found: u64,
        /// The node's.
        expected: u64,
        /// The node's name.
        node: String,
    },
    /// The segment size is not the node's.
    WrongSegmentSize {
        /// The file.
        file: String,
        /// In the segment.
        found: u32,
        /// The node's.
        expected: u32,
    },
    /// The page address is not the one the file name says.
    WrongAddress {
        /// The file.
        file: String,
        /// In the segment.
        found: Lsn,
        /// From the file name.
        expected: Lsn,
    },
    /// The first page is of a later timeline than the file name's.
    WrongTimeline {
        /// The file.
        file: String,
        /// `xlp_tli` in the segment.
        found: Tli,
        /// From the file name.
        expected: Tli,
    },
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::NotASegment { file } => write!(
                f,
                "{file} is not a WAL segment: only segments and .partial segments have a page header to check"
            ),
            HeaderProblem::TooShort { file, len } => write!(
                f,
                "segment {file} has {len} bytes, fewer than its 40-byte page header: the copy was cut short; fetch it again from the node"
            ),
            HeaderProblem::WrongMagic {
                file,
                found,
                expected,
                major,
                node,
            } => {
                let swapped = found.swap_bytes();
                if let Some(m) = major_for_magic(swapped) {
                    write!(
                        f,
                        "segment {file} was written by a big-endian PostgreSQL {m} server (page magic {found:04X} read little-endian); pgbackman reads little-endian WAL only"
                    )
                } else if let Some(m) = major_for_magic(*found) {
                    write!(
                        f,
                        "segment {file} is PostgreSQL {m} WAL (page magic {found:04X}) but node {node} is recorded as PostgreSQL {major}: the node was upgraded or another server sends into this archive; update the node's version (or find the sender) and take a new base backup"
                    )
                } else if let Some(e) = expected {
                    write!(
                        f,
                        "segment {file} has page magic {found:04X}, not PostgreSQL {major}'s {e:04X} (node {node}): the file is not WAL or is damaged; fetch it again from the node"
                    )
                } else {
                    write!(
                        f,
                        "segment {file} has page magic {found:04X} and node {node} is PostgreSQL {major}, a version this pgbackman does not know: upgrade pgbackman"
                    )
                }
            }
            HeaderProblem::NotLongHeader { file, info } => write!(
                f,
                "segment {file} does not start with a long page header (xlp_info {info:04X}): it is not the start of a WAL segment or is damaged; fetch it again from the node"
            ),
            HeaderProblem::WrongSystem {
                file,
                found,
                expected,
                node,
            } => write!(
                f,
                "segment {file} belongs to system {found} but node {node} is {expected}: a clone or a re-initdb pushes into this archive; stop that sender (archive_command or receiver), or if the node was rebuilt, register its new system identifier and take a new base backup"
            ),
            HeaderProblem::WrongSegmentSize {
                file,
                found,
                expected,
            } => write!(
                f,
                "segment {file} says its segment size is {found} bytes but the node's wal_segment_size is {expected}: the node was re-initialized with another --wal-segsize or another cluster sends here; check the node and take a new base backup"
            ),
            HeaderProblem::WrongAddress {
                file,
                found,
                expected,
            } => write!(
                f,
                "segment {file} starts at WAL position {found} but its name says {expected}: the file was renamed or its content belongs to another segment; do not restore from it, fetch it again from the node"
            ),
            HeaderProblem::WrongTimeline {
                file,
                found,
                expected,
            } => write!(
                f,
                "segment {file} holds pages of timeline {found} but is named for timeline {expected}: the file was renamed or comes from another server; fetch it again from the node"
            ),
        }
    }
}

impl std::error::Error for HeaderProblem {}

/// The result of checking a segment's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderVerdict {
    /// The segment is what its name and the node say.
    Valid(LongPageHeader),
    /// It is not; the problem says why and what to do.
    Invalid(HeaderProblem),
}

impl HeaderVerdict {
    /// Whether the segment passed.
    pub fn is_valid(&self) -> bool {
        matches!(self, HeaderVerdict::Valid(_))
    }
}

/// Checks the first bytes of a segment file named `name` against what the node says: magic
/// of its major, the long-header flag, system identifier, segment size, the page address the
/// name implies, and a page timeline not after the name's. The first problem found wins, in
/// that order (a wrong version or a foreign system explains the rest).
pub fn check_segment_header(
    name: &WalFileName,
    first_bytes: &[u8],
    expect: &SegmentExpectation<'_>,
) -> HeaderVerdict {
    let file = name.to_string();
    let bad = HeaderVerdict::Invalid;
    let segno = match name.kind {
        WalFileKind::Segment { segno } | WalFileKind::Partial { segno } => segno,
        _ => return bad(HeaderProblem::NotASegment { file }),
    };
    let Some(h) = LongPageHeader::parse(first_bytes) else {
        return bad(HeaderProblem::TooShort {
            file,
            len: first_bytes.len(),
        });
    };
    let expected_magic = magic_for_major(expect.major);
    if expected_magic != Some(h.magic) {
        return bad(HeaderProblem::WrongMagic {
            file,
            found: h.magic,
            expected: expected_magic,
            major: expect.major,
            node: expect.node.to_string(),
        });
    }
    if h.info & XLP_LONG_HEADER == 0 {
        return bad(HeaderProblem::NotLongHeader { file, info: h.info });
    }
    if h.sysid != expect.system_identifier {
        return bad(HeaderProblem::WrongSystem {
            file,
            found: h.sysid,
            expected: expect.system_identifier,
            node: expect.node.to_string(),
        });
    }
    if h.seg_size != expect.seg_size.bytes() || h.seg_size != name.size.bytes() {
        return bad(HeaderProblem::WrongSegmentSize {
            file,
            found: h.seg_size,
            expected: expect.seg_size.bytes(),
        });
    }
    // The name was parsed with a valid size, so its start is in range.
    let expected_addr = name.size.segment_start(segno).unwrap_or(Lsn::INVALID);
    if h.pageaddr != expected_addr {
        return bad(HeaderProblem::WrongAddress {
            file,
            found: h.pageaddr,
            expected: expected_addr,
        });
    }
    // A new timeline's first segment starts with pages copied from its parent, so an older
    // xlp_tli is normal; a newer one never is.
    if h.tli == 0 || h.tli > name.tli {
        return bad(HeaderProblem::WrongTimeline {
            file,
            found: h.tli,
            expected: name.tli,
        });
    }
    HeaderVerdict::Valid(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSID: u64 = 7_311_234_567_890_123_456;

    fn header(magic: u16, info: u16, tli: u32, addr: u64, sysid: u64, seg: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&info.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[16..20].copy_from_slice(&0u32.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn expect() -> SegmentExpectation<'static> {
        SegmentExpectation {
            node: "pg15.example",
            major: 15,
            system_identifier: SYSID,
            seg_size: SegmentSize::DEFAULT,
        }
    }

    fn name(n: &str) -> WalFileName {
        WalFileName::parse(n, SegmentSize::DEFAULT).unwrap()
    }

    const SEG: u32 = 16 << 20;

    #[test]
    fn magic_table() {
        assert_eq!(magic_for_major(15), Some(0xD110));
        assert_eq!(magic_for_major(18), Some(0xD118));
        assert_eq!(magic_for_major(12), None);
        assert_eq!(major_for_magic(0xD10D), Some(14));
        assert_eq!(major_for_magic(0xD116), Some(17));
        assert_eq!(major_for_magic(0x1234), None);
        // Strictly increasing with the major: no copy-paste duplicates.
        for w in XLOG_PAGE_MAGICS.windows(2) {
            assert!(w[0].0 < w[1].0 && w[0].1 < w[1].1, "{w:?}");
        }
    }

    #[test]
    fn parses_fields_at_their_offsets() {
        let b = header(0xD110, 0x0002 | 0x0001, 3, 0x1_0300_0000, SYSID, SEG);
        let h = LongPageHeader::parse(&b).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.info, 3);
        assert_eq!(h.tli, 3);
        assert_eq!(h.pageaddr.to_string(), "1/3000000");
        assert_eq!(h.sysid, SYSID);
        assert_eq!(h.seg_size, SEG);
        assert_eq!(h.xlog_blcksz, 8192);
        assert!(LongPageHeader::parse(&b[..39]).is_none());
        assert!(LongPageHeader::parse(&b[..40]).is_some());
        assert!(LongPageHeader::parse(&[]).is_none());
    }

    #[test]
    fn a_good_segment_passes() {
        let n = name("000000010000000000000003");
        let b = header(0xD110, XLP_LONG_HEADER, 1, 0x300_0000, SYSID, SEG);
        let v = check_segment_header(&n, &b, &expect());
        assert!(v.is_valid(), "{v:?}");
        // A partial segment too; and a new timeline's first segment with its parent's xlp_tli.
        let n = name("000000020000000000000003.partial");
        let b = header(0xD110, XLP_LONG_HEADER, 1, 0x300_0000, SYSID, SEG);
        assert!(check_segment_header(&n, &b[..40], &expect()).is_valid());
    }

    fn problem(n: &str, b: &[u8]) -> String {
        match check_segment_header(&name(n), b, &expect()) {
            HeaderVerdict::Invalid(p) => p.to_string(),
            v => panic!("expected a problem, got {v:?}"),
        }
    }

    #[test]
    fn each_problem_is_named_with_what_to_do() {
        let n = "000000010000000000000003";
        let ok = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = header(0xD110, XLP_LONG_HEADER, 1, 0x300_0000, SYSID, SEG);
            f(&mut b);
            b
        };
        let m = problem("00000001.history", &ok(&|_| {}));
        assert!(m.contains("not a WAL segment"), "{m}");
        let m = problem(n, &ok(&|b| b.truncate(12)));
        assert!(
            m.contains("has 12 bytes") && m.contains("fetch it again"),
            "{m}"
        );
        let m = problem(
            n,
            &ok(&|b| b[0..2].copy_from_slice(&0xD116u16.to_le_bytes())),
        );
        assert!(
            m.contains("PostgreSQL 17 WAL") && m.contains("recorded as PostgreSQL 15"),
            "{m}"
        );
        let m = problem(
            n,
            &ok(&|b| b[0..2].copy_from_slice(&0xD110u16.to_be_bytes())),
        );
        assert!(m.contains("big-endian PostgreSQL 15"), "{m}");
        let m = problem(
            n,
            &ok(&|b| b[0..2].copy_from_slice(&0x4242u16.to_le_bytes())),
        );
        assert!(
            m.contains("not PostgreSQL 15's D110") && m.contains("not WAL"),
            "{m}"
        );
        let m = problem(
            n,
            &ok(&|b| b[2..4].copy_from_slice(&0x0001u16.to_le_bytes())),
        );
        assert!(m.contains("long page header"), "{m}");
        let m = problem(
            n,
            &ok(&|b| b[24..32].copy_from_slice(&7_299u64.to_le_bytes())),
        );
        assert!(
            m.contains("belongs to system 7299 but node pg15.example is 7311234567890123456")
                && m.contains("a clone or a re-initdb"),
            "{m}"
        );
        let m = problem(
            n,
            &ok(&|b| b[32..36].copy_from_slice(&(64u32 << 20).to_le_bytes())),
        );
        assert!(m.contains("segment size is 67108864"), "{m}");
        let m = problem(
            n,
            &ok(&|b| b[8..16].copy_from_slice(&0x400_0000u64.to_le_bytes())),
        );
        assert!(
            m.contains("starts at WAL position 0/4000000 but its name says 0/3000000"),
            "{m}"
        );
        let m = problem(n, &ok(&|b| b[4..8].copy_from_slice(&2u32.to_le_bytes())));
        assert!(
            m.contains("pages of timeline 2 but is named for timeline 1"),
            "{m}"
        );
        let m = problem(n, &ok(&|b| b[4..8].copy_from_slice(&0u32.to_le_bytes())));
        assert!(m.contains("timeline 0"), "{m}");
        // A major this build does not know.
        let e = SegmentExpectation {
            major: 99,
            ..expect()
        };
        let v = check_segment_header(&name(n), &ok(&|_| {}), &e);
        let HeaderVerdict::Invalid(p) = v else {
            panic!()
        };
        assert!(p.to_string().contains("PostgreSQL 15 WAL"), "{p}");
        let b = ok(&|b| b[0..2].copy_from_slice(&0x4242u16.to_le_bytes()));
        let HeaderVerdict::Invalid(p) = check_segment_header(&name(n), &b, &e) else {
            panic!()
        };
        assert!(p.to_string().contains("upgrade pgbackman"), "{p}");
    }

    #[test]
    fn the_name_segment_size_must_match_too() {
        // Name parsed for 64 MiB but node says 16 MiB and header says 64 MiB.
        let s64 = SegmentSize::new(64 << 20).unwrap();
        let n = WalFileName::parse("000000010000000000000001", s64).unwrap();
        let b = header(0xD110, XLP_LONG_HEADER, 1, 64 << 20, SYSID, 64 << 20);
        let HeaderVerdict::Invalid(p) = check_segment_header(&n, &b, &expect()) else {
            panic!()
        };
        assert!(matches!(p, HeaderProblem::WrongSegmentSize { .. }), "{p}");
    }
}
