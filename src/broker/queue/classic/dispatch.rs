//! Classic queues' dispatch: handing ready messages to attached consumers within their
//! credit (consumer priorities, single active consumer, exclusive consumers), `basic.get`,
//! and attaching and detaching consumers. Runs under the queue's lock and never waits.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::broker::dead_letter::Reason;
use crate::broker::message::Entry;
use crate::error::{AmqpError, Result};

use super::state::*;
use crate::broker::queue::*;

impl Queue {
    /// Delivers what credit allows (called after credit was given back).
    pub fn dispatch(self: &Arc<Self>) {
        if let Some(st) = self.stream() {
            st.wake();
            return;
        }
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            self.dispatch_locked(&mut s, &mut dead);
        }
        self.dead_letter(dead);
    }

    pub(in crate::broker::queue) fn dispatch_locked(
        self: &Arc<Self>,
        s: &mut State,
        dead: &mut Vec<(Entry, Reason)>,
    ) {
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
            let chosen = if self.single_active {
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
            if !self.single_active {
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
    pub(in crate::broker::queue) fn mark_delivered(&self, e: &Entry, no_ack: bool) {
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
    pub fn add_consumer(
        self: &Arc<Self>,
        c: Consumer,
        o: ConsumeOptions<'_>,
        vhost: &str,
    ) -> Result<()> {
        if let Some(st) = self.stream() {
            return st.attach(self, c, o, vhost);
        }
        // Consumer arguments of another queue type, refused as RabbitMQ does.
        if let Some(k) = ["x-stream-offset", "x-credit"]
            .into_iter()
            .find(|k| o.arguments.inner().contains_key(*k))
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{k}' for queue '{}' in vhost '{vhost}' of queue type rabbit_classic_queue",
                self.name
            )));
        }
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            if s.consumers.iter().any(|x| x.exclusive)
                || (c.exclusive && (!s.consumers.is_empty() || self.single_active))
            {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{vhost}' in exclusive use",
                    self.name
                )));
            }
            let at = if self.single_active {
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
        if let Some(st) = self.stream() {
            st.detach(consumer);
            return false;
        }
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
}
