use super::*;

/// Appends the checksum line the way the server does (`SendBackupManifest`).
fn seal(body: &str) -> Vec<u8> {
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
}

/// A version 2 manifest as PostgreSQL 17 writes it.
fn v2_body() -> String {
    concat!(
        "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n",
        "\"System-Identifier\": 7311234567890123456,\n",
        "\"Files\": [\n",
        "{ \"Path\": \"backup_label\", \"Size\": 227, \"Last-Modified\": \"2026-12-03 14:00:00 GMT\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" },\n",
        "{ \"Encoded-Path\": \"626173652f312f666fff\", \"Size\": 8192, \"Last-Modified\": \"2026-12-03 14:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"1A2b3C4d\" },\n",
        "{ \"Path\": \"global/pg_control\", \"Size\": 8192, \"Last-Modified\": \"2026-12-03 14:00:00 GMT\" }\n",
        "],\n",
        "\"WAL-Ranges\": [\n",
        "{ \"Timeline\": 2, \"Start-LSN\": \"0/3000148\", \"End-LSN\": \"0/5000100\" },\n",
        "{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/3000148\" }\n",
        "],\n"
    )
    .to_string()
}

fn v1_body() -> String {
    concat!(
        "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n",
        "\"Files\": [\n",
        "{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-12-03 14:00:00 GMT\", \"Checksum-Algorithm\": \"NONE\" }\n",
        "],\n",
        "\"WAL-Ranges\": [\n",
        "{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n",
        "],\n"
    )
    .to_string()
}

#[test]
fn parses_version_2_with_encoded_paths_and_checksums() {
    let m = BackupManifest::parse(&seal(&v2_body())).unwrap();
    assert_eq!(m.version, 2);
    assert_eq!(m.system_identifier, Some(7_311_234_567_890_123_456));
    assert_eq!(m.files.len(), 3);
    assert_eq!(m.files[0].path, b"backup_label");
    assert_eq!(m.files[0].size, 227);
    let c = m.files[0].checksum.as_ref().unwrap();
    assert_eq!(c.algorithm, ChecksumAlgorithm::Sha256);
    assert_eq!(c.value.len(), 32);
    // Encoded-Path: non-UTF-8 bytes survive; mixed-case hex decodes as PostgreSQL does.
    assert_eq!(m.files[1].path, b"base/1/fo\xff");
    assert_eq!(m.files[1].display_path(), "base/1/fo\u{fffd}");
    let c = m.files[1].checksum.as_ref().unwrap();
    assert_eq!(
        (c.algorithm, c.value.clone()),
        (ChecksumAlgorithm::Crc32c, vec![0x1a, 0x2b, 0x3c, 0x4d])
    );
    assert_eq!(m.files[2].checksum, None);
    assert_eq!(
        m.files[2].last_modified.as_deref(),
        Some("2026-12-03 14:00:00 GMT")
    );
    assert_eq!(
        m.wal_ranges,
        [
            WalRange {
                tli: 2,
                start: "0/3000148".parse().unwrap(),
                end: "0/5000100".parse().unwrap()
            },
            WalRange {
                tli: 1,
                start: "0/2000028".parse().unwrap(),
                end: "0/3000148".parse().unwrap()
            },
        ]
    );
    assert_eq!(m.total_size(), 227 + 8192 + 8192);
    let by = m.files_by_path();
    assert_eq!(by[b"global/pg_control".as_slice()].size, 8192);
    assert_eq!(m.manifest_checksum.len(), 64);
}

#[test]
fn parses_version_1_and_checksum_none() {
    let m = BackupManifest::parse(&seal(&v1_body())).unwrap();
    assert_eq!((m.version, m.system_identifier), (1, None));
    assert_eq!(m.files[0].checksum, None);
    assert_eq!(m.wal_ranges.len(), 1);
}

#[test]
fn checksum_covers_everything_before_the_last_line() {
    let good = seal(&v2_body());
    assert_eq!(checksummed_part(&good).unwrap(), v2_body().as_bytes());
    // Any byte changed before the last line: mismatch, both sums shown.
    let mut bad = good.clone();
    let at = bad.iter().position(|b| *b == b'2').unwrap(); // the version digit
    bad[at] = b'1';
    let e = BackupManifest::parse(&bad).unwrap_err();
    assert!(matches!(e, ManifestError::ChecksumMismatch { .. }), "{e}");
    assert!(e.to_string().contains("take a new base backup"), "{e}");
    let mut bad = good.clone();
    let at = bad.windows(3).position(|w| w == b"227").unwrap();
    bad[at] = b'3';
    assert!(matches!(
        BackupManifest::parse(&bad),
        Err(ManifestError::ChecksumMismatch { .. })
    ));
    // An upper-case recorded checksum is accepted (hexdecode_string takes both cases).
    let s = String::from_utf8(good.clone()).unwrap();
    let (head, tail) = s.split_at(s.rfind("\"Manifest-Checksum\"").unwrap());
    let upper = format!(
        "{head}{}",
        tail.replace(
            |c: char| c.is_ascii_lowercase() && c.is_ascii_hexdigit(),
            "X"
        )
    );
    // (sanity: replacing hex letters by X makes it invalid, not mismatched)
    let e = BackupManifest::parse(upper.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid Manifest-Checksum") || e.contains("not a valid"),
        "{e}"
    );
    let upper = format!(
        "{head}{}",
        tail.to_ascii_uppercase()
            .replace("\"MANIFEST-CHECKSUM\"", "\"Manifest-Checksum\"")
    );
    assert!(BackupManifest::parse(upper.as_bytes()).is_ok());
}

