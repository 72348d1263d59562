//! The stream queue type (`x-queue-type: stream`): an append-only log that consumers read
//! without removing anything, each from its own position (`x-stream-offset`), as RabbitMQ's
//! streams behave over AMQP 0-9-1 (`../shared/reference/streams.md`).
//!
//! Owns the stream's [`StreamLog`] (in `store::stream`) and its consumers' readers. A
//! publish is appended to the log and enlisted with the message store's committer
//! (`MessageStore::sync_with`), so it is confirmed by the same watermark as classic
//! publishes, after an `fdatasync` of the stream's segment. Each consumer has a reader task
//! (`reader`) that reads forward through the page cache with `pread`s off the reactor,
//! spends the consumer's credit (its prefetch, given back by acks) and waits at the tail for
//! the log's commit notifications: nothing of the stream is copied into memory beyond one
//! read batch per consumer. The `Queue` interface dispatches here for stream queues (see
//! [`Queue::stream`]); the channel never knows which type it talks to.

mod args;
mod codec;
mod reader;

pub use args::{
    STREAM_ARGS, StartAt, check_flags, inequivalence, is_stream, options, start_at, validate,
};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Consumer, ConsumerHandle, ConsumerView, Published, Queue, QueueSnapshot, now_ms};
use crate::broker::message::Message;
use crate::error::{AmqpError, Result};
use crate::store::stream::{PENDING_MAX, StreamLog, StreamOptions};
use crate::store::{MessageStore, SyncTarget};

/// Records a reader takes from the log at a time, and their most payload bytes: one batch
/// is what a consumer holds in memory.
const READ_RECORDS: usize = 256;
const READ_BYTES: usize = 1 << 20;

/// A stream queue's own parts.
pub struct Stream {
    log: Arc<StreamLog>,
    /// The same log, as the committer sees it.
    target: Arc<dyn SyncTarget>,
    store: Arc<MessageStore>,
    readers: Mutex<Vec<Arc<reader::Reader>>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// What a consume brings besides the consumer: its arguments and its channel's prefetch.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeOptions<'a> {
    /// `basic.consume` arguments.
    pub arguments: &'a FieldTable,
    /// The channel's per-consumer prefetch (`basic.qos global=false`), whatever the ack mode.
    pub prefetch: u32,
}

/// Operations that only some queue types support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `basic.get`.
    Get,
    /// `queue.purge`.
    Purge,
}

fn resource(q: &Queue, vhost: &str) -> String {
    format!("queue '{}' in vhost '{vhost}'", q.name)
}

