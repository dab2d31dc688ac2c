//! Exact row counts read from the dump's own stream (run::rows) against `count(*)` in the
//! database, on data chosen to break a line counter: newlines, backslashes and `\.` inside
//! values, empty lines as rows, tables without columns, large objects, partitions,
//! inheritance, names in other encodings, and dumps the stream cannot be read from.

use std::collections::BTreeMap;
use std::fs;

use pgbackman_core::model::BackupCode;
use pgbackman_dump::{BackupOutcome, BackupSpec, RowCountSource};
use pgbackman_testkit::TestCluster;

mod common;
use common::backup_ok;

/// `schema.table` (quoted like quote_ident) → `count(*)` of every table a backup counts.
fn counted_by_sql(pg: &TestCluster, db: &str) -> BTreeMap<String, i64> {
    let out = pg.psql(
        db,
        "SET client_encoding = 'UTF8';
         SELECT k || '=' || (xpath('/row/c/text()', query_to_xml(
                    format('SELECT count(*) AS c FROM ONLY %s', k), false, true, '')))[1]::text
           FROM (SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS k
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r' AND c.relpersistence <> 't'
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname !~ '^pg_toast') s",
    );
    out.lines()
        .map(|l| {
            let (k, n) = l.rsplit_once('=').unwrap();
            (k.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// The set's log line that says where the counts came from.
fn counts_line(o: &BackupOutcome) -> String {
    let log = fs::read_to_string(o.backup_dir.as_ref().unwrap().join("backup.log")).unwrap();
    log.lines()
        .filter_map(|l| l.split_once(' ').map(|(_, t)| t))
        .filter(|l| l.starts_with("row counts:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_exact(o: &BackupOutcome, pg: &TestCluster, db: &str) {
    let counts = o.table_row_counts.as_ref().expect("row counts");
    assert_eq!(counts.source, RowCountSource::Snapshot);
    assert_eq!(counts.tables, counted_by_sql(pg, db));
}

fn spec(pg: &TestCluster, root: &std::path::Path, job: i64, db: &str) -> BackupSpec {
    common::spec(pg, root, job, BackupCode::Full, db)
}

const HOSTILE: &str = r#"
    CREATE SCHEMA app;
    CREATE TABLE app.t (id int, v text, j jsonb);
    INSERT INTO app.t VALUES
        (1, E'line one\nline two\r\nthree', '{"a": "x\ny"}'),
        (2, E'tab\there, backslash \\ and \\.', NULL),
        (3, NULL, '[]'), (4, '', '{}'), (5, E'\\.', NULL), (6, E'\n\n\n', NULL);
    -- One text column: rows that are the empty line, `\.` and ending in `\.`.
    CREATE TABLE public.dots (v text);
    INSERT INTO public.dots VALUES (''), (E'\\.'), (E'x\\.'), (''), ('');
    CREATE TABLE public.nocols ();
    INSERT INTO public.nocols DEFAULT VALUES; INSERT INTO public.nocols DEFAULT VALUES;
    INSERT INTO public.nocols DEFAULT VALUES;
    CREATE TABLE public."Empty Table" (x int);
    CREATE TABLE public.big AS
        SELECT g AS id, repeat(md5(g::text), 20) || E'\n' || g AS v FROM generate_series(1, 60000) g;
    CREATE UNLOGGED TABLE public.unlogged AS SELECT g FROM generate_series(1, 17) g;
    CREATE TABLE public.parted (k int, v text) PARTITION BY RANGE (k);
    CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (100);
    CREATE TABLE public.parted_2 PARTITION OF public.parted FOR VALUES FROM (100) TO (200);
    CREATE TABLE public.parted_d PARTITION OF public.parted DEFAULT;
    INSERT INTO public.parted SELECT g, g::text FROM generate_series(0, 250) g;
    CREATE TABLE public.parent (x int);
    CREATE TABLE public.child (y int) INHERITS (public.parent);
    INSERT INTO public.parent VALUES (1), (2);
    INSERT INTO public.child VALUES (3, 3), (4, 4), (5, 5);
    CREATE SCHEMA "søk";
    CREATE TABLE "søk"."tåble ""q""" (x text);
    INSERT INTO "søk"."tåble ""q""" VALUES ('æ'), ('ø');
    CREATE TABLE public.skipped AS SELECT g FROM generate_series(1, 9) g;
    SELECT lo_from_bytea(0, convert_to(E'large\nobject\n\\.\n\n\n', 'UTF8'));
    SELECT lo_from_bytea(0, ''::bytea);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_from_the_stream_equal_count_star_on_hostile_data() {
    let pg = TestCluster::start();
    pg.create_database("rows");
    pg.psql("rows", HOSTILE);
    let root = tempfile::tempdir().unwrap();

    // FULL: every table from the stream but the one whose data pg_dump leaves out.
    let mut s = spec(&pg, root.path(), 1, "rows");
    s.extra_args = vec!["--exclude-table-data=public.skipped".into()];
    let o = backup_ok(&s).await;
    assert_exact(&o, &pg, "rows");
    let n = counted_by_sql(&pg, "rows").len();
    assert_eq!(
        counts_line(&o),
        format!(
            "row counts: {} tables read from the dump stream, 1 counted with SQL in its snapshot",
            n - 1
        )
    );
    assert!(o.phase_timings.iter().any(|(p, _)| p == "row_counts"));

    // DATA only, nothing left out: no SQL count at all.
    let mut s = common::spec(&pg, root.path(), 2, BackupCode::Data, "rows");
    s.final_dir = root.path().join("sets/job2");
    let o = backup_ok(&s).await;
    assert_exact(&o, &pg, "rows");
    assert!(
        counts_line(&o).contains(&format!("{n} tables read from the dump stream, 0 counted")),
        "{}",
        counts_line(&o)
    );
    assert!(!o.phase_timings.iter().any(|(p, _)| p == "row_counts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumps_the_stream_cannot_count_are_counted_with_sql() {
    let pg = TestCluster::start();
    pg.create_database("rows");
    pg.psql("rows", HOSTILE);
    let root = tempfile::tempdir().unwrap();
    let n = counted_by_sql(&pg, "rows").len();

    // INSERT statements instead of COPY.
    let mut s = spec(&pg, root.path(), 11, "rows");
    s.extra_args = vec!["--inserts".into()];
    let o = backup_ok(&s).await;
    assert_exact(&o, &pg, "rows");
    assert!(
        counts_line(&o).contains(&format!("0 tables read from the dump stream, {n} counted")),
        "{}",
        counts_line(&o)
    );

    // Compressed data: the stream says so, and every table is counted with SQL.
    let mut s = spec(&pg, root.path(), 12, "rows");
    s.extra_args = vec!["--compress=5".into()];
    let o = backup_ok(&s).await;
    assert_exact(&o, &pg, "rows");
    let line = counts_line(&o);
    assert!(line.contains("not read from the dump stream"), "{line}");
    assert!(line.contains("compressed"), "{line}");
    assert!(line.contains(&format!("{n} counted with SQL")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_in_another_encoding_are_never_mistaken_for_each_other() {
    let pg = TestCluster::start();
    pg.psql(
        "postgres",
        "CREATE DATABASE l1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    );
    // "ø" is F8 in LATIN1; "Ã¸" is C3 B8, the very bytes of "ø" in UTF-8.
    pg.psql(
        "l1",
        r#"CREATE TABLE public.U&"\00F8" AS SELECT g FROM generate_series(1, 3) g;
           CREATE TABLE public.U&"\00C3\00B8" AS SELECT g FROM generate_series(1, 5) g;
           CREATE TABLE public.ascii AS SELECT g FROM generate_series(1, 7) g;"#,
    );
    let root = tempfile::tempdir().unwrap();
    // Dumped in UTF8 (as the node's defaults give here), the names compare as they are.
    let mut s = spec(&pg, root.path(), 21, "l1");
    s.extra_args = vec!["--encoding=UTF8".into()];
    let o = backup_ok(&s).await;
    assert_exact(&o, &pg, "l1");
    assert!(
        counts_line(&o).contains("3 tables read from the dump stream, 0 counted"),
        "{}",
        counts_line(&o)
    );
    // Dumped in LATIN1, the TOC's bytes of "Ã¸" are those of "ø" in UTF-8: only the ASCII
    // name is taken from the stream.
    let mut s = spec(&pg, root.path(), 22, "l1");
    s.extra_args = vec!["--encoding=LATIN1".into()];
    let o = backup_ok(&s).await;
    assert_exact(&o, &pg, "l1");
    let t = &o.table_row_counts.as_ref().unwrap().tables;
    assert_eq!(t.get("public.\"ø\""), Some(&3), "{t:?}");
    assert_eq!(t.get("public.\"Ã¸\""), Some(&5), "{t:?}");
    assert_eq!(
        counts_line(&o),
        "row counts: 1 tables read from the dump stream, 2 counted with SQL in its snapshot"
    );
}
