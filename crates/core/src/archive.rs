//! The rows of each table, counted in a pg_dump custom-format archive as it streams out of
//! `pg_dump -Fc -Z0`, so that a backup's exact row counts need no second scan of the tables.
//!
//! The archive (pg_backup_archiver.c, pg_backup_custom.c) is a header, the table of contents
//! (TOC), then one data block per TOC entry with data. Integers are a sign byte and `intSize`
//! little-endian bytes; strings are an integer length (-1 for NULL) and the bytes. A data block
//! is a type byte (1 = table data, 3 = large objects), the entry's dump id, then chunks each
//! prefixed by their length, ended by a zero length. Uncompressed, a table's chunks are exactly
//! the text of its `COPY ... TO stdout`: one line per row (newlines inside values are escaped
//! as `\n`), followed by pg_dump's `\.` end marker. Large objects are skipped.
//!
//! Whatever this reader does not know (another format, compression, a version newer than
//! 1.16, a malformed byte) ends the counting with an error, never with a wrong count: the
//! caller then counts those tables with SQL.

use std::collections::HashMap;

/// Why the archive's rows could not be counted from the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// Not a custom-format archive at all.
    #[error("not a pg_dump custom-format archive: {0}")]
    NotCustom(&'static str),
    /// A version whose layout this reader does not know.
    #[error("archive version {0}.{1}.{2} is not one this reader knows (1.12 to 1.16)")]
    Version(u8, u8, u8),
    /// The data is compressed (an extra `--compress` parameter).
    #[error("the archive's data is compressed: its COPY rows cannot be read in flight")]
    Compressed,
    /// A byte that does not fit the layout.
    #[error("malformed archive at byte {at}: {what}")]
    Malformed {
        /// Offset in the stream.
        at: u64,
        /// What was expected.
        what: &'static str,
    },
    /// The stream ended before the archive did.
    #[error("the archive ended in the middle of {0}")]
    Truncated(&'static str),
    /// A TOC larger than the reader keeps in memory.
    #[error("the archive's table of contents is larger than {0} bytes")]
    TocTooLarge(usize),
}

/// Rows of one table's data block, named as its TOC entry names it (bytes in the dump's
/// client encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    /// The entry's namespace (schema).
    pub schema: Vec<u8>,
    /// The entry's tag (the table's name).
    pub name: Vec<u8>,
    /// Rows of its COPY data.
    pub rows: i64,
}

/// What the stream told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchiveRows {
    /// The dump's client encoding, from its ENCODING entry (`UTF8`, `LATIN1`, ...).
    pub encoding: Option<String>,
    /// Every table whose COPY data was read completely, in the order of the archive.
    pub tables: Vec<TableRows>,
}

/// Largest TOC kept while waiting for its end.
const TOC_LIMIT: usize = 256 << 20;
/// Block types (pg_backup_custom.c).
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// Feed it the archive's bytes in order ([`RowCounter::feed`]), then ask for the counts
/// ([`RowCounter::finish`]). Cheap per byte: the TOC is parsed once, the data is scanned for
/// newlines.
#[derive(Debug)]
pub struct RowCounter {
    state: State,
    /// Bytes fed so far.
    offset: u64,
}

#[derive(Debug)]
enum State {
    /// Collecting the header and TOC; parsed when `buf` reaches `next_try` bytes.
    Head {
        buf: Vec<u8>,
        next_try: usize,
    },
    Data(Box<Data>),
    Failed(ArchiveError),
}

#[derive(Debug)]
enum Step {
    BlockType,
    BlockId { blobs: bool },
    ChunkLen,
    Chunk { left: u64 },
    BlobOid,
    BlobChunkLen,
    BlobChunk { left: u64 },
}

#[derive(Debug)]
struct Data {
    int_size: usize,
    /// Dump id of a TABLE DATA entry in COPY form → index in `tables`.
    by_id: HashMap<i64, usize>,
    tables: Vec<(Vec<u8>, Vec<u8>, Option<i64>)>,
    encoding: Option<String>,
    step: Step,
    int_buf: [u8; 9],
    int_have: usize,
    /// The counted table of the current block.
    current: Option<usize>,
    newlines: u64,
    block_len: u64,
    /// The block's last (up to) 6 bytes, oldest first.
    tail: [u8; 6],
}

impl Default for RowCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl RowCounter {
    /// A counter at the start of an archive.
    pub fn new() -> RowCounter {
        RowCounter {
            state: State::Head {
                buf: Vec::new(),
                next_try: 64 << 10,
            },
            offset: 0,
        }
    }

