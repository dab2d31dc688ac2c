//! A "node" that accepts TCP connections and never answers: what a stopped (SIGSTOP) server, a
//! proxy in front of a dead server or a black-holing firewall look like to a client. Every
//! connection to a PgSQL node must give up on it within its deadline.
//!
//! ```no_run
//! let n = pgbackman_testkit::SilentNode::start(pgbackman_testkit::Silence::AfterStartup);
//! // register 127.0.0.1:n.port() as a node; connections hang until their deadline
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the fake node stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Accepts and reads nothing, answers nothing (not even to the TLS request).
    AtOnce,
    /// Answers a TLS request with "no TLS" ('N', as a server without ssl), reads the startup
    /// message, then never answers: the client waits for the authentication request.
    AfterStartup,
    /// Answers a TLS request with "yes" ('S'), then never answers: the client waits in the TLS
    /// handshake.
    InTlsHandshake,
}

/// The fake node; stopped on drop (its connections closed).
pub struct SilentNode {
    addr: std::net::SocketAddr,
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl SilentNode {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start(silence: Silence) -> SilentNode {
        SilentNode::start_on("127.0.0.1", silence)
    }

    /// Listens on `addr` (any 127.0.0.0/8 address on Linux) on a free port.
    pub fn start_on(addr: &str, silence: Silence) -> SilentNode {
        let listener = TcpListener::bind((addr, 0)).expect("bind a free port");
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(keep) = conn.try_clone() {
                    a.lock().unwrap().push(keep);
                }
                if silence != Silence::AtOnce {
                    std::thread::spawn(move || stall(conn, silence));
                }
            }
        });
        SilentNode {
            addr,
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

/// Reads the startup-phase messages (length-prefixed, no type byte): a GSSENCRequest gets 'N',
/// an SSLRequest 'N' (or 'S', then silence, for [`Silence::InTlsHandshake`]); stops answering
/// after the startup message.
fn stall(mut conn: TcpStream, silence: Silence) {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;
    loop {
        let mut head = [0u8; 8];
        if conn.read_exact(&mut head).is_err() {
            return;
        }
        let len = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
        let code = u32::from_be_bytes(head[4..8].try_into().unwrap());
        if code == SSL_REQUEST && silence == Silence::InTlsHandshake {
            if conn.write_all(b"S").is_err() {
                return;
            }
            break;
        }
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            if conn.write_all(b"N").is_err() {
                return;
            }
            continue;
        }
        let mut rest = vec![0u8; len.saturating_sub(8).min(1 << 16)];
        let _ = conn.read_exact(&mut rest);
        break;
    }
    // Hold the connection open, say nothing.
    let mut sink = [0u8; 1024];
    while conn.read(&mut sink).is_ok_and(|n| n > 0) {}
}

impl Drop for SilentNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for c in self.accepted.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
