//! The accept loop: binds the listeners, spawns one task per connection, and on shutdown
//! stops accepting, tells every connection to close with 320 CONNECTION_FORCED, and waits
//! (bounded) for them to finish. It also runs the resource alarms' monitor while it serves.
//! An AMQPS listener carries the acceptor from [`crate::tls`]; its connections do their TLS
//! handshake in their own task, never in the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::connection;

/// How long shutdown waits for connections to finish their close handshake.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds every configured listener. An IPv6 address this machine cannot bind (no IPv6
/// stack, or the address is not assigned here) is skipped with one warning, so the default
/// pair of loopback listeners (`127.0.0.1` and `[::1]`) starts on an IPv4-only machine.
///
/// # Errors
/// Any other bind error, with the address in the message (e.g. "address in use"), or
/// the skipped error when nothing could be bound at all.
pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    let mut skipped = None;
    for a in addrs {
        let e = match TcpListener::bind(a).await {
            Ok(l) => {
                out.push(l);
                continue;
            }
            Err(e) => std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")),
        };
        if a.is_ipv6() && unavailable_here(&e) {
            tracing::warn!("{e}; going on without it");
            skipped = Some(e);
            continue;
        }
        return Err(e);
    }
    match skipped {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// EADDRNOTAVAIL, or EAFNOSUPPORT (97 on Linux; std has no kind for it).
fn unavailable_here(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable
        || (cfg!(target_os = "linux") && e.raw_os_error() == Some(97))
}

/// A bound AMQP listener: plain, or AMQPS with the acceptor its connections handshake with.
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// `Some` for AMQPS.
    pub tls: Option<TlsAcceptor>,
}

impl Listener {
    /// A plain AMQP listener.
    pub fn plain(tcp: TcpListener) -> Self {
        Self { tcp, tls: None }
    }
}

/// Serves plain AMQP listeners until `stop` resolves, then drains connections.
pub async fn run(
    listeners: Vec<TcpListener>,
    broker: Arc<Broker>,
    stop: impl std::future::Future<Output = ()>,
) {
    serve(
        listeners.into_iter().map(Listener::plain).collect(),
        broker,
        stop,
    )
    .await;
}

/// Serves AMQP and AMQPS listeners until `stop` resolves, then drains connections.
pub async fn serve(
    listeners: Vec<Listener>,
    broker: Arc<Broker>,
    stop: impl std::future::Future<Output = ()>,
) {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let interval = Duration::from_millis(broker.config.memory_monitor_interval);
    let monitor = tokio::spawn(crate::alarms::monitor(broker.alarms.clone(), interval));
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
    monitor.abort();
}

async fn accept_loop(
    Listener { tcp: listener, tls }: Listener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let (b, s) = (broker.clone(), shutdown.clone());
                    match &tls {
                        None => conns.spawn(connection::run(stream, peer, b, s)),
                        Some(acceptor) => {
                            conns.spawn(connection::run_tls(stream, acceptor.clone(), peer, b, s))
                        }
                    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ipv6_address_this_machine_lacks_is_skipped_and_others_still_bind() {
        // 2001:db8::/32 is the documentation prefix: never assigned to this machine.
        let missing: SocketAddr = "[2001:db8::1]:0".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bound = bind(&[v4, missing]).await.unwrap();
        assert_eq!(bound.len(), 1);
        assert!(bound[0].local_addr().unwrap().is_ipv4());
        // Nothing bound at all is still an error, naming the address.
        let e = bind(&[missing]).await.unwrap_err();
        assert!(e.to_string().contains("2001:db8::1"), "{e}");
        // Errors other than "not here" stop the boot, whatever the family.
        let taken = bound[0].local_addr().unwrap();
        let e = bind(&[taken]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
