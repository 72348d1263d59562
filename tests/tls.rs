//! AMQPS, EXTERNAL and the management API over HTTPS, against a real broker with
//! certificates made here: a CA, a server certificate for 127.0.0.1, client certificates.
//! lapin for a whole TLS session; a small raw AMQP client over tokio-rustls where the
//! answer to each handshake step matters (mechanisms offered, EXTERNAL, 403).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amq_protocol::frame::{AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, connection as c};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::auth::Password;
use warren::broker::Broker;
use warren::config::{CertLoginFrom, Config};

use common::WAIT;

/// A CA and the files a broker's `[tls]` names, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Identity {
    cert: String,
    key: String,
}

impl Pki {
    fn new(ca_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        let server = pki.issue(
            vec!["localhost".into(), "127.0.0.1".into()],
            &[(DnType::CommonName, "warren")],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(pki.path("server.pem"), server.cert).unwrap();
        std::fs::write(pki.path("server.key"), server.key).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(
        &self,
        sans: Vec<String>,
        subject: &[(DnType, &str)],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Identity {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A client certificate with this subject, in the order given (issued as C, O, CN
    /// is written `CN=..,O=..,C=..` in RFC 4514).
    fn client(&self, subject: &[(DnType, &str)]) -> Identity {
        self.issue(vec![], subject, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

/// A broker with a plain listener, an AMQPS listener and the management API over HTTPS,
/// all on 127.0.0.1:0; stops when dropped.
struct TlsBroker {
    plain: SocketAddr,
    amqps: SocketAddr,
    https: SocketAddr,
    broker: Arc<Broker>,
    _data: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsBroker {
    async fn start(pki: &Pki, tweak: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: data.path().to_owned(),
            listeners: vec!["127.0.0.1:0".parse().unwrap()],
            listeners_tls: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        };
        config.management.tls = true;
        config.tls.certfile = Some(pki.path("server.pem"));
        config.tls.keyfile = Some(pki.path("server.key"));
        config.tls.cacertfile = Some(pki.path("ca.pem"));
        tweak(&mut config);
        config.check().unwrap();
        let tls = warren::tls::Tls::load(&config.tls).unwrap();
        let plain = warren::server::bind(&config.listeners).await.unwrap();
        let amqps = warren::server::bind(&config.listeners_tls).await.unwrap();
        let (plain_at, amqps_at) = (
            plain[0].local_addr().unwrap(),
            amqps[0].local_addr().unwrap(),
        );
        let broker = Arc::new(Broker::open_with(config, Default::default()).unwrap());
        let http = warren::http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let https = http.local_addr().unwrap();
        let api = warren::http::Api::new(broker.clone(), vec![plain_at, amqps_at], https);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (stop_http, mut http_stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(warren::http::serve_tls(
            http,
            tls.management.clone(),
            api,
            async move {
                let _ = http_stopped.wait_for(|s| *s).await;
            },
        ));
        let mut listeners: Vec<_> = plain
            .into_iter()
            .map(warren::server::Listener::plain)
            .collect();
        listeners.extend(amqps.into_iter().map(|tcp| warren::server::Listener {
            tcp,
            tls: Some(tls.amqp.clone()),
        }));
        tokio::spawn(warren::server::serve(
            listeners,
            broker.clone(),
            async move {
                let _ = stopped.await;
                let _ = stop_http.send(true);
            },
        ));
        Self {
            plain: plain_at,
            amqps: amqps_at,
            https,
            broker,
            _data: data,
            _stop: stop,
        }
    }

    /// A user with every permission in `/`.
    fn add_user(&self, name: &str) {
        let auth = &self.broker.auth;
        auth.put_user(name, Password::Clear("unused".into()), vec![], None)
            .unwrap();
        auth.set_permission("/", name, ".*", ".*", ".*").unwrap();
    }
}

/// A TLS client trusting `pki`'s CA, presenting `identity` when given.
fn connector(pki: &Pki, identity: Option<&Identity>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    pki: &Pki,
    identity: Option<&Identity>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    connector(pki, identity).connect(name, tcp).await
}

/// How a raw login ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// connection.open-ok.
    Opened,
    /// connection.close with this code and text.
    Closed(u16, String),
    /// The socket closed (or failed) without a close.
    Dropped,
}

/// A raw AMQP client over any stream: enough of the handshake to see what the server
/// offers and how it answers a login.
struct RawClient<S> {
    sock: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    fn new(sock: S) -> Self {
        Self {
            sock,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, m: c::AMQPMethod) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        warren::protocol::write_method(&mut out, 0, &AMQPClass::Connection(m));
        self.sock.write_all(&out).await?;
        self.sock.flush().await
    }

    /// The next connection-class method, or `None` when the socket ends.
    async fn method(&mut self) -> Option<c::AMQPMethod> {
        loop {
            if let Ok((rest, f)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                let _ = self.buf.split_to(used);
                match f {
                    AMQPFrame::Method(0, AMQPClass::Connection(m)) => return Some(m),
                    _ => continue,
                }
            }
            match tokio::time::timeout(WAIT, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Opens channel 1 and waits for open-ok: once it comes, the connection is registered
    /// (the broker registers it before it reads past connection.open).
    async fn open_channel(&mut self) {
        let mut out = BytesMut::new();
        warren::protocol::write_method(
            &mut out,
            1,
            &AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
                Default::default(),
            )),
        );
        self.sock.write_all(&out).await.unwrap();
        self.sock.flush().await.unwrap();
        loop {
            if let Ok((rest, f)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                let _ = self.buf.split_to(used);
                if let AMQPFrame::Method(1, AMQPClass::Channel(_)) = f {
                    return;
                }
                continue;
            }
            let n = tokio::time::timeout(WAIT, self.sock.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before channel.open-ok");
        }
    }

    /// Sends the protocol header; the mechanisms connection.start offers (`None` when the
    /// socket ended first).
    async fn start(&mut self) -> Option<String> {
        self.sock.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        self.sock.flush().await.ok()?;
        match self.method().await? {
            c::AMQPMethod::Start(s) => Some(s.mechanisms.to_string()),
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    /// start-ok with `mechanism` / `response` (asking for `authentication_failure_close`),
    /// tune-ok and open of `/`.
    async fn login(&mut self, mechanism: &str, response: &[u8]) -> Outcome {
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let start_ok = c::AMQPMethod::StartOk(c::StartOk {
            client_properties: props,
            mechanism: mechanism.into(),
            response: LongString::from(response.to_vec()),
            locale: "en_US".into(),
        });
        if self.send(start_ok).await.is_err() {
            return Outcome::Dropped;
        }
        loop {
            match self.method().await {
                None => return Outcome::Dropped,
                Some(c::AMQPMethod::Tune(t)) => {
                    let tune_ok = c::AMQPMethod::TuneOk(c::TuneOk {
                        channel_max: t.channel_max,
                        frame_max: t.frame_max,
                        heartbeat: 0,
                    });
                    let open = c::AMQPMethod::Open(c::Open {
                        virtual_host: "/".into(),
                    });
                    if self.send(tune_ok).await.is_err() || self.send(open).await.is_err() {
                        return Outcome::Dropped;
                    }
                }
                Some(c::AMQPMethod::OpenOk(_)) => return Outcome::Opened,
                Some(c::AMQPMethod::Close(cl)) => {
                    return Outcome::Closed(cl.reply_code, cl.reply_text.to_string());
                }
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// lapin over AMQPS, verifying the server's certificate against the test CA.
async fn lapin_tls(addr: SocketAddr, pki: &Pki) -> Result<Connection, lapin::Error> {
    let config = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pki.ca_pem()),
    };
    Connection::connect_with_config(
        &format!("amqps://guest:guest@{addr}/%2f"),
        ConnectionProperties::default(),
        config,
        lapin::runtime::default_runtime()?,
    )
    .await
}

#[tokio::test]
async fn lapin_publishes_and_consumes_over_tls_with_a_verified_server_certificate() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |_| {}).await;
    let conn = lapin_tls(b.amqps, &pki).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = common::name("tls-q");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Larger than one TLS record (16 KiB), so the writer's buffering is exercised too.
    let body = vec![7u8; 100_000];
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, body);
    // The management API lists it as an AMQPS connection.
    let conns = b.broker.connections.list();
    assert!(
        conns
            .iter()
            .any(|c| c.ssl && c.local.port() == b.amqps.port())
    );
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_certificate_gets_nowhere() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |_| {}).await;
    let other = Pki::new("some other CA");
    assert!(lapin_tls(b.amqps, &other).await.is_err());
    // The listener carries on for others.
    lapin_tls(b.amqps, &pki).await.unwrap();
}

#[tokio::test]
async fn external_logs_in_as_the_certificate_common_name() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |c| {
        c.tls.verify_peer = true;
        c.tls.fail_if_no_peer_cert = true;
        c.auth_mechanisms = vec!["EXTERNAL".into(), "PLAIN".into()];
        c.ssl_cert_login_from = CertLoginFrom::CommonName;
    })
    .await;
    b.add_user("cn-user");
    let id = pki.client(&[
        (DnType::CountryName, "US"),
        (DnType::OrganizationName, "Org"),
        (DnType::CommonName, "cn-user"),
    ]);
    let tls = tls_connect(b.amqps, &pki, Some(&id)).await.unwrap();
    let mut raw = RawClient::new(tls);
    assert_eq!(raw.start().await.unwrap(), "EXTERNAL PLAIN");
    assert_eq!(raw.login("EXTERNAL", b"").await, Outcome::Opened);
    raw.open_channel().await;
    let conns = b.broker.connections.list();
    assert!(
        conns
            .iter()
            .any(|c| c.user == "cn-user" && c.auth_mechanism == "EXTERNAL" && c.ssl),
        "{conns:?}"
    );

    // A certificate naming a user that does not exist is refused like a bad password.
    let stranger = pki.client(&[(DnType::CommonName, "nobody")]);
    let tls = tls_connect(b.amqps, &pki, Some(&stranger)).await.unwrap();
    let mut raw = RawClient::new(tls);
    raw.start().await.unwrap();
    assert_eq!(
        raw.login("EXTERNAL", b"").await,
        Outcome::Closed(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. \
             For details see the broker logfile."
                .into()
        )
    );

    // The plain listener never offers EXTERNAL, and refuses it as unknown.
    let mut raw = RawClient::new(TcpStream::connect(b.plain).await.unwrap());
    assert_eq!(raw.start().await.unwrap(), "PLAIN");
    assert_eq!(raw.login("EXTERNAL", b"").await, Outcome::Dropped);
}

#[tokio::test]
async fn external_with_distinguished_name_logs_in_as_the_rfc_4514_subject() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |c| {
        c.tls.verify_peer = true;
        c.auth_mechanisms = vec!["EXTERNAL".into()];
        // RabbitMQ's default, and Warren's.
        assert_eq!(c.ssl_cert_login_from, CertLoginFrom::DistinguishedName);
    })
    .await;
    b.add_user("CN=client,O=Org\\, Inc.,C=US");
    let id = pki.client(&[
        (DnType::CountryName, "US"),
        (DnType::OrganizationName, "Org, Inc."),
        (DnType::CommonName, "client"),
    ]);
    let tls = tls_connect(b.amqps, &pki, Some(&id)).await.unwrap();
    let mut raw = RawClient::new(tls);
    assert_eq!(raw.start().await.unwrap(), "EXTERNAL");
    assert_eq!(raw.login("EXTERNAL", b"").await, Outcome::Opened);
    raw.open_channel().await;
    let conns = b.broker.connections.list();
    assert!(
        conns
            .iter()
            .any(|c| c.user == "CN=client,O=Org\\, Inc.,C=US"),
        "{conns:?}"
    );
}

/// With `fail_if_no_peer_cert`, a TLS 1.3 client may think its handshake is done before the
/// server has checked its certificate: the refusal is an alert on the first read, so
/// "refused" means no `connection.start` ever arrives.
async fn refused(addr: SocketAddr, pki: &Pki, identity: Option<&Identity>) -> bool {
    match tls_connect(addr, pki, identity).await {
        Err(_) => true,
        Ok(tls) => RawClient::new(tls).start().await.is_none(),
    }
}

#[tokio::test]
async fn verify_peer_refuses_unknown_cas_and_missing_certificates() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |c| {
        c.tls.verify_peer = true;
        c.tls.fail_if_no_peer_cert = true;
        c.auth_mechanisms = vec!["EXTERNAL".into()];
    })
    .await;
    let rogue = Pki::new("rogue CA");
    let forged = rogue.client(&[(DnType::CommonName, "guest")]);
    assert!(refused(b.amqps, &pki, Some(&forged)).await);
    assert!(refused(b.amqps, &pki, None).await);
    // A good certificate still gets in after those.
    let good = pki.client(&[(DnType::CommonName, "guest")]);
    let tls = tls_connect(b.amqps, &pki, Some(&good)).await.unwrap();
    assert_eq!(RawClient::new(tls).start().await.unwrap(), "EXTERNAL");
}

#[tokio::test]
async fn external_without_a_certificate_is_refused_with_403() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |c| {
        c.tls.verify_peer = true;
        c.auth_mechanisms = vec!["EXTERNAL".into(), "PLAIN".into()];
    })
    .await;
    let tls = tls_connect(b.amqps, &pki, None).await.unwrap();
    let mut raw = RawClient::new(tls);
    assert_eq!(raw.start().await.unwrap(), "EXTERNAL PLAIN");
    let outcome = raw.login("EXTERNAL", b"").await;
    assert!(
        matches!(&outcome, Outcome::Closed(403, t) if t.contains("mechanism EXTERNAL")),
        "{outcome:?}"
    );
    // Without a certificate, a password still works on the same listener.
    let tls = tls_connect(b.amqps, &pki, None).await.unwrap();
    let mut raw = RawClient::new(tls);
    raw.start().await.unwrap();
    assert_eq!(raw.login("PLAIN", b"\0guest\0guest").await, Outcome::Opened);
}

#[tokio::test]
async fn a_silent_client_does_not_hold_a_task_past_the_handshake_timeout() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |c| c.handshake_timeout = 1).await;
    // TCP only: no ClientHello ever.
    let mut silent = TcpStream::connect(b.amqps).await.unwrap();
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(WAIT, silent.read(&mut byte)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the broker should hang up: {r:?}"
    );
}

