//! A queue's effective settings, parsed once at declare time from its `x-` arguments and the
//! policy that matches its name, combined the way RabbitMQ combines them (numeric limits take
//! the lower of the two; the other keys take the argument).

use amq_protocol::types::FieldTable;

use crate::broker::args::{as_bytes, as_int};
use crate::config::Policy;

/// What happens when a length limit is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (dead-letter) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse the new message (publishers in confirm mode get a nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// A queue's effective settings.
#[derive(Clone, Debug, Default)]
pub struct QueueArgs {
    /// Per-queue message TTL, ms.
    pub message_ttl: Option<u64>,
    /// Idle expiry, ms.
    pub expires: Option<u64>,
    /// Most ready messages.
    pub max_length: Option<u64>,
    /// Most ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// Overflow behaviour.
    pub overflow: Overflow,
    /// Dead-letter exchange.
    pub dlx: Option<String>,
    /// Dead-letter routing key.
    pub dlrk: Option<String>,
    /// Highest priority level (priority queue when set).
    pub max_priority: Option<u8>,
    /// Only one consumer receives at a time.
    pub single_active: bool,
    /// Failed deliveries allowed before dead-lettering (None = unlimited).
    pub delivery_limit: Option<u64>,
    /// `x-queue-type: quorum` (delivery counting is always on).
    pub quorum: bool,
    /// `x-queue-type: stream`.
    pub stream: bool,
    /// Warren's `x-delivery-limit-exchange`: where messages over the delivery limit are
    /// dead-lettered (default: the dead-letter exchange), so a retry loop through the DLX
    /// can end in a parking queue.
    pub delivery_limit_exchange: Option<String>,
    /// The policy applied, by name, with its definition (the management API shows both).
    pub policy: Option<(String, crate::config::PolicyDefinition)>,
}

/// RabbitMQ 4.x's default delivery limit for quorum queues.
pub const QUORUM_DELIVERY_LIMIT: u64 = 20;

fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl QueueArgs {
    /// Parses already-validated arguments and merges the policy, if any.
    pub fn new(args: &FieldTable, policy: Option<&Policy>) -> Self {
        let get = |k: &str| args.inner().get(k);
        let int = |k: &str| get(k).and_then(as_int);
        let string = |k: &str| {
            get(k)
                .and_then(as_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let unsigned = |k: &str| int(k).and_then(|n| u64::try_from(n).ok());
        let quorum = string("x-queue-type").as_deref() == Some("quorum");
        let stream = string("x-queue-type").as_deref() == Some("stream");
        let def = policy.map(|p| p.definition.clone()).unwrap_or_default();
        let overflow_name = string("x-overflow").or(def.overflow);
        let overflow = match overflow_name.as_deref() {
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            _ => Overflow::DropHead,
        };
        // -1 (or any negative) means unlimited, as in RabbitMQ 4.x.
        let limit_arg = int("x-delivery-limit");
        let policy_limit = def.delivery_limit;
        let delivery_limit = match (limit_arg, policy_limit) {
            (Some(a), Some(b)) if a >= 0 && b >= 0 => Some(a.min(b) as u64),
            (Some(a), _) if a >= 0 => Some(a as u64),
            (Some(_), _) => None,
            (None, Some(b)) if b >= 0 => Some(b as u64),
            (None, Some(_)) => None,
            // compat: follows RabbitMQ 4.x (default 20 for quorum queues); 3.10 had none.
            (None, None) => quorum.then_some(QUORUM_DELIVERY_LIMIT),
        };
        Self {
            message_ttl: lower(unsigned("x-message-ttl"), def.message_ttl),
            expires: lower(unsigned("x-expires"), def.expires),
            max_length: lower(unsigned("x-max-length"), def.max_length),
            max_length_bytes: lower(unsigned("x-max-length-bytes"), def.max_length_bytes),
            overflow,
            dlx: string("x-dead-letter-exchange").or(def.dead_letter_exchange),
            dlrk: string("x-dead-letter-routing-key").or(def.dead_letter_routing_key),
            max_priority: unsigned("x-max-priority").map(|n| n.min(255) as u8),
            single_active: matches!(
                get("x-single-active-consumer"),
                Some(amq_protocol::types::AMQPValue::Boolean(true))
            ),
            delivery_limit,
            quorum,
            stream,
            delivery_limit_exchange: string("x-delivery-limit-exchange"),
            policy: policy.map(|p| (p.name.clone(), p.definition.clone())),
        }
    }

    /// Whether redeliveries are counted (and `x-delivery-count` set).
    pub fn counts_deliveries(&self) -> bool {
        self.quorum || self.delivery_limit.is_some()
    }
}

/// The highest-priority policy that applies to a queue or exchange name.
pub fn matching_policy<'a>(policies: &'a [Policy], name: &str, queue: bool) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.applies(name, queue))
        .max_by_key(|p| p.priority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    fn t(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn policy(def: &str) -> Policy {
        let c = crate::config::Config::parse(&format!(
            "[[policies]]\nname='p'\npattern='.*'\ndefinition={{{def}}}\n"
        ))
        .unwrap();
        c.policies[0].clone()
    }

    #[test]
    fn numeric_limits_take_the_lower_others_take_the_argument() {
        let p = policy("message-ttl = 100, max-length = 50, dead-letter-exchange = 'pol'");
        let a = QueueArgs::new(
            &t(&[
                ("x-message-ttl", AMQPValue::LongInt(500)),
                ("x-max-length", AMQPValue::LongInt(10)),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString("arg".into()),
                ),
            ]),
            Some(&p),
        );
        assert_eq!(a.message_ttl, Some(100));
        assert_eq!(a.max_length, Some(10));
        assert_eq!(a.dlx.as_deref(), Some("arg"));
        let b = QueueArgs::new(&FieldTable::default(), Some(&p));
        assert_eq!(b.dlx.as_deref(), Some("pol"));
    }

    #[test]
    fn quorum_queues_default_to_a_delivery_limit_of_20() {
        let a = QueueArgs::new(
            &t(&[("x-queue-type", AMQPValue::LongString("quorum".into()))]),
            None,
        );
        assert_eq!(a.delivery_limit, Some(20));
        let b = QueueArgs::new(
            &t(&[
                ("x-queue-type", AMQPValue::LongString("quorum".into())),
                ("x-delivery-limit", AMQPValue::LongInt(-1)),
            ]),
            None,
        );
        assert_eq!(b.delivery_limit, None);
        let c = QueueArgs::new(&t(&[("x-delivery-limit", AMQPValue::LongInt(3))]), None);
        assert_eq!(c.delivery_limit, Some(3));
    }
}
