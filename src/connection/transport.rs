//! The two sockets a connection runs on, plain TCP and TLS, behind the one small trait the
//! handshake and the writer task write through ([`SocketWrite`]). The read half only needs
//! `AsyncRead`.
//!
//! Everything is generic and monomorphised: the TCP path compiles to exactly the calls it
//! made before TLS existed (`writable()` + `try_write` on an `OwnedWriteHalf`), with no
//! dynamic dispatch. The one difference between the two is [`SocketWrite::direct`]: a TCP
//! connection writes a batch itself when its writer task has nothing pending, while a TLS
//! stream cannot be written from two tasks, so all its output goes through the writer.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_rustls::server::TlsStream;

/// A socket's write side, owned by the handshake and then by the writer task.
pub(crate) trait SocketWrite: Send + 'static {
    /// The half the connection task may `try_write` to when the writer task has nothing
    /// pending (order is kept because the writer is then idle). `None`: every write goes
    /// through the writer task.
    fn direct(&self) -> Option<Arc<OwnedWriteHalf>>;

    /// Writes all of `buf`, waiting for the socket as needed.
    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;

    /// Pushes out what `write_all` may have buffered, at the end of a batch.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_;

    /// Ends the write side once the connection is done with it.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send + '_;
}

impl SocketWrite for Arc<OwnedWriteHalf> {
    fn direct(&self) -> Option<Arc<OwnedWriteHalf>> {
        Some(self.clone())
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // `&self` I/O: the connection task may `try_write` the same half when the writer is
        // idle, which `AsyncWrite`'s `&mut self` would not allow.
        let mut at = 0;
        while at < buf.len() {
            self.writable().await?;
            match self.try_write(&buf[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) {
        // The FIN goes when the connection drops its handle too (the last `Arc`).
    }
}

/// The write half of a server-side TLS stream.
pub(crate) struct TlsWrite(pub(crate) WriteHalf<TlsStream<TcpStream>>);

impl SocketWrite for TlsWrite {
    fn direct(&self) -> Option<Arc<OwnedWriteHalf>> {
        None
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.0.flush().await
    }

    async fn shutdown(&mut self) {
        // close_notify, then FIN: a client waiting for the socket to close sees it.
        let _ = self.0.shutdown().await;
    }
}
