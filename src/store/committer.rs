//! The committer: the one thread (`warren-store`) that writes, syncs and deletes segment
//! files, and the state it shares with the threads that append.
//!
//! Appenders (any thread or async task, via `MessageStore`) take the state lock for well
//! under a microsecond: they assign the message id and sequence number, decide which segment
//! the record goes in and at which offset, update the liveness index, and encode the record
//! into the shared `pending` buffer. That buffer *is* the channel to the committer: a Vec
//! rather than an mpsc of records, so there is no allocation per record and the committer
//! takes a whole batch with one pointer swap.
//!
//! The committer loops: wait for work, swap the pending buffer with its own empty one,
//! write it (one `write` per segment touched, normally one), `fdatasync` once if the batch
//! holds anything that needs it (a Publish or a Summary; Ack and Delivered never ask for a
//! sync, they ride along), publish the new durable watermark, then collect garbage. While it
//! writes and syncs, appenders fill the other buffer: batches form by themselves, without a
//! timer, and grow with the sync latency.
//!
//! The pending buffer is bounded ([`PENDING_MAX`]): an appender that fills it is told so,
//! and waits (`MessageStore::wait_for_room`, off the queue lock) until the committer takes
//! the batch. Without the bound a publisher faster than the disk grew it by the disk's lag:
//! a 1 GiB flood of 64 KiB transient messages paging out past its queue's budget left 256
//! MiB pending while the previous batch was written, and the broker's RSS peaked at 1.1
//! GiB. When the log goes idle the committer also gives back both buffers if they grew.
//!
//! Sync targets (`SyncTarget`, e.g. a stream log): `MessageStore::sync_with` gives a
//! target a sequence number without writing a record and enlists it in the pending batch
//! (once per batch). After writing and syncing its own segment the committer calls every
//! enlisted target's `flush_and_sync`, and only then publishes the batch's watermark, so a
//! confirm for a stream publish means the stream's bytes are synced too. A failing target is
//! a failed write: fail-stop.
//!
//! Out of space (`outage.rs`): a segment write or a segment creation that fails with
//! `ENOSPC`/`EDQUOT` does not fail the store. The committer keeps the batch and how much of
//! it reached the file, marks every record appended so far and not yet durable as lost for
//! confirms (nacks), refuses appends that need the disk (acks and delivered marks are still
//! taken while the pending buffer has room), and retries the rest of the batch with a
//! backoff of up to [`RETRY_MAX`]. The first write that succeeds ends the outage: the batch
//! is synced, the watermark moves on, appends are taken again. Nothing is truncated, so
//! every `Location` handed out stays right. A stream that runs out of space fails itself
//! (its own fail-stop) and only the batch's confirms are lost.
//!
//! Fail-stop: any other failed write, and any failed sync, unlink or directory sync, is
//! logged once, the cause is kept, the watermark is marked failed (every unsynced confirm
//! fails) and the thread exits; appends fail from then on. Nothing here touches the disk
//! again.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use tokio::sync::watch;

use super::index::Index;
use super::outage::{self, Lost};
use super::segment::{self, ID_RECORD_LEN, KIND_ACK, KIND_DELIVERED};
use super::{Appended, Faults, Location, MsgId, Seq, StoreError, SyncTarget};

/// Encoded bytes pending before appenders wait for the committer to take them. A batch
/// this size is about 30 ms of a 250 MB/s disk, so the disk stays busy while the next one
/// fills; the two buffers hold at most twice this (rounded up to a power of two by `Vec`)
/// plus one record.
pub(crate) const PENDING_MAX: usize = 8 << 20;

/// A buffer kept across an idle spell may be this large; a bigger one (a flood's) is freed.
const IDLE_KEEP: usize = 1 << 20;

/// First and longest wait between two attempts to write while the disk is full. A failed
/// attempt is one `write` that returns at once, so retrying often costs nothing.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(20);
pub(crate) const RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// Durability as published to async waiters through the watch channel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Durable {
    /// Every record with a sequence number up to this one is on disk.
    pub(crate) synced: u64,
    /// The store failed: records after `synced` never will be.
    pub(crate) failed: bool,
    /// Every record up to this one that is not yet on disk is lost for confirms (`Lost`).
    pub(crate) lost: u64,
}

