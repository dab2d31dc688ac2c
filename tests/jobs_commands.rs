//! Snapshots, run-now, cancel and the job queue from the shell, plus the agent-side job API
//! contracts (claim once, fenced and idempotent reports) exercised through SQL.

mod common;
use common::Env;
use pgbackman_testkit::TestCluster;
use serde_json::json;

fn fleet() -> (Env, TestCluster) {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "x");
    node.create_database("billing");
    node.create_database("crm");
    (env, node)
}

#[test]
fn snapshots_queue_jobs_and_can_be_cancelled() {
    let (env, _node) = fleet();
    let r = env.cmd("register_snapshot_definition bs1.example.org 127.0.0.2 \"#all_databases#\" crm now FULL \"3 days\" \"\" pre-upgrade").ok();
    assert!(r.stdout.contains("for dbname [billing]"), "{}", r.stdout);
    assert!(r.stdout.contains("tag pre-upgrade"), "{}", r.stdout);
    assert_eq!(
        env.sql("select string_agg(dbname || ':' || status, ',') from snapshot_definition"),
        "billing:QUEUED"
    );
    let q = env.json("show_jobs_queue");
    let jobs = q["jobs_queue"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["kind"], json!("SNAPSHOT"));
    assert_eq!(jobs[0]["state"], json!("QUEUED"));
    let job = jobs[0]["jobid"].as_i64().unwrap();
    env.cmd(&format!("cancel_job {job}")).ok();
    assert_eq!(env.sql("select state from job"), "CANCELLED");
    assert_eq!(
        env.sql("select status from snapshot_definition"),
        "CANCELLED"
    );
    env.cmd(&format!("cancel_job {job}"))
        .fails_with("already ended");
    env.cmd("cancel_job 999").fails_with("does not exist");
    let v = env.json("show_snapshot_definitions all 127.0.0.2");
    assert_eq!(v["snapshot_definitions"][0]["tag"], json!("pre-upgrade"));
    assert_eq!(
        env.json("show_snapshots_in_progress")["snapshots_in_progress"],
        json!([])
    );
    // Without a tag, the snapshots of one command share a generated one.
    env.cmd("register_snapshot_definition bs1.example.org 127.0.0.2 billing,crm")
        .ok();
    assert_eq!(
        env.sql("select count(distinct tag) || '/' || count(*) from snapshot_definition where tag <> 'pre-upgrade'"),
        "1/2"
    );
}

#[test]
fn snapshot_input_errors_change_nothing() {
    let (env, _node) = fleet();
    for (line, msg) in [
        (
            "register_snapshot_definition bs1.example.org 127.0.0.2 nosuch",
            "nosuch",
        ),
        (
            "register_snapshot_definition bs1.example.org 127.0.0.2 billing \"\" tomorrow",
            "is not a time",
        ),
        (
            "register_snapshot_definition bs1.example.org 127.0.0.2 billing \"\" now FULL \"3 days\" \"\" t 12",
            "older than PgSQL node",
        ),
        (
            "register_snapshot_definition bs1.example.org 127.0.0.2 billing \"\" now FULL \"3 days\" \"\" t x",
            "not a major version",
        ),
        (
            "register_snapshot_definition bs1.example.org 127.0.0.2 billing \"\" now FULL \"3 days\" \"-f /tmp/x\"",
            "-f",
        ),
    ] {
        env.cmd(line).fails_with(msg);
    }
    env.cmd("update_pgsql_node 1 \"\" \"\" STOPPED \"\"").ok();
    env.cmd("register_snapshot_definition bs1.example.org 127.0.0.2 billing")
        .fails_with("STOPPED");
    assert_eq!(env.sql("select count(*) from snapshot_definition"), "0");
    assert_eq!(env.sql("select count(*) from job"), "0");
}

