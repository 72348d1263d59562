//! Classic queues' storage: the ready messages of one queue, one FIFO per priority level,
//! in memory or in runs paged out to the message log, with their byte and memory
//! accounting; paging back in, in batches, as consumers catch up. Plain data under the
//! queue's lock: no I/O here except reading a paged-out run back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::broker::dead_letter::Reason;
use crate::broker::message::{Entry, Logged, Message};
use crate::broker::paged::{Paged, PagedFifo};
use crate::store::Seq;

use crate::broker::queue::*;

/// What a message in memory costs besides its body, measured: the entry (96 bytes, in a
/// deque that may be half empty), the shared message (136), its parsed properties (296;
/// shared, so free, for a message without any), and the frame bytes around the body in the
/// read buffer it points into.
pub(in crate::broker::queue) const ENTRY_OVERHEAD: usize = 512;

/// Most paged messages read back into memory at once (under the queue lock).
pub(in crate::broker::queue) const REFILL_MAX: usize = 256;

/// One priority level, oldest first: `ready` (in memory), then `rest`, runs of messages
/// that are in memory or paged out, in the order they arrived. A message arriving under the
/// budget stays in memory even behind paged-out ones; paged-out runs come back to memory
/// from the front, in batches, as `ready` empties. `rest` is empty unless the queue went
/// past its budget, so the common path only touches `ready`.
#[derive(Debug, Default)]
pub(in crate::broker::queue) struct Level {
    pub(in crate::broker::queue) ready: VecDeque<Entry>,
    pub(in crate::broker::queue) rest: VecDeque<Run>,
}

#[derive(Debug)]
pub(in crate::broker::queue) enum Run {
    Ready(VecDeque<Entry>),
    Paged(PagedFifo),
}

impl Level {
    pub(in crate::broker::queue) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.rest.is_empty()
    }
}

#[derive(Debug, Default)]
pub(in crate::broker::queue) struct State {
    /// Ready messages, one FIFO per priority level (one level without `x-max-priority`).
    pub(in crate::broker::queue) levels: Vec<Level>,
    pub(in crate::broker::queue) len: usize,
    pub(in crate::broker::queue) bytes: usize,
    /// Memory the ready messages hold (paged-out ones count nothing).
    pub(in crate::broker::queue) resident: usize,
    /// The stores and the broker-wide budget this queue's resident bytes count against.
    pub(in crate::broker::queue) persist: Option<Arc<crate::broker::Persistence>>,
    /// Ordered by priority (highest first), then by turn.
    pub(in crate::broker::queue) consumers: Vec<Consumer>,
    pub(in crate::broker::queue) next_seq: u64,
    pub(in crate::broker::queue) had_consumer: bool,
    pub(in crate::broker::queue) last_used: u64,
    /// The deadline the timer task sleeps until, if any.
    pub(in crate::broker::queue) scheduled: Option<u64>,
}

pub(in crate::broker::queue) fn cost(e: &Entry) -> usize {
    e.size as usize + ENTRY_OVERHEAD
}

impl State {
    pub(in crate::broker::queue) fn account_in(&mut self, size: u32, cost: usize) {
        self.len += 1;
        self.bytes += size as usize;
        self.resident += cost;
        if let Some(p) = &self.persist {
            p.budget.resident.fetch_add(cost, Ordering::Relaxed);
        }
    }

    pub(in crate::broker::queue) fn account_out(&mut self, size: u32, cost: usize) {
        self.len -= 1;
        self.bytes -= size as usize;
        self.resident -= cost;
        if let Some(p) = &self.persist {
            p.budget.resident.fetch_sub(cost, Ordering::Relaxed);
        }
    }

    pub(in crate::broker::queue) fn level_of(&self, priority: u8) -> usize {
        usize::from(priority).min(self.levels.len() - 1)
    }

    /// Appends a message kept in memory.
    pub(in crate::broker::queue) fn push(&mut self, e: Entry) {
        self.account_in(e.size, cost(&e));
        let level = self.level_of(e.priority);
        let l = &mut self.levels[level];
        match l.rest.back_mut() {
            None => l.ready.push_back(e),
            Some(Run::Ready(run)) => run.push_back(e),
            Some(Run::Paged(_)) => l.rest.push_back(Run::Ready(VecDeque::from([e]))),
        }
    }

    /// Appends a paged-out message.
    pub(in crate::broker::queue) fn push_paged(&mut self, priority: u8, p: Paged) {
        self.account_in(p.size(), 0);
        let level = self.level_of(priority);
        let dir = self.persist.as_ref().map(|p| p.spill_dir.as_path());
        let l = &mut self.levels[level];
        if let Some(Run::Paged(run)) = l.rest.back_mut() {
            run.push_back(p, dir);
        } else {
            let mut run = PagedFifo::default();
            run.push_back(p, dir);
            l.rest.push_back(Run::Paged(run));
        }
    }