#[test]
fn refuses_broken_framing() {
    let good = seal(&v2_body());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 1].to_vec(), "newline-terminated"),
        (b"{}\n".to_vec(), "at least 2 lines"),
        (Vec::new(), "newline-terminated"),
        // The checksum line is not last.
        (
            [good.clone(), b"\n".to_vec()].concat(),
            "not the \"Manifest-Checksum\" line",
        ),
        (
            good[..good.len() / 2]
                .iter()
                .copied()
                .chain(*b"\n\"Manifest-Checksum\": \"00\"}\n")
                .collect(),
            "not a valid",
        ),
    ];
    for (bytes, why) in cases {
        let e = BackupManifest::parse(&bytes).unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}

fn refused(body: &str, why: &str) {
    let e = BackupManifest::parse(&seal(body)).unwrap_err().to_string();
    assert!(e.contains(why), "{why}: {e}");
    assert!(e.contains("backup_manifest"), "{e}");
}

#[test]
fn refuses_hostile_content() {
    let v2 = v2_body();
    refused(&v2.replacen("\"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7311234567890123456,", "\"System-Identifier\": 7311234567890123456, \"PostgreSQL-Backup-Manifest-Version\": 2,", 1), "first field");
    refused(
        &v2.replacen("Version\": 2", "Version\": 3", 1),
        "unexpected manifest version 3",
    );
    refused(
        &v2.replacen("Version\": 2", "Version\": \"2\"", 1),
        "not a valid",
    );
    refused(
        &v2.replacen("\"System-Identifier\": 7311234567890123456,\n", "", 1),
        "lacks its System-Identifier",
    );
    refused(
        &v2.replacen("Version\": 2", "Version\": 1", 1),
        "version 1 has no System-Identifier",
    );
    refused(
        &v2.replacen("7311234567890123456", "99999999999999999999", 1),
        "not a valid",
    );
    refused(
        &v2.replacen("\"Size\": 227", "\"Size\": -1", 1),
        "not a valid",
    );
    refused(&v2.replacen("\"Size\": 227, ", "", 1), "Size");
    refused(
        &v2.replacen(
            "\"Path\": \"backup_label\"",
            "\"Path\": \"backup_label\", \"Encoded-Path\": \"41\"",
            1,
        ),
        "both Path and Encoded-Path",
    );
    refused(
        &v2.replacen("\"Path\": \"backup_label\", ", "", 1),
        "no Path",
    );
    refused(
        &v2.replacen("\"Path\": \"backup_label\"", "\"Path\": \"\"", 1),
        "empty path",
    );
    for evil in [
        "/etc/passwd",
        "../x",
        "base/../../x",
        "base//x",
        "./x",
        "base/",
        "a\\u0000b",
    ] {
        let body = v2.replacen(
            "\"Path\": \"backup_label\"",
            &format!("\"Path\": \"{evil}\""),
            1,
        );
        refused(&body, "not a plain path");
    }
    // 2e2e2f78 = "../x", hidden in an Encoded-Path.
    refused(
        &v2.replacen("626173652f312f666fff", "2e2e2f78", 1),
        "not a plain path",
    );
    refused(
        &v2.replacen("626173652f312f666fff", "626173652f312f666ff", 1),
        "could not decode Encoded-Path",
    );
    refused(
        &v2.replacen("626173652f312f666fff", "zz", 1),
        "could not decode Encoded-Path",
    );
    refused(
        &v2.replacen("\"SHA256\"", "\"MD5\"", 1),
        "unrecognized checksum algorithm \"MD5\"",
    );
    refused(
        &v2.replacen("\"1A2b3C4d\"", "\"1A2b3C\"", 1),
        "invalid CRC32C checksum",
    );
    refused(
        &v2.replacen("\"1A2b3C4d\"", "\"1A2b3C4g\"", 1),
        "invalid CRC32C checksum",
    );
    refused(
        &v2.replacen("\"Checksum-Algorithm\": \"CRC32C\", ", "", 1),
        "checksum without algorithm",
    );
    refused(
        &v2.replacen(", \"Checksum\": \"1A2b3C4d\"", "", 1),
        "has no Checksum",
    );
    refused(
        &v2.replacen("\"Size\": 227", "\"Size\": 227, \"Mode\": 384", 1),
        "unknown field",
    );
    refused(
        &v2.replacen("\"Files\"", "\"Extra\": 1, \"Files\"", 1),
        "unknown field",
    );
    refused(
        &v2.replacen("backup_label", "global/pg_control", 1),
        "listed twice",
    );
    refused(
        &v2.replacen("\"Timeline\": 2", "\"Timeline\": 0", 1),
        "timeline 0",
    );
    refused(
        &v2.replacen(
            "\"Start-LSN\": \"0/3000148\"",
            "\"Start-LSN\": \"0/6000000\"",
            1,
        ),
        "ends at 0/5000100 before it starts at 0/6000000",
    );
    refused(
        &v2.replacen(
            "\"Start-LSN\": \"0/3000148\"",
            "\"Start-LSN\": \"0/30001480000\"",
            1,
        ),
        "not a WAL position",
    );
    refused(&v2.replacen("\"Timeline\": 2, ", "", 1), "Timeline");
    refused(
        &v2.replacen("\"Timeline\": 2", "\"Timeline\": 2, \"Timeline\": 3", 1),
        "duplicate field",
    );
    // A checksum of the wrong length.
    let s = String::from_utf8(seal(&v1_body())).unwrap();
    let short = format!("{}\"}}\n", &s[..s.len() - 10]);
    let e = BackupManifest::parse(short.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid Manifest-Checksum"), "{e}");
}
