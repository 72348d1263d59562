//! A published message as the broker holds it: shared by every queue it was routed to.
//!
//! The body and the encoded properties are `Bytes`, so routing to N queues copies a pointer,
//! not the payload. Talks to nothing.

use std::sync::Arc;

use amq_protocol::types::ShortString;
use bytes::Bytes;

/// An immutable published message.
#[derive(Debug)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// Decoded properties.
    pub properties: crate::protocol::Properties,
    /// The properties as they go on the wire.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// Delivery mode 2: kept on disk when routed to a durable queue.
    pub fn is_persistent(&self) -> bool {
        *self.properties.delivery_mode() == Some(2)
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

/// A message's place in one queue.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Position in the queue; requeued messages go back to their position.
    pub seq: u64,
    /// The shared message.
    pub msg: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Priority level (0 without `x-max-priority`).
    pub priority: u8,
    /// Absolute expiry deadline, ms since the Unix epoch.
    pub expires_at: Option<u64>,
    /// Failed deliveries so far (counted when the queue has a delivery limit).
    pub delivery_count: u32,
    /// Body size in bytes.
    pub size: u32,
    /// Its record in the message log: persistent messages in durable queues, and any
    /// message that was paged out of memory.
    pub log: Option<Logged>,
}

/// Where an entry's record is in the message log.
#[derive(Clone, Copy, Debug)]
pub struct Logged {
    /// Its id, for acks and delivered marks.
    pub id: crate::store::MsgId,
    /// Where to read it back.
    pub loc: crate::store::Location,
    /// Readable once the log's watermark reaches this.
    pub seq: crate::store::Seq,
}
