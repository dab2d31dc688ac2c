//! The backup catalog at a million rows: every filter of show_backup_catalog must be served by an
//! index (no sequential scan of backup_catalog). Plans are asserted; times are only printed —
//! speed claims belong to bench/, not to tests.

use std::time::Instant;

use pgbackman_db::{Catalog, CatalogFilter, migrate};
use pgbackman_testkit::TestCluster;

const ROWS: i64 = 1_000_000;

#[tokio::test(flavor = "current_thread")]
async fn every_catalog_filter_uses_an_index_at_a_million_rows() {
    let pg = TestCluster::start();
    pg.psql("postgres", "create database pgbackman");
    let cfg: tokio_postgres::Config = pg.conninfo("pgbackman").parse().unwrap();
    let mut c = pgbackman_db::connect_once(&cfg, "test catalog")
        .await
        .unwrap();
    migrate::init(&mut c).await.unwrap();
    let t = Instant::now();
    c.batch_execute(&format!(
        "insert into backup_server (hostname, domain_name) select 'bs' || g, 'example.org' from generate_series(1, 5) g;
         insert into pgsql_node (hostname, domain_name) select 'pg' || g, 'example.org' from generate_series(1, 50) g;
         insert into backup_definition (backup_server_id, pgsql_node_id, dbname, backup_code)
              select 1 + g % 5, 1 + g % 50, 'db' || g, case when g % 10 = 0 then 'SCHEMA' else 'FULL' end
                from generate_series(1, 2000) g;
         insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                     execution_status, execution_method, total_size)
              select d.def_id, d.backup_server_id, d.pgsql_node_id, d.dbname, d.backup_code,
                     ts - interval '5 minutes', ts,
                     case when g % 50 = 0 then 'ERROR' else 'SUCCEEDED' end, 'CRON', g
                from generate_series(1, {ROWS}) g
                join backup_definition d on d.def_id = 1 + g % 2000
                cross join lateral (select timestamptz '2026-01-01' + g * interval '30 seconds' as ts) x;
         analyze;"
    ))
    .await
    .unwrap();
    eprintln!("loaded {ROWS} catalog rows in {:?}", t.elapsed());

    let cat = Catalog::connect(cfg, "pgbackman-test", "test catalog")
        .await
        .unwrap();
    let base = CatalogFilter {
        limit: 1000,
        ..CatalogFilter::default()
    };
    let some = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let cases: Vec<(&str, CatalogFilter)> = vec![
        ("no filter", base.clone()),
        (
            "server",
            CatalogFilter {
                server: some(&["bs2.example.org"]),
                ..base.clone()
            },
        ),
        (
            "servers",
            CatalogFilter {
                server: some(&["1", "3"]),
                ..base.clone()
            },
        ),
        (
            "node",
            CatalogFilter {
                node: some(&["pg7.example.org"]),
                ..base.clone()
            },
        ),
        (
            "dbname",
            CatalogFilter {
                dbname: some(&["db42"]),
                ..base.clone()
            },
        ),
        (
            "dbnames",
            CatalogFilter {
                dbname: some(&["db42", "db43"]),
                ..base.clone()
            },
        ),
        (
            "defid",
            CatalogFilter {
                def_ids: Some(vec![42]),
                ..base.clone()
            },
        ),
        (
            "status",
            CatalogFilter {
                status: some(&["ERROR"]),
                ..base.clone()
            },
        ),
        (
            "code",
            CatalogFilter {
                code: some(&["SCHEMA"]),
                ..base.clone()
            },
        ),
        (
            "time range",
            CatalogFilter {
                from: Some("2026-03-01T00:00:00Z".parse().unwrap()),
                to: Some("2026-03-02T00:00:00Z".parse().unwrap()),
                ..base.clone()
            },
        ),
        (
            "node + db + status",
            CatalogFilter {
                node: some(&["3"]),
                dbname: some(&["db52"]),
                status: some(&["SUCCEEDED"]),
                ..base.clone()
            },
        ),
    ];
    for (name, f) in cases {
        let plan = cat.explain_backup_catalog(&f).await.unwrap();
        // An index of backup_catalog serves the filter (a sort is fine only on the few rows it
        // returns: a filter matching many rows must come off an index in "finished" order).
        assert!(
            plan.contains("using backup_catalog_") || plan.contains("on backup_catalog_"),
            "{name}: no catalog index used\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan on backup_catalog"),
            "{name}: sequential scan of the catalog\n{plan}"
        );
        let t = Instant::now();
        let rows = cat.show_backup_catalog(&f).await.unwrap();
        eprintln!("{name:<20} {:>5} rows in {:?}", rows.len(), t.elapsed());
        assert!(!rows.is_empty(), "{name}: no rows");
    }

    // The monitoring snapshot (status probe, serve-metrics) reads each definition's newest rows
    // off backup_catalog_def_idx, never the whole catalog.
    let plan: Vec<String> = c
        .query("explain select * from api.monitoring_definitions", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        !plan.contains("Seq Scan on backup_catalog"),
        "monitoring: sequential scan of the catalog\n{plan}"
    );
    let t = Instant::now();
    let snap = cat.fleet_snapshot().await.unwrap();
    eprintln!(
        "fleet_snapshot       {:>5} definitions in {:?}",
        snap.definitions.len(),
        t.elapsed()
    );
    assert_eq!(snap.definitions.len(), 2000);
}
