//! One AMQP channel's state machine: consumers, unacked deliveries and their tags, prefetch,
//! publisher-confirm and transaction modes, content assembly. Not a task: the connection task
//! owns its channels and drives them method by method.
//!
//! Handlers are named after the AMQP method (`queue_declare`, `basic_ack`) and return
//! `Result<(), AmqpError>`; the connection decides, from the error's code, whether that closes
//! this channel or the whole connection. Talks to the broker (vhost, queues) and writes its
//! replies into the connection's output buffer through `Ctx`.

mod basic;
mod declare;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic as b, confirm, exchange, queue, tx};
use bytes::{Bytes, BytesMut};

use crate::broker::counters::count;
use crate::broker::message::Entry;
use crate::broker::queue::{ChannelCredit, ConsumerHandle, Inbox, Queue};
use crate::broker::vhost::VHost;
use crate::error::{AmqpError, Result};
use crate::protocol::{self, content::Assembly};
use crate::store::{Seq, Watermark};

/// What a channel handler needs from its connection.
pub struct Ctx<'a> {
    /// The connection's id (exclusive queues, consumers).
    pub conn_id: u64,
    /// The vhost the connection opened.
    pub vhost: &'a Arc<VHost>,
    /// The authenticated user (validated `user_id`).
    pub user: &'a str,
    /// The user has the `impersonator` tag: `user_id` may name anyone.
    pub impersonator: bool,
    /// Users and permissions, for checks.
    pub auth: &'a crate::auth::Registry,
    /// Frames to send, flushed by the connection after each batch of input.
    pub out: &'a mut BytesMut,
    /// This connection's delivery inbox, handed to queues with each consumer.
    pub inbox: &'a mut Inbox,
    /// Negotiated frame_max, for splitting bodies.
    pub frame_max: u32,
    /// Configured largest body.
    pub max_message_size: u64,
    /// Configured most body bytes held by one transaction.
    pub max_transaction_bytes: u64,
    /// Broker-wide memory for bodies received in several frames.
    pub content_budget: &'a Arc<crate::protocol::content::ContentBudget>,
    /// Queues to re-run dispatch on once this batch is done (credit was given back).
    pub kicks: &'a mut Vec<Arc<Queue>>,
}

impl Ctx<'_> {
    fn send(&mut self, channel: u16, method: AMQPClass) {
        protocol::write_method(self.out, channel, &method);
    }

    /// Writes a message's content header and body frames.
    fn content(&mut self, channel: u16, msg: &crate::broker::message::Message) {
        protocol::write_content(
            self.out,
            channel,
            &msg.raw_properties,
            &msg.body,
            self.frame_max,
        );
    }

    fn kick(&mut self, q: &Arc<Queue>) {
        if !self.kicks.iter().any(|k| Arc::ptr_eq(k, q)) {
            self.kicks.push(q.clone());
        }
    }
}

/// A delivery the client has not settled yet.
#[derive(Debug)]
struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    entry: Entry,
    /// The acking consumer whose credit the delivery holds (None for `basic.get`).
    consumer: Option<Arc<ConsumerHandle>>,
}

#[derive(Debug)]
struct ConsumerInfo {
    queue: Arc<Queue>,
    handle: Arc<ConsumerHandle>,
}

/// A publish held back until `tx.commit`.
#[derive(Debug)]
struct TxPublish {
    publish: b::Publish,
    properties: crate::protocol::Properties,
    raw_properties: Bytes,
    body: Bytes,
}

