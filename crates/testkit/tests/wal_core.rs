//! `pgbackman_core::wal` against a real PostgreSQL cluster: the header check on every completed
//! segment in pg_wal, the LSN ↔ file name rules against `pg_walfile_name_offset`, and the
//! manifest of a `pg_basebackup -D - -Ft -X none --manifest-checksums=SHA256` stream.
//!
//! Lives here rather than in crates/core so that core keeps no dev-dependency on a cluster.

use std::fs;
use std::process::Command;

use pgbackman_core::wal::manifest::ChecksumAlgorithm;
use pgbackman_core::wal::{
    BackupManifest, HeaderProblem, HeaderVerdict, Lsn, SegmentExpectation, SegmentSize,
    WalFileKind, WalFileName, check_segment_header,
};
use pgbackman_testkit::TestCluster;
use sha2::{Digest, Sha256};

struct Node {
    pg: TestCluster,
    sysid: u64,
    major: u32,
    size: SegmentSize,
    tli: u32,
}

fn node() -> Node {
    let pg = TestCluster::start();
    let q = |sql: &str| pg.psql("postgres", sql);
    let sysid = q("select system_identifier from pg_control_system()")
        .parse()
        .unwrap();
    let major = q("show server_version_num").parse::<u32>().unwrap() / 10000;
    let size = SegmentSize::new(
        q("select setting::bigint from pg_settings where name = 'wal_segment_size'")
            .parse()
            .unwrap(),
    )
    .unwrap();
    let tli = q("select timeline_id from pg_control_checkpoint()")
        .parse()
        .unwrap();
    Node {
        pg,
        sysid,
        major,
        size,
        tli,
    }
}

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

#[test]
fn every_completed_segment_passes_the_header_check() {
    let n = node();
    let q = |sql: &str| n.pg.psql("postgres", sql);
    q("create table t(i int)");
    // Each round writes, notes where it is, and closes the segment.
    for round in 0..3 {
        q(&format!(
            "insert into t select generate_series(1, 1000 * {})",
            round + 1
        ));
        // The insert position: past the new rows, never on a segment boundary (the write
        // position can sit on one with synchronous_commit off).
        let at = q("select pg_current_wal_insert_lsn()");
        let (file, offset) = q(&format!(
            "select file_name || ' ' || file_offset from pg_walfile_name_offset('{at}')"
        ))
        .split_once(' ')
        .map(|(f, o)| (f.to_string(), o.parse::<u32>().unwrap()))
        .unwrap();
        // Our name and offset for the LSN are PostgreSQL's.
        let l = lsn(&at);
        assert_ne!(offset, 0, "{at} is on a boundary, see below");
        assert_eq!(
            WalFileName::segment(n.tli, n.size.segment_of(l), n.size).to_string(),
            file
        );
        assert_eq!(n.size.offset_in_segment(l), offset);
        q("select pg_switch_wal()");
    }
    // A segment boundary: we count it at face value (XLByteToSeg: 0/3000000 is the first byte
    // of segment 3). PostgreSQL 15's pg_walfile_name_offset names the previous file with
    // offset 0 there (its name uses XLByteToPrevSeg, its offset does not): observed here, so
    // boundaries are left out of the comparison above.
    let boundary = n.size.segment_start(3).unwrap();
    assert_eq!(n.size.segment_of(boundary), 3);
    assert_eq!(n.size.offset_in_segment(boundary), 0);
    if n.major <= 16 {
        assert_eq!(
            q(&format!(
                "select file_name || ' ' || file_offset from pg_walfile_name_offset('{boundary}')"
            )),
            format!("{} 0", WalFileName::segment(n.tli, 2, n.size))
        );
    }

    let current = n.size.segment_of(lsn(&q("select pg_current_wal_lsn()")));
    let expect = SegmentExpectation {
        node: "walcore-node",
        major: n.major,
        system_identifier: n.sysid,
        seg_size: n.size,
    };
    let wal_dir = n.pg.data_dir().join("pg_wal");
    let mut checked = Vec::new();
    for entry in fs::read_dir(&wal_dir).unwrap() {
        let entry = entry.unwrap();
        let fname = entry.file_name().into_string().unwrap();
        let Ok(name) = WalFileName::parse(&fname, n.size) else {
            continue; // archive_status/, temporary files
        };
        let WalFileKind::Segment { segno } = name.kind else {
            continue;
        };
        // Later names are preallocated or recycled files: not WAL of their name yet.
        if segno >= current {
            continue;
        }
        let bytes = fs::read(entry.path()).unwrap();
        assert_eq!(bytes.len(), n.size.bytes() as usize, "{fname}");
        let verdict = check_segment_header(&name, &bytes, &expect);
        let HeaderVerdict::Valid(h) = verdict else {
            panic!("{fname}: {verdict:?}");
        };
        assert_eq!(h.sysid, n.sysid);
        assert_eq!(h.pageaddr, n.size.segment_start(segno).unwrap());
        checked.push((segno, bytes));
    }
    assert!(
        checked.len() >= 3,
        "only {} completed segments in {}",
        checked.len(),
        wal_dir.display()
    );

    // The same bytes fail as another node's, and under another segment's name.
    let (segno, bytes) = checked.iter().max_by_key(|(s, _)| *s).unwrap();
    let other = SegmentExpectation {
        system_identifier: n.sysid ^ 1,
        ..expect.clone()
    };
    let name = WalFileName::segment(n.tli, *segno, n.size);
    match check_segment_header(&name, bytes, &other) {
        HeaderVerdict::Invalid(p @ HeaderProblem::WrongSystem { .. }) => {
            let m = p.to_string();
            assert!(
                m.contains(&format!("belongs to system {}", n.sysid)) && m.contains("walcore-node"),
                "{m}"
            );
        }
        v => panic!("{v:?}"),
    }
    let renamed = WalFileName::segment(n.tli, segno + 1, n.size);
    assert!(matches!(
        check_segment_header(&renamed, bytes, &expect),
        HeaderVerdict::Invalid(HeaderProblem::WrongAddress { .. })
    ));
    let older = SegmentExpectation {
        major: n.major - 1,
        ..expect
    };
    assert!(matches!(
        check_segment_header(&name, bytes, &older),
        HeaderVerdict::Invalid(HeaderProblem::WrongMagic { .. })
    ));
}

