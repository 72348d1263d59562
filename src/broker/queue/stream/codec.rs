//! A stream record's payload: the message as published (exchange, routing key, encoded
//! properties, body), and the delivery built back from it with the `x-stream-offset` header
//! spliced into the encoded properties. Byte work only; talks to nothing.
//!
//! ```text
//! [version u8 = 1][exchange len u8][exchange][routing key len u8][routing key]
//! [filter flag u8][filter len u32 LE][properties len u32 LE]
//! [filter value][properties, as on the wire][body]
//! ```
//!
//! The filter value is the publisher's `x-stream-filter-value` header (flag 1), kept apart
//! so a filtering reader compares it without decoding properties.
//!
//! Properties are stored as the publisher's content header carried them, so replaying a
//! record is copies, not a decode and re-encode: the offset header is inserted by walking
//! to the `headers` field (after the two short strings that may precede it) and growing
//! its table, or adding one.

use std::sync::Arc;

use amq_protocol::types::{FieldTable, ShortString};
use bytes::{BufMut, Bytes, BytesMut};

use crate::broker::message::Message;

const VERSION: u8 = 1;

/// The header every delivery from a stream carries.
pub(super) const OFFSET_HEADER: &str = "x-stream-offset";

/// Property flag bits (AMQP 0-9-1 basic class): content-type, content-encoding, headers.
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;

/// The encoded table entry `x-stream-offset: l <offset>`.
const ENTRY_LEN: usize = 1 + OFFSET_HEADER.len() + 1 + 8;

/// The properties to store: the publisher's, except that a header named `x-stream-offset`
/// is dropped (every delivery carries the true one instead, as RabbitMQ's do).
pub(super) fn stored_properties(msg: &Message) -> Bytes {
    let has_own = msg
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key(OFFSET_HEADER));
    if !has_own {
        return msg.raw_properties.clone();
    }
    let mut headers = FieldTable::default();
    for (k, v) in msg.properties.headers().as_ref().into_iter().flatten() {
        if k.as_str() != OFFSET_HEADER {
            headers.insert(k.clone(), v.clone());
        }
    }
    let p = (*msg.properties).clone().with_headers(headers);
    crate::protocol::encode_properties(&p)
}

/// Longest record head: version, two short strings with their lengths, the filter flag
/// and the two lengths.
pub(super) const HEAD_MAX: usize = 1 + 2 * 256 + 1 + 4 + 4;

/// The header a publisher sets for stream filtering (RabbitMQ 3.13+).
pub(super) const FILTER_HEADER: &str = "x-stream-filter-value";

/// The message's `x-stream-filter-value`, when it is a string.
pub(super) fn filter_value(msg: &Message) -> Option<&[u8]> {
    let h = msg.properties.headers().as_ref()?;
    match h.inner().get(FILTER_HEADER)? {
        amq_protocol::types::AMQPValue::LongString(s) => Some(s.as_bytes()),
        amq_protocol::types::AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// The head of a record's payload; the record is `head ‖ filter ‖ properties ‖ body`,
/// handed to `StreamLog::append_parts` as four parts so nothing is copied twice. Built on
/// the stack: no allocation.
pub(super) fn encode_head(
    msg: &Message,
    filter: Option<&[u8]>,
    properties_len: usize,
) -> ([u8; HEAD_MAX], usize) {
    let mut head = [0u8; HEAD_MAX];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        head[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&[VERSION]);
    // Exchange names and routing keys are short strings: under 256 bytes.
    for s in [msg.exchange.as_str(), msg.routing_key.as_str()] {
        put(&[s.len() as u8]);
        put(s.as_bytes());
    }
    put(&[u8::from(filter.is_some())]);
    put(&(filter.map_or(0, <[u8]>::len) as u32).to_le_bytes());
    put(&(properties_len as u32).to_le_bytes());
    (head, at)
}

/// A record's parts, located: (exchange, routing key, filter value, properties, body).
struct Parts<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    filter: Option<&'a [u8]>,
    properties: &'a [u8],
    body_at: usize,
}

fn parts(b: &[u8]) -> Option<Parts<'_>> {
    if b.first() != Some(&VERSION) {
        return None;
    }
    let mut at = 1;
    let mut short = || -> Option<&str> {
        let n = usize::from(*b.get(at)?);
        let s = std::str::from_utf8(b.get(at + 1..at + 1 + n)?).ok()?;
        at += 1 + n;
        Some(s)
    };
    let exchange = short()?;
    let routing_key = short()?;
    let flag = *b.get(at)?;
    let u32_at = |i: usize| -> Option<usize> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    let flen = u32_at(at + 1)?;
    let plen = u32_at(at + 5)?;
    at += 9;
    let filter = b.get(at..at + flen)?;
    at += flen;
    let properties = b.get(at..at + plen)?;
    Some(Parts {
        exchange,
        routing_key,
        filter: (flag == 1).then_some(filter),
        properties,
        body_at: at + plen,
    })
}

/// Whether a record passes a consumer's `x-stream-filter`: its filter value is one of
/// `values`, or it has none and unfiltered messages are wanted. `None` for a payload this
/// module did not write.
pub(super) fn passes(payload: &[u8], values: &[Vec<u8>], match_unfiltered: bool) -> Option<bool> {
    let p = parts(payload)?;
    Some(match p.filter {
        Some(f) => values.iter().any(|v| v.as_slice() == f),
        None => match_unfiltered,
    })
}

