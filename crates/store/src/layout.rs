//! The key layout of a repository (relative to its path or bucket prefix). Every key is
//! written once: it names its content (a set by its directory name, which carries the job's
//! start instant; a WAL file by its name and the start of its sha256), so nothing is ever
//! rewritten and a bucket with Object Lock default retention works (notes §1.4 item 6, F15).
//!
//! ```text
//! sets/node<NodeID>/<set dir>/<file>             a logical backup set, files as on disk,
//!                                                manifest.json written last (its presence
//!                                                means "complete"; a catalog rebuild reads it)
//! base/node<NodeID>/<sysid>/<backup id>/<part>    a base backup (part B): base.tar.zst[.age],
//!                                                backup_manifest, manifest.json last
//! wal/node<NodeID>/<sysid>/<TLI>/<name>.<sha8><ext> a WAL file (part W / the WAL store):
//!                                                <ext> = .zst[.age]; history files under the
//!                                                timeline they start
//! ```
//! `<sysid>` is the system identifier in decimal, `<TLI>` 8 hex digits: a pg_upgrade or a
//! new initdb of a node is a new directory, never a collision.

/// Why a key is refused (the layout functions only build valid ones).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 900 {
        return Err("a key has 1 to 900 bytes".into());
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err("a key has no leading or trailing \"/\"".into());
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("a key has no empty, \".\" or \"..\" component".into());
        }
        if part.starts_with(".incoming") {
            return Err("\".incoming\" is the local store's own directory".into());
        }
    }
    if key
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b"/._-+=@,%~".contains(&b)))
    {
        return Err(
            "a key holds letters, digits and / . _ - + = @ , % ~ only (names are path-encoded first)"
                .into(),
        );
    }
    Ok(())
}

/// The directory of a logical backup set.
pub fn set_prefix(node_id: i64, set_dir: &str) -> String {
    format!("sets/node{node_id}/{set_dir}")
}

/// One file of a logical backup set.
pub fn set_object(node_id: i64, set_dir: &str, file: &str) -> String {
    format!("{}/{file}", set_prefix(node_id, set_dir))
}

/// The directory of a base backup.
pub fn base_backup_prefix(node_id: i64, system_identifier: u64, backup_id: &str) -> String {
    format!("base/node{node_id}/{system_identifier}/{backup_id}")
}

/// A WAL file: its PostgreSQL name, the first 8 hex digits of the sha256 of its plain bytes
/// (two contents under one name are two objects: the conflict is kept, never overwritten) and
/// the extension of its codec chain (`.zst`, `.zst.age`).
pub fn wal_object(
    node_id: i64,
    system_identifier: u64,
    timeline: u32,
    file_name: &str,
    sha256: &str,
    ext: &str,
) -> String {
    let sha8: String = sha256.chars().take(8).collect();
    format!("wal/node{node_id}/{system_identifier}/{timeline:08X}/{file_name}.{sha8}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = set_object(3, "20260501T120000Z_db1_FULL_j42", "db1.dump.zst");
        assert_eq!(k, "sets/node3/20260501T120000Z_db1_FULL_j42/db1.dump.zst");
        check_key(&k).unwrap();
        let w = wal_object(
            3,
            7412345678901234567,
            2,
            "000000020000000000000003",
            "abcdef0123",
            ".zst",
        );
        assert_eq!(
            w,
            "wal/node3/7412345678901234567/00000002/000000020000000000000003.abcdef01.zst"
        );
        check_key(&w).unwrap();
        check_key(&base_backup_prefix(3, 1, "b-7")).unwrap();
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "a b",
            ".incoming/x",
            "a/é",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
