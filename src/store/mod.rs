//! The persistent message log: an append-only segment log with group commit.
//!
//! Owns one directory of segment files (`NNNNNNNNNNNNNNNNNNNN.seg`) and nothing else. It
//! stores opaque payloads per queue name and knows nothing of AMQP: the broker encodes
//! exchange, routing key, properties, body and expiry into the payload, decides what is
//! persistent, and maps confirms and errors onto the wire. Definitions (queues, exchanges,
//! bindings) are not here; they live in sled. Design: `shared/design/storage.md`.
//!
//! # Model
//!
//! - [`MessageStore::append_publish`] stores one message for one queue and returns its
//!   [`MsgId`] (assigned by the store, unique across queues, increasing, continuing after
//!   the highest recovered id), its [`Location`] and its [`Seq`]. A fanout to three durable
//!   queues is three appends.
//! - [`ack`](MessageStore::ack), [`delivered`](MessageStore::delivered) and
//!   [`delete_queue`](MessageStore::delete_queue) are fire-and-forget: written in order with
//!   the next batch, never synced on their own account. A lost ack is a redelivery, never a
//!   loss; a lost delivered mark is a missing `redelivered` flag.
//! - [`MessageStore::open`] scans every segment once and returns the live messages of every
//!   queue in append order ([`Recovery`]), or, with [`StoreOptions::replay`], only their
//!   liveness, and [`Recovery::replay`] streams them from a second read of the segments that
//!   hold live ones (bounded memory, which the broker uses).
//!
//! # Confirms: a watermark, not a future per message
//!
//! Every record gets a sequence number ([`Seq`], from 1 at each open, in log order). The
//! committer publishes "every record up to `Seq` n is on disk" after each `fdatasync`, via a
//! `tokio::sync::watch` (for async waiters), an atomic (for polling) and a condvar (for
//! blocking waiters). A publisher keeps the `Seq` of its newest unconfirmed append and asks
//! its [`Watermark`] (one per channel, cloned once): confirming N messages costs no
//! allocation and no channel send per message, and one wake-up per batch.
//!
//! # Threads
//!
//! Appends take one short lock (`committer::State`): id, placement and encoding happen on
//! the caller's thread, no I/O, no await; safe to call from async code. All writes, syncs and
//! deletions happen on the `warren-store` thread (`committer.rs`). Reads (`read`) are `pread`s
//! on the caller's thread: use `spawn_blocking` for them from async code if the page cache
//! may be cold, or first try [`read_many_cached`](MessageStore::read_many_cached), which
//! never waits for the disk.
//!
//! # Other logs in the same group commit
//!
//! [`MessageStore::sync_with`] enlists a [`SyncTarget`] (a [`stream::StreamLog`]) in the
//! pending batch and gives it a [`Seq`]: the committer calls the target's `flush_and_sync`
//! after syncing its own segment and before the watermark passes that `Seq`, so stream
//! publishes are confirmed by the same watermark, in the same batches.
//!
//! Files: `segment.rs` (format), `index.rs` (liveness, and when a segment may be deleted),
//! `committer.rs` (batching, sync, watermark, GC), `outage.rs` (running out of space and
//! back), `recovery.rs` (open), `stream.rs` (stream queues' logs, separate directories and
//! format).

mod committer;
pub mod definitions;
mod index;
mod outage;
mod recovery;
mod segment;
pub mod stream;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use committer::{Committer, Counters, Durable, Progress, Shared, State};
use segment::Record;

/// Something else that must be on disk before a confirm: the committer calls
/// [`flush_and_sync`](SyncTarget::flush_and_sync) on its thread (`warren-store`) for every
/// target enlisted with [`MessageStore::sync_with`], once per batch.
pub trait SyncTarget: Send + Sync {
    /// Writes everything the target has buffered and makes it durable (fdatasync).
    ///
    /// # Errors
    /// Any I/O failure. The message store then fails as on its own write error (fail-stop:
    /// logged once, the watermark fails, every unconfirmed `Seq` is nacked).
    fn flush_and_sync(&self) -> io::Result<()>;
}

/// Identifies one stored message (one queue's copy). Assigned by the store; never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(pub u64);

/// Position of a record in the log's write order, for confirms. Valid within one open of
/// the store only (numbering restarts at 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

