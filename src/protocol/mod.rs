//! The wire format, sans I/O: cutting frames out of a byte buffer and writing frames into
//! one.
//!
//! Method and property encodings come from amq-protocol; the frame envelope is handled here
//! so that body payloads stay zero-copy `Bytes` slices of the read buffer and so that every
//! inbound frame is checked against the negotiated frame_max before anything is allocated
//! for it. The hot outbound methods (deliver, ack) are written by hand to avoid building an
//! `AMQPClass` per message. No sockets, no tokio, no broker types.

pub mod content;
pub mod json;
pub mod nesting;

use std::sync::Arc;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic::parse_properties, parse_class};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use nom::Parser;
use nom::combinator::all_consuming;

use crate::error::AmqpError;

/// The only protocol header Warren speaks; also what it answers any other header with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Frame type octets (spec 0-9-1 §4.2.3).
pub const FRAME_METHOD: u8 = 1;
/// Content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Content body frame.
pub const FRAME_BODY: u8 = 3;
/// Heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// Every frame ends with this octet.
pub const FRAME_END: u8 = 0xCE;
/// Bytes of envelope around a frame payload: type, channel, size, frame-end.
pub const FRAME_OVERHEAD: usize = 8;

/// One inbound frame, decoded.
// Frames are moved once from the decoder to their handler; boxing the header's properties
// would cost an allocation per publish for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frame {
    /// A method frame with its class and method ids.
    Method {
        /// Channel the method was sent on.
        channel: u16,
        /// The decoded method.
        method: Box<AMQPClass>,
    },
    /// `basic.publish`, the hot method, decoded by hand and not boxed.
    Publish {
        /// Channel the method was sent on.
        channel: u16,
        /// The method.
        publish: amq_protocol::protocol::basic::Publish,
    },
    /// A content header.
    Header {
        /// Channel.
        channel: u16,
        /// Class id and weight of the content (60 and 0 for basic).
        ids: content::HeaderIds,
        /// Declared total body size.
        body_size: u64,
        /// Decoded properties (routing decisions read them), boxed: they are large and
        /// move from frame to message several times.
        properties: Properties,
        /// The encoded property flags and list, re-sent verbatim on delivery.
        raw_properties: Bytes,
    },
    /// A slice of a content body.
    Body {
        /// Channel.
        channel: u16,
        /// The payload, a zero-copy slice of the read buffer.
        payload: Bytes,
    },
    /// A heartbeat; valid only on channel 0.
    Heartbeat {
        /// Channel it arrived on.
        channel: u16,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A protocol error to report with `connection.close`.
    Amqp(AmqpError),
    /// Something RabbitMQ answers by closing TCP without a close frame (unknown class or
    /// method id): there is no sensible method to blame.
    Drop(String),
    /// A whole, well-framed frame whose content Warren refuses (a field table nested past
    /// [`nesting::MAX_NESTING`]): the frame was consumed and the stream is still in step, so
    /// the error closes only the channel it arrived on (the connection on channel 0).
    Refused {
        /// The channel the frame arrived on.
        channel: u16,
        /// Why, with the method's ids where there is one.
        error: AmqpError,
    },
}

impl From<AmqpError> for DecodeError {
    fn from(e: AmqpError) -> Self {
        Self::Amqp(e)
    }
}

