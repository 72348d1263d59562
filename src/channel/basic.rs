//! Messaging methods: basic.qos/consume/cancel/publish/get/ack/nack/reject/recover, and the
//! two publishing modes, publisher confirms and transactions.
//!
//! Publishing routes in the publishing connection's task (no broker-wide lock): the vhost
//! resolves the exchange and collects the target queues, and each queue takes its own lock to
//! enqueue. Confirms are coalesced per batch of input into one `basic.ack multiple=true`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic as b, confirm, tx};
use amq_protocol::types::{AMQPValue, ShortString};
use bytes::Bytes;

use super::{
    Channel, ConsumerInfo, Ctx, Mode, Settle, TxPublish, Unacked, discard_grouped, requeue_grouped,
};
use crate::auth::{Kind, Perm};
use crate::broker::counters::count;
use crate::broker::message::Message;
use crate::broker::names;
use crate::broker::queue::{ConsumeOptions, Consumer, ConsumerHandle, Operation, Published};
use crate::broker::vhost::{REPLY_TO, ReplyTarget};
use crate::error::{AmqpError, Result};
use crate::protocol::{self, content::Content};

impl Channel {
    pub(super) fn basic_qos(&mut self, ctx: &mut Ctx<'_>, m: b::Qos) -> Result<()> {
        let n = u32::from(m.prefetch_count);
        if m.global {
            self.global.limit.store(n, Ordering::Release);
        } else {
            // compat: RabbitMQ reinterprets global=false as "per consumer, for consumers
            // created from now on", and a later global=false clears a channel-wide limit.
            self.prefetch = n;
            self.global.limit.store(0, Ordering::Release);
        }
        ctx.send(self.id, AMQPClass::Basic(b::AMQPMethod::QosOk(b::QosOk {})));
        // A raised limit may let consumers on this channel receive more now.
        for c in self.consumers.values() {
            ctx.kick(&c.queue);
        }
        Ok(())
    }

