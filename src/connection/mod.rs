//! One client connection: the only code that touches a `TcpStream` (or the TLS stream over
//! one, through [`transport`]).
//!
//! A connection is one tokio task that owns the read half, the handshake, and its channels
//! (plain structs, driven method by method), plus one writer task for output the socket
//! could not take at once. The task `select!`s over socket input, its delivery inbox (fed
//! by queues), the heartbeat tick and the shutdown signal; after each batch it writes
//! coalesced confirms, re-runs dispatch on queues that got credit back, and writes
//! everything in one buffer, so socket writes are batched: itself when the writer has
//! nothing pending, through the writer otherwise (order is kept). While the writer has more
//! than [`WRITE_BACKLOG_MAX`] bytes the socket has not taken, the task takes in nothing new.
//! It turns `AmqpError`s into `channel.close` or `connection.close` according to their
//! scope, and on exit requeues what its channels held and deletes its exclusive queues.

mod handshake;
mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, access, basic as b, channel as ch, connection as c};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::broker::Broker;
use crate::broker::connections::ConnEntry;
use crate::broker::queue::{Inbox, Queue, QueueEvent};
use crate::broker::vhost::VHost;
use crate::channel::{Channel, Ctx};
use crate::error::{AmqpError, Scope};
use crate::protocol::{self, DecodeError, Frame};
use handshake::{Opened, Refused};
use transport::{SocketWrite, TlsWrite};

/// How long to wait for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Read buffer sizes: an idle connection keeps a small buffer (memory per connection
/// matters), one whose reads fill it gets the full size. Reads are capped at 16 KiB on
/// purpose: bigger ones let a publisher outrun its consumer onto another worker, and on two
/// cores the cross-core hand-off per message cost more than it gained (measured: S1 780k →
/// 180k msg/s with 256 KiB reads).
const MIN_READ: usize = 2 * 1024;
const MAX_READ: usize = 16 * 1024;
/// Deliveries taken from the inbox per wake-up before input gets a turn again.
const INBOX_BATCH: usize = 512;
/// Output the writer task may hold that the socket has not taken yet. Past it the
/// connection reads neither client frames nor its delivery inbox until the writer is down
/// to half: a peer that does not read cannot make the broker buffer without bound, and the
/// queues of a stalled no-ack consumer keep their messages (paged, within their memory
/// budget) instead of moving them all into this connection's buffer. The kernel's socket
/// buffer comes on top, so this only needs to cover one batch.
const WRITE_BACKLOG_MAX: usize = 1 << 20;

/// With the `test-hooks` feature (tests only), declaring a queue of this name panics in the
/// connection's task.
#[cfg(feature = "test-hooks")]
pub const TEST_PANIC_QUEUE: &str = "warren.test.panic";

/// Bytes handed to the writer task and not yet written to the socket.
#[derive(Debug, Default)]
struct Backlog {
    bytes: AtomicUsize,
    /// Signalled when `bytes` falls to half of [`WRITE_BACKLOG_MAX`] or below.
    drained: Notify,
}

impl Backlog {
    fn over(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > WRITE_BACKLOG_MAX
    }
}

/// What the handshake needs to know of the transport: EXTERNAL is offered on TLS only,
/// and logs in as the name read from a verified client certificate.
#[derive(Debug, Default)]
pub(crate) struct Security {
    /// The connection is AMQPS.
    pub tls: bool,
    /// The user name from the client's verified certificate (`ssl_cert_login_from`), when
    /// it sent one.
    pub cert_user: Option<String>,
}

/// Serves one accepted socket until it closes.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(broker.config.handshake_timeout);
    let local = stream.local_addr().unwrap_or(peer);
    let (rd, wr) = stream.into_split();
    let ends = Ends { peer, local };
    let security = Security::default();
    serve_socket(rd, Arc::new(wr), security, ends, broker, shutdown, deadline).await;
}

/// Serves one socket accepted on an AMQPS listener: the TLS handshake, then as [`run`].
/// The handshake timeout covers both handshakes, so a client that never sends its
/// ClientHello does not hold the task. A failed TLS handshake ends this socket only.
pub async fn run_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(broker.config.handshake_timeout);
    let local = stream.local_addr().unwrap_or(peer);
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Ok(Ok(s)) => s,
    };
    // Any certificate here was verified by rustls against `cacertfile`: with
    // `verify_peer` off none is asked for.
    let cert_user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|c| crate::tls::login_name(c, broker.config.ssl_cert_login_from));
    let security = Security {
        tls: true,
        cert_user,
    };
    let (rd, wr) = tokio::io::split(tls);
    let ends = Ends { peer, local };
    serve_socket(rd, TlsWrite(wr), security, ends, broker, shutdown, deadline).await;
}