impl Stream {
    /// Opens (or recovers) the log in `dir`.
    ///
    /// # Errors
    /// The log could not be opened.
    pub fn open(
        dir: &Path,
        opts: StreamOptions,
        store: Arc<MessageStore>,
    ) -> std::io::Result<Self> {
        let log = StreamLog::open(dir, opts)?;
        Ok(Self {
            target: log.clone(),
            log,
            store,
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Appends a message; confirmed once the committer has synced the log past it. A
    /// publisher that runs ahead of the disk by a whole batch waits here.
    pub fn publish(&self, q: &Queue, msg: &Message) -> Published {
        let props = codec::stored_properties(msg);
        let filter = codec::filter_value(msg);
        let (head, n) = codec::encode_head(msg, filter, props.len());
        self.log.append_parts(
            now_ms(),
            &[&head[..n], filter.unwrap_or_default(), &props, &msg.body],
        );
        super::QueueStats::bump(&q.stats.publish, 1);
        let outcome = match self.store.sync_with(self.target.clone()) {
            Ok(seq) => Published::Accepted(Some(seq)),
            Err(_) => Published::Failed,
        };
        if self.log.pending_bytes() > PENDING_MAX {
            crate::broker::blocking(|| self.log.wait_for_room());
        }
        outcome
    }

    /// Checks a consume against RabbitMQ's rules for streams and starts its reader.
    ///
    /// # Errors
    /// 406 without a prefetch or with a bad `x-stream-offset`; 540 (connection) for no-ack
    /// or a channel-wide prefetch.
    pub fn attach(
        &self,
        q: &Arc<Queue>,
        c: Consumer,
        o: ConsumeOptions<'_>,
        vhost: &str,
    ) -> Result<()> {
        if o.prefetch == 0 {
            return Err(AmqpError::precondition_failed(format!(
                "consumer prefetch count is not set for '{}'",
                resource(q, vhost)
            )));
        }
        if c.handle.no_ack {
            return Err(AmqpError::not_implemented(format!(
                "automatic acknowledgement not supported by stream queues {}",
                resource(q, vhost)
            )));
        }
        if c.handle
            .channel
            .as_ref()
            .is_some_and(|ch| ch.limit.load(Ordering::Acquire) != 0)
        {
            return Err(AmqpError::not_implemented(format!(
                "{} does not support global qos",
                resource(q, vhost)
            )));
        }
        let start = start_at(o.arguments, &q.name, vhost, now_ms())?;
        let filter = args::filter(o.arguments, &q.name, vhost)?;
        // `next` is where the log ends as the consumer attaches, so what is published after
        // consume-ok reaches it; the others are resolved by the reader.
        let next = match start {
            StartAt::Next => Some(self.log.committed()),
            StartAt::First => Some(self.log.first_offset()),
            StartAt::Last => Some(self.log.last_chunk_start()),
            StartAt::Offset(n) => Some(n),
            StartAt::Time(_) => None,
        };
        // compat: RabbitMQ 3.10.8 does not enforce exclusive consumers on streams (a
        // second consumer is accepted); neither does Warren, so clients see the same.
        let r = Arc::new(reader::Reader {
            consumer: c,
            filter,
            wake: Notify::new(),
            stop: AtomicBool::new(false),
        });
        self.readers.lock().push(r.clone());
        tokio::spawn(reader::run(q.clone(), self.log.clone(), r, start, next));
        Ok(())
    }

    /// Stops a consumer's reader. A stream is never auto-delete, so never unused.
    pub fn detach(&self, handle: &ConsumerHandle) {
        self.readers.lock().retain(|r| {
            let mine = std::ptr::eq(Arc::as_ptr(&r.consumer.handle), handle);
            if mine {
                r.halt();
            }
            !mine
        });
    }

    /// Credit came back somewhere (an ack, a written delivery): readers look again.
    pub fn wake(&self) {
        for r in self.readers.lock().iter() {
            r.wake.notify_one();
        }
    }

    /// The queue is deleted: readers stop, the log goes; returns the consumers to cancel.
    pub fn delete(&self) -> Vec<Consumer> {
        let readers = std::mem::take(&mut *self.readers.lock());
        for r in &readers {
            r.halt();
        }
        if let Err(e) = crate::broker::blocking(|| self.log.delete()) {
            tracing::warn!(dir = %self.log.dir().display(), error = %e, "cannot remove a deleted stream's files");
        }
        readers.iter().map(|r| r.consumer.clone()).collect()
    }

    /// Records kept (after retention).
    pub fn records(&self) -> u64 {
        self.log.stats().0
    }

    /// Counts for the management API: records, their bytes on disk, readers.
    pub fn snapshot(&self) -> QueueSnapshot {
        let (records, bytes, _) = self.log.stats();
        QueueSnapshot {
            ready: records,
            ready_bytes: bytes,
            // Read from the page cache, never held: only a batch per reader is resident.
            memory: 0,
            consumers: self.readers.lock().len() as u32,
        }
    }

    /// The attached consumers, for the management API.
    pub fn consumers(&self) -> Vec<ConsumerView> {
        self.readers
            .lock()
            .iter()
            .map(|r| {
                let c = &r.consumer;
                ConsumerView {
                    tag: c.handle.tag.clone(),
                    channel: c.channel,
                    conn_id: c.conn_id,
                    no_ack: false,
                    exclusive: c.exclusive,
                    priority: c.priority,
                    prefetch: c.handle.limit,
                }
            })
            .collect()
    }
}

impl Queue {
    /// The stream behind this queue, when it is one: the interface's methods dispatch on
    /// this.
    pub fn stream(&self) -> Option<&Stream> {
        match &self.kind {
            super::Kind::Stream(s) => Some(s),
            super::Kind::Classic => None,
        }
    }

    /// Refuses what this queue's type does not do, with RabbitMQ's 540 for streams.
    ///
    /// # Errors
    /// 540 NOT_IMPLEMENTED (connection) for `basic.get` and `queue.purge` on a stream.
    pub fn supports(&self, op: Operation, vhost: &str) -> Result<()> {
        if self.stream().is_none() {
            return Ok(());
        }
        let what = match op {
            Operation::Get => "basic.get",
            Operation::Purge => "queue.purge",
        };
        Err(AmqpError::not_implemented(format!(
            "{what} not supported by stream queues {}",
            resource(self, vhost)
        )))
    }
}
