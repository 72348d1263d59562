//! A virtual host: its exchange and queue registries, the topology operations on them
//! (declare, bind, delete, with RabbitMQ's checks and reply codes), and routing a message
//! from an exchange to the set of queues it reaches.
//!
//! Registries are `DashMap`s, so a publish only takes a shard read lock to find its exchange
//! and each exchange's own read lock to route. Topology changes, which must see several maps
//! at once (a bind checks both ends exist; a delete removes bindings everywhere), take the
//! vhost's `topology` mutex; publishing never does.

use std::sync::{Arc, Weak};

use amq_protocol::types::{AMQPValue, FieldTable};
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::broker::args::{self, QUEUE_ARGS};
use crate::broker::exchange::{Dest, Exchange, ExchangeKind, Routed, Router, delayed};
use crate::broker::message::Message;
use crate::broker::queue::{DeliverySink, Queue, QueueEvent, QueueInit, stream};
use crate::broker::queue_args::{QueueArgs, matching_policy};
use crate::broker::{Persistence, blocking};
use crate::config::Policy;
use crate::error::{AmqpError, Result};
use crate::store::definitions::{BindingDef, Definitions, ExchangeDef, Loaded, QueueDef, VhostDef};

/// Exchanges every vhost has, with their types and whether they are internal (the default
/// exchange is `""`). All are durable.
const PREDECLARED: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    // RabbitMQ's firehose target. Warren does not trace (yet), but tools and clients that
    // bind to it, or declare it passively, expect it to be there.
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

/// What `queue.declare` answers.
#[derive(Debug)]
pub struct Declared {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
    /// Whether this call created it.
    pub created: bool,
}

/// Flags of a `queue.declare`.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueFlags {
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted after its last consumer leaves.
    pub auto_delete: bool,
}

/// Flags of an `exchange.declare`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExchangeFlags {
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted after its last binding goes.
    pub auto_delete: bool,
    /// Not publishable to.
    pub internal: bool,
}

/// Where a direct reply-to name leads: a channel's reply consumer.
#[derive(Debug, Clone)]
pub struct ReplyTarget {
    /// The consuming connection's inbox.
    pub sink: DeliverySink,
    /// Channel of the reply consumer.
    pub channel: u16,
    /// Its consumer tag.
    pub consumer_tag: Arc<str>,
}

/// The pseudo-queue clients consume for direct reply-to.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// Name, e.g. `/`.
    pub name: String,
    me: Weak<VHost>,
    /// rabbit.toml's policies (for the default vhost) followed by the runtime ones; read at
    /// each declare, replaced whole when a runtime policy changes.
    policies: parking_lot::RwLock<Arc<Vec<Policy>>>,
    /// How many of `policies` come from rabbit.toml.
    configured: usize,
    /// Runtime policies as given, for listing and export.
    runtime: Mutex<Vec<crate::store::definitions::PolicyDef>>,
    exchanges: DashMap<Arc<str>, Arc<Exchange>>,
    queues: DashMap<Arc<str>, Arc<Queue>>,
    replies: DashMap<String, ReplyTarget>,
    topology: Mutex<()>,
    persist: Option<Arc<Persistence>>,
    /// Description, tags, default queue type and limits, as RabbitMQ's vhost object.
    meta: Mutex<VhostDef>,
    /// The statistics sampler's last sum over this vhost's queues (`crate::broker::stats`).
    pub sampled: parking_lot::Mutex<crate::broker::stats::Slot>,
    /// Queue names in order, so the management API pages through them without sorting.
    names: parking_lot::RwLock<std::collections::BTreeSet<Arc<str>>>,
    /// Pending messages of the delayed exchanges, created with the first one.
    delayed: std::sync::OnceLock<Arc<delayed::Scheduler>>,
}