/// Durability as seen by blocking waiters (`wait_blocking`, `flush`), under `Shared::progress`.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) synced: u64,
    /// The highest flush request the committer has completed.
    pub(crate) flushed: u64,
    pub(crate) failed: bool,
    /// As `Durable::lost`.
    pub(crate) lost: u64,
    /// Space ran out and has not come back: flushes fail instead of waiting.
    pub(crate) out_of_space: bool,
    /// The committer thread has exited; nothing will change any more.
    pub(crate) done: bool,
}

/// Counters the committer bumps once per batch (not per record).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
}

/// Everything the store handle, watermarks and the committer share.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    /// Appenders and the committer. parking_lot: uncontended lock/unlock is one atomic each,
    /// and no guard is ever held across an await or any I/O.
    pub(crate) state: Mutex<State>,
    /// Appenders -> committer: there is pending work (records, a flush, or close). The
    /// committer is the only waiter.
    pub(crate) work: Condvar,
    /// Set (under `state`) by an append that leaves `pending` at [`PENDING_MAX`] or more,
    /// cleared when the committer takes it: one relaxed load tells a publisher it must wait.
    pub(crate) full: AtomicBool,
    /// Committer -> appenders waiting for `pending` to be taken (on `state`).
    pub(crate) room: Condvar,
    /// Mirror of the watermark for lock-free polling (`Watermark::status`).
    pub(crate) synced: AtomicU64,
    /// Set (Release) after `cause`, so a reader that sees it (Acquire) finds the cause.
    pub(crate) failed: AtomicBool,
    pub(crate) cause: OnceLock<Arc<io::Error>>,
    /// Confirms that failed for lack of space, and the latest such error.
    pub(crate) lost: Lost,
    pub(crate) space_cause: Mutex<Option<Arc<io::Error>>>,
    /// While space is out: a copy of the batch the committer could not write, so reads of
    /// its records are served from memory (`MessageStore::read`).
    pub(crate) unwritten: Mutex<Option<Placed>>,
    /// Committer -> blocking waiters; notified once per batch.
    pub(crate) progress: Mutex<Progress>,
    pub(crate) progress_cv: Condvar,
    /// Read handles for `MessageStore::read`, opened on first use. The committer removes a
    /// segment's entry (under the write lock) after unlinking it, so a handle for a deleted
    /// segment never stays cached: see `MessageStore::reader`.
    pub(crate) readers: RwLock<HashMap<u64, Arc<File>>>,
    pub(crate) counters: Counters,
}

impl Shared {
    /// The error for anything the failure prevented: the original cause when known.
    pub(crate) fn failure(&self) -> StoreError {
        match self.cause.get() {
            Some(e) => StoreError::Io(e.clone()),
            None => StoreError::Failed,
        }
    }

    /// The error for a confirm lost for lack of space.
    pub(crate) fn no_space(&self) -> StoreError {
        match &*self.space_cause.lock() {
            Some(e) => StoreError::NoSpace(e.clone()),
            None => StoreError::Failed,
        }
    }

    /// The bytes of the record at `loc` if it is still in memory only: in the batch that
    /// ran out of space, or pending behind it. Only looked at after space ran out.
    pub(crate) fn unwritten_record(&self, loc: Location) -> Option<Vec<u8>> {
        if let Some(p) = &*self.unwritten.lock()
            && let Some(r) = find(&p.buf, p.seg, p.start, &p.rolls, loc)
        {
            return Some(r.to_vec());
        }
        let st = self.state.lock();
        find(
            &st.pending,
            st.pending_seg,
            st.pending_start,
            &st.rolls,
            loc,
        )
        .map(<[u8]>::to_vec)
    }
}

/// A copy of encoded records and where they go: `buf` from offset `start` of segment `seg`
/// on, switching to segment `s` (at offset 0) at each `(at, s)` of `rolls`.
pub(crate) struct Placed {
    buf: Vec<u8>,
    seg: u64,
    start: u64,
    rolls: Vec<(usize, u64)>,
}

