//! Queues: ready messages by priority and position, the consumers attached, dispatch within
//! each consumer's credit, requeue to the original position, and the queue features
//! RabbitMQ applications rely on — message TTL (expired at the head), idle expiry, length
//! limits with their overflow modes, delivery limits, priorities, consumer priorities and
//! single active consumer — with dead-lettering for what falls out.
//!
//! Each queue has its own mutex and nothing else shares it: publishers take it to enqueue,
//! consumers' connections take it to hand back credit (after an ack) or to requeue, and the
//! queue's timer task takes it to expire messages. Dispatch happens under that lock and never
//! waits: a delivery is pushed onto the consuming connection's unbounded inbox, bounded in
//! practice by the consumer's credit. Dead letters are collected under the lock and routed
//! after it is released, so two queues dead-lettering into each other cannot deadlock. The
//! queue never knows about channels or sockets; it reaches consumers only through their
//! `DeliverySink`, and other queues only through the vhost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::broker::dead_letter::{self, Reason};
use crate::broker::message::{Entry, Logged, Message};
use crate::broker::paged::{Paged, PagedFifo};
use crate::broker::queue_args::{Overflow, QueueArgs};
use crate::broker::vhost::VHost;
use crate::error::{AmqpError, Result};
use crate::store::Seq;

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

/// Milliseconds since the Unix epoch: expiry deadlines are absolute, so they keep counting
/// across restarts.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a queue sends to a consuming connection.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message for one of the connection's consumers.
    Deliver {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer: its tag, ack mode and credit, and whether its channel still has it.
        consumer: Arc<ConsumerHandle>,
        /// The queue it came from, to ack or requeue into.
        queue: Arc<Queue>,
        /// The message.
        entry: Entry,
    },
    /// A direct reply-to message for the channel's reply consumer.
    Reply {
        /// Channel of the reply consumer.
        channel: u16,
        /// Its tag.
        consumer_tag: Arc<str>,
        /// The reply.
        msg: Arc<Message>,
    },
    /// The queue went away under the consumer (it was deleted).
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer (a new one may have taken its tag since).
        consumer: Arc<ConsumerHandle>,
    },
}

/// What became of a publish to one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Enqueued (or delivered); with the log record to wait for before confirming, if any.
    Accepted(Option<Seq>),
    /// Refused by a `reject-publish` length limit: nack it.
    Rejected,
    /// The message log failed (fail-stop): nack it, or close with 541.
    Failed,
}

impl Published {
    /// The outcome of a publish to several queues: a failure wins, then a rejection, else
    /// it waits for the newest log record any of them waits for.
    pub fn and(self, other: Published) -> Published {
        match (self, other) {
            (Published::Failed, _) | (_, Published::Failed) => Published::Failed,
            (Published::Rejected, _) | (_, Published::Rejected) => Published::Rejected,
            (Published::Accepted(a), Published::Accepted(b)) => Published::Accepted(a.max(b)),
        }
    }
}

/// The key of a queue's records in the message log.
pub fn store_key(vhost: &str, queue: &str) -> Arc<str> {
    format!("{vhost}\0{queue}").into()
}