/// The message a record holds, as delivered: the offset header in its properties.
/// `None` when the payload is not one this module wrote (the log's checksums make that a
/// bug, not disk damage).
pub(super) fn decode(payload: &Bytes, offset: u64) -> Option<Arc<Message>> {
    let p = parts(payload)?;
    let raw_properties = with_offset(p.properties, offset)?;
    Some(Arc::new(Message {
        exchange: ShortString::from(p.exchange),
        routing_key: ShortString::from(p.routing_key),
        // Deliveries are written from the encoded properties; nothing on the way out
        // reads the decoded ones.
        properties: crate::protocol::Properties::default(),
        raw_properties,
        body: payload.slice(p.body_at..),
    }))
}

/// Encoded properties with `x-stream-offset: l offset` added to their headers table.
fn with_offset(props: &[u8], offset: u64) -> Option<Bytes> {
    let flags = u16::from_be_bytes(props.get(..2)?.try_into().ok()?);
    let mut pos = 2;
    for bit in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & bit != 0 {
            pos += 1 + usize::from(*props.get(pos)?);
        }
    }
    let mut out = BytesMut::with_capacity(props.len() + ENTRY_LEN + 4);
    out.put_u16(flags | HEADERS);
    out.put_slice(props.get(2..pos)?);
    let rest = if flags & HEADERS != 0 {
        let len = u32::from_be_bytes(props.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let table = props.get(pos + 4..pos + 4 + len)?;
        out.put_u32((len + ENTRY_LEN) as u32);
        out.put_slice(table);
        pos + 4 + len
    } else {
        out.put_u32(ENTRY_LEN as u32);
        pos
    };
    out.put_u8(OFFSET_HEADER.len() as u8);
    out.put_slice(OFFSET_HEADER.as_bytes());
    out.put_u8(b'l');
    out.put_i64(offset as i64);
    out.put_slice(props.get(rest..)?);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn message(p: BasicProperties) -> Message {
        Message {
            exchange: "x".into(),
            routing_key: "a.b".into(),
            raw_properties: crate::protocol::encode_properties(&p),
            properties: crate::protocol::Properties::new(p),
            body: Bytes::from_static(b"body"),
        }
    }

    fn round_trip(p: BasicProperties, offset: u64) -> (Arc<Message>, BasicProperties) {
        let m = message(p);
        let props = stored_properties(&m);
        let filter = filter_value(&m);
        let (head, n) = encode_head(&m, filter, props.len());
        let payload = Bytes::from(
            [
                &head[..n],
                filter.unwrap_or_default(),
                &props[..],
                &m.body[..],
            ]
            .concat(),
        );
        let out = decode(&payload, offset).expect("decodes");
        let (_, parsed) = amq_protocol::protocol::basic::parse_properties(&out.raw_properties[..])
            .expect("valid");
        (out, parsed)
    }

    fn offset_of(p: &BasicProperties) -> Option<AMQPValue> {
        p.headers().as_ref()?.inner().get(OFFSET_HEADER).cloned()
    }

    #[test]
    fn bare_and_rich_properties_gain_the_offset_header() {
        let (m, p) = round_trip(BasicProperties::default(), 7);
        assert_eq!(offset_of(&p), Some(AMQPValue::LongLongInt(7)));
        assert_eq!((m.exchange.as_str(), m.routing_key.as_str()), ("x", "a.b"));
        assert_eq!(&m.body[..], b"body");

        let mut h = FieldTable::default();
        h.insert("h1".into(), AMQPValue::LongString("v".into()));
        let rich = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_headers(h)
            .with_priority(3)
            .with_message_id("m1".into());
        let (_, p) = round_trip(rich, 1 << 40);
        assert_eq!(offset_of(&p), Some(AMQPValue::LongLongInt(1 << 40)));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        assert_eq!(
            p.content_encoding().as_ref().map(|s| s.as_str()),
            Some("gzip")
        );
        assert_eq!(*p.priority(), Some(3));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m1"));
        let h = p.headers().clone().unwrap();
        assert_eq!(
            h.inner().get("h1"),
            Some(&AMQPValue::LongString("v".into()))
        );
    }

    #[test]
    fn a_publishers_offset_header_is_replaced() {
        let mut h = FieldTable::default();
        h.insert(OFFSET_HEADER.into(), AMQPValue::LongString("999".into()));
        let (_, p) = round_trip(BasicProperties::default().with_headers(h), 2);
        assert_eq!(offset_of(&p), Some(AMQPValue::LongLongInt(2)));
        assert_eq!(p.headers().as_ref().unwrap().inner().len(), 1);
    }

    #[test]
    fn filter_values_are_kept_apart_for_the_reader() {
        let mut h = FieldTable::default();
        h.insert(FILTER_HEADER.into(), AMQPValue::LongString("red".into()));
        let m = message(BasicProperties::default().with_headers(h));
        let props = stored_properties(&m);
        let (head, n) = encode_head(&m, filter_value(&m), props.len());
        let payload = [&head[..n], b"red", &props[..], &m.body[..]].concat();
        assert_eq!(passes(&payload, &[b"red".to_vec()], false), Some(true));
        assert_eq!(passes(&payload, &[b"blue".to_vec()], true), Some(false));
        let bare = message(BasicProperties::default());
        let (head, n) = encode_head(&bare, None, bare.raw_properties.len());
        let payload = [&head[..n], &bare.raw_properties[..], &bare.body[..]].concat();
        assert_eq!(passes(&payload, &[b"red".to_vec()], true), Some(true));
        assert_eq!(passes(&payload, &[b"red".to_vec()], false), Some(false));
        let out = decode(&Bytes::from(payload), 3).unwrap();
        assert_eq!(&out.body[..], b"body");
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert!(decode(&Bytes::from_static(b""), 0).is_none());
        assert!(decode(&Bytes::from_static(b"\x01\x05ab"), 0).is_none());
    }
}
