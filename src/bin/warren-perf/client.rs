//! A lean AMQP 0-9-1 client on a raw tokio socket: handshake, synchronous RPCs for setup,
//! and a frame splitter for the hot paths in `producer` and `consumer`.
//!
//! Client-to-server methods are encoded with `warren::protocol::write_method`; server
//! methods are cut out here and parsed with amq-protocol's `parse_class` (Warren's own
//! `decode` refuses server-to-client methods by design).

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Buf, BufMut, BytesMut};
use nom::Parser;
use nom::combinator::all_consuming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::transport::Stream;
use warren::protocol::{FRAME_END, FRAME_METHOD, PROTOCOL_HEADER, write_method};

/// Errors are reported, never matched on.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub pass: String,
    pub vhost: String,
    /// `amqps://`: TLS, trusting the CA certificates in `cacert`.
    pub tls: bool,
    pub cacert: Option<std::path::PathBuf>,
}

impl Target {
    /// Parses `amqp://user:pass@host:port/vhost` (vhost percent-decoded; `/%2f` is `/`),
    /// or `amqps://...` (port 5671 by default).
    pub fn from_uri(uri: &str) -> Res<Self> {
        let (tls, rest) = match uri.strip_prefix("amqps://") {
            Some(rest) => (true, rest),
            None => (
                false,
                uri.strip_prefix("amqp://")
                    .ok_or("only amqp:// and amqps:// URIs are supported")?,
            ),
        };
        let (auth_host, vhost) = match rest.split_once('/') {
            Some((a, v)) => (a, percent_decode(v)?),
            None => (rest, "/".to_string()),
        };
        let (auth, hostport) = match auth_host.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, auth_host),
        };
        let (user, pass) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
                None => (percent_decode(a)?, String::new()),
            },
            None => ("guest".into(), "guest".into()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse()?),
            None => (hostport.to_string(), if tls { 5671 } else { 5672 }),
        };
        Ok(Self {
            host: if host.is_empty() {
                "127.0.0.1".into()
            } else {
                host
            },
            port,
            user,
            pass,
            // An empty path means the default vhost.
            vhost: if vhost.is_empty() { "/".into() } else { vhost },
            tls,
            cacert: None,
        })
    }
}

fn percent_decode(s: &str) -> Res<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(
                std::str::from_utf8(&b[i + 1..i + 3])?,
                16,
            )?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// One frame cut out of the read buffer, borrowed from it.
#[derive(Debug)]
pub enum RawFrame<'a> {
    Method {
        channel: u16,
        class_id: u16,
        method_id: u16,
        payload: &'a [u8],
    },
    Header {
        body_size: u64,
    },
    Body {
        payload: &'a [u8],
    },
    Heartbeat,
}

/// Looks at the frame at the front of `buf`: `Ok(None)` while incomplete, otherwise the frame
/// and its total length (the caller advances past it).
pub fn peek_frame(buf: &[u8]) -> Res<Option<(RawFrame<'_>, usize)>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let total = 8 + size;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(format!("bad frame end octet {:#04x}", buf[total - 1]).into());
    }
    let payload = &buf[7..7 + size];
    let frame = match buf[0] {
        1 => {
            if size < 4 {
                return Err("method frame too short".into());
            }
            RawFrame::Method {
                channel: u16::from_be_bytes([buf[1], buf[2]]),
                class_id: u16::from_be_bytes([payload[0], payload[1]]),
                method_id: u16::from_be_bytes([payload[2], payload[3]]),
                payload,
            }
        }
        2 => {
            if size < 12 {
                return Err("content header too short".into());
            }
            RawFrame::Header {
                body_size: u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes")),
            }
        }
        3 => RawFrame::Body { payload },
        8 => RawFrame::Heartbeat,
        t => return Err(format!("unknown frame type {t}").into()),
    };
    Ok(Some((frame, total)))
}

/// Parses a method payload with amq-protocol.
pub fn parse_method(payload: &[u8]) -> Res<AMQPClass> {
    match all_consuming(amq_protocol::protocol::parse_class).parse(payload) {
        Ok((_, m)) => Ok(m),
        Err(e) => Err(format!("cannot parse server method: {e:?}").into()),
    }
}

/// Describes a `channel.close` / `connection.close` for an error message.
pub fn describe_close(m: &AMQPClass) -> Option<String> {
    match m {
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(format!(
            "channel closed by broker: {} {} (method {}.{})",
            c.reply_code, c.reply_text, c.class_id, c.method_id
        )),
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(format!(
            "connection closed by broker: {} {} (method {}.{})",
            c.reply_code, c.reply_text, c.class_id, c.method_id
        )),
        _ => None,
    }
}

/// Appends a hand-written `basic.ack` (client to server).
pub fn put_ack(out: &mut BytesMut, channel: u16, tag: u64, multiple: bool) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    out.put_u32(13);
    out.put_u16(60);
    out.put_u16(80);
    out.put_u64(tag);
    out.put_u8(multiple as u8);
    out.put_u8(FRAME_END);
}

