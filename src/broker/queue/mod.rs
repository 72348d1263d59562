//! Queues: the one interface the channel, the exchanges and the management API talk to
//! (`Queue`: declare-time settings, enqueue, attach and detach consumers, settle, get,
//! purge, delete, statistics, recovery), and the types common to every queue type
//! (consumers, events, publish results, statistics).
//!
//! Queue types live in their own modules: `classic` is the first (ready messages by priority
//! and position, TTL, idle expiry, length and delivery limits, dead-lettering). Each queue
//! has its own mutex and nothing else shares it: publishers take it to enqueue, consumers'
//! connections to hand back credit or requeue, the queue's timer task to expire. Dispatch
//! happens under it and never waits: a delivery is pushed onto the consuming connection's
//! inbox, bounded by the consumer's credit and delivery window. A queue never knows about
//! channels or sockets, and reaches its vhost only through [`QueueHost`] (dead letters,
//! self-deletion): vhost → exchange → queue, never back.

mod classic;
mod consumer;
pub mod stream;

use crate::broker::stats::{Figures, fig};
use classic::state::{Level, State};
pub use consumer::*;
pub use stream::{ConsumeOptions, Operation};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::broker::message::{Entry, Message};
use crate::broker::queue_args::QueueArgs;
use crate::store::Seq;

/// What a queue needs of the vhost it lives in, and no more: a queue publishes its dead
/// letters through an exchange and removes itself when it expires, so it holds this rather
/// than the vhost (which holds the queues: the dependency runs one way, vhost → queue).
pub trait QueueHost: Send + Sync + std::fmt::Debug {
    /// Routes a dead-lettered message through the exchange named `exchange`, pushing the
    /// queues it reaches onto `out`. Returns the message to enqueue (routing may strip
    /// headers), or `None` when there is no such exchange.
    fn route_dead_letter(
        &self,
        exchange: &str,
        msg: Arc<Message>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Option<Arc<Message>>;

    /// Deletes `q` from the vhost (its idle expiry, `x-expires`, ran out).
    fn remove_expired(&self, q: &Queue);
}

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
    pub vhost: Weak<dyn QueueHost>,
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
    /// `x-max-priority` and `x-single-active-consumer`, fixed at declare (no policy sets
    /// them), kept outside `args` so dispatch reads them without a load.
    max_priority: Option<u8>,
    single_active: bool,
    vhost: Weak<dyn QueueHost>,
    /// The stores, when persistence is on: persistent messages of durable queues go to the
    /// log, and any queue pages bodies out to it past its memory budget.
    persist: Option<Arc<crate::broker::Persistence>>,
    /// Persistent messages are kept across restarts (durable, not exclusive).
    keeps_messages: bool,
    /// This queue's name in the log (`vhost NUL name`).
    store_key: Arc<str>,
    deleted: AtomicBool,
    missing_dlx_logged: AtomicBool,
    /// The classic type's state (empty, and never locked on the hot path, for other types).
    state: Mutex<State>,
    timer: Arc<Notify>,
    /// Which queue type this is, with that type's own parts.
    kind: Kind,
    /// Counters for the management API (`message_stats`), relaxed atomics bumped where the
    /// event happens anyway; nothing walks messages to compute them.
    pub stats: QueueStats,
}

