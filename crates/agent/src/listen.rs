//! A dedicated LISTEN connection for `pgbackman_server_<SrvID>`. Notifications are hints: each
//! one wakes the main loop with the changed table's name ("*" after a (re)connect, when anything
//! may have changed), and the loop re-reads what that table affects.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// `deadline` bounds the connection and the LISTEN statement (a frozen catalog makes it retry);
/// the reconnect backoff stops at 5 s, so notifications resume soon after an outage (the main
/// loop's re-poll covers what was missed meanwhile).
pub fn spawn(
    config: pgbackman_config::ConnConfig,
    server_id: i64,
    wake: mpsc::Sender<String>,
    deadline: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let t = tokio::time::Instant::now();
            match listen_once(&config, server_id, &wake, deadline).await {
                Ok(()) => return, // the main loop is gone
                Err(e) => {
                    // Once per lost connection: the retries of an outage go to the debug log
                    // (/healthz tells the outage).
                    if t.elapsed() > deadline * 2 {
                        backoff = Duration::from_millis(500);
                        tracing::warn!(
                            "LISTEN connection to the catalog lost: {e}; reconnecting in {}",
                            pgbackman_core::duration::human(backoff)
                        );
                    } else {
                        tracing::debug!(
                            "LISTEN connection failed: {e}; retrying in {}",
                            pgbackman_core::duration::human(backoff)
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}

async fn listen_once(
    config: &pgbackman_config::ConnConfig,
    server_id: i64,
    wake: &mpsc::Sender<String>,
    deadline: Duration,
) -> anyhow::Result<()> {
    let (client, mut conn) = tokio::time::timeout(deadline, pgbackman_db::tls::connect_raw(config))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer within {}",
                pgbackman_core::duration::human(deadline)
            )
        })?
        .map_err(|e| anyhow::anyhow!(pgbackman_db::tls::describe(&e, config)))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let table = serde_json::from_str::<serde_json::Value>(n.payload())
                        .ok()
                        .and_then(|v| v["table"].as_str().map(str::to_string))
                        .unwrap_or_else(|| "*".into());
                    if tx.send(table).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    tokio::time::timeout(deadline, pgbackman_db::agent::listen(&client, server_id))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "LISTEN got no answer within {}",
                pgbackman_core::duration::human(deadline)
            )
        })??;
    // A (re)connect may have missed notifications.
    let _ = wake.send("*".into()).await;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(table) => {
                    if wake.send(table).await.is_err() {
                        return Ok(());
                    }
                }
                None => break,
            },
            _ = wake.closed() => return Ok(()),
        }
    }
    match driver.await {
        Ok(Ok(())) => anyhow::bail!("the catalog closed the connection"),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}
