//! `backup_manifest`: the JSON file pg_basebackup writes last (versions 1 and 2).
//!
//! Rules from PostgreSQL's `src/common/parse_manifest.c` (PG17+; `src/bin/pg_verifybackup/
//! parse_manifest.c` in 13–16) and `src/backend/backup/backup_manifest.c`:
//! - the first field is `PostgreSQL-Backup-Manifest-Version`, 1 or 2; 2 (PG17+) adds
//!   `System-Identifier`;
//! - each file has `Path` or hex `Encoded-Path` (never both: paths that are not UTF-8),
//!   `Size`, optionally `Last-Modified` and `Checksum-Algorithm` + hex `Checksum`;
//! - `WAL-Ranges` lists `Timeline`, `Start-LSN`, `End-LSN`;
//! - `Manifest-Checksum` is the SHA-256 of every byte up to and including the newline that
//!   ends the second-to-last line: the server stops hashing right before it appends
//!   `"Manifest-Checksum": "…"}\n` (`SendBackupManifest`), and `verify_manifest_checksum`
//!   requires at least two lines and a final newline, then hashes
//!   `buffer[..=penultimate_newline]`.
//!
//! Unknown fields are refused, as PostgreSQL's parser does.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::lsn::Lsn;
use super::segment::Tli;

/// A parsed, checksum-verified `backup_manifest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupManifest {
    /// 1 (PostgreSQL 13–16) or 2 (17+).
    pub version: u32,
    /// The cluster's system identifier (version 2 only).
    pub system_identifier: Option<u64>,
    /// Every file of the backup, in manifest order.
    pub files: Vec<ManifestFile>,
    /// The WAL the backup needs, newest timeline first (as the server writes them).
    pub wal_ranges: Vec<WalRange>,
    /// The verified SHA-256 of the manifest (lower-case hex).
    pub manifest_checksum: String,
}

/// One file of a base backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory, as bytes (an `Encoded-Path` is decoded).
    pub path: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// `Last-Modified`, as written (GMT).
    pub last_modified: Option<String>,
    /// The file's checksum, unless the backup was taken with `--manifest-checksums=NONE`.
    pub checksum: Option<FileChecksum>,
}

impl ManifestFile {
    /// The path for messages (non-UTF-8 bytes replaced).
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// A file checksum of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChecksum {
    /// Its algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// Its value, decoded from hex.
    pub value: Vec<u8>,
}

/// `pg_checksum_type` (src/common/checksum_helper.c), parsed case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    /// CRC-32C (the server's default).
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ChecksumAlgorithm {
    /// Parses a `Checksum-Algorithm` value; `None` (no checksum) for `NONE`.
    fn parse(s: &str) -> Result<Option<ChecksumAlgorithm>, ()> {
        Ok(Some(match s.to_ascii_uppercase().as_str() {
            "NONE" => return Ok(None),
            "CRC32C" => ChecksumAlgorithm::Crc32c,
            "SHA224" => ChecksumAlgorithm::Sha224,
            "SHA256" => ChecksumAlgorithm::Sha256,
            "SHA384" => ChecksumAlgorithm::Sha384,
            "SHA512" => ChecksumAlgorithm::Sha512,
            _ => return Err(()),
        }))
    }
    /// Length of a checksum in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Sha224 => 28,
            ChecksumAlgorithm::Sha256 => 32,
            ChecksumAlgorithm::Sha384 => 48,
            ChecksumAlgorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha224 => "SHA224",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Sha384 => "SHA384",
            ChecksumAlgorithm::Sha512 => "SHA512",
        })
    }
}

/// WAL a backup needs on one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    /// The timeline.
    pub tli: Tli,
    /// From here.
    pub start: Lsn,
    /// To here.
    pub end: Lsn,
}

/// Why a `backup_manifest` cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestError {
    /// Not JSON, or not the manifest's structure.
    #[error(
        "backup_manifest is not a valid PostgreSQL backup manifest: {0}; the base backup stream was damaged or cut short: take a new base backup"
    )]
    Invalid(String),
    /// The SHA-256 does not match.
    #[error(
        "backup_manifest checksum mismatch: the file hashes to {computed} but says {recorded}; the manifest was altered or damaged: take a new base backup"
    )]
    ChecksumMismatch {
        /// SHA-256 of the checksummed part.
        computed: String,
        /// `Manifest-Checksum` as written.
        recorded: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "System-Identifier", default)]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<RawRange>,
    #[serde(rename = "Manifest-Checksum")]
    manifest_checksum: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    #[serde(rename = "Timeline")]
    timeline: Tli,
    #[serde(rename = "Start-LSN")]
    start: Lsn,
    #[serde(rename = "End-LSN")]
    end: Lsn,
}

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(msg.into())
}

/// The bytes `Manifest-Checksum` covers: up to and including the newline that ends the
/// second-to-last line. The manifest must end with a newline and have at least two lines.
pub fn checksummed_part(bytes: &[u8]) -> Result<&[u8], ManifestError> {
    if bytes.last() != Some(&b'\n') {
        return Err(invalid("last line not newline-terminated"));
    }
    let body = &bytes[..bytes.len() - 1];
    let penultimate = body
        .iter()
        .rposition(|b| *b == b'\n')
        .ok_or_else(|| invalid("expected at least 2 lines"))?;
    let last_line = &body[penultimate + 1..];
    if !last_line.starts_with(b"\"Manifest-Checksum\"") {
        return Err(invalid(
            "the last line is not the \"Manifest-Checksum\" line",
        ));
    }
    Ok(&bytes[..=penultimate])
}

