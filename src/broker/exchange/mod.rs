//! Exchanges: their kind, flags and bindings, and how one exchange turns a message into a
//! set of destinations.
//!
//! Each exchange keeps its bindings behind its own `RwLock`: publishes take the read lock,
//! bind/unbind a short write lock, so topology churn on one exchange never blocks routing
//! through another. Exchange-to-exchange hops, alternate exchanges and de-duplication are
//! the vhost's job (`VHost::route`), which the delayed exchange reaches through the
//! [`Router`] trait, not the vhost type. Knows queues only as `Arc<Queue>` destinations.

pub mod delayed;
pub mod headers;
pub mod topic;

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use parking_lot::RwLock;

use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::error::{AmqpError, Result};
use headers::XMatch;
use topic::TopicTrie;

/// What routing produced besides the queue list.
#[derive(Debug, Default)]
pub struct Routed {
    /// The message to enqueue instead of the published one (`BCC` stripped).
    pub message: Option<Arc<Message>>,
    /// Delivered straight to a direct reply-to consumer.
    pub replied: bool,
}

/// Whole routing from one exchange, as the vhost does it (exchange-to-exchange hops,
/// alternate exchanges, de-duplication, direct reply-to). The delayed exchange's timer
/// routes through this, so the exchange module never names the vhost that holds it.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// Routes `msg` published to `exchange`, pushing the queues it reaches onto `out`.
    fn route(
        &self,
        exchange: &Arc<Exchange>,
        msg: &Arc<Message>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Routed;
}

/// The four exchange types of RabbitMQ's core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every binding.
    Fanout,
    /// Dot-separated words with `*` and `#`.
    Topic,
    /// Header table matching.
    Headers,
}

impl ExchangeKind {
    /// Parses an exchange type name.
    ///
    /// # Errors
    /// 503 COMMAND_INVALID (connection) for an unknown type, as RabbitMQ does.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "direct" => Self::Direct,
            "fanout" => Self::Fanout,
            "topic" => Self::Topic,
            "headers" => Self::Headers,
            other => {
                return Err(AmqpError::command_invalid(format!(
                    "unknown exchange type '{other}'"
                )));
            }
        })
    }

    /// The type's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Clone, Debug)]
pub enum Dest {
    /// A queue, held directly so routing needs no name lookup.
    Queue(Arc<Queue>),
    /// Another exchange, by name (held by name so that deleting it cannot leave a cycle of
    /// `Arc`s behind).
    Exchange(Arc<str>),
}

impl PartialEq for Dest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Dest::Queue(a), Dest::Queue(b)) => Arc::ptr_eq(a, b),
            (Dest::Exchange(a), Dest::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

/// One binding of this exchange.
#[derive(Clone, Debug)]
pub struct Binding {
    /// Destination.
    pub dest: Dest,
    /// Binding key.
    pub key: String,
    /// Binding arguments.
    pub args: FieldTable,
}

impl Binding {
    fn same(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        self.dest == *dest && self.key == key && self.args == *args
    }
}

#[derive(Debug, Default)]
struct Bindings {
    all: Vec<Binding>,
    direct: HashMap<String, Vec<Dest>>,
    topic: TopicTrie<Dest>,
    headers: Vec<(XMatch, usize)>,
}

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Name.
    pub name: Arc<str>,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
    /// `alternate-exchange` argument, if any.
    pub alternate: Option<String>,
    /// The alternate exchange a matching policy sets; swapped when policies change. The
    /// argument wins over it, as in RabbitMQ.
    policy_alternate: arc_swap::ArcSwapOption<String>,
    /// Set for an `x-delayed-message` exchange (`kind` is then its `x-delayed-type`).
    pub delayed: Option<delayed::Delayed>,
    bindings: RwLock<Bindings>,
    deleted: std::sync::atomic::AtomicBool,
}

