//! One stream consumer's reader: a task that reads the log forward from the consumer's
//! position and pushes deliveries onto its connection's inbox while the consumer has
//! credit, then waits (for an ack's credit, or at the tail for the log's next commit)
//! without polling. Talks to the log (reads run on the blocking pool), the consumer's
//! handle and inbox, and nothing else.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::{READ_BYTES, READ_RECORDS, StartAt, codec};
use crate::broker::message::Entry;
use crate::broker::queue::{Consumer, Queue, QueueEvent, QueueStats};
use crate::store::stream::{StreamLog, StreamRecord};

/// A reader as its stream holds it.
#[derive(Debug)]
pub(super) struct Reader {
    pub(super) consumer: Consumer,
    /// `x-stream-filter`: records it does not pass are skipped, costing no credit.
    pub(super) filter: Option<super::args::Filter>,
    /// Credit may have come back, or the reader is to stop.
    pub(super) wake: Notify,
    pub(super) stop: AtomicBool,
}

impl Reader {
    pub(super) fn halt(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || !self.consumer.handle.is_attached()
    }
}

/// The reader's loop; `next` is the start already resolved, or `None` for a timestamp.
pub(super) async fn run(
    queue: Arc<Queue>,
    log: Arc<StreamLog>,
    r: Arc<Reader>,
    start: StartAt,
    next: Option<u64>,
) {
    let mut next = match (next, start) {
        (Some(n), _) => n,
        (None, StartAt::Time(ms)) => {
            let l = log.clone();
            match tokio::task::spawn_blocking(move || l.offset_for_timestamp(ms)).await {
                Ok(n) => n,
                Err(_) => return,
            }
        }
        (None, _) => log.committed(),
    };
    let mut tail = log.subscribe();
    let mut batch: VecDeque<StreamRecord> = VecDeque::new();
    // Where the last read stopped, so the next starts there rather than at its granule.
    let mut cursor = None;
    loop {
        if r.stopped() || queue.is_deleted() {
            return;
        }
        if batch.is_empty() {
            let end = *tail.borrow_and_update();
            // Retention may have passed the reader by: it goes on from the oldest kept.
            next = next.max(log.first_offset());
            if next >= end {
                tokio::select! {
                    changed = tail.changed() => if changed.is_err() { return },
                    () = r.wake.notified() => {}
                }
                continue;
            }
            let (l, from, at) = (log.clone(), next, cursor);
            let read = move || l.read_at(at, from, READ_RECORDS, READ_BYTES);
            match tokio::task::spawn_blocking(read).await {
                Ok(Ok((recs, at))) if !recs.is_empty() => {
                    batch.extend(recs);
                    cursor = at;
                }
                Ok(Ok(_)) => {
                    // Nothing readable below `end` from here (the stream was deleted, or
                    // retention raced the read): wait for the log to move.
                    tokio::select! {
                        changed = tail.changed() => if changed.is_err() { return },
                        () = r.wake.notified() => {}
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!(queue = %queue.name, offset = from, error = %e,
                        "stream read failed; cancelling the consumer");
                    let _ = r.consumer.sink.send(QueueEvent::Cancelled {
                        channel: r.consumer.channel,
                        consumer: r.consumer.handle.clone(),
                    });
                    return;
                }
                Err(_) => return,
            }
        }
        if !deliver(&queue, &r, &mut batch, &mut next) {
            return;
        }
        if !batch.is_empty() {
            // Out of credit: an ack (or a written delivery) wakes the reader.
            r.wake.notified().await;
        }
    }
}

/// Pushes what credit allows from `batch`; false when the connection is gone.
fn deliver(
    queue: &Arc<Queue>,
    r: &Reader,
    batch: &mut VecDeque<StreamRecord>,
    next: &mut u64,
) -> bool {
    // The queue's counters are shared by all its readers (cache-line traffic between
    // cores at every bump): the delivery count is added once per call. `unacked` is bumped
    // per message, before the push, so an ack can never settle it first.
    let mut delivered = 0;
    let alive = push(queue, r, batch, next, &mut delivered);
    QueueStats::bump(&queue.stats.deliver_get, delivered);
    alive
}

fn push(
    queue: &Arc<Queue>,
    r: &Reader,
    batch: &mut VecDeque<StreamRecord>,
    next: &mut u64,
    delivered: &mut u64,
) -> bool {
    let c = &r.consumer;
    while let Some(rec) = batch.front() {
        if r.stopped() {
            return false;
        }
        let offset = rec.offset;
        if let Some(f) = &r.filter
            && codec::passes(&rec.payload, &f.values, f.match_unfiltered) == Some(false)
        {
            batch.pop_front();
            *next = offset + 1;
            continue;
        }
        if !c.handle.try_acquire() {
            return true;
        }
        let Some(msg) = codec::decode(&rec.payload, offset) else {
            c.handle.unacquire();
            tracing::error!(queue = %queue.name, offset, "skipping a stream record that does not decode");
            batch.pop_front();
            *next = offset + 1;
            continue;
        };
        batch.pop_front();
        *next = offset + 1;
        let size = msg.body.len();
        c.handle.pushed(size);
        *delivered += 1;
        QueueStats::bump(&queue.stats.unacked, 1);
        let entry = Entry {
            seq: offset,
            msg,
            redelivered: false,
            priority: 0,
            expires_at: None,
            delivery_count: 0,
            size: size as u32,
            log: None,
        };
        let event = QueueEvent::Deliver {
            channel: c.channel,
            consumer: c.handle.clone(),
            queue: queue.clone(),
            entry,
        };
        if c.sink.send(event).is_err() {
            return false;
        }
    }
    true
}
