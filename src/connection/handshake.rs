//! The opening handshake: protocol header, start/start-ok (PLAIN, AMQPLAIN and, on TLS,
//! EXTERNAL), tune/tune-ok and open/open-ok, as RabbitMQ answers each step, including its
//! answers to bad input.
//!
//! Runs on the socket (plain or TLS, see `transport`) before the connection's writer task
//! exists; the whole exchange is bounded by the configured handshake timeout by the caller.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, connection as c};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use nom::Parser;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Security;
use super::transport::SocketWrite;

use crate::broker::Broker;
use crate::broker::vhost::VHost;
use crate::config::FRAME_MIN_SIZE;
use crate::error::AmqpError;
use crate::protocol::{self, DecodeError, Frame, PROTOCOL_HEADER};

/// Largest frame accepted before tune-ok (RabbitMQ 4.1 raised it to 8192 for JWT tokens).
const PRE_TUNE_FRAME_MAX: u32 = 8192;

/// What a successful handshake settled.
#[derive(Debug)]
pub(super) struct Opened {
    /// Authenticated user.
    pub user: String,
    /// The vhost opened.
    pub vhost: Arc<VHost>,
    /// Negotiated frame_max.
    pub frame_max: u32,
    /// Negotiated channel_max.
    pub channel_max: u16,
    /// Negotiated heartbeat, seconds (0 = none).
    pub heartbeat: u16,
    /// The client understands server-sent basic.cancel.
    pub cancel_notify: bool,
    /// The client understands `connection.blocked` / `unblocked`.
    pub blocked_notify: bool,
    /// The SASL mechanism used (`PLAIN`, `AMQPLAIN` or `EXTERNAL`).
    pub mechanism: &'static str,
    /// The user has the `impersonator` tag (it lifts the `user_id` check), read once here
    /// rather than per frame.
    pub impersonator: bool,
    /// `connection.start-ok` client properties (listed by the management API).
    pub client_properties: amq_protocol::types::FieldTable,
}

/// How a handshake ended when it did not open the connection.
#[derive(Debug)]
pub(super) enum Refused {
    /// Close the socket without a word (RabbitMQ's answer to most negotiation failures).
    Silent(String),
    /// Send `connection.close` with this error, then close.
    Close(AmqpError),
}

fn silent(why: impl Into<String>) -> Refused {
    Refused::Silent(why.into())
}

/// Server properties sent in connection.start: RabbitMQ's keys, Warren's values, and the
/// capabilities Warren implements.
fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "consumer_priorities",
        "direct_reply_to",
        // Warren never blocks publishers yet, so the promise to say so when it does is
        // kept trivially; a client may register for the notification pair.
        "connection.blocked",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(v.into());
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert("product".into(), s("Warren"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), s("Rust"));
    p.insert("cluster_name".into(), s("warren"));
    p.insert("copyright".into(), s("Copyright (c) the Warren authors"));
    p.insert(
        "information".into(),
        s("An AMQP 0-9-1 broker that speaks RabbitMQ's dialect"),
    );
    p
}

async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    frame_max: u32,
) -> Result<Frame, Refused> {
    loop {
        match protocol::decode(buf, frame_max) {
            Ok(Some(Frame::Heartbeat { .. })) => continue,
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(DecodeError::Amqp(e)) => return Err(silent(e.text)),
            Err(DecodeError::Drop(why)) => return Err(silent(why)),
            // compat: a start-ok whose client properties (or AMQPLAIN response) nest past
            // the bound; RabbitMQ accepts any depth. Say why rather than just hang up.
            Err(DecodeError::Refused { error, .. }) => return Err(Refused::Close(error)),
        }
        if buf.len() > frame_max as usize + 8 {
            return Err(silent("handshake frame too large"));
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(silent("peer closed during handshake")),
            Ok(_) => {}
        }
    }
}

async fn expect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    frame_max: u32,
) -> Result<c::AMQPMethod, Refused> {
    match read_frame(rd, buf, frame_max).await? {
        Frame::Method { channel: 0, method } => match *method {
            AMQPClass::Connection(m) => Ok(m),
            other => Err(silent(format!(
                "unexpected method during handshake: {other:?}"
            ))),
        },
        other => Err(silent(format!(
            "unexpected frame during handshake: {other:?}"
        ))),
    }
}