    /// The next bytes of the archive.
    pub fn feed(&mut self, bytes: &[u8]) {
        let at = self.offset;
        self.offset += bytes.len() as u64;
        match &mut self.state {
            State::Failed(_) => {}
            State::Head { buf, next_try } => {
                buf.extend_from_slice(bytes);
                if buf.len() < *next_try {
                    return;
                }
                // Parsed again only when the buffer has doubled: linear in the TOC's size.
                let next = buf.len().saturating_mul(2);
                let buf = std::mem::take(buf);
                self.state = match parse_head(&buf) {
                    Ok(Some((used, mut data))) => match data.feed(&buf[used..], used as u64) {
                        Ok(()) => State::Data(Box::new(data)),
                        Err(e) => State::Failed(e),
                    },
                    Ok(None) if buf.len() > TOC_LIMIT => {
                        State::Failed(ArchiveError::TocTooLarge(TOC_LIMIT))
                    }
                    Ok(None) => State::Head {
                        buf,
                        next_try: next,
                    },
                    Err(e) => State::Failed(e),
                };
            }
            State::Data(data) => {
                if let Err(e) = data.feed(bytes, at) {
                    self.state = State::Failed(e);
                }
            }
        }
    }

    /// The counts, once the whole archive was fed. Tables whose data block was incomplete or
    /// of an unexpected shape are left out (count them otherwise).
    pub fn finish(mut self) -> Result<ArchiveRows, ArchiveError> {
        if let State::Head { buf, .. } = &mut self.state {
            let buf = std::mem::take(buf);
            self.state = match parse_head(&buf)? {
                None => return Err(ArchiveError::Truncated("the table of contents")),
                Some((used, mut data)) => {
                    data.feed(&buf[used..], used as u64)?;
                    State::Data(Box::new(data))
                }
            };
        }
        match self.state {
            State::Failed(e) => Err(e),
            State::Head { .. } => Err(ArchiveError::Truncated("the table of contents")),
            State::Data(data) => {
                if !matches!(data.step, Step::BlockType) || data.int_have != 0 {
                    return Err(ArchiveError::Truncated("a data block"));
                }
                Ok(ArchiveRows {
                    encoding: data.encoding,
                    tables: data
                        .tables
                        .into_iter()
                        .filter_map(|(schema, name, rows)| {
                            Some(TableRows {
                                schema,
                                name,
                                rows: rows?,
                            })
                        })
                        .collect(),
                })
            }
        }
    }
}

/// Newlines in `b`: counted in runs of 255 into a byte, which the compiler vectorises (a row's
/// chunk is often shorter than a run: then a plain loop).
fn count_newlines(b: &[u8]) -> u64 {
    if b.len() < 64 {
        return b.iter().filter(|&&x| x == b'\n').count() as u64;
    }
    b.chunks(255)
        .map(|c| u64::from(c.iter().fold(0u8, |a, &x| a + u8::from(x == b'\n'))))
        .sum()
}

impl Data {
    fn malformed(at: u64, what: &'static str) -> ArchiveError {
        ArchiveError::Malformed { at, what }
    }

    /// Accumulates one integer; Some(value) once complete.
    fn take_int(&mut self, bytes: &mut &[u8]) -> Option<i64> {
        let need = 1 + self.int_size;
        let n = (need - self.int_have).min(bytes.len());
        self.int_buf[self.int_have..self.int_have + n].copy_from_slice(&bytes[..n]);
        self.int_have += n;
        *bytes = &bytes[n..];
        if self.int_have < need {
            return None;
        }
        self.int_have = 0;
        Some(decode_int(&self.int_buf[..need]))
    }

