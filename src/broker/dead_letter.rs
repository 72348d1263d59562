//! Dead-lettering: the `x-death` history RabbitMQ 3.10 writes into a dead-lettered message,
//! and the cycle rule that drops a message instead of looping it forever.
//!
//! Pure functions over messages; the queue decides when to dead-letter and the vhost routes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};

use crate::broker::args::as_bytes;
use crate::broker::message::Message;
use crate::protocol::encode_properties;

/// Why a message was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// A length limit pushed it out.
    Maxlen,
    /// It was returned more often than the delivery limit allows.
    DeliveryLimit,
}

impl Reason {
    /// The name RabbitMQ writes in `x-death`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Most distinct (queue, reason) entries a message's `x-death` may hold before a further
/// dead-lettering drops it: a bound on how far one publish can travel through a chain of
/// queues that dead-letter into each other. RabbitMQ has none; no real topology comes near.
pub const MAX_HOPS: usize = 100;

/// The entries in a message's `x-death`.
pub fn hops(msg: &Message) -> usize {
    match msg
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().len(),
        _ => 0,
    }
}

fn string(v: Option<&AMQPValue>) -> Option<&[u8]> {
    v.and_then(as_bytes)
}

/// The message as it is re-published to the dead-letter exchange: `x-death` updated (the
/// entry for this queue and reason counted up and moved to the front, or a new one), the
/// `x-first-death-*` headers set once, a per-message `expiration` moved into the entry as
/// `original-expiration`, the exchange set to the dead-letter exchange (as RabbitMQ
/// re-publishes it there), and the routing key replaced when the queue has a DL routing key.
pub fn dead_lettered(
    msg: &Message,
    queue: &str,
    reason: Reason,
    dlx: &str,
    routing_key: Option<&str>,
) -> Arc<Message> {
    let mut props = (*msg.properties).clone();
    let mut headers = props.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let is_ours = |d: &AMQPValue| match d {
        AMQPValue::FieldTable(t) => {
            string(t.inner().get("queue")) == Some(queue.as_bytes())
                && string(t.inner().get("reason")) == Some(reason.name().as_bytes())
        }
        _ => false,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let entry = match deaths.iter().position(is_ours) {
        Some(i) => {
            let AMQPValue::FieldTable(mut t) = deaths.remove(i) else {
                unreachable!("is_ours matched a table")
            };
            let count = t
                .inner()
                .get("count")
                .and_then(crate::broker::args::as_int)
                .unwrap_or(0);
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), AMQPValue::LongString(reason.name().into()));
            t.insert("queue".into(), AMQPValue::LongString(queue.into()));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t.insert(
                "exchange".into(),
                AMQPValue::LongString(msg.exchange.as_str().into()),
            );
            let mut keys = vec![AMQPValue::LongString(msg.routing_key.as_str().into())];
            if let Some(AMQPValue::FieldArray(cc)) = headers.inner().get("CC") {
                keys.extend(cc.as_slice().iter().cloned());
            }
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(keys)),
            );
            if let Some(exp) = props.expiration() {
                t.insert(
                    "original-expiration".into(),
                    AMQPValue::LongString(exp.as_str().into()),
                );
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (k, v) in [
        ("x-first-death-reason", reason.name()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", msg.exchange.as_str()),
    ] {
        if !headers.contains_key(k) {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        }
    }
    props = props.with_headers(headers);
    if props.expiration().is_some() {
        props = strip_expiration(props);
    }
    Arc::new(Message {
        exchange: dlx.into(),
        routing_key: routing_key.map_or_else(|| msg.routing_key.clone(), Into::into),
        raw_properties: encode_properties(&props),
        properties: crate::protocol::Properties::new(props),
        body: msg.body.clone(),
    })
}

fn strip_expiration(
    p: amq_protocol::protocol::BasicProperties,
) -> amq_protocol::protocol::BasicProperties {
    // BasicProperties has no setter that clears a field: rebuild it without `expiration`.
    let mut out = amq_protocol::protocol::BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $with:ident),*) => {
            $(if let Some(v) = p.$get().clone() { out = out.$with(v); })*
        };
    }
    copy!(content_type => with_content_type, content_encoding => with_content_encoding,
        headers => with_headers, delivery_mode => with_delivery_mode, priority => with_priority,
        correlation_id => with_correlation_id, reply_to => with_reply_to,
        message_id => with_message_id, timestamp => with_timestamp, kind => with_type,
        user_id => with_user_id, app_id => with_app_id, cluster_id => with_cluster_id);
    out
}