/// Cuts one frame off the front of `buf`, if a whole one is there.
///
/// `frame_max` bounds the payload of every frame, method and header frames included, as
/// RabbitMQ does; nothing larger is ever buffered beyond `frame_max + 8` bytes.
///
/// # Errors
/// 501 FRAME_ERROR for an oversized frame, a bad frame-end octet, an unknown frame type or an
/// undecodable method or header; 540 for `basic.qos` with a prefetch size.
pub fn decode(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(AmqpError::frame_error(format!("unknown frame type {kind}")).into());
    }
    // A heartbeat has no payload; RabbitMQ answers one that does with 501, quoting it.
    if kind == FRAME_HEARTBEAT && size != 0 {
        let end = buf.len().min(7 + (size as usize).min(QUOTED_MAX));
        return Err(AmqpError::frame_error(format!(
            "type 8, all octets = {}: unknown_frame",
            erlang_binary(&buf[7..end])
        ))
        .into());
    }
    // compat: RabbitMQ accepts a payload of exactly frame_max bytes (it is 8 bytes lenient
    // about the envelope); so does Warren.
    if size > frame_max {
        return Err(AmqpError::frame_error(format!(
            "type {kind}, frame_too_large: {size} > frame_max {frame_max}"
        ))
        .into());
    }
    let total = 7 + size as usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(AmqpError::frame_error(format!(
            "type {kind}, frame-end octet {:#04x} is not 0xCE",
            buf[total - 1]
        ))
        .into());
    }
    let inner = &buf[7..total - 1];
    // Only a body, and properties other than none, outlive the read buffer; everything else
    // is decoded in place, which spares a shared-buffer split and its reference count.
    let frame = match kind {
        FRAME_METHOD => decode_method(channel, inner),
        FRAME_HEADER if inner.len() == 14 && inner[12..] == NO_PROPERTY_FLAGS => {
            decode_header(channel, inner, Bytes::from_static(&NO_PROPERTY_FLAGS))
        }
        FRAME_HEADER | FRAME_BODY => {
            buf.advance(7);
            let payload = buf.split_to(size as usize).freeze();
            buf.advance(1);
            return Ok(Some(if kind == FRAME_BODY {
                Frame::Body { channel, payload }
            } else {
                decode_header(channel, &payload, payload.slice(12.min(payload.len())..))?
            }));
        }
        _ => Ok(Frame::Heartbeat { channel }),
    };
    buf.advance(total);
    frame.map(Some)
}

/// The most payload bytes quoted in an error text.
pub const QUOTED_MAX: usize = 64;

/// Bytes as Erlang prints a binary, which is how RabbitMQ's error texts quote frames:
/// `<<"abc">>` when every byte is printable ASCII, `<<0,20,0,10>>` otherwise, `<<>>` when
/// empty. Callers bound what they quote ([`QUOTED_MAX`]).
pub fn erlang_binary(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        let mut s = String::from("<<\"");
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                s.push('\\');
            }
            s.push(char::from(b));
        }
        s.push_str("\">>");
        return s;
    }
    let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("<<{}>>", list.join(","))
}

/// The property flags of a content header without properties.
const NO_PROPERTY_FLAGS: [u8; 2] = [0, 0];

