//! Consumers as a queue sees them: the handle a channel and its queue share (credit,
//! prefetch, the delivery window that bounds what a stalled connection is pushed), the
//! channel-wide credit of `basic.qos global`, and the connection's delivery inbox. Common to
//! every queue type; talks to nothing but atomics and the inbox's channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::*;

/// How many deliveries a consumer may have in its connection's inbox, pushed by its queue
/// but not yet written by the connection (RabbitMQ's queue-side unsent-message limit plays
/// the same role). With the connection's pause while its socket is backed up, this is what
/// keeps a consumer that stops reading from draining its queue into the broker's memory,
/// whatever its prefetch (0 is unlimited) or ack mode.
pub const DELIVERY_WINDOW: u32 = 2000;

/// The same window in body bytes: a consumer has at most this much pushed and not yet
/// taken off its connection's inbox (plus the one delivery that crossed it, however large,
/// so a message bigger than the window still goes out). 2,000 deliveries of 64 KiB would be
/// 125 MiB held for a connection that does not read; RabbitMQ's credit flow lets about 250
/// through. With the connection's own 1 MiB write backlog and the kernel's socket buffers,
/// a stalled consumer is pushed a few MiB at most.
pub const DELIVERY_WINDOW_BYTES: u64 = 2 << 20;

/// The sender half of a connection's delivery inbox.
pub type DeliverySink = mpsc::UnboundedSender<QueueEvent>;

/// A connection's delivery inbox, made when its first consumer needs it: an unbounded
/// channel allocates a block of 32 events up front (about 4 KiB), which publishers and idle
/// connections would otherwise each hold for nothing.
#[derive(Debug, Default)]
pub struct Inbox {
    pub(in crate::broker::queue) sink: Option<DeliverySink>,
    /// The receiver, until the connection's loop takes it.
    pub(in crate::broker::queue) fresh: Option<mpsc::UnboundedReceiver<QueueEvent>>,
}

impl Inbox {
    /// A sender for queues to deliver through, making the inbox on first use.
    pub fn sink(&mut self) -> DeliverySink {
        if let Some(s) = &self.sink {
            return s.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.fresh = Some(rx);
        self.sink.insert(tx).clone()
    }

    /// The receiver, once, after `sink` first made it.
    pub fn take_receiver(&mut self) -> Option<mpsc::UnboundedReceiver<QueueEvent>> {
        self.fresh.take()
    }
}

/// Channel-wide credit shared by the channel's acking consumers: the prefetch of
/// `basic.qos global=true`, and a bound on the body bytes of their unacked deliveries.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    /// 0 = unlimited.
    pub limit: AtomicU32,
    /// Unacked deliveries of the channel's acking consumers.
    pub in_flight: AtomicU32,
    /// Body bytes of those deliveries.
    pub(in crate::broker::queue) unacked_bytes: AtomicU64,
    /// `max_unacked_bytes`: past it the channel's consumers get nothing more until acks
    /// come, whatever their prefetch (with prefetch 0 nothing else would stop a consumer
    /// that never acks from holding its whole queue in memory). 0 = unlimited.
    pub(in crate::broker::queue) byte_limit: u64,
}

impl ChannelCredit {
    /// Credit for a channel whose unacked deliveries may hold `byte_limit` body bytes.
    pub fn with_byte_limit(byte_limit: u64) -> Self {
        Self {
            byte_limit,
            ..Self::default()
        }
    }

    /// Whether the unacked deliveries hold the most bytes allowed.
    pub fn bytes_full(&self) -> bool {
        self.byte_limit != 0 && self.unacked_bytes.load(Ordering::Acquire) >= self.byte_limit
    }
}

/// One consumer as its queue and its channel both see it. Every delivery carries it, so
/// the channel writes the delivery without looking the consumer up by tag, and can tell a
/// delivery for a consumer it has since dropped even when a new one took the same tag.
#[derive(Debug)]
pub struct ConsumerHandle {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// No-ack mode.
    pub no_ack: bool,
    /// Per-consumer prefetch for acking consumers (0 = unlimited), fixed at consume time as
    /// in RabbitMQ.
    pub limit: u32,
    /// Deliveries not yet acked (acking consumers only).
    pub in_flight: AtomicU32,
    /// Deliveries pushed to the connection and not yet taken off its inbox (the high bits,
    /// from [`UNWRITTEN_COUNT_SHIFT`]; at most [`DELIVERY_WINDOW`]) and their body bytes (the
    /// low bits; at most [`DELIVERY_WINDOW_BYTES`] plus one delivery). One word, so pushing
    /// and taking a delivery stay one atomic operation each.
    pub(in crate::broker::queue) unwritten: AtomicU64,
    /// The channel's shared limit, for acking consumers.
    pub channel: Option<Arc<ChannelCredit>>,
    /// Cleared when the channel drops the consumer (cancel, queue deleted, channel closed).
    /// Only the consumer's own connection task touches it, hence `Relaxed`.
    pub(in crate::broker::queue) attached: AtomicBool,
}

