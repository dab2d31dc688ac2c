//! A TCP proxy in front of a real server that forwards faithfully, then goes silent with every
//! connection still open: what a node that stalls in the middle of a dump looks like to pg_dump
//! (its TCP keepalives are answered by the kernel, no byte arrives any more).
//!
//! ```no_run
//! # let pg = pgbackman_testkit::TestCluster::start_on(&["127.0.0.1"]);
//! // Each connection stalls once the server has sent it 1 MiB; the small ones never do.
//! let p = pgbackman_testkit::StallingProxy::start(pg.port(), 1 << 20);
//! // register 127.0.0.1:p.port() as the node
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The proxy; stopped on drop (all its connections closed).
pub struct StallingProxy {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl StallingProxy {
    /// Listens on 127.0.0.1 on a free port and forwards to 127.0.0.1:`upstream_port`. A
    /// connection stalls (both directions, for good) once the server has sent it more than
    /// `after_bytes`.
    pub fn start(upstream_port: u16, after_bytes: u64) -> StallingProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind a free port");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicUsize::new(0));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (s, st, so) = (stop.clone(), stalled.clone(), sockets.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                {
                    let mut keep = so.lock().unwrap();
                    keep.extend(client.try_clone());
                    keep.extend(server.try_clone());
                }
                let frozen = Arc::new(AtomicBool::new(false));
                let (f1, s1) = (frozen.clone(), s.clone());
                std::thread::spawn(move || pump(client, server, u64::MAX, &f1, &s1, None));
                let (f2, s2_, st2) = (frozen, s.clone(), st.clone());
                std::thread::spawn(move || pump(s2, c2, after_bytes, &f2, &s2_, Some(&st2)));
            }
        });
        StallingProxy {
            addr,
            stop,
            stalled,
            sockets,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections have stalled so far.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until either ends, or until `limit` bytes would be passed or the
/// connection is frozen by the other direction; then holds both open, reading nothing.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: u64,
    frozen: &AtomicBool,
    stop: &AtomicBool,
    stalled: Option<&AtomicUsize>,
) {
    let mut buf = [0u8; 16 * 1024];
    let mut passed = 0u64;
    // A short read timeout, so a frozen connection is noticed by both directions.
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    while !frozen.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        if passed + n as u64 > limit {
            frozen.store(true, Ordering::SeqCst);
            if let Some(s) = stalled {
                s.fetch_add(1, Ordering::SeqCst);
            }
            break;
        }
        passed += n as u64;
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    // Silent, connection kept (the sockets are closed on drop).
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for c in self.sockets.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
