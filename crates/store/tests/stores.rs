//! The two stores against the real thing: a local directory and SeaweedFS (testkit's
//! `S3Server`). The same contract for both: streamed objects come back byte for byte with the
//! sha256 the writer computed, a key is written once (a second write is refused, the object
//! unchanged), an aborted upload leaves nothing, listing and deletion. Then the S3 faults: a
//! server frozen mid-upload fails the upload within the deadlines, naming the repository and
//! the key, and the abort leaves no multipart upload behind; wrong keys fail without showing
//! the secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgbackman_store::s3::Limits;
use pgbackman_store::{Credentials, ErrorKind, Location, Store, open, sha256_of};
use pgbackman_testkit::S3Server;
use pgbackman_testkit::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};

fn creds() -> Credentials {
    Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    }
}

fn s3(server: &S3Server, prefix: &str, limits: &Limits) -> Arc<dyn Store> {
    open(
        "offsite",
        &Location::S3 {
            endpoint: server.endpoint(),
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            region: "us-east-1".into(),
        },
        Some(creds()),
        limits,
    )
    .unwrap()
}

/// Deterministic incompressible-looking bytes.
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The contract both stores keep.
async fn contract(store: &dyn Store) {
    let body = data(23 << 20, 7);
    let key = "sets/node1/20260501T120000Z_db1_FULL_j1/db1.dump.zst";
    let mut w = store.create(key).await.unwrap();
    for c in body.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    let st = w.finish().await.unwrap();
    assert_eq!(
        (st.size, st.sha256.clone()),
        (body.len() as u64, sha(&body))
    );
    assert_eq!(
        sha256_of(store, key).await.unwrap(),
        (body.len() as u64, sha(&body))
    );
    assert_eq!(store.size(key).await.unwrap(), Some(body.len() as u64));

    // Write-once: a streamed upload and a conditional put on a taken key are refused, and
    // the object is unchanged.
    let e = match store.create(key).await {
        Err(e) => e,
        Ok(_) => panic!("create on an existing key succeeded"),
    };
    assert_eq!(e.kind, ErrorKind::Exists, "{e}");
    assert!(
        e.to_string().contains(key) && e.to_string().contains(store.name()),
        "{e}"
    );
    let manifest = "sets/node1/20260501T120000Z_db1_FULL_j1/manifest.json";
    store
        .put_once(manifest, Bytes::from_static(b"{\"v\":1}"))
        .await
        .unwrap();
    let e = store
        .put_once(manifest, Bytes::from_static(b"{\"v\":2}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Exists, "{e}");
    assert_eq!(
        sha256_of(store, manifest).await.unwrap().1,
        sha(b"{\"v\":1}")
    );
    let e = store
        .put_once(key, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Exists, "{e}");
    assert_eq!(sha256_of(store, key).await.unwrap().1, sha(&body));

    // An aborted upload leaves nothing.
    let aborted = "sets/node1/20260501T120000Z_db1_FULL_j1/aborted";
    let mut w = store.create(aborted).await.unwrap();
    w.write(Bytes::from(data(6 << 20, 3))).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(store.size(aborted).await.unwrap(), None);

    let listed = store.list("sets/node1").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, [key, manifest], "{listed:?}");
    let e = match store.read("sets/node1/nothing").await {
        Err(e) => e,
        Ok(_) => panic!("read of a missing key succeeded"),
    };
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    store.delete(key).await.unwrap();
    store.delete(key).await.unwrap(); // resumed deletions find nothing: fine
    store.delete(manifest).await.unwrap();
    assert!(store.list("sets").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_contract() {
    let d = tempfile::tempdir().unwrap();
    let store = open(
        "archive",
        &Location::Local {
            path: d.path().join("repo"),
        },
        None,
        &Limits::default(),
    )
    .unwrap();
    contract(store.as_ref()).await;
    // Nothing left in the temporary directory either.
    assert_eq!(
        std::fs::read_dir(d.path().join("repo/.incoming"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_contract() {
    let server = S3Server::start();
    let store = s3(&server, "site1", &Limits::default());
    contract(store.as_ref()).await;
    assert_eq!(server.pending_uploads(), 0);
    // The prefix isolates: the same key under another prefix is another object.
    let other = s3(&server, "site2", &Limits::default());
    other
        .put_once("sets/x", Bytes::from_static(b"a"))
        .await
        .unwrap();
    store
        .put_once("sets/x", Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert!(!format!("{store:?}").contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_frozen_mid_upload_fails_with_the_key_and_leaves_no_upload() {
    let server = S3Server::start();
    let limits = Limits {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(4),
        max_retries: 2,
        part_size: 5 << 20,
        parts_in_flight: 2,
        abort_timeout: Duration::from_secs(30),
    };
    let store = s3(&server, "site1", &limits);
    let key = "sets/node1/20260501T120000Z_db1_FULL_j2/db1.dump.zst";
    let mut w = store.create(key).await.unwrap();
    let chunk = Bytes::from(data(1 << 20, 11));
    for _ in 0..12 {
        w.write(chunk.clone()).await.unwrap();
    }
    // Two parts are (being) uploaded: the upload is pending on the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.pending_uploads(), 1);
    server.freeze();
    let t = Instant::now();
    let err = loop {
        if let Err(e) = w.write(chunk.clone()).await {
            break e;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the upload never failed"
        );
    };
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    let text = err.to_string();
    assert!(
        text.contains("repository offsite") && text.contains(key),
        "{text}"
    );
    assert_eq!(err.kind, ErrorKind::Unavailable, "{text}");
    // The abort retries within the deadlines; the store answers again meanwhile.
    let abort = tokio::spawn(async move { w.abort().await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.thaw();
    let aborted = abort.await.unwrap();
    if let Err(e) = &aborted {
        // The abort's own budget ran out while frozen: a fresh handle aborts nothing more, so
        // the test must see it succeed.
        panic!("abort failed: {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.pending_uploads() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.pending_uploads(), 0, "a multipart upload was left");
    assert_eq!(store.size(key).await.unwrap(), None);
    // The next run succeeds.
    let mut w = store.create(key).await.unwrap();
    w.write(chunk.clone()).await.unwrap();
    w.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_refused_without_showing_it() {
    let server = S3Server::start();
    let wrong = "WRONG-secret-9f3e";
    let store = open(
        "offsite",
        &Location::S3 {
            endpoint: server.endpoint(),
            bucket: BUCKET.into(),
            prefix: String::new(),
            region: "us-east-1".into(),
        },
        Some(Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: wrong.into(),
            session_token: None,
        }),
        &Limits {
            retry_timeout: Duration::from_secs(3),
            ..Limits::default()
        },
    )
    .unwrap();
    let e = store
        .put_once("sets/x", Bytes::from_static(b"a"))
        .await
        .unwrap_err();
    let text = format!("{e} {e:?}");
    assert_eq!(e.kind, ErrorKind::Failed, "{text}");
    assert!(text.contains("credentials"), "{text}");
    assert!(
        !text.contains(wrong) && !text.contains(SECRET_KEY),
        "{text}"
    );
    assert!(!server.log().contains(SECRET_KEY));
}
