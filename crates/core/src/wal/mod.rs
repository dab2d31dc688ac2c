//! The pure layer of physical backups: WAL positions, file names, segment headers, timeline
//! histories and `backup_manifest` files.
//!
//! Everything here follows PostgreSQL's own definitions (each module cites the source file it
//! mirrors) and refuses input PostgreSQL would not write, with a message naming the file, what
//! is wrong and what to do. No IO: callers read files and pass bytes in.
//!
//! [`WalFileName`] has no `Ord` on purpose: WAL is ordered by timeline history and LSN, never
//! by file name (peers that sorted names deleted the newest backups after a pg_upgrade).
//!
//! - [`lsn`]: [`Lsn`], PostgreSQL's `XLogRecPtr` with its `X/Y` text form.
//! - [`segment`]: [`SegmentSize`], LSN ↔ segment number, the segments covering a range.
//! - [`names`]: [`WalFileName`]: segments, `.partial`, `.history`, `.backup` files.
//! - [`header`]: a segment's long page header and [`check_segment_header`].
//! - [`history`]: [`TimelineHistory`]: which timeline an LSN or a segment is on along a lineage.
//! - [`manifest`]: [`BackupManifest`], `backup_manifest` v1/v2 with its `Manifest-Checksum`.

pub mod header;
pub mod history;
pub mod label;
pub mod lsn;
pub mod manifest;
pub mod names;
pub mod segment;

pub use header::{
    HeaderProblem, HeaderVerdict, LongPageHeader, SegmentExpectation, check_segment_header,
};
pub use history::{HistoryError, TimelineHistory, TimelineSpan};
pub use label::{BackupLabel, LabelError};
pub use lsn::{Lsn, LsnError};
pub use manifest::{BackupManifest, ManifestError};
pub use names::{WalFileKind, WalFileName, WalNameError};
pub use segment::{SegNo, SegmentRange, SegmentSize, Tli};
