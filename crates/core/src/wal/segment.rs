//! WAL segment size and the arithmetic between LSNs and segment numbers.
//!
//! Follows `src/include/access/xlog_internal.h` (`IsValidWalSegSize`, `XLogSegmentsPerXLogId`,
//! `XLByteToSeg`, `XLogSegNoOffsetToRecPtr`).

use std::fmt;
use std::ops::RangeInclusive;

use thiserror::Error;

use super::lsn::Lsn;
use super::names::WalFileName;

/// A segment number (`XLogSegNo`): the LSN divided by the segment size.
pub type SegNo = u64;

/// A timeline ID (`TimeLineID`). Timeline 0 does not exist; a cluster starts on 1.
pub type Tli = u32;

/// The size of one WAL segment file, fixed per cluster at initdb (`--wal-segsize`): a power
/// of two from 1 MiB to 1 GiB, 16 MiB by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentSize(u32);

/// A segment size PostgreSQL does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{0} bytes is not a WAL segment size: initdb allows powers of two from 1 MiB to 1 GiB (wal_segment_size, e.g. 16777216); check the node's `SHOW wal_segment_size`"
)]
pub struct SegmentSizeError(pub u64);

/// A range of LSNs that is not a range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "the WAL range {start}..{end} ends before it starts: the end LSN must not be before the start LSN"
)]
pub struct RangeError {
    /// Start of the rejected range.
    pub start: Lsn,
    /// End of the rejected range.
    pub end: Lsn,
}

impl SegmentSize {
    /// 16 MiB, initdb's default.
    pub const DEFAULT: SegmentSize = SegmentSize(16 * 1024 * 1024);
    /// 1 MiB, the smallest initdb allows (`WalSegMinSize`).
    pub const MIN: u32 = 1024 * 1024;
    /// 1 GiB, the largest initdb allows (`WalSegMaxSize`).
    pub const MAX: u32 = 1024 * 1024 * 1024;

    /// Checks `bytes` as PostgreSQL's `IsValidWalSegSize` does.
    pub fn new(bytes: u64) -> Result<SegmentSize, SegmentSizeError> {
        if bytes.is_power_of_two() && (u64::from(Self::MIN)..=u64::from(Self::MAX)).contains(&bytes)
        {
            Ok(SegmentSize(bytes as u32))
        } else {
            Err(SegmentSizeError(bytes))
        }
    }
    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }
    /// Segments per 4 GiB "xlogid" (`XLogSegmentsPerXLogId`): the modulus of a file name's
    /// last eight digits (256 for 16 MiB).
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }
    /// The segment holding the byte at `lsn` (`XLByteToSeg`, at face value: an LSN on a
    /// boundary is in the segment it starts).
    pub fn segment_of(self, lsn: Lsn) -> SegNo {
        lsn.0 / u64::from(self.0)
    }
    /// Offset of `lsn` inside its segment (`XLogSegmentOffset`).
    pub fn offset_in_segment(self, lsn: Lsn) -> u32 {
        (lsn.0 & (u64::from(self.0) - 1)) as u32
    }
    /// The LSN of the first byte of `segno` (`XLogSegNoOffsetToRecPtr(segno, 0)`), or `None`
    /// when that is past the 64-bit WAL space.
    pub fn segment_start(self, segno: SegNo) -> Option<Lsn> {
        segno.checked_mul(u64::from(self.0)).map(Lsn)
    }
    /// The LSN just past the last byte of `segno` (the next segment's start), or `None` when
    /// that is past the 64-bit WAL space.
    pub fn segment_end(self, segno: SegNo) -> Option<Lsn> {
        segno.checked_add(1).and_then(|n| self.segment_start(n))
    }
    /// The highest segment number there is (the one holding `FFFFFFFF/FFFFFFFF`).
    pub fn last_segment(self) -> SegNo {
        u64::MAX / u64::from(self.0)
    }
    /// The segments holding the WAL from `start` to `end` on one timeline.
    ///
    /// Rule: from the segment holding `start` to the segment holding `end`, **both
    /// included**, each at face value (`XLByteToSeg`). So a range whose end LSN is the first
    /// byte of a segment also asks for that segment: one more than strictly needed, never one
    /// less (a backup's stop LSN, a restore target). `start == end` names one segment.
    pub fn covering(self, tli: Tli, start: Lsn, end: Lsn) -> Result<SegmentRange, RangeError> {
        if end < start {
            return Err(RangeError { start, end });
        }
        Ok(SegmentRange {
            tli,
            segments: self.segment_of(start)..=self.segment_of(end),
            size: self,
        })
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for SegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1024 * 1024 * 1024 {
            write!(f, "{} GiB", b / (1024 * 1024 * 1024))
        } else {
            write!(f, "{} MiB", b / (1024 * 1024))
        }
    }
}

