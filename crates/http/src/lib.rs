//! The one HTTP responder of pgbackman: the agent's `/healthz` and `/metrics`, and `pgbackman
//! serve-metrics`. GET only, one request per connection, answers from memory: the handler must
//! never wait on the catalog (it reads a cache). A client that is slow to send its request or to
//! read the answer is dropped after a few seconds, so scrapers cannot pile up tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a handler answers: status line text (`"200 OK"`), content type, body.
pub type Answer = (&'static str, &'static str, String);

/// How long a client may take to send its request line and headers, and to read the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// Serves `listener` for ever: `answer(path)` for a GET, 405 for any other method.
pub async fn serve<F>(listener: TcpListener, answer: F)
where
    F: Fn(&str) -> Answer + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // The request line is all we read; a slow or silent client is dropped.
            let read = tokio::time::timeout(CLIENT_DEADLINE, async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let mut parts = req.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = match method {
                "GET" => answer(path),
                _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(CLIENT_DEADLINE, async {
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            })
            .await;
        });
    }
}