    pub(in crate::broker::queue) fn insert_by_seq(&mut self, e: Entry) {
        self.account_in(e.size, cost(&e));
        let at = self.level_of(e.priority);
        // Delivered messages came from the front, so they belong in `ready`, before
        // everything in `rest`.
        let level = &mut self.levels[at].ready;
        // Requeued messages are usually older than everything ready: check the front first.
        let at = if level.front().is_none_or(|f| e.seq < f.seq) {
            0
        } else {
            level.partition_point(|x| x.seq < e.seq)
        };
        level.insert(at, e);
    }

    /// The oldest message of a level, moving the next run to `ready` (reading paged ones
    /// back) first if `ready` is empty.
    pub(in crate::broker::queue) fn front(&mut self, level: usize) -> Option<&Entry> {
        while self.levels[level].ready.is_empty() {
            let l = &mut self.levels[level];
            match l.rest.front_mut()? {
                Run::Ready(run) => {
                    l.ready = std::mem::take(run);
                    l.rest.pop_front();
                }
                Run::Paged(run) if run.is_empty() => {
                    l.rest.pop_front();
                }
                Run::Paged(_) => self.refill(level),
            }
        }
        self.levels[level].ready.front()
    }

    pub(in crate::broker::queue) fn pop_front(&mut self, level: usize) -> Option<Entry> {
        self.front(level)?;
        let l = &mut self.levels[level].ready;
        let e = l.pop_front()?;
        if l.is_empty() && l.capacity() > 1 << 16 {
            // A deep queue drained: give the memory back.
            l.shrink_to(1024);
        }
        self.account_out(e.size, cost(&e));
        Some(e)
    }

    pub(in crate::broker::queue) fn pop(&mut self) -> Option<Entry> {
        loop {
            let level = (0..self.levels.len())
                .rev()
                .find(|&i| !self.levels[i].is_empty())?;
            // None only when every paged message read back was unreadable (and dropped).
            if let Some(e) = self.pop_front(level) {
                return Some(e);
            }
        }
    }

