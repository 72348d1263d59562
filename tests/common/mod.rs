//! Test harness: a real Warren on 127.0.0.1:0 (in-process, with a temp data dir), lapin
//! helpers, and a raw-socket client for malformed input.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, connection as c};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use warren::broker::Broker;
use warren::config::Config;

/// A running broker; stops when dropped.
pub struct TestBroker {
    pub addr: SocketAddr,
    /// The management HTTP API, when started with it.
    pub http: Option<SocketAddr>,
    /// The Prometheus endpoint, started with the management API.
    pub metrics: Option<SocketAddr>,
    /// The broker itself, for tests that set users, vhosts and permissions up directly.
    pub broker: Arc<Broker>,
    pub _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_store(tweak, warren::store::StoreOptions::default()).await
    }

    /// With the management API on 127.0.0.1:0 (its address in `http`).
    /// Statistics are sampled every 50 ms, so tests see totals and rates move soon.
    pub async fn start_with_management() -> Self {
        let tweak = |c: &mut Config| c.management.collect_statistics_interval = 50;
        Self::start_full(tweak, warren::store::StoreOptions::default(), true).await
    }

    pub async fn start_with_store(
        tweak: impl FnOnce(&mut Config),
        store: warren::store::StoreOptions,
    ) -> Self {
        Self::start_full(tweak, store, false).await
    }

    async fn start_full(
        tweak: impl FnOnce(&mut Config),
        store: warren::store::StoreOptions,
        management: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            listeners: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        };
        tweak(&mut config);
        let listeners = warren::server::bind(&config.listeners).await.unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let broker = Arc::new(Broker::open_with(config, store).unwrap());
        let (tx, rx) = oneshot::channel();
        let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
        let mut http = None;
        let mut metrics = None;
        if management {
            let l = warren::metrics::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            metrics = Some(l.local_addr().unwrap());
            let mut rx = http_stopped.clone();
            tokio::spawn(warren::metrics::serve(
                l,
                broker.clone(),
                warren::node_name().into(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ));
            let l = warren::http::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let at = l.local_addr().unwrap();
            http = Some(at);
            let api = warren::http::Api::new(broker.clone(), vec![addr], at);
            let mut rx = http_stopped;
            tokio::spawn(warren::http::serve(l, api, async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
        }
        let done = tokio::spawn(warren::server::run(listeners, broker.clone(), async move {
            let _ = rx.await;
            let _ = stop_http.send(true);
        }));
        Self {
            addr,
            http,
            metrics,
            broker,
            _dir: dir,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Connects as `user` / `pass` to `vhost`.
    pub async fn connect_as(
        &self,
        user: &str,
        pass: &str,
        vhost: &str,
    ) -> Result<Connection, lapin::Error> {
        let vhost: String = vhost
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        Connection::connect(
            &format!("amqp://{user}:{pass}@{}/{vhost}", self.addr),
            ConnectionProperties::default(),
        )
        .await
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.uri(), ConnectionProperties::default())
            .await
            .unwrap()
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        (conn, ch)
    }

    /// Asks the server to shut down and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            d.await.unwrap();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The reply code of a lapin error raised by the broker.
pub fn code(e: &lapin::Error) -> u16 {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(e) => e.get_id(),
        other => panic!("not a protocol error: {other:?}"),
    }
}

/// A unique name for this test.
pub fn name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

pub const WAIT: Duration = Duration::from_secs(5);

/// A passive `queue.declare`: the queue's counts, or the broker's error (404 once it is
/// gone).
pub async fn passive_declare(ch: &Channel, q: &str) -> Result<lapin::Queue, lapin::Error> {
    ch.queue_declare(
        q.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Messages ready in `q`.
pub async fn ready(ch: &Channel, q: &str) -> u32 {
    passive_declare(ch, q).await.unwrap().message_count()
}

/// A raw AMQP client for malformed input.
pub struct Raw {
    pub sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// A client whose socket receive buffer is as small as the kernel allows: one that
    /// stops reading is felt by the broker at once.
    pub async fn open_small_window(addr: SocketAddr) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut r = Self {
            sock: sock.connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        };
        r.handshake(2047, 131072, 0).await;
        r
    }

    /// Performs the handshake with the given tune-ok values, returning the server's tune.
    pub async fn open(addr: SocketAddr) -> Self {
        let mut r = Self::connect(addr).await;
        r.handshake(2047, 131072, 0).await;
        r
    }

    pub async fn handshake(
        &mut self,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> Option<AMQPClass> {
        self.handshake_from(b"AMQP\x00\x00\x09\x01", channel_max, frame_max, heartbeat)
            .await
            .1
    }

    /// The handshake after sending `header`: returns connection.start and what answered
    /// connection.open.
    pub async fn handshake_from(
        &mut self,
        header: &[u8; 8],
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> (AMQPClass, Option<AMQPClass>) {
        self.login(
            header,
            ("guest", "guest", "/"),
            (channel_max, frame_max, heartbeat),
        )
        .await
    }

    /// Connects and logs in as (user, password, vhost); returns what answered
    /// connection.open.
    pub async fn open_as(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        vhost: &str,
    ) -> (Self, Option<AMQPClass>) {
        let mut r = Self::connect(addr).await;
        let (_, opened) = r
            .login(
                b"AMQP\x00\x00\x09\x01",
                (user, pass, vhost),
                (2047, 131072, 0),
            )
            .await;
        (r, opened)
    }

    /// The handshake after sending `header`, with (user, password, vhost) and the tune-ok
    /// values (channel_max, frame_max, heartbeat).
    pub async fn login(
        &mut self,
        header: &[u8; 8],
        (user, pass, vhost): (&str, &str, &str),
        (channel_max, frame_max, heartbeat): (u16, u32, u16),
    ) -> (AMQPClass, Option<AMQPClass>) {
        self.send_raw(header).await;
        let start = self.expect_method().await;
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send(
            0,
            AMQPClass::Connection(c::AMQPMethod::StartOk(c::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(format!("\0{user}\0{pass}").into_bytes()),
                locale: "en_US".into(),
            })),
        )
        .await;
        self.expect_method().await; // tune
        self.send(
            0,
            AMQPClass::Connection(c::AMQPMethod::TuneOk(c::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })),
        )
        .await;
        self.send(
            0,
            AMQPClass::Connection(c::AMQPMethod::Open(c::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
        (start, self.next_method().await)
    }

    /// Opens channel `ch` and waits for open-ok.
    pub async fn open_channel(&mut self, ch: u16) {
        self.send(
            ch,
            AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
                Default::default(),
            )),
        )
        .await;
        self.expect_method().await;
    }

    /// Publishes a whole message (method, header, body) on channel `ch`.
    pub async fn publish(
        &mut self,
        ch: u16,
        publish: amq_protocol::protocol::basic::Publish,
        props: &amq_protocol::protocol::BasicProperties,
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        warren::protocol::write_method(
            &mut out,
            ch,
            &AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(publish)),
        );
        warren::protocol::write_content(
            &mut out,
            ch,
            &warren::protocol::encode_properties(props),
            body,
            131072,
        );
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, channel: u16, m: AMQPClass) {
        let mut out = BytesMut::new();
        warren::protocol::write_method(&mut out, channel, &m);
        self.send_raw(&out).await;
    }

    /// Next frame, or None when the socket closes (or nothing arrives in time).
    pub async fn frame(&mut self) -> Option<AMQPFrame> {
        loop {
            if let Ok((rest, f)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                let _ = self.buf.split_to(used);
                return Some(f);
            }
            match tokio::time::timeout(WAIT, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Next method frame (skipping heartbeats, headers and bodies).
    pub async fn next_method(&mut self) -> Option<AMQPClass> {
        loop {
            match self.frame().await? {
                AMQPFrame::Method(_, m) => return Some(m),
                _ => continue,
            }
        }
    }

    pub async fn expect_method(&mut self) -> AMQPClass {
        self.next_method().await.expect("a method frame")
    }

    /// Reads until `connection.close` and returns its code, checking the socket then closes
    /// once close-ok is sent.
    pub async fn expect_connection_close(&mut self) -> u16 {
        loop {
            match self.next_method().await {
                Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => {
                    self.send(
                        0,
                        AMQPClass::Connection(c::AMQPMethod::CloseOk(c::CloseOk {})),
                    )
                    .await;
                    assert!(
                        self.frame().await.is_none(),
                        "socket should close after close-ok"
                    );
                    return cl.reply_code;
                }
                Some(_) => continue,
                None => panic!("socket closed without connection.close"),
            }
        }
    }

    /// Reads until `channel.close` and returns (channel, code, class, method).
    pub async fn expect_channel_close(&mut self) -> (u16, u16, u16, u16) {
        loop {
            match self.frame().await.expect("a frame") {
                AMQPFrame::Method(
                    ch,
                    AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(cl)),
                ) => {
                    return (ch, cl.reply_code, cl.class_id, cl.method_id);
                }
                AMQPFrame::Method(_, AMQPClass::Connection(c::AMQPMethod::Close(cl))) => {
                    panic!("connection closed instead: {cl:?}")
                }
                _ => continue,
            }
        }
    }
}

/// The real `warren` binary on 127.0.0.1:0 with a given data dir, for restart and crash tests.
pub struct BinBroker {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The management HTTP API (on a port of the OS's choosing).
    pub http: SocketAddr,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl BinBroker {
    pub fn start(dir: &std::path::Path) -> Self {
        Self::spawn(dir, None, &[])
    }

    pub fn start_with_config(dir: &std::path::Path, config: &std::path::Path) -> Self {
        Self::spawn(dir, Some(config), &[])
    }

    /// With a config file and extra environment (e.g. the test hooks' variables).
    pub fn start_with_env(
        dir: &std::path::Path,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(dir, Some(config), env)
    }

    fn spawn(
        dir: &std::path::Path,
        config: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.envs(env.iter().copied());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .args(["--bind", "127.0.0.1:0", "--management-bind", "127.0.0.1:0"])
            .args(["--prometheus-bind", "127.0.0.1:0"])
            .args(["--log", "warn", "--data-dir"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // One AMQP line (`--bind` names one address), then the management API's.
        let mut next_addr = || -> SocketAddr {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.trim()
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .expect("listening line")
        };
        let addr = next_addr();
        let http = next_addr();
        Self {
            child,
            addr,
            http,
            _stdout: stdout,
        }
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub async fn channel(&self) -> (lapin::Connection, Channel) {
        let conn = Connection::connect(&self.uri(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        (conn, ch)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for BinBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
