//! Queues: ready messages in order, the consumers attached, round-robin dispatch within each
//! consumer's credit, and requeue to the original position.
//!
//! Each queue has its own mutex and nothing else shares it: publishers take it to enqueue,
//! consumers' connections take it to hand back credit (after an ack) or to requeue. Dispatch
//! happens under that lock and never waits: a delivery is pushed onto the consuming
//! connection's unbounded inbox, which is bounded in practice by the consumer's credit
//! (prefetch for acking consumers, a fixed window of unwritten deliveries for no-ack ones).
//! The queue never knows about channels or sockets; it reaches consumers only through their
//! `DeliverySink`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::broker::message::{Entry, Message};
use crate::error::{AmqpError, Result};

/// How many deliveries a no-ack consumer may have pushed but not yet written to its socket
/// (RabbitMQ's queue-side unsent-message limit plays the same role).
pub const NO_ACK_WINDOW: u32 = 2000;

/// What a queue sends to a consuming connection.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message for one of the connection's consumers.
    Deliver {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer.
        consumer_tag: Arc<str>,
        /// The queue it came from, to ack or requeue into.
        queue: Arc<Queue>,
        /// The message.
        entry: Entry,
        /// Whether the consumer acks.
        no_ack: bool,
    },
    /// The queue went away under the consumer (it was deleted).
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer.
        consumer_tag: Arc<str>,
    },
}

/// The sender half of a connection's delivery inbox.
pub type DeliverySink = mpsc::UnboundedSender<QueueEvent>;

/// Channel-wide prefetch (`basic.qos global=true`), shared by the channel's consumers.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    /// 0 = unlimited.
    pub limit: AtomicU32,
    /// Unacked deliveries of the channel's acking consumers.
    pub in_flight: AtomicU32,
}

/// One consumer's credit: prefetch for acking consumers, a write window for no-ack ones.
#[derive(Debug)]
pub struct Credit {
    /// Per-consumer prefetch (0 = unlimited); fixed at consume time as in RabbitMQ.
    pub limit: u32,
    /// Deliveries not yet acked (or, for no-ack, not yet written).
    pub in_flight: AtomicU32,
    /// The channel's shared limit, for acking consumers.
    pub channel: Option<Arc<ChannelCredit>>,
}

impl Credit {
    /// Takes one unit of credit if the consumer and its channel have room.
    fn try_acquire(&self) -> bool {
        let n = self.in_flight.load(Ordering::Acquire);
        if self.limit != 0 && n >= self.limit {
            return false;
        }
        if let Some(ch) = &self.channel {
            let limit = ch.limit.load(Ordering::Acquire);
            if limit != 0 {
                // Several queues may race for the channel's last unit: add, then back out.
                if ch.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
                    ch.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return false;
                }
            } else {
                ch.in_flight.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Gives back `n` units (acked, rejected, or written for no-ack).
    pub fn release(&self, n: u32) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        if let Some(ch) = &self.channel {
            let _ = ch
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(n))
                });
        }
    }
}

/// A consumer as the queue sees it.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Channel it is on.
    pub channel: u16,
    /// Owning connection.
    pub conn_id: u64,
    /// No-ack mode.
    pub no_ack: bool,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// Its credit.
    pub credit: Arc<Credit>,
    /// Where deliveries go.
    pub sink: DeliverySink,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Entry>,
    ready_bytes: usize,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    had_consumer: bool,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Name.
    pub name: Arc<str>,
    /// Survives restarts.
    pub durable: bool,
    /// The connection that owns it, for exclusive queues.
    pub owner: Option<u64>,
    /// Deleted once its last consumer leaves.
    pub auto_delete: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
    deleted: AtomicBool,
    state: Mutex<State>,
}

impl Queue {
    /// A new empty queue.
    pub fn new(
        name: &str,
        durable: bool,
        owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name: name.into(),
            durable,
            owner,
            auto_delete,
            arguments,
            deleted: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    /// Whether the queue has been deleted (deliveries to it are dropped).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Appends a message and delivers what credit allows.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) {
        if self.is_deleted() {
            return;
        }
        let mut s = self.state.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.ready_bytes += msg.size();
        s.ready.push_back(Entry {
            seq,
            msg,
            redelivered: false,
        });
        self.dispatch_locked(&mut s);
    }