thread_local! {
    /// Reused encoding buffer for log records: no allocation per persistent publish.
    static ENCODE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The sender half of a connection's delivery inbox.
pub type DeliverySink = mpsc::UnboundedSender<QueueEvent>;

/// A connection's delivery inbox, made when its first consumer needs it: an unbounded
/// channel allocates a block of 32 events up front (about 4 KiB), which publishers and idle
/// connections would otherwise each hold for nothing.
#[derive(Debug, Default)]
pub struct Inbox {
    sink: Option<DeliverySink>,
    /// The receiver, until the connection's loop takes it.
    fresh: Option<mpsc::UnboundedReceiver<QueueEvent>>,
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
    unacked_bytes: AtomicU64,
    /// `max_unacked_bytes`: past it the channel's consumers get nothing more until acks
    /// come, whatever their prefetch (with prefetch 0 nothing else would stop a consumer
    /// that never acks from holding its whole queue in memory). 0 = unlimited.
    byte_limit: u64,
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
    unwritten: AtomicU64,
    /// The channel's shared limit, for acking consumers.
    pub channel: Option<Arc<ChannelCredit>>,
    /// Cleared when the channel drops the consumer (cancel, queue deleted, channel closed).
    /// Only the consumer's own connection task touches it, hence `Relaxed`.
    attached: AtomicBool,
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
    fn try_acquire(&self) -> bool {
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
    fn unacquire(&self) {
        if !self.no_ack {
            self.release(1, 0);
        }
    }

    /// A delivery of `body` bytes went onto the connection's inbox (after `try_acquire`;
    /// only the consumer's queue pushes, under its lock, so the window checked there holds).
    fn pushed(&self, body: usize) {
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
const UNWRITTEN_COUNT_SHIFT: u32 = 40;

/// One delivery of `body` bytes in a window word.
fn unwritten(body: usize) -> u64 {
    (1 << UNWRITTEN_COUNT_SHIFT) | body as u64
}

fn window_full(w: u64) -> bool {
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

/// What a message in memory costs besides its body, measured: the entry (96 bytes, in a
/// deque that may be half empty), the shared message (136), its parsed properties (296;
/// shared, so free, for a message without any), and the frame bytes around the body in the
/// read buffer it points into.
const ENTRY_OVERHEAD: usize = 512;

/// Most paged messages read back into memory at once (under the queue lock).
const REFILL_MAX: usize = 256;

/// One priority level, oldest first: `ready` (in memory), then `rest`, runs of messages
/// that are in memory or paged out, in the order they arrived. A message arriving under the
/// budget stays in memory even behind paged-out ones; paged-out runs come back to memory
/// from the front, in batches, as `ready` empties. `rest` is empty unless the queue went
/// past its budget, so the common path only touches `ready`.
#[derive(Debug, Default)]
struct Level {
    ready: VecDeque<Entry>,
    rest: VecDeque<Run>,
}

#[derive(Debug)]
enum Run {
    Ready(VecDeque<Entry>),
    Paged(PagedFifo),
}

impl Level {
    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.rest.is_empty()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Ready messages, one FIFO per priority level (one level without `x-max-priority`).
    levels: Vec<Level>,
    len: usize,
    bytes: usize,
    /// Memory the ready messages hold (paged-out ones count nothing).
    resident: usize,
    /// The stores and the broker-wide budget this queue's resident bytes count against.
    persist: Option<Arc<crate::broker::Persistence>>,
    /// Ordered by priority (highest first), then by turn.
    consumers: Vec<Consumer>,
    next_seq: u64,
    had_consumer: bool,
    last_used: u64,
    /// The deadline the timer task sleeps until, if any.
    scheduled: Option<u64>,
}

fn cost(e: &Entry) -> usize {
    e.size as usize + ENTRY_OVERHEAD
}

impl State {
    fn account_in(&mut self, size: u32, cost: usize) {
        self.len += 1;
        self.bytes += size as usize;
        self.resident += cost;
        if let Some(p) = &self.persist {
            p.budget.resident.fetch_add(cost, Ordering::Relaxed);
        }
    }

    fn account_out(&mut self, size: u32, cost: usize) {
        self.len -= 1;
        self.bytes -= size as usize;
        self.resident -= cost;
        if let Some(p) = &self.persist {
            p.budget.resident.fetch_sub(cost, Ordering::Relaxed);
        }
    }

    fn level_of(&self, priority: u8) -> usize {
        usize::from(priority).min(self.levels.len() - 1)
    }

    /// Appends a message kept in memory.
    fn push(&mut self, e: Entry) {
        self.account_in(e.size, cost(&e));
        let level = self.level_of(e.priority);
        let l = &mut self.levels[level];
        match l.rest.back_mut() {
            None => l.ready.push_back(e),
            Some(Run::Ready(run)) => run.push_back(e),
            Some(Run::Paged(_)) => l.rest.push_back(Run::Ready(VecDeque::from([e]))),
        }
    }

    /// Appends a paged-out message.
    fn push_paged(&mut self, priority: u8, p: Paged) {
        self.account_in(p.size(), 0);
        let level = self.level_of(priority);
        let dir = self.persist.as_ref().map(|p| p.spill_dir.as_path());
        let l = &mut self.levels[level];
        if let Some(Run::Paged(run)) = l.rest.back_mut() {
            run.push_back(p, dir);
        } else {
            let mut run = PagedFifo::default();
            run.push_back(p, dir);
            l.rest.push_back(Run::Paged(run));
        }
    }

    fn insert_by_seq(&mut self, e: Entry) {
        self.account_in(e.size, cost(&e));
        let at = self.level_of(e.priority);
        // Delivered messages came from the front, so they belong in `ready`, before
        // everything in `rest`.
        let level = &mut self.levels[at].ready;
        // Requeued messages are usually older than everything ready: check the front first.
        let at = if level.front().is_none_or(|f| e.seq < f.seq) {
            0
        } else {
            level.partition_point(|x| x.seq < e.seq)
        };
        level.insert(at, e);
    }

    /// The oldest message of a level, moving the next run to `ready` (reading paged ones
    /// back) first if `ready` is empty.
    fn front(&mut self, level: usize) -> Option<&Entry> {
        while self.levels[level].ready.is_empty() {
            let l = &mut self.levels[level];
            match l.rest.front_mut()? {
                Run::Ready(run) => {
                    l.ready = std::mem::take(run);
                    l.rest.pop_front();
                }
                Run::Paged(run) if run.is_empty() => {
                    l.rest.pop_front();
                }
                Run::Paged(_) => self.refill(level),
            }
        }
        self.levels[level].ready.front()
    }

    fn pop_front(&mut self, level: usize) -> Option<Entry> {
        self.front(level)?;
        let l = &mut self.levels[level].ready;
        let e = l.pop_front()?;
        if l.is_empty() && l.capacity() > 1 << 16 {
            // A deep queue drained: give the memory back.
            l.shrink_to(1024);
        }
        self.account_out(e.size, cost(&e));
        Some(e)
    }

    fn pop(&mut self) -> Option<Entry> {
        loop {
            let level = (0..self.levels.len())
                .rev()
                .find(|&i| !self.levels[i].is_empty())?;
            // None only when every paged message read back was unreadable (and dropped).
            if let Some(e) = self.pop_front(level) {
                return Some(e);
            }
        }
    }

    /// Brings messages of the paged run at the front of `level`'s `rest` back into
    /// `ready`: as many as the budget allows, at least one, at most [`REFILL_MAX`], read in
    /// runs. A message that cannot be read back (only after the log failed) is dropped with
    /// an error log.
    fn refill(&mut self, level: usize) {
        let Some(p) = self.persist.clone() else {
            // Unreachable (only a queue with a message log pages out), but `front` loops
            // until the run is gone.
            self.levels[level].rest.pop_front();
            return;
        };
        let mut room = p.budget.per_queue.saturating_sub(self.resident).min(
            p.budget
                .total
                .saturating_sub(p.budget.resident.load(Ordering::Relaxed)),
        );
        let Some(Run::Paged(run)) = self.levels[level].rest.front_mut() else {
            return;
        };
        let mut batch = Vec::new();
        while batch.len() < REFILL_MAX {
            let Some(pg) = run.pop_front() else {
                break;
            };
            let c = pg.size() as usize + ENTRY_OVERHEAD;
            batch.push(pg);
            if c > room {
                break;
            }
            room -= c;
        }
        // Messages whose spilled index could not be read back: they stay in the log (and
        // come back after a restart); their sizes are unknown here.
        let lost = run.take_lost();
        if run.is_empty() {
            self.levels[level].rest.pop_front();
        }
        self.len -= lost;
        let locs: Vec<_> = batch.iter().map(Paged::location).collect();
        // Read on the worker when the page cache has them, as it does for a queue draining
        // in log order behind the kernel's readahead: handing the worker's tasks to another
        // thread for every batch cost more (paged 1 KiB drain: ~1.46 -> ~1.78 µs of broker
        // CPU per message). What would wait for the disk (a cold cache after a restart) is
        // read with the worker's other connections moved off first.
        let mut reads = p.store.read_many_cached(&locs);
        let cold: Vec<usize> = (0..reads.len())
            .filter(|&i| matches!(&reads[i], Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
            .collect();
        if !cold.is_empty() {
            let cold_locs: Vec<_> = cold.iter().map(|&i| locs[i]).collect();
            let read = super::blocking(|| p.store.read_many(&cold_locs));
            for (i, r) in cold.into_iter().zip(read) {
                reads[i] = r;
            }
        }
        for (pg, read) in batch.iter().zip(reads) {
            // It leaves the paged run and comes back as a resident entry.
            self.account_out(pg.size(), 0);
            match read_back(&p, pg, read.ok()) {
                Some(e) => {
                    self.account_in(e.size, cost(&e));
                    self.levels[level].ready.push_back(e);
                }
                None => {
                    tracing::error!("cannot read a paged-out message back; dropping it");
                    p.store.ack(pg.id());
                }
            }
        }
    }

    /// Removes the newest entry of a level if it is `seq` (a TTL-0 message nobody took).
    fn pop_back_if(&mut self, level: usize, seq: u64) -> Option<Entry> {
        let l = &mut self.levels[level];
        let newest = match l.rest.back_mut() {
            None => &mut l.ready,
            Some(Run::Ready(run)) => run,
            Some(Run::Paged(run)) => {
                let pg = run.pop_back_if(seq)?;
                if run.is_empty() {
                    l.rest.pop_back();
                }
                self.account_out(pg.size(), 0);
                let p = self.persist.clone()?;
                let e = read_back(&p, &pg, None);
                if e.is_none() {
                    p.store.ack(pg.id());
                }
                return e;
            }
        };
        if newest.back().is_some_and(|e| e.seq == seq) {
            let e = newest.pop_back().expect("back checked");
            if newest.is_empty() && !l.rest.is_empty() {
                l.rest.pop_back();
            }
            self.account_out(e.size, cost(&e));
            return Some(e);
        }
        None
    }

    /// Moves expired messages at the head of each level to `dead` (RabbitMQ only expires at
    /// the head; a consumer or basic.get reaching one finds it expired). A message expires
    /// once its deadline has passed, so a TTL-0 message can still be handed to a consumer
    /// that is waiting in the millisecond it arrives.
    fn expire_heads(&mut self, now: u64, dead: &mut Vec<(Entry, Reason)>) {
        for i in 0..self.levels.len() {
            while self
                .front(i)
                .is_some_and(|e| e.expires_at.is_some_and(|t| t < now))
            {
                let e = self.pop_front(i).expect("front checked");
                dead.push((e, Reason::Expired));
            }
        }
    }

    fn next_expiry(&mut self) -> Option<u64> {
        (0..self.levels.len())
            .filter_map(|i| self.front(i).and_then(|e| e.expires_at))
            .min()
    }

    /// Drops every ready message; returns how many. With `settle`, each one's log record
    /// is killed too (purge; a deleted queue's records go with the queue).
    fn clear(&mut self, settle: bool) -> usize {
        let n = self.len;
        let store = self.persist.as_ref().map(|p| &p.store).filter(|_| settle);
        let settle_entries = |run: &mut VecDeque<Entry>| {
            for e in run.drain(..) {
                if let (Some(store), Some(log)) = (store, e.log) {
                    store.ack(log.id);
                }
            }
        };
        for l in &mut self.levels {
            settle_entries(&mut l.ready);
            l.ready.shrink_to(0);
            for run in l.rest.drain(..) {
                match (run, store) {
                    (Run::Ready(mut run), _) => settle_entries(&mut run),
                    (Run::Paged(mut run), Some(store)) => run.clear_with(|p| store.ack(p.id())),
                    (Run::Paged(mut run), None) => run.clear(),
                }
            }
        }
        if let Some(p) = &self.persist {
            p.budget
                .resident
                .fetch_sub(self.resident, Ordering::Relaxed);
        }
        self.len = 0;
        self.bytes = 0;
        self.resident = 0;
        n
    }
}

/// Makes a paged-out message an entry again from its payload (`read`, or read now). A record
/// is readable once written; one paged out a moment ago may not be yet, so on a miss it
/// waits for every message appended so far to be on disk and tries once more.
fn read_back(p: &crate::broker::Persistence, pg: &Paged, read: Option<Bytes>) -> Option<Entry> {
    let loc = pg.location();
    let bytes = read.map_or_else(|| p.store.read(loc), Ok).or_else(|_| {
        // Waiting for a sync can take milliseconds: other connections go on meanwhile.
        super::blocking(|| {
            p.store
                .watermark()
                .wait_blocking(p.store.published())
                .map_err(std::io::Error::other)?;
            p.store.read(loc)
        })
    });
    let stored = crate::broker::persist::decode(bytes.ok()?)?;
    Some(logged_entry(
        pg.seq(),
        stored,
        pg.id(),
        loc,
        pg.redelivered(),
    ))
}

/// An entry for a message read from the log (paged back in, or recovered).
fn logged_entry(
    seq: u64,
    stored: crate::broker::persist::Stored,
    id: crate::store::MsgId,
    loc: crate::store::Location,
    redelivered: bool,
) -> Entry {
    let mut e = Entry::new(seq, stored.msg, stored.priority, stored.expires_at);
    e.delivery_count = stored.delivery_count;
    e.redelivered = redelivered;
    // Already durable (or only a page-out): nothing to wait for.
    e.log = Some(Logged {
        id,
        loc,
        seq: Seq(0),
    });
    e
}

/// Everything a queue is made from.
#[derive(Debug)]
pub struct QueueInit<'a> {
    /// Name.
    pub name: &'a str,
    /// Survives restarts.
    pub durable: bool,
    /// Owning connection, for exclusive queues.
    pub owner: Option<u64>,
    /// Deleted after its last consumer leaves.
    pub auto_delete: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
    /// Effective settings.
    pub args: QueueArgs,
    /// Its vhost, for dead-lettering and self-deletion.
    pub vhost: Weak<VHost>,
    /// The stores and the vhost's name, when persistence is on.
    pub store: Option<(Arc<crate::broker::Persistence>, &'a str)>,
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
    /// Declared arguments, as given (for equivalence checks).
    pub arguments: FieldTable,
    /// Effective settings (arguments merged with the matching policy), swapped whole when
    /// a policy change re-applies ([`Queue::apply_args`]); readers load without locking.
    pub args: arc_swap::ArcSwap<QueueArgs>,
    vhost: Weak<VHost>,
    /// The stores, when persistence is on: persistent messages of durable queues go to the
    /// log, and any queue pages bodies out to it past its memory budget.
    persist: Option<Arc<crate::broker::Persistence>>,
    /// Persistent messages are kept across restarts (durable, not exclusive).
    keeps_messages: bool,
    /// This queue's name in the log (`vhost NUL name`).
    store_key: Arc<str>,
    deleted: AtomicBool,
    missing_dlx_logged: AtomicBool,
    state: Mutex<State>,
    timer: Arc<Notify>,
    /// Counters for the management API (`message_stats`), relaxed atomics bumped where the
    /// event happens anyway; nothing walks messages to compute them.
    pub stats: QueueStats,
}

/// A queue's message counters since it was declared (RabbitMQ's `message_stats` names).
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Messages enqueued.
    pub publish: AtomicU64,
    /// Deliveries to consumers plus `basic.get`s answered.
    pub deliver_get: AtomicU64,
    /// `basic.get`s answered.
    pub get: AtomicU64,
    /// Deliveries of messages delivered before.
    pub redeliver: AtomicU64,
    /// Acknowledgements.
    pub ack: AtomicU64,
    /// Delivered to an acking consumer or get, and not yet acked, requeued or rejected.
    pub unacked: AtomicU64,
    /// The statistics sampler's last reading of these, with rates (`crate::broker::stats`).
    pub sampled: parking_lot::Mutex<crate::broker::stats::Slot>,
}

impl QueueStats {
    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn settle(&self, n: u64) {
        // Saturating: a settlement racing the first delivery count never wraps.
        let _ = self
            .unacked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// One consumer as the management API lists it.
#[derive(Debug, Clone)]
pub struct ConsumerView {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Its channel.
    pub channel: u16,
    /// Its connection's id.
    pub conn_id: u64,
    /// Automatic acknowledgement.
    pub no_ack: bool,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// `x-priority`.
    pub priority: i64,
    /// Prefetch (0 = unlimited).
    pub prefetch: u32,
}

/// What the management API shows of a queue's state, taken under one lock.
#[derive(Debug, Clone, Copy)]
pub struct QueueSnapshot {
    /// Ready messages.
    pub ready: u64,
    /// Their body bytes.
    pub ready_bytes: u64,
    /// Memory they hold (paged-out bodies count nothing).
    pub memory: u64,
    /// Attached consumers.
    pub consumers: u32,
}

impl Queue {
    /// A new empty queue. Call [`Queue::start_timer`] once it is in an `Arc`.
    pub fn new(init: QueueInit<'_>) -> Self {
        let QueueInit {
            name,
            durable,
            owner,
            auto_delete,
            arguments,
            args,
            vhost,
            store,
        } = init;
        let levels = usize::from(args.max_priority.unwrap_or(0)) + 1;
        let (persist, store_key) = match store {
            Some((p, vhost_name)) => (Some(p), store_key(vhost_name, name)),
            None => (None, Arc::from("")),
        };
        Self {
            keeps_messages: durable && owner.is_none(),
            state: Mutex::new(State {
                levels: std::iter::repeat_with(Level::default)
                    .take(levels)
                    .collect(),
                last_used: now_ms(),
                persist: persist.clone(),
                ..State::default()
            }),
            persist,
            store_key,
            name: name.into(),
            durable,
            owner,
            auto_delete,
            arguments,
            args: arc_swap::ArcSwap::from_pointee(args),
            vhost,
            deleted: AtomicBool::new(false),
            missing_dlx_logged: AtomicBool::new(false),
            timer: Arc::new(Notify::new()),
            stats: QueueStats::default(),
        }
    }

    /// Starts the task that expires messages and the idle queue itself. It holds only a
    /// weak reference, and ends when the queue is deleted or dropped.
    pub fn start_timer(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let notify = self.timer.clone();
        rt.spawn(async move {
            loop {
                let deadline = match weak.upgrade() {
                    Some(q) if !q.is_deleted() => q.schedule(),
                    _ => return,
                };
                let wake = notify.notified();
                match deadline {
                    Some(at) => {
                        // Deadlines are inclusive (see `expire_heads`): wake just after.
                        let wait =
                            Duration::from_millis(at.saturating_add(1).saturating_sub(now_ms()));
                        tokio::select! {
                            _ = wake => continue,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    None => {
                        wake.await;
                        continue;
                    }
                }
                match weak.upgrade() {
                    Some(q) => q.on_timer(),
                    None => return,
                }
            }
        });
    }

    /// Computes and records the timer's next deadline.
    fn schedule(&self) -> Option<u64> {
        let mut s = self.state.lock();
        let idle = match self.args.load().expires {
            Some(ms) if s.consumers.is_empty() => Some(s.last_used + ms),
            _ => None,
        };
        let next = match (s.next_expiry(), idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        s.scheduled = next;
        next
    }

    fn on_timer(self: &Arc<Self>) {
        let now = now_ms();
        let mut dead = Vec::new();
        let idle = {
            let mut s = self.state.lock();
            s.expire_heads(now, &mut dead);
            self.dispatch_locked(&mut s, &mut dead);
            self.args
                .load()
                .expires
                .is_some_and(|ms| s.consumers.is_empty() && now >= s.last_used + ms)
        };
        self.dead_letter(dead);
        if idle && let Some(v) = self.vhost.upgrade() {
            tracing::debug!(queue = %self.name, "queue expired (x-expires)");
            v.remove_queue(self);
        }
    }

    fn wake_timer_for(&self, s: &mut State, deadline: u64) {
        if s.scheduled.is_none_or(|t| deadline < t) {
            s.scheduled = Some(deadline);
            self.timer.notify_one();
        }
    }

    /// Re-applies settings after a policy change, as RabbitMQ does for existing queues.
    /// What a policy cannot change keeps its declared value (the priority levels and single
    /// active consumer are fixed at declare). A lower length limit takes effect at once
    /// (drop-head drops, as it would on the next publish); new TTL and expiry values apply
    /// from now on (messages keep the expiry they were given when enqueued).
    pub fn apply_args(self: &Arc<Self>, mut new: QueueArgs) {
        let old = self.args.load_full();
        new.max_priority = old.max_priority;
        new.single_active = old.single_active;
        new.quorum = old.quorum;
        self.args.store(Arc::new(new));
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            if self.args.load().overflow == Overflow::DropHead {
                while self.over_limit(&s, 0, 0) {
                    match s.pop() {
                        Some(e) => dead.push((e, Reason::Maxlen)),
                        None => break,
                    }
                }
            }
            // The idle expiry may have changed: the timer computes its deadline afresh.
            s.scheduled = None;
        }
        self.timer.notify_one();
        self.dead_letter(dead);
    }

    /// Whether the queue has been deleted (deliveries to it are dropped).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Records use (declare, get, consume) for `x-expires`.
    pub fn touch(&self) {
        if self.args.load().expires.is_some() {
            self.state.lock().last_used = now_ms();
        }
    }

    /// Appends a message and delivers what credit allows. A persistent message in a durable
    /// queue is also appended to the message log; the result says what to wait for before
    /// confirming it.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Published {
        if self.is_deleted() {
            return Published::Accepted(None);
        }
        // The clock is read only for messages that can expire.
        let (expires_at, ttl_zero) = match self.ttl(&msg) {
            Some(ttl) => (Some(now_ms().saturating_add(ttl)), ttl == 0),
            None => (None, false),
        };
        let priority = self.priority_of(&msg);
        let (msg, delivery_count) = self.carried_count(msg);
        let mut dead = Vec::new();
        let result = {
            let mut s = self.state.lock();
            let over = self.over_limit(&s, 1, msg.size());
            if over && self.args.load().overflow != Overflow::DropHead {
                if self.args.load().overflow == Overflow::RejectPublishDlx {
                    let seq = s.next_seq;
                    dead.push((Entry::new(seq, msg, priority, expires_at), Reason::Maxlen));
                }
                Published::Rejected
            } else {
                let seq = s.next_seq;
                let mut entry = Entry::new(seq, msg, priority, expires_at);
                entry.delivery_count = delivery_count;
                // Appending under the queue lock keeps log order equal to queue order; the
                // store's own lock is short and never waits on I/O.
                let persistent = self.keeps_messages && entry.msg.is_persistent();
                if persistent && self.append(&mut entry, false).is_err() {
                    return Published::Failed;
                }
                let wait = entry.log.filter(|_| persistent).map(|l| l.seq);
                s.next_seq += 1;
                QueueStats::bump(&self.stats.publish, 1);
                if self.over_budget(&s, cost(&entry)) {
                    match self.page_out(entry) {
                        Ok(p) => s.push_paged(priority, p),
                        // The log refused it (it failed): keep the body in memory, even if
                        // that puts it ahead of older paged-out messages.
                        Err(e) => s.push(e),
                    }
                } else {
                    s.push(entry);
                }
                self.dispatch_locked(&mut s, &mut dead);
                // TTL 0: delivered just now or never.
                if ttl_zero {
                    let at = s.level_of(priority);
                    if let Some(e) = s.pop_back_if(at, seq) {
                        dead.push((e, Reason::Expired));
                    }
                } else if let Some(t) = expires_at {
                    self.wake_timer_for(&mut s, t);
                }
                // drop-head: the oldest ready messages make room.
                while self.over_limit(&s, 0, 0) {
                    match s.pop() {
                        Some(e) => dead.push((e, Reason::Maxlen)),
                        None => break,
                    }
                }
                Published::Accepted(wait)
            }
        };
        // A publisher faster than the disk (persistent messages, or bodies paged out past the
        // budget) waits here, off the queue lock, until the log has taken its pending batch:
        // otherwise the batch grows by the disk's lag, in memory the budget does not count.
        if let Some(p) = &self.persist
            && p.store.backlogged()
        {
            crate::broker::blocking(|| p.store.wait_for_room());
        }
        self.dead_letter(dead);
        result
    }

    /// With delivery counting on, a message coming back to this queue through a dead-letter
    /// loop keeps counting: its failed deliveries here so far are the `rejected` count of its
    /// `x-death` entry for this queue.
    fn carried_count(&self, msg: Arc<Message>) -> (Arc<Message>, u32) {
        if !self.args.load().counts_deliveries() {
            return (msg, 0);
        }
        let n = dead_letter::death_count(&msg, &self.name, Reason::Rejected);
        if n == 0 {
            return (msg, 0);
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let msg = with_header(
            &msg,
            "x-delivery-count",
            AMQPValue::LongLongInt(i64::from(n)),
        );
        (msg, n)
    }

    fn over_limit(&self, s: &State, more: usize, bytes: usize) -> bool {
        self.args
            .load()
            .max_length
            .is_some_and(|m| (s.len + more) as u64 > m)
            || self
                .args
                .load()
                .max_length_bytes
                .is_some_and(|m| (s.bytes + bytes) as u64 > m)
    }

    /// The TTL that applies to `msg` here: the lower of the queue's and the message's.
    fn ttl(&self, msg: &Message) -> Option<u64> {
        let per_message = msg
            .properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<u64>().ok());
        match (self.args.load().message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn priority_of(&self, msg: &Message) -> u8 {
        match self.args.load().max_priority {
            // A priority above the maximum counts as the maximum.
            Some(max) => msg.properties.priority().unwrap_or(0).min(max),
            None => 0,
        }
    }

    /// Appends an entry to the message log. `transient`: only to page its body out (the
    /// record is dropped at recovery).
    fn append(&self, e: &mut Entry, transient: bool) -> std::result::Result<(), ()> {
        let Some(p) = &self.persist else {
            return Err(());
        };
        ENCODE_BUF.with_borrow_mut(|buf| {
            crate::broker::persist::encode(
                &e.msg,
                e.expires_at,
                e.priority,
                e.delivery_count,
                transient,
                buf,
            );
            match p.store.append_publish(&self.store_key, buf) {
                Ok(a) => {
                    e.log = Some(Logged {
                        id: a.id,
                        loc: a.loc,
                        seq: a.seq,
                    });
                    Ok(())
                }
                Err(err) => {
                    // The store logs the cause once; this names the queue.
                    tracing::debug!(queue = %self.name, "message log refused a write: {err}");
                    Err(())
                }
            }
        })
    }

    /// Whether keeping a message costing `c` in memory would go over the queue's or the
    /// broker's budget.
    fn over_budget(&self, s: &State, c: usize) -> bool {
        let Some(p) = &self.persist else {
            return false;
        };
        s.resident + c > p.budget.per_queue
            || p.budget.resident.load(Ordering::Relaxed) + c > p.budget.total
    }

    /// Drops an entry's body from memory; it stays in the log (written now, without waiting
    /// for the disk, if it was not there yet). Gives the entry back if the log refused it.
    fn page_out(&self, mut e: Entry) -> std::result::Result<Paged, Entry> {
        if e.log.is_none() && self.append(&mut e, true).is_err() {
            return Err(e);
        }
        let log = e.log.expect("appended");
        Paged::new(e.seq, log.id, log.loc, e.size, e.redelivered).ok_or(e)
    }

    /// The message left the queue for good (acked, dropped, dead-lettered): its log record
    /// is dead.
    pub fn settled(&self, e: &Entry) {
        if let (Some(p), Some(log)) = (&self.persist, e.log) {
            p.store.ack(log.id);
        }
    }

    /// A delivery was acked: its log record is dead, and the counters move.
    pub fn acked(&self, e: &Entry) {
        QueueStats::bump(&self.stats.ack, 1);
        self.stats.settle(1);
        self.settled(e);
    }

    /// The attached consumers, for the management API.
    pub fn consumers(&self) -> Vec<ConsumerView> {
        self.state
            .lock()
            .consumers
            .iter()
            .map(|c| ConsumerView {
                tag: c.handle.tag.clone(),
                channel: c.channel,
                conn_id: c.conn_id,
                no_ack: c.handle.no_ack,
                exclusive: c.exclusive,
                priority: c.priority,
                prefetch: c.handle.limit,
            })
            .collect()
    }

    /// Ready count, bytes, memory and consumers, under one lock.
    pub fn snapshot(&self) -> QueueSnapshot {
        let s = self.state.lock();
        QueueSnapshot {
            ready: s.len as u64,
            ready_bytes: s.bytes as u64,
            memory: s.resident as u64,
            consumers: s.consumers.len() as u32,
        }
    }

    /// This queue's name in the message log.
    pub fn store_key(&self) -> &str {
        &self.store_key
    }

    /// Puts one recovered message back at boot (called in log order); past the memory
    /// budget it stays paged out, placed from the head of its record alone. A record written
    /// only to page a body out is not a message to recover: it is killed. Returns whether
    /// the message came back.
    pub fn restore(&self, rec: crate::store::RecoveredMessage, payload: &[u8]) -> bool {
        let Some(p) = &self.persist else {
            return false;
        };
        let head = crate::broker::persist::peek(&rec.head);
        let Some(head) = head.filter(|h| !h.transient) else {
            if head.is_none() {
                tracing::warn!(queue = %self.name, "dropping an undecodable stored message");
            }
            p.store.ack(rec.id);
            return false;
        };
        let mut s = self.state.lock();
        let seq = s.next_seq;
        if self.over_budget(&s, head.size as usize + ENTRY_OVERHEAD)
            && let Some(pg) = Paged::new(seq, rec.id, rec.loc, head.size, rec.delivered)
        {
            s.next_seq += 1;
            s.push_paged(head.priority, pg);
            return true;
        }
        // A copy: the payload borrows a whole segment's buffer.
        let Some(stored) = crate::broker::persist::decode(Bytes::copy_from_slice(payload)) else {
            tracing::warn!(queue = %self.name, "dropping an undecodable stored message");
            p.store.ack(rec.id);
            return false;
        };
        s.next_seq += 1;
        s.push(logged_entry(seq, stored, rec.id, rec.loc, rec.delivered));
        true
    }

    /// Recovery is over: the timer looks at the restored messages' deadlines.
    pub fn restored(&self) {
        self.timer.notify_one();
    }

    /// Puts delivered messages back at their original positions, marked redelivered. With
    /// delivery counting on, each return counts; past the limit the message is dead-lettered
    /// with reason `delivery_limit` instead.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry>) {
        if self.is_deleted() {
            return;
        }
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            for mut e in entries {
                self.stats.settle(1);
                e.redelivered = true;
                if self.args.load().counts_deliveries() {
                    e.delivery_count += 1;
                    if self
                        .args
                        .load()
                        .delivery_limit
                        .is_some_and(|l| u64::from(e.delivery_count) > l)
                    {
                        dead.push((e, Reason::DeliveryLimit));
                        continue;
                    }
                    e.msg = with_header(
                        &e.msg,
                        "x-delivery-count",
                        AMQPValue::LongLongInt(i64::from(e.delivery_count)),
                    );
                }
                s.insert_by_seq(e);
            }
            // A message whose TTL ran out while it was unacked expires as it comes back.
            s.expire_heads(now_ms(), &mut dead);
            // The length limit holds for requeued messages too, as in RabbitMQ: with
            // drop-head the oldest (often the requeued ones themselves) make room before
            // anything is delivered; reject-publish refuses only publishes, so a queue
            // with it may stay over its limit until consumers catch up.
            if self.args.load().overflow == Overflow::DropHead {
                while self.over_limit(&s, 0, 0) {
                    match s.pop() {
                        Some(e) => dead.push((e, Reason::Maxlen)),
                        None => break,
                    }
                }
            }
            self.dispatch_locked(&mut s, &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Puts back a message that was pushed to a consumer but never written (the consumer
    /// went away in between); it keeps its flags.
    pub fn requeue_unsent(self: &Arc<Self>, entry: Entry, no_ack: bool) {
        if !no_ack {
            self.stats.settle(1);
        }
        if !self.is_deleted() {
            self.state.lock().insert_by_seq(entry);
        }
    }

    /// Rejected without requeue: dead-lettered with reason `rejected` (or dropped) — or,
    /// with delivery counting on and the limit used up, with reason `delivery_limit`.
    pub fn discard(self: &Arc<Self>, entries: Vec<Entry>) {
        self.stats.settle(entries.len() as u64);
        let dead = entries
            .into_iter()
            .map(|e| {
                let over = self.args.load().counts_deliveries()
                    && self
                        .args
                        .load()
                        .delivery_limit
                        .is_some_and(|l| u64::from(e.delivery_count) + 1 > l);
                (
                    e,
                    if over {
                        Reason::DeliveryLimit
                    } else {
                        Reason::Rejected
                    },
                )
            })
            .collect();
        self.dead_letter(dead);
    }

    /// Delivers what credit allows (called after credit was given back).
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            self.dispatch_locked(&mut s, &mut dead);
        }
        self.dead_letter(dead);
    }

    fn dispatch_locked(self: &Arc<Self>, s: &mut State, dead: &mut Vec<(Entry, Reason)>) {
        if s.consumers.is_empty() || s.len == 0 {
            return;
        }
        let now = if s.next_expiry().is_some() {
            now_ms()
        } else {
            0
        };
        loop {
            if now != 0 {
                s.expire_heads(now, dead);
            }
            if s.len == 0 {
                return;
            }
            let chosen = if self.args.load().single_active {
                // Only the first registered consumer is active.
                s.consumers[0].handle.try_acquire().then_some(0)
            } else {
                s.consumers.iter().position(|c| c.handle.try_acquire())
            };
            let Some(i) = chosen else { return };
            let Some(entry) = s.pop() else {
                // Only messages that could not be read back were left.
                s.consumers[i].handle.unacquire();
                return;
            };
            let c = &s.consumers[i];
            c.handle.pushed(entry.msg.body.len());
            self.mark_delivered(&entry, c.handle.no_ack);
            let event = QueueEvent::Deliver {
                channel: c.channel,
                consumer: c.handle.clone(),
                queue: self.clone(),
                entry,
            };
            if let Err(mpsc::error::SendError(event)) = c.sink.send(event) {
                // The connection is gone but has not cancelled yet: keep the message, drop
                // the consumer.
                if let QueueEvent::Deliver {
                    entry, consumer, ..
                } = event
                {
                    if !consumer.no_ack {
                        self.stats.settle(1);
                    }
                    s.insert_by_seq(entry);
                }
                s.consumers.remove(i);
                if s.consumers.is_empty() {
                    return;
                }
                continue;
            }
            if !self.args.load().single_active {
                // Round-robin among consumers of the same priority: this one goes last.
                let p = s.consumers[i].priority;
                let end = s.consumers[i..]
                    .iter()
                    .take_while(|c| c.priority == p)
                    .count()
                    + i;
                s.consumers[i..end].rotate_left(1);
            }
        }
    }

    /// Tells the log a message went out: no-ack deliveries are settled at once; others get a
    /// delivered mark, so recovery can set `redelivered`.
    fn mark_delivered(&self, e: &Entry, no_ack: bool) {
        QueueStats::bump(&self.stats.deliver_get, 1);
        if e.redelivered {
            QueueStats::bump(&self.stats.redeliver, 1);
        }
        if !no_ack {
            QueueStats::bump(&self.stats.unacked, 1);
        }
        if let (Some(p), Some(log)) = (&self.persist, e.log) {
            if no_ack {
                p.store.ack(log.id);
            } else if !e.redelivered {
                p.store.delivered(log.id);
            }
        }
    }

    /// Takes the head message for `basic.get`, with the count left behind.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(Entry, u32)> {
        let mut dead = Vec::new();
        let got = {
            let mut s = self.state.lock();
            let now = now_ms();
            s.last_used = now;
            s.expire_heads(now, &mut dead);
            let got = s.pop();
            if let Some(e) = &got {
                QueueStats::bump(&self.stats.get, 1);
                self.mark_delivered(e, no_ack);
            }
            // Taking the head exposes the next one: if it has expired, it goes now.
            s.expire_heads(now, &mut dead);
            got.map(|e| (e, s.len as u32))
        };
        self.dead_letter(dead);
        got
    }

    /// Attaches a consumer.
    ///
    /// # Errors
    /// 403 when an exclusive consumer is involved on either side (or an exclusive consumer
    /// on a single-active-consumer queue).
    pub fn add_consumer(self: &Arc<Self>, c: Consumer, vhost: &str) -> Result<()> {
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            if s.consumers.iter().any(|x| x.exclusive)
                || (c.exclusive && (!s.consumers.is_empty() || self.args.load().single_active))
            {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{vhost}' in exclusive use",
                    self.name
                )));
            }
            let at = if self.args.load().single_active {
                s.consumers.len()
            } else {
                s.consumers
                    .iter()
                    .take_while(|x| x.priority >= c.priority)
                    .count()
            };
            s.consumers.insert(at, c);
            s.had_consumer = true;
            s.last_used = now_ms();
            self.dispatch_locked(&mut s, &mut dead);
        }
        self.dead_letter(dead);
        Ok(())
    }

    /// Detaches a consumer. Returns true when the queue is auto-delete and now unused.
    pub fn remove_consumer(self: &Arc<Self>, consumer: &ConsumerHandle) -> bool {
        let mut dead = Vec::new();
        let unused = {
            let mut s = self.state.lock();
            s.consumers
                .retain(|c| !std::ptr::eq(Arc::as_ptr(&c.handle), consumer));
            s.last_used = now_ms();
            if s.consumers.is_empty() {
                if let Some(ms) = self.args.load().expires {
                    let t = s.last_used + ms;
                    self.wake_timer_for(&mut s, t);
                }
            } else {
                // With a single active consumer, the next one takes over now.
                self.dispatch_locked(&mut s, &mut dead);
            }
            self.auto_delete && s.had_consumer && s.consumers.is_empty()
        };
        self.dead_letter(dead);
        unused
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        self.state.lock().clear(true) as u32
    }

    /// Ready messages.
    pub fn message_count(&self) -> u32 {
        self.state.lock().len as u32
    }

    /// Attached consumers.
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// Marks the queue deleted and detaches everything; returns the ready count and the
    /// consumers, who the caller notifies.
    pub fn mark_deleted(&self) -> (u32, Vec<Consumer>) {
        self.deleted.store(true, Ordering::Release);
        if let Some(p) = &self.persist {
            p.store.delete_queue(&self.store_key);
        }
        self.timer.notify_one();
        let mut s = self.state.lock();
        let n = s.clear(false) as u32;
        (n, std::mem::take(&mut s.consumers))
    }

    /// Routes dead letters through the queue's dead-letter exchange (outside the lock).
    fn dead_letter(&self, dead: Vec<(Entry, Reason)>) {
        if dead.is_empty() {
            return;
        }
        for (e, _) in &dead {
            self.settled(e);
        }
        let args = self.args.load();
        if args.dlx.is_none() && args.delivery_limit_exchange.is_none() {
            return;
        }
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        let mut targets = Vec::new();
        for (e, reason) in dead {
            let dlx = match (&args.delivery_limit_exchange, reason) {
                (Some(x), Reason::DeliveryLimit) => x,
                _ => match &args.dlx {
                    Some(x) => x,
                    None => continue,
                },
            };
            let Some(exchange) = vhost.exchange(dlx) else {
                if !self.missing_dlx_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(queue = %self.name, dlx = %dlx, "dead-letter exchange does not exist; dropping dead letters");
                }
                continue;
            };
            let m =
                dead_letter::dead_lettered(&e.msg, &self.name, reason, dlx, args.dlrk.as_deref());
            let routed = vhost.route(&exchange, &m, &mut targets);
            let m = routed.message.unwrap_or(m);
            for q in targets.drain(..) {
                if dead_letter::is_cycle(&m, &q.name) {
                    tracing::debug!(queue = %q.name, "dead-letter cycle: message dropped");
                    continue;
                }
                if dead_letter::hops(&m) > dead_letter::MAX_HOPS {
                    tracing::warn!(queue = %q.name, "dead-lettered through more than {} queues: message dropped", dead_letter::MAX_HOPS);
                    continue;
                }
                forward_dead_letter(q, m.clone());
            }
        }
    }
}

/// Dead letters waiting to be published, each with its target queue.
type DeadLetters = VecDeque<(Arc<Queue>, Arc<Message>)>;

thread_local! {
    /// Dead letters waiting to be published by the outermost dead-lettering on this thread.
    /// `None` when no dead-lettering is running here.
    static DEAD_LETTERS: std::cell::RefCell<Option<DeadLetters>> =
        const { std::cell::RefCell::new(None) };
}

/// Publishes a dead letter into `q`. Publishing can dead-letter again (a full target with
/// `x-max-length: 0` and a dead-letter exchange of its own), and doing that by recursion
/// would take a stack frame per hop: a chain of a few thousand such queues would overflow
/// the stack with one publish. So a dead-lettering that starts while another runs on the
/// same thread only queues its message, and the outermost one publishes them all in order.
fn forward_dead_letter(q: Arc<Queue>, m: Arc<Message>) {
    let nested = DEAD_LETTERS.with_borrow_mut(|w| match w {
        Some(w) => {
            w.push_back((q.clone(), m.clone()));
            true
        }
        None => {
            *w = Some(VecDeque::new());
            false
        }
    });
    if nested {
        return;
    }
    // Ends this thread's dead-lettering however the loop ends, a panic included.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            DEAD_LETTERS.with_borrow_mut(|w| *w = None);
        }
    }
    let _done = Done;
    let _ = q.publish(m);
    while let Some((q, m)) = DEAD_LETTERS.with_borrow_mut(|w| w.as_mut()?.pop_front()) {
        let _ = q.publish(m);
    }
}

impl Entry {
    fn new(seq: u64, msg: Arc<Message>, priority: u8, expires_at: Option<u64>) -> Self {
        let msg_size = u32::try_from(msg.size()).unwrap_or(u32::MAX);
        Self {
            seq,
            msg,
            redelivered: false,
            priority,
            expires_at,
            delivery_count: 0,
            size: msg_size,
            log: None,
        }
    }
}

/// A copy of `msg` with one header set (re-encoding its properties).
pub fn with_header(msg: &Message, key: &str, value: AMQPValue) -> Arc<Message> {
    let mut headers = msg.properties.headers().clone().unwrap_or_default();
    headers.insert(key.into(), value);
    let properties = (*msg.properties).clone().with_headers(headers);
    Arc::new(Message {
        exchange: msg.exchange.clone(),
        routing_key: msg.routing_key.clone(),
        raw_properties: crate::protocol::encode_properties(&properties),
        properties: crate::protocol::Properties::new(properties),
        body: msg.body.clone(),
    })
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

    fn queue(args: QueueArgs) -> Arc<Queue> {
        Arc::new(Queue::new(QueueInit {
            name: "q",
            durable: false,
            owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            args,
            vhost: Weak::new(),
            store: None,
        }))
    }

    fn consumer(
        tag: &str,
        limit: u32,
        priority: i64,
    ) -> (Consumer, mpsc::UnboundedReceiver<QueueEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Consumer {
                handle: Arc::new(ConsumerHandle::new(tag.into(), false, limit, None)),
                channel: 1,
                conn_id: 1,
                exclusive: false,
                priority,
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
        let q = queue(QueueArgs::default());
        let (a, mut ra) = consumer("a", 2, 0);
        let (b, mut rb) = consumer("b", 1, 0);
        q.add_consumer(a, "/").unwrap();
        q.add_consumer(b, "/").unwrap();
        for m in ["1", "2", "3", "4"] {
            q.publish(msg(m));
        }
        assert_eq!(bodies(&mut ra), vec!["1", "3"]);
        assert_eq!(bodies(&mut rb), vec!["2"]);
        assert_eq!(q.message_count(), 1);
    }

    #[test]
    fn higher_priority_consumers_first_while_they_have_credit() {
        let q = queue(QueueArgs::default());
        let (low, mut rl) = consumer("low", 10, 0);
        let (high, mut rh) = consumer("high", 2, 5);
        q.add_consumer(low, "/").unwrap();
        q.add_consumer(high, "/").unwrap();
        for m in ["1", "2", "3"] {
            q.publish(msg(m));
        }
        assert_eq!(bodies(&mut rh), vec!["1", "2"]);
        assert_eq!(bodies(&mut rl), vec!["3"]);
    }

    #[test]
    fn single_active_consumer_gets_everything_until_it_leaves() {
        let q = queue(QueueArgs {
            single_active: true,
            ..Default::default()
        });
        let (a, mut ra) = consumer("a", 0, 0);
        let (b, mut rb) = consumer("b", 0, 0);
        let a_handle = a.handle.clone();
        q.add_consumer(a, "/").unwrap();
        q.add_consumer(b, "/").unwrap();
        q.publish(msg("1"));
        q.publish(msg("2"));
        assert_eq!(bodies(&mut ra), vec!["1", "2"]);
        q.remove_consumer(&a_handle);
        q.publish(msg("3"));
        assert_eq!(bodies(&mut rb), vec!["3"]);
    }

    #[test]
    fn priority_levels_deliver_highest_first_fifo_within() {
        let q = queue(QueueArgs {
            max_priority: Some(5),
            ..Default::default()
        });
        let with = |b: &'static str, p: u8| {
            Arc::new(Message {
                properties: crate::protocol::Properties::new(
                    amq_protocol::protocol::BasicProperties::default().with_priority(p),
                ),
                ..Arc::try_unwrap(msg(b)).unwrap()
            })
        };
        q.publish(with("low", 1));
        q.publish(with("high-a", 9));
        q.publish(with("high-b", 5));
        q.publish(with("none", 0));
        let order: Vec<_> = std::iter::from_fn(|| q.get(false))
            .map(|(e, _)| e.msg.body.clone())
            .collect();
        assert_eq!(order, [&b"high-a"[..], b"high-b", b"low", b"none"]);
    }

    #[test]
    fn requeue_goes_back_to_the_original_position() {
        let q = queue(QueueArgs::default());
        for m in ["1", "2", "3"] {
            q.publish(msg(m));
        }
        let (first, _) = q.get(false).unwrap();
        let (second, _) = q.get(false).unwrap();
        q.requeue([second, first]);
        let order: Vec<_> = std::iter::from_fn(|| q.get(false))
            .map(|(e, _)| e)
            .collect();
        assert_eq!(
            order.iter().map(|e| &e.msg.body[..]).collect::<Vec<_>>(),
            [b"1", b"2", b"3"]
        );
        assert!(order[0].redelivered && order[1].redelivered && !order[2].redelivered);
    }

    #[test]
    fn drop_head_and_reject_publish() {
        let q = queue(QueueArgs {
            max_length: Some(2),
            ..Default::default()
        });
        for m in ["1", "2", "3"] {
            assert_eq!(q.publish(msg(m)), Published::Accepted(None));
        }
        assert_eq!(q.get(false).unwrap().0.msg.body, "2");
        let r = queue(QueueArgs {
            max_length: Some(1),
            overflow: Overflow::RejectPublish,
            ..Default::default()
        });
        assert_eq!(r.publish(msg("1")), Published::Accepted(None));
        assert_eq!(r.publish(msg("2")), Published::Rejected);
        assert_eq!(r.message_count(), 1);
    }

    #[test]
    fn requeue_into_a_full_queue_drops_from_the_head() {
        let q = queue(QueueArgs {
            max_length: Some(2),
            ..Default::default()
        });
        q.publish(msg("1"));
        q.publish(msg("2"));
        let (a, _) = q.get(false).unwrap();
        let (b, _) = q.get(false).unwrap();
        q.publish(msg("3"));
        q.publish(msg("4"));
        q.requeue([a, b]);
        assert_eq!(q.message_count(), 2);
        let left: Vec<_> = std::iter::from_fn(|| q.get(true))
            .map(|(e, _)| e.msg.body.clone())
            .collect();
        assert_eq!(left, ["3", "4"]);
    }

    #[test]
    fn delivery_limit_counts_returns_and_sets_the_header() {
        let q = queue(QueueArgs {
            delivery_limit: Some(1),
            ..Default::default()
        });
        q.publish(msg("m"));
        let (e, _) = q.get(false).unwrap();
        q.requeue([e]);
        let (e, _) = q.get(false).unwrap();
        assert_eq!(e.delivery_count, 1);
        let h = e.msg.properties.headers().clone().unwrap();
        assert_eq!(
            h.inner().get("x-delivery-count"),
            Some(&AMQPValue::LongLongInt(1))
        );
        q.requeue([e]);
        assert!(
            q.get(false).is_none(),
            "over the limit: dead-lettered (dropped without a DLX)"
        );
    }

    #[test]
    fn ttl_zero_is_deliver_now_or_never() {
        let q = queue(QueueArgs {
            message_ttl: Some(0),
            ..Default::default()
        });
        q.publish(msg("lost"));
        assert_eq!(q.message_count(), 0);
        let (c, mut rc) = consumer("c", 0, 0);
        q.add_consumer(c, "/").unwrap();
        q.publish(msg("kept"));
        assert_eq!(bodies(&mut rc), vec!["kept"]);
    }

    #[test]
    fn exclusive_consumer_conflicts() {
        let q = queue(QueueArgs::default());
        let (a, _ra) = consumer("a", 0, 0);
        q.add_consumer(a, "/").unwrap();
        let (mut b, _rb) = consumer("b", 0, 0);
        b.exclusive = true;
        assert_eq!(q.add_consumer(b, "/").unwrap_err().code, 403);
    }
}
