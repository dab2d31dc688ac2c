//! Archives built byte by byte as pg_dump writes them (int size 4, offset size 8).

use super::*;

fn int(out: &mut Vec<u8>, v: i64) {
    out.push(u8::from(v < 0));
    out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
}

fn str(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => {
            int(out, s.len() as i64);
            out.extend_from_slice(s);
        }
        None => int(out, -1),
    }
}

struct Entry<'a> {
    id: i64,
    desc: &'a str,
    ns: &'a [u8],
    tag: &'a [u8],
    defn: &'a str,
    copy: &'a str,
}

fn table(id: i64, ns: &'static str, tag: &'static str) -> Entry<'static> {
    Entry {
        id,
        desc: "TABLE DATA",
        ns: ns.as_bytes(),
        tag: tag.as_bytes(),
        defn: "",
        copy: "COPY t (a) FROM stdin;\n",
    }
}

/// Header and TOC of archive version 1.`min`, compression `compression`.
fn head(min: u8, compression: u8, entries: &[Entry]) -> Vec<u8> {
    let mut o = b"PGDMP".to_vec();
    o.extend_from_slice(&[1, min, 0, 4, 8, 1]);
    if min >= 15 {
        o.push(compression);
    } else {
        int(&mut o, i64::from(compression));
    }
    for v in [1, 2, 3, 4, 5, 125, 0] {
        int(&mut o, v);
    }
    for s in ["appdb", "15.4", "15.4"] {
        str(&mut o, Some(s.as_bytes()));
    }
    int(&mut o, entries.len() as i64);
    for e in entries {
        int(&mut o, e.id);
        int(
            &mut o,
            i64::from(e.desc == "TABLE DATA" || e.desc == "BLOBS"),
        );
        str(&mut o, Some(b"1259"));
        str(&mut o, Some(b"16384"));
        str(&mut o, Some(e.tag));
        str(&mut o, Some(e.desc.as_bytes()));
        int(&mut o, 3);
        str(&mut o, Some(e.defn.as_bytes()));
        str(&mut o, Some(b""));
        str(&mut o, Some(e.copy.as_bytes()));
        str(&mut o, Some(e.ns));
        str(&mut o, Some(b""));
        if min >= 14 {
            str(&mut o, Some(b"heap"));
        }
        if min >= 16 {
            int(&mut o, i64::from(b'r'));
        }
        str(&mut o, Some(b"postgres"));
        str(&mut o, Some(b"false"));
        str(&mut o, Some(b"216"));
        str(&mut o, None);
        o.push(1);
        o.extend_from_slice(&[0; 8]);
    }
    o
}

/// A table data block with the given chunks.
fn block(o: &mut Vec<u8>, id: i64, chunks: &[&[u8]]) {
    o.push(1);
    int(o, id);
    for c in chunks {
        int(o, c.len() as i64);
        o.extend_from_slice(c);
    }
    int(o, 0);
}

fn blobs(o: &mut Vec<u8>, id: i64, objects: &[(i64, &[u8])]) {
    o.push(3);
    int(o, id);
    for (oid, data) in objects {
        int(o, *oid);
        if !data.is_empty() {
            int(o, data.len() as i64);
            o.extend_from_slice(data);
        }
        int(o, 0);
    }
    int(o, 0);
}

const END: &[u8] = b"\\.\n\n\n";