/// The bytes for `loc` in `buf` laid out as [`Placed`] says, if they are all there.
fn find<'a>(
    buf: &'a [u8],
    seg: u64,
    start: u64,
    rolls: &[(usize, u64)],
    loc: Location,
) -> Option<&'a [u8]> {
    let mut lo = 0;
    let (mut seg, mut file_off) = (seg, start);
    let ends = rolls
        .iter()
        .map(|&(at, next)| (at, Some(next)))
        .chain(std::iter::once((buf.len(), None)));
    for (hi, next) in ends {
        if seg == loc.segment && loc.offset >= file_off {
            let at = lo + usize::try_from(loc.offset - file_off).ok()?;
            let end = at.checked_add(loc.len as usize)?;
            if end <= hi {
                return buf.get(at..end);
            }
        }
        lo = hi;
        if let Some(next) = next {
            (seg, file_off) = (next, 0);
        }
    }
    None
}

/// The pending batch and the index, under `Shared::state`.
pub(crate) struct State {
    pub(crate) index: Index,
    /// Encoded records not yet taken by the committer.
    pub(crate) pending: Vec<u8>,
    /// Segment of `pending[0]`, and its offset there.
    pending_seg: u64,
    pending_start: u64,
    /// (offset in `pending`, segment) where the records start going to a new segment.
    rolls: Vec<(usize, u64)>,
    /// The pending records include one whose durability someone waits for.
    sync_needed: bool,
    /// Segment new records go to, and its size including pending records.
    cur_seg: u64,
    cur_size: u64,
    segment_size: u64,
    next_msg: u64,
    /// Sequence number of the last record appended; one per record, from 1 at each open.
    seq: u64,
    /// Sequence number of the last Publish record appended (0: none since open).
    pub(crate) last_publish: u64,
    pub(crate) failed: bool,
    /// Space ran out (the cause): records that need the disk are refused until it returns.
    pub(crate) out_of_space: Option<Arc<io::Error>>,
    pub(crate) closing: bool,
    /// Flush requests made; the committer answers through `Progress::flushed`.
    pub(crate) flush_req: u64,
    pub(crate) appends: u64,
    pub(crate) records: u64,
    /// Sync targets enlisted in the pending batch, each once (`sync_with`). Swapped with the
    /// committer's own (empty) Vec at `take`, so its capacity is reused: no allocation per
    /// batch once it has grown.
    targets: Vec<Arc<dyn SyncTarget>>,
    /// Addresses of `targets`, for deduplication when the newest one does not match.
    /// Cleared (capacity kept) at `take`.
    target_set: HashSet<usize>,
}

