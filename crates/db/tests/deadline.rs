//! The agent's catalog handle against a catalog that does not answer (a lock held on `job`):
//! every call ends within its deadline, and the calls that timed out on the agent's side but
//! committed on the server are completed by the replay, never doubled.

use std::time::{Duration, Instant};

use pgbackman_db::{Catalog, DbError, migrate};
use pgbackman_testkit::TestCluster;

async fn catalog() -> (TestCluster, tokio_postgres::Config, tokio_postgres::Client) {
    let pg = TestCluster::start();
    pg.psql("postgres", "create database pgbackman");
    let cfg: tokio_postgres::Config = pg.conninfo("pgbackman").parse().unwrap();
    let mut c = pgbackman_db::connect_once(&cfg, "test catalog")
        .await
        .unwrap();
    migrate::init(&mut c).await.unwrap();
    c.batch_execute(
        "insert into backup_server (hostname, domain_name) values ('bs1', 'example.org');
         insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING');
         insert into backup_definition (backup_server_id, pgsql_node_id, dbname) values (1, 1, 'shop');",
    )
    .await
    .unwrap();
    (pg, cfg, c)
}

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().unwrap()
}

async fn one(c: &tokio_postgres::Client, q: &str) -> String {
    c.query_one(&format!("select ({q})::text"), &[])
        .await
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_blocked_by_a_lock_ends_at_its_deadline_and_the_handle_recovers() {
    let (_pg, cfg, c) = catalog().await;
    let cat =
        Catalog::lazy_with_deadline(cfg.clone(), "agent", "test catalog", Duration::from_secs(1))
            .unwrap();
    let lease = Duration::from_secs(60);
    // Warm: the pool holds a connection, as in a running agent.
    cat.within(
        "record_scheduled_job",
        cat.record_scheduled_job(1, 1, at("2026-11-21T02:00:00Z"), "a", lease),
    )
    .await
    .unwrap();

    let locker = pgbackman_db::connect_once(&cfg, "locker").await.unwrap();
    locker
        .batch_execute("begin; lock table job in access exclusive mode")
        .await
        .unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let e = cat
            .within(
                "record_scheduled_job",
                cat.record_scheduled_job(1, 1, at("2026-11-21T02:01:00Z"), "a", lease),
            )
            .await
            .unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
        assert!(e.is_unreachable() && e.is_slow(), "{e:?}");
        assert!(
            matches!(&e, DbError::Timeout { .. }) || e.code() == Some("57014"),
            "{e:?}"
        );
    }
    // statement_timeout (below the deadline) ended them on the server too: none is waiting
    // for the lock to commit when it goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        one(
            &c,
            "select count(*) from pg_stat_activity where application_name = 'agent' and state = 'active'"
        )
        .await,
        "0"
    );
    locker.batch_execute("commit").await.unwrap();
    // Nothing queued behind the abandoned statements: the next call answers at once.
    let t = Instant::now();
    let r = cat
        .within(
            "record_scheduled_job",
            cat.record_scheduled_job(1, 1, at("2026-11-21T02:01:00Z"), "a", lease),
        )
        .await
        .unwrap();
    assert!(
        r.is_some(),
        "the statements cancelled on the server left no row"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(
        one(
            &c,
            "select count(*) from job where scheduled_for = '2026-11-21T02:01:00Z'"
        )
        .await,
        "1"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_fire_recorded_by_a_call_that_timed_out_is_completed_by_the_replay() {
    let (_pg, cfg, c) = catalog().await;
    let cat =
        Catalog::lazy_with_deadline(cfg, "agent", "test catalog", Duration::from_secs(2)).unwrap();
    let lease = Duration::from_secs(60);
    let result = serde_json::json!({"execution_status": "SUCCEEDED",
        "started": "2026-11-21T02:00:01Z", "finished": "2026-11-21T02:00:05Z",
        "backup_dir": "/srv/x", "total_size": 10});
    // (1) The recording committed, the agent never saw the answer, ran the fire offline and
    // replays its result under (definition, instant): the same row is completed.
    let (job, _) = cat
        .record_scheduled_job(1, 1, at("2026-11-21T02:00:00Z"), "bs1:/s", lease)
        .await
        .unwrap()
        .unwrap();
    let bck = cat
        .report_offline_backup(1, 1, at("2026-11-21T02:00:00Z"), "bs1:/s", &result)
        .await
        .unwrap();
    assert_eq!(
        one(
            &c,
            &format!("select job_id || ' ' || state from job where job_id = {job}")
        )
        .await,
        format!("{job} SUCCEEDED")
    );
    assert_eq!(
        one(
            &c,
            &format!("select job_id from backup_catalog where bck_id = {bck}")
        )
        .await,
        job.to_string()
    );
    // Replayed twice (the replay's own answer lost): still one row.
    assert_eq!(
        cat.report_offline_backup(1, 1, at("2026-11-21T02:00:00Z"), "bs1:/s", &result)
            .await
            .unwrap(),
        bck
    );

    // (2) Same, but the lease ran out before the replay and another agent marked it LOST: the
    // replay settles it as the real result and the unsent LOST alert is withdrawn.
    let (job2, _) = cat
        .record_scheduled_job(1, 1, at("2026-11-21T02:01:00Z"), "bs1:/s", lease)
        .await
        .unwrap()
        .unwrap();
    c.batch_execute(&format!(
        "update job set lease_expires_at = now() - interval '1 second' where job_id = {job2}"
    ))
    .await
    .unwrap();
    assert_eq!(cat.mark_lost_jobs().await.unwrap(), 1);
    assert_eq!(
        one(
            &c,
            &format!(
                "select count(*) from alert where job_id = {job2} and alert_type = 'LOST_JOB'"
            )
        )
        .await,
        "1"
    );
    cat.report_offline_backup(1, 1, at("2026-11-21T02:01:00Z"), "bs1:/s", &result)
        .await
        .unwrap();
    assert_eq!(
        one(&c, &format!("select state from job where job_id = {job2}")).await,
        "SUCCEEDED"
    );
    assert_eq!(one(&c, "select count(*) from alert").await, "0");
    assert_eq!(
        one(&c, "select count(*) from job").await,
        "2",
        "never a second row"
    );
    assert_eq!(one(&c, "select count(*) from backup_catalog").await, "2");

    // (3) The agent's look for interrupted jobs sees such rows with their definition and
    // instant, so it can leave alone those whose result is spooled or that run now.
    let (job3, _) = cat
        .record_scheduled_job(1, 1, at("2026-11-21T02:02:00Z"), "bs1:/s", lease)
        .await
        .unwrap()
        .unwrap();
    let rows = cat.jobs_claimed_by(1, "bs1:/s").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].job_id, job3);
    assert_eq!(rows[0].def_id, Some(1));
    assert_eq!(rows[0].scheduled_for, Some(at("2026-11-21T02:02:00Z")));
}