    /// Puts messages back at their original positions, marked redelivered.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry>) {
        if self.is_deleted() {
            return;
        }
        let mut s = self.state.lock();
        for mut e in entries {
            e.redelivered = true;
            s.ready_bytes += e.msg.size();
            // Requeued messages are usually older than everything ready: check the front
            // first, then binary-search.
            let at = if s.ready.front().is_none_or(|f| e.seq < f.seq) {
                0
            } else {
                s.ready.partition_point(|x| x.seq < e.seq)
            };
            s.ready.insert(at, e);
        }
        self.dispatch_locked(&mut s);
    }

    /// Puts back a message that was pushed to a consumer but never written (the consumer
    /// went away in between); it keeps its redelivered flag.
    pub fn requeue_unsent(self: &Arc<Self>, entry: Entry) {
        if self.is_deleted() {
            return;
        }
        let mut s = self.state.lock();
        s.ready_bytes += entry.msg.size();
        let at = s.ready.partition_point(|x| x.seq < entry.seq);
        s.ready.insert(at, entry);
    }

    /// Delivers what credit allows (called after credit was given back).
    pub fn dispatch(self: &Arc<Self>) {
        let mut s = self.state.lock();
        self.dispatch_locked(&mut s);
    }

    fn dispatch_locked(self: &Arc<Self>, s: &mut State) {
        let n = s.consumers.len();
        if n == 0 {
            return;
        }
        while !s.ready.is_empty() {
            let start = s.next_consumer % n;
            let Some(i) = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| s.consumers[i].credit.try_acquire())
            else {
                break;
            };
            s.next_consumer = i + 1;
            let entry = s.ready.pop_front().expect("checked non-empty");
            s.ready_bytes -= entry.msg.size();
            let c = &s.consumers[i];
            let event = QueueEvent::Deliver {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                queue: self.clone(),
                entry,
                no_ack: c.no_ack,
            };
            if let Err(mpsc::error::SendError(event)) = c.sink.send(event) {
                // The connection is gone but has not cancelled yet: keep the message, drop
                // the consumer.
                if let QueueEvent::Deliver { entry, .. } = event {
                    s.ready_bytes += entry.msg.size();
                    s.ready.push_front(entry);
                }
                s.consumers.remove(i);
                return self.dispatch_locked(s);
            }
        }
    }

    /// Takes the head message for `basic.get`, with the count left behind.
    pub fn get(&self) -> Option<(Entry, u32)> {
        let mut s = self.state.lock();
        let e = s.ready.pop_front()?;
        s.ready_bytes -= e.msg.size();
        Some((e, s.ready.len() as u32))
    }

    /// Attaches a consumer.
    ///
    /// # Errors
    /// 403 when an exclusive consumer is involved on either side.
    pub fn add_consumer(self: &Arc<Self>, c: Consumer) -> Result<()> {
        let mut s = self.state.lock();
        if s.consumers.iter().any(|x| x.exclusive) || (c.exclusive && !s.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '/' in exclusive use",
                self.name
            )));
        }
        s.consumers.push(c);
        s.had_consumer = true;
        self.dispatch_locked(&mut s);
        Ok(())
    }

    /// Detaches a consumer. Returns true when the queue is auto-delete and now unused.
    pub fn remove_consumer(&self, conn_id: u64, channel: u16, tag: &str) -> bool {
        let mut s = self.state.lock();
        s.consumers
            .retain(|c| !(c.conn_id == conn_id && c.channel == channel && &*c.tag == tag));
        self.auto_delete && s.had_consumer && s.consumers.is_empty()
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut s = self.state.lock();
        let n = s.ready.len() as u32;
        s.ready.clear();
        s.ready_bytes = 0;
        n
    }

    /// Ready messages.
    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }

    /// Attached consumers.
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// Marks the queue deleted and detaches everything; returns the ready count and the
    /// consumers, who the caller notifies.
    pub fn mark_deleted(&self) -> (u32, Vec<Consumer>) {
        self.deleted.store(true, Ordering::Release);
        let mut s = self.state.lock();
        let n = s.ready.len() as u32;
        s.ready.clear();
        s.ready_bytes = 0;
        (n, std::mem::take(&mut s.consumers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(body: &'static str) -> Arc<Message> {
        Arc::new(Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: Default::default(),
            raw_properties: Bytes::new(),
            body: Bytes::from_static(body.as_bytes()),
        })
    }

    fn consumer(tag: &str, limit: u32) -> (Consumer, mpsc::UnboundedReceiver<QueueEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Consumer {
                tag: tag.into(),
                channel: 1,
                conn_id: 1,
                no_ack: false,
                exclusive: false,
                credit: Arc::new(Credit {
                    limit,
                    in_flight: AtomicU32::new(0),
                    channel: None,
                }),
                sink: tx,
            },
            rx,
        )
    }

    fn bodies(rx: &mut mpsc::UnboundedReceiver<QueueEvent>) -> Vec<String> {
        let mut v = vec![];
        while let Ok(QueueEvent::Deliver { entry, .. }) = rx.try_recv() {
            v.push(String::from_utf8(entry.msg.body.to_vec()).unwrap());
        }
        v
    }

    #[test]
    fn round_robin_within_prefetch() {
        let q = Arc::new(Queue::new("q", false, None, false, Default::default()));
        let (a, mut ra) = consumer("a", 2);
        let (b, mut rb) = consumer("b", 1);
        q.add_consumer(a).unwrap();
        q.add_consumer(b).unwrap();
        for m in ["1", "2", "3", "4"] {
            q.publish(msg(m));
        }
        assert_eq!(bodies(&mut ra), vec!["1", "3"]);
        assert_eq!(bodies(&mut rb), vec!["2"]);
        assert_eq!(q.message_count(), 1);
    }

    #[test]
    fn requeue_goes_back_to_the_original_position() {
        let q = Arc::new(Queue::new("q", false, None, false, Default::default()));
        for m in ["1", "2", "3"] {
            q.publish(msg(m));
        }
        let (first, _) = q.get().unwrap();
        let (second, _) = q.get().unwrap();
        q.requeue([second, first]);
        let order: Vec<_> = std::iter::from_fn(|| q.get()).map(|(e, _)| e).collect();
        assert_eq!(
            order.iter().map(|e| &e.msg.body[..]).collect::<Vec<_>>(),
            [b"1", b"2", b"3"]
        );
        assert!(order[0].redelivered && order[1].redelivered && !order[2].redelivered);
    }

    #[test]
    fn exclusive_consumer_conflicts() {
        let q = Arc::new(Queue::new("q", false, None, false, Default::default()));
        let (a, _ra) = consumer("a", 0);
        q.add_consumer(a).unwrap();
        let (mut b, _rb) = consumer("b", 0);
        b.exclusive = true;
        assert_eq!(q.add_consumer(b).unwrap_err().code, 403);
    }
}