fn decode_method(channel: u16, payload: &[u8]) -> Result<Frame, DecodeError> {
    if payload.len() < 4 {
        return Err(AmqpError::frame_error("method frame shorter than its ids").into());
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if !known_method(class_id, method_id) {
        return Err(DecodeError::Drop(format!(
            "unknown method {class_id}.{method_id}"
        )));
    }
    // amq-protocol drops basic.qos prefetch-size on parse; RabbitMQ refuses a non-zero one.
    if (class_id, method_id) == (60, 10) && payload.len() >= 8 {
        let size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if size != 0 {
            return Err(
                AmqpError::not_implemented(format!("prefetch_size!=0 ({size})"))
                    .with_method(60, 10)
                    .into(),
            );
        }
    }
    if (class_id, method_id) == (60, 40) {
        return decode_publish(&payload[4..])
            .map(|publish| Frame::Publish { channel, publish })
            .ok_or_else(|| malformed(class_id, method_id));
    }
    // amq-protocol's table parser recurses per level: bound the depth before it runs.
    if let Err(e) = nesting::check_method(class_id, method_id, &payload[4..]) {
        return Err(DecodeError::Refused {
            channel,
            error: AmqpError::precondition_failed(e).with_method(class_id, method_id),
        });
    }
    match all_consuming(parse_class).parse(payload) {
        Ok((_, method)) => Ok(Frame::Method {
            channel,
            method: Box::new(method),
        }),
        Err(_) => Err(malformed(class_id, method_id)),
    }
}

/// compat: RabbitMQ drops the socket without a word on a method it cannot parse (an
/// unknown field type in its arguments, say); Warren closes with 501 naming the method.
fn malformed(class_id: u16, method_id: u16) -> DecodeError {
    AmqpError::frame_error("malformed method frame (bad field, or malformed UTF-8 in a shortstr)")
        .with_method(class_id, method_id)
        .into()
}

/// The arguments of `basic.publish`: reserved short, exchange and routing key (shortstrs),
/// then the mandatory and immediate bits; nothing may follow. `None` if malformed.
fn decode_publish(mut p: &[u8]) -> Option<amq_protocol::protocol::basic::Publish> {
    fn shortstr<'a>(p: &mut &'a [u8]) -> Option<&'a str> {
        let (&n, rest) = p.split_first()?;
        let (s, rest) = rest.split_at_checked(usize::from(n))?;
        *p = rest;
        std::str::from_utf8(s).ok()
    }
    let (_ticket, rest) = p.split_at_checked(2)?;
    p = rest;
    let exchange = shortstr(&mut p)?;
    let routing_key = shortstr(&mut p)?;
    let [bits] = p else { return None };
    Some(amq_protocol::protocol::basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

/// Decoded message properties, shared by every copy of a message. A message without any
/// (the common case) holds nothing: it reads one static empty set, so it costs no parse, no
/// allocation, and no reference count that every connection would touch.
#[derive(Clone, Debug, Default)]
pub struct Properties(Option<Arc<BasicProperties>>);

static NO_PROPERTIES: std::sync::LazyLock<BasicProperties> =
    std::sync::LazyLock::new(Default::default);

impl Properties {
    /// Shares `p`.
    pub fn new(p: BasicProperties) -> Self {
        Self(Some(Arc::new(p)))
    }
}

impl std::ops::Deref for Properties {
    type Target = BasicProperties;

    fn deref(&self) -> &BasicProperties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A content header from its payload; `raw_properties` is the payload from byte 12 on,
/// kept for writing the header out again.
fn decode_header(
    channel: u16,
    payload: &[u8],
    raw_properties: Bytes,
) -> Result<Frame, DecodeError> {
    if payload.len() < 14 {
        return Err(AmqpError::frame_error("content header frame too short").into());
    }
    let ids = content::HeaderIds {
        class_id: u16::from_be_bytes([payload[0], payload[1]]),
        weight: u16::from_be_bytes([payload[2], payload[3]]),
    };
    let body_size = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes checked"));
    // Most messages carry no properties at all: they share one decoded empty set.
    let properties = if raw_properties[..] == NO_PROPERTY_FLAGS {
        Properties::default()
    } else {
        if let Err(e) = nesting::check_properties(&raw_properties) {
            return Err(DecodeError::Refused {
                channel,
                error: AmqpError::precondition_failed(format!("message headers: {e}"))
                    .with_method(60, 40),
            });
        }
        match all_consuming(parse_properties).parse(&raw_properties[..]) {
            Ok((_, p)) => Properties::new(p),
            // compat: RabbitMQ 3.10.8 answers an unknown field type in the headers table
            // with 541 INTERNAL_ERROR (its parser crashes); Warren says what it could not read.
            Err(_) => {
                return Err(AmqpError::frame_error("malformed content header properties").into());
            }
        }
    };
    Ok(Frame::Header {
        channel,
        ids,
        body_size,
        properties,
        raw_properties,
    })
}

/// Methods a client may send; anything else gets the TCP connection closed.
fn known_method(class_id: u16, method_id: u16) -> bool {
    matches!(
        (class_id, method_id),
        (10, 11 | 21 | 31 | 40 | 50 | 51 | 70)
            | (20, 10 | 20 | 21 | 40 | 41)
            | (30, 10)
            | (40, 10 | 20 | 30 | 40)
            | (50, 10 | 20 | 30 | 40 | 50)
            | (60, 10 | 20 | 30 | 40 | 70 | 80 | 90 | 100 | 110 | 120)
            | (85, 10)
            | (90, 10 | 20 | 30)
    )
}

/// Appends a method frame.
pub fn write_method(out: &mut BytesMut, channel: u16, method: &AMQPClass) {
    let frame = AMQPFrame::Method(channel, method.clone());
    let ctx = WriteContext::from(Vec::with_capacity(64));
    // A Vec grows as needed, so generation can only fail on a value amq-protocol cannot
    // encode; every method Warren sends is built from bounded shortstrs and tables.
    match gen_frame(&frame)(ctx) {
        Ok(ctx) => out.extend_from_slice(&ctx.into_inner().0),
        Err(e) => tracing::error!("cannot encode {method:?}: {e}"),
    }
}

/// A cursor over a region just added to the end of an output buffer. The hot writers size
/// their frames up front and fill them through this, so a delivery costs one capacity check
/// and a few copies instead of a call into `BufMut` per field.
struct Put<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Put<'_> {
    /// Grows `out` by `n` bytes (zeroed, then overwritten) and points a cursor at them.
    fn grow(out: &mut BytesMut, n: usize) -> Put<'_> {
        let start = out.len();
        out.resize(start + n, 0);
        Put {
            buf: &mut out[start..],
            at: 0,
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    fn u8(&mut self, v: u8) {
        self.buf[self.at] = v;
        self.at += 1;
    }

    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    /// A shortstr; callers pass at most 255 bytes (see `shortstr`).
    fn shortstr(&mut self, s: &[u8]) {
        self.u8(s.len() as u8);
        // Skipping the copy of an empty string is not only cheaper: an empty name's pointer
        // is dangling, and glibc's AVX-512 routines read it with a masked load that the CPU
        // completes through a slow fault-suppression assist.
        if !s.is_empty() {
            self.bytes(s);
        }
    }

    /// Starts a method frame whose arguments take `args` bytes.
    fn method(
        out: &mut BytesMut,
        channel: u16,
        class_id: u16,
        method_id: u16,
        args: usize,
    ) -> Put<'_> {
        let mut p = Put::grow(out, 7 + 4 + args + 1);
        p.u8(FRAME_METHOD);
        p.u16(channel);
        p.u32((4 + args) as u32);
        p.u16(class_id);
        p.u16(method_id);
        p
    }

    /// Closes a frame started with `method`; its size must have been exact.
    fn end(mut self) {
        self.u8(FRAME_END);
        debug_assert_eq!(self.at, self.buf.len(), "frame size computed wrongly");
    }
}

/// Shortstrs Warren writes come from names it accepted as shortstrs; the cut only guards
/// against a caller passing something longer.
fn shortstr(s: &str) -> &[u8] {
    &s.as_bytes()[..s.len().min(255)]
}

/// Appends `basic.deliver` (hand-written: it is on every delivery).
pub fn write_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let (tag, ex, rk) = (
        shortstr(consumer_tag),
        shortstr(exchange),
        shortstr(routing_key),
    );
    let args = 1 + tag.len() + 8 + 1 + 1 + ex.len() + 1 + rk.len();
    let mut p = Put::method(out, channel, 60, 60, args);
    p.shortstr(tag);
    p.u64(delivery_tag);
    p.u8(redelivered as u8);
    p.shortstr(ex);
    p.shortstr(rk);
    p.end();
}

