//! Memory of a set's upload (issue 13, bench/s3-upload.sh): standard input streamed through
//! the dump's upload pipeline (zstd, sha256, multipart upload with the default limits) into
//! an S3 repository, as the agent streams pg_dump's output. Prints the object and the peak
//! RSS of this process (VmHWM).
//!
//! `S3_ENDPOINT=http://127.0.0.1:8333 S3_BUCKET=b AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… \
//!  head -c 1G /dev/urandom | s3_upload_rss KEY` (PART_MB, IN_FLIGHT: other part sizes and
//! parts in flight than the defaults, 5 and 2)

use std::sync::Arc;

use pgbackman_dump::upload::{StoreTarget, upload_stream};
use pgbackman_store::s3::Limits;
use pgbackman_store::{Location, open};

fn main() {
    let key = std::env::args()
        .nth(1)
        .expect("usage: s3_upload_rss KEY < data");
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open(
            "bench",
            &Location::S3 {
                endpoint: env("S3_ENDPOINT"),
                bucket: env("S3_BUCKET"),
                prefix: String::new(),
                region: "us-east-1".into(),
            },
            None,
            &Limits {
                part_size: std::env::var("PART_MB")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .map_or(5 << 20, |m| m << 20),
                parts_in_flight: std::env::var("IN_FLIGHT")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2),
                ..Limits::default()
            },
        )
        .unwrap();
        let (dir, file) = key.rsplit_once('/').expect("KEY = DIR/FILE");
        let target = StoreTarget {
            store: Arc::clone(&store),
            prefix: dir.into(),
        };
        let t = std::time::Instant::now();
        let st = upload_stream(&target, file, std::io::stdin(), 3)
            .await
            .unwrap();
        let hwm = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap()
            .to_string();
        println!(
            "{} {} bytes sha256 {} in {:.1} s; {hwm}",
            st.key,
            st.size,
            st.sha256,
            t.elapsed().as_secs_f64()
        );
    });
}
