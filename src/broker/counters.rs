//! Message counters for the metrics endpoint: what RabbitMQ's `rabbitmq_global_messages_*`
//! families count (received, routed, unroutable, confirmed, delivered, acknowledged, ...).
//!
//! Each channel counts its own in a [`Counters`] inside its `ChannelView`: the channel is
//! the only writer, so a count is a relaxed load and store on a line its own core holds (no
//! locked instruction, nothing shared on the publish or deliver path). When a channel or
//! connection goes, its counts are folded into the connection registry's retired totals,
//! under the same lock a scrape sums under, so a counter never goes backwards
//! (`crate::broker::connections::Registry::message_counts`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Index of each count in [`Counters`] and [`Counts`].
pub mod count {
    /// `basic.publish` accepted from a client.
    pub const RECEIVED: usize = 0;
    /// ... of them on a channel in confirm mode.
    pub const RECEIVED_CONFIRM: usize = 1;
    /// Routed to at least one queue (or held by a delayed exchange).
    pub const ROUTED: usize = 2;
    /// Routed nowhere, not mandatory: dropped.
    pub const UNROUTABLE_DROPPED: usize = 3;
    /// Routed nowhere, mandatory: returned.
    pub const UNROUTABLE_RETURNED: usize = 4;
    /// Publisher confirms sent (acks, per message).
    pub const CONFIRMED: usize = 5;
    /// Deliveries to consumers that ack.
    pub const DELIVERED_CONSUME_MANUAL_ACK: usize = 6;
    /// Deliveries to no-ack consumers.
    pub const DELIVERED_CONSUME_AUTO_ACK: usize = 7;
    /// `basic.get-ok` that wants an ack.
    pub const DELIVERED_GET_MANUAL_ACK: usize = 8;
    /// `basic.get-ok` with no-ack.
    pub const DELIVERED_GET_AUTO_ACK: usize = 9;
    /// `basic.get-empty`.
    pub const GET_EMPTY: usize = 10;
    /// Deliveries and gets flagged redelivered.
    pub const REDELIVERED: usize = 11;
    /// Messages acknowledged by clients.
    pub const ACKNOWLEDGED: usize = 12;
    /// How many there are.
    pub const N: usize = 13;
}

/// One channel's counts, written by that channel alone.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; count::N]);

impl Counters {
    /// Adds `n` to count `i`. Only the owning channel calls it: a load and a store, not a
    /// read-modify-write, since nobody else writes.
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        let c = &self.0[i];
        c.store(c.load(Relaxed) + n, Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> Counts {
        Counts(std::array::from_fn(|i| self.0[i].load(Relaxed)))
    }
}

/// A reading of counters, or a sum of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; count::N]);

impl Counts {
    /// Adds `o` into these.
    pub fn add(&mut self, o: &Self) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a = a.wrapping_add(b);
        }
    }

    /// Every delivery and get-ok (RabbitMQ's `messages_delivered_total`).
    pub fn delivered(&self) -> u64 {
        use count::*;
        self.0[DELIVERED_CONSUME_MANUAL_ACK]
            + self.0[DELIVERED_CONSUME_AUTO_ACK]
            + self.0[DELIVERED_GET_MANUAL_ACK]
            + self.0[DELIVERED_GET_AUTO_ACK]
    }
}