#[test]
fn run_now_and_the_job_api_contracts() {
    let (env, _node) = fleet();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 billing \"\" 0 1")
        .ok();
    env.cmd("run_backup_definition_now 1").ok();
    env.cmd("run_backup_definition_now 7")
        .fails_with("does not exist");
    // Two claimers: the job goes to exactly one of them.
    let a = env.sql("select count(*) from api.claim_jobs(1, 'agent-a', '1 minute', 10, 2, array['BACKUP', 'SNAPSHOT'])");
    let b = env.sql("select count(*) from api.claim_jobs(1, 'agent-b', '1 minute', 10, 2, array['BACKUP', 'SNAPSHOT'])");
    assert_eq!((a.as_str(), b.as_str()), ("1", "0"));
    let result = json!({
        "execution_status": "SUCCEEDED", "started": "2026-11-21T01:00:00Z", "finished": "2026-11-21T01:00:05Z",
        "backup_dir": "/srv/pgbackman/pgsql_node_1/x", "dump_file": "dump.pgdump.zst", "total_size": 1234,
        "files": [{"name": "dump.pgdump.zst", "size": 1200, "sha256": "ab"}], "role_list": ["app", "owner"],
        "client_version": "15.18", "server_major": "15", "command": "pg_dump -Fc -Z0 ..."
    });
    let report = |attempt: i32| {
        env.catalog.cluster().psql(
            "pgbackman",
            &format!("select api.report_backup(1, {attempt}, '{result}')"),
        )
    };
    let first = report(1).unwrap();
    let again = report(1).unwrap();
    assert_eq!(first, again, "a replayed report is recorded once");
    assert_eq!(env.sql("select count(*) from backup_catalog"), "1");
    assert_eq!(
        env.sql(
            "select state || ':' || execution_method from job join backup_catalog using (job_id)"
        ),
        "SUCCEEDED:MANUAL"
    );
    // A report of an older attempt is refused (fencing).
    env.sql("insert into job (kind, backup_server_id, pgsql_node_id, def_id, state, attempt) values ('BACKUP', 1, 1, 1, 'RUNNING', 2)");
    let stale = env.catalog.cluster().psql(
        "pgbackman",
        &format!("select api.report_backup(2, 1, '{result}')"),
    );
    assert!(stale.unwrap_err().to_string().contains("stale report"));
    // Scheduled instants are recorded once.
    let first = env.sql("select count(*) from api.record_scheduled_job(1, 1, '2026-11-21 02:00+00', 'a', '1 minute')");
    let second = env.sql("select count(*) from api.record_scheduled_job(1, 1, '2026-11-21 02:00+00', 'a', '1 minute')");
    assert_eq!((first.as_str(), second.as_str()), ("1", "0"));
    // Details of the recorded backup.
    let d = env.json("show_backup_details 1");
    let d = &d["backup_details"][0];
    assert_eq!(d["total_size"], json!(1234));
    assert_eq!(d["role_list"], json!(["app", "owner"]));
    assert_eq!(d["execution_status"], json!("SUCCEEDED"));
    env.cmd("show_backup_details 99")
        .fails_with("BckID 99 does not exist");
    let c = env.json("show_backup_catalog all 127.0.0.2 billing");
    assert_eq!(c["backup_catalog"].as_array().unwrap().len(), 1);
    // Leases: a job whose lease ran out is marked lost, and an alert is raised.
    env.sql("update job set lease_expires_at = now() - interval '1 second' where job_id = 2");
    assert_eq!(env.sql("select api.mark_lost_jobs()"), "1");
    assert_eq!(env.sql("select alert_type from alert"), "LOST_JOB");
}

#[test]
fn claims_respect_the_per_node_limit_and_never_overlap() {
    let (env, _node) = fleet();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 billing,crm \"\" 0 1")
        .ok();
    for id in [1, 2, 1] {
        env.cmd(&format!("run_backup_definition_now {id}")).ok();
    }
    let claim = "select count(*) from api.claim_jobs(1, 'a', '1 minute', 10, 2, array['BACKUP'])";
    // Three due jobs on one node, at most two running against it.
    assert_eq!(env.sql(claim), "2");
    assert_eq!(env.sql(claim), "0");
    env.sql("update job set state = 'SUCCEEDED' where job_id = 1");
    assert_eq!(env.sql(claim), "1");
    // Kinds the agent does not run are never claimed.
    env.sql("update job set state = 'QUEUED', kind = 'RESTORE' where job_id = 1");
    assert_eq!(
        env.sql("select count(*) from api.claim_jobs(1, 'a', '1 minute', 10, 9, array['BACKUP'])"),
        "0"
    );

    // Two claimers at the same moment: the second waits for the first and gets nothing.
    env.sql("update job set state = 'QUEUED', kind = 'BACKUP' where job_id = 1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = || async {
            let (c, conn) = tokio_postgres::connect(&env.conninfo(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        };
        let mut a = connect().await;
        let b = connect().await;
        let q = "select count(*) from api.claim_jobs(1, 'x', '1 minute', 10, 9, array['BACKUP'])";
        let tx = a.transaction().await.unwrap();
        let got_a: i64 = tx.query_one(q, &[]).await.unwrap().get(0);
        let second =
            tokio::spawn(async move { b.query_one(q, &[]).await.unwrap().get::<_, i64>(0) });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "the second claim must wait for the first"
        );
        tx.commit().await.unwrap();
        let got_b = second.await.unwrap();
        assert_eq!((got_a, got_b), (1, 0));
    });
}