/// An open connection with channel 1 open.
#[derive(Debug)]
pub struct Conn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub frame_max: u32,
    pub product: String,
    pub version: String,
}

fn prop_str(t: &FieldTable, k: &str) -> String {
    match t.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_string(),
        _ => String::new(),
    }
}

impl Conn {
    /// Connects, authenticates with PLAIN, tunes (echoing the server's frame_max and
    /// channel_max, heartbeats off), opens the vhost and channel 1.
    pub async fn open(t: &Target) -> Res<Self> {
        let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
        tcp.set_nodelay(true)?;
        let stream = match (&t.cacert, t.tls) {
            (Some(ca), true) => Stream::tls(tcp, &t.host, ca).await?,
            _ => Stream::Tcp(tcp),
        };
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            frame_max: 131_072,
            product: String::new(),
            version: String::new(),
        };
        c.stream.write_all(PROTOCOL_HEADER).await?;
        c.stream.flush().await?;
        let start = match c.expect(0, 10, 10).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            m => return Err(format!("expected connection.start, got {m:?}").into()),
        };
        c.product = prop_str(&start.server_properties, "product");
        c.version = prop_str(&start.server_properties, "version");
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "connection.blocked",
            "consumer_cancel_notify",
            "basic.nack",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString("warren-perf".into()),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let response: LongString = format!("\0{}\0{}", t.user, t.pass).into();
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response,
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match c.expect(0, 10, 30).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            m => return Err(format!("expected connection.tune, got {m:?}").into()),
        };
        if tune.frame_max != 0 {
            c.frame_max = tune.frame_max;
        }
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: c.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        c.rpc(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: t.vhost.as_str().into(),
            })),
            (10, 41),
        )
        .await?;
        c.rpc(
            1,
            &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            (20, 11),
        )
        .await?;
        Ok(c)
    }

    /// Writes one method frame.
    pub async fn send(&mut self, channel: u16, m: &AMQPClass) -> Res<()> {
        let mut out = BytesMut::with_capacity(128);
        write_method(&mut out, channel, m);
        self.stream.write_all(&out).await?;
        // TLS may keep records until flushed; TCP's flush is a no-op.
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends `m` and waits for the reply `(class, method)` on the same channel.
    pub async fn rpc(&mut self, channel: u16, m: &AMQPClass, reply: (u16, u16)) -> Res<AMQPClass> {
        self.send(channel, m).await?;
        self.expect(channel, reply.0, reply.1).await
    }

    /// Reads frames until the method `(class, method)` arrives on `channel`, skipping
    /// anything else (content, confirms) and failing on a close from the broker.
    pub async fn expect(&mut self, channel: u16, class: u16, method: u16) -> Res<AMQPClass> {
        loop {
            let mut found = None;
            loop {
                let Some((frame, len)) = peek_frame(&self.rbuf)? else {
                    break;
                };
                let mut close = None;
                if let RawFrame::Method {
                    channel: ch,
                    class_id,
                    method_id,
                    payload,
                } = frame
                {
                    if ch == channel && class_id == class && method_id == method {
                        found = Some(parse_method(payload)?);
                    } else if (class_id, method_id) == (20, 40) || (class_id, method_id) == (10, 50)
                    {
                        close = Some(parse_method(payload)?);
                    }
                }
                self.rbuf.advance(len);
                if let Some(m) = close {
                    let why = describe_close(&m).unwrap_or_default();
                    return Err(why.into());
                }
                if found.is_some() {
                    break;
                }
            }
            if let Some(m) = found {
                return Ok(m);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
                self.rbuf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(format!(
                    "connection closed by broker while waiting for {class}.{method}"
                )
                .into());
            }
        }
    }

    /// `connection.close` and wait (bounded) for close-ok; errors are ignored.
    pub async fn close(mut self) {
        let m = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }));
        let _ = tokio::time::timeout(Duration::from_secs(3), self.rpc(0, &m, (10, 51))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parsing() {
        let t = Target::from_uri("amqp://u:p%40ss@h.example:5673/%2f").unwrap();
        assert_eq!(
            (
                t.user.as_str(),
                t.pass.as_str(),
                t.host.as_str(),
                t.port,
                t.vhost.as_str()
            ),
            ("u", "p@ss", "h.example", 5673, "/")
        );
        let t = Target::from_uri("amqp://localhost").unwrap();
        assert_eq!((t.port, t.vhost.as_str()), (5672, "/"));
        let t = Target::from_uri("amqp://guest:guest@127.0.0.1:5672/vh").unwrap();
        assert_eq!(t.vhost, "vh");
    }

    #[test]
    fn ack_frame_parses() {
        let mut out = BytesMut::new();
        put_ack(&mut out, 1, 77, true);
        let (f, len) = peek_frame(&out).unwrap().unwrap();
        assert_eq!(len, out.len());
        let RawFrame::Method { payload, .. } = f else {
            panic!()
        };
        assert!(matches!(
            parse_method(payload).unwrap(),
            AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Ack(a))
                if a.delivery_tag == 77 && a.multiple
        ));
    }
}