/// Where a message's record is on disk, for [`MessageStore::read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Segment id (the file name's number).
    pub segment: u64,
    /// Byte offset of the record in the segment.
    pub offset: u64,
    /// Size of the whole record (header included).
    pub len: u32,
}

/// The result of [`MessageStore::append_publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The message's id, for `ack`, `delivered` and recovery.
    pub id: MsgId,
    /// Where the record will be once written; readable after `seq` is confirmed.
    pub loc: Location,
    /// Confirmed (on disk) once the store's [`Watermark`] reaches it.
    pub seq: Seq,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Target segment file size; a record larger than this gets a segment of its own.
    /// Smaller segments return disk sooner; larger ones mean fewer files and syncs.
    pub segment_size: u64,
    /// Whether [`RecoveredMessage::payload`] is filled in. With `false`, recovery keeps no
    /// payload in memory and the broker reads bodies back with [`MessageStore::read`].
    pub recover_payloads: bool,
    /// Leave [`Recovery::queues`] empty (`recover_payloads` is then moot) and stream the
    /// live messages with [`Recovery::replay`] instead: memory at open stays bounded (two bits per message)
    /// however many messages there are, at the cost of reading the segments that hold live
    /// messages a second time.
    pub replay: bool,
    /// Fault injection for tests. Checked once per write and per sync, never per record.
    pub faults: Faults,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_size: 8 << 20,
            recover_payloads: true,
            replay: false,
            faults: Faults::default(),
        }
    }
}

/// Injected I/O failures, for fail-stop tests. The default injects nothing.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Let this many segment writes succeed, then fail every one.
    pub fail_write_after: Option<u64>,
    /// Let this many segment `fdatasync`s succeed, then fail every one.
    pub fail_sync_after: Option<u64>,
    /// While this is set, every segment write fails with "no space left on device"
    /// (`ErrorKind::StorageFull`): a disk that fills and empties when the test says.
    pub no_space: Option<Arc<AtomicBool>>,
    /// A slow disk: each segment write also sleeps as long as writing its bytes at this
    /// many bytes per second would take, so appenders can outrun the committer.
    pub write_bytes_per_sec: Option<u64>,
}

/// What [`MessageStore::open`] found on disk.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Per queue name, its live (not acked, queue not deleted) messages in append order.
    /// Queues without live messages are absent. Empty with [`StoreOptions::replay`].
    pub queues: HashMap<String, Vec<RecoveredMessage>>,
    /// Every damaged segment, each also logged once with `warn!`. Normally empty, or one
    /// torn tail after a crash.
    pub damage: Vec<Damage>,
    /// With [`StoreOptions::replay`]: the segments holding live messages, oldest first.
    pub(crate) live: Vec<index::Liveness>,
    pub(crate) dir: std::path::PathBuf,
}

impl Recovery {
    /// With [`StoreOptions::replay`]: calls `f` with the queue name, the message and its
    /// payload for every live message, in append order, reading each segment that holds
    /// one again, one at a time. The payload borrows that segment's buffer: copy what is
    /// kept. Call it once, right after open (a segment whose messages are all acked in the
    /// meantime may be gone).
    ///
    /// # Errors
    /// A segment cannot be read.
    pub fn replay(&mut self, mut f: impl FnMut(&str, RecoveredMessage, &[u8])) -> io::Result<()> {
        for seg in std::mem::take(&mut self.live) {
            let data = std::fs::read(segment::path(&self.dir, seg.segment))?;
            let mut pos = 0;
            // The scan at open stopped at the first bad record of a segment; so does this.
            while let Ok((rec, total)) = segment::decode(&data, pos) {
                if let Record::Publish { id, payload, queue } = rec
                    && seg.is_live(id)
                {
                    let payload = &data[payload];
                    let m = RecoveredMessage {
                        id: MsgId(id),
                        loc: Location {
                            segment: seg.segment,
                            offset: pos as u64,
                            len: total as u32,
                        },
                        payload: None,
                        head: head_of(payload),
                        delivered: seg.is_delivered(id),
                    };
                    f(queue, m, payload);
                }
                pos += total;
            }
        }
        Ok(())
    }
}

