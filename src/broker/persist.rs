//! How a queued message is written into the message log and read back at recovery: the
//! payload the store keeps opaque.
//!
//! Layout (big-endian): version `2`, flags, priority, body length (u32), exchange and routing
//! key as shortstrs, expiry deadline (ms since the Unix epoch, 0 = none), failed-delivery
//! count, properties length and the encoded properties, then the body. The properties are
//! kept in their wire form so recovery can hand them back without re-encoding. The first
//! [`HEAD`] bytes are fixed-size on purpose: recovery hands them over for every message
//! ([`peek`]), so a message that stays paged out is placed without reading its record.

use std::sync::Arc;

use amq_protocol::protocol::basic::parse_properties;
use bytes::{Buf, BufMut, Bytes};
use nom::Parser;
use nom::combinator::all_consuming;

use crate::broker::message::Message;

const VERSION: u8 = 2;
/// The fixed-size start of a payload: version, flags, priority, body length.
pub const HEAD: usize = 7;
/// Flag: the record only holds a paged-out body; the message is not persistent and must
/// not come back after a restart.
const TRANSIENT: u8 = 1;

/// A message as read back from the log, with its place in the queue.
#[derive(Debug)]
pub struct Stored {
    /// The message.
    pub msg: Arc<Message>,
    /// Absolute expiry deadline.
    pub expires_at: Option<u64>,
    /// Priority level.
    pub priority: u8,
    /// Failed deliveries so far.
    pub delivery_count: u32,
    /// Written only to page the body out of memory: drop it at recovery.
    pub transient: bool,
}

/// Encodes a message for the log into `out` (cleared first, so one buffer can be reused).
pub fn encode(
    msg: &Message,
    expires_at: Option<u64>,
    priority: u8,
    delivery_count: u32,
    transient: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.reserve(
        32 + msg.exchange.as_str().len()
            + msg.routing_key.as_str().len()
            + msg.raw_properties.len()
            + msg.body.len(),
    );
    out.put_u8(VERSION);
    out.put_u8(if transient { TRANSIENT } else { 0 });
    out.put_u8(priority);
    out.put_u32(u32::try_from(msg.body.len()).unwrap_or(u32::MAX));
    for s in [msg.exchange.as_str(), msg.routing_key.as_str()] {
        out.put_u8(s.len() as u8);
        out.put_slice(s.as_bytes());
    }
    out.put_u64(expires_at.unwrap_or(0));
    out.put_u32(delivery_count);
    out.put_u32(msg.raw_properties.len() as u32);
    out.put_slice(&msg.raw_properties);
    out.put_slice(&msg.body);
}

/// Decodes a payload written by [`encode`]; `None` for anything malformed (recovery drops
/// such a record rather than failing the boot).
pub fn decode(mut p: Bytes) -> Option<Stored> {
    let head = peek(&p)?;
    p.advance(HEAD);
    let shortstr = |p: &mut Bytes| -> Option<String> {
        if p.remaining() < 1 {
            return None;
        }
        let n = usize::from(p.get_u8());
        if p.remaining() < n {
            return None;
        }
        String::from_utf8(p.split_to(n).to_vec()).ok()
    };
    let exchange = shortstr(&mut p)?;
    let routing_key = shortstr(&mut p)?;
    if p.remaining() < 8 + 4 + 4 {
        return None;
    }
    let expires = p.get_u64();
    let delivery_count = p.get_u32();
    let plen = p.get_u32() as usize;
    if p.remaining() < plen {
        return None;
    }
    let raw_properties = p.split_to(plen);
    if p.len() != head.size as usize {
        return None;
    }
    // Accepted at publish within the nesting bound; checked again so that a log written by
    // an older version cannot overflow the stack at recovery.
    crate::protocol::nesting::check_properties(&raw_properties).ok()?;
    let (_, properties) = all_consuming(parse_properties)
        .parse(&raw_properties[..])
        .ok()?;
    Some(Stored {
        msg: Arc::new(Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties: crate::protocol::Properties::new(properties),
            raw_properties,
            body: p,
        }),
        expires_at: (expires != 0).then_some(expires),
        priority: head.priority,
        delivery_count,
        transient: head.transient,
    })
}

/// The expiry deadline field of a payload (0 = none) without decoding the rest: the
/// delayed exchange keeps its due time there and reads only that back at recovery.
pub fn expiry_of(p: &[u8]) -> Option<u64> {
    peek(p)?;
    let mut at = HEAD;
    for _ in 0..2 {
        at += 1 + usize::from(*p.get(at)?);
    }
    Some(u64::from_be_bytes(p.get(at..at + 8)?.try_into().ok()?))
}

/// What the fixed-size start of a payload says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Written only to page a body out: not to be recovered.
    pub transient: bool,
    /// Priority level.
    pub priority: u8,
    /// Body size in bytes.
    pub size: u32,
}

/// Reads the start of a payload (at least [`HEAD`] bytes); `None` if it is not one of ours.
pub fn peek(p: &[u8]) -> Option<Head> {
    if p.len() < HEAD || p[0] != VERSION {
        return None;
    }
    Some(Head {
        transient: p[1] & TRANSIENT != 0,
        priority: p[2],
        size: u32::from_be_bytes(p[3..7].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    #[test]
    fn round_trip() {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(3);
        let msg = Message {
            exchange: "x".into(),
            routing_key: "rk".into(),
            raw_properties: crate::protocol::encode_properties(&props),
            properties: crate::protocol::Properties::new(props),
            body: Bytes::from_static(b"body"),
        };
        let mut buf = Vec::new();
        encode(&msg, Some(123), 3, 2, false, &mut buf);
        assert_eq!(expiry_of(&buf), Some(123));
        let s = decode(Bytes::from(buf)).unwrap();
        assert_eq!(s.msg.routing_key.as_str(), "rk");
        assert_eq!(s.msg.properties, msg.properties);
        assert_eq!(&s.msg.body[..], b"body");
        assert_eq!(
            (s.expires_at, s.priority, s.delivery_count),
            (Some(123), 3, 2)
        );
        assert_eq!(
            peek(&buf_head(&msg)),
            Some(Head {
                transient: true,
                priority: 3,
                size: 4
            })
        );
        assert!(decode(Bytes::from_static(b"\x01garbage")).is_none());
        assert!(decode(Bytes::from_static(b"\x02\x00\x00\x00\x00\x00\x09\x05ab")).is_none());
    }

    fn buf_head(msg: &Message) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(msg, None, 3, 0, true, &mut buf);
        buf.truncate(HEAD);
        buf
    }
}
