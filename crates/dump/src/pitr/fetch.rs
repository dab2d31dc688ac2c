//! One WAL file for `restore_command`: the stored object decompressed into `%p` through a
//! temporary file beside it, its SHA-256 and size checked against the ledger's before the
//! rename, so PostgreSQL never reads a file that is not exactly what was archived.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use pgbackman_db::pitr::PlannedWal;
use sha2::{Digest, Sha256};

/// Why a file could not be delivered. Every case is a failure to retry, never "not found".
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The stored file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The stored file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stored bytes do not decompress.
    #[error("decompressing {path} ({codec}): {reason}")]
    Decode {
        /// The stored file.
        path: PathBuf,
        /// Its codec in the ledger.
        codec: String,
        /// What the decoder said.
        reason: String,
    },
    /// The content is not what the ledger says was archived.
    #[error(
        "{name} from {path} is not what was archived: SHA-256 {got} and {got_size} bytes, the ledger has {want} and {want_size} bytes (the stored file is damaged; show_wal_segments lists it)"
    )]
    Mismatch {
        /// The WAL file name.
        name: String,
        /// The stored file.
        path: PathBuf,
        /// SHA-256 of what it decompressed to.
        got: String,
        /// Its length.
        got_size: u64,
        /// The ledger's SHA-256.
        want: String,
        /// The ledger's size.
        want_size: i64,
    },
    /// The destination could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Writes the plain content of `wal` to `dest` (atomically: a temporary file in the same
/// directory, renamed once its checksum is right). Returns the bytes written.
pub fn fetch_wal(wal: &PlannedWal, dest: &Path) -> Result<u64, FetchError> {
    let src = PathBuf::from(&wal.stored_path);
    let f = File::open(&src).map_err(|source| FetchError::Read {
        path: src.clone(),
        source,
    })?;
    let mut reader: Box<dyn Read> = match wal.codec.as_str() {
        "zstd" => {
            Box::new(
                zstd::stream::read::Decoder::new(f).map_err(|e| FetchError::Decode {
                    path: src.clone(),
                    codec: wal.codec.clone(),
                    reason: e.to_string(),
                })?,
            )
        }
        "none" => Box::new(BufReader::new(f)),
        other => {
            return Err(FetchError::Decode {
                path: src,
                codec: other.into(),
                reason: "this version cannot read that codec".into(),
            });
        }
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.pgbackman-tmp", wal.name));
    let write_err = |source| FetchError::Write {
        path: tmp.clone(),
        source,
    };
    let mut out = File::create(&tmp).map_err(write_err)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n: u64 = 0;
    let r = loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(k) => k,
            Err(e) => {
                break Err(FetchError::Decode {
                    path: src.clone(),
                    codec: wal.codec.clone(),
                    reason: e.to_string(),
                });
            }
        };
        hash.update(&buf[..k]);
        n += k as u64;
        if let Err(e) = out.write_all(&buf[..k]) {
            break Err(write_err(e));
        }
    };
    let r = r.and_then(|()| {
        let got = hex::encode(hash.finalize());
        if got != wal.sha256 || i64::try_from(n).ok() != Some(wal.size) {
            return Err(FetchError::Mismatch {
                name: wal.name.clone(),
                path: src.clone(),
                got,
                got_size: n,
                want: wal.sha256.clone(),
                want_size: wal.size,
            });
        }
        out.flush().map_err(write_err)?;
        fs::rename(&tmp, dest).map_err(|source| FetchError::Write {
            path: dest.to_path_buf(),
            source,
        })
    });
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map(|()| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(dir: &Path, content: &[u8]) -> PlannedWal {
        let stored = dir.join("000000010000000000000003.zst");
        fs::write(&stored, zstd::encode_all(content, 3).unwrap()).unwrap();
        PlannedWal {
            name: "000000010000000000000003".into(),
            kind: "full".into(),
            timeline: 1,
            size: content.len() as i64,
            sha256: hex::encode(Sha256::digest(content)),
            codec: "zstd".into(),
            stored_path: stored.display().to_string(),
        }
    }

    #[test]
    fn a_good_file_is_written_whole_and_a_damaged_one_never() {
        let d = tempfile::tempdir().unwrap();
        let content = vec![7u8; 300_000];
        let w = planned(d.path(), &content);
        let dest = d.path().join("RECOVERYXLOG");
        assert_eq!(fetch_wal(&w, &dest).unwrap(), 300_000);
        assert_eq!(fs::read(&dest).unwrap(), content);
        fs::remove_file(&dest).unwrap();

        // Other content under the same ledger entry: refused, nothing at %p, no temporary left.
        fs::write(
            &w.stored_path,
            zstd::encode_all(&[8u8; 300_000][..], 3).unwrap(),
        )
        .unwrap();
        let e = fetch_wal(&w, &dest).unwrap_err();
        assert!(matches!(e, FetchError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("000000010000000000000003"), "{e}");
        // Bytes that are not zstd at all.
        fs::write(&w.stored_path, b"garbage").unwrap();
        let e = fetch_wal(&w, &dest).unwrap_err();
        assert!(matches!(e, FetchError::Decode { .. }), "{e}");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "only the stored file is left"
        );
    }
}