/// `read_exact_at` from the page cache only: `WouldBlock` when any part of the range would
/// have to come from the disk (`preadv2` with `RWF_NOWAIT`). Where the kernel or the file
/// system does not support the flag, it simply reads.
#[cfg(target_os = "linux")]
fn cached_read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        let slice = &mut [io::IoSliceMut::new(&mut buf[done..])];
        match preadv2(file, slice, at, ReadWriteFlags::NOWAIT) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(Errno::INTR) => {}
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                return file.read_exact_at(&mut buf[done..], at);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
use FileExt::read_exact_at as cached_read_exact_at;

/// The payload of the Publish record of `len` bytes at `pos` in `buf`, checksum verified.
fn publish_payload(buf: &Bytes, pos: usize, len: u32) -> io::Result<Bytes> {
    let rec = buf.slice(pos..(pos + len as usize).min(buf.len()));
    match segment::decode(&rec, 0) {
        Ok((Record::Publish { payload, .. }, total)) if total == rec.len() => {
            Ok(rec.slice(payload))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no publish record at this location",
        )),
        Err(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
    }
}

/// How many leading payload bytes recovery reports for every message.
pub const HEAD_BYTES: usize = 8;

/// The first [`HEAD_BYTES`] bytes of a payload, zero-padded.
fn head_of(payload: &[u8]) -> [u8; HEAD_BYTES] {
    let mut head = [0; HEAD_BYTES];
    let n = payload.len().min(HEAD_BYTES);
    head[..n].copy_from_slice(&payload[..n]);
    head
}

/// One live message found by recovery.
#[derive(Clone, Debug)]
pub struct RecoveredMessage {
    /// Its id (acks refer to it).
    pub id: MsgId,
    /// Where its record is, for [`MessageStore::read`].
    pub loc: Location,
    /// The payload, if [`StoreOptions::recover_payloads`]. It is a slice of the segment's
    /// bytes as read at open, so it keeps that segment's buffer alive: copy it, or drop it
    /// and `read` it back later, if memory matters.
    pub payload: Option<Bytes>,
    /// The payload's first [`HEAD_BYTES`] bytes (zero-padded), with or without
    /// `recover_payloads`: room for a small fixed-size header the caller keeps there, so it
    /// can place a message without reading its record.
    pub head: [u8; HEAD_BYTES],
    /// A Delivered mark was written for it: deliver it with `redelivered = true`.
    pub delivered: bool,
}

/// A bad record found by recovery; see `recovery.rs` for what is done about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment.
    pub segment: u64,
    /// Offset of the first bad record; everything before it was used.
    pub offset: u64,
    /// Bytes from `offset` to the end of the file, not used.
    pub dropped_bytes: u64,
    /// What was wrong with the record.
    pub reason: &'static str,
    /// The segment was the newest (a crash's torn tail) and was truncated at `offset`.
    /// Older damaged segments are left as they are and skipped from `offset` on.
    pub truncated: bool,
}

/// Errors of the message store. Cloneable: one I/O failure fails many confirms.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// A write, sync or delete failed. Records not confirmed before it never will be; the
    /// store refuses all further writes (fail-stop). The broker answers 541.
    #[error("message store I/O error: {0}")]
    Io(Arc<io::Error>),
    /// The store failed earlier (see the logged cause) and refuses writes until reopened.
    #[error("message store failed after an earlier I/O error; reopen it")]
    Failed,
    /// The filesystem is full (or the quota used up): this append is refused, or this
    /// record's confirm is lost, until space returns; the store then goes on by itself.
    #[error("message store is out of space ({0}); refusing writes until space returns")]
    NoSpace(Arc<io::Error>),
    /// The store was closed.
    #[error("message store is closed")]
    Closed,
    /// A record must fit in 4 GiB.
    #[error("message of {0} bytes is too large for the store")]
    TooLarge(usize),
    /// A queue name must fit in 65535 bytes.
    #[error("queue name of {0} bytes is too long for the store")]
    QueueNameTooLong(usize),
}

/// A snapshot of the store's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Publish records appended since open.
    pub appends: u64,
    /// Records of any kind appended since open.
    pub records: u64,
    /// Batches the committer has written.
    pub batches: u64,
    /// `fdatasync` calls on segment files (directory syncs not counted).
    pub syncs: u64,
    /// Bytes written to segment files.
    pub bytes_written: u64,
    /// Segment files deleted since open (by recovery not counted).
    pub segments_deleted: u64,
    /// Segments the store currently tracks, including the one being written.
    pub segments: usize,
    /// Encoded bytes waiting for the committer.
    pub pending_bytes: usize,
    /// Everything up to this sequence number is on disk.
    pub synced: Seq,
}

