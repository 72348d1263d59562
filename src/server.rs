//! The accept loop: binds the listeners, spawns one task per connection, and on shutdown
//! stops accepting, tells every connection to close with 320 CONNECTION_FORCED, and waits
//! (bounded) for them to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::connection;

/// How long shutdown waits for connections to finish their close handshake.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds every configured listener.
///
/// # Errors
/// The bind error, with the address in the message (e.g. "address in use").
pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// Serves until `stop` resolves, then drains connections.
pub async fn run(
    listeners: Vec<TcpListener>,
    broker: Arc<Broker>,
    stop: impl std::future::Future<Output = ()>,
) {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut accepts = JoinSet::new();
    for l in listeners {
        let broker = broker.clone();
        let rx = shutdown_rx.clone();
        accepts.spawn(accept_loop(l, broker, rx));
    }
    stop.await;
    tracing::info!("shutting down: closing client connections");
    let _ = shutdown_tx.send(true);
    let drain = async { while accepts.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    conns.spawn(connection::run(stream, peer, broker.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
