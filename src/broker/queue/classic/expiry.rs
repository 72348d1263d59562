//! Classic queues' clocks: the per-queue timer task that expires messages at the head
//! (per-queue and per-message TTL) and deletes an idle queue (`x-expires`) through its
//! host; one task per queue, woken only when the earliest deadline changes.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::message::Message;

use super::state::*;
use crate::broker::queue::*;

impl Queue {
    /// Starts the task that expires messages and the idle queue itself. It holds only a
    /// weak reference, and ends when the queue is deleted or dropped.
    pub fn start_timer(self: &Arc<Self>) {
        if self.stream().is_some() {
            // Nothing in a stream expires (retention runs as segments fill).
            return;
        }
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
    pub(in crate::broker::queue) fn schedule(&self) -> Option<u64> {
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

    pub(in crate::broker::queue) fn on_timer(self: &Arc<Self>) {
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
            v.remove_expired(self);
        }
    }

    pub(in crate::broker::queue) fn wake_timer_for(&self, s: &mut State, deadline: u64) {
        if s.scheduled.is_none_or(|t| deadline < t) {
            s.scheduled = Some(deadline);
            self.timer.notify_one();
        }
    }

    /// Records use (declare, get, consume) for `x-expires`.
    pub fn touch(&self) {
        if self.args.load().expires.is_some() {
            self.state.lock().last_used = now_ms();
        }
    }

    /// The TTL that applies to `msg` here: the lower of the queue's and the message's.
    pub(in crate::broker::queue) fn ttl(&self, args: &QueueArgs, msg: &Message) -> Option<u64> {
        let per_message = msg
            .properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<u64>().ok());
        match (args.message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