impl Exchange {
    /// A new exchange without bindings; `policy_alternate` is the alternate exchange a
    /// matching policy sets (the argument wins over it, as in RabbitMQ).
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
        policy_alternate: Option<String>,
    ) -> Self {
        let alternate = arguments
            .inner()
            .get("alternate-exchange")
            .and_then(crate::broker::args::as_bytes)
            .map(|b| String::from_utf8_lossy(b).into_owned());
        Self {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate,
            policy_alternate: arc_swap::ArcSwapOption::from_pointee(policy_alternate),
            delayed: None,
            bindings: RwLock::default(),
            deleted: Default::default(),
        }
    }

    /// Where unroutable messages go: the argument, else the policy's (read only for a
    /// message that matched nothing).
    pub fn alternate_exchange(&self) -> Option<String> {
        self.alternate
            .clone()
            .or_else(|| self.policy_alternate.load_full().map(|a| (*a).clone()))
    }

    /// Sets the alternate exchange a policy gives (after a policy change).
    pub fn set_policy_alternate(&self, ae: Option<String>) {
        self.policy_alternate.store(ae.map(Arc::new));
    }

    /// The type as declared and listed: `x-delayed-message` for a delayed exchange.
    pub fn type_name(&self) -> &'static str {
        if self.delayed.is_some() {
            delayed::TYPE
        } else {
            self.kind.name()
        }
    }

    /// Marks the exchange deleted, for holders of a cached `Arc` (publishing channels).
    pub fn mark_deleted(&self) {
        self.deleted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether it was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Adds a binding; binding twice is a no-op.
    ///
    /// # Errors
    /// 406 for a headers binding with a bad `x-match`.
    pub fn bind(&self, dest: Dest, key: &str, args: &FieldTable) -> Result<()> {
        let xmatch = if self.kind == ExchangeKind::Headers {
            Some(XMatch::from_args(args)?)
        } else {
            None
        };
        let mut b = self.bindings.write();
        if b.all.iter().any(|x| x.same(&dest, key, args)) {
            return Ok(());
        }
        match self.kind {
            ExchangeKind::Direct => b.direct.entry(key.into()).or_default().push(dest.clone()),
            ExchangeKind::Topic => b.topic.insert(key, dest.clone()),
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        b.all.push(Binding {
            dest,
            key: key.into(),
            args: args.clone(),
        });
        if let Some(x) = xmatch {
            let at = b.all.len() - 1;
            b.headers.push((x, at));
        }
        Ok(())
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        let mut b = self.bindings.write();
        let Some(at) = b.all.iter().position(|x| x.same(dest, key, args)) else {
            return false;
        };
        b.all.remove(at);
        self.reindex(&mut b, dest, key);
        true
    }

    /// Removes every binding to `dest` (it is being deleted).
    pub fn unbind_all(&self, dest: &Dest) {
        let mut b = self.bindings.write();
        let keys: Vec<String> = b
            .all
            .iter()
            .filter(|x| x.dest == *dest)
            .map(|x| x.key.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        b.all.retain(|x| x.dest != *dest);
        for k in keys {
            self.reindex(&mut b, dest, &k);
        }
    }

    fn reindex(&self, b: &mut Bindings, dest: &Dest, key: &str) {
        let still = b.all.iter().any(|x| x.dest == *dest && x.key == key);
        match self.kind {
            ExchangeKind::Direct if !still => {
                if let Some(v) = b.direct.get_mut(key) {
                    v.retain(|d| d != dest);
                    if v.is_empty() {
                        b.direct.remove(key);
                    }
                }
            }
            ExchangeKind::Topic if !still => b.topic.remove(key, dest),
            ExchangeKind::Headers => {
                // Positions shifted: rebuild the small index.
                let all = &b.all;
                let rebuilt = all
                    .iter()
                    .enumerate()
                    .filter_map(|(i, x)| XMatch::from_args(&x.args).ok().map(|m| (m, i)))
                    .collect();
                b.headers = rebuilt;
            }
            _ => {}
        }
    }

    /// Whether the exchange has any binding (as a source).
    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Reports the destinations `msg`, published with routing key `key`, reaches through
    /// this exchange alone.
    pub fn route(&self, key: &str, msg: &Message, out: &mut impl FnMut(&Dest)) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(ds) = b.direct.get(key) {
                    ds.iter().for_each(out);
                }
            }
            ExchangeKind::Fanout => b.all.iter().for_each(|x| out(&x.dest)),
            ExchangeKind::Topic => b.topic.matches(key, out),
            ExchangeKind::Headers => {
                let h = msg.properties.headers().as_ref();
                for (mode, i) in &b.headers {
                    let x = &b.all[*i];
                    if headers::matches(&x.args, *mode, h) {
                        out(&x.dest);
                    }
                }
            }
        }
    }
}