/// Publisher confirms / transactions: at most one of them, for the channel's lifetime.
#[derive(Debug, Default)]
enum Mode {
    #[default]
    Plain,
    Confirm {
        /// Sequence number of the last publish.
        last_seq: u64,
        /// Highest sequence number confirmed but not yet written (written as one
        /// multiple=true ack at the end of the batch).
        ack_upto: Option<u64>,
        /// Publishes waiting for the message log to reach the disk, in order: (publish
        /// sequence number, log record to wait for; `Seq(0)` = nothing, but behind one that
        /// does).
        pending: VecDeque<(u64, Seq)>,
    },
    Tx {
        publishes: Vec<TxPublish>,
        settles: Vec<(Unacked, Settle)>,
        /// What `publishes` costs against `max_transaction_bytes`.
        bytes: u64,
    },
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    id: u16,
    closing: bool,
    assembly: Assembly,
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    consumers: HashMap<Arc<str>, ConsumerInfo>,
    prefetch: u32,
    global: Arc<ChannelCredit>,
    mode: Mode,
    last_queue: Option<String>,
    route_buf: Vec<Arc<Queue>>,
    /// The direct reply-to consumer: its tag and the routable name replies use.
    reply: Option<(Arc<str>, String)>,
    /// The exchange of the last publish: publishers usually stick to one, and this saves a
    /// hashed lookup per message.
    last_exchange: Option<(
        amq_protocol::types::ShortString,
        Arc<crate::broker::exchange::Exchange>,
    )>,
    /// The queue the last default-exchange publish went to, by routing key: the same
    /// saving for the common case of publishing straight to a queue by name.
    default_route: Option<(amq_protocol::types::ShortString, Arc<Queue>)>,
    /// Permission answers for this channel's user in its vhost.
    access: crate::auth::Cache,
    /// What the management API shows of this channel (kept by [`Channel::sync_view`]).
    view: Arc<crate::broker::connections::ChannelView>,
}

impl Channel {
    /// A freshly opened channel.
    /// A new channel whose unacked deliveries may hold `max_unacked_bytes` of bodies.
    pub fn new(
        id: u16,
        max_unacked_bytes: u64,
        view: Arc<crate::broker::connections::ChannelView>,
    ) -> Self {
        Self {
            id,
            closing: false,
            assembly: Assembly::default(),
            next_tag: 1,
            unacked: VecDeque::new(),
            consumers: HashMap::new(),
            prefetch: 0,
            global: Arc::new(ChannelCredit::with_byte_limit(max_unacked_bytes)),
            mode: Mode::Plain,
            last_queue: None,
            route_buf: Vec::new(),
            reply: None,
            last_exchange: None,
            default_route: None,
            access: crate::auth::Cache::default(),
            view,
        }
    }

    /// Copies the figures the management API shows into the channel's view: relaxed
    /// stores to atomics only this channel writes, after each method (qos, consume,
    /// settles, confirm and tx modes change there).
    fn sync_view(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let v = &self.view;
        let (confirm, tx, unconfirmed) = match &self.mode {
            Mode::Plain => (false, false, 0),
            Mode::Confirm { pending, .. } => (true, false, pending.len()),
            Mode::Tx { .. } => (false, true, 0),
        };
        v.prefetch_count.store(self.prefetch, Relaxed);
        v.global_prefetch_count
            .store(self.global.limit.load(Relaxed), Relaxed);
        v.confirm.store(confirm, Relaxed);
        v.transactional.store(tx, Relaxed);
        v.consumer_count.store(self.consumers.len() as u32, Relaxed);
        v.messages_unacknowledged
            .store(self.unacked.len() as u32, Relaxed);
        v.messages_unconfirmed.store(unconfirmed as u32, Relaxed);
    }

    /// Checks a permission of the connection's user in its vhost, remembering the answer
    /// until permissions change.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED naming the resource.
    pub(super) fn allow(
        &mut self,
        ctx: &Ctx<'_>,
        perm: crate::auth::Perm,
        kind: crate::auth::Kind,
        name: &str,
    ) -> Result<()> {
        let (auth, vhost, user) = (ctx.auth, ctx.vhost.name.as_str(), ctx.user);
        self.access.check(
            auth.generation(),
            || auth.grant(vhost, user),
            crate::auth::Subject { user, vhost },
            perm,
            kind,
            name,
        )
    }

    /// Checks a topic permission (`write`: a routing key published; else a binding key
    /// bound) on `exchange` when it is a topic exchange.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED naming the key.
    pub(super) fn allow_topic(
        &mut self,
        ctx: &Ctx<'_>,
        exchange: &crate::broker::exchange::Exchange,
        write: bool,
        key: &str,
    ) -> Result<()> {
        if exchange.kind != crate::broker::exchange::ExchangeKind::Topic {
            return Ok(());
        }
        let (auth, vhost, user) = (ctx.auth, ctx.vhost.name.as_str(), ctx.user);
        self.access.check_topic(
            auth.generation(),
            || auth.grant(vhost, user),
            crate::auth::Subject { user, vhost },
            write,
            &exchange.name,
            key,
        )
    }