/// Reads `connection.open`, answering what else may come first as RabbitMQ does in its
/// `opening` state: a frame on another channel is a 505 quoting it, another method on
/// channel 0 a 504 naming it.
async fn expect_open<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    frame_max: u32,
) -> Result<c::Open, Refused> {
    loop {
        if buf.len() >= 7 && buf[1..3] != [0, 0] {
            let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
            let quoted = &buf[7..buf.len().min(7 + size.min(protocol::QUOTED_MAX))];
            if quoted.len() == size.min(protocol::QUOTED_MAX) {
                return Err(Refused::Close(AmqpError::unexpected_frame(format!(
                    "type {}, all octets = {}",
                    buf[0],
                    protocol::erlang_binary(quoted)
                ))));
            }
        } else if buf.len() >= 7 {
            match read_frame(rd, buf, frame_max).await? {
                Frame::Method { method, .. } => match *method {
                    AMQPClass::Connection(c::AMQPMethod::Open(open)) => return Ok(open),
                    other => {
                        return Err(Refused::Close(
                            AmqpError::channel_error(
                                "unexpected method in connection state opening",
                            )
                            .with_method(other.get_amqp_class_id(), other.get_amqp_method_id()),
                        ));
                    }
                },
                other => {
                    return Err(silent(format!(
                        "unexpected frame during handshake: {other:?}"
                    )));
                }
            }
        }
        if buf.len() > frame_max as usize + 8 {
            return Err(silent("handshake frame too large"));
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(silent("peer closed during handshake")),
            Ok(_) => {}
        }
    }
}

async fn send<W: SocketWrite>(wr: &mut W, m: c::AMQPMethod) -> Result<(), Refused> {
    let mut out = BytesMut::new();
    protocol::write_method(&mut out, 0, &AMQPClass::Connection(m));
    let failed = |e: std::io::Error| silent(format!("write failed: {e}"));
    wr.write_all(&out).await.map_err(failed)?;
    wr.flush().await.map_err(failed)
}

/// The mechanisms `connection.start` offers: those `auth_mechanisms` lists, EXTERNAL only
/// on TLS (as RabbitMQ's `rabbit_auth_mechanism_ssl` offers itself only there), in
/// RabbitMQ's order.
fn offered(configured: &[String], tls: bool) -> Vec<&'static str> {
    ["EXTERNAL", "AMQPLAIN", "PLAIN"]
        .into_iter()
        .filter(|m| configured.iter().any(|c| c == m))
        .filter(|m| tls || *m != "EXTERNAL")
        .collect()
}

/// Credentials from a start-ok response.
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|&b| b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some((
                String::from_utf8(user.to_vec()).ok()?,
                String::from_utf8(pass.to_vec()).ok()?,
            ))
        }
        "AMQPLAIN" => {
            // The response is a field table without its length prefix. Its depth was
            // checked with the frame; checked again here because the parser recurses.
            crate::protocol::nesting::scan_table_entries(response).ok()?;
            let mut framed = Vec::with_capacity(response.len() + 4);
            framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
            framed.extend_from_slice(response);
            let (_, table) =
                nom::combinator::all_consuming(amq_protocol::types::parsing::parse_field_table)
                    .parse(&framed[..])
                    .ok()?;
            let get = |k: &str| {
                table
                    .inner()
                    .get(k)
                    .and_then(crate::broker::args::as_bytes)
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
            };
            Some((get("LOGIN")?, get("PASSWORD")?))
        }
        _ => None,
    }
}