/// The durable watermark, for confirms. Cheap to clone (keep one per channel); see the
/// module docs.
#[derive(Clone)]
pub struct Watermark {
    rx: watch::Receiver<Durable>,
    shared: Arc<Shared>,
}

impl Watermark {
    /// Everything up to this sequence number is on disk.
    pub fn synced(&self) -> Seq {
        Seq(self.shared.synced.load(Ordering::Acquire))
    }

    /// Without waiting: `Ok(true)` if record `seq` is on disk, `Ok(false)` if not yet.
    ///
    /// # Errors
    /// The store failed before `seq` reached the disk: it never will (nack it); or
    /// [`StoreError::NoSpace`]: its confirm was lost for lack of space (nack it), even if it
    /// reaches the disk later.
    pub fn status(&self, seq: Seq) -> Result<bool, StoreError> {
        if self.shared.synced.load(Ordering::Acquire) >= seq.0 {
            // One relaxed-cost load unless space ever ran out.
            if self.shared.lost.contains(seq.0) {
                return Err(self.shared.no_space());
            }
            return Ok(true);
        }
        if self.shared.lost.max() >= seq.0 {
            return Err(self.shared.no_space());
        }
        if self.shared.failed.load(Ordering::Acquire) {
            // The committer stops before it sets `failed`, so `synced` is final now.
            if self.shared.synced.load(Ordering::Acquire) >= seq.0 {
                return Ok(true);
            }
            return Err(self.shared.failure());
        }
        Ok(false)
    }

    /// Waits until record `seq` is on disk (then [`status`](Self::status) says whether its
    /// confirm stands) or its confirm is lost. Cancel-safe.
    ///
    /// # Errors
    /// [`StoreError::NoSpace`] if its confirm was lost for lack of space (it is not on disk
    /// yet and may never be), [`StoreError::Io`] if the store failed before `seq` reached the disk,
    /// [`StoreError::Closed`] if it was closed without writing it (only after a failure or a
    /// committer panic: a normal close writes everything).
    pub async fn wait(&mut self, seq: Seq) -> Result<(), StoreError> {
        loop {
            let d = *self.rx.borrow_and_update();
            if d.synced >= seq.0 {
                return Ok(());
            }
            if d.lost >= seq.0 {
                return Err(self.shared.no_space());
            }
            if d.failed {
                return Err(self.shared.failure());
            }
            if self.rx.changed().await.is_err() {
                // The committer is gone; its last value is final.
                let d = *self.rx.borrow();
                return if d.synced >= seq.0 {
                    Ok(())
                } else if d.failed {
                    Err(self.shared.failure())
                } else {
                    Err(StoreError::Closed)
                };
            }
        }
    }

    /// Blocks the calling thread until record `seq` is on disk. Not for async tasks.
    ///
    /// # Errors
    /// As [`wait`](Watermark::wait).
    pub fn wait_blocking(&self, seq: Seq) -> Result<(), StoreError> {
        let mut p = self.shared.progress.lock();
        loop {
            if p.synced >= seq.0 {
                return Ok(());
            }
            if p.lost >= seq.0 {
                return Err(self.shared.no_space());
            }
            if p.failed {
                return Err(self.shared.failure());
            }
            if p.done {
                return Err(StoreError::Closed);
            }
            self.shared.progress_cv.wait(&mut p);
        }
    }
}

/// An open message log. Share it behind an `Arc`; every method takes `&self`.
///
/// Dropping it (or [`close`](MessageStore::close)) writes and syncs everything pending,
/// then joins the committer thread; that blocks the dropping thread for one batch.
pub struct MessageStore {
    shared: Arc<Shared>,
    rx: watch::Receiver<Durable>,
    committer: Option<JoinHandle<()>>,
    /// Held (flock) for as long as the store is open; released by drop after the committer
    /// has stopped (fields drop after `Drop::drop` ran).
    _lock: File,
}

/// Name of the lock file in the store's directory (not a segment, so recovery ignores it).
const LOCK_FILE: &str = "store.lock";