/// Decodes hex of either case (PostgreSQL's `hexdecode_string`); an odd length is refused.
fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

impl BackupManifest {
    /// Parses a whole `backup_manifest` and verifies its `Manifest-Checksum`.
    pub fn parse(bytes: &[u8]) -> Result<BackupManifest, ManifestError> {
        let covered = checksummed_part(bytes)?;
        // PostgreSQL insists on the version being the first field.
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        let after_brace = bytes[start..]
            .strip_prefix(b"{")
            .ok_or_else(|| invalid("it does not start with a JSON object"))?;
        let first_field = after_brace.trim_ascii_start();
        if !first_field.starts_with(b"\"PostgreSQL-Backup-Manifest-Version\"") {
            return Err(invalid(
                "expected PostgreSQL-Backup-Manifest-Version as the first field",
            ));
        }
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let recorded = raw.manifest_checksum;
        let expected = (recorded.len() == 64)
            .then(|| unhex(&recorded))
            .flatten()
            .ok_or_else(|| {
                invalid(format!(
                    "invalid Manifest-Checksum {:?} (64 hexadecimal digits expected)",
                    recorded.chars().take(80).collect::<String>()
                ))
            })?;
        let computed = Sha256::digest(covered);
        if computed.as_slice() != expected.as_slice() {
            return Err(ManifestError::ChecksumMismatch {
                computed: hex::encode(computed),
                recorded,
            });
        }
        match (raw.version, raw.system_identifier) {
            (1, None) | (2, Some(_)) => {}
            (1, Some(_)) => return Err(invalid("version 1 has no System-Identifier")),
            (2, None) => return Err(invalid("version 2 lacks its System-Identifier")),
            (v, _) => {
                return Err(invalid(format!(
                    "unexpected manifest version {v} (1 and 2 are known); a newer PostgreSQL? upgrade pgbackman"
                )));
            }
        }
        let mut files = Vec::with_capacity(raw.files.len());
        let mut seen: HashMap<Vec<u8>, ()> = HashMap::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), None) => p.into_bytes(),
                (None, Some(e)) => unhex(&e).ok_or_else(|| {
                    invalid(format!(
                        "could not decode Encoded-Path {:?}",
                        e.chars().take(80).collect::<String>()
                    ))
                })?,
                (Some(_), Some(_)) => return Err(invalid("a file has both Path and Encoded-Path")),
                (None, None) => return Err(invalid("a file has no Path")),
            };
            let shown = String::from_utf8_lossy(&path)
                .chars()
                .take(200)
                .collect::<String>();
            if path.is_empty() {
                return Err(invalid("a file has an empty path"));
            }
            // PostgreSQL writes paths relative to the data directory; a path that could leave
            // it (absolute, `..`, empty components, NUL) is refused before anyone writes to it.
            if path.starts_with(b"/")
                || path.contains(&0)
                || path
                    .split(|b| *b == b'/')
                    .any(|c| c.is_empty() || c == b".." || c == b".")
            {
                return Err(invalid(format!(
                    "file {shown:?} is not a plain path inside the data directory"
                )));
            }
            let checksum = match (f.algorithm, f.checksum) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(invalid(format!(
                        "file {shown:?} has a checksum without algorithm"
                    )));
                }
                (Some(a), c) => {
                    let algorithm = ChecksumAlgorithm::parse(&a).map_err(|()| {
                        invalid(format!(
                            "file {shown:?}: unrecognized checksum algorithm {:?}",
                            a.chars().take(40).collect::<String>()
                        ))
                    })?;
                    match (algorithm, c) {
                        (None, _) => None,
                        (Some(algorithm), Some(c)) => {
                            let value = unhex(&c).filter(|v| v.len() == algorithm.digest_len()).ok_or_else(
                                || {
                                    invalid(format!(
                                        "file {shown:?}: invalid {algorithm} checksum {:?} ({} hexadecimal digits expected)",
                                        c.chars().take(140).collect::<String>(),
                                        algorithm.digest_len() * 2
                                    ))
                                },
                            )?;
                            Some(FileChecksum { algorithm, value })
                        }
                        (Some(algorithm), None) => {
                            return Err(invalid(format!(
                                "file {shown:?} names algorithm {algorithm} but has no Checksum"
                            )));
                        }
                    }
                }
            };
            if seen.insert(path.clone(), ()).is_some() {
                return Err(invalid(format!("file {shown:?} is listed twice")));
            }
            files.push(ManifestFile {
                path,
                size: f.size,
                last_modified: f.last_modified,
                checksum,
            });
        }
        let mut wal_ranges = Vec::with_capacity(raw.wal_ranges.len());
        for r in raw.wal_ranges {
            if r.timeline == 0 {
                return Err(invalid("a WAL range is on timeline 0"));
            }
            if r.end < r.start {
                return Err(invalid(format!(
                    "WAL range on timeline {} ends at {} before it starts at {}",
                    r.timeline, r.end, r.start
                )));
            }
            wal_ranges.push(WalRange {
                tli: r.timeline,
                start: r.start,
                end: r.end,
            });
        }
        Ok(BackupManifest {
            version: raw.version,
            system_identifier: raw.system_identifier,
            files,
            wal_ranges,
            manifest_checksum: recorded.to_ascii_lowercase(),
        })
    }

    /// The files by path, for checking a tar stream entry by entry.
    pub fn files_by_path(&self) -> HashMap<&[u8], &ManifestFile> {
        self.files.iter().map(|f| (f.path.as_slice(), f)).collect()
    }
    /// Total bytes of the files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests;
