//! The classic queue, Warren's first queue type: ready messages by priority level and
//! position in memory up to a budget and paged out to the message log past it, persistent
//! messages of durable queues logged before their confirm, requeue to the original
//! position, length limits with their overflow modes and delivery limits.
//!
//! This file has enqueue (`publish`), settlement (ack, requeue, discard) and recovery; the
//! others: `state` (storage and paging), `dispatch`, `expiry`, `dead_lettering`. Talks to the
//! message log through `crate::broker::Persistence` and to other queues only through the
//! queue's `QueueHost`.

mod dead_lettering;
mod dispatch;
mod expiry;
pub(in crate::broker::queue) mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::types::AMQPValue;
use bytes::Bytes;

use crate::broker::dead_letter::{self, Reason};
use crate::broker::message::{Entry, Logged, Message};
use crate::broker::paged::Paged;
use crate::broker::queue_args::Overflow;

use crate::broker::queue::*;
use state::*;

thread_local! {
    /// Reused encoding buffer for log records: no allocation per persistent publish.
    static ENCODE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Queue {
    /// Appends a message and delivers what credit allows. A persistent message in a durable
    /// queue is also appended to the message log; the result says what to wait for before
    /// confirming it.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Published {
        if self.is_deleted() {
            return Published::Accepted(None);
        }
        if let Some(st) = self.stream() {
            return st.publish(self, &msg);
        }
        // One load of the settings for the whole publish (a policy may swap them meanwhile;
        // this message is handled under the ones it found).
        let args = self.args.load();
        let args: &QueueArgs = &args;
        // The clock is read only for messages that can expire.
        let (expires_at, ttl_zero) = match self.ttl(args, &msg) {
            Some(ttl) => (Some(now_ms().saturating_add(ttl)), ttl == 0),
            None => (None, false),
        };
        let priority = self.priority_of(&msg);
        let (msg, delivery_count) = self.carried_count(args, msg);
        let mut dead = Vec::new();
        let result = {
            let mut s = self.state.lock();
            let over = self.over_limit(args, &s, 1, msg.size());
            if over && args.overflow != Overflow::DropHead {
                if args.overflow == Overflow::RejectPublishDlx {
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
                self.drop_heads_over_limit(args, &mut s, &mut dead);
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
    pub(in crate::broker::queue) fn carried_count(
        &self,
        args: &QueueArgs,
        msg: Arc<Message>,
    ) -> (Arc<Message>, u32) {
        if !args.counts_deliveries() {
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

    pub(in crate::broker::queue) fn over_limit(
        &self,
        args: &QueueArgs,
        s: &State,
        more: usize,
        bytes: usize,
    ) -> bool {
        args.max_length.is_some_and(|m| (s.len + more) as u64 > m)
            || args
                .max_length_bytes
                .is_some_and(|m| (s.bytes + bytes) as u64 > m)
    }

    /// With `drop-head` overflow, drops the oldest ready messages while the queue is over
    /// its length limits (they are dead-lettered as `maxlen`).
    pub(in crate::broker::queue) fn drop_heads_over_limit(
        &self,
        args: &QueueArgs,
        s: &mut State,
        dead: &mut Vec<(Entry, Reason)>,
    ) {
        if args.overflow != Overflow::DropHead {
            return;
        }
        while self.over_limit(args, s, 0, 0) {
            match s.pop() {
                Some(e) => dead.push((e, Reason::Maxlen)),
                None => break,
            }
        }
    }

    pub(in crate::broker::queue) fn priority_of(&self, msg: &Message) -> u8 {
        // Fixed at declare: a policy cannot change it.
        match self.max_priority {
            // A priority above the maximum counts as the maximum.
            Some(max) => msg.properties.priority().unwrap_or(0).min(max),
            None => 0,
        }
    }

    /// Appends an entry to the message log. `transient`: only to page its body out (the
    /// record is dropped at recovery).
    pub(in crate::broker::queue) fn append(
        &self,
        e: &mut Entry,
        transient: bool,
    ) -> std::result::Result<(), ()> {
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
    pub(in crate::broker::queue) fn over_budget(&self, s: &State, c: usize) -> bool {
        let Some(p) = &self.persist else {
            return false;
        };
        s.resident + c > p.budget.per_queue
            || p.budget.resident.load(Ordering::Relaxed) + c > p.budget.total
    }

    /// Drops an entry's body from memory; it stays in the log (written now, without waiting
    /// for the disk, if it was not there yet). Gives the entry back if the log refused it.
    pub(in crate::broker::queue) fn page_out(
        &self,
        mut e: Entry,
    ) -> std::result::Result<Paged, Entry> {
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
        if self.stream().is_some() {
            // A stream keeps everything: a requeue (nack, reject, recover, a closed
            // channel) only settles, as RabbitMQ 3.13+ does.
            self.stats.settle(entries.into_iter().count() as u64);
            return;
        }
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
            self.drop_heads_over_limit(&self.args.load(), &mut s, &mut dead);
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
        if !self.is_deleted() && self.stream().is_none() {
            self.state.lock().insert_by_seq(entry);
        }
    }

    /// Rejected without requeue: dead-lettered with reason `rejected` (or dropped) — or,
    /// with delivery counting on and the limit used up, with reason `delivery_limit`.
    pub fn discard(self: &Arc<Self>, entries: Vec<Entry>) {
        self.stats.settle(entries.len() as u64);
        if self.stream().is_some() {
            // Nothing is dead-lettered from a stream (RabbitMQ 3.13+ settles).
            return;
        }
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
}