/// The `count` of `msg`'s `x-death` entry for (`queue`, `reason`), 0 when there is none.
pub fn death_count(msg: &Message, queue: &str, reason: Reason) -> i64 {
    let Some(AMQPValue::FieldArray(deaths)) = msg
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return 0;
    };
    deaths
        .as_slice()
        .iter()
        .find_map(|d| match d {
            AMQPValue::FieldTable(t)
                if string(t.inner().get("queue")) == Some(queue.as_bytes())
                    && string(t.inner().get("reason")) == Some(reason.name().as_bytes()) =>
            {
                t.inner().get("count").and_then(crate::broker::args::as_int)
            }
            _ => None,
        })
        .unwrap_or(0)
}

/// Whether re-publishing `msg` (already carrying its new `x-death`) into `target` would close
/// a dead-letter cycle with no rejection in it, in which case RabbitMQ drops the message.
pub fn is_cycle(msg: &Message, target: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = msg
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return false;
    };
    let mut seen_target = false;
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            continue;
        };
        if string(t.inner().get("reason")) == Some(b"rejected") {
            // A client decided along the way: not an automatic loop.
            return false;
        }
        if string(t.inner().get("queue")) == Some(target.as_bytes()) {
            seen_target = true;
            break;
        }
    }
    seen_target
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg() -> Message {
        Message {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            properties: crate::protocol::Properties::new(
                amq_protocol::protocol::BasicProperties::default().with_expiration("100".into()),
            ),
            raw_properties: Bytes::new(),
            body: Bytes::from_static(b"b"),
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("x-death")
        {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|v| match v {
                    AMQPValue::FieldTable(t) => t.clone(),
                    _ => panic!(),
                })
                .collect(),
            _ => panic!("no x-death"),
        }
    }

    #[test]
    fn first_death_records_everything_and_moves_expiration() {
        let d = dead_lettered(&msg(), "q", Reason::Expired, "dlx", Some("new"));
        assert_eq!(d.routing_key.as_str(), "new");
        assert!(d.properties.expiration().is_none());
        let x = deaths(&d);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert!(x[0].contains_key("original-expiration"));
        let h = d.properties.headers().clone().unwrap();
        assert_eq!(
            h.inner().get("x-first-death-reason"),
            Some(&AMQPValue::LongString("expired".into()))
        );
    }

    #[test]
    fn same_queue_and_reason_counts_up() {
        let once = dead_lettered(&msg(), "q", Reason::Rejected, "dlx", None);
        let other = dead_lettered(&once, "q2", Reason::Expired, "dlx", None);
        let twice = dead_lettered(&other, "q", Reason::Rejected, "dlx", None);
        let x = deaths(&twice);
        assert_eq!(x.len(), 2);
        assert_eq!(
            x[0].inner().get("queue"),
            Some(&AMQPValue::LongString("q".into()))
        );
        assert_eq!(x[0].inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
    }

    #[test]
    fn cycles_without_rejection_are_detected() {
        let expired = dead_lettered(&msg(), "a", Reason::Expired, "dlx", None);
        assert!(is_cycle(&expired, "a"));
        assert!(!is_cycle(&expired, "b"));
        let rejected = dead_lettered(&msg(), "a", Reason::Rejected, "dlx", None);
        assert!(!is_cycle(&rejected, "a"));
    }
}