/// The socket's two addresses.
#[derive(Clone, Copy)]
struct Ends {
    peer: SocketAddr,
    local: SocketAddr,
}

/// The AMQP handshake (by `deadline`), then the connection until it closes.
async fn serve_socket<R, W>(
    mut rd: R,
    mut wr: W,
    security: Security,
    Ends { peer, local }: Ends,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    deadline: Instant,
) where
    R: AsyncRead + Unpin + Send,
    W: SocketWrite,
{
    let mut rbuf = BytesMut::with_capacity(MIN_READ);
    let mut opened = match tokio::time::timeout_at(
        deadline,
        handshake::run(&mut rd, &mut wr, &mut rbuf, &broker, peer, &security),
    )
    .await
    {
        Err(_) => {
            tracing::info!(%peer, "handshake timed out");
            return;
        }
        Ok(Err(Refused::Silent(why))) => {
            tracing::info!(%peer, "closing connection during handshake: {why}");
            return;
        }
        Ok(Err(Refused::Close(e))) => {
            tracing::warn!(%peer, code = e.code, "closing connection during handshake: {}", e.text);
            let mut out = BytesMut::new();
            write_connection_close(&mut out, &e);
            if wr.write_all(&out).await.is_ok() {
                let _ = wr.flush().await;
            }
            // Give the client a moment to read the close before the socket goes.
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_secs(1), rd.read(&mut sink)).await;
            return;
        }
        Ok(Ok(o)) => o,
    };
    let id = broker.next_connection_id();
    tracing::info!(%peer, user = %opened.user, vhost = %opened.vhost.name, "connection opened");
    // Listed (and closable from outside) until this task ends; the guard unregisters it.
    let registered = broker.connections.register(
        ConnEntry::new(
            id,
            peer,
            local,
            &opened.user,
            &opened.vhost.name,
            std::mem::take(&mut opened.client_properties),
            (opened.frame_max, opened.channel_max, opened.heartbeat),
        )
        .with_mechanism(opened.mechanism)
        .with_ssl(security.tls),
    );
    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    let direct = wr.direct();
    let writer = tokio::spawn(write_loop(wr, writer_rx, backlog.clone()));
    let watermark = broker.watermark();
    let alarms = broker.alarms.clone();
    let mut conn = Connection {
        id,
        peer,
        broker,
        vhost: opened.vhost.clone(),
        opened,
        channels: HashMap::default(),
        // Grows with the first batch of output; idle connections keep nothing.
        out: BytesMut::new(),
        inbox: Inbox::default(),
        kicks: Vec::new(),
        writer_tx,
        wr: direct,
        backlog,
        closing: None,
        watermark,
        registry: registered.entry.clone(),
        alarms,
        held: None,
        sent_blocked: false,
    };
    let mut inbox = None;
    conn.serve(rd, rbuf, &mut inbox, shutdown).await;
    // Even if a panic left the connection's state inconsistent, the writer is awaited and
    // the process goes on.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.cleanup(inbox))).is_err() {
        tracing::error!(%peer, "connection cleanup panicked");
    }
    drop(conn);
    drop(registered);
    let _ = writer.await;
}

/// After the connection ended on our side (a close handshake completed, or a framing error
/// after which the input can no longer be parsed): the last frame is on its way. Read and
/// discard until the client closes (or a timeout), because closing a socket with unread
/// input makes the kernel reset it, and a reset can destroy that frame before the client
/// reads it.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn write_loop<W: SocketWrite>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    backlog: Arc<Backlog>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 64).await > 0 {
        for chunk in batch.drain(..) {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            let left = backlog.bytes.fetch_sub(chunk.len(), Ordering::AcqRel) - chunk.len();
            if left <= WRITE_BACKLOG_MAX / 2 {
                backlog.drained.notify_one();
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
    // TCP: the write side shuts down (FIN) when the connection has dropped its handle too.
    wr.shutdown().await;
}

fn write_connection_close(out: &mut BytesMut, e: &AmqpError) {
    protocol::write_method(
        out,
        0,
        &AMQPClass::Connection(c::AMQPMethod::Close(c::Close {
            reply_code: e.code,
            reply_text: e.text.as_str().into(),
            class_id: e.class_id,
            method_id: e.method_id,
        })),
    );
}

/// Hashes channel ids for the connection's channel map, which is looked up on every frame.
/// SipHash guards against chosen keys, but ids are bounded by `channel_max`, so the worst a
/// client can do is a 2047-entry map; a Fibonacci multiply spreads the ids over the high
/// bits the table probes by, at a fraction of SipHash's cost.
#[derive(Default, Clone, Copy)]
struct ChannelIds;

#[derive(Default)]
struct ChannelIdHasher(u64);

impl std::hash::BuildHasher for ChannelIds {
    type Hasher = ChannelIdHasher;
    fn build_hasher(&self) -> ChannelIdHasher {
        ChannelIdHasher(0)
    }
}

impl std::hash::Hasher for ChannelIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id);
    }
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

