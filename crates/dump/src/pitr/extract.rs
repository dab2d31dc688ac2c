//! A base backup set (`base.tar.zst` + `backup_manifest`, `crate::basebackup`) extracted into a
//! new data directory: every member written 0600 under 0700 directories while its SHA-256 is
//! computed, then compared with `backup_manifest` (size and digest; nothing listed missing,
//! nothing unlisted but WAL). `backup_label` is written exactly as the backup has it: without
//! it PostgreSQL would start crash recovery from the wrong checkpoint (notes §1.2).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use pgbackman_core::wal::manifest::{BackupManifest, ChecksumAlgorithm};
use sha2::{Digest, Sha256};

use crate::basebackup::{BACKUP_LABEL_FILE, BACKUP_MANIFEST_FILE, BASE_TAR_FILE};

/// What was extracted.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files whose SHA-256 was compared with the manifest's.
    pub checked: u64,
}

/// Why a set could not be extracted; the data directory is then incomplete (the caller
/// removes it).
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The set's files could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A member differs from `backup_manifest`, or the two do not list the same files.
    #[error("the base backup in {set} does not match its backup_manifest: {detail}")]
    Manifest {
        /// The set directory.
        set: PathBuf,
        /// The first difference.
        detail: String,
    },
    /// The data directory could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn rd(path: &Path) -> impl Fn(std::io::Error) -> ExtractError + '_ {
    move |e| ExtractError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn wr(path: &Path) -> impl Fn(std::io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// A member path made safe: relative, no `..`, nothing but normal components.
fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Extracts the set in `set_dir` into `data_dir`, which must not exist yet (its parent must).
/// `progress` is called with the bytes written so far.
pub fn extract_base(
    set_dir: &Path,
    data_dir: &Path,
    progress: &dyn Fn(u64),
) -> Result<Extracted, ExtractError> {
    let manifest_path = set_dir.join(BACKUP_MANIFEST_FILE);
    let mbytes = fs::read(&manifest_path).map_err(rd(&manifest_path))?;
    let manifest = BackupManifest::parse(&mbytes).map_err(|e| ExtractError::Manifest {
        set: set_dir.to_path_buf(),
        detail: format!("backup_manifest: {e}"),
    })?;
    let mismatch = |detail: String| ExtractError::Manifest {
        set: set_dir.to_path_buf(),
        detail,
    };
    let mut listed: HashMap<&[u8], _> = manifest.files_by_path();
    fs::DirBuilder::new()
        .mode(0o700)
        .create(data_dir)
        .map_err(wr(data_dir))?;
    let tar_path = set_dir.join(BASE_TAR_FILE);
    let f = File::open(&tar_path).map_err(rd(&tar_path))?;
    let dec = zstd::stream::read::Decoder::new(f).map_err(rd(&tar_path))?;
    let mut archive = tar::Archive::new(dec);
    let mut done = Extracted::default();
    let mut buf = vec![0u8; 1 << 16];
    for entry in archive.entries().map_err(rd(&tar_path))? {
        let mut entry = entry.map_err(rd(&tar_path))?;
        let raw = entry.path().map_err(rd(&tar_path))?.into_owned();
        let Some(rel) = safe_relative(&raw) else {
            return Err(mismatch(format!(
                "member {} leaves the data directory",
                raw.display()
            )));
        };
        let dest = data_dir.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dest)
                .map_err(wr(&dest))?;
            continue;
        }
        if !kind.is_file() {
            // Symlinks (pg_tblspc) are refused at backup time; anything else is not ours.
            return Err(mismatch(format!(
                "member {} is neither a file nor a directory",
                rel.display()
            )));
        }
        if let Some(parent) = dest.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(wr(parent))?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .map_err(wr(&dest))?;
        let mut hash = Sha256::new();
        let mut n = 0u64;
        loop {
            let k = entry.read(&mut buf).map_err(rd(&tar_path))?;
            if k == 0 {
                break;
            }
            hash.update(&buf[..k]);
            out.write_all(&buf[..k]).map_err(wr(&dest))?;
            n += k as u64;
            if (done.bytes + n) % (64 << 20) < k as u64 {
                progress(done.bytes + n);
            }
        }
        done.files += 1;
        done.bytes += n;
        let key = rel.as_os_str().as_encoded_bytes();
        match listed.remove(key) {
            Some(m) => {
                if m.size != n {
                    return Err(mismatch(format!(
                        "{}: {n} bytes in the tar, {} in backup_manifest",
                        rel.display(),
                        m.size
                    )));
                }
                if let Some(c) = &m.checksum
                    && c.algorithm == ChecksumAlgorithm::Sha256
                {
                    if hash.finalize().as_slice() != c.value.as_slice() {
                        return Err(mismatch(format!(
                            "{}: SHA-256 differs from backup_manifest",
                            rel.display()
                        )));
                    }
                    done.checked += 1;
                }
            }
            None if rel.starts_with("pg_wal") || key == BACKUP_MANIFEST_FILE.as_bytes() => {}
            None => {
                return Err(mismatch(format!(
                    "{}: in the tar, not in backup_manifest",
                    rel.display()
                )));
            }
        }
    }
    if let Some(missing) = listed.values().next() {
        return Err(mismatch(format!(
            "{}: in backup_manifest, not in the tar ({} file(s) missing)",
            missing.display_path(),
            listed.len()
        )));
    }
    // The label the set keeps beside the tar is the one the tar held.
    let label = data_dir.join(BACKUP_LABEL_FILE);
    let kept = set_dir.join(BACKUP_LABEL_FILE);
    if kept.exists() && fs::read(&kept).ok() != fs::read(&label).ok() {
        return Err(mismatch(format!(
            "{} differs from the backup_label in the tar",
            kept.display()
        )));
    }
    // pg_wal and the directories PostgreSQL needs even when empty.
    for d in ["pg_wal", "pg_wal/archive_status"] {
        let p = data_dir.join(d);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(wr(&p))?;
    }
    progress(done.bytes);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_outside_the_data_directory_are_refused() {
        assert_eq!(
            safe_relative(Path::new("./base/1/1259")),
            Some(PathBuf::from("base/1/1259"))
        );
        assert_eq!(safe_relative(Path::new("../etc/passwd")), None);
        assert_eq!(safe_relative(Path::new("/etc/passwd")), None);
        assert_eq!(safe_relative(Path::new("base/../../x")), None);
    }
}