    /// Whether the server has sent `channel.close` and waits for `close-ok`.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether a publish is waiting for its content (a method frame now is a 505).
    pub fn in_content(&self) -> bool {
        self.assembly.in_progress()
    }

    /// The error for a method arriving now, if it interrupts a content (a 505 naming
    /// `basic.publish`).
    pub fn content_interrupted(&self) -> Option<crate::error::AmqpError> {
        self.in_content().then(|| self.assembly.method_error())
    }

    /// Dispatches one method of classes basic, exchange, queue, tx and confirm.
    ///
    /// # Errors
    /// Whatever the method's handler raises.
    pub fn handle_method(&mut self, ctx: &mut Ctx<'_>, method: AMQPClass) -> Result<()> {
        // A publish changes nothing the view shows (its confirm is counted when flushed):
        // the publish path skips the stores.
        let publish = matches!(method, AMQPClass::Basic(b::AMQPMethod::Publish(_)));
        let r = self.dispatch(ctx, method);
        if !publish {
            self.sync_view();
        }
        r
    }

    fn dispatch(&mut self, ctx: &mut Ctx<'_>, method: AMQPClass) -> Result<()> {
        match method {
            AMQPClass::Basic(m) => match m {
                b::AMQPMethod::Qos(m) => self.basic_qos(ctx, m),
                b::AMQPMethod::Consume(m) => self.basic_consume(ctx, m),
                b::AMQPMethod::Cancel(m) => self.basic_cancel(ctx, m),
                b::AMQPMethod::Publish(m) => self.basic_publish(m),
                b::AMQPMethod::Get(m) => self.basic_get(ctx, m),
                b::AMQPMethod::Ack(m) => self.settle(ctx, m.delivery_tag, m.multiple, Settle::Ack),
                b::AMQPMethod::Reject(m) => {
                    let how = if m.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Discard
                    };
                    self.settle(ctx, m.delivery_tag, false, how)
                }
                b::AMQPMethod::Nack(m) => {
                    let how = if m.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Discard
                    };
                    self.settle(ctx, m.delivery_tag, m.multiple, how)
                }
                b::AMQPMethod::Recover(m) => self.basic_recover(ctx, m.requeue, true),
                b::AMQPMethod::RecoverAsync(m) => self.basic_recover(ctx, m.requeue, false),
                other => Err(unexpected(&format!("{other:?}"))),
            },
            AMQPClass::Exchange(m) => match m {
                exchange::AMQPMethod::Declare(m) => self.exchange_declare(ctx, m),
                exchange::AMQPMethod::Delete(m) => self.exchange_delete(ctx, m),
                exchange::AMQPMethod::Bind(m) => self.exchange_bind(ctx, m),
                exchange::AMQPMethod::Unbind(m) => self.exchange_unbind(ctx, m),
                other => Err(unexpected(&format!("{other:?}"))),
            },
            AMQPClass::Queue(m) => match m {
                queue::AMQPMethod::Declare(m) => self.queue_declare(ctx, m),
                queue::AMQPMethod::Bind(m) => self.queue_bind(ctx, m),
                queue::AMQPMethod::Unbind(m) => self.queue_unbind(ctx, m),
                queue::AMQPMethod::Purge(m) => self.queue_purge(ctx, m),
                queue::AMQPMethod::Delete(m) => self.queue_delete(ctx, m),
                other => Err(unexpected(&format!("{other:?}"))),
            },
            AMQPClass::Tx(m) => match m {
                tx::AMQPMethod::Select(_) => self.tx_select(ctx),
                tx::AMQPMethod::Commit(_) => self.tx_commit(ctx),
                tx::AMQPMethod::Rollback(_) => self.tx_rollback(ctx),
                other => Err(unexpected(&format!("{other:?}"))),
            },
            AMQPClass::Confirm(confirm::AMQPMethod::Select(m)) => self.confirm_select(ctx, m),
            other => Err(unexpected(&format!("{other:?}"))),
        }
    }

    /// Feeds a content header.
    ///
    /// # Errors
    /// 505 out of order, 406 oversized, or the publish's own errors.
    pub fn handle_header(
        &mut self,
        ctx: &mut Ctx<'_>,
        ids: crate::protocol::content::HeaderIds,
        properties: crate::protocol::Properties,
        raw_properties: Bytes,
        body_size: u64,
    ) -> Result<()> {
        match self.assembly.header(
            ids,
            properties,
            raw_properties,
            body_size,
            ctx.max_message_size,
        )? {
            Some(content) => self.publish_content(ctx, content),
            None => Ok(()),
        }
    }

    /// Feeds a body frame.
    ///
    /// # Errors
    /// 505 out of order, 501 overrun, or the publish's own errors.
    pub fn handle_body(&mut self, ctx: &mut Ctx<'_>, payload: Bytes) -> Result<()> {
        match self.assembly.body(payload, ctx.content_budget)? {
            Some(content) => self.publish_content(ctx, content),
            None => Ok(()),
        }
    }

    /// Writes a delivery pushed by a queue, or hands it back when the consumer is gone.
    pub fn handle_delivery(
        &mut self,
        ctx: &mut Ctx<'_>,
        consumer: Arc<ConsumerHandle>,
        queue: Arc<Queue>,
        entry: Entry,
    ) {
        if consumer.taken(entry.msg.body.len()) {
            ctx.kick(&queue);
        }
        if self.closing || !consumer.is_attached() {
            // Cancelled while the delivery was in flight: it was never sent, so it goes
            // back unchanged (not marked redelivered), whatever the ack mode. A consumer
            // that has since taken the same tag does not get it. The credit it took (of
            // the channel's, for an acking consumer) comes back.
            if !consumer.no_ack {
                consumer.release(1, entry.msg.body.len() as u64);
            }
            queue.requeue_unsent(entry, consumer.no_ack);
            ctx.kick(&queue);
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.view.counts.add(
            if consumer.no_ack {
                count::DELIVERED_CONSUME_AUTO_ACK
            } else {
                count::DELIVERED_CONSUME_MANUAL_ACK
            },
            1,
        );
        if entry.redelivered {
            self.view.counts.add(count::REDELIVERED, 1);
        }
        let m = &entry.msg;
        protocol::write_deliver(
            ctx.out,
            self.id,
            &consumer.tag,
            tag,
            entry.redelivered,
            m.exchange.as_str(),
            m.routing_key.as_str(),
        );
        ctx.content(self.id, m);
        if !consumer.no_ack {
            self.unacked.push_back(Unacked {
                tag,
                queue,
                entry,
                consumer: Some(consumer),
            });
            self.view.messages_unacknowledged.store(
                self.unacked.len() as u32,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Writes a direct reply-to message to the channel's reply consumer (no ack, no tag
    /// bookkeeping beyond the counter).
    pub fn handle_reply(
        &mut self,
        ctx: &mut Ctx<'_>,
        consumer_tag: &str,
        msg: &crate::broker::message::Message,
    ) {
        if self.closing
            || self
                .reply
                .as_ref()
                .is_none_or(|(t, _)| &**t != consumer_tag)
        {
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        protocol::write_deliver(
            ctx.out,
            self.id,
            consumer_tag,
            tag,
            false,
            msg.exchange.as_str(),
            msg.routing_key.as_str(),
        );
        ctx.content(self.id, msg);
    }

    /// A queue cancelled one of this channel's consumers (it was deleted). Returns whether
    /// the channel still had that consumer, so the connection knows whether to notify the
    /// client; a newer consumer with the same tag is left alone.
    pub fn consumer_cancelled(&mut self, consumer: &Arc<ConsumerHandle>) -> bool {
        let ours = self
            .consumers
            .get(&consumer.tag)
            .is_some_and(|c| Arc::ptr_eq(&c.handle, consumer));
        if ours {
            self.detach(&consumer.tag);
            self.sync_view();
        }
        ours
    }

    /// Drops a consumer from the channel; deliveries still in flight to it will go back to
    /// their queue.
    fn detach(&mut self, tag: &str) -> Option<ConsumerInfo> {
        let c = self.consumers.remove(tag)?;
        c.handle.detach();
        Some(c)
    }

    /// Writes the publisher confirms that are due, coalesced for the whole batch: one
    /// `basic.ack multiple=true` up to the last publish whose log record (if any) is on disk;
    /// after a store failure, one `basic.nack multiple=true` for everything still waiting.
    pub fn flush_confirms(&mut self, out: &mut BytesMut, wm: Option<&Watermark>) {
        let Mode::Confirm {
            ack_upto, pending, ..
        } = &mut self.mode
        else {
            return;
        };
        let mut failed = false;
        while let Some(&(tag, seq)) = pending.front() {
            let done = match wm {
                Some(wm) if seq.0 != 0 => match wm.status(seq) {
                    Ok(done) => done,
                    Err(_) => {
                        failed = true;
                        false
                    }
                },
                _ => true,
            };
            if !done {
                break;
            }
            *ack_upto = Some(tag);
            pending.pop_front();
            self.view.counts.add(count::CONFIRMED, 1);
        }
        if let Some(tag) = ack_upto.take() {
            protocol::write_confirm(out, self.id, tag, true, true);
        }
        if failed && let Some(&(last, _)) = pending.back() {
            protocol::write_confirm(out, self.id, last, true, false);
            pending.clear();
        }
        let left = pending.len() as u32;
        self.view
            .messages_unconfirmed
            .store(left, std::sync::atomic::Ordering::Relaxed);
    }

    /// The oldest log record a confirm on this channel waits for.
    pub fn confirm_wait(&self) -> Option<Seq> {
        match &self.mode {
            Mode::Confirm { pending, .. } => pending.iter().map(|p| p.1).find(|s| s.0 != 0),
            _ => None,
        }
    }

    /// Releases everything the channel holds: unacked deliveries go back to their queues
    /// (redelivered), consumers are cancelled (auto-delete queues may go), and the channel
    /// then only waits for `close-ok`.
    pub fn shut(&mut self, ctx: &mut Ctx<'_>) {
        self.closing = true;
        self.assembly.reset();
        if let Mode::Tx { settles, .. } = &mut self.mode {
            let back: Vec<Unacked> = settles.drain(..).map(|(u, _)| u).collect();
            self.unacked.extend(back);
        }
        self.mode = Mode::Plain;
        let mut unacked: Vec<Unacked> = self.unacked.drain(..).collect();
        unacked.sort_by_key(|u| u.tag);
        requeue_grouped(ctx, unacked);
        if let Some((_, name)) = self.reply.take() {
            ctx.vhost.unregister_reply(&name);
        }
        for c in std::mem::take(&mut self.consumers).into_values() {
            c.handle.detach();
            if c.queue.remove_consumer(&c.handle) {
                ctx.vhost.remove_queue(&c.queue);
            }
        }
    }
}

/// Requeues settled-with-requeue deliveries, one call per queue, in tag order.
fn requeue_grouped(ctx: &mut Ctx<'_>, mut items: Vec<Unacked>) {
    for u in &items {
        if let Some(c) = &u.consumer {
            c.release(1, u.entry.msg.body.len() as u64);
        }
    }
    while let Some(first) = items.first() {
        let q = first.queue.clone();
        let (mine, rest): (Vec<Unacked>, Vec<Unacked>) =
            items.into_iter().partition(|u| Arc::ptr_eq(&u.queue, &q));
        q.requeue(mine.into_iter().map(|u| u.entry));
        ctx.kick(&q);
        items = rest;
    }
}

/// Rejected deliveries go to their queues' dead-letter exchanges, one call per queue.
fn discard_grouped(mut items: Vec<Unacked>) {
    while let Some(first) = items.first() {
        let q = first.queue.clone();
        let (mine, rest): (Vec<Unacked>, Vec<Unacked>) =
            items.into_iter().partition(|u| Arc::ptr_eq(&u.queue, &q));
        q.discard(mine.into_iter().map(|u| u.entry).collect());
        items = rest;
    }
}

fn unexpected(what: &str) -> AmqpError {
    AmqpError::command_invalid(format!("method not valid from a client here: {what}"))
}
