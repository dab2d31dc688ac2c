//! A dedicated LISTEN connection for `pgbackman_server_<SrvID>`. Notifications are hints: each
//! one (and each reconnect) only wakes the main loop, which re-reads the tables.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

pub fn spawn(
    config: tokio_postgres::Config,
    server_id: i64,
    wake: mpsc::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match listen_once(&config, server_id, &wake).await {
                Ok(()) => return, // the main loop is gone
                Err(e) => {
                    tracing::warn!(
                        "LISTEN connection to the catalog lost: {e}; reconnecting in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

async fn listen_once(
    config: &tokio_postgres::Config,
    server_id: i64,
    wake: &mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("listen pgbackman_server_{server_id}"))
        .await?;
    // A (re)connect may have missed notifications: wake once.
    let _ = wake.try_send(());
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(()) => { let _ = wake.try_send(()); }
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