    /// Whole chunks at the start of `bytes`, while in a block's chunks: the common case, one
    /// chunk per row (pg_dump writes each COPY row as a chunk of its own), so kept to a few
    /// nanoseconds a chunk.
    fn whole_chunks<'b>(&mut self, mut bytes: &'b [u8]) -> &'b [u8] {
        let n = 1 + self.int_size;
        let counting = self.current.is_some();
        while bytes.len() > n {
            let len = match decode_int(&bytes[..n]) {
                l if l > 0 => l as u64,
                _ => break, // the block's end, or a bad length: the careful path
            };
            let Some(chunk) = usize::try_from(len)
                .ok()
                .and_then(|l| bytes.get(n..n.checked_add(l)?))
            else {
                break;
            };
            if counting {
                self.newlines += count_newlines(chunk);
                self.push_tail(chunk);
            }
            self.block_len += len;
            bytes = &bytes[n + chunk.len()..];
        }
        bytes
    }

    fn feed(&mut self, mut bytes: &[u8], start: u64) -> Result<(), ArchiveError> {
        let total = bytes.len() as u64;
        while !bytes.is_empty() {
            if matches!(self.step, Step::ChunkLen) && self.int_have == 0 {
                bytes = self.whole_chunks(bytes);
                if bytes.is_empty() {
                    break;
                }
            }
            let at = start + (total - bytes.len() as u64);
            match self.step {
                Step::BlockType => {
                    self.step = match bytes[0] {
                        BLK_DATA => Step::BlockId { blobs: false },
                        BLK_BLOBS => Step::BlockId { blobs: true },
                        _ => return Err(Self::malformed(at, "a data block type (1 or 3)")),
                    };
                    bytes = &bytes[1..];
                }
                Step::BlockId { blobs } => {
                    let Some(id) = self.take_int(&mut bytes) else {
                        continue;
                    };
                    if blobs {
                        self.step = Step::BlobOid;
                    } else {
                        self.current = self.by_id.get(&id).copied();
                        if let Some(i) = self.current
                            && self.tables[i].2.is_some()
                        {
                            return Err(Self::malformed(at, "one data block per table"));
                        }
                        self.newlines = 0;
                        self.block_len = 0;
                        self.step = Step::ChunkLen;
                    }
                }
                Step::ChunkLen => {
                    let Some(len) = self.take_int(&mut bytes) else {
                        continue;
                    };
                    match u64::try_from(len) {
                        Ok(0) => {
                            self.end_block();
                            self.step = Step::BlockType;
                        }
                        Ok(left) => self.step = Step::Chunk { left },
                        Err(_) => return Err(Self::malformed(at, "a chunk length")),
                    }
                }
                Step::Chunk { left } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    let (chunk, rest) = bytes.split_at(n);
                    if self.current.is_some() {
                        self.newlines += count_newlines(chunk);
                        self.push_tail(chunk);
                    }
                    self.block_len += n as u64;
                    bytes = rest;
                    let left = left - n as u64;
                    self.step = if left == 0 {
                        Step::ChunkLen
                    } else {
                        Step::Chunk { left }
                    };
                }
                Step::BlobOid => {
                    let Some(oid) = self.take_int(&mut bytes) else {
                        continue;
                    };
                    self.step = if oid == 0 {
                        Step::BlockType
                    } else {
                        Step::BlobChunkLen
                    };
                }
                Step::BlobChunkLen => {
                    let Some(len) = self.take_int(&mut bytes) else {
                        continue;
                    };
                    self.step = match u64::try_from(len) {
                        Ok(0) => Step::BlobOid,
                        Ok(left) => Step::BlobChunk { left },
                        Err(_) => return Err(Self::malformed(at, "a large object chunk length")),
                    };
                }
                Step::BlobChunk { left } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.step = if left == 0 {
                        Step::BlobChunkLen
                    } else {
                        Step::BlobChunk { left }
                    };
                }
            }
        }
        Ok(())
    }

    fn push_tail(&mut self, chunk: &[u8]) {
        if chunk.len() >= 6 {
            self.tail.copy_from_slice(&chunk[chunk.len() - 6..]);
        } else {
            self.tail.rotate_left(chunk.len());
            let k = 6 - chunk.len();
            self.tail[k..].copy_from_slice(chunk);
        }
    }

    /// A table's block ended: its rows are its lines less pg_dump's end marker, a line `\.`
    /// (no row can be that line: COPY text escapes a backslash as `\\`), and the empty lines
    /// after it.
    fn end_block(&mut self) {
        let Some(i) = self.current.take() else {
            return;
        };
        let len = self.block_len;
        let tail = &self.tail[6 - len.min(6) as usize..];
        // The marker must start a line: at the block's start or after a newline.
        let marker = |m: &[u8]| {
            tail.ends_with(m)
                && (len == m.len() as u64
                    || tail.len() > m.len() && tail[tail.len() - m.len() - 1] == b'\n')
        };
        let rows = if marker(b"\\.\n\n\n") {
            Some(self.newlines - 3)
        } else if marker(b"\\.\n") {
            Some(self.newlines - 1)
        } else if len == 0 || tail.last() == Some(&b'\n') {
            Some(self.newlines)
        } else {
            None // a last line without its newline: not a shape COPY writes
        };
        self.tables[i].2 = rows.and_then(|r| i64::try_from(r).ok());
    }
}

fn decode_int(b: &[u8]) -> i64 {
    if let Ok(four) = <[u8; 4]>::try_from(&b[1..]) {
        // intSize 4, what every pg_dump writes.
        let v = i64::from(u32::from_le_bytes(four));
        return if b[0] != 0 { -v } else { v };
    }
    let mut v: i64 = 0;
    for (k, &x) in b[1..].iter().enumerate().take(8) {
        v |= i64::from(x) << (8 * k);
    }
    if b[0] != 0 { v.wrapping_neg() } else { v }
}

