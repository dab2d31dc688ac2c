//! Informational timing (not a test): a FULL backup of a ~100 MB database against the ceiling,
//! `pg_dump -Fc -Z0 > /dev/null`, on the same data.
//!
//! ```text
//! cargo run --release -p pgbackman-dump --example full_backup_timing            # built-in data, ~100 MB
//! cargo run --release -p pgbackman-dump --example full_backup_timing FILE SCALE # e.g. shared/bench/reference-db.sql 1
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgbackman_core::model::{BackupCode, NodeProfile};
use pgbackman_dump::{BackupSpec, CancellationToken, DumpFormat, NodeConn, run_backup};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = pgbackman_pgctl::find_bin_dir(None).expect("PostgreSQL binaries");
    let pg = pgbackman_testkit::TestCluster::start();
    pg.create_database("bench");
    let sock = pg.socket_dir().display().to_string();
    let port = pg.port().to_string();
    let conn = ["-h", sock.as_str(), "-p", port.as_str(), "-U", "postgres"];
    if let [file, scale, ..] = args.as_slice() {
        let ok = Command::new(bin.join("psql"))
            .args(conn)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
            .arg(format!("scale={scale}"))
            .args(["-d", "bench", "-f", file])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "loading {file} failed");
    } else {
        // Mixed text, numbers and jsonb that compress like ordinary application data.
        pg.psql(
            "bench",
            "SELECT setseed(0.42);
             CREATE TABLE events AS
               SELECT g AS id, (random() * 100000)::int AS user_id,
                      (array['click','view','buy','refund'])[1 + (random() * 3)::int] AS kind,
                      round((random() * 1000)::numeric, 2) AS amount,
                      timestamptz '2024-01-01' + make_interval(secs => (random() * 3e7)::int) AS at,
                      jsonb_build_object('ua', md5(random()::text), 'n', (random() * 100)::int) AS payload,
                      substr(md5(random()::text) || md5(random()::text), 1, (random() * 64)::int) AS note
                 FROM generate_series(1, 700000) g;
             ALTER TABLE events ADD PRIMARY KEY (id);
             ANALYZE;",
        );
    }
    let size = pg.psql("bench", "SELECT pg_size_pretty(pg_database_size('bench'))");
    println!("database: {size}");

    let mut ceiling = Vec::new();
    let mut ours = Vec::new();
    let mut cli = Vec::new();
    let root = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let t = Instant::now();
        let ok = Command::new(bin.join("pg_dump"))
            .args(conn)
            .args(["-Fc", "-Z0", "-d", "bench"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        ceiling.push(t.elapsed());

        // The same pipeline with the zstd command (when installed), to a file.
        let t = Instant::now();
        let out = root.path().join(format!("cli{round}.zst"));
        if let Ok(mut dump) = Command::new(bin.join("pg_dump"))
            .args(conn)
            .args(["-Fc", "-Z0", "-d", "bench"])
            .stdout(Stdio::piped())
            .spawn()
            && let Ok(z) = Command::new("zstd")
                .args(["-q", "-3", "-T1", "-o"])
                .arg(&out)
                .stdin(dump.stdout.take().unwrap())
                .status()
        {
            assert!(dump.wait().unwrap().success() && z.success());
            cli.push(t.elapsed());
        }

        let spec = BackupSpec {
            job_id: round,
            code: BackupCode::Full,
            profile: NodeProfile::Standard,
            dbname: "bench".into(),
            node: NodeConn {
                host: sock.clone(),
                port: pg.port(),
                user: "postgres".into(),
                admin_dbname: "postgres".into(),
                sslmode: String::new(),
                passfile: None,
                timeouts: None,
            },
            node_label: "bench".into(),
            bin_dir: bin.clone(),
            format: DumpFormat::Custom { zstd_level: 3 },
            extra_args: Vec::new(),
            lock_wait_timeout: None,
            max_runtime: None,
            application_name: "pgbackman".into(),
            staging_root: root.path().join("staging"),
            final_dir: root.path().join(format!("set{round}")),
            definition: serde_json::Value::Null,
            encryption: None,
        };
        let t = Instant::now();
        let o = run_backup(&spec, CancellationToken::new(), &|_| {}).await;
        ours.push(t.elapsed());
        assert!(o.status.is_success(), "{:?}", o.status);
        if round == 0 {
            let dump = o
                .files
                .iter()
                .find(|f| f.name == "dump.pgdump.zst")
                .unwrap();
            println!(
                "set: dump.pgdump.zst {:.1} MB, phases {:?}",
                dump.size as f64 / 1e6,
                o.phase_timings
                    .iter()
                    .map(|(p, s)| format!("{p} {s:.2}s"))
                    .collect::<Vec<_>>()
            );
        }
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    println!(
        "pg_dump -Fc -Z0 > /dev/null: best {:.2}s of {:?}",
        best(&ceiling).as_secs_f64(),
        ceiling
    );
    if !cli.is_empty() {
        println!(
            "pg_dump -Fc -Z0 | zstd -3 -T1 > file: best {:.2}s of {:?}",
            best(&cli).as_secs_f64(),
            cli
        );
    }
    println!(
        "pgbackman FULL (zstd 3, sha256, row counts, roles, fsync): best {:.2}s of {:?}",
        best(&ours).as_secs_f64(),
        ours
    );
    println!(
        "ratio: {:.2}",
        best(&ours).as_secs_f64() / best(&ceiling).as_secs_f64()
    );
}