fn sample(min: u8) -> Vec<u8> {
    let enc = Entry {
        id: 1,
        desc: "ENCODING",
        ns: b"",
        tag: b"ENCODING",
        defn: "SET client_encoding = 'UTF8';\n",
        copy: "",
    };
    let blob_entry = Entry {
        id: 9,
        desc: "BLOBS",
        ns: b"",
        tag: b"BLOBS",
        defn: "",
        copy: "",
    };
    let mut o = head(
        min,
        0,
        &[
            enc,
            table(3, "app", "t"),
            table(4, "public", "Empty Table"),
            table(5, "public", "nocols"),
            table(6, "public", "dots"),
            blob_entry,
        ],
    );
    block(&mut o, 3, &[b"1\tx\n", b"2\ta\\nb\n", b"3\t\\\\\n", END]);
    block(&mut o, 4, &[END]);
    block(&mut o, 5, &[b"\n", b"\n", END]);
    // A value that is `\.`, and one ending in a backslash and a dot, then two empty strings.
    block(&mut o, 6, &[b"\\\\.\n", b"x\\\\.\n", b"\n", b"\n", END]);
    blobs(&mut o, 9, &[(16395, b"hello\n\n"), (16396, b"")]);
    o
}

fn rows(r: &ArchiveRows) -> Vec<(String, String, i64)> {
    r.tables
        .iter()
        .map(|t| {
            (
                String::from_utf8_lossy(&t.schema).into_owned(),
                String::from_utf8_lossy(&t.name).into_owned(),
                t.rows,
            )
        })
        .collect()
}

fn expected() -> Vec<(String, String, i64)> {
    [
        ("app", "t", 3),
        ("public", "Empty Table", 0),
        ("public", "nocols", 2),
        ("public", "dots", 4),
    ]
    .iter()
    .map(|(a, b, n)| (a.to_string(), b.to_string(), *n))
    .collect()
}

fn count_in_pieces(bytes: &[u8], piece: usize) -> Result<ArchiveRows, ArchiveError> {
    let mut c = RowCounter::new();
    for p in bytes.chunks(piece) {
        c.feed(p);
    }
    c.finish()
}

#[test]
fn counts_rows_of_every_version_in_any_piece_size() {
    for min in [12, 13, 14, 15, 16] {
        let a = sample(min);
        for piece in [1, 2, 3, 7, 64, 100_000, 1 << 20] {
            let r = count_in_pieces(&a, piece).unwrap();
            assert_eq!(rows(&r), expected(), "1.{min}, pieces of {piece}");
            assert_eq!(r.encoding.as_deref(), Some("UTF8"));
        }
    }
}

#[test]
fn a_large_toc_is_parsed_once_it_is_complete() {
    let entries: Vec<Entry> = (0..20_000).map(|i| table(100 + i, "s", "t")).collect();
    let mut a = head(14, 0, &entries);
    for i in 0..20_000 {
        block(&mut a, 100 + i, &[b"1\n", END]);
    }
    assert!(a.len() > 1 << 20);
    let r = count_in_pieces(&a, 65536).unwrap();
    assert_eq!(r.tables.len(), 20_000);
    assert!(r.tables.iter().all(|t| t.rows == 1));
}

#[test]
fn data_without_the_end_marker_counts_its_lines() {
    let mut a = head(
        14,
        0,
        &[table(3, "s", "a"), table(4, "s", "b"), table(5, "s", "c")],
    );
    block(&mut a, 3, &[b"1\n2\n"]);
    block(&mut a, 4, &[]);
    // A last line without its newline: not counted (left to SQL), the others still are.
    block(&mut a, 5, &[b"1\n2"]);
    let r = count_in_pieces(&a, 3).unwrap();
    assert_eq!(
        rows(&r),
        [("s".into(), "a".into(), 2), ("s".into(), "b".into(), 0)]
    );
}

#[test]
fn entries_that_are_not_copy_data_are_not_counted() {
    let mut inserts = table(3, "s", "ins");
    inserts.copy = ""; // --inserts
    let mut a = head(14, 0, &[inserts, table(4, "s", "c")]);
    block(&mut a, 3, &[b"INSERT INTO s.ins VALUES (1);\n"]);
    block(&mut a, 4, &[b"1\n", END]);
    let r = count_in_pieces(&a, 5).unwrap();
    assert_eq!(rows(&r), [("s".into(), "c".into(), 1)]);
    assert_eq!(r.encoding, None);
}