/// A cursor over the collected head; `Ok(None)` from the parse means "not all there yet".
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    int_size: usize,
}

enum Need {
    More,
    Bad(ArchiveError),
}

impl From<ArchiveError> for Need {
    fn from(e: ArchiveError) -> Need {
        Need::Bad(e)
    }
}

impl<'a> Cur<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Need> {
        let end = self.pos.checked_add(n).ok_or(Need::More)?;
        let s = self.b.get(self.pos..end).ok_or(Need::More)?;
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, Need> {
        Ok(self.bytes(1)?[0])
    }
    fn int(&mut self) -> Result<i64, Need> {
        Ok(decode_int(self.bytes(1 + self.int_size)?))
    }
    fn str(&mut self) -> Result<Option<&'a [u8]>, Need> {
        let at = self.pos as u64;
        match self.int()? {
            -1 => Ok(None),
            n => {
                let n = usize::try_from(n).map_err(|_| {
                    Need::Bad(ArchiveError::Malformed {
                        at,
                        what: "a string length",
                    })
                })?;
                if n > TOC_LIMIT {
                    return Err(Need::Bad(ArchiveError::TocTooLarge(TOC_LIMIT)));
                }
                Ok(Some(self.bytes(n)?))
            }
        }
    }
}

/// Header and TOC: Ok(Some((bytes used, the data reader))) once complete.
fn parse_head(b: &[u8]) -> Result<Option<(usize, Data)>, ArchiveError> {
    match parse_head_inner(b) {
        Ok(r) => Ok(Some(r)),
        Err(Need::More) => Ok(None),
        Err(Need::Bad(e)) => Err(e),
    }
}

fn parse_head_inner(b: &[u8]) -> Result<(usize, Data), Need> {
    let mut c = Cur {
        b,
        pos: 0,
        int_size: 0,
    };
    if c.bytes(5)? != b"PGDMP" {
        return Err(ArchiveError::NotCustom("no PGDMP magic").into());
    }
    let (maj, min, rev) = (c.byte()?, c.byte()?, c.byte()?);
    if maj != 1 || !(12..=16).contains(&min) {
        return Err(ArchiveError::Version(maj, min, rev).into());
    }
    let int_size = usize::from(c.byte()?);
    let off_size = usize::from(c.byte()?);
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Err(ArchiveError::NotCustom("integer or offset size out of range").into());
    }
    c.int_size = int_size;
    if c.byte()? != 1 {
        return Err(ArchiveError::NotCustom("another archive format than custom").into());
    }
    // 1.15 (PostgreSQL 16) names the algorithm in a byte; before, a compression level.
    let compressed = if min >= 15 {
        c.byte()? != 0
    } else {
        c.int()? != 0
    };
    if compressed {
        return Err(ArchiveError::Compressed.into());
    }
    for _ in 0..7 {
        c.int()?; // creation time
    }
    for _ in 0..3 {
        c.str()?; // database, server version, pg_dump version
    }
    let count = c.int()?;
    let mut data = Data {
        int_size,
        by_id: HashMap::new(),
        tables: Vec::new(),
        encoding: None,
        step: Step::BlockType,
        int_buf: [0; 9],
        int_have: 0,
        current: None,
        newlines: 0,
        block_len: 0,
        tail: [0; 6],
    };
    for _ in 0..count.max(0) {
        let id = c.int()?;
        let had_dumper = c.int()? != 0;
        c.str()?; // tableoid
        c.str()?; // oid
        let tag = c.str()?;
        let desc = c.str()?;
        c.int()?; // section
        let defn = c.str()?;
        c.str()?; // drop statement
        let copy = c.str()?;
        let namespace = c.str()?;
        c.str()?; // tablespace
        if min >= 14 {
            c.str()?; // table access method
        }
        if min >= 16 {
            c.int()?; // relkind
        }
        c.str()?; // owner
        c.str()?; // "false" (WITH OIDS)
        while c.str()?.is_some() {} // dependencies, ended by NULL
        c.byte()?; // data offset: flag, then offSize bytes
        c.bytes(off_size)?;
        match desc {
            Some(b"TABLE DATA") if had_dumper && copy.is_some_and(|s| s.starts_with(b"COPY ")) => {
                if let (Some(ns), Some(tag)) = (namespace, tag) {
                    data.by_id.insert(id, data.tables.len());
                    data.tables.push((ns.to_vec(), tag.to_vec(), None));
                }
            }
            Some(b"ENCODING") => {
                // SET client_encoding = 'UTF8';
                data.encoding = defn
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.split('\'').nth(1))
                    .map(str::to_string);
            }
            _ => {}
        }
    }
    Ok((c.pos, data))
}

#[cfg(test)]
mod tests;