    /// Brings messages of the paged run at the front of `level`'s `rest` back into
    /// `ready`: as many as the budget allows, at least one, at most [`REFILL_MAX`], read in
    /// runs. A message that cannot be read back (only after the log failed) is dropped with
    /// an error log.
    pub(in crate::broker::queue) fn refill(&mut self, level: usize) {
        let Some(p) = self.persist.clone() else {
            // Unreachable (only a queue with a message log pages out), but `front` loops
            // until the run is gone.
            self.levels[level].rest.pop_front();
            return;
        };
        let mut room = p.budget.per_queue.saturating_sub(self.resident).min(
            p.budget
                .total
                .saturating_sub(p.budget.resident.load(Ordering::Relaxed)),
        );
        let Some(Run::Paged(run)) = self.levels[level].rest.front_mut() else {
            return;
        };
        let mut batch = Vec::new();
        while batch.len() < REFILL_MAX {
            let Some(pg) = run.pop_front() else {
                break;
            };
            let c = pg.size() as usize + ENTRY_OVERHEAD;
            batch.push(pg);
            if c > room {
                break;
            }
            room -= c;
        }
        // Messages whose spilled index could not be read back: they stay in the log (and
        // come back after a restart); their sizes are unknown here.
        let lost = run.take_lost();
        if run.is_empty() {
            self.levels[level].rest.pop_front();
        }
        self.len -= lost;
        let locs: Vec<_> = batch.iter().map(Paged::location).collect();
        // Read on the worker when the page cache has them, as it does for a queue draining
        // in log order behind the kernel's readahead: handing the worker's tasks to another
        // thread for every batch cost more (paged 1 KiB drain: ~1.46 -> ~1.78 µs of broker
        // CPU per message). What would wait for the disk (a cold cache after a restart) is
        // read with the worker's other connections moved off first.
        let mut reads = p.store.read_many_cached(&locs);
        let cold: Vec<usize> = (0..reads.len())
            .filter(|&i| matches!(&reads[i], Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
            .collect();
        if !cold.is_empty() {
            let cold_locs: Vec<_> = cold.iter().map(|&i| locs[i]).collect();
            let read = crate::broker::blocking(|| p.store.read_many(&cold_locs));
            for (i, r) in cold.into_iter().zip(read) {
                reads[i] = r;
            }
        }
        for (pg, read) in batch.iter().zip(reads) {
            // It leaves the paged run and comes back as a resident entry.
            self.account_out(pg.size(), 0);
            match read_back(&p, pg, read.ok()) {
                Some(e) => {
                    self.account_in(e.size, cost(&e));
                    self.levels[level].ready.push_back(e);
                }
                None => {
                    tracing::error!("cannot read a paged-out message back; dropping it");
                    p.store.ack(pg.id());
                }
            }
        }
    }

    /// Removes the newest entry of a level if it is `seq` (a TTL-0 message nobody took).
    pub(in crate::broker::queue) fn pop_back_if(
        &mut self,
        level: usize,
        seq: u64,
    ) -> Option<Entry> {
        let l = &mut self.levels[level];
        let newest = match l.rest.back_mut() {
            None => &mut l.ready,
            Some(Run::Ready(run)) => run,
            Some(Run::Paged(run)) => {
                let pg = run.pop_back_if(seq)?;
                if run.is_empty() {
                    l.rest.pop_back();
                }
                self.account_out(pg.size(), 0);
                let p = self.persist.clone()?;
                let e = read_back(&p, &pg, None);
                if e.is_none() {
                    p.store.ack(pg.id());
                }
                return e;
            }
        };
        if newest.back().is_some_and(|e| e.seq == seq) {
            let e = newest.pop_back().expect("back checked");
            if newest.is_empty() && !l.rest.is_empty() {
                l.rest.pop_back();
            }
            self.account_out(e.size, cost(&e));
            return Some(e);
        }
        None
    }

    /// Moves expired messages at the head of each level to `dead` (RabbitMQ only expires at
    /// the head; a consumer or basic.get reaching one finds it expired). A message expires
    /// once its deadline has passed, so a TTL-0 message can still be handed to a consumer
    /// that is waiting in the millisecond it arrives.
    pub(in crate::broker::queue) fn expire_heads(
        &mut self,
        now: u64,
        dead: &mut Vec<(Entry, Reason)>,
    ) {
        for i in 0..self.levels.len() {
            while self
                .front(i)
                .is_some_and(|e| e.expires_at.is_some_and(|t| t < now))
            {
                let e = self.pop_front(i).expect("front checked");
                dead.push((e, Reason::Expired));
            }
        }
    }

    pub(in crate::broker::queue) fn next_expiry(&mut self) -> Option<u64> {
        (0..self.levels.len())
            .filter_map(|i| self.front(i).and_then(|e| e.expires_at))
            .min()
    }

    /// Drops every ready message; returns how many. With `settle`, each one's log record
    /// is killed too (purge; a deleted queue's records go with the queue).
    pub(in crate::broker::queue) fn clear(&mut self, settle: bool) -> usize {
        let n = self.len;
        let store = self.persist.as_ref().map(|p| &p.store).filter(|_| settle);
        let settle_entries = |run: &mut VecDeque<Entry>| {
            for e in run.drain(..) {
                if let (Some(store), Some(log)) = (store, e.log) {
                    store.ack(log.id);
                }
            }
        };
        for l in &mut self.levels {
            settle_entries(&mut l.ready);
            l.ready.shrink_to(0);
            for run in l.rest.drain(..) {
                match (run, store) {
                    (Run::Ready(mut run), _) => settle_entries(&mut run),
                    (Run::Paged(mut run), Some(store)) => run.clear_with(|p| store.ack(p.id())),
                    (Run::Paged(mut run), None) => run.clear(),
                }
            }
        }
        if let Some(p) = &self.persist {
            p.budget
                .resident
                .fetch_sub(self.resident, Ordering::Relaxed);
        }
        self.len = 0;
        self.bytes = 0;
        self.resident = 0;
        n
    }
}

/// Makes a paged-out message an entry again from its payload (`read`, or read now). A record
/// is readable once written; one paged out a moment ago may not be yet, so on a miss it
/// waits for every message appended so far to be on disk and tries once more.
pub(in crate::broker::queue) fn read_back(
    p: &crate::broker::Persistence,
    pg: &Paged,
    read: Option<Bytes>,
) -> Option<Entry> {
    let loc = pg.location();
    let bytes = read.map_or_else(|| p.store.read(loc), Ok).or_else(|_| {
        // Waiting for a sync can take milliseconds: other connections go on meanwhile.
        crate::broker::blocking(|| {
            p.store
                .watermark()
                .wait_blocking(p.store.published())
                .map_err(std::io::Error::other)?;
            p.store.read(loc)
        })
    });
    let stored = crate::broker::persist::decode(bytes.ok()?)?;
    Some(logged_entry(
        pg.seq(),
        stored,
        pg.id(),
        loc,
        pg.redelivered(),
    ))
}

/// An entry for a message read from the log (paged back in, or recovered).
pub(in crate::broker::queue) fn logged_entry(
    seq: u64,
    stored: crate::broker::persist::Stored,
    id: crate::store::MsgId,
    loc: crate::store::Location,
    redelivered: bool,
) -> Entry {
    let mut e = Entry::new(seq, stored.msg, stored.priority, stored.expires_at);
    e.delivery_count = stored.delivery_count;
    e.redelivered = redelivered;
    // Already durable (or only a page-out): nothing to wait for.
    e.log = Some(Logged {
        id,
        loc,
        seq: Seq(0),
    });
    e
}

impl Entry {
    pub(in crate::broker::queue) fn new(
        seq: u64,
        msg: Arc<Message>,
        priority: u8,
        expires_at: Option<u64>,
    ) -> Self {
        let msg_size = u32::try_from(msg.size()).unwrap_or(u32::MAX);
        Self {
            seq,
            msg,
            redelivered: false,
            priority,
            expires_at,
            delivery_count: 0,
            size: msg_size,
            log: None,
        }
    }
}