impl MessageStore {
    /// Opens (creating if needed) the store in `dir`, recovers it, deletes dead segments,
    /// and starts the committer thread. New records go to a new segment.
    ///
    /// Damaged records do not fail the open: see [`Recovery::damage`].
    ///
    /// # Errors
    /// `WouldBlock` if another open store (in this or another process) holds the directory;
    /// otherwise the directory cannot be created or listed, a segment cannot be read, or a
    /// torn segment cannot be truncated.
    pub fn open(dir: &Path, opts: StoreOptions) -> io::Result<(MessageStore, Recovery)> {
        std::fs::create_dir_all(dir)?;
        // Two stores appending to one directory would interleave ids and delete each other's
        // segments. The lock is the OS's (flock), so it dies with the process.
        let lock = File::create(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("message store {} is in use by another store", dir.display()),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let rec = recovery::recover(dir, &opts)?;
        let dir_file = File::open(dir)?;
        let (tx, rx) = watch::channel(Durable {
            synced: 0,
            failed: false,
            lost: 0,
        });
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::new(
                rec.index,
                rec.next_seg,
                rec.next_msg,
                opts.segment_size,
            )),
            work: Condvar::new(),
            full: AtomicBool::new(false),
            room: Condvar::new(),
            synced: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            cause: Default::default(),
            lost: Default::default(),
            space_cause: Default::default(),
            unwritten: Default::default(),
            progress: Mutex::new(Progress::default()),
            progress_cv: Condvar::new(),
            readers: RwLock::new(HashMap::new()),
            counters: Counters::default(),
        });
        let committer = Committer::new(shared.clone(), tx, dir_file, rec.next_seg, opts.faults);
        let handle = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || committer.run())?;
        let store = MessageStore {
            shared,
            rx,
            committer: Some(handle),
            _lock: lock,
        };
        Ok((store, rec.recovery))
    }

    /// The directory this store owns.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends a message for `queue`. Returns at once (no I/O); the message is durable when
    /// the [`Watermark`] reaches the returned `seq`, and readable with [`read`](Self::read)
    /// from then on.
    ///
    /// # Errors
    /// [`StoreError::Failed`] after an I/O failure, [`StoreError::Closed`] while closing,
    /// [`StoreError::TooLarge`] / [`StoreError::QueueNameTooLong`] for oversized input.
    pub fn append_publish(&self, queue: &str, payload: &[u8]) -> Result<Appended, StoreError> {
        if queue.len() > usize::from(u16::MAX) {
            return Err(StoreError::QueueNameTooLong(queue.len()));
        }
        if segment::publish_len(queue, payload) > u32::MAX as usize {
            return Err(StoreError::TooLarge(payload.len()));
        }
        // The expensive part of the checksum, outside the lock.
        let crc = segment::publish_crc_prefix(queue, payload);
        let appended = {
            let mut st = self.shared.state.lock();
            let appended = st.publish(crc, queue, payload)?;
            if st.pending.len() >= committer::PENDING_MAX {
                self.shared.full.store(true, Ordering::Relaxed);
            }
            appended
        };
        self.shared.work.notify_one();
        Ok(appended)
    }

    /// Assigns the next [`Seq`] without writing a record and enlists `target` in the pending
    /// batch (each target once per batch; the same target again costs one comparison). The
    /// committer calls `target.flush_and_sync()` after writing (and, if needed, syncing) its
    /// own records of the batch and before the [`Watermark`] reaches the returned `Seq`:
    /// whatever the target buffered before this call is durable once it is confirmed. A
    /// batch holding only targets still wakes the committer.
    ///
    /// Use: `stream.append(..)` then `store.sync_with(stream.clone())`, and confirm the
    /// publish when the watermark passes the `Seq`, like a message-log publish.
    ///
    /// # Errors
    /// [`StoreError::Failed`] after an I/O failure (including a target's), or
    /// [`StoreError::Closed`] while closing.
    pub fn sync_with(&self, target: Arc<dyn SyncTarget>) -> Result<Seq, StoreError> {
        let seq = self.shared.state.lock().sync_with(target)?;
        self.shared.work.notify_one();
        Ok(seq)
    }

    /// Whether the pending batch is full: an appender should then
    /// [`wait_for_room`](Self::wait_for_room) before appending more. One relaxed load.
    pub fn backlogged(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }

    /// Blocks the calling thread until the committer has taken the pending batch (or the
    /// store failed or is closing), so appenders cannot run ahead of the disk by more than
    /// one batch. Not for async tasks without `block_in_place`.
    pub fn wait_for_room(&self) {
        let mut st = self.shared.state.lock();
        while st.pending.len() >= committer::PENDING_MAX
            && !st.failed
            && !st.closing
            && st.out_of_space.is_none()
        {
            self.shared.room.wait(&mut st);
        }
    }

    /// Records that message `id` is acked (dead). Written with the next batch, never synced
    /// on its own. Unknown, already acked or deleted ids are ignored (nothing is written).
    pub fn ack(&self, id: MsgId) {
        self.shared.state.lock().ack(id.0);
        self.shared.work.notify_one();
    }

    /// Records that message `id` was delivered, so recovery reports it as such. Written at
    /// most once per message; ignored for dead ids. Never synced on its own.
    pub fn delivered(&self, id: MsgId) {
        self.shared.state.lock().delivered(id.0);
        self.shared.work.notify_one();
    }

    /// Kills every message of `queue` appended before this call (queue.delete, and purge
    /// when the queue has no unacked messages; a purge that keeps unacked ones should ack
    /// the purged ids instead). Later appends to the same name are unaffected.
    pub fn delete_queue(&self, queue: &str) {
        self.shared.state.lock().delete_queue(queue);
        self.shared.work.notify_one();
    }

    /// The sequence number of the newest Publish record appended so far: once the watermark
    /// reaches it, every message appended before this call is readable. (Not the newest
    /// record of any kind: a batch of only acks is never synced, so the watermark might
    /// never reach one.)
    pub fn published(&self) -> Seq {
        Seq(self.shared.state.lock().last_publish)
    }

    /// A watermark for awaiting confirms.
    pub fn watermark(&self) -> Watermark {
        Watermark {
            rx: self.rx.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Blocks until every record appended before the call (acks included) is written and
    /// synced, and a garbage collection has run after it. For shutdown paths and tests; the
    /// publish path uses the watermark.
    ///
    /// # Errors
    /// The store failed (or had failed) before it could.
    pub fn flush(&self) -> Result<(), StoreError> {
        let ticket = {
            let mut st = self.shared.state.lock();
            if st.failed {
                return Err(self.shared.failure());
            }
            if let Some(e) = &st.out_of_space {
                return Err(StoreError::NoSpace(e.clone()));
            }
            st.flush_req += 1;
            st.flush_req
        };
        self.shared.work.notify_one();
        let mut p = self.shared.progress.lock();
        loop {
            if p.flushed >= ticket {
                return Ok(());
            }
            if p.failed {
                return Err(self.shared.failure());
            }
            if p.out_of_space {
                return Err(self.shared.no_space());
            }
            if p.done {
                return Err(StoreError::Closed);
            }
            self.shared.progress_cv.wait(&mut p);
        }
    }

    /// Reads back the payload of the message at `loc` with one `pread`.
    ///
    /// Safe to call at any time from any thread: the record's checksum is verified, so a
    /// record that is not yet written (or whose segment was deleted) is an error, never
    /// wrong data. It is guaranteed to succeed once the append's `seq` is confirmed (or after
    /// [`flush`](Self::flush)) and until the message is acked or its queue deleted.
    ///
    /// While space is out, a record the disk has not taken yet is read from memory.
    ///
    /// # Errors
    /// `NotFound` if the segment is gone (or not created yet); `UnexpectedEof` if the record
    /// is not written yet; `InvalidData` if the bytes at `loc` are not a Publish record.
    pub fn read(&self, loc: Location) -> io::Result<Bytes> {
        let read = self.read_one(loc, &FileExt::read_exact_at);
        if read.is_ok() || self.shared.lost.max() == 0 {
            return read;
        }
        // Space ran out at some point: the record may be one the disk did not take yet.
        match self.shared.unwritten_record(loc) {
            Some(rec) => publish_payload(&Bytes::from(rec), 0, loc.len),
            // Or it was written in the meantime.
            None => read.or_else(|_| self.read_one(loc, &FileExt::read_exact_at)),
        }
    }

    /// [`read`](Self::read) with the `pread` supplied.
    fn read_one(
        &self,
        loc: Location,
        read_at: &impl Fn(&File, &mut [u8], u64) -> io::Result<()>,
    ) -> io::Result<Bytes> {
        let file = self.reader(loc.segment)?;
        let mut buf = vec![0; loc.len as usize];
        read_at(&file, &mut buf, loc.offset)?;
        publish_payload(&Bytes::from(buf), 0, loc.len)
    }

    /// Reads back several payloads, as [`read`](Self::read) would one by one, but with one
    /// `pread` per run of nearby records in the same segment (queues read back in log
    /// order, so their records are mostly adjacent). The payloads of one run share its
    /// buffer. One result per location, in order.
    pub fn read_many(&self, locs: &[Location]) -> Vec<io::Result<Bytes>> {
        self.read_runs(locs, FileExt::read_exact_at)
    }

    /// As [`read_many`](Self::read_many), but only from the page cache: a run of records
    /// not wholly cached comes back as `WouldBlock` errors (one per record) instead of
    /// waiting for the disk, so a caller on an async worker can take those to a thread
    /// that may block. Where the kernel cannot tell (`RWF_NOWAIT` unsupported), it reads.
    pub fn read_many_cached(&self, locs: &[Location]) -> Vec<io::Result<Bytes>> {
        self.read_runs(locs, cached_read_exact_at)
    }

    /// `read_many` with the `pread` of one run (the whole buffer, at an offset) supplied.
    fn read_runs(
        &self,
        locs: &[Location],
        read_at: impl Fn(&File, &mut [u8], u64) -> io::Result<()>,
    ) -> Vec<io::Result<Bytes>> {
        /// Bytes between two records that are still read rather than skipped.
        const MAX_GAP: u64 = 16 << 10;
        /// Largest single read.
        const MAX_SPAN: u64 = 1 << 20;
        let mut out = Vec::with_capacity(locs.len());
        let mut i = 0;
        while i < locs.len() {
            let first = locs[i];
            let mut end = first.offset + u64::from(first.len);
            let mut j = i + 1;
            while let Some(next) = locs.get(j) {
                let next_end = next.offset + u64::from(next.len);
                if next.segment != first.segment
                    || next.offset < end
                    || next.offset - end > MAX_GAP
                    || next_end - first.offset > MAX_SPAN
                {
                    break;
                }
                end = next_end;
                j += 1;
            }
            let run = &locs[i..j];
            let read = self.reader(first.segment).and_then(|file| {
                let mut buf = vec![0; (end - first.offset) as usize];
                read_at(&file, &mut buf, first.offset)?;
                Ok(Bytes::from(buf))
            });
            match read {
                Ok(buf) => out.extend(
                    run.iter()
                        .map(|l| publish_payload(&buf, (l.offset - first.offset) as usize, l.len)),
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.extend(
                    run.iter()
                        .map(|_| Err(io::Error::from(io::ErrorKind::WouldBlock))),
                ),
                // Part of the run may be unwritten yet: fall back to one read per record.
                Err(_) => out.extend(run.iter().map(|&l| self.read_one(l, &read_at))),
            }
            i = j;
        }
        out
    }

    /// The read handle of a segment. The open happens under the write lock so that it cannot
    /// interleave with GC (unlink, then remove the entry under the write lock): a handle is
    /// either opened before the unlink and then removed, or its open fails.
    fn reader(&self, segment: u64) -> io::Result<Arc<File>> {
        if let Some(f) = self.shared.readers.read().get(&segment) {
            return Ok(f.clone());
        }
        let mut readers = self.shared.readers.write();
        if let Some(f) = readers.get(&segment) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment::path(&self.shared.dir, segment))?);
        readers.insert(segment, f.clone());
        Ok(f)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        let st = self.shared.state.lock();
        StoreStats {
            appends: st.appends,
            records: st.records,
            batches: c.batches.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            segments: st.index.segments().len(),
            pending_bytes: st.pending.len(),
            synced: Seq(self.shared.synced.load(Ordering::Acquire)),
        }
    }

    /// Writes and syncs everything pending, stops the committer and waits for it.
    ///
    /// # Errors
    /// The store had failed: some appended records may not be on disk.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown();
        if self.shared.failed.load(Ordering::Acquire) {
            Err(self.shared.failure())
        } else {
            Ok(())
        }
    }

    fn shutdown(&mut self) {
        let Some(handle) = self.committer.take() else {
            return;
        };
        self.shared.state.lock().closing = true;
        self.shared.work.notify_one();
        self.shared.room.notify_all();
        if handle.join().is_err() {
            // Already logged by the committer's drop guard.
            tracing::error!("message store: committer thread panicked");
        }
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}