/// Appends `basic.get-ok`.
pub fn write_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let (ex, rk) = (shortstr(exchange), shortstr(routing_key));
    let args = 8 + 1 + 1 + ex.len() + 1 + rk.len() + 4;
    let mut p = Put::method(out, channel, 60, 71, args);
    p.u64(delivery_tag);
    p.u8(redelivered as u8);
    p.shortstr(ex);
    p.shortstr(rk);
    p.u32(message_count);
    p.end();
}

/// Appends a publisher-confirm `basic.ack` or `basic.nack` (server to client).
pub fn write_confirm(out: &mut BytesMut, channel: u16, tag: u64, multiple: bool, ack: bool) {
    let mut p = Put::method(out, channel, 60, if ack { 80 } else { 120 }, 9);
    p.u64(tag);
    p.u8(multiple as u8);
    p.end();
}

/// Bodies up to this size are copied into the same region as the frames around them; larger
/// ones are appended directly, so they are not zeroed before being copied.
const INLINE_BODY: usize = 4096;

/// Appends a content header and the body frames, the body cut at `frame_max - 8`; an empty
/// body is sent as no body frame at all (as RabbitMQ and lapin do).
pub fn write_content(
    out: &mut BytesMut,
    channel: u16,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    let header = 7 + 12 + raw_properties.len() + 1;
    let inline = !body.is_empty() && body.len() <= INLINE_BODY.min(chunk);
    let mut p = Put::grow(
        out,
        header
            + if inline {
                FRAME_OVERHEAD + body.len()
            } else {
                0
            },
    );
    p.u8(FRAME_HEADER);
    p.u16(channel);
    p.u32((12 + raw_properties.len()) as u32);
    p.u16(60);
    p.u16(0);
    p.u64(body.len() as u64);
    p.bytes(raw_properties);
    p.u8(FRAME_END);
    if inline {
        p.u8(FRAME_BODY);
        p.u16(channel);
        p.u32(body.len() as u32);
        p.bytes(body);
        p.u8(FRAME_END);
        return;
    }
    out.reserve(body.len() + (body.len() / chunk + 1) * FRAME_OVERHEAD);
    for piece in body.chunks(chunk) {
        let mut p = Put::grow(out, 7);
        p.u8(FRAME_BODY);
        p.u16(channel);
        p.u32(piece.len() as u32);
        out.extend_from_slice(piece);
        out.put_u8(FRAME_END);
    }
}