#[test]
fn what_it_cannot_read_is_an_error_never_a_count() {
    // Compressed data (--compress=5; 1.15 names gzip as 1).
    assert_eq!(
        count_in_pieces(&head(14, 5, &[]), 7).unwrap_err(),
        ArchiveError::Compressed
    );
    assert_eq!(
        count_in_pieces(&head(15, 1, &[]), 7).unwrap_err(),
        ArchiveError::Compressed
    );
    // A version not known.
    assert_eq!(
        count_in_pieces(&head(17, 0, &[]), 7).unwrap_err(),
        ArchiveError::Version(1, 17, 0)
    );
    // Plain SQL, a directory TOC.
    assert!(matches!(
        count_in_pieces(b"--\n-- PostgreSQL database dump\n", 7),
        Err(ArchiveError::NotCustom(_) | ArchiveError::Truncated(_))
    ));
    let mut dir = head(14, 0, &[]);
    dir[10] = 5;
    assert!(matches!(
        count_in_pieces(&dir, 7),
        Err(ArchiveError::NotCustom(_))
    ));
    // Cut anywhere inside: truncated (a cut between blocks is a shorter, valid archive).
    let a = sample(14);
    let toc_end = head(14, 0, &[]).len();
    for cut in [3, 20, toc_end + 40, a.len() - 1, a.len() - 3] {
        assert!(
            count_in_pieces(&a[..cut], 4).is_err(),
            "cut at {cut} of {}",
            a.len()
        );
    }
    // A bad block type.
    let mut bad = head(14, 0, &[table(3, "s", "t")]);
    bad.push(7);
    assert!(matches!(
        count_in_pieces(&bad, 3),
        Err(ArchiveError::Malformed { .. })
    ));
    // A second data block for one table.
    let mut twice = head(14, 0, &[table(3, "s", "t")]);
    block(&mut twice, 3, &[END]);
    block(&mut twice, 3, &[END]);
    assert!(matches!(
        count_in_pieces(&twice, 3),
        Err(ArchiveError::Malformed { .. })
    ));
}

#[test]
fn newlines_are_counted_exactly() {
    let mut b = vec![b'x'; 100_000];
    for i in (0..b.len()).step_by(7) {
        b[i] = b'\n';
    }
    assert_eq!(
        count_newlines(&b),
        b.iter().filter(|&&c| c == b'\n').count() as u64
    );
    assert_eq!(count_newlines(&[b'\n'; 1000]), 1000);
    assert_eq!(count_newlines(b""), 0);
}

/// Throughput of the counter on narrow rows (one chunk per row, as pg_dump writes them) and on
/// wide ones, in CPU time: `cargo test --release -p pgbackman-core archive_speed -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn archive_speed() {
    for (rows, row) in [
        (
            3_000_000,
            &b"123456\t2026-01-01 00:00:00+00\tsome text here\n"[..],
        ),
        (300_000, &[&[b'x'; 999][..], b"\n"].concat()[..]),
    ] {
        let mut a = head(14, 0, &[table(3, "s", "t")]);
        a.push(1);
        int(&mut a, 3);
        for _ in 0..rows {
            int(&mut a, row.len() as i64);
            a.extend_from_slice(row);
        }
        int(&mut a, END.len() as i64);
        a.extend_from_slice(END);
        int(&mut a, 0);
        // CPU time of this thread (schedstat: ns on a CPU), not wall: the machine may be busy.
        let cpu = || -> f64 {
            let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
        };
        let t = cpu();
        let r = count_in_pieces(&a, 256 << 10).unwrap();
        let s = cpu() - t;
        assert_eq!(r.tables[0].rows, rows as i64);
        eprintln!(
            "{rows} chunks of {} bytes: {:.1} ms, {:.1} ns per chunk, {:.2} GB/s",
            row.len(),
            s * 1e3,
            s * 1e9 / rows as f64,
            a.len() as f64 / s / 1e9
        );
    }
}