/// A queue's type. The interface's methods dispatch on it; the classic type's state is the
/// queue's own `state`.
#[derive(Debug)]
enum Kind {
    Classic,
    Stream(Box<stream::Stream>),
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
            max_priority: args.max_priority,
            single_active: args.single_active,
            args: arc_swap::ArcSwap::from_pointee(args),
            vhost,
            deleted: AtomicBool::new(false),
            missing_dlx_logged: AtomicBool::new(false),
            timer: Arc::new(Notify::new()),
            kind: Kind::Classic,
            stats: QueueStats::default(),
        }
    }

    /// A new queue of the type its arguments ask for: a stream opens (or recovers) its log
    /// under the data directory.
    ///
    /// # Errors
    /// The stream's log cannot be opened, or there is no data directory to keep it in.
    pub fn create(init: QueueInit<'_>) -> std::io::Result<Self> {
        if !init.args.stream {
            return Ok(Self::new(init));
        }
        let Some((p, vhost)) = &init.store else {
            return Err(std::io::Error::other("streams need a data directory"));
        };
        let dir = p
            .stream_dir
            .join(stream_dir_name(&store_key(vhost, init.name)));
        let opts = stream::options(&init.arguments, init.args.policy.as_ref().map(|(_, d)| d));
        let s = stream::Stream::open(&dir, opts, p.store.clone())?;
        let mut q = Self::new(init);
        q.kind = Kind::Stream(Box::new(s));
        Ok(q)
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
        new.stream = old.stream;
        self.args.store(Arc::new(new));
        if self.stream().is_some() {
            // compat: a stream's retention is fixed when it is declared (or recovered);
            // RabbitMQ applies policy changes to it at once.
            return;
        }
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            self.drop_heads_over_limit(&self.args.load(), &mut s, &mut dead);
            // The idle expiry may have changed: the timer computes its deadline afresh.
            s.scheduled = None;
        }
        self.timer.notify_one();
        self.dead_letter(dead);
    }

    /// This queue's figures for the statistics (`crate::broker::stats`), and its consumer
    /// count; takes its lock once, for the ready count.
    pub fn figures(&self) -> (Figures, u32) {
        let s = self.snapshot();
        (self.figures_with(&s), s.consumers)
    }

    /// This queue's figures, its ready count from a snapshot already taken.
    pub fn figures_with(&self, s: &QueueSnapshot) -> Figures {
        let unacked = self.stats.unacked.load(Ordering::Relaxed);
        // A stream's records stay after delivery: all of them are its messages (and
        // "ready"), as RabbitMQ counts them.
        let unacked_in_messages = if self.stream().is_some() { 0 } else { unacked };
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut f = [0; fig::N];
        f[fig::MESSAGES] = s.ready + unacked_in_messages;
        f[fig::READY] = s.ready;
        f[fig::UNACKED] = unacked;
        f[fig::PUBLISH] = c(&self.stats.publish);
        f[fig::DELIVER_GET] = c(&self.stats.deliver_get);
        f[fig::ACK] = c(&self.stats.ack);
        f[fig::REDELIVER] = c(&self.stats.redeliver);
        Figures(f)
    }

    /// The queue type's name as RabbitMQ's management API and definitions show it.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Stream(_) => "stream",
            Kind::Classic if self.args.load().quorum => "quorum",
            Kind::Classic => "classic",
        }
    }

    /// Whether the queue has been deleted (deliveries to it are dropped).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The attached consumers, for the management API.
    pub fn consumers(&self) -> Vec<ConsumerView> {
        if let Some(st) = self.stream() {
            return st.consumers();
        }
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
        if let Some(st) = self.stream() {
            return st.snapshot();
        }
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

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        if self.stream().is_some() {
            // Refused before it gets here (`supports`); a stream's log is never purged.
            return 0;
        }
        self.state.lock().clear(true) as u32
    }

    /// Ready messages.
    pub fn message_count(&self) -> u32 {
        if let Some(st) = self.stream() {
            return u32::try_from(st.records()).unwrap_or(u32::MAX);
        }
        self.state.lock().len as u32
    }

    /// Attached consumers.
    pub fn consumer_count(&self) -> u32 {
        if self.stream().is_some() {
            // compat: RabbitMQ's declare-ok reports 0 consumers for a stream, always;
            // the management API shows the real number (`snapshot`).
            return 0;
        }
        self.state.lock().consumers.len() as u32
    }

    /// Marks the queue deleted and detaches everything; returns the ready count and the
    /// consumers, who the caller notifies.
    pub fn mark_deleted(&self) -> (u32, Vec<Consumer>) {
        self.deleted.store(true, Ordering::Release);
        if let Some(st) = self.stream() {
            // compat: RabbitMQ's delete-ok reports 0 messages for a stream.
            return (0, st.delete());
        }
        if let Some(p) = &self.persist {
            p.store.delete_queue(&self.store_key);
        }
        self.timer.notify_one();
        let mut s = self.state.lock();
        let n = s.clear(false) as u32;
        (n, std::mem::take(&mut s.consumers))
    }
}

/// A stream's directory under the data directory's `streams/`: a hash of its vhost and
/// name (names may be 255 bytes of anything; file names may not).
/// `key` is the queue's [`store_key`].
pub fn stream_dir_name(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