impl crate::broker::queue::QueueHost for VHost {
    fn route_dead_letter(
        &self,
        exchange: &str,
        msg: Arc<Message>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Option<Arc<Message>> {
        let x = self.exchange(exchange)?;
        let routed = self.route(&x, &msg, out);
        Some(routed.message.unwrap_or(msg))
    }

    fn remove_expired(&self, q: &Queue) {
        self.remove_queue(q);
    }
}

impl Router for VHost {
    fn route(
        &self,
        exchange: &Arc<Exchange>,
        msg: &Arc<Message>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Routed {
        VHost::route(self, exchange, msg, out)
    }
}

/// Names starting with `amq.` are the broker's; clients may not create them.
pub fn reserved(name: &str) -> bool {
    name.starts_with("amq.")
}

impl VHost {
    /// A vhost with the predeclared exchanges and the configured policies.
    pub fn new(name: &str, policies: Vec<Policy>, persist: Option<Arc<Persistence>>) -> Arc<Self> {
        let v = Arc::new_cyclic(|me| Self {
            persist,
            name: name.into(),
            me: me.clone(),
            configured: policies.len(),
            policies: parking_lot::RwLock::new(Arc::new(policies)),
            runtime: Mutex::new(Vec::new()),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            replies: DashMap::new(),
            topology: Mutex::new(()),
            meta: Mutex::new(VhostDef {
                name: name.into(),
                description: String::new(),
                tags: Vec::new(),
                default_queue_type: None,
                limits: Default::default(),
            }),
            sampled: Default::default(),
            names: Default::default(),
            delayed: Default::default(),
        });
        for (n, kind, internal) in PREDECLARED {
            let x = Exchange::new(
                n,
                *kind,
                true,
                false,
                *internal,
                FieldTable::default(),
                None,
            );
            v.exchanges.insert(x.name.clone(), Arc::new(x));
        }
        v
    }

    /// Writes a definition change (flushed and synced) before the caller answers `*-ok`.
    fn save(&self, f: impl FnOnce(&Definitions) -> std::io::Result<()>) -> Result<()> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        blocking(|| f(&p.defs)).map_err(|e| {
            // A definition the store refuses is the client's to fix, not a broker fault.
            if e.kind() == std::io::ErrorKind::InvalidInput {
                return AmqpError::precondition_failed(e);
            }
            tracing::error!(vhost = %self.name, "cannot store definitions: {e}");
            AmqpError::internal_error(format!("cannot store definitions: {e}"))
        })
    }

    /// The stored form of a binding, if both ends are durable (RabbitMQ's rule).
    fn binding_def(
        &self,
        source: &Exchange,
        dest: &Dest,
        key: &str,
        a: &FieldTable,
    ) -> Option<BindingDef> {
        let (destination, to_exchange, durable) = match dest {
            Dest::Queue(q) => (q.name.to_string(), false, q.durable && q.owner.is_none()),
            Dest::Exchange(n) => (
                n.to_string(),
                true,
                self.exchange(n).is_some_and(|x| x.durable),
            ),
        };
        (source.durable && durable && !source.name.is_empty()).then(|| BindingDef {
            vhost: self.name.clone(),
            source: source.name.to_string(),
            destination,
            to_exchange,
            key: key.into(),
            arguments: a.clone(),
        })
    }

    /// Rebuilds durable topology at boot; returns the durable queues, for their messages.
    pub fn restore(&self, loaded: &Loaded) -> Vec<Arc<Queue>> {
        let mut restored = Vec::new();
        for x in loaded.exchanges.iter().filter(|x| x.vhost == self.name) {
            let Ok((kind, is_delayed)) = delayed::resolve(&x.kind, &x.arguments) else {
                continue;
            };
            let policy_ae = matching_policy(&self.policies.read().clone(), &x.name, false)
                .and_then(|p| p.definition.alternate_exchange.clone());
            let mut e = Exchange::new(
                &x.name,
                kind,
                true,
                x.auto_delete,
                x.internal,
                x.arguments.clone(),
                policy_ae,
            );
            e.delayed = is_delayed.then(Default::default);
            self.exchanges.insert(e.name.clone(), Arc::new(e));
        }
        for q in loaded.queues.iter().filter(|q| q.vhost == self.name) {
            let args = QueueArgs::new(
                &q.arguments,
                matching_policy(&self.policies.read().clone(), &q.name, true),
            );
            let store = self
                .persist
                .as_ref()
                .map(|p| (p.clone(), self.name.as_str()));
            let queue = match Queue::create(QueueInit {
                name: &q.name,
                durable: true,
                owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
                args,
                vhost: self.me.clone(),
                store,
            }) {
                Ok(queue) => Arc::new(queue),
                Err(e) => {
                    // The definition stays; the next boot tries again.
                    tracing::error!(vhost = %self.name, queue = %q.name, error = %e,
                        "cannot open the queue's storage; it is not restored");
                    continue;
                }
            };
            queue.start_timer();
            restored.push(queue.clone());
            self.names.write().insert(queue.name.clone());
            self.queues.insert(queue.name.clone(), queue);
        }
        for b in loaded.bindings.iter().filter(|b| b.vhost == self.name) {
            let Some(src) = self.exchange(&b.source) else {
                continue;
            };
            let dest = if b.to_exchange {
                Dest::Exchange(b.destination.as_str().into())
            } else {
                match self.queues.get(b.destination.as_str()) {
                    Some(q) => Dest::Queue(q.clone()),
                    None => continue,
                }
            };
            let _ = src.bind(dest, &b.key, &b.arguments);
        }
        restored
    }

