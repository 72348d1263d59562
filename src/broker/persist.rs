//! How a queued message is written into the message log and read back at recovery: the
//! payload the store keeps opaque.
//!
//! Layout (big-endian): version `1`, exchange and routing key as shortstrs, expiry deadline
//! (ms since the Unix epoch, 0 = none), priority, failed-delivery count, properties length
//! and the encoded properties, then the body. The properties are kept in their wire form so
//! recovery can hand them back without re-encoding.

use std::sync::Arc;

use amq_protocol::protocol::basic::parse_properties;
use bytes::{Buf, BufMut, Bytes};
use nom::Parser;
use nom::combinator::all_consuming;

use crate::broker::message::Message;

const VERSION: u8 = 1;
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
    for s in [msg.exchange.as_str(), msg.routing_key.as_str()] {
        out.put_u8(s.len() as u8);
        out.put_slice(s.as_bytes());
    }
    out.put_u64(expires_at.unwrap_or(0));
    out.put_u8(priority);
    out.put_u32(delivery_count);
    out.put_u32(msg.raw_properties.len() as u32);
    out.put_slice(&msg.raw_properties);
    out.put_slice(&msg.body);
}

/// Decodes a payload written by [`encode`]; `None` for anything malformed (recovery drops
/// such a record rather than failing the boot).
pub fn decode(mut p: Bytes) -> Option<Stored> {
    if p.len() < 2 || p.get_u8() != VERSION {
        return None;
    }
    let flags = p.get_u8();
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
    if p.remaining() < 8 + 1 + 4 + 4 {
        return None;
    }
    let expires = p.get_u64();
    let priority = p.get_u8();
    let delivery_count = p.get_u32();
    let plen = p.get_u32() as usize;
    if p.remaining() < plen {
        return None;
    }
    let raw_properties = p.split_to(plen);
    let (_, properties) = all_consuming(parse_properties)
        .parse(&raw_properties[..])
        .ok()?;
    Some(Stored {
        msg: Arc::new(Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties: Box::new(properties),
            raw_properties,
            body: p,
        }),
        expires_at: (expires != 0).then_some(expires),
        priority,
        delivery_count,
        transient: flags & TRANSIENT != 0,
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
            properties: Box::new(props),
            body: Bytes::from_static(b"body"),
        };
        let mut buf = Vec::new();
        encode(&msg, Some(123), 3, 2, false, &mut buf);
        let s = decode(Bytes::from(buf)).unwrap();
        assert_eq!(s.msg.routing_key.as_str(), "rk");
        assert_eq!(s.msg.properties, msg.properties);
        assert_eq!(&s.msg.body[..], b"body");
        assert_eq!(
            (s.expires_at, s.priority, s.delivery_count),
            (Some(123), 3, 2)
        );
        assert!(decode(Bytes::from_static(b"\x02garbage")).is_none());
        assert!(decode(Bytes::from_static(b"\x01\x00\x05ab")).is_none());
    }
}
