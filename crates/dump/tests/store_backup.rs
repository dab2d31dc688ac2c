//! Backup sets streamed to a repository (issue 13), against real PostgreSQL and SeaweedFS:
//! the set's objects (dump, roles.sql, database.sql, backup.log, manifest.json last) with the
//! manifest's sha256, nothing of the dump on the agent's disk, and the set restorable — its
//! objects fetched into a directory restore onto another cluster, compared object by object;
//! a set key that exists is never overwritten; the store frozen in the middle of the upload
//! fails the run at step "upload" naming the repository and the key, and leaves neither an
//! object nor a pending multipart upload; the next run succeeds.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pgbackman_core::model::BackupCode;
use pgbackman_dump::upload::{StoreTarget, verify_objects};
use pgbackman_dump::{CUSTOM_DUMP_FILE, CancellationToken, Status, VerifyState, run_backup_to};
use pgbackman_store::s3::Limits;
use pgbackman_store::{Credentials, Location, Store, layout, open};
use pgbackman_testkit::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};
use pgbackman_testkit::{S3Server, TestCluster};

use common::compare::{assert_same, facts};

fn store(server: &S3Server, limits: &Limits) -> Arc<dyn Store> {
    open(
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
        limits,
    )
    .unwrap()
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// Fetches the objects under `prefix` into `dir` (as a restore from a repository will).
async fn fetch(store: &dyn Store, prefix: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for o in store.list(prefix).await.unwrap() {
        let name = o.key.strip_prefix(&format!("{prefix}/")).unwrap();
        let mut s = store.read(&o.key).await.unwrap();
        let mut bytes = Vec::new();
        while let Some(c) = s.next().await {
            bytes.extend_from_slice(&c.unwrap());
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_streamed_to_s3_restores_object_by_object() {
    let pg = TestCluster::start();
    pg.psql("postgres", "create database shop");
    pg.psql(
        "shop",
        "create role clerk; create table items (id int primary key, name text, price numeric);
         insert into items select g, md5(g::text), g * 1.5 from generate_series(1, 50000) g;
         grant select on items to clerk; create sequence s; select setval('s', 42);",
    );
    let server = S3Server::start();
    let repo = store(&server, &Limits::default());
    let root = tempfile::tempdir().unwrap();
    let spec = common::spec(&pg, root.path(), 11, BackupCode::Full, "shop");
    let prefix = layout::set_prefix(1, "20260501T120000Z_shop_FULL_j11");
    let target = StoreTarget {
        store: Arc::clone(&repo),
        prefix: prefix.clone(),
    };
    let o = run_backup_to(&spec, Some(&target), CancellationToken::new(), &|_| {}).await;
    assert!(o.status.is_success(), "{:#?}", o.status);
    assert_eq!(o.backup_dir, None);
    let v = o.verification.as_ref().unwrap();
    assert_eq!((v.level, v.state), (2, VerifyState::Passed), "{v:?}");

    // The objects: every file of the manifest, the manifest itself.
    let keys: Vec<String> = repo
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    for f in [
        CUSTOM_DUMP_FILE,
        "roles.sql",
        "database.sql",
        "backup.log",
        "manifest.json",
    ] {
        assert!(
            keys.contains(&format!("{prefix}/{f}")),
            "{f} missing: {keys:?}"
        );
    }
    verify_objects(&target, &o.files).await.unwrap();
    // Nothing of the set stays on the agent's disk (staging removed, no final directory).
    assert_eq!(files_under(root.path()), Vec::<String>::new());

    // Restorable: fetched into a directory, restored onto another cluster, compared.
    let other = TestCluster::start();
    other.psql("postgres", "create role clerk");
    let set = root.path().join("fetched");
    fetch(repo.as_ref(), &prefix, &set).await;
    let r = common::restore(&common::rspec(
        &set,
        common::conn(&other),
        root.path(),
        12,
        "shop",
    ))
    .await;
    common::assert_ok(&r);
    let except = ["postgres", "clerk"];
    assert_same(
        &facts(&pg, &["shop"], &except),
        &facts(&other, &["shop"], &except),
    );

    // Write-once: the same set key again is refused; the stored set is unchanged.
    let o2 = run_backup_to(&spec, Some(&target), CancellationToken::new(), &|_| {}).await;
    match &o2.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "upload", "{message}");
            assert!(message.contains("exists already"), "{message}");
        }
        s => panic!("a second run onto the same key: {s:?}"),
    }
    verify_objects(&target, &o.files).await.unwrap();
    assert_eq!(server.pending_uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_frozen_mid_upload_fails_with_the_key_and_leaves_nothing() {
    let pg = TestCluster::start();
    pg.psql("postgres", "create database big");
    // About 40 MB of incompressible text: several 5 MiB parts.
    pg.psql(
        "big",
        "create table t as select g, md5(random()::text) || md5(random()::text) as a
           from generate_series(1, 600000) g;",
    );
    let server = S3Server::start();
    let limits = Limits {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(4),
        max_retries: 2,
        part_size: 5 << 20,
        parts_in_flight: 2,
        abort_timeout: Duration::from_secs(40),
    };
    let repo = store(&server, &limits);
    let root = tempfile::tempdir().unwrap();
    let spec = common::spec(&pg, root.path(), 21, BackupCode::Full, "big");
    let prefix = layout::set_prefix(1, "20260501T130000Z_big_FULL_j21");
    let target = StoreTarget {
        store: Arc::clone(&repo),
        prefix: prefix.clone(),
    };
    // Frozen once 8 MB went out; thawed 12 s later, while the run's abort still retries.
    let frozen = std::sync::atomic::AtomicBool::new(false);
    let pid = server.pid();
    let progress = |n: u64| {
        if n > 8 << 20 && !frozen.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(12));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGCONT,
                );
            });
        }
    };
    let o = run_backup_to(&spec, Some(&target), CancellationToken::new(), &progress).await;
    assert!(frozen.load(std::sync::atomic::Ordering::SeqCst));
    match &o.status {
        Status::Failed { step, message, .. } => {
            assert_eq!(step, "upload", "{message}");
            let key = format!("{prefix}/{CUSTOM_DUMP_FILE}");
            assert!(
                message.contains("repository offsite") && message.contains(&key),
                "{message}"
            );
            assert!(message.contains("the upload was aborted"), "{message}");
        }
        s => panic!("the run did not fail: {s:?}"),
    }
    server.thaw();
    assert_eq!(server.pending_uploads(), 0, "a multipart upload was left");
    assert!(repo.list(&prefix).await.unwrap().is_empty());
    assert_eq!(files_under(root.path()), Vec::<String>::new());
    // No pg_dump left behind: the next run of the same set succeeds.
    let o = run_backup_to(&spec, Some(&target), CancellationToken::new(), &|_| {}).await;
    assert!(o.status.is_success(), "{:#?}", o.status);
}