    /// Registers a direct reply-to consumer under a fresh routable name.
    pub fn register_reply(&self, target: ReplyTarget) -> String {
        let name = crate::broker::names::generate("amq.rabbitmq.reply-to.");
        self.replies.insert(name.clone(), target);
        name
    }

    /// Forgets a direct reply-to name.
    pub fn unregister_reply(&self, name: &str) {
        self.replies.remove(name);
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn locked(&self, name: &str) -> AmqpError {
        AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does not \
             match that of the original declaration.",
            self.name
        ))
    }

    fn inequivalent(
        &self,
        what: &str,
        arg: &str,
        name: &str,
        received: String,
        current: String,
    ) -> AmqpError {
        AmqpError::precondition_failed(format!(
            "inequivalent arg '{arg}' for {what} '{name}' in vhost '{}': received {received} but current is {current}",
            self.name
        ))
    }

    /// The scheduler of this vhost's delayed exchanges.
    pub fn delayed(&self) -> &Arc<delayed::Scheduler> {
        self.delayed.get_or_init(|| {
            Arc::new(delayed::Scheduler::new(
                self.me.clone() as Weak<dyn Router>,
                &self.name,
                self.persist.as_ref(),
            ))
        })
    }

    /// Looks an exchange up.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|e| e.clone())
    }

    /// Looks an exchange up for publishing or binding.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub fn existing_exchange(&self, name: &str) -> Result<Arc<Exchange>> {
        self.exchange(name).ok_or_else(|| self.no_exchange(name))
    }

    /// `exchange.declare`.
    ///
    /// # Errors
    /// 403 for reserved names, 503 for an unknown type, 404 for a passive miss, 406 for an
    /// inequivalent redeclare.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        flags: ExchangeFlags,
        arguments: &FieldTable,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if flags.passive {
            return self.existing_exchange(name).map(|_| ());
        }
        let (kind, is_delayed) = delayed::resolve(kind, arguments)?;
        args::validate_exchange_args(arguments, name, &self.name)?;
        let _t = self.topology.lock();
        if let Some(x) = self.exchange(name) {
            let q = |s: &str| format!("'{s}'");
            if x.kind != kind || x.delayed.is_some() != is_delayed {
                let received = if is_delayed {
                    delayed::TYPE
                } else {
                    kind.name()
                };
                return Err(self.inequivalent(
                    "exchange",
                    "type",
                    name,
                    q(received),
                    q(x.type_name()),
                ));
            }
            for (arg, r, c) in [
                ("durable", flags.durable, x.durable),
                ("auto_delete", flags.auto_delete, x.auto_delete),
                ("internal", flags.internal, x.internal),
            ] {
                if r != c {
                    return Err(self.inequivalent(
                        "exchange",
                        arg,
                        name,
                        q(&r.to_string()),
                        q(&c.to_string()),
                    ));
                }
            }
            if let Some((arg, r, c)) =
                args::first_difference(&x.arguments, arguments, &["alternate-exchange"])
            {
                return Err(self.inequivalent(
                    "exchange",
                    arg,
                    name,
                    args::describe(r),
                    args::describe(c),
                ));
            }
            return Ok(());
        }
        // Redeclaring amq.direct equivalently is fine; creating a new amq.* exchange is not.
        if reserved(name) {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let policy_ae = matching_policy(&self.policies.read().clone(), name, false)
            .and_then(|p| p.definition.alternate_exchange.clone());
        let mut x = Exchange::new(
            name,
            kind,
            flags.durable,
            flags.auto_delete,
            flags.internal,
            arguments.clone(),
            policy_ae,
        );
        x.delayed = is_delayed.then(Default::default);
        if x.durable {
            self.save(|d| {
                d.put_exchange(&ExchangeDef {
                    vhost: self.name.clone(),
                    name: name.into(),
                    kind: x.type_name().into(),
                    auto_delete: flags.auto_delete,
                    internal: flags.internal,
                    arguments: arguments.clone(),
                })
            })?;
        }
        self.exchanges.insert(x.name.clone(), Arc::new(x));
        Ok(())
    }

    /// `exchange.delete`; deleting a missing exchange succeeds, as in RabbitMQ.
    ///
    /// # Errors
    /// 403 for the default and `amq.*` exchanges, 406 with if-unused while it has bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if reserved(name) {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let _t = self.topology.lock();
        let Some(x) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && x.has_bindings() {
            return Err(AmqpError::precondition_failed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange_locked(&x);
        Ok(())
    }

    fn remove_exchange_locked(&self, x: &Arc<Exchange>) {
        if x.durable {
            let _ = self.save(|d| d.delete_exchange(&self.name, &x.name));
        }
        self.exchanges.remove(&x.name);
        x.mark_deleted();
        if x.delayed.is_some() {
            self.delayed().forget(x);
        }
        self.unbind_everywhere_locked(&Dest::Exchange(x.name.clone()));
    }

    /// Removes every binding to `dest`, then deletes auto-delete exchanges left unbound.
    fn unbind_everywhere_locked(&self, dest: &Dest) {
        let sources: Vec<Arc<Exchange>> = self.exchanges.iter().map(|e| e.clone()).collect();
        for x in sources {
            let had = x.has_bindings();
            x.unbind_all(dest);
            if had && x.auto_delete && !x.has_bindings() {
                self.remove_exchange_locked(&x);
            }
        }
    }

    /// Checks the default-exchange and existence rules shared by every binding operation.
    fn bindable(&self, source: &str) -> Result<Arc<Exchange>> {
        if source.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.existing_exchange(source)
    }

    /// `exchange.bind`: route from `source` to `destination` too.
    ///
    /// # Errors
    /// 403 on the default exchange, 404 when either end is missing.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        a: &FieldTable,
    ) -> Result<()> {
        let _t = self.topology.lock();
        if destination.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.existing_exchange(destination)?;
        let src = self.bindable(source)?;
        self.add_binding(&src, Dest::Exchange(destination.into()), key, a)
    }

    /// Adds a binding, storing it first when both ends are durable.
    fn add_binding(&self, src: &Exchange, dest: Dest, key: &str, a: &FieldTable) -> Result<()> {
        if let Some(def) = self.binding_def(src, &dest, key, a) {
            self.save(|d| d.put_binding(&def))?;
        }
        src.bind(dest, key, a)
    }

    /// Removes a binding (and its stored copy); an auto-delete source left without
    /// bindings goes too.
    fn remove_binding(
        &self,
        src: &Arc<Exchange>,
        dest: &Dest,
        key: &str,
        a: &FieldTable,
    ) -> Result<()> {
        if let Some(def) = self.binding_def(src, dest, key, a) {
            self.save(|d| d.delete_binding(&def))?;
        }
        if src.unbind(dest, key, a) && src.auto_delete && !src.has_bindings() {
            self.remove_exchange_locked(src);
        }
        Ok(())
    }

    /// `exchange.unbind`; a missing binding, or a missing end, is fine.
    ///
    /// # Errors
    /// 403 on the default exchange.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        a: &FieldTable,
    ) -> Result<()> {
        let _t = self.topology.lock();
        if destination.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if source.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        // As RabbitMQ, and as `unbind_queue`: with either end gone the binding is gone too,
        // which is what was asked. Robust clients replay their unbinds at teardown, after an
        // auto-delete destination went away with its last binding.
        let (Some(src), Some(_)) = (self.exchange(source), self.exchange(destination)) else {
            return Ok(());
        };
        self.remove_binding(&src, &Dest::Exchange(destination.into()), key, a)
    }

    /// Finds a queue a connection may use.
    ///
    /// # Errors
    /// 404 when missing, 405 when another connection's exclusive queue.
    pub fn queue(&self, name: &str, conn_id: u64) -> Result<Arc<Queue>> {
        let q = self
            .queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(|| self.no_queue(name))?;
        if q.owner.is_some_and(|o| o != conn_id) {
            return Err(self.locked(name));
        }
        Ok(q)
    }

    /// `queue.declare`. `name` is already resolved (server-named queues get their name from
    /// the caller).
    ///
    /// # Errors
    /// 403 for `amq.*` names, 404 for a passive miss, 405 for another connection's exclusive
    /// queue, 406 for an inequivalent redeclare or a bad argument.
    pub fn declare_queue(
        &self,
        name: &str,
        flags: QueueFlags,
        arguments: &FieldTable,
        conn_id: u64,
    ) -> Result<Declared> {
        let _t = self.topology.lock();
        if let Some(q) = self.queues.get(name).map(|q| q.clone()) {
            // spec errata: exclusivity is checked before equivalence.
            if q.owner.is_some_and(|o| o != conn_id) {
                return Err(self.locked(name));
            }
            if !flags.passive {
                let q_ = |b: bool| format!("'{b}'");
                if q.durable != flags.durable {
                    return Err(self.inequivalent(
                        "queue",
                        "durable",
                        name,
                        q_(flags.durable),
                        q_(q.durable),
                    ));
                }
                if q.owner.is_some() != flags.exclusive {
                    return Err(self.locked(name));
                }
                if q.auto_delete != flags.auto_delete {
                    return Err(self.inequivalent(
                        "queue",
                        "auto_delete",
                        name,
                        q_(flags.auto_delete),
                        q_(q.auto_delete),
                    ));
                }
                if stream::is_stream(arguments) {
                    stream::validate(arguments, name, &self.name)?;
                } else {
                    args::validate_queue_args(arguments, name, &self.name)?;
                }
                if q.stream().is_some() {
                    if let Some((arg, r, c)) = stream::inequivalence(&q.arguments, arguments) {
                        return Err(self.inequivalent("queue", arg, name, r, c));
                    }
                } else if let Some((arg, r, c)) =
                    args::first_difference(&q.arguments, arguments, QUEUE_ARGS)
                {
                    return Err(self.inequivalent(
                        "queue",
                        arg,
                        name,
                        args::describe(r),
                        args::describe(c),
                    ));
                }
            }
            q.touch();
            return Ok(Declared {
                message_count: q.message_count(),
                consumer_count: q.consumer_count(),
                queue: q,
                created: false,
            });
        }
        if flags.passive {
            return Err(self.no_queue(name));
        }
        if stream::is_stream(arguments) {
            stream::check_flags(
                name,
                &self.name,
                flags.durable,
                flags.exclusive,
                flags.auto_delete,
            )?;
            stream::validate(arguments, name, &self.name)?;
        } else {
            args::validate_queue_args(arguments, name, &self.name)?;
            check_queue_type(arguments, name, &self.name, flags)?;
        }
        if let Some(max) = self.limit("max-queues")
            && self.queues.len() as u64 >= max
        {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                self.name
            )));
        }
        let args = QueueArgs::new(
            arguments,
            matching_policy(&self.policies.read().clone(), name, true),
        );
        let store = self
            .persist
            .as_ref()
            .map(|p| (p.clone(), self.name.as_str()));
        let q = Queue::create(QueueInit {
            name,
            durable: flags.durable,
            owner: flags.exclusive.then_some(conn_id),
            auto_delete: flags.auto_delete,
            arguments: arguments.clone(),
            args,
            vhost: self.me.clone(),
            store,
        })
        .map_err(|e| {
            tracing::error!(queue = name, error = %e, "cannot create the queue's storage");
            AmqpError::internal_error(format!("cannot create queue '{name}': {e}"))
        })?;
        let q = Arc::new(q);
        // Exclusive queues never outlive their connection, restart or not: not stored.
        let stored = flags.durable && !flags.exclusive;
        if stored
            && let Err(e) = self.save(|d| {
                d.put_queue(&QueueDef {
                    vhost: self.name.clone(),
                    name: name.into(),
                    auto_delete: flags.auto_delete,
                    arguments: arguments.clone(),
                })
            })
        {
            // A stream's new log goes with the definition that was not kept.
            q.mark_deleted();
            return Err(e);
        }
        q.start_timer();
        self.names.write().insert(q.name.clone());
        self.queues.insert(q.name.clone(), q.clone());
        Ok(Declared {
            queue: q,
            message_count: 0,
            consumer_count: 0,
            created: true,
        })
    }

    /// `queue.bind`.
    ///
    /// # Errors
    /// 403 on the default exchange, 404 for a missing end, 405 for another connection's
    /// exclusive queue, 406 for a bad headers binding.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        a: &FieldTable,
        conn_id: u64,
    ) -> Result<()> {
        let _t = self.topology.lock();
        let q = self.queue(queue, conn_id)?;
        let x = self.bindable(exchange)?;
        self.add_binding(&x, Dest::Queue(q), key, a)
    }

    /// `queue.unbind`; a missing binding is fine.
    ///
    /// # Errors
    /// As `bind_queue`.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        a: &FieldTable,
        conn_id: u64,
    ) -> Result<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let _t = self.topology.lock();
        let Some(q) = self.queues.get(queue).map(|q| q.clone()) else {
            return Ok(());
        };
        let Some(x) = self.exchange(exchange) else {
            return Ok(());
        };
        let dest = Dest::Queue(q.clone());
        if x.bindings()
            .iter()
            .any(|b| b.dest == dest && b.key == key && b.args == *a)
        {
            // compat: RabbitMQ answers unbind-ok for a binding that never existed even on
            // another connection's exclusive queue, but 405 for an existing one.
            if q.owner.is_some_and(|o| o != conn_id) {
                return Err(self.locked(queue));
            }
            return self.remove_binding(&x, &dest, key, a);
        }
        Ok(())
    }

    /// `queue.delete` with its if-unused / if-empty checks; returns the ready count.
    /// Deleting a missing queue answers 0, as in RabbitMQ.
    ///
    /// # Errors
    /// 405 for another connection's exclusive queue, 406 when a condition fails.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn_id: u64,
    ) -> Result<u32> {
        let q = match self.queue(name, conn_id) {
            Ok(q) => q,
            Err(e) if e.code == 404 => return Ok(0),
            Err(e) => return Err(e),
        };
        if q.stream().is_some() {
            // compat: RabbitMQ deletes a stream whatever `if_unused` and `if_empty` say.
            return Ok(self.remove_queue(&q));
        }
        if if_unused && q.consumer_count() > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&q))
    }

    /// Adds or replaces a runtime policy (already compiled as `policy`); it applies to
    /// existing queues and exchanges at once and to those declared from now on.
    pub fn put_policy(&self, def: crate::store::definitions::PolicyDef, policy: Policy) {
        let mut runtime = self.runtime.lock();
        runtime.retain(|p| p.name != def.name);
        runtime.push(def);
        let mut all: Vec<Policy> = self.policies.read()[..self.configured].to_vec();
        let mut mine: Vec<Policy> = self.policies.read()[self.configured..]
            .iter()
            .filter(|p| p.name != policy.name)
            .cloned()
            .collect();
        mine.push(policy);
        all.extend(mine);
        *self.policies.write() = Arc::new(all);
        drop(runtime);
        self.reapply_policies();
    }

    /// Applies the policies as they now are to every existing queue and exchange, as
    /// RabbitMQ does when a policy is set or cleared.
    fn reapply_policies(&self) {
        let policies = self.policies.read().clone();
        self.for_each_queue_arc(|q| {
            let p = matching_policy(&policies, &q.name, true);
            q.apply_args(QueueArgs::new(&q.arguments, p));
        });
        let exchanges: Vec<Arc<Exchange>> = self.exchanges.iter().map(|x| x.clone()).collect();
        for x in exchanges {
            let p = matching_policy(&policies, &x.name, false);
            x.set_policy_alternate(p.and_then(|p| p.definition.alternate_exchange.clone()));
        }
    }

    /// Removes a runtime policy; returns whether it existed.
    pub fn delete_policy(&self, name: &str) -> bool {
        let mut runtime = self.runtime.lock();
        let before = runtime.len();
        runtime.retain(|p| p.name != name);
        if runtime.len() == before {
            return false;
        }
        let configured = self.configured;
        let all: Vec<Policy> = self
            .policies
            .read()
            .iter()
            .enumerate()
            .filter(|(i, p)| *i < configured || p.name != name)
            .map(|(_, p)| p.clone())
            .collect();
        *self.policies.write() = Arc::new(all);
        drop(runtime);
        self.reapply_policies();
        true
    }

    /// The runtime policies, by name.
    pub fn runtime_policies(&self) -> Vec<crate::store::definitions::PolicyDef> {
        let mut v = self.runtime.lock().clone();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The vhost's metadata and limits.
    pub fn meta(&self) -> VhostDef {
        self.meta.lock().clone()
    }

    /// Replaces the metadata and limits (the broker stored them).
    pub fn set_meta(&self, def: VhostDef) {
        *self.meta.lock() = def;
    }

    /// A limit (`max-connections`, `max-queues`); None when unset or negative (unlimited).
    pub fn limit(&self, name: &str) -> Option<u64> {
        self.meta
            .lock()
            .limits
            .get(name)
            .and_then(|&n| u64::try_from(n).ok())
    }

    /// Deletes every queue of a vhost that is going away (their persisted messages with
    /// them); the broker removes the stored definitions in one go.
    pub fn delete_everything(&self) {
        let queues: Vec<Arc<Queue>> = self.queues.iter().map(|q| q.clone()).collect();
        for q in queues {
            self.remove_queue(&q);
        }
        self.exchanges.clear();
    }

    /// Deletes a queue unconditionally (auto-delete, exclusive owner gone, `queue.delete`):
    /// unbinds it, detaches and notifies its consumers; returns its ready count.
    pub fn remove_queue(&self, q: &Queue) -> u32 {
        let _t = self.topology.lock();
        let removed = self
            .queues
            .remove_if(&q.name, |_, v| std::ptr::eq(Arc::as_ptr(v), q));
        let Some((_, q)) = removed else { return 0 };
        self.names.write().remove(&q.name);
        if q.durable && q.owner.is_none() {
            let _ = self.save(|d| d.delete_queue(&self.name, &q.name));
        }
        self.unbind_everywhere_locked(&Dest::Queue(q.clone()));
        let (n, consumers) = q.mark_deleted();
        for c in consumers {
            let _ = c.sink.send(QueueEvent::Cancelled {
                channel: c.channel,
                consumer: c.handle,
            });
        }
        n
    }

    /// Collects the queues `msg` reaches from `exchange`: follows exchange-to-exchange
    /// bindings (each exchange visited once, so cycles terminate), falls back to alternate
    /// exchanges when nothing matched, routes the extra `CC` / `BCC` keys, delivers direct
    /// reply-to messages, and reports each queue once.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        msg: &Arc<Message>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Routed {
        let mut routed = Routed::default();
        let headers = msg.properties.headers().as_ref();
        let extra = |k: &str| match headers.and_then(|h| h.inner().get(k)) {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .filter_map(crate::broker::args::as_bytes)
                .collect(),
            _ => Vec::new(),
        };
        let (cc, bcc): (Vec<&[u8]>, Vec<&[u8]>) = if headers.is_some() {
            (extra("CC"), extra("BCC"))
        } else {
            (Vec::new(), Vec::new())
        };
        let mut route_key = |key: &str, routed: &mut Routed| {
            if exchange.name.is_empty() {
                // The default exchange binds every queue by its name, implicitly.
                if let Some(q) = self.queues.get(key) {
                    out.push(q.clone());
                } else if key.starts_with(REPLY_TO)
                    && let Some(t) = self.replies.get(key)
                {
                    let _ = t.sink.send(QueueEvent::Reply {
                        channel: t.channel,
                        consumer_tag: t.consumer_tag.clone(),
                        msg: msg.clone(),
                    });
                    routed.replied = true;
                }
            } else {
                self.route_key(exchange, key, msg, out);
            }
        };
        route_key(msg.routing_key.as_str(), &mut routed);
        for k in cc.iter().chain(bcc.iter()) {
            if let Ok(k) = std::str::from_utf8(k) {
                route_key(k, &mut routed);
            }
        }
        if out.len() > 1 {
            out.sort_by_key(|q| Arc::as_ptr(q) as usize);
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        if headers.is_some_and(|h| h.contains_key("BCC")) {
            // BCC recipients must stay hidden: strip it before anyone sees the message.
            let mut h = headers.cloned().unwrap_or_default();
            let kept: std::collections::BTreeMap<_, _> = h
                .inner()
                .iter()
                .filter(|(k, _)| k.as_str() != "BCC")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            h = FieldTable::from(kept);
            let properties = (*msg.properties).clone().with_headers(h);
            routed.message = Some(Arc::new(Message {
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
                raw_properties: crate::protocol::encode_properties(&properties),
                properties: crate::protocol::Properties::new(properties),
                body: msg.body.clone(),
            }));
        }
        routed
    }

    fn route_key(
        &self,
        exchange: &Arc<Exchange>,
        key: &str,
        msg: &Message,
        out: &mut Vec<Arc<Queue>>,
    ) {
        // Exchanges already left behind, and exchanges still to visit. Both stay empty (no
        // allocation) on the common path: one exchange whose bindings lead to queues.
        let mut visited: Vec<Arc<str>> = Vec::new();
        let mut pending: Vec<Arc<str>> = Vec::new();
        let mut current = exchange.clone();
        loop {
            let before = out.len();
            let mut hops = 0;
            let mut collect = |d: &Dest| match d {
                Dest::Queue(q) => out.push(q.clone()),
                Dest::Exchange(name) => {
                    hops += 1;
                    pending.push(name.clone());
                }
            };
            current.route(key, msg, &mut collect);
            let matched = out.len() > before || hops > 0;
            if !matched
                && let Some(ae) = &current.alternate_exchange()
                && ae.as_str() != &*current.name
                && !visited.iter().any(|v| &**v == ae.as_str())
            {
                pending.push(ae.as_str().into());
            }
            if pending.is_empty() {
                return;
            }
            visited.push(current.name.clone());
            let next = loop {
                match pending.pop() {
                    None => break None,
                    Some(n) if visited.contains(&n) => continue,
                    Some(n) => match self.exchange(&n) {
                        Some(x) => break Some(x),
                        None => continue,
                    },
                }
            };
            match next {
                Some(x) => current = x,
                None => return,
            }
        }
    }

    /// How many exchanges the vhost has.
    pub fn exchange_count(&self) -> usize {
        self.exchanges.len()
    }

    /// Every exchange, sorted by name (the management API lists them).
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        let mut all: Vec<_> = self.exchanges.iter().map(|e| e.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Every queue, sorted by name (the management API lists them), read from the name
    /// index: no sort per call.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queue_range(0, usize::MAX, false)
    }

    /// How many queues the vhost has.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Up to `take` queues in name order (reversed when `reverse`), after skipping `skip`:
    /// a page of the management API's listing costs the page, not the whole vhost.
    pub fn queue_range(&self, skip: usize, take: usize, reverse: bool) -> Vec<Arc<Queue>> {
        let names = self.names.read();
        let pick = |n: &Arc<str>| self.queues.get(n).map(|q| q.clone());
        if reverse {
            names
                .iter()
                .rev()
                .skip(skip)
                .filter_map(pick)
                .take(take)
                .collect()
        } else {
            names
                .iter()
                .skip(skip)
                .filter_map(pick)
                .take(take)
                .collect()
        }
    }

    /// Calls `f` on every queue, in no order: for totals, which need no sorting. The map's
    /// shard locks are released before `f` runs (it may take each queue's lock).
    pub fn for_each_queue(&self, mut f: impl FnMut(&Queue)) {
        self.for_each_queue_arc(|q| f(q));
    }

    fn for_each_queue_arc(&self, mut f: impl FnMut(&Arc<Queue>)) {
        let all: Vec<Arc<Queue>> = self.queues.iter().map(|q| q.clone()).collect();
        for q in &all {
            f(q);
        }
    }

    /// Looks a queue up whoever owns it (the management API sees exclusive queues too).
    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    /// Every queue owned by a connection (it is closing).
    pub fn exclusive_queues(&self, conn_id: u64) -> Vec<Arc<Queue>> {
        self.queues
            .iter()
            .filter(|q| q.owner == Some(conn_id))
            .map(|q| q.clone())
            .collect()
    }
}

fn check_queue_type(a: &FieldTable, name: &str, vhost: &str, flags: QueueFlags) -> Result<()> {
    let Some(v) = a.inner().get("x-queue-type") else {
        return Ok(());
    };
    match args::as_bytes(v) {
        Some(b"classic") => Ok(()),
        Some(b"quorum") => {
            if !flags.durable {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid property 'non-durable' for queue '{name}' in vhost '{vhost}'"
                )));
            }
            if flags.exclusive {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid property 'exclusive-owner' for queue '{name}' in vhost '{vhost}'"
                )));
            }
            Ok(())
        }
        // `validate_queue_args` refused every other value first.
        _ => Err(AmqpError::precondition_failed(format!(
            "invalid arg 'x-queue-type' for queue '{name}' in vhost '{vhost}': \"unsupported queue type '{}'\"",
            args::display(v)
        ))),
    }
}
