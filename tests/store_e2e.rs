//! Backups to an S3 repository end to end (issue 13): the real agent with a server whose
//! primary repository is a bucket of a real S3-compatible server (SeaweedFS), credentials from
//! a file on the agent's host. The set is streamed there (nothing on the agent's disk), the
//! catalog row says where (repository, object prefix) and its level-1 verification re-read the
//! objects (and verify_backup does again, with level 2 from the bucket: a flipped byte in the
//! bucket fails it); a restore and a restore drill read the set from the bucket; the
//! credentials show up in no argv, log line, catalog row or shell output; the
//! retention pass deletes the objects of the set the plan deletes and keeps the others.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::Env;
use common::agent::{Agent, age, run_now, sets_on_disk, wait_for};
use pgbackman_store::s3::Limits;
use pgbackman_store::{Credentials, Location, Store};
use pgbackman_testkit::S3Server;
use pgbackman_testkit::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};

fn bucket(server: &S3Server) -> Arc<dyn Store> {
    pgbackman_store::open(
        "offsite",
        &Location::S3 {
            endpoint: server.endpoint(),
            bucket: BUCKET.into(),
            prefix: "site1".into(),
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
fn backups_to_s3_verified_secret_free_and_retained() {
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

    env.cmd(&format!(
        "register_repository offsite s3 --endpoint {} --bucket {BUCKET} --prefix site1 --credentials-file {}",
        s3.endpoint(),
        keys_file.display()
    ))
    .ok();
    env.cmd("set_primary_repository bs1.example.org offsite")
        .ok();
    env.cmd("register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3")
        .ok();
    let mut agent = Agent::start(&env, "bs1.example.org", None);
    let first = run_now(&env, &agent, 1);
    wait_for(
        &env,
        &format!(
            "select execution_status || ' ' || verification_state from backup_catalog where bck_id = {first}"
        ),
        "SUCCEEDED PASSED",
        60,
        &agent,
    );
    let row = env.sql(&format!(
        "select concat_ws(' ', repository_id, coalesce(backup_dir, 'no-dir'), object_prefix) from backup_catalog where bck_id = {first}"
    ));
    assert!(
        row.starts_with("1 no-dir sets/node1/shop/") && row.contains("-def1-FULL"),
        "{row}"
    );
    let prefix = row.rsplit(' ').next().unwrap().to_string();
    let store = bucket(&s3);
    let stored = keys(&rt, &store, &prefix);
    for f in [
        "dump.pgdump.zst",
        "roles.sql",
        "database.sql",
        "backup.log",
        "manifest.json",
    ] {
        assert!(stored.contains(&format!("{prefix}/{f}")), "{f}: {stored:?}");
    }
    // The catalog's sha256 of the dump is the object's.
    let (_, sha) = rt
        .block_on(pgbackman_store::sha256_of(
            store.as_ref(),
            &format!("{prefix}/dump.pgdump.zst"),
        ))
        .unwrap();
    assert_eq!(
        env.sql(&format!(
            "select checksum from backup_catalog where bck_id = {first}"
        )),
        sha
    );
    assert!(sets_on_disk(&agent.backups()).is_empty());
    assert_eq!(s3.pending_uploads(), 0);

    // The secret is nowhere: argv of the agent, its log, catalog rows, shell output.
    let pid = agent.pid();
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&argv).contains(SECRET_KEY));
    assert!(!agent.log().contains(SECRET_KEY));
    assert_eq!(
        env.sql(&format!(
            "select count(*) from (select to_jsonb(t)::text x from repository t
               union all select to_jsonb(a)::text from audit_log a
               union all select to_jsonb(b)::text from backup_catalog b
               union all select to_jsonb(j)::text from job j
               union all select to_jsonb(s)::text from agent_status s) r where x like '%{SECRET_KEY}%'"
        )),
        "0"
    );
    for line in [
        "show_repositories",
        "show_backup_catalog",
        &format!("show_backup_details {first}"),
    ] {
        let out = env.cmd(line).ok();
        assert!(
            !out.stdout.contains(SECRET_KEY) && !out.stderr.contains(SECRET_KEY),
            "{line}"
        );
    }

    // A restore from the bucket, through the shell and the agent: the objects streamed, nothing
    // left in the staging area.
    env.cmd(&format!(
        "register_restore_definition now {first} 127.0.0.2 shop_copy \"\" --reuse-roles all"
    ))
    .ok();
    wait_for(
        &env,
        "select execution_status from restore_catalog where restore_def = 1",
        "SUCCEEDED",
        120,
        &agent,
    );
    assert_eq!(
        node.psql(
            "shop_copy",
            "select count(*) || ' ' || max(name) from items"
        ),
        node.psql("shop", "select count(*) || ' ' || max(name) from items")
    );
    assert!(sets_on_disk(&agent.backups()).is_empty());
    let staging = agent.backups().join("staging");
    assert!(
        std::fs::read_dir(&staging).map_or(true, |d| d.count() == 0),
        "staging left: {staging:?}"
    );

    // verify_backup re-reads the objects (level 1) and lists the archive from the bucket
    // (level 2); a restore drill restores from the bucket (level 3).
    env.cmd(&format!("verify_backup {first}")).ok();
    wait_for(&env, "select count(*) from verification", "1", 60, &agent);
    assert_eq!(
        env.sql("select kind || ' ' || level || ' ' || state from verification"),
        "VERIFY 2 PASSED"
    );
    env.cmd("update_backup_server_config bs1.example.org drill_node=127.0.0.2")
        .ok();
    env.cmd(&format!("run_restore_drill {first}")).ok();
    wait_for(&env, "select count(*) from verification", "2", 120, &agent);
    assert_eq!(
        env.sql(
            "select kind || ' ' || level || ' ' || state from verification order by verification_id desc limit 1"
        ),
        "DRILL 3 PASSED",
        "{}",
        env.sql("select error_message from verification")
    );

    // One flipped byte in the bucket fails level 1, naming the object.
    let dump_key = format!("{prefix}/dump.pgdump.zst");
    let mut bytes = Vec::new();
    let mut st = rt.block_on(store.read(&dump_key)).unwrap();
    while let Some(c) = rt.block_on(futures_util::StreamExt::next(&mut st)) {
        bytes.extend_from_slice(&c.unwrap());
    }
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    // The bucket is write-once for pgbackman; a damaged object is replaced from outside.
    rt.block_on(store.delete(&dump_key)).unwrap();
    rt.block_on(store.put_once(&dump_key, bytes.into()))
        .unwrap();
    env.cmd(&format!("verify_backup {first}")).ok();
    wait_for(&env, "select count(*) from verification", "3", 60, &agent);
    assert_eq!(
        env.sql(&format!(
            "select verification_level || ' ' || verification_state from backup_catalog where bck_id = {first}"
        )),
        "1 FAILED"
    );
    let err = env.sql(&format!(
        "select verification_error from backup_catalog where bck_id = {first}"
    ));
    assert!(
        err.contains(&dump_key) && err.contains("repository offsite"),
        "{err}"
    );

    // A set found damaged is not restored.
    env.cmd(&format!(
        "register_restore_definition now {first} 127.0.0.2 shop_copy2 \"\" --reuse-roles all"
    ))
    .fails_with("failed verification level 1");

    // Retention: the older set past its period goes (objects and row), the newer stays.
    let second = run_now(&env, &agent, 1);
    wait_for(
        &env,
        &format!("select execution_status from backup_catalog where bck_id = {second}"),
        "SUCCEEDED",
        60,
        &agent,
    );
    let second_prefix = env.sql(&format!(
        "select object_prefix from backup_catalog where bck_id = {second}"
    ));
    assert_ne!(prefix, second_prefix);
    age(&env, first, "30 days");
    agent.stop();
    agent.maintenance_ok();
    assert_eq!(
        env.sql("select string_agg(bck_id::text, ',') from backup_catalog"),
        second.to_string()
    );
    assert!(keys(&rt, &store, &prefix).is_empty(), "objects left");
    assert_eq!(keys(&rt, &store, &second_prefix).len(), 5);

    // A snapshot goes where the server's sets go: its primary repository.
    let mut agent = Agent::start(&env, "bs1.example.org", None);
    env.cmd("register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" now FULL \"2 days\" \"\" snap1")
        .ok();
    wait_for(
        &env,
        "select concat_ws(' ', execution_status, repository_id, backup_dir is null) from backup_catalog where snapshot_id is not null",
        "SUCCEEDED 1 t",
        60,
        &agent,
    );
    let snap_prefix =
        env.sql("select object_prefix from backup_catalog where snapshot_id is not null");
    assert_eq!(keys(&rt, &store, &snap_prefix).len(), 5);
    assert!(sets_on_disk(&agent.backups()).is_empty());
    agent.stop();
}
