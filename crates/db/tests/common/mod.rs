//! The catalog every db test starts from: a throwaway cluster with the catalog installed, the
//! test's own `setup` SQL run as the owner, and a `Catalog` with a 20 s deadline per call.

use std::time::Duration;

use pgbackman_db::{Catalog, migrate};
use pgbackman_testkit::TestCluster;

/// The cluster (drop it last), the owner's connection and the catalog handle.
pub async fn catalog(setup: &str) -> (TestCluster, tokio_postgres::Client, Catalog) {
    let pg = TestCluster::start();
    pg.psql("postgres", "create database pgbackman");
    let cfg: tokio_postgres::Config = pg.conninfo("pgbackman").parse().unwrap();
    let mut owner = pgbackman_db::connect_once(&cfg, "test catalog")
        .await
        .unwrap();
    migrate::init(&mut owner).await.unwrap();
    owner.batch_execute(setup).await.unwrap();
    let cat =
        Catalog::lazy_with_deadline(cfg, "test", "test catalog", Duration::from_secs(20)).unwrap();
    (pg, owner, cat)
}