/// Consecutive segments of one timeline, e.g. the WAL a base backup needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRange {
    /// The timeline the segment files are named for.
    pub tli: Tli,
    /// First and last segment number, both included.
    pub segments: RangeInclusive<SegNo>,
    /// The segment size the numbers are counted in.
    pub size: SegmentSize,
}

impl SegmentRange {
    /// How many segments the range holds.
    pub fn len(&self) -> u64 {
        self.segments.end() - self.segments.start() + 1
    }
    /// Never empty: a range holds at least one segment.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The file names, in order (lazily: a range can hold a year of segments).
    pub fn names(&self) -> impl Iterator<Item = WalFileName> + '_ {
        self.segments
            .clone()
            .map(move |segno| WalFileName::segment(self.tli, segno, self.size))
    }
    /// The first file name.
    pub fn first_name(&self) -> WalFileName {
        WalFileName::segment(self.tli, *self.segments.start(), self.size)
    }
    /// The last file name.
    pub fn last_name(&self) -> WalFileName {
        WalFileName::segment(self.tli, *self.segments.end(), self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn sizes_initdb_allows() {
        for mb in [1u64, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] {
            let s = SegmentSize::new(mb * 1024 * 1024).unwrap();
            assert_eq!(u64::from(s.bytes()), mb * 1024 * 1024);
        }
        for bad in [
            0,
            1,
            512 * 1024,
            3 * 1024 * 1024,
            16 * 1024 * 1024 + 1,
            2048 * 1024 * 1024,
            u64::MAX,
            1 << 40,
        ] {
            let e = SegmentSize::new(bad).unwrap_err();
            assert!(e.to_string().contains("powers of two"), "{e}");
        }
        assert_eq!(SegmentSize::default(), SegmentSize::DEFAULT);
        assert_eq!(SegmentSize::DEFAULT.to_string(), "16 MiB");
        assert_eq!(SegmentSize::new(1 << 30).unwrap().to_string(), "1 GiB");
    }

    #[test]
    fn segment_arithmetic() {
        let s = SegmentSize::DEFAULT;
        assert_eq!(s.segments_per_xlogid(), 256);
        assert_eq!(
            SegmentSize::new(1 << 20).unwrap().segments_per_xlogid(),
            4096
        );
        assert_eq!(SegmentSize::new(1 << 30).unwrap().segments_per_xlogid(), 4);
        assert_eq!(s.segment_of(lsn("0/0")), 0);
        assert_eq!(s.segment_of(lsn("0/FFFFFF")), 0);
        assert_eq!(s.segment_of(lsn("0/1000000")), 1);
        assert_eq!(s.segment_of(lsn("1/0")), 256);
        assert_eq!(s.offset_in_segment(lsn("0/1000028")), 0x28);
        assert_eq!(s.segment_start(3), Some(lsn("0/3000000")));
        assert_eq!(s.segment_end(3), Some(lsn("0/4000000")));
        assert_eq!(s.segment_start(256), Some(lsn("1/0")));
        let last = s.last_segment();
        assert_eq!(s.segment_of(Lsn(u64::MAX)), last);
        assert_eq!(s.segment_start(last), Some(lsn("FFFFFFFF/FF000000")));
        assert_eq!(s.segment_end(last), None, "past the 64-bit space");
        assert_eq!(s.segment_start(last + 1), None);
        assert_eq!(s.segment_end(u64::MAX), None);
    }

    #[test]
    fn covering_includes_the_end_lsn_segment() {
        let s = SegmentSize::DEFAULT;
        let r = s.covering(1, lsn("0/2000028"), lsn("0/40000D8")).unwrap();
        assert_eq!(r.segments, 2..=4);
        assert_eq!(r.len(), 3);
        assert!(!r.is_empty());
        let names: Vec<String> = r.names().map(|n| n.to_string()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004"
            ]
        );
        // An end on a boundary still names the segment it starts.
        let r = s.covering(1, lsn("0/2000028"), lsn("0/4000000")).unwrap();
        assert_eq!(r.segments, 2..=4);
        // One LSN: one segment.
        let r = s.covering(7, lsn("1/0"), lsn("1/0")).unwrap();
        assert_eq!(r.segments, 256..=256);
        assert_eq!(r.first_name().to_string(), "000000070000000100000000");
        assert_eq!(r.last_name(), r.first_name());
        // Across an xlogid boundary.
        let r = s.covering(1, lsn("0/FF000000"), lsn("1/1000000")).unwrap();
        assert_eq!(
            r.names().map(|n| n.to_string()).collect::<Vec<_>>(),
            [
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        let e = s
            .covering(1, lsn("0/3000000"), lsn("0/2FFFFFF"))
            .unwrap_err();
        assert!(e.to_string().contains("ends before it starts"), "{e}");
        // The very end of the WAL space does not overflow.
        let r = s.covering(1, Lsn(u64::MAX - 1), Lsn(u64::MAX)).unwrap();
        assert_eq!(r.len(), 1);
    }
}