struct Connection {
    id: u64,
    peer: SocketAddr,
    broker: Arc<Broker>,
    vhost: Arc<VHost>,
    opened: Opened,
    channels: HashMap<u16, Channel, ChannelIds>,
    out: BytesMut,
    inbox: Inbox,
    kicks: Vec<Arc<Queue>>,
    writer_tx: mpsc::UnboundedSender<Bytes>,
    /// The socket's write half, shared with the writer task: a batch is written here
    /// directly when the writer has nothing pending, saving a hand-off per batch. `None`
    /// once the connection stopped writing (the writer finishes and the socket closes),
    /// and always for TLS, whose stream only the writer task writes.
    wr: Option<Arc<OwnedWriteHalf>>,
    /// What the writer holds that the socket has not taken.
    backlog: Arc<Backlog>,
    /// Set once `connection.close` was sent: the deadline for the client's close-ok.
    closing: Option<Instant>,
    /// The message log's durable watermark: confirms of persistent messages wait for it.
    watermark: Option<crate::store::Watermark>,
    /// This connection's entry in the broker's registry: its channel count is kept there,
    /// and a close requested through it (management API) ends the connection with 320.
    registry: Arc<ConnEntry>,
    /// The broker's resource alarms: a publish that arrives while one is raised is held
    /// here, and nothing more is read from the socket until they clear (RabbitMQ's
    /// `blocked` state; consumers on this connection are still served).
    alarms: Arc<crate::alarms::Alarms>,
    held: Option<Frame>,
    /// `connection.blocked` was sent for the held publish: `unblocked` follows the clear.
    sent_blocked: bool,
}

/// Why the main loop stopped.
#[derive(PartialEq, Eq)]
enum Stop {
    /// Closed normally (our close answered with close-ok, or the peer went away).
    Done,
    /// The client closed and we answered close-ok: more of its input may still arrive.
    Answered,
    /// The input could not be decoded: `connection.close` was sent, the rest is unreadable.
    Broken,
    /// Handling it panicked: a 541 `connection.close` is queued, nothing else is trusted.
    Panicked,
}

macro_rules! ctx {
    ($self:ident) => {
        Ctx {
            conn_id: $self.id,
            vhost: &$self.vhost,
            user: &$self.opened.user,
            impersonator: $self.opened.impersonator,
            auth: &$self.broker.auth,
            out: &mut $self.out,
            inbox: &mut $self.inbox,
            frame_max: $self.opened.frame_max,
            max_message_size: $self.broker.config.max_message_size,
            content_budget: &$self.broker.content_budget,
            max_transaction_bytes: $self.broker.config.max_transaction_bytes,
            kicks: &mut $self.kicks,
        }
    };
}

