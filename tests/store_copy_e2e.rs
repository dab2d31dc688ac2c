//! The second repository copy end to end (issue 13): a server whose primary repository is a
//! bucket prefix of a real S3 server (SeaweedFS) and whose copy repository is another prefix;
//! the agent's maintenance pass copies each set and verifies the copy before the catalog counts
//! it (show_backup_copies); a copy that cannot be made (a conflicting object in the copy
//! repository) is recorded FAILED with an alert and made at a later pass once the conflict is
//! gone; retention deletes the set and its copy.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::Env;
use common::agent::{Agent, age, run_now, wait_for};
use pgbackman_store::s3::Limits;
use pgbackman_store::{Credentials, Location, Store};
use pgbackman_testkit::S3Server;
use pgbackman_testkit::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};

fn bucket(server: &S3Server, prefix: &str) -> Arc<dyn Store> {
    pgbackman_store::open(
        prefix,
        &Location::S3 {
            endpoint: server.endpoint(),
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            region: "us-east-1".into(),
        },
        Some(Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }),
        &Limits::default(),
    )
    .unwrap()
}

fn keys(rt: &tokio::runtime::Runtime, store: &Arc<dyn Store>, prefix: &str) -> Vec<String> {
    rt.block_on(store.list(prefix))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[test]
fn sets_are_copied_to_a_second_repository_verified_retried_and_retained() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "a");
    node.create_database("shop");
    node.psql(
        "shop",
        "create table items as select g as id, md5(g::text) as name from generate_series(1, 20000) g",
    );
    let s3 = S3Server::start();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys_file = keys_dir.path().join("s3.keys");
    std::fs::write(
        &keys_file,
        format!("access_key_id={ACCESS_KEY}\nsecret_access_key={SECRET_KEY}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&keys_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (name, prefix) in [("offsite", "site1"), ("offsite2", "site2")] {
        env.cmd(&format!(
            "register_repository {name} s3 --endpoint {} --bucket {BUCKET} --prefix {prefix} --credentials-file {}",
            s3.endpoint(),
            keys_file.display()
        ))
        .ok();
    }
    env.cmd("set_primary_repository bs1.example.org offsite")
        .ok();
    env.cmd("set_copy_repository bs1.example.org offsite")
        .fails_with("stores its sets in repository");
    let out = env.cmd("set_copy_repository bs1.example.org offsite2").ok();
    assert!(
        out.stdout.contains("copied to repository offsite2"),
        "{}",
        out.stdout
    );
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    let (site1, site2) = (bucket(&s3, "site1"), bucket(&s3, "site2"));

    let mut agent = Agent::start(&env, "bs1.example.org", None);
    let first = run_now(&env, &agent, 1);
    wait_for(
        &env,
        &format!("select execution_status from backup_catalog where bck_id = {first}"),
        "SUCCEEDED",
        60,
        &agent,
    );
    let copies = env.json("show_backup_copies");
    assert_eq!(copies["backup_copies"][0]["state"], "PENDING", "{copies}");
    agent.stop();

    // The maintenance pass copies the set and verifies the copy.
    agent.maintenance_ok();
    assert_eq!(
        env.sql(&format!(
            "select state || ' ' || attempts || ' ' || (verified is not null) from backup_copy where bck_id = {first}"
        )),
        "VERIFIED 1 true"
    );
    let prefix = env.sql(&format!(
        "select object_prefix from backup_catalog where bck_id = {first}"
    ));
    let mut a = keys(&rt, &site1, &prefix);
    let mut b = keys(&rt, &site2, &prefix);
    a.sort();
    b.sort();
    assert_eq!(a.len(), 5);
    assert_eq!(a, b);
    // A verified copy is not copied again.
    agent.maintenance_ok();
    assert_eq!(
        env.sql("select count(*) || ' ' || max(attempts) from backup_copy"),
        "1 1"
    );

    // A conflicting object in the copy repository: the copy fails (an alert), then succeeds
    // at the pass after the conflict is removed.
    let mut agent = Agent::start(&env, "bs1.example.org", None);
    let second = run_now(&env, &agent, 1);
    wait_for(
        &env,
        &format!("select execution_status from backup_catalog where bck_id = {second}"),
        "SUCCEEDED",
        60,
        &agent,
    );
    agent.stop();
    let prefix2 = env.sql(&format!(
        "select object_prefix from backup_catalog where bck_id = {second}"
    ));
    let squat = format!("{prefix2}/dump.pgdump.zst");
    rt.block_on(site2.put_once(&squat, b"not the dump".to_vec().into()))
        .unwrap();
    agent.maintenance_ok();
    assert_eq!(
        env.sql(&format!(
            "select state || ' ' || attempts from backup_copy where bck_id = {second}"
        )),
        "FAILED 1"
    );
    let err = env.sql(&format!(
        "select error from backup_copy where bck_id = {second}"
    ));
    assert!(err.contains(&squat) && err.contains("remove it"), "{err}");
    assert_eq!(
        env.sql(&format!(
            "select alert_type || ' ' || execution_status from alert where bck_id = {second}"
        )),
        "MAINTENANCE COPY"
    );
    let copies = env.json("show_backup_copies");
    assert!(copies.to_string().contains("FAILED"), "{copies}");
    rt.block_on(site2.delete(&squat)).unwrap();
    agent.maintenance_ok();
    assert_eq!(
        env.sql(&format!(
            "select state || ' ' || attempts from backup_copy where bck_id = {second}"
        )),
        "VERIFIED 2"
    );

    // Retention deletes the set and its copy; the newer set and its copy stay.
    age(&env, first, "30 days");
    agent.maintenance_ok();
    assert_eq!(
        env.sql("select string_agg(bck_id::text, ',') from backup_catalog"),
        second.to_string()
    );
    assert!(keys(&rt, &site1, &prefix).is_empty());
    assert!(keys(&rt, &site2, &prefix).is_empty(), "copy objects left");
    assert_eq!(keys(&rt, &site2, &prefix2).len(), 5);
    assert_eq!(env.sql("select count(*) from backup_copy"), "1");
    // A repository that holds copies cannot be deleted.
    env.cmd("set_copy_repository bs1.example.org none").ok();
    env.cmd("delete_repository offsite2")
        .fails_with("still holds 1 backup sets");
}