#[tokio::test]
async fn the_management_api_answers_over_https() {
    let pki = Pki::new("test CA");
    let b = TlsBroker::start(&pki, |_| {}).await;
    let mut tls = tls_connect(b.https, &pki, None).await.unwrap();
    // guest:guest
    tls.write_all(
        b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\
          Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"rabbitmq_version\""), "{text}");
    // Plain HTTP on the HTTPS port gets no API answer.
    let mut plain = TcpStream::connect(b.https).await.unwrap();
    plain
        .write_all(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("rabbitmq_version"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A bad certificate or key stops the boot with one line naming the file.
#[test]
fn a_bad_certificate_or_key_stops_the_boot_with_one_line_naming_it() {
    let pki = Pki::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let server_pem = pki.path("server.pem").display().to_string();
    let server_key = pki.path("server.key").display().to_string();
    let cases = [
        // (certfile, keyfile, what the line must name)
        (
            dir.path().join("missing.pem").display().to_string(),
            server_key.clone(),
            "missing.pem",
        ),
        (
            write(dir.path(), "garbage.pem", "not a certificate\n")
                .display()
                .to_string(),
            server_key.clone(),
            "garbage.pem",
        ),
        (
            server_pem.clone(),
            write(dir.path(), "empty.key", "").display().to_string(),
            "empty.key",
        ),
        (
            server_pem.clone(),
            write(dir.path(), "other.key", &other_key)
                .display()
                .to_string(),
            "other.key",
        ),
    ];
    for (i, (cert, key, named)) in cases.iter().enumerate() {
        let config = write(
            dir.path(),
            &format!("rabbit-{i}.toml"),
            &format!(
                "listeners_tls = [\"127.0.0.1:0\"]\n[tls]\ncertfile = {cert:?}\nkeyfile = {key:?}\n"
            ),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("--config")
            .arg(&config)
            .args(["--bind", "127.0.0.1:0", "--management-bind", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{named}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(named), "{named}: {err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "nothing was bound before the check"
        );
    }
}
