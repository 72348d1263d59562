//! Topology methods: exchange.declare/delete/bind/unbind and
//! queue.declare/bind/unbind/purge/delete. Checks live in the vhost; this file resolves
//! channel-local defaults (the last declared queue, server-generated names) and writes the
//! `*-ok` replies unless `nowait`.

use amq_protocol::protocol::{AMQPClass, exchange, queue};

use super::{Channel, Ctx};
use crate::auth::{Kind, Perm};
use crate::broker::names;
use crate::broker::queue::Operation;
use crate::broker::vhost::{ExchangeFlags, QueueFlags};
use crate::error::{AmqpError, Result};

impl Channel {
    /// A binding's checks, in RabbitMQ's order: write on the destination, read on the
    /// source, then the source's topic permissions against the binding key.
    fn allow_binding(
        &mut self,
        ctx: &Ctx<'_>,
        kind: Kind,
        destination: &str,
        source: &str,
        key: &str,
    ) -> Result<()> {
        self.allow(ctx, Perm::Write, kind, destination)?;
        self.allow(ctx, Perm::Read, Kind::Exchange, source)?;
        if let Some(x) = ctx.vhost.exchange(source) {
            self.allow_topic(ctx, &x, false, key)?;
        }
        Ok(())
    }

    /// Resolves an empty queue name to the channel's last declared queue (spec: "If the
    /// queue name is empty, the server uses the last queue declared on the channel").
    pub(super) fn queue_name(&self, name: &str) -> Result<String> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    pub(super) fn exchange_declare(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: exchange::Declare,
    ) -> Result<()> {
        let flags = ExchangeFlags {
            passive: m.passive,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
        };
        // Passive declares check nothing, as in RabbitMQ.
        if !m.passive {
            self.allow(ctx, Perm::Configure, Kind::Exchange, m.exchange.as_str())?;
        }
        ctx.vhost
            .declare_exchange(m.exchange.as_str(), m.kind.as_str(), flags, &m.arguments)?;
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn exchange_delete(&mut self, ctx: &mut Ctx<'_>, m: exchange::Delete) -> Result<()> {
        self.allow(ctx, Perm::Configure, Kind::Exchange, m.exchange.as_str())?;
        ctx.vhost
            .delete_exchange(m.exchange.as_str(), m.if_unused)?;
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn exchange_bind(&mut self, ctx: &mut Ctx<'_>, m: exchange::Bind) -> Result<()> {
        self.allow_binding(
            ctx,
            Kind::Exchange,
            m.destination.as_str(),
            m.source.as_str(),
            m.routing_key.as_str(),
        )?;
        ctx.vhost.bind_exchange(
            m.destination.as_str(),
            m.source.as_str(),
            m.routing_key.as_str(),
            &m.arguments,
        )?;
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(&mut self, ctx: &mut Ctx<'_>, m: exchange::Unbind) -> Result<()> {
        self.allow_binding(
            ctx,
            Kind::Exchange,
            m.destination.as_str(),
            m.source.as_str(),
            m.routing_key.as_str(),
        )?;
        ctx.vhost.unbind_exchange(
            m.destination.as_str(),
            m.source.as_str(),
            m.routing_key.as_str(),
            &m.arguments,
        )?;
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn queue_declare(&mut self, ctx: &mut Ctx<'_>, m: queue::Declare) -> Result<()> {
        let flags = QueueFlags {
            passive: m.passive,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
        };
        // Direct reply-to's pseudo-queue "exists" for any declare, as in RabbitMQ: clients
        // check for the feature with a passive declare.
        if m.queue.as_str() == crate::broker::vhost::REPLY_TO {
            if !m.nowait {
                ctx.send(
                    self.id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: m.queue.clone(),
                        message_count: 0,
                        consumer_count: 1,
                    })),
                );
            }
            return Ok(());
        }
        let name = if m.queue.as_str().is_empty() {
            if m.passive {
                self.queue_name("")?
            } else {
                match m
                    .arguments
                    .inner()
                    .get("x-queue-type")
                    .and_then(crate::broker::args::as_bytes)
                {
                    Some(b"quorum") => {
                        return Err(AmqpError::precondition_failed(
                            "invalid property 'server-named' for queue ''",
                        ));
                    }
                    Some(b"stream") => {
                        return Err(AmqpError::precondition_failed(
                            "Cannot declare a server-named queue for type rabbit_stream_queue",
                        ));
                    }
                    _ => {}
                }
                names::generate("amq.gen-")
            }
        } else {
            if !m.passive && crate::broker::vhost::reserved(m.queue.as_str()) {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    m.queue
                )));
            }
            m.queue.to_string()
        };
        if !m.passive {
            self.allow(ctx, Perm::Configure, Kind::Queue, &name)?;
        }
        let d = ctx
            .vhost
            .declare_queue(&name, flags, &m.arguments, ctx.conn_id)?;
        self.last_queue = Some(name.clone());
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: name.into(),
                    message_count: d.message_count,
                    consumer_count: d.consumer_count,
                })),
            );
        }
        Ok(())
    }

    pub(super) fn queue_bind(&mut self, ctx: &mut Ctx<'_>, m: queue::Bind) -> Result<()> {
        let name = self.queue_name(m.queue.as_str())?;
        // spec: an empty routing key with an empty queue name binds with the queue's name.
        let key = if m.queue.as_str().is_empty() && m.routing_key.as_str().is_empty() {
            name.clone()
        } else {
            m.routing_key.to_string()
        };
        self.allow_binding(ctx, Kind::Queue, &name, m.exchange.as_str(), &key)?;
        ctx.vhost
            .bind_queue(&name, m.exchange.as_str(), &key, &m.arguments, ctx.conn_id)?;
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn queue_unbind(&mut self, ctx: &mut Ctx<'_>, m: queue::Unbind) -> Result<()> {
        let name = self.queue_name(m.queue.as_str())?;
        self.allow_binding(
            ctx,
            Kind::Queue,
            &name,
            m.exchange.as_str(),
            m.routing_key.as_str(),
        )?;
        ctx.vhost.unbind_queue(
            &name,
            m.exchange.as_str(),
            m.routing_key.as_str(),
            &m.arguments,
            ctx.conn_id,
        )?;
        ctx.send(
            self.id,
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        );
        Ok(())
    }

    pub(super) fn queue_purge(&mut self, ctx: &mut Ctx<'_>, m: queue::Purge) -> Result<()> {
        let name = self.queue_name(m.queue.as_str())?;
        self.allow(ctx, Perm::Read, Kind::Queue, &name)?;
        let q = ctx.vhost.queue(&name, ctx.conn_id)?;
        q.supports(Operation::Purge, &ctx.vhost.name)?;
        let n = q.purge();
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: n,
                })),
            );
        }
        Ok(())
    }

    pub(super) fn queue_delete(&mut self, ctx: &mut Ctx<'_>, m: queue::Delete) -> Result<()> {
        let name = self.queue_name(m.queue.as_str())?;
        self.allow(ctx, Perm::Configure, Kind::Queue, &name)?;
        let n = ctx
            .vhost
            .delete_queue(&name, m.if_unused, m.if_empty, ctx.conn_id)?;
        if !m.nowait {
            ctx.send(
                self.id,
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: n,
                })),
            );
        }
        Ok(())
    }
}