impl ConsumerHandle {
    /// A new consumer, attached, holding no credit.
    pub fn new(
        tag: Arc<str>,
        no_ack: bool,
        limit: u32,
        channel: Option<Arc<ChannelCredit>>,
    ) -> Self {
        Self {
            tag,
            no_ack,
            limit,
            in_flight: AtomicU32::new(0),
            unwritten: AtomicU64::new(0),
            channel,
            attached: AtomicBool::new(true),
        }
    }

    /// Whether the channel still has this consumer.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// The channel dropped the consumer: deliveries still in flight to it go back.
    pub fn detach(&self) {
        self.attached.store(false, Ordering::Relaxed);
    }

    /// Takes one unit of credit if the consumer (its write window, and for an acking one
    /// its prefetch) and its channel have room. Only the consumer's queue calls it, under
    /// the queue's lock.
    pub(in crate::broker::queue) fn try_acquire(&self) -> bool {
        if window_full(self.unwritten.load(Ordering::Acquire)) {
            return false;
        }
        if !self.no_ack {
            let n = self.in_flight.load(Ordering::Acquire);
            if self.limit != 0 && n >= self.limit {
                return false;
            }
            if let Some(ch) = &self.channel {
                if ch.bytes_full() {
                    return false;
                }
                let limit = ch.limit.load(Ordering::Acquire);
                // Several queues may race for the channel's last unit: add, then back out.
                if ch.in_flight.fetch_add(1, Ordering::AcqRel) >= limit && limit != 0 {
                    ch.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return false;
                }
            }
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    /// Undoes a `try_acquire` whose delivery did not happen.
    pub(in crate::broker::queue) fn unacquire(&self) {
        if !self.no_ack {
            self.release(1, 0);
        }
    }

    /// A delivery of `body` bytes went onto the connection's inbox (after `try_acquire`;
    /// only the consumer's queue pushes, under its lock, so the window checked there holds).
    pub(in crate::broker::queue) fn pushed(&self, body: usize) {
        self.unwritten.fetch_add(unwritten(body), Ordering::AcqRel);
        if !self.no_ack
            && let Some(ch) = &self.channel
            && ch.byte_limit != 0
        {
            ch.unacked_bytes.fetch_add(body as u64, Ordering::AcqRel);
        }
    }

    /// The connection took a delivery of `body` bytes off its inbox (to write it, or to
    /// send it back). Returns whether that reopened a full write window, in which case the
    /// queue is waiting for a dispatch.
    pub fn taken(&self, body: usize) -> bool {
        let delta = unwritten(body);
        let before = self.unwritten.fetch_sub(delta, Ordering::AcqRel);
        window_full(before) && !window_full(before - delta)
    }

    /// Gives back `n` units of an acking consumer's prefetch, and `bytes` of its channel's
    /// unacked bytes (acked, rejected, or never sent).
    pub fn release(&self, n: u32, bytes: u64) {
        let sub = |a: &AtomicU32| {
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.in_flight);
        if let Some(ch) = &self.channel {
            sub(&ch.in_flight);
            if ch.byte_limit != 0 && bytes != 0 {
                let _ = ch
                    .unacked_bytes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                        Some(v.saturating_sub(bytes))
                    });
            }
        }
    }
}

/// Where a consumer's unwritten delivery count starts in its window word.
pub(in crate::broker::queue) const UNWRITTEN_COUNT_SHIFT: u32 = 40;

/// One delivery of `body` bytes in a window word.
pub(in crate::broker::queue) fn unwritten(body: usize) -> u64 {
    (1 << UNWRITTEN_COUNT_SHIFT) | body as u64
}

pub(in crate::broker::queue) fn window_full(w: u64) -> bool {
    (w >> UNWRITTEN_COUNT_SHIFT) >= u64::from(DELIVERY_WINDOW)
        || (w & ((1 << UNWRITTEN_COUNT_SHIFT) - 1)) >= DELIVERY_WINDOW_BYTES
}

/// A consumer as the queue sees it.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Tag, ack mode and credit, shared with the channel.
    pub handle: Arc<ConsumerHandle>,
    /// Channel it is on.
    pub channel: u16,
    /// Owning connection.
    pub conn_id: u64,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// `x-priority`: higher-priority consumers are served first while they have credit.
    pub priority: i64,
    /// Where deliveries go.
    pub sink: DeliverySink,
}