impl Connection {
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        mut rd: R,
        mut rbuf: BytesMut,
        inbox: &mut Option<mpsc::UnboundedReceiver<QueueEvent>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let hb = self.opened.heartbeat;
        let period = if hb == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(u64::from(hb) * 500)
        };
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        // Frames the client pipelined behind connection.open.
        match self.guarded(|c| c.drain_frames(&mut rbuf, inbox)) {
            Ok(()) => {}
            Err(Stop::Panicked) => return self.end_after_panic(&mut rd).await,
            Err(stop) => return self.end_stopped(stop, &mut rd).await,
        }
        self.flush();
        let mut events = Vec::new();
        let mut watermark = self.watermark.clone();
        let mut read_size = MIN_READ;
        let backlog = self.backlog.clone();
        let registry = self.registry.clone();
        let mut alarms = self.alarms.subscribe();
        loop {
            // The peer is not reading: take in nothing until it does.
            let backed_up = backlog.over();
            let deadline = self
                .closing
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400));
            // The oldest log record a publisher confirm waits for, if any.
            let confirm_wait = self
                .channels
                .values()
                .filter_map(Channel::confirm_wait)
                .min();
            if rbuf.capacity() - rbuf.len() < read_size {
                rbuf.reserve(read_size);
            }
            let spare = rbuf.capacity() - rbuf.len();
            if inbox.is_none() {
                *inbox = self.inbox.take_receiver();
            }
            tokio::select! {
                // Persistent messages reached the disk: their confirms go out in `flush`.
                _ = async {
                    match (watermark.as_mut(), confirm_wait) {
                        (Some(wm), Some(seq)) => { let _ = wm.wait(seq).await; }
                        _ => std::future::pending::<()>().await,
                    }
                }, if confirm_wait.is_some() => {}
                // Shutdown: tell the client why, then wait for close-ok like any close.
                _ = shutdown.changed(), if self.closing.is_none() => {
                    self.close_connection(AmqpError::connection_forced(
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
                // Closed from outside (management API): as at shutdown, with the given reason.
                reason = registry.close_requested(), if self.closing.is_none() => {
                    self.close_connection(AmqpError::connection_forced(reason));
                }
                // The writer got the backlog down: the peer is reading, so it is alive.
                _ = backlog.drained.notified(), if backed_up => {
                    last_read = Instant::now();
                }
                // Deliveries and cancellations from queues.
                n = async {
                    match inbox.as_mut() {
                        Some(rx) => rx.recv_many(&mut events, INBOX_BATCH).await,
                        None => std::future::pending().await,
                    }
                }, if !backed_up => {
                    if n == 0 { break; }
                    let handled = self.guarded(|c| {
                        for ev in events.drain(..) {
                            c.handle_event(ev);
                        }
                        Ok(())
                    });
                    if handled.is_err() {
                        // What the panic left undelivered goes back to its queues.
                        for ev in events.drain(..) {
                            if let QueueEvent::Deliver { queue, entry, consumer, .. } = ev {
                                queue.requeue_unsent(entry, consumer.no_ack);
                                self.kicks.push(queue);
                            }
                        }
                        self.end_after_panic(&mut rd).await;
                        break;
                    }
                }
                // The alarms cleared: the held publish goes on, then the input behind it.
                _ = async { let _ = alarms.wait_for(|raised| *raised == 0).await; },
                    if self.held.is_some() && self.closing.is_none() => {
                    last_read = Instant::now();
                    if let Err(stop) = self.guarded(|c| c.unblock(&mut rbuf, inbox)) {
                        self.end(stop, &mut rd).await;
                        break;
                    }
                }
                // Client input: decode every whole frame that arrived. Not while a publish is
                // held for an alarm (unless the connection is closing: its close-ok must be
                // read).
                r = rd.read_buf(&mut rbuf), if !backed_up && (self.held.is_none() || self.closing.is_some()) => {
                    match r {
                        Ok(0) | Err(_) => {
                            tracing::debug!(peer = %self.peer, "socket closed by peer");
                            break;
                        }
                        Ok(n) => {
                            if n == spare {
                                read_size = (read_size * 2).min(MAX_READ);
                            }
                            last_read = Instant::now();
                            if let Err(stop) = self.guarded(|c| c.drain_frames(&mut rbuf, inbox)) {
                                self.end(stop, &mut rd).await;
                                break;
                            }
                        }
                    }
                }
                // Heartbeats: send every interval/2; a peer silent for two intervals is gone.
                // (Not counted while blocked: the input is not being read, as in RabbitMQ.)
                _ = tick.tick(), if hb != 0 => {
                    if !backed_up
                        && self.held.is_none()
                        && last_read.elapsed() > Duration::from_secs(u64::from(hb) * 2)
                    {
                        tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {hb}s");
                        break;
                    }
                    protocol::write_heartbeat(&mut self.out);
                }
                _ = tokio::time::sleep_until(deadline), if self.closing.is_some() => {
                    tracing::debug!(peer = %self.peer, "no close-ok in time");
                    break;
                }
            }
            if self
                .guarded(|c| {
                    c.flush();
                    Ok(())
                })
                .is_err()
            {
                self.end_after_panic(&mut rd).await;
                return;
            }
        }
        self.flush();
    }

    /// Ends serving after `stop`, however it came.
    async fn end<R: AsyncRead + Unpin>(&mut self, stop: Stop, rd: &mut R) {
        if stop == Stop::Panicked {
            self.end_after_panic(rd).await;
        } else {
            self.end_stopped(stop, rd).await;
        }
    }

    /// Flushes what the last frames produced and, when more client input may follow what
    /// ended the connection, lingers.
    async fn end_stopped<R: AsyncRead + Unpin>(&mut self, stop: Stop, rd: &mut R) {
        self.flush();
        if matches!(stop, Stop::Broken | Stop::Answered) {
            // Let the writer send the close (or close-ok) and a FIN, so a client waiting for
            // the socket to close sees it at once; then read until the client closes. After
            // a client's close too: amqplib sends connection.close ahead of publishes still
            // in its buffer, and dropping those unread would reset the socket before it
            // reads our close-ok (its callback would never fire).
            self.writer_tx = mpsc::unbounded_channel().0;
            self.wr = None;
            linger(rd).await;
        }
    }

    /// Runs `f`, turning a panic inside it into [`Stop::Panicked`]: a bug met while handling
    /// one connection's input must end that connection only, never the process, and what
    /// its channels hold must still go back to the queues (`cleanup` runs as usual). The
    /// 541 close is written here; the caller stops serving with [`Self::end_after_panic`].
    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> Result<(), Stop>) -> Result<(), Stop> {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        let Err(payload) = caught else {
            return caught.unwrap_or(Ok(()));
        };
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        tracing::error!(peer = %self.peer, "connection handler panicked: {what}; closing this connection only");
        // The batch in progress may be half written: nothing of it goes out.
        self.out.clear();
        let close = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.close_connection(AmqpError::internal_error(
                "the broker met an internal error handling this connection",
            ));
        }));
        if close.is_err() {
            tracing::error!(peer = %self.peer, "releasing channels after a panic panicked too");
            self.out.clear();
            write_connection_close(
                &mut self.out,
                &AmqpError::internal_error(
                    "the broker met an internal error handling this connection",
                ),
            );
        }
        Err(Stop::Panicked)
    }

    /// After a panic: sends the 541 close and lets the client read it before the socket
    /// goes, as after a framing error (nothing it sends is trusted any more).
    async fn end_after_panic<R: AsyncRead + Unpin>(&mut self, rd: &mut R) {
        if self
            .guarded(|c| {
                c.flush();
                Ok(())
            })
            .is_err()
        {
            return;
        }
        self.writer_tx = mpsc::unbounded_channel().0;
        self.wr = None;
        linger(rd).await;
    }

    /// Ends a batch: coalesced confirms, dispatch on queues that got credit back, and one
    /// write to the socket.
    fn flush(&mut self) {
        for chan in self.channels.values_mut() {
            chan.flush_confirms(&mut self.out, self.watermark.as_ref());
        }
        for q in self.kicks.drain(..) {
            q.dispatch();
        }
        if self.out.is_empty() {
            return;
        }
        // With nothing pending in the writer (it subtracts what it has written), order is
        // kept by writing here; what the socket does not take goes to the writer.
        if self.backlog.bytes.load(Ordering::Acquire) == 0
            && let Some(wr) = &self.wr
            && let Ok(n) = wr.try_write(&self.out)
        {
            if n == self.out.len() {
                // Reused for the next batch, unless one large batch grew it.
                self.out.clear();
                if self.out.capacity() > 64 * 1024 {
                    self.out = BytesMut::new();
                }
                return;
            }
            bytes::Buf::advance(&mut self.out, n);
        }
        let pending = self.out.len();
        self.backlog.bytes.fetch_add(pending, Ordering::AcqRel);
        let _ = self.writer_tx.send(self.out.split().freeze());
        // Room for a batch like this one, so a busy connection does not grow its buffer
        // frame by frame, while an idle one keeps only a little.
        self.out.reserve(pending.clamp(256, 64 * 1024));
    }

    /// Handles every whole frame in `rbuf`. `inbox` is this connection's queue events.
    fn drain_frames(
        &mut self,
        rbuf: &mut BytesMut,
        inbox: &mut Option<mpsc::UnboundedReceiver<QueueEvent>>,
    ) -> Result<(), Stop> {
        loop {
            if self.held.is_some() {
                if self.closing.is_none() {
                    return Ok(());
                }
                // Closing: only close / close-ok count now, the publish is dropped unrouted.
                self.held = None;
            }
            match protocol::decode(rbuf, self.opened.frame_max) {
                Ok(Some(frame)) => {
                    // A resource alarm: the publish waits, and so does everything behind it.
                    if matches!(frame, Frame::Publish { .. })
                        && self.alarms.raised() != 0
                        && self.closing.is_none()
                    {
                        self.block();
                        self.held = Some(frame);
                        return Ok(());
                    }
                    if let (Some(rx), Frame::Method { method, .. }) = (inbox.as_mut(), &frame)
                        && matches!(**method, AMQPClass::Basic(b::AMQPMethod::Cancel(_)))
                    {
                        // Deliveries a queue already sent this way go out before the
                        // cancel-ok, to the consumer being cancelled, as RabbitMQ does
                        // (and the spec allows); requeueing them instead would leave
                        // them waiting for another consumer.
                        while let Ok(ev) = rx.try_recv() {
                            self.handle_event(ev);
                        }
                    }
                    self.handle_frame(frame)?
                }
                Ok(None) => return Ok(()),
                Err(DecodeError::Amqp(e)) => {
                    if self.closing.is_none() {
                        self.close_connection(e);
                    }
                    // Nothing after a framing error can be trusted.
                    return Err(Stop::Broken);
                }
                Err(DecodeError::Drop(why)) => {
                    tracing::warn!(peer = %self.peer, "closing connection: {why}");
                    return Err(Stop::Done);
                }
                // The frame was whole and is consumed: the stream is still in step.
                Err(DecodeError::Refused { channel, error }) => {
                    if self.closing.is_none() {
                        self.fail(channel, error)?;
                    }
                }
            }
        }
    }

    /// Enters RabbitMQ's `blocked` state for a publish held by an alarm.
    fn block(&mut self) {
        self.registry.blocked.store(true, Ordering::Relaxed);
        if self.opened.blocked_notify {
            let reason = crate::alarms::reason(self.alarms.raised());
            self.send0(c::AMQPMethod::Blocked(c::Blocked {
                reason: reason.into(),
            }));
            self.sent_blocked = true;
        }
        tracing::info!(peer = %self.peer, "publisher blocked by a resource alarm");
    }

    /// The alarms cleared: `connection.unblocked` if `blocked` was sent, then the held
    /// publish and the input buffered behind it.
    fn unblock(
        &mut self,
        rbuf: &mut BytesMut,
        inbox: &mut Option<mpsc::UnboundedReceiver<QueueEvent>>,
    ) -> Result<(), Stop> {
        self.registry.blocked.store(false, Ordering::Relaxed);
        if std::mem::take(&mut self.sent_blocked) {
            self.send0(c::AMQPMethod::Unblocked(c::Unblocked {}));
        }
        if let Some(frame) = self.held.take() {
            self.handle_frame(frame)?;
        }
        self.drain_frames(rbuf, inbox)
    }

    fn handle_event(&mut self, ev: QueueEvent) {
        match ev {
            QueueEvent::Deliver {
                channel,
                consumer,
                queue,
                entry,
            } => match self.channels.get_mut(&channel) {
                Some(chan) if self.closing.is_none() => {
                    chan.handle_delivery(&mut ctx!(self), consumer, queue, entry);
                }
                _ => {
                    queue.requeue_unsent(entry, consumer.no_ack);
                    self.kicks.push(queue);
                }
            },
            QueueEvent::Reply {
                channel,
                consumer_tag,
                msg,
            } => {
                if let Some(chan) = self.channels.get_mut(&channel) {
                    chan.handle_reply(&mut ctx!(self), &consumer_tag, &msg);
                }
            }
            QueueEvent::Cancelled { channel, consumer } => {
                if let Some(chan) = self.channels.get_mut(&channel)
                    && chan.consumer_cancelled(&consumer)
                    && self.opened.cancel_notify
                    && !chan.is_closing()
                {
                    protocol::write_method(
                        &mut self.out,
                        channel,
                        &AMQPClass::Basic(b::AMQPMethod::Cancel(b::Cancel {
                            consumer_tag: consumer.tag.as_ref().into(),
                            nowait: true,
                        })),
                    );
                }
            }
        }
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), Stop> {
        if self.closing.is_some() {
            // spec: after connection.close, everything but close / close-ok is discarded.
            if let Frame::Method { channel: 0, method } = &frame {
                match **method {
                    AMQPClass::Connection(c::AMQPMethod::CloseOk(_)) => return Err(Stop::Done),
                    AMQPClass::Connection(c::AMQPMethod::Close(_)) => {
                        self.send0(c::AMQPMethod::CloseOk(c::CloseOk {}));
                        return Err(Stop::Answered);
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        let (channel, result) = match frame {
            Frame::Heartbeat { channel: 0 } => return Ok(()),
            // As RabbitMQ, a connection error quoting the (empty) frame.
            Frame::Heartbeat { .. } => {
                return self.fail(0, AmqpError::unexpected_frame("type 8, all octets = <<>>"));
            }
            Frame::Method { channel: 0, method } => return self.connection_method(*method),
            Frame::Method { channel, method } => (channel, self.channel_method(channel, *method)),
            Frame::Publish { channel, publish } => {
                let method = AMQPClass::Basic(b::AMQPMethod::Publish(publish));
                if channel == 0 {
                    return self.connection_method(method);
                }
                (channel, self.channel_method(channel, method))
            }
            Frame::Header {
                channel,
                properties,
                raw_properties,
                body_size,
                ids,
            } => {
                let r = match self.channels.get_mut(&channel) {
                    None => Err(AmqpError::channel_error(format!(
                        "expected 'channel.open' on channel {channel}"
                    ))),
                    Some(chan) if chan.is_closing() => Ok(()),
                    Some(chan) => chan.handle_header(
                        &mut ctx!(self),
                        ids,
                        properties,
                        raw_properties,
                        body_size,
                    ),
                };
                (channel, r)
            }
            Frame::Body { channel, payload } => {
                let r = match self.channels.get_mut(&channel) {
                    None if channel == 0 => {
                        Err(AmqpError::unexpected_frame("body frame on channel 0"))
                    }
                    None => Err(AmqpError::channel_error(format!(
                        "expected 'channel.open' on channel {channel}"
                    ))),
                    Some(chan) if chan.is_closing() => Ok(()),
                    Some(chan) => chan.handle_body(&mut ctx!(self), payload),
                };
                (channel, r)
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.fail(channel, e),
        }
    }

    fn send0(&mut self, m: c::AMQPMethod) {
        protocol::write_method(&mut self.out, 0, &AMQPClass::Connection(m));
    }

    fn connection_method(&mut self, method: AMQPClass) -> Result<(), Stop> {
        match method {
            AMQPClass::Connection(c::AMQPMethod::Close(m)) => {
                tracing::debug!(peer = %self.peer, "client closed the connection: {} {}", m.reply_code, m.reply_text);
                // Channels give back what they hold and exclusive queues go before close-ok,
                // so a client that saw close-ok finds them gone from any other connection
                // (the final cleanup, after the linger, finds nothing left to do here).
                self.release_channels();
                for q in self.vhost.exclusive_queues(self.id) {
                    self.vhost.remove_queue(&q);
                }
                for q in self.kicks.drain(..) {
                    q.dispatch();
                }
                self.send0(c::AMQPMethod::CloseOk(c::CloseOk {}));
                Err(Stop::Answered)
            }
            AMQPClass::Connection(c::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Connection(c::AMQPMethod::UpdateSecret(_)) => {
                self.send0(c::AMQPMethod::UpdateSecretOk(c::UpdateSecretOk {}));
                Ok(())
            }
            // RabbitMQ's answer to any other method on channel 0 once open, whatever its
            // class.
            other => {
                let e = AmqpError::channel_error("unexpected method in connection state running")
                    .with_method(other.get_amqp_class_id(), other.get_amqp_method_id());
                self.fail(0, e)
            }
        }
    }

    fn channel_method(&mut self, id: u16, method: AMQPClass) -> Result<(), AmqpError> {
        // Lets tests provoke a panic in a connection's task and see it contained.
        #[cfg(feature = "test-hooks")]
        if let AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(d)) = &method
            && d.queue.as_str() == TEST_PANIC_QUEUE
        {
            panic!("test hook: declared {TEST_PANIC_QUEUE}");
        }
        let ids = (method.get_amqp_class_id(), method.get_amqp_method_id());
        let with = |e: AmqpError| e.with_method(ids.0, ids.1);
        if let AMQPClass::Channel(m) = &method {
            match m {
                ch::AMQPMethod::Open(_) => {
                    if self.channels.contains_key(&id) {
                        return Err(with(AmqpError::channel_error("second 'channel.open' seen")));
                    }
                    let max = self.opened.channel_max;
                    if self.channels.len() >= usize::from(max) {
                        // As RabbitMQ: a connection error naming no method.
                        return Err(AmqpError::not_allowed(format!(
                            "number of channels opened ({}) has reached the negotiated channel_max ({max})",
                            self.channels.len()
                        )));
                    }
                    let user = &self.opened.user;
                    if let Some(max) = self.broker.auth.user(user).and_then(|u| u.max_channels)
                        && self.broker.connections.channels_of_user(user) as u64 >= max
                    {
                        return Err(AmqpError::not_allowed(format!(
                            "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
                        )));
                    }
                    self.channels.insert(
                        id,
                        Channel::new(
                            id,
                            self.broker.config.max_unacked_bytes,
                            self.registry.open_channel(id),
                        ),
                    );
                    self.registry.set_channels(self.channels.len());
                    protocol::write_method(
                        &mut self.out,
                        id,
                        &AMQPClass::Channel(ch::AMQPMethod::OpenOk(ch::OpenOk {})),
                    );
                    return Ok(());
                }
                ch::AMQPMethod::Close(_) => {
                    if let Some(mut chan) = self.channels.remove(&id) {
                        chan.shut(&mut ctx!(self));
                    }
                    self.registry.close_channel(id);
                    self.registry.set_channels(self.channels.len());
                    protocol::write_method(
                        &mut self.out,
                        id,
                        &AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                    );
                    return Ok(());
                }
                ch::AMQPMethod::CloseOk(_) => {
                    if self.channels.get(&id).is_some_and(Channel::is_closing) {
                        self.channels.remove(&id);
                        self.registry.close_channel(id);
                        self.registry.set_channels(self.channels.len());
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        let Some(chan) = self.channels.get_mut(&id) else {
            return Err(with(AmqpError::channel_error(format!(
                "expected 'channel.open' on channel {id}"
            ))));
        };
        if chan.is_closing() {
            // spec: after channel.close, discard everything but close / close-ok.
            return Ok(());
        }
        if let Some(e) = chan.content_interrupted() {
            return Err(e);
        }
        let mut ctx = ctx!(self);
        match method {
            AMQPClass::Channel(ch::AMQPMethod::Flow(f)) => {
                if !f.active {
                    return Err(with(AmqpError::not_implemented("active=false")));
                }
                protocol::write_method(
                    ctx.out,
                    id,
                    &AMQPClass::Channel(ch::AMQPMethod::FlowOk(ch::FlowOk { active: true })),
                );
                Ok(())
            }
            AMQPClass::Channel(_) => Err(with(AmqpError::command_invalid(
                "unexpected channel method",
            ))),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                protocol::write_method(
                    ctx.out,
                    id,
                    &AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Connection(_) => Err(with(AmqpError::command_invalid(
                "connection method on a channel",
            ))),
            m => chan.handle_method(&mut ctx, m).map_err(with),
        }
    }

    /// Turns an error into `channel.close` or `connection.close`, by its scope.
    fn fail(&mut self, channel: u16, e: AmqpError) -> Result<(), Stop> {
        match e.scope(channel) {
            Scope::Channel if self.channels.contains_key(&channel) => {
                tracing::info!(peer = %self.peer, channel, code = e.code, "closing channel: {}", e.text);
                if let Some(mut chan) = self.channels.remove(&channel) {
                    chan.shut(&mut ctx!(self));
                    self.channels.insert(channel, chan);
                }
                protocol::write_method(
                    &mut self.out,
                    channel,
                    &AMQPClass::Channel(ch::AMQPMethod::Close(ch::Close {
                        reply_code: e.code,
                        reply_text: e.text.as_str().into(),
                        class_id: e.class_id,
                        method_id: e.method_id,
                    })),
                );
                Ok(())
            }
            _ => {
                self.close_connection(e);
                Ok(())
            }
        }
    }

    fn close_connection(&mut self, e: AmqpError) {
        tracing::warn!(peer = %self.peer, code = e.code, "closing connection: {}", e.text);
        self.release_channels();
        write_connection_close(&mut self.out, &e);
        self.closing = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    fn release_channels(&mut self) {
        self.registry.set_channels(0);
        let mut channels = std::mem::take(&mut self.channels);
        for chan in channels.values_mut() {
            if !chan.is_closing() {
                chan.shut(&mut ctx!(self));
            }
        }
    }

    /// Final cleanup: channels give back what they hold, deliveries still in the inbox go
    /// back to their queues unchanged, exclusive queues go.
    fn cleanup(&mut self, inbox: Option<mpsc::UnboundedReceiver<QueueEvent>>) {
        self.release_channels();
        // Every consumer is detached now, so nothing new arrives; what is there was never
        // written to the client.
        let mut inbox = inbox.or_else(|| self.inbox.take_receiver());
        if let Some(rx) = &mut inbox {
            rx.close();
        }
        while let Some(Ok(ev)) = inbox.as_mut().map(|rx| rx.try_recv()) {
            if let QueueEvent::Deliver {
                queue,
                entry,
                consumer,
                ..
            } = ev
            {
                queue.requeue_unsent(entry, consumer.no_ack);
                self.kicks.push(queue);
            }
        }
        for q in self.vhost.exclusive_queues(self.id) {
            self.vhost.remove_queue(&q);
        }
        for q in self.kicks.drain(..) {
            q.dispatch();
        }
        tracing::info!(peer = %self.peer, user = %self.opened.user, vhost = %self.vhost.name, "connection closed");
    }
}