impl State {
    pub(crate) fn new(index: Index, cur_seg: u64, next_msg: u64, segment_size: u64) -> State {
        State {
            index,
            pending: Vec::new(),
            pending_seg: cur_seg,
            pending_start: 0,
            rolls: Vec::new(),
            sync_needed: false,
            cur_seg,
            cur_size: 0,
            segment_size: segment_size.max(1),
            next_msg,
            seq: 0,
            last_publish: 0,
            failed: false,
            out_of_space: None,
            closing: false,
            flush_req: 0,
            appends: 0,
            records: 0,
            targets: Vec::new(),
            target_set: HashSet::new(),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.failed {
            Err(StoreError::Failed)
        } else if self.closing {
            Err(StoreError::Closed)
        } else if let Some(e) = &self.out_of_space {
            Err(StoreError::NoSpace(e.clone()))
        } else {
            Ok(())
        }
    }

    /// For acks, delivered marks and queue deletions: taken while space is out too (they
    /// are small, and written once it returns), as long as the pending buffer has room; one
    /// dropped is a redelivery after a restart, never a loss.
    fn takes_small_records(&self) -> bool {
        !self.failed
            && !self.closing
            && (self.out_of_space.is_none() || self.pending.len() < PENDING_MAX)
    }

    /// Chooses the segment and offset of the next record (`len` bytes) and gives it a
    /// sequence number. Starts a new segment when the current one would overflow; a record
    /// bigger than a segment therefore gets one of its own. A Publish also starts a new
    /// segment when the current one is a quarter full and holds nothing live, so that space
    /// can be reclaimed without waiting for the segment to fill.
    fn place(&mut self, len: usize, publish: bool) -> (u64, u64) {
        let len = len as u64;
        let full = self.cur_size + len > self.segment_size;
        let dead = publish
            && self.cur_size >= self.segment_size / 4
            && self.index.last().is_some_and(|s| s.live == 0);
        if self.cur_size > 0 && (full || dead) {
            self.cur_seg += 1;
            self.cur_size = 0;
            self.index.push_segment(self.cur_seg, self.next_msg);
            if !self.pending.is_empty() {
                self.rolls.push((self.pending.len(), self.cur_seg));
            }
        }
        if self.pending.is_empty() {
            self.pending_seg = self.cur_seg;
            self.pending_start = self.cur_size;
        }
        let offset = self.cur_size;
        self.cur_size += len;
        self.seq += 1;
        self.records += 1;
        (self.cur_seg, offset)
    }

    pub(crate) fn publish(
        &mut self,
        crc: crc32fast::Hasher,
        queue: &str,
        payload: &[u8],
    ) -> Result<Appended, StoreError> {
        self.check_open()?;
        let len = segment::publish_len(queue, payload);
        let (segment, offset) = self.place(len, true);
        let id = self.next_msg;
        self.next_msg += 1;
        let q = self.index.intern(queue);
        // Cannot fail: ids are assigned here, under the lock, in placement order, so they
        // are contiguous within the segment `place` just chose.
        let added = self.index.add_publish(id, q);
        debug_assert!(added);
        segment::encode_publish(&mut self.pending, crc, id, queue, payload);
        self.last_publish = self.seq;
        self.sync_needed = true;
        self.appends += 1;
        Ok(Appended {
            id: MsgId(id),
            // The caller bounded the record to u32::MAX bytes.
            loc: Location {
                segment,
                offset,
                len: len as u32,
            },
            seq: Seq(self.seq),
        })
    }

    /// Gives `target` the next sequence number (no record is written) and enlists it in the
    /// pending batch. The batch then counts as needing a sync: the watermark can only pass
    /// this number once every earlier record of the log (acks included) is synced as well.
    pub(crate) fn sync_with(&mut self, target: Arc<dyn SyncTarget>) -> Result<Seq, StoreError> {
        self.check_open()?;
        self.seq += 1;
        self.sync_needed = true;
        let addr = Arc::as_ptr(&target) as *const () as usize;
        // Common case: the same stream again; one comparison, no hashing, no allocation.
        let newest = self
            .targets
            .last()
            .map(|t| Arc::as_ptr(t) as *const () as usize);
        if newest != Some(addr) && self.target_set.insert(addr) {
            self.targets.push(target);
        }
        Ok(Seq(self.seq))
    }

    pub(crate) fn ack(&mut self, id: u64) {
        if !self.takes_small_records() || !self.index.is_live(id) {
            return;
        }
        self.place(ID_RECORD_LEN, false);
        self.index.kill(id);
        segment::encode_id_record(&mut self.pending, KIND_ACK, id);
    }

    pub(crate) fn delivered(&mut self, id: u64) {
        if !self.takes_small_records() || !self.index.needs_delivered_mark(id) {
            return;
        }
        self.place(ID_RECORD_LEN, false);
        self.index.mark_delivered(id);
        segment::encode_id_record(&mut self.pending, KIND_DELIVERED, id);
    }

    pub(crate) fn delete_queue(&mut self, name: &str) {
        if !self.takes_small_records() {
            return;
        }
        let Some(q) = self.index.queue(name) else {
            return;
        };
        if !self.index.has_live(q) {
            return;
        }
        self.place(segment::delete_queue_len(name), false);
        self.index.delete_queue(q);
        segment::encode_delete_queue(&mut self.pending, name);
    }

    /// Appends a Summary of segment `r` (see `index.rs`), to be synced with the next batch.
    fn summarize(&mut self, r: u64) {
        let Some(p) = self.index.position(r) else {
            return;
        };
        let count = self.index.segments()[p].count;
        self.place(segment::summary_len(count), false);
        // `place` only appends segments, so `p` still names `r`, and `r` is older than the
        // segment being written, so the summary is always produced.
        let (first, count, live, delivered) = self.index.summarize_at(p, self.seq);
        segment::encode_summary(&mut self.pending, r, first, count, live, delivered);
        self.sync_needed = true;
    }
}

/// A segment file the committer has open for appending.
struct OpenSeg {
    id: u64,
    file: File,
    /// Written since its last `sync_data`.
    dirty: bool,
}

/// What the committer took from `State` in one go.
struct Batch {
    seg: u64,
    /// Offset of the batch's first byte in `seg`.
    start: u64,
    rolls: Vec<(usize, u64)>,
    sync: bool,
    last_seq: u64,
    flush: u64,
    closing: bool,
}

/// The committer thread's own state; nothing here is shared.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    /// Sender of the watermark. Dropped when the thread ends, which wakes async waiters.
    tx: watch::Sender<Durable>,
    dir: File,
    file: Option<OpenSeg>,
    /// The segment being written; every older segment is sealed (written and synced).
    below: u64,
    synced: u64,
    flushed: u64,
    /// The committer's half of the double buffer.
    buf: Vec<u8>,
    /// The batch's sync targets (swapped with `State::targets`); empty between batches.
    targets: Vec<Arc<dyn SyncTarget>>,
    faults: Faults,
    writes: u64,
    syncs: u64,
    /// Space ran out and this batch is not written yet (`outage.rs`).
    out_of_space: bool,
}