/// Regular files of a ustar stream as (path, content). pg_basebackup writes plain ustar
/// (src/port/tar.c); sizes are octal, or base-256 past 8 GiB.
fn tar_files(stream: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= stream.len() {
        let h = &stream[at..at + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            String::from_utf8_lossy(&f[..f.iter().position(|b| *b == 0).unwrap_or(f.len())])
                .into_owned()
        };
        let size = if h[124] & 0x80 != 0 {
            h[125..136]
                .iter()
                .fold(0u64, |a, b| (a << 8) | u64::from(*b))
        } else {
            u64::from_str_radix(field(124..136).trim(), 8).unwrap()
        } as usize;
        let (prefix, name) = (field(345..500), field(0..100));
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let data = at + 512;
        if h[156] == b'0' || h[156] == 0 {
            out.push((path, stream[data..data + size].to_vec()));
        }
        at = data + size.div_ceil(512) * 512;
    }
    out
}

#[test]
fn a_pg_basebackup_stream_manifest_parses_and_verifies() {
    let n = node();
    let bin = n.pg.cluster().bin_dir().unwrap();
    let out = Command::new(bin.join("pg_basebackup"))
        .args([
            "-D",
            "-",
            "-Ft",
            "-X",
            "none",
            "--manifest-checksums=SHA256",
            "-c",
            "fast",
            "-d",
        ])
        .arg(n.pg.conninfo("postgres"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = tar_files(&out.stdout);
    let (last, manifest_bytes) = files.last().unwrap();
    assert_eq!(
        last, "backup_manifest",
        "the manifest comes last in the stream"
    );

    let m = BackupManifest::parse(manifest_bytes).unwrap();
    assert_eq!(m.version, if n.major >= 17 { 2 } else { 1 });
    if n.major >= 17 {
        assert_eq!(m.system_identifier, Some(n.sysid));
    }
    // Every file of the tar is in the manifest with its size and SHA-256: a base backup can
    // be verified as it streams.
    let by_path = m.files_by_path();
    let mut seen = 0;
    for (path, data) in &files[..files.len() - 1] {
        let f = by_path
            .get(path.as_bytes())
            .unwrap_or_else(|| panic!("{path} not in the manifest"));
        assert_eq!(f.size, data.len() as u64, "{path}");
        let c = f.checksum.as_ref().unwrap();
        assert_eq!(c.algorithm, ChecksumAlgorithm::Sha256);
        assert_eq!(c.value, Sha256::digest(data).to_vec(), "{path}");
        seen += 1;
    }
    assert_eq!(
        seen,
        m.files.len(),
        "the manifest lists exactly the tar's files"
    );
    assert!(by_path.contains_key(b"backup_label".as_slice()));
    assert!(by_path.contains_key(b"global/pg_control".as_slice()));

    // WAL-Ranges agree with backup_label, and the segments they cover are in pg_wal once closed.
    assert_eq!(m.wal_ranges.len(), 1);
    let r = m.wal_ranges[0];
    assert_eq!(r.tli, n.tli);
    let label = String::from_utf8(
        files
            .iter()
            .find(|(p, _)| p == "backup_label")
            .unwrap()
            .1
            .clone(),
    )
    .unwrap();
    let start_line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION: "))
        .unwrap();
    let start = start_line["START WAL LOCATION: ".len()..]
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(lsn(start), r.start, "{label}");
    assert!(r.end >= r.start);
    n.pg.psql("postgres", "select pg_switch_wal()");
    let expect = SegmentExpectation {
        node: "walcore-node",
        major: n.major,
        system_identifier: n.sysid,
        seg_size: n.size,
    };
    let needed = n.size.covering(r.tli, r.start, r.end).unwrap();
    assert_eq!(*needed.segments.start(), n.size.segment_of(r.start));
    for name in needed.names() {
        let bytes = fs::read(n.pg.data_dir().join("pg_wal").join(name.to_string())).unwrap();
        assert!(
            check_segment_header(&name, &bytes, &expect).is_valid(),
            "{name}"
        );
    }

    // One byte changed before the checksum line: refused.
    let mut bad = manifest_bytes.clone();
    let at = bad.windows(6).position(|w| w == b"\"Size\"").unwrap() + 8;
    bad[at] = if bad[at] == b'1' { b'2' } else { b'1' };
    let e = BackupManifest::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
}

#[test]
fn a_promotion_history_file_and_the_new_timeline_segments() {
    let primary = TestCluster::start();
    let p = |sql: &str| primary.psql("postgres", sql);
    p("create table t(i int)");
    for _ in 0..2 {
        p("insert into t select generate_series(1, 1000)");
        p("select pg_switch_wal()");
    }
    let standby = pgbackman_testkit::Standby::of(&primary, &["127.0.0.1"]);
    p("insert into t select generate_series(1, 1000)");
    standby.wait_replayed(&primary);
    let s = |sql: &str| standby.psql("postgres", sql);
    assert_eq!(s("select pg_promote(true, 60)"), "t");
    s("insert into t select generate_series(1, 1000)");
    s("select pg_switch_wal()");
    s("insert into t select generate_series(1, 1000)");
    s("select pg_switch_wal()");
    // No CHECKPOINT here: it would remove the switch segment from pg_wal.
    assert!(s("select pg_walfile_name(pg_current_wal_lsn())").starts_with("00000002"));
    let size = SegmentSize::new(
        s("select setting::bigint from pg_settings where name = 'wal_segment_size'")
            .parse()
            .unwrap(),
    )
    .unwrap();

    // The history file PostgreSQL wrote at promotion.
    let wal = standby.data_dir().join("pg_wal");
    let content = fs::read(wal.join("00000002.history")).unwrap();
    let h = pgbackman_core::wal::TimelineHistory::parse(2, &content).unwrap();
    assert_eq!(h.target(), 2);
    let switch = h.switch_point(1).unwrap().unwrap();
    assert!(switch > lsn("0/3000000"), "{switch}");
    assert_eq!(h.timeline_of(switch.checked_sub(1).unwrap()), 1);
    assert_eq!(h.timeline_of(switch), 2);
    let names: Vec<String> = h
        .history_files(size)
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["00000002.history"]);

    // From the switch point's segment on, recovery reads timeline 2's files; they are in the
    // promoted node's pg_wal and pass the header check as timeline 2 (the first one starts
    // with pages copied from timeline 1: xlp_tli 1 in a file of timeline 2 is normal).
    let sysid: u64 = s("select system_identifier from pg_control_system()")
        .parse()
        .unwrap();
    let major = s("show server_version_num").parse::<u32>().unwrap() / 10000;
    let expect = SegmentExpectation {
        node: "promoted",
        major,
        system_identifier: sysid,
        seg_size: size,
    };
    let current = size.segment_of(lsn(&s("select pg_current_wal_lsn()")));
    let end = size.segment_start(current).unwrap().checked_sub(1).unwrap();
    let before = size.segment_start(size.segment_of(switch) - 1).unwrap();
    let ranges = h.segments_for(before, end, size).unwrap();
    assert_eq!(ranges.iter().map(|r| r.tli).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        ranges[0].len(),
        1,
        "only the segment before the switch is timeline 1's"
    );
    assert_eq!(*ranges[1].segments.start(), size.segment_of(switch));
    let mut first = true;
    for name in ranges[1].names() {
        let bytes = fs::read(wal.join(name.to_string()))
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", wal.display()));
        match check_segment_header(&name, &bytes, &expect) {
            HeaderVerdict::Valid(hdr) => {
                if first {
                    // Observed on PostgreSQL 15: the switch segment of timeline 2 begins
                    // with timeline 1's pages.
                    assert_eq!(hdr.tli, 1, "{name}: {hdr:?}");
                }
            }
            v => panic!("{name}: {v:?}"),
        }
        first = false;
    }
    assert!(ranges[1].len() >= 2, "{ranges:?}");
}