    pub(super) fn basic_consume(&mut self, ctx: &mut Ctx<'_>, m: b::Consume) -> Result<()> {
        if m.queue.as_str() == REPLY_TO {
            return self.reply_consume(ctx, m);
        }
        let name = self.queue_name(m.queue.as_str())?;
        self.allow(ctx, Perm::Read, Kind::Queue, &name)?;
        let queue = ctx.vhost.queue(&name, ctx.conn_id)?;
        let tag: Arc<str> = if m.consumer_tag.as_str().is_empty() {
            names::generate("amq.ctag-").into()
        } else {
            m.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let handle = Arc::new(ConsumerHandle::new(
            tag.clone(),
            m.no_ack,
            if m.no_ack { 0 } else { self.prefetch },
            (!m.no_ack).then(|| self.global.clone()),
        ));
        // Refused before consume-ok, as RabbitMQ does: the client gets the close instead.
        let priority = match m.arguments.inner().get("x-priority") {
            None => 0,
            Some(v) => crate::broker::args::as_int(v).ok_or_else(|| {
                AmqpError::precondition_failed(format!(
                    "invalid arg 'x-priority' for queue '{name}' in vhost '{}': \"expected integer, got {}\"",
                    ctx.vhost.name,
                    crate::broker::args::type_name(v)
                ))
            })?,
        };
        // consume-ok is written before the consumer is attached, so it precedes every
        // delivery (those reach this connection through its inbox, later); it is taken back
        // if attaching fails.
        let mark = ctx.out.len();
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::ConsumeOk(b::ConsumeOk {
                    consumer_tag: tag.as_ref().into(),
                })),
            );
        }
        let consumer = Consumer {
            handle: handle.clone(),
            channel: self.id,
            conn_id: ctx.conn_id,
            exclusive: m.exclusive,
            priority,
            sink: ctx.inbox.sink(),
        };
        self.consumers.insert(
            tag.clone(),
            ConsumerInfo {
                queue: queue.clone(),
                handle,
            },
        );
        let options = ConsumeOptions {
            arguments: &m.arguments,
            prefetch: self.prefetch,
        };
        if let Err(e) = queue.add_consumer(consumer, options, &ctx.vhost.name) {
            self.detach(&tag);
            ctx.out.truncate(mark);
            return Err(e);
        }
        Ok(())
    }

    /// Direct reply-to: consuming the pseudo-queue registers a routable name for this
    /// channel; replies published to it come straight here, no queue involved.
    fn reply_consume(&mut self, ctx: &mut Ctx<'_>, m: b::Consume) -> Result<()> {
        if !m.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let tag: Arc<str> = if m.consumer_tag.as_str().is_empty() {
            names::generate("amq.ctag-").into()
        } else {
            m.consumer_tag.as_str().into()
        };
        let name = ctx.vhost.register_reply(ReplyTarget {
            sink: ctx.inbox.sink(),
            channel: self.id,
            consumer_tag: tag.clone(),
        });
        self.reply = Some((tag.clone(), name));
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::ConsumeOk(b::ConsumeOk {
                    consumer_tag: tag.as_ref().into(),
                })),
            );
        }
        Ok(())
    }

    pub(super) fn basic_cancel(&mut self, ctx: &mut Ctx<'_>, m: b::Cancel) -> Result<()> {
        if self
            .reply
            .as_ref()
            .is_some_and(|(t, _)| **t == *m.consumer_tag.as_str())
        {
            if let Some((_, name)) = self.reply.take() {
                ctx.vhost.unregister_reply(&name);
            }
        } else if let Some(c) = self.detach(m.consumer_tag.as_str())
            && c.queue.remove_consumer(&c.handle)
        {
            ctx.vhost.remove_queue(&c.queue);
        }
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::CancelOk(b::CancelOk {
                    consumer_tag: m.consumer_tag,
                })),
            );
        }
        Ok(())
    }

    pub(super) fn basic_publish(&mut self, m: b::Publish) -> Result<()> {
        if m.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        self.assembly.start(m);
        Ok(())
    }

    /// A publish is complete: validate, then route now or hold it for the transaction.
    pub(super) fn publish_content(&mut self, ctx: &mut Ctx<'_>, mut c: Content) -> Result<()> {
        let fail = |e: AmqpError| e.with_method(60, 40);
        // RabbitMQ's order: write permission, the exchange exists, not internal, topic
        // permission, then the properties.
        self.allow(
            ctx,
            Perm::Write,
            Kind::Exchange,
            c.publish.exchange.as_str(),
        )
        .map_err(fail)?;
        if c.properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == REPLY_TO)
        {
            // Direct reply-to: the pseudo-name becomes this channel's routable reply name.
            let Some((_, name)) = &self.reply else {
                return Err(fail(AmqpError::precondition_failed(
                    "fast reply consumer does not exist",
                )));
            };
            c.properties = protocol::Properties::new(
                (*c.properties).clone().with_reply_to(name.as_str().into()),
            );
            c.raw_properties = protocol::encode_properties(&c.properties);
        }
        // The name is compared with a copy kept here rather than the exchange's own, which
        // is shared with every other publisher's cache line.
        let exchange = match &self.last_exchange {
            Some((name, x)) if same_name(name, &c.publish.exchange) && !x.is_deleted() => x.clone(),
            _ => {
                let x = ctx
                    .vhost
                    .existing_exchange(c.publish.exchange.as_str())
                    .map_err(fail)?;
                self.last_exchange = Some((c.publish.exchange.clone(), x.clone()));
                x
            }
        };
        if exchange.internal {
            return Err(fail(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.name, ctx.vhost.name
            ))));
        }
        self.allow_topic(ctx, &exchange, true, c.publish.routing_key.as_str())
            .map_err(fail)?;
        validate_properties(&c.properties, ctx.user, ctx.impersonator).map_err(fail)?;
        self.view.counts.add(count::RECEIVED, 1);
        if let Mode::Tx {
            publishes, bytes, ..
        } = &mut self.mode
        {
            // Held until commit: bounded, so a transaction that never commits cannot hold
            // the broker's memory. Each publish costs its body and its bookkeeping.
            let cost = c.body.len() as u64 + TX_PUBLISH_OVERHEAD;
            if !publishes.is_empty() && *bytes + cost > ctx.max_transaction_bytes {
                return Err(fail(AmqpError::precondition_failed(format!(
                    "transaction holds more than max_transaction_bytes ({}) of uncommitted publishes",
                    ctx.max_transaction_bytes
                ))));
            }
            *bytes += cost;
            publishes.push(TxPublish {
                publish: c.publish,
                properties: c.properties,
                raw_properties: c.raw_properties,
                body: c.body,
            });
            return Ok(());
        }
        let outcome = self.route(
            ctx,
            c.publish,
            c.properties,
            c.raw_properties,
            c.body,
            &exchange,
        );
        match &mut self.mode {
            Mode::Confirm {
                last_seq,
                ack_upto,
                pending,
            } => {
                *last_seq += 1;
                self.view.counts.add(count::RECEIVED_CONFIRM, 1);
                match outcome {
                    Published::Accepted(wait) => {
                        // Confirms go out in order: behind a message still waiting for the
                        // disk, everything waits.
                        if wait.is_some() || !pending.is_empty() {
                            pending.push_back((*last_seq, wait.unwrap_or_default()));
                        } else {
                            *ack_upto = Some(*last_seq);
                            self.view.counts.add(count::CONFIRMED, 1);
                        }
                    }
                    Published::Rejected | Published::Failed => {
                        protocol::write_confirm(ctx.out, self.id, *last_seq, false, false);
                    }
                }
            }
            _ if outcome == Published::Failed => {
                return Err(AmqpError::internal_error(
                    "the message store failed; persistent messages are not accepted",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Routes and enqueues one message. The outcome is the worst over its queues (a refusal
    /// or a store failure wins), with the newest log record to wait for.
    #[must_use]
    fn route(
        &mut self,
        ctx: &mut Ctx<'_>,
        publish: b::Publish,
        properties: crate::protocol::Properties,
        raw_properties: Bytes,
        body: Bytes,
        exchange: &Arc<crate::broker::exchange::Exchange>,
    ) -> Published {
        let msg = Arc::new(Message {
            exchange: publish.exchange,
            routing_key: publish.routing_key,
            properties,
            raw_properties,
            body,
        });
        // Without headers there is no CC or BCC, so the default exchange routes by the
        // routing key alone and the queue found last time still answers, unless deleted.
        if let Some(delay) = crate::broker::exchange::delayed::delay_for(exchange, &msg) {
            // compat: the plugin returns every mandatory delayed message at once; Warren
            // returns (and does not hold) only one that nothing would take now.
            if publish.mandatory
                && !crate::broker::exchange::delayed::routable_now(
                    ctx.vhost.as_ref(),
                    exchange,
                    &msg,
                )
            {
                self.no_route(ctx, &msg);
                self.view.counts.add(count::UNROUTABLE_RETURNED, 1);
                return Published::Accepted(None);
            }
            self.view.counts.add(count::ROUTED, 1);
            return ctx.vhost.delayed().hold(exchange, msg, delay);
        }
        let by_name = exchange.name.is_empty() && msg.properties.headers().is_none();
        if let Some((key, q)) = &self.default_route
            && by_name
            && same_name(key, &msg.routing_key)
            && !q.is_deleted()
        {
            self.view.counts.add(count::ROUTED, 1);
            return q.publish(msg);
        }
        let mut targets = std::mem::take(&mut self.route_buf);
        let routed = ctx.vhost.route(exchange, &msg, &mut targets);
        if let ([q], true) = (targets.as_slice(), by_name) {
            self.default_route = Some((msg.routing_key.clone(), q.clone()));
        }
        let mut outcome = Published::Accepted(None);
        if targets.is_empty() && !routed.replied {
            if publish.mandatory {
                self.no_route(ctx, &msg);
                self.view.counts.add(count::UNROUTABLE_RETURNED, 1);
            } else {
                self.view.counts.add(count::UNROUTABLE_DROPPED, 1);
            }
        } else {
            self.view.counts.add(count::ROUTED, 1);
            let msg = routed.message.unwrap_or(msg);
            let mut queues = targets.drain(..);
            // The last queue takes the publisher's reference: one reference-count round
            // trip less per message in the common single-queue case.
            let last = queues.next_back();
            for q in queues {
                outcome = outcome.and(q.publish(msg.clone()));
            }
            if let Some(q) = last {
                outcome = outcome.and(q.publish(msg));
            }
        }
        self.route_buf = targets;
        outcome
    }

    /// basic.return 312 NO_ROUTE for an unroutable mandatory publish.
    fn no_route(&self, ctx: &mut Ctx<'_>, msg: &Message) {
        ctx.send(
            self.id,
            AMQPClass::Basic(b::AMQPMethod::Return(b::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
            })),
        );
        ctx.content(self.id, msg);
    }

    pub(super) fn basic_get(&mut self, ctx: &mut Ctx<'_>, m: b::Get) -> Result<()> {
        let name = self.queue_name(m.queue.as_str())?;
        self.allow(ctx, Perm::Read, Kind::Queue, &name)?;
        let queue = ctx.vhost.queue(&name, ctx.conn_id)?;
        queue.supports(Operation::Get, &ctx.vhost.name)?;
        let Some((entry, remaining)) = queue.get(m.no_ack) else {
            self.view.counts.add(count::GET_EMPTY, 1);
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::GetEmpty(b::GetEmpty {})),
            );
            return Ok(());
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.view.counts.add(
            if m.no_ack {
                count::DELIVERED_GET_AUTO_ACK
            } else {
                count::DELIVERED_GET_MANUAL_ACK
            },
            1,
        );
        if entry.redelivered {
            self.view.counts.add(count::REDELIVERED, 1);
        }
        let msg = &entry.msg;
        protocol::write_get_ok(
            ctx.out,
            self.id,
            tag,
            entry.redelivered,
            msg.exchange.as_str(),
            msg.routing_key.as_str(),
            remaining,
        );
        ctx.content(self.id, msg);
        if !m.no_ack {
            self.unacked.push_back(Unacked {
                tag,
                queue,
                entry,
                consumer: None,
            });
        }
        Ok(())
    }

    /// basic.ack / nack / reject: tag 0 with multiple means everything outstanding; an
    /// unknown tag is a 406 (RabbitMQ's `collect_acks`).
    pub(super) fn settle(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<()> {
        let taken: Vec<Unacked> = if multiple && tag == 0 {
            self.unacked.drain(..).collect()
        } else {
            // Tags are handed out in increasing order, so `unacked` is sorted by tag.
            let at = self.unacked.partition_point(|u| u.tag < tag);
            if self.unacked.get(at).is_none_or(|u| u.tag != tag) {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            if multiple {
                self.unacked.drain(..=at).collect()
            } else {
                self.unacked.remove(at).into_iter().collect()
            }
        };
        if let Mode::Tx { settles, .. } = &mut self.mode {
            settles.extend(taken.into_iter().map(|u| (u, how)));
            return Ok(());
        }
        self.apply_settles(ctx, taken, how);
        Ok(())
    }

    fn apply_settles(&mut self, ctx: &mut Ctx<'_>, taken: Vec<Unacked>, how: Settle) {
        let bytes_full = self.global.bytes_full();
        if how == Settle::Requeue {
            requeue_grouped(ctx, taken);
            if bytes_full {
                self.kick_consumers(ctx);
            }
            return;
        }
        for u in &taken {
            if let Some(c) = &u.consumer {
                c.release(1, u.entry.msg.body.len() as u64);
                ctx.kick(&u.queue);
            }
            if how == Settle::Ack {
                u.queue.acked(&u.entry);
            }
        }
        if how == Settle::Ack {
            self.view
                .counts
                .add(count::ACKNOWLEDGED, taken.len() as u64);
        }
        if how == Settle::Discard {
            discard_grouped(taken);
        }
        if self.global.limit.load(Ordering::Acquire) != 0 || bytes_full {
            // Channel-wide credit came back: any of this channel's consumers may go on.
            self.kick_consumers(ctx);
        }
    }

    fn kick_consumers(&self, ctx: &mut Ctx<'_>) {
        for c in self.consumers.values() {
            ctx.kick(&c.queue);
        }
    }

    pub(super) fn basic_recover(
        &mut self,
        ctx: &mut Ctx<'_>,
        requeue: bool,
        reply: bool,
    ) -> Result<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let all: Vec<Unacked> = self.unacked.drain(..).collect();
        requeue_grouped(ctx, all);
        if reply {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::RecoverOk(b::RecoverOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn confirm_select(&mut self, ctx: &mut Ctx<'_>, m: confirm::Select) -> Result<()> {
        match self.mode {
            Mode::Tx { .. } => {
                return Err(AmqpError::precondition_failed(
                    "cannot switch from tx to confirm mode",
                ));
            }
            Mode::Plain => {
                self.mode = Mode::Confirm {
                    last_seq: 0,
                    ack_upto: None,
                    pending: VecDeque::new(),
                }
            }
            Mode::Confirm { .. } => {}
        }
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn tx_select(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        match self.mode {
            Mode::Confirm { .. } => {
                return Err(AmqpError::precondition_failed(
                    "cannot switch from confirm to tx mode",
                ));
            }
            Mode::Plain => {
                self.mode = Mode::Tx {
                    publishes: Vec::new(),
                    settles: Vec::new(),
                    bytes: 0,
                }
            }
            Mode::Tx { .. } => {}
        }
        ctx.send(
            self.id,
            AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        );
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        let Mode::Tx {
            publishes,
            settles,
            bytes,
        } = &mut self.mode
        else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        *bytes = 0;
        let publishes = std::mem::take(publishes);
        let settles = std::mem::take(settles);
        for p in publishes {
            // The exchange may have gone since the publish: RabbitMQ reports that as a 404
            // in reply to tx.commit.
            let exchange = ctx
                .vhost
                .existing_exchange(p.publish.exchange.as_str())
                .map_err(|e| e.with_method(90, 20))?;
            let _ = self.route(
                ctx,
                p.publish,
                p.properties,
                p.raw_properties,
                p.body,
                &exchange,
            );
        }
        for (u, how) in settles {
            self.apply_settles(ctx, vec![u], how);
        }
        ctx.send(
            self.id,
            AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        let Mode::Tx {
            publishes,
            settles,
            bytes,
        } = &mut self.mode
        else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        *bytes = 0;
        publishes.clear();
        // Rolled-back settlements leave the deliveries outstanding again, in tag order.
        let back: Vec<Unacked> = settles.drain(..).map(|(u, _)| u).collect();
        for u in back {
            let at = self.unacked.partition_point(|x| x.tag < u.tag);
            self.unacked.insert(at, u);
        }
        ctx.send(
            self.id,
            AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
        );
        Ok(())
    }
}

/// What a held transactional publish costs besides its body (the method, properties and
/// their decoded form), for `max_transaction_bytes`.
const TX_PUBLISH_OVERHEAD: u64 = 512;

/// RabbitMQ's checks on a published message's properties.
fn validate_properties(p: &BasicProperties, user: &str, impersonator: bool) -> Result<()> {
    if let Some(mode) = *p.delivery_mode()
        && !(1..=2).contains(&mode)
    {
        return Err(AmqpError::precondition_failed(format!(
            "invalid message: {{delivery_mode_unknown,{mode}}}"
        )));
    }
    if let Some(exp) = p.expiration() {
        crate::broker::args::parse_expiration(exp.as_str())?;
    }
    if let Some(uid) = p.user_id()
        && uid.as_str() != user
        && !impersonator
    {
        return Err(AmqpError::precondition_failed(format!(
            "user_id property set to '{uid}' but authenticated user was '{user}'"
        )));
    }
    if let Some(h) = p.headers() {
        for key in ["CC", "BCC"] {
            if let Some(v) = h.inner().get(key)
                && !matches!(v, AMQPValue::FieldArray(_))
            {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{key}\",{}}}",
                    crate::broker::args::type_name(v)
                )));
            }
        }
    }
    Ok(())
}

/// Name equality that never hands two empty names to `memcmp`. An empty `String` points at
/// a dangling address, and glibc's AVX-512 `memcmp` reads it with a masked load that the CPU
/// finishes through a slow fault-suppression assist: perf put 14% of S1's broker CPU on
/// comparing the default exchange's empty name with itself.
fn same_name(a: &ShortString, b: &ShortString) -> bool {
    let (a, b) = (a.as_str().as_bytes(), b.as_str().as_bytes());
    a.len() == b.len() && (a.is_empty() || a == b)
}