/// Appends a heartbeat frame.
pub fn write_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Encodes properties (used when Warren must change them, e.g. to strip `BCC`).
pub fn encode_properties(properties: &BasicProperties) -> Bytes {
    let ctx = WriteContext::from(Vec::with_capacity(64));
    match amq_protocol::protocol::basic::gen_properties(properties)(ctx) {
        Ok(ctx) => Bytes::from(ctx.into_inner().0),
        Err(e) => {
            tracing::error!("cannot encode properties: {e}");
            Bytes::from_static(&[0, 0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    fn encode(method: &AMQPClass) -> BytesMut {
        let mut out = BytesMut::new();
        write_method(&mut out, 1, method);
        out
    }

    #[test]
    fn method_round_trips() {
        let m = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 7,
            global: true,
        }));
        let mut buf = encode(&m);
        match decode(&mut buf, 4096).unwrap().unwrap() {
            Frame::Method { channel, method } => {
                assert_eq!(channel, 1);
                assert_eq!(*method, m);
            }
            f => panic!("{f:?}"),
        }
        assert!(buf.is_empty());
    }

    /// The hand decoder of basic.publish agrees with amq-protocol's encoder on every flag
    /// and string, and refuses what amq-protocol's parser refuses: truncation, trailing
    /// bytes, invalid UTF-8.
    #[test]
    fn publish_is_decoded_by_hand_like_amq_protocol() {
        for (x, rk, mandatory, immediate) in [
            ("", "", false, false),
            ("amq.topic", "a.b.c", true, false),
            ("x", &*"k".repeat(255), false, true),
            ("ünï", "cödé", true, true),
        ] {
            let p = basic::Publish {
                exchange: x.into(),
                routing_key: rk.into(),
                mandatory,
                immediate,
            };
            let mut buf = encode(&AMQPClass::Basic(basic::AMQPMethod::Publish(p.clone())));
            match decode(&mut buf, 4096).unwrap().unwrap() {
                Frame::Publish { channel, publish } => {
                    assert_eq!(channel, 1);
                    assert_eq!(publish, p);
                }
                f => panic!("{f:?}"),
            }
        }
        let frame = |args: &[u8]| {
            let mut f = vec![FRAME_METHOD, 0, 1];
            f.extend_from_slice(&(4 + args.len() as u32).to_be_bytes());
            f.extend_from_slice(&[0, 60, 0, 40]);
            f.extend_from_slice(args);
            f.push(FRAME_END);
            BytesMut::from(&f[..])
        };
        assert!(decode(&mut frame(&[0, 0, 1, b'x', 2, b'r', b'k', 1]), 4096).is_ok());
        for bad in [
            &[0, 0, 1, b'x', 2, b'r', b'k'][..],
            &[0, 0, 1, b'x', 2, b'r', b'k', 1, 0],
            &[0, 0, 5, b'x'],
            &[0, 0, 1, 0xff, 0, 0],
            &[0],
        ] {
            let e = decode(&mut frame(bad), 4096).unwrap_err();
            assert!(
                matches!(e, DecodeError::Amqp(ref e) if e.code == 501),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let m = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 5,
            multiple: false,
        }));
        let full = encode(&m);
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert!(decode(&mut part, 4096).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_a_frame_error_before_it_is_buffered() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x13, 0x88][..]);
        match decode(&mut buf, 4096) {
            Err(DecodeError::Amqp(e)) => assert_eq!(e.code, 501),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn bad_frame_end_is_a_frame_error() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert!(matches!(decode(&mut buf, 4096), Err(DecodeError::Amqp(e)) if e.code == 501));
    }

    #[test]
    fn unknown_frame_type_is_a_frame_error() {
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert!(matches!(decode(&mut buf, 4096), Err(DecodeError::Amqp(e)) if e.code == 501));
    }

    #[test]
    fn qos_with_prefetch_size_is_not_implemented() {
        let mut buf = BytesMut::new();
        let mut p = Put::method(&mut buf, 1, 60, 10, 7);
        p.u32(1000);
        p.u16(10);
        p.u8(0);
        p.end();
        assert!(matches!(decode(&mut buf, 4096), Err(DecodeError::Amqp(e)) if e.code == 540));
    }

    #[test]
    fn content_is_split_at_frame_max_minus_8_and_empty_body_has_no_frame() {
        let mut out = BytesMut::new();
        write_content(&mut out, 1, &[0, 0], &[7u8; 10000], 4096);
        let mut frames = vec![];
        while let Some(f) = decode(&mut out, 4096).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 1 + 3);
        match &frames[1] {
            Frame::Body { payload, .. } => assert_eq!(payload.len(), 4088),
            f => panic!("{f:?}"),
        }
        let mut out = BytesMut::new();
        write_content(&mut out, 1, &[0, 0], &[], 4096);
        assert!(matches!(
            decode(&mut out, 4096).unwrap(),
            Some(Frame::Header { body_size: 0, .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn hand_written_deliver_decodes_with_amq_protocol() {
        let mut out = BytesMut::new();
        write_deliver(&mut out, 3, "ctag", 42, true, "ex", "rk");
        match decode(&mut out, 4096) {
            // basic.deliver is server-to-client, so the decoder refuses it as a client method;
            // parse it directly instead.
            Err(DecodeError::Drop(_)) => {}
            r => panic!("{r:?}"),
        }
        let mut out = BytesMut::new();
        write_deliver(&mut out, 3, "ctag", 42, true, "ex", "rk");
        let (_, m) = all_consuming(parse_class)
            .parse(&out[7..out.len() - 1])
            .unwrap();
        assert_eq!(
            m,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into(),
            }))
        );
    }

    /// The hand-sized writers produce exactly what amq-protocol's encoder does.
    #[test]
    fn hand_written_methods_match_amq_protocol_byte_for_byte() {
        let long = "k".repeat(255);
        for (ex, rk) in [("", "q"), ("amq.topic", long.as_str()), ("x", "")] {
            let mut ours = BytesMut::new();
            write_deliver(&mut ours, 7, "amq.ctag-1", u64::MAX, false, ex, rk);
            let mut theirs = BytesMut::new();
            let deliver = basic::Deliver {
                consumer_tag: "amq.ctag-1".into(),
                delivery_tag: u64::MAX,
                redelivered: false,
                exchange: ex.into(),
                routing_key: rk.into(),
            };
            write_method(
                &mut theirs,
                7,
                &AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
            );
            assert_eq!(ours, theirs);

            let mut ours = BytesMut::new();
            write_get_ok(&mut ours, 1, 9, true, ex, rk, 12345);
            let mut theirs = BytesMut::new();
            let get_ok = basic::GetOk {
                delivery_tag: 9,
                redelivered: true,
                exchange: ex.into(),
                routing_key: rk.into(),
                message_count: 12345,
            };
            write_method(
                &mut theirs,
                1,
                &AMQPClass::Basic(basic::AMQPMethod::GetOk(get_ok)),
            );
            assert_eq!(ours, theirs);
        }
        for (ack, multiple) in [(true, true), (false, false)] {
            let mut ours = BytesMut::new();
            write_confirm(&mut ours, 2, 77, multiple, ack);
            let method = if ack {
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 77,
                    multiple,
                })
            } else {
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: 77,
                    multiple,
                    requeue: false,
                })
            };
            let mut theirs = BytesMut::new();
            write_method(&mut theirs, 2, &AMQPClass::Basic(method));
            assert_eq!(ours, theirs);
        }
    }

    /// Bodies on either side of the inline limit and of frame_max come back whole.
    #[test]
    fn content_round_trips_around_the_inline_and_frame_limits() {
        for frame_max in [4096u32, 131072] {
            for len in [1usize, 100, 4088, 4089, 4096, 4097, 10000, 300000] {
                let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let mut out = BytesMut::new();
                write_content(&mut out, 5, &[0, 0], &body, frame_max);
                let mut got = Vec::new();
                match decode(&mut out, frame_max).unwrap() {
                    Some(Frame::Header { body_size, .. }) => assert_eq!(body_size, len as u64),
                    f => panic!("{f:?}"),
                }
                while let Some(f) = decode(&mut out, frame_max).unwrap() {
                    match f {
                        Frame::Body {
                            channel: 5,
                            payload,
                        } => got.extend_from_slice(&payload),
                        f => panic!("{f:?}"),
                    }
                }
                assert_eq!(got, body, "frame_max {frame_max}, {len} bytes");
            }
        }
    }
}
