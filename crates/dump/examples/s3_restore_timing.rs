//! Informational timing (not a test), run by `bench/s3-restore.sh`: the same FULL set restored
//! from a local directory and from a local S3 server (SeaweedFS), interleaved, in one process
//! run: the ratio S3 / disk per feed (auto, which picks tee or file with -j; stream).
//!
//! ```text
//! cargo run --release -p pgbackman-dump --example s3_restore_timing FILE SCALE [REPS]
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgbackman_core::model::{BackupCode, NodeProfile};
use pgbackman_dump::upload::StoreTarget;
use pgbackman_dump::{
    BackupSpec, CancellationToken, Decompression, DumpFormat, NodeConn, RepositorySet, RestoreSpec,
    RolePolicy, restore_set, run_backup, run_backup_to,
};
use pgbackman_store::s3::Limits;
use pgbackman_store::{Credentials, Location};
use pgbackman_testkit::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, scale, rest @ ..] = args.as_slice() else {
        eprintln!("usage: s3_restore_timing FILE SCALE [REPS]");
        std::process::exit(2);
    };
    let reps: usize = rest.first().and_then(|r| r.parse().ok()).unwrap_or(3);
    let bin = pgbackman_pgctl::find_bin_dir(None).expect("PostgreSQL binaries");
    let pg = pgbackman_testkit::TestCluster::start();
    pg.create_database("bench");
    let sock = pg.socket_dir().display().to_string();
    let port = pg.port().to_string();
    let ok = Command::new(bin.join("psql"))
        .args(["-h", &sock, "-p", &port, "-U", "postgres"])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("scale={scale}"))
        .args(["-d", "bench", "-f", file])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "loading {file} failed");
    println!(
        "database: {}",
        pg.psql("bench", "SELECT pg_size_pretty(pg_database_size('bench'))")
    );
    let conn = NodeConn {
        host: sock.clone(),
        port: pg.port(),
        user: "postgres".into(),
        admin_dbname: "postgres".into(),
        sslmode: String::new(),
        passfile: None,
        timeouts: None,
    };
    let root = tempfile::tempdir().unwrap();
    let spec = |job_id: i64| BackupSpec {
        job_id,
        encryption: None,
        code: BackupCode::Full,
        profile: NodeProfile::Standard,
        dbname: "bench".into(),
        node: conn.clone(),
        node_label: "bench".into(),
        bin_dir: bin.clone(),
        format: DumpFormat::Custom { zstd_level: 3 },
        extra_args: Vec::new(),
        lock_wait_timeout: None,
        max_runtime: None,
        application_name: "pgbackman".into(),
        staging_root: root.path().join("staging"),
        final_dir: root.path().join(format!("set{job_id}")),
        definition: serde_json::json!({}),
    };
    let local = run_backup(&spec(1), CancellationToken::new(), &|_| {}).await;
    assert!(local.status.is_success(), "{:?}", local.status);
    let server = pgbackman_testkit::S3Server::start();
    let store = pgbackman_store::open(
        "bench",
        &Location::S3 {
            endpoint: server.endpoint(),
            bucket: BUCKET.into(),
            prefix: String::new(),
            region: "us-east-1".into(),
        },
        Some(Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }),
        &Limits::default(),
    )
    .unwrap();
    let target = StoreTarget {
        store: Arc::clone(&store),
        prefix: "sets/node1/bench/set2".into(),
    };
    let remote = run_backup_to(&spec(2), Some(&target), CancellationToken::new(), &|_| {}).await;
    assert!(remote.status.is_success(), "{:?}", remote.status);
    println!(
        "set: {} bytes stored",
        local.files.iter().map(|f| f.size).sum::<u64>()
    );

    let rspec = |job_id: i64, db: &str, d: Decompression, from_s3: bool| RestoreSpec {
        job_id,
        set_dir: root.path().join("set1"),
        identity_files: Vec::new(),
        repository: from_s3.then(|| RepositorySet {
            store: Arc::clone(&store),
            prefix: target.prefix.clone(),
        }),
        node: conn.clone(),
        node_label: "bench".into(),
        target_dbname: db.into(),
        rename_existing_to: None,
        roles: RolePolicy::CreateMissing,
        jobs: 2,
        decompression: d,
        extra_args: Vec::new(),
        bin_dir: bin.clone(),
        staging_root: root.path().join("rstaging"),
        log_file: None,
        application_name: "pgbackman".into(),
        max_runtime: None,
        acknowledge_nonempty: false,
        verify_checksums: true,
        compare_row_counts: false,
        journal: None,
    };
    let feeds = [Decompression::Auto, Decompression::Stream];
    let mut times: Vec<[Vec<Duration>; 2]> = vec![[Vec::new(), Vec::new()]; feeds.len()];
    let mut job = 100;
    for rep in 0..reps {
        for (i, feed) in feeds.iter().enumerate() {
            // Alternate which source goes first: neither gets a warmer cache every time.
            let order = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for from_s3 in order {
                job += 1;
                let db = format!("r{job}");
                let t = Instant::now();
                let o = restore_set(
                    &rspec(job, &db, *feed, from_s3),
                    CancellationToken::new(),
                    &|_| {},
                )
                .await;
                let wall = t.elapsed();
                assert!(o.status.is_success(), "{:?}", o.status);
                println!(
                    "rep {rep} {:<6} {:<4} feed {:<6} {:>7.2} s",
                    feed.as_str(),
                    if from_s3 { "s3" } else { "disk" },
                    o.feed.as_deref().unwrap_or(""),
                    wall.as_secs_f64()
                );
                times[i][usize::from(from_s3)].push(wall);
                pg.psql("postgres", &format!("DROP DATABASE {db}"));
            }
        }
    }
    for (i, feed) in feeds.iter().enumerate() {
        let disk = median(&mut times[i][0]);
        let s3 = median(&mut times[i][1]);
        println!(
            "{:<6}: disk {:.2} s, S3 {:.2} s (medians of {reps}); S3 / disk = {:.3}",
            feed.as_str(),
            disk.as_secs_f64(),
            s3.as_secs_f64(),
            s3.as_secs_f64() / disk.as_secs_f64()
        );
    }
}