/// Why a batch was not committed.
enum CommitError {
    /// Writing the batch (or creating its segment) failed; with `ENOSPC` or `EDQUOT` the
    /// batch can be retried from where it stopped.
    Write(io::Error),
    /// Anything else (a sync, a directory sync): fail-stop.
    Other(io::Error),
}

impl From<CommitError> for io::Error {
    fn from(e: CommitError) -> io::Error {
        match e {
            CommitError::Write(e) | CommitError::Other(e) => e,
        }
    }
}

impl Committer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        tx: watch::Sender<Durable>,
        dir: File,
        first_seg: u64,
        faults: Faults,
    ) -> Committer {
        Committer {
            shared,
            tx,
            dir,
            file: None,
            below: first_seg,
            synced: 0,
            flushed: 0,
            buf: Vec::new(),
            targets: Vec::new(),
            faults,
            writes: 0,
            syncs: 0,
            out_of_space: false,
        }
    }

    pub(crate) fn run(mut self) {
        // Recovered segments blocked by a long-lived one get their Summaries now, not at the
        // first publish.
        if let Err(e) = self.collect_garbage() {
            return self.fail(e);
        }
        loop {
            let batch = self.take();
            let empty = self.buf.is_empty();
            // Bytes of the batch in their files; kept across retries while space is out.
            let mut written = 0;
            let mut wait = RETRY_FIRST;
            let mut last_try = false;
            loop {
                match self.commit(&batch, &mut written) {
                    Ok(()) => break,
                    Err(CommitError::Write(e)) if outage::is_out_of_space(&e) && !last_try => {
                        if !self.out_of_space {
                            self.begin_outage(e, &batch);
                        }
                        // Closing while the disk is full: one more attempt, then give up.
                        last_try = self.pause(wait);
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                    Err(e) => return self.fail(e.into()),
                }
            }
            if self.out_of_space {
                self.end_outage();
            }
            if let Err(e) = self.collect_garbage() {
                return self.fail(e);
            }
            self.flushed = batch.flush;
            self.publish_progress();
            if batch.closing && empty {
                return;
            }
        }
    }

    /// Space ran out: refuse what needs the disk, and lose (nack) every confirm not yet
    /// durable, up to the newest record appended so far.
    fn begin_outage(&mut self, e: io::Error, batch: &Batch) {
        tracing::warn!(
            dir = %self.shared.dir.display(),
            error = %e,
            "message store: out of space; refusing persistent publishes and nacking the \
             unconfirmed ones until space returns (retrying)"
        );
        let e = Arc::new(e);
        // Once per outage, at most a batch (`PENDING_MAX` and a record): reads of these
        // records must not fail because the disk is full.
        *self.shared.unwritten.lock() = Some(Placed {
            buf: self.buf.clone(),
            seg: batch.seg,
            start: batch.start,
            rolls: batch.rolls.clone(),
        });
        let upto = {
            let mut st = self.shared.state.lock();
            st.out_of_space = Some(e.clone());
            // Publishers waiting for room are refused from now on instead.
            self.shared.full.store(false, Ordering::Relaxed);
            self.shared.room.notify_all();
            st.seq
        };
        self.out_of_space = true;
        self.lose(upto, e);
        self.shared.progress.lock().out_of_space = true;
        self.shared.progress_cv.notify_all();
    }

    /// Marks the confirms after the watermark up to `upto` as lost, and tells every waiter.
    fn lose(&mut self, upto: u64, cause: Arc<io::Error>) {
        *self.shared.space_cause.lock() = Some(cause);
        self.shared.lost.add(self.synced, upto);
        self.tx.send_replace(Durable {
            synced: self.synced,
            failed: false,
            lost: upto,
        });
        let mut p = self.shared.progress.lock();
        p.lost = upto;
        self.shared.progress_cv.notify_all();
    }

    /// The batch that ran out of space is written: take appends again.
    fn end_outage(&mut self) {
        tracing::info!(
            dir = %self.shared.dir.display(),
            "message store: space is back; writing and confirming again"
        );
        self.shared.state.lock().out_of_space = None;
        *self.shared.unwritten.lock() = None;
        self.out_of_space = false;
        self.shared.progress.lock().out_of_space = false;
    }

    /// Waits `d` before the next attempt, or less if the store is closing; returns whether
    /// it is.
    fn pause(&mut self, d: std::time::Duration) -> bool {
        let mut st = self.shared.state.lock();
        if !st.closing {
            self.shared.work.wait_for(&mut st, d);
        }
        st.closing
    }

    /// Waits for work and takes the whole pending batch.
    fn take(&mut self) -> Batch {
        let mut st = self.shared.state.lock();
        if st.pending.is_empty()
            && st.targets.is_empty()
            && st.flush_req == self.flushed
            && !st.closing
        {
            // Going idle: a flood's buffers are not kept for the next one (the allocator
            // can give them back to the OS).
            if self.buf.capacity() > IDLE_KEEP {
                self.buf = Vec::new();
            }
            if st.pending.capacity() > IDLE_KEEP {
                st.pending = Vec::new();
            }
        }
        // A batch of only sync targets (no record) is work too.
        while st.pending.is_empty()
            && st.targets.is_empty()
            && st.flush_req == self.flushed
            && !st.closing
        {
            self.shared.work.wait(&mut st);
        }
        std::mem::swap(&mut self.buf, &mut st.pending);
        std::mem::swap(&mut self.targets, &mut st.targets);
        st.target_set.clear();
        if self.shared.full.swap(false, Ordering::Relaxed) {
            self.shared.room.notify_all();
        }
        let batch = Batch {
            seg: st.pending_seg,
            start: st.pending_start,
            rolls: std::mem::take(&mut st.rolls),
            sync: std::mem::take(&mut st.sync_needed),
            last_seq: st.seq,
            flush: st.flush_req,
            closing: st.closing,
        };
        st.pending_seg = st.cur_seg;
        batch
    }

    /// Writes the batch from byte `written` on (advancing it as bytes reach their files),
    /// syncs it, syncs its targets, and moves `synced`.
    fn commit(&mut self, batch: &Batch, written: &mut usize) -> Result<(), CommitError> {
        let buf = std::mem::take(&mut self.buf);
        let wrote = self.write_batch(batch, &buf, written);
        self.buf = buf;
        wrote?;
        if batch.sync || batch.closing || batch.flush > self.flushed {
            self.sync_current().map_err(CommitError::Other)?;
        }
        // Sync targets after our own segment, before the watermark moves: their seqs are
        // in `last_seq`. An error returns before `synced` advances (fail-stop in `run`),
        // except running out of space, which the stream answers by failing itself: then
        // only this batch's confirms are lost. Draining drops the batch's Arcs, so a
        // deleted stream is not kept alive.
        let mut no_space = None;
        for target in self.targets.drain(..) {
            match target.flush_and_sync() {
                Ok(()) => {}
                Err(e) if outage::is_out_of_space(&e) => no_space = Some(e),
                Err(e) => return Err(CommitError::Other(e)),
            }
        }
        if let Some(e) = no_space {
            tracing::warn!(error = %e, "message store: a stream ran out of space; its batch is nacked");
            self.lose(batch.last_seq, Arc::new(e));
        }
        if !self.file.as_ref().is_some_and(|f| f.dirty) {
            self.synced = batch.last_seq;
        }
        self.shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.buf.clear();
        // One huge batch must not pin its buffer's memory for the life of the store.
        if self.buf.capacity() > 64 << 20 {
            self.buf.shrink_to(8 << 20);
        }
        Ok(())
    }

    /// Writes `buf[written..]` to the segments the batch's records were placed in.
    fn write_batch(
        &mut self,
        batch: &Batch,
        buf: &[u8],
        written: &mut usize,
    ) -> Result<(), CommitError> {
        let mut start = 0;
        let mut seg = batch.seg;
        let ends = batch
            .rolls
            .iter()
            .map(|&(at, next)| (at, Some(next)))
            .chain(std::iter::once((buf.len(), None)));
        for (end, next) in ends {
            if *written < end {
                self.write(seg, &buf[(*written).max(start)..end], written)?;
            }
            start = end;
            if let Some(next) = next {
                seg = next;
            }
        }
        Ok(())
    }

    /// Appends `bytes` to segment `seg` (creating it first if it is new), adding what
    /// reached the file to `written` as it goes, so a retry continues where this stopped.
    fn write(&mut self, seg: u64, bytes: &[u8], written: &mut usize) -> Result<(), CommitError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.file.as_ref().is_none_or(|f| f.id != seg) {
            // Seal the old segment before the new one exists: after a crash only the newest
            // segment can have a torn tail, and a confirm in the new one covers the old.
            self.sync_current().map_err(CommitError::Other)?;
            let path = segment::path(&self.shared.dir, seg);
            // A creation that fails for lack of space created nothing: it can be retried.
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(CommitError::Write)?;
            // The new directory entry must be durable before any confirm depends on it.
            self.dir.sync_all().map_err(CommitError::Other)?;
            self.file = Some(OpenSeg {
                id: seg,
                file,
                dirty: false,
            });
            self.below = seg;
        }
        if self
            .faults
            .fail_write_after
            .is_some_and(|n| self.writes >= n)
        {
            return Err(CommitError::Write(io::Error::other(
                "injected write failure",
            )));
        }
        if self
            .faults
            .no_space
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(CommitError::Write(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: no space left on device",
            )));
        }
        self.writes += 1;
        // Checked just above.
        let open = self.file.as_mut().expect("segment file is open");
        let mut done = 0;
        while done < bytes.len() {
            match open.file.write(&bytes[done..]) {
                Ok(0) => return Err(CommitError::Write(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    done += n;
                    *written += n;
                    open.dirty = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CommitError::Write(e)),
            }
        }
        if let Some(rate) = self.faults.write_bytes_per_sec {
            let nanos = bytes.len() as u128 * 1_000_000_000 / u128::from(rate.max(1));
            std::thread::sleep(std::time::Duration::from_nanos(nanos as u64));
        }
        self.shared
            .counters
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync_current(&mut self) -> io::Result<()> {
        let Some(open) = self.file.as_mut().filter(|f| f.dirty) else {
            return Ok(());
        };
        if self.faults.fail_sync_after.is_some_and(|n| self.syncs >= n) {
            return Err(io::Error::other("injected sync failure"));
        }
        self.syncs += 1;
        open.file.sync_data()?;
        open.dirty = false;
        self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes what may be deleted, in waves whose unlinks are made durable (directory
    /// fsync) before the next wave is chosen: a segment deleted in wave `k + 1` may hold
    /// the acks that kept a wave-`k` segment's messages dead.
    fn collect_garbage(&mut self) -> io::Result<()> {
        loop {
            let pass = {
                let mut st = self.shared.state.lock();
                let pass = st.index.gc_pass(self.below, self.synced);
                for &r in &pass.summarize {
                    st.summarize(r);
                }
                pass
            };
            if pass.deleted.is_empty() {
                return Ok(());
            }
            for &id in &pass.deleted {
                match std::fs::remove_file(segment::path(&self.shared.dir, id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                self.shared.readers.write().remove(&id);
            }
            self.dir.sync_all()?;
            self.shared
                .counters
                .segments_deleted
                .fetch_add(pass.deleted.len() as u64, Ordering::Relaxed);
        }
    }

    fn publish_progress(&mut self) {
        if self.synced > self.shared.synced.load(Ordering::Relaxed) {
            self.shared.synced.store(self.synced, Ordering::Release);
            self.tx.send_replace(Durable {
                synced: self.synced,
                failed: false,
                lost: self.shared.lost.max(),
            });
        }
        let mut p = self.shared.progress.lock();
        p.synced = self.synced;
        p.flushed = self.flushed;
        self.shared.progress_cv.notify_all();
    }

    fn fail(&mut self, e: io::Error) {
        tracing::error!(
            dir = %self.shared.dir.display(),
            error = %e,
            "message store: I/O failed; refusing all further writes (fail-stop)"
        );
        let _ = self.shared.cause.set(Arc::new(e));
        // Records synced before the failure (say, GC failed after a good sync) stay confirmed.
        self.shared.synced.store(self.synced, Ordering::Release);
        self.shared.failed.store(true, Ordering::Release);
        {
            let mut st = self.shared.state.lock();
            st.failed = true;
            st.pending = Vec::new();
            st.rolls.clear();
            st.targets.clear();
            st.target_set.clear();
            self.shared.full.store(false, Ordering::Relaxed);
            self.shared.room.notify_all();
        }
        self.tx.send_replace(Durable {
            synced: self.synced,
            failed: true,
            lost: self.shared.lost.max(),
        });
        let mut p = self.shared.progress.lock();
        p.synced = self.synced;
        p.failed = true;
        self.shared.progress_cv.notify_all();
    }
}

impl Drop for Committer {
    /// Runs when the thread ends, normally or by panic: wakes every blocking waiter for good
    /// (async waiters are woken by the watch sender's drop).
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("message store: committer panicked; refusing all further writes");
            self.shared.failed.store(true, Ordering::Release);
            self.shared.state.lock().failed = true;
            self.tx.send_modify(|d| d.failed = true);
        }
        let mut p = self.shared.progress.lock();
        p.done = true;
        p.failed |= self.shared.failed.load(Ordering::Acquire);
        self.shared.progress_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(segment: u64, offset: u64, len: u32) -> Location {
        Location {
            segment,
            offset,
            len,
        }
    }

    /// `find` maps a location into a buffer that starts mid-segment and rolls over twice.
    #[test]
    fn find_maps_locations_across_rolls() {
        // Segment 4 from offset 100: bytes 0..10; segment 5: 10..16; segment 6: 16..20.
        let buf: Vec<u8> = (0..20).collect();
        let rolls = [(10, 5), (16, 6)];
        let f = |l| find(&buf, 4, 100, &rolls, l);
        assert_eq!(f(loc(4, 100, 3)), Some(&buf[0..3]));
        assert_eq!(f(loc(4, 107, 3)), Some(&buf[7..10]));
        assert_eq!(f(loc(4, 108, 3)), None, "runs past the chunk");
        assert_eq!(f(loc(4, 99, 1)), None, "written before the batch");
        assert_eq!(f(loc(5, 0, 6)), Some(&buf[10..16]));
        assert_eq!(f(loc(6, 2, 2)), Some(&buf[18..20]));
        assert_eq!(f(loc(6, 3, 2)), None);
        assert_eq!(f(loc(7, 0, 1)), None);
    }
}