fn capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// The protocol headers Warren accepts, and the version its `connection.start` then names:
/// RabbitMQ's handshake clauses. `AMQP 0 0 9 1` is 0-9-1. `AMQP 1 1 0 9` is 0-9, which is
/// answered as 0-9 and spoken as 0-9-1 (the Perl clients, Net::AMQP and AnyEvent::RabbitMQ,
/// send it). `AMQP 1 1 9 1` and `AMQP 1 1 8 0` are the two spellings of 0-8's header, which
/// RabbitMQ answers with version 8-0.
///
/// compat: RabbitMQ then speaks 0-8's method set to those clients; Warren speaks 0-9-1, which
/// is the same on the wire for the methods such clients use in practice (`access.request` is
/// answered too), except 0-8's `basic.consume`, which lacks the arguments table (a frame
/// error here).
fn start_version(header: &[u8]) -> Option<(u8, u8)> {
    match header {
        b"AMQP\x00\x00\x09\x01" | b"AMQP\x01\x01\x00\x09" => Some((0, 9)),
        b"AMQP\x01\x01\x09\x01" | b"AMQP\x01\x01\x08\x00" => Some((8, 0)),
        _ => None,
    }
}

/// Runs the handshake on a fresh socket. `buf` keeps whatever the client pipelined after
/// connection.open.
///
/// # Errors
/// [`Refused`] saying whether to answer with `connection.close` or just close.
pub(super) async fn run<R: AsyncRead + Unpin, W: SocketWrite>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    broker: &Broker,
    peer: std::net::SocketAddr,
    security: &Security,
) -> Result<Opened, Refused> {
    while buf.len() < 8 {
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(silent("peer closed before the protocol header")),
            Ok(_) => {}
        }
    }
    let Some((version_major, version_minor)) = start_version(&buf[..8]) else {
        if wr.write_all(PROTOCOL_HEADER).await.is_ok() {
            let _ = wr.flush().await;
        }
        return Err(silent(format!("bad protocol header {:?}", &buf[..8])));
    };
    let _ = buf.split_to(8);
    let mechanisms = offered(&broker.config.auth_mechanisms, security.tls);
    send(
        wr,
        c::AMQPMethod::Start(c::Start {
            version_major,
            version_minor,
            server_properties: server_properties(),
            mechanisms: LongString::from(mechanisms.join(" ")),
            locales: LongString::from("en_US"),
        }),
    )
    .await?;

    let c::AMQPMethod::StartOk(start_ok) = expect(rd, buf, PRE_TUNE_FRAME_MAX).await? else {
        return Err(silent("expected connection.start-ok"));
    };
    let failure_close = capability(&start_ok.client_properties, "authentication_failure_close");
    // `offered` holds only static names: this one, for the registry, or a refusal.
    let Some(&mechanism) = mechanisms
        .iter()
        .find(|m| **m == start_ok.mechanism.as_str())
    else {
        return Err(silent(format!(
            "unsupported mechanism {}",
            start_ok.mechanism.as_str()
        )));
    };
    let (user, login) = if mechanism == "EXTERNAL" {
        // The response carries nothing RabbitMQ reads; the certificate names the user, and
        // there is no password to check.
        match &security.cert_user {
            Some(user) => (user.clone(), broker.auth.user(user)),
            None => {
                tracing::warn!(%peer, "EXTERNAL login refused: no verified client certificate");
                (String::new(), None)
            }
        }
    } else {
        let Some((user, pass)) = credentials(mechanism, start_ok.response.as_bytes()) else {
            return Err(silent(format!("malformed response ({mechanism})")));
        };
        let login = broker.auth.login(&user, &pass);
        (user, login)
    };
    let login = login.filter(|_| {
        // As RabbitMQ: checked after the password, refused like a wrong one.
        let local_only = broker.config.loopback_users.contains(&user);
        if local_only && !peer.ip().is_loopback() {
            tracing::warn!(%user, %peer, "{mechanism} login refused: user '{user}' can only connect via localhost");
            return false;
        }
        true
    });
    let Some(login) = login else {
        let why = format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        );
        tracing::warn!(%user, "authentication failed");
        // spec wants a silent close; RabbitMQ sends 403 to clients that ask for it.
        return Err(if failure_close {
            Refused::Close(AmqpError::access_refused(why))
        } else {
            silent(why)
        });
    };
    let cancel_notify = capability(&start_ok.client_properties, "consumer_cancel_notify");
    let blocked_notify = capability(&start_ok.client_properties, "connection.blocked");

    let cfg = &broker.config;
    send(
        wr,
        c::AMQPMethod::Tune(c::Tune {
            channel_max: cfg.channel_max,
            frame_max: cfg.frame_max,
            heartbeat: cfg.heartbeat,
        }),
    )
    .await?;
    let c::AMQPMethod::TuneOk(tune) = expect(rd, buf, PRE_TUNE_FRAME_MAX).await? else {
        return Err(silent("expected connection.tune-ok"));
    };
    // spec: a client asking for more than the server offered must be refused.
    // compat: RabbitMQ drops TCP (about 3 s later, with nothing sent); Warren says why first,
    // as LavinMQ does, since clients log it.
    if tune.channel_max == 0 || tune.channel_max > cfg.channel_max {
        return Err(Refused::Close(AmqpError::not_allowed(format!(
            "negotiated channel_max = {} is outside 1 ..= {}",
            tune.channel_max, cfg.channel_max
        ))));
    }
    if tune.frame_max < FRAME_MIN_SIZE || tune.frame_max > cfg.frame_max {
        return Err(Refused::Close(AmqpError::not_allowed(format!(
            "negotiated frame_max = {} is outside {FRAME_MIN_SIZE} ..= {}",
            tune.frame_max, cfg.frame_max
        ))));
    }

    let open = expect_open(rd, buf, tune.frame_max).await?;
    let Some(vhost) = broker.vhost(open.virtual_host.as_str()) else {
        return Err(Refused::Close(
            AmqpError::not_allowed(format!("vhost {} not found", open.virtual_host))
                .with_method(10, 40),
        ));
    };
    if !broker.auth.has_access(&vhost.name, &user) {
        return Err(Refused::Close(
            AmqpError::not_allowed(format!(
                "access to vhost '{}' refused for user '{user}'",
                vhost.name
            ))
            .with_method(10, 40),
        ));
    }
    // Limits count the connections open now (two racing opens may both pass, by one).
    if let Some(max) = vhost.limit("max-connections")
        && broker.connections.count_vhost(&vhost.name) as u64 >= max
    {
        return Err(Refused::Close(
            AmqpError::not_allowed(format!(
                "access to vhost '{}' refused for user '{user}': connection limit ({max}) is reached",
                vhost.name
            ))
            .with_method(10, 40),
        ));
    }
    if let Some(max) = login.max_connections
        && broker.connections.count_user(&user) as u64 >= max
    {
        return Err(Refused::Close(
            AmqpError::not_allowed(format!(
                "connection refused for user '{user}': user connection limit ({max}) is reached"
            ))
            .with_method(10, 40),
        ));
    }
    send(wr, c::AMQPMethod::OpenOk(c::OpenOk {})).await?;
    Ok(Opened {
        user,
        vhost,
        frame_max: tune.frame_max,
        channel_max: tune.channel_max,
        heartbeat: tune.heartbeat,
        cancel_notify,
        blocked_notify,
        mechanism,
        impersonator: login.has_tag("impersonator"),
        client_properties: start_ok.client_properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_response_is_split_on_nul() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(credentials("PLAIN", b"guest"), None);
        assert_eq!(credentials("EXTERNAL", b""), None);
    }

    #[test]
    fn external_is_offered_on_tls_only_and_only_when_configured() {
        let all: Vec<String> = ["PLAIN", "AMQPLAIN", "EXTERNAL"].map(String::from).into();
        assert_eq!(offered(&all, false), ["AMQPLAIN", "PLAIN"]);
        assert_eq!(offered(&all, true), ["EXTERNAL", "AMQPLAIN", "PLAIN"]);
        let default: Vec<String> = ["PLAIN", "AMQPLAIN"].map(String::from).into();
        assert_eq!(offered(&default, true), ["AMQPLAIN", "PLAIN"]);
    }

    #[test]
    fn amqplain_response_is_a_bare_table() {
        let mut t = FieldTable::default();
        t.insert("LOGIN".into(), AMQPValue::LongString("guest".into()));
        t.insert("PASSWORD".into(), AMQPValue::LongString("pw".into()));
        let ctx = amq_protocol::frame::WriteContext::from(Vec::new());
        let (bytes, _) = amq_protocol::types::generation::gen_field_table(&t)(ctx)
            .unwrap()
            .into_inner();
        assert_eq!(
            credentials("AMQPLAIN", &bytes[4..]),
            Some(("guest".into(), "pw".into()))
        );
    }
}
