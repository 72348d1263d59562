//! Classic queues' dead-lettering: what falls out of a queue (expired, over its length
//! limit, rejected, over its delivery limit) is rewritten with `x-death`
//! (`crate::broker::dead_letter`) and published through the queue's host (`QueueHost`),
//! after the queue's lock is released, with nested dead-lettering flattened into a
//! per-thread worklist so a long chain cannot overflow the stack.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::broker::dead_letter::{self, Reason};
use crate::broker::message::{Entry, Message};

use crate::broker::queue::*;

impl Queue {
    /// Routes dead letters through the queue's dead-letter exchange (outside the lock).
    pub(in crate::broker::queue) fn dead_letter(&self, dead: Vec<(Entry, Reason)>) {
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
            let m =
                dead_letter::dead_lettered(&e.msg, &self.name, reason, dlx, args.dlrk.as_deref());
            let Some(m) = vhost.route_dead_letter(dlx, m, &mut targets) else {
                if !self.missing_dlx_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(queue = %self.name, dlx = %dlx, "dead-letter exchange does not exist; dropping dead letters");
                }
                continue;
            };
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
pub(in crate::broker::queue) type DeadLetters = VecDeque<(Arc<Queue>, Arc<Message>)>;

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
pub(in crate::broker::queue) fn forward_dead_letter(q: Arc<Queue>, m: Arc<Message>) {
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
