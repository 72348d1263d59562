//! The log of one stream queue (`x-queue-type: stream`): an append-only sequence of records,
//! each with a 64-bit offset (0, 1, 2, ... never reused) and a timestamp, kept on disk in
//! segment files and read by offset without removing anything.
//!
//! Owns one directory per stream (the broker chooses it) holding segment files named by the
//! offset of their first record (`NNNNNNNNNNNNNNNNNNNN.seg`, zero-padded so that lexical and
//! numeric order agree), and nothing else. It stores opaque payloads and knows nothing of
//! AMQP: the broker encodes properties, exchange and routing key into the payload, parses
//! `x-stream-offset`, and maps errors onto the wire. It talks to the message store only
//! through [`SyncTarget`]: the broker appends here, then calls
//! [`MessageStore::sync_with`](super::MessageStore::sync_with), and the message store's
//! committer thread calls [`StreamLog::flush_and_sync`] in its next batch, so stream
//! publishes are confirmed by the same watermark as message-log publishes. Nothing else
//! flushes a stream: the broker calls `sync_with` after every append (or run of appends),
//! confirm mode or not, or the records stay pending and unreadable. It must not keep
//! the stream in memory: reads are `pread`s (the page cache does the caching), and the index
//! is sparse.
//!
//! # On-disk format
//!
//! A segment is a sequence of records, all integers little-endian:
//!
//! ```text
//! [crc u32][len u32][offset u64][timestamp_ms u64][payload: len bytes]
//! ```
//!
//! The CRC-32 (IEEE, crc32fast) is computed over `payload ‖ len ‖ offset ‖ timestamp_ms`
//! (the payload first, so an appender checksums it before taking the lock where the offset
//! is assigned). The first record of a segment has the offset in its name and each record's
//! offset is the previous one's plus one; recovery checks both, so stale or misplaced bytes
//! are never taken for records. A segment is `fdatasync`ed before the next one is created,
//! so after a crash only the newest segment can have a torn tail.
//!
//! # Memory
//!
//! Per segment: its offsets, sizes, newest timestamp, a file handle, and a sparse index of
//! one entry (offset, file position, newest timestamp in the granule; 24 bytes) per
//! [`GRANULE`] bytes of records. 10 million 16-byte records (400 MB on disk) need about
//! 6,100 entries (150 KiB); 10 million 1 KiB records (10 GB) about 160,000 (3.7 MiB).
//!
//! # Threads and locks
//!
//! - `append` (any thread, async tasks included): the `pending` lock for a few hundred
//!   nanoseconds, to take an offset and copy the encoded record into the pending buffer.
//! - `flush_and_sync` (normally the message store's `warren-store` thread): the `writer`
//!   lock for the whole write + sync, so flushes are serialized; it swaps the pending buffer
//!   with its own (double buffering, as in `committer.rs`) and holds `pending` only for the
//!   swap. The `meta` write lock is taken only after the sync, to publish the new records,
//!   and again for retention.
//! - Readers (`read`, `offset_for_timestamp`, `stats`): the `meta` read lock to find a file
//!   and position, then `pread` without any lock. A segment removed by retention meanwhile
//!   stays readable through the handle they cloned (an unlinked file lives while open).
//!
//! Lock order: `writer`, then `pending` or `meta`; `pending` and `meta` are never held
//! together.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::SyncTarget;

/// RabbitMQ's default for `x-stream-max-segment-size-bytes`.
pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 500_000_000;

/// Bytes of records per sparse-index entry (at least; a record never straddles entries).
/// A read skips at most this much before the offset it wants.
pub const GRANULE: u64 = 64 << 10;

/// Pending bytes past which a publisher should wait (stop reading its socket, or await
/// confirms) before appending more: the message store's own bound for its pending batch.
pub const PENDING_MAX: usize = super::committer::PENDING_MAX;

/// crc + len + offset + timestamp.
const HEADER: usize = 24;

/// Bytes read at a time by recovery's scan.
const SCAN_WINDOW: usize = 1 << 20;

/// Largest single `pread` of `read` beyond the granule it starts in.
const READ_MAX: usize = 4 << 20;

const SUFFIX: &str = ".seg";
const DIGITS: usize = 20;

/// How a stream is kept: the stream's queue arguments (or policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// `x-stream-max-segment-size-bytes`: a new segment starts (at a record boundary) once
    /// the current one would grow past this; a larger record gets a segment of its own.
    pub max_segment_bytes: u64,
    /// `x-max-length-bytes`: retention by total size.
    pub max_length_bytes: Option<u64>,
    /// `x-max-age` in milliseconds: retention by age.
    pub max_age_ms: Option<u64>,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            max_segment_bytes: DEFAULT_MAX_SEGMENT_BYTES,
            max_length_bytes: None,
            max_age_ms: None,
        }
    }
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// Its offset in the stream.
    pub offset: u64,
    /// The timestamp given to [`StreamLog::append`].
    pub timestamp_ms: u64,
    /// The payload; a slice of the buffer of the `pread` it came from (records of one read
    /// share it).
    pub payload: Bytes,
}

/// Where a sequential reader stopped: the file position of the record at `offset` in the
/// segment whose first offset is `base`. Handed back to [`StreamLog::read_at`], it saves
/// re-reading from the sparse index's granule (up to 64 KiB) on every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    offset: u64,
    base: u64,
    pos: u64,
}

/// One entry of a segment's sparse index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Offset of the granule's first record.
    offset: u64,
    /// Its position in the segment file.
    pos: u64,
    /// The newest timestamp of the granule's records.
    max_ts: u64,
}

/// A segment as readers see it: committed (synced) records only.
struct Segment {
    /// Offset of its first record (its file name).
    base: u64,
    /// Offset after its last committed record (`base` when empty).
    end: u64,
    /// Committed bytes (valid records; a damaged older segment may be longer on disk).
    bytes: u64,
    /// Newest timestamp of its records (0 when empty); retention by age looks at it.
    max_ts: u64,
    /// Read (and, for the active segment, write) handle, opened once.
    file: Arc<File>,
    /// Sparse index, by offset and position (both increasing); empty iff the segment is.
    index: Vec<Entry>,
}

/// Everything readers look at, under `StreamLog::meta`.
struct Meta {
    /// Oldest first; the last is the active one (being appended to).
    segments: VecDeque<Segment>,
    /// Sum of `Segment::bytes`.
    bytes: u64,
}

/// Appenders' side of the double buffer, under `StreamLog::pending`.
struct Pending {
    /// Encoded records not yet taken by a flush.
    buf: Vec<u8>,
    /// The offset the next append gets.
    next: u64,
}

/// The segment a flush appends to.
struct Active {
    base: u64,
    file: Arc<File>,
    /// Bytes in the file (written, synced or about to be).
    written: u64,
    /// Offset after the last record written.
    end: u64,
    max_ts: u64,
    /// The newest index entry (the granule records go into while it is not full).
    granule: Option<Entry>,
}

/// The flusher's state, under `StreamLog::writer` (held for a whole flush).
struct Writer {
    /// The flusher's half of the double buffer; empty between flushes.
    buf: Vec<u8>,
    /// `None` until the first segment file exists.
    active: Option<Active>,
    dir: File,
    /// Fail-stop: the first write or sync error; every later flush fails with it.
    failed: Option<Arc<io::Error>>,
}

/// What one flush changed in one segment, applied to `Meta` after the sync.
struct SegUpdate {
    base: u64,
    /// `Some` for a segment this flush created.
    file: Option<Arc<File>>,
    end: u64,
    bytes: u64,
    max_ts: u64,
    /// New entries, and (first) the carried-over granule if it grew: upserted by `pos`.
    entries: Vec<Entry>,
}

/// The log of one stream. Share it behind the `Arc` that [`open`](StreamLog::open) returns;
/// every method takes `&self`.
pub struct StreamLog {
    dir: PathBuf,
    opts: StreamOptions,
    /// Appenders only; see the module docs for the lock order.
    pending: Mutex<Pending>,
    /// Mirror of `pending.buf.len()` for lock-free back-pressure checks.
    pending_bytes: AtomicUsize,
    /// Signalled when a flush takes the pending buffer (or the log stops taking records):
    /// publishers waiting in [`wait_for_room`](StreamLog::wait_for_room) go on.
    room: parking_lot::Condvar,
    /// Flushers only.
    writer: Mutex<Writer>,
    /// Readers (shared) and the flusher (exclusive, briefly, after each sync).
    meta: RwLock<Meta>,
    /// Offsets below this are synced and readable. Set after `meta` is updated.
    committed: AtomicU64,
    /// Oldest offset kept; mirror of `meta.segments[0].base`.
    first: AtomicU64,
    /// First offset of the newest committed flush (this log's "chunk").
    last_chunk: AtomicU64,
    /// The flusher -> consumers waiting at the tail: the committed offset.
    tx: watch::Sender<u64>,
    /// `delete` ran: flushes do nothing, reads find nothing.
    deleted: AtomicBool,
    /// Deleted or failed: appends still get offsets but are not buffered (nothing will
    /// ever write them; this bounds the memory of a publisher that has not noticed yet).
    refusing: AtomicBool,
}

impl StreamLog {
    /// Opens the stream in `dir`, creating the directory if needed, or recovers it: one
    /// sequential scan of every segment, checking every record's CRC and offset. A torn or
    /// corrupt tail of the newest segment is truncated at the first bad record (and logged
    /// with `warn!`); damage in an older segment is logged and the rest of that segment is
    /// skipped (its offsets become a gap that reads step over). Appends continue at the
    /// offset after the last good record.
    ///
    /// # Errors
    /// The directory cannot be created or listed, or a segment cannot be read or truncated.
    pub fn open(dir: &Path, opts: StreamOptions) -> io::Result<Arc<StreamLog>> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // The stream's directory entry must be durable before any confirm depends on
            // the files in it.
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
        }
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(base) = entry.file_name().to_str().and_then(parse_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut segments: VecDeque<Segment> = VecDeque::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            if let Some(prev) = segments.back()
                && base < prev.end
            {
                tracing::warn!(
                    dir = %dir.display(),
                    segment = base,
                    previous_end = prev.end,
                    "stream log: segment overlaps the previous one; ignoring it"
                );
                continue;
            }
            segments.push_back(recover_segment(dir, base, i + 1 == bases.len())?);
        }
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let next = segments.back().map_or(0, |s| s.end);
        let first = segments.front().map_or(next, |s| s.base);
        let active = segments.back().map(|s| Active {
            base: s.base,
            file: s.file.clone(),
            written: s.bytes,
            end: s.end,
            max_ts: s.max_ts,
            granule: s.index.last().copied(),
        });
        let (tx, _) = watch::channel(next);
        let log = Arc::new(StreamLog {
            dir: dir.to_path_buf(),
            opts: StreamOptions {
                max_segment_bytes: opts.max_segment_bytes.max(1),
                ..opts
            },
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                next,
            }),
            pending_bytes: AtomicUsize::new(0),
            room: parking_lot::Condvar::new(),
            writer: Mutex::new(Writer {
                buf: Vec::new(),
                active,
                dir: File::open(dir)?,
                failed: None,
            }),
            meta: RwLock::new(Meta { segments, bytes }),
            committed: AtomicU64::new(next),
            first: AtomicU64::new(first),
            // Chunk boundaries are not on disk: after a reopen the last chunk is the last
            // record.
            last_chunk: AtomicU64::new(next.saturating_sub(1).max(first)),
            tx,
            deleted: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
        });
        // Limits may have been lowered since the stream was last open.
        log.apply_retention();
        Ok(log)
    }

    /// The stream's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Assigns the next offset to a record and encodes it into the pending buffer: no I/O,
    /// one short lock, no allocation beyond the buffer's growth. Safe to call from async
    /// code. The record is readable (and durable) once a [`flush_and_sync`] has run after
    /// this call, normally the message store's next batch after
    /// [`sync_with`](super::MessageStore::sync_with).
    ///
    /// Check [`pending_bytes`](Self::pending_bytes) for back-pressure.
    ///
    /// # Panics
    /// If `payload` is 4 GiB or larger.
    ///
    /// [`flush_and_sync`]: StreamLog::flush_and_sync
    pub fn append(&self, timestamp_ms: u64, payload: &[u8]) -> u64 {
        self.append_parts(timestamp_ms, &[payload])
    }

    /// [`append`](Self::append) of the concatenation of `parts`, copied once, straight into
    /// the pending buffer.
    ///
    /// # Panics
    /// If the parts add up to 4 GiB or more.
    pub fn append_parts(&self, timestamp_ms: u64, parts: &[&[u8]]) -> u64 {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(total).expect("stream record payload under 4 GiB");
        // The expensive part of the checksum, outside the lock.
        let mut crc = crc32fast::Hasher::new();
        for part in parts {
            crc.update(part);
        }
        let mut p = self.pending.lock();
        let offset = p.next;
        p.next += 1;
        if self.refusing.load(Ordering::Relaxed) {
            return offset;
        }
        encode(&mut p.buf, crc, len, offset, timestamp_ms, parts);
        self.pending_bytes.store(p.buf.len(), Ordering::Relaxed);
        offset
    }

    /// Blocks the calling thread while more than [`PENDING_MAX`] bytes are pending, until a
    /// flush takes them (or the log is deleted or failed), so a publisher cannot run ahead
    /// of the disk by more than one batch. Not for async tasks without `block_in_place`.
    pub fn wait_for_room(&self) {
        let mut p = self.pending.lock();
        while p.buf.len() > PENDING_MAX && !self.refusing.load(Ordering::Relaxed) {
            self.room.wait(&mut p);
        }
    }

    /// Encoded bytes appended and not yet taken by a flush. A publisher should stop reading
    /// (or wait for confirms) while this is above [`PENDING_MAX`].
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Writes the pending records to the active segment (starting a new segment, at a
    /// record boundary, whenever the current one would pass `max_segment_bytes`),
    /// `fdatasync`s it (and the directory when a segment file was created; a full segment
    /// is synced before its successor is created), then advances
    /// [`committed`](Self::committed), wakes [`subscribe`](Self::subscribe)rs and applies
    /// retention. Does nothing (no sync) when nothing is pending, and nothing at all after
    /// [`delete`](Self::delete).
    ///
    /// # Errors
    /// A write, sync or file creation failed. Fail-stop: the error is logged once and every
    /// later call fails too (the records it held, and later ones, never become committed);
    /// reopening the stream recovers what reached the disk.
    pub fn flush_and_sync(&self) -> io::Result<()> {
        let mut guard = self.writer.lock();
        let w = &mut *guard;
        if let Some(e) = &w.failed {
            return Err(failed_earlier(e));
        }
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let mut p = self.pending.lock();
            std::mem::swap(&mut w.buf, &mut p.buf);
            self.pending_bytes.store(0, Ordering::Relaxed);
        }
        self.room.notify_all();
        if w.buf.is_empty() {
            return Ok(());
        }
        let chunk = header(&w.buf).offset;
        let updates = match self.write_batch(w) {
            Ok(updates) => updates,
            Err(e) => {
                tracing::error!(
                    dir = %self.dir.display(),
                    error = %e,
                    "stream log: I/O failed; refusing all further writes (fail-stop)"
                );
                let e = Arc::new(e);
                w.failed = Some(e.clone());
                w.buf = Vec::new();
                self.refusing.store(true, Ordering::Relaxed);
                self.pending.lock().buf = Vec::new();
                self.pending_bytes.store(0, Ordering::Relaxed);
                self.room.notify_all();
                return Err(failed_earlier(&e));
            }
        };
        w.buf.clear();
        // A flood's buffer is not kept for ever.
        if w.buf.capacity() > 64 << 20 {
            w.buf.shrink_to(8 << 20);
        }
        let committed = {
            let mut m = self.meta.write();
            for u in updates {
                m.apply(u);
            }
            m.segments.back().map_or(0, |s| s.end)
        };
        self.last_chunk.store(chunk, Ordering::Release);
        self.committed.store(committed, Ordering::Release);
        self.tx.send_replace(committed);
        // Still under `writer`: retention and the next flush's `Meta::apply` never interleave.
        self.apply_retention();
        drop(guard);
        Ok(())
    }

    /// Writes `w.buf` (whole records) and syncs; returns what changed, for `Meta`.
    fn write_batch(&self, w: &mut Writer) -> io::Result<Vec<SegUpdate>> {
        let buf = &w.buf;
        let max = self.opts.max_segment_bytes;
        let mut updates: Vec<SegUpdate> = Vec::new();
        // `buf[start..pos]` is planned for the active segment but not yet written.
        let mut start = 0;
        let mut pos = 0;
        while pos < buf.len() {
            // Our own encoding: the header is complete and the lengths are right.
            let h = header(&buf[pos..]);
            let total = HEADER + h.len as usize;
            let roll = w.active.as_ref().is_none_or(|a| {
                let size = a.written + (pos - start) as u64;
                size > 0 && size + total as u64 > max
            });
            if roll {
                if let Some(a) = w.active.as_mut() {
                    a.file.write_all_at(&buf[start..pos], a.written)?;
                    a.written += (pos - start) as u64;
                    // Sealed before its successor exists: only the newest segment can be torn.
                    a.file.sync_data()?;
                }
                start = pos;
                let file = Arc::new(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(path(&self.dir, h.offset))?,
                );
                // The new directory entry must be durable before a confirm depends on it.
                w.dir.sync_all()?;
                w.active = Some(Active {
                    base: h.offset,
                    file: file.clone(),
                    written: 0,
                    end: h.offset,
                    max_ts: 0,
                    granule: None,
                });
                updates.push(SegUpdate::new(h.offset, Some(file)));
            }
            // Set just above if it was not already.
            let a = w.active.as_mut().expect("an active segment");
            if updates.last().is_none_or(|u| u.base != a.base) {
                updates.push(SegUpdate::new(a.base, None));
            }
            let u = updates.last_mut().expect("pushed just above");
            let at = a.written + (pos - start) as u64;
            match a.granule.as_mut() {
                Some(g) if at - g.pos < GRANULE => {
                    g.max_ts = g.max_ts.max(h.timestamp_ms);
                    match u.entries.last_mut() {
                        Some(e) if e.pos == g.pos => e.max_ts = g.max_ts,
                        _ => u.entries.push(*g),
                    }
                }
                _ => {
                    let g = Entry {
                        offset: h.offset,
                        pos: at,
                        max_ts: h.timestamp_ms,
                    };
                    a.granule = Some(g);
                    u.entries.push(g);
                }
            }
            a.end = h.offset + 1;
            a.max_ts = a.max_ts.max(h.timestamp_ms);
            (u.end, u.bytes, u.max_ts) = (a.end, at + total as u64, a.max_ts);
            pos += total;
        }
        let a = w.active.as_mut().expect("a non-empty batch has a segment");
        a.file.write_all_at(&buf[start..], a.written)?;
        a.written += (buf.len() - start) as u64;
        a.file.sync_data()?;
        Ok(updates)
    }

    /// Removes whole segments, oldest first and never the active one, while the stream is
    /// over `max_length_bytes` or the oldest segment's newest record is older than
    /// `max_age_ms` (by the wall clock). compat: as in RabbitMQ, the limits are approximate
    /// at segment granularity: the stream may hold up to a segment more than
    /// `max_length_bytes`, and records outlive `max_age` until their whole segment is old
    /// and no longer active. Checked after every flush (RabbitMQ checks when a segment is
    /// finished; the result is the same, since only finished segments can go).
    fn apply_retention(&self) {
        let (limit, max_age) = (self.opts.max_length_bytes, self.opts.max_age_ms);
        if limit.is_none() && max_age.is_none() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let removed: Vec<u64> = {
            let mut m = self.meta.write();
            let mut removed = Vec::new();
            while m.segments.len() > 1 {
                let oldest = &m.segments[0];
                let too_big = limit.is_some_and(|l| m.bytes > l);
                let too_old = max_age.is_some_and(|a| oldest.max_ts.saturating_add(a) < now);
                if !(too_big || too_old) {
                    break;
                }
                // Checked: more than one segment.
                let seg = m.segments.pop_front().expect("a segment");
                m.bytes -= seg.bytes;
                removed.push(seg.base);
            }
            if let Some(s) = m.segments.front() {
                self.first.store(s.base, Ordering::Release);
            }
            removed
        };
        // Outside the lock: readers that cloned a removed segment's handle keep reading it.
        // No directory sync: a segment whose unlink a crash undoes is found at the next
        // open and removed again (or read: it is all below `first`, and whole).
        for base in removed {
            tracing::debug!(dir = %self.dir.display(), segment = base, "stream log: retention removes a segment");
            match std::fs::remove_file(path(&self.dir, base)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    // Not a durability problem; see above.
                    tracing::warn!(dir = %self.dir.display(), segment = base, error = %e, "stream log: cannot remove a segment");
                }
                _ => {}
            }
        }
    }

    /// Offsets below this are on disk and readable; the next record appended after
    /// everything pending is flushed gets at least this offset.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// The committed offset, updated after every flush that committed something: consumers
    /// waiting at the tail await `changed()` instead of polling.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Where `x-stream-offset: last` starts: the first offset of the newest committed
    /// flush (a flush is this log's chunk: what a publisher sent while the previous sync
    /// ran), or after a reopen the newest record; [`committed`](Self::committed) when empty.
    pub fn last_chunk_start(&self) -> u64 {
        if self.first_offset() >= self.committed() {
            return self.committed();
        }
        self.last_chunk
            .load(Ordering::Acquire)
            .max(self.first_offset())
    }

    /// The oldest offset still kept (it moves up with retention); equal to
    /// [`committed`](Self::committed) when the stream is empty.
    pub fn first_offset(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// The offset to start from for a timestamp (`x-stream-offset` as a timestamp or an
    /// interval, in ms): the first committed record whose timestamp is `>= ms`;
    /// [`first_offset`](Self::first_offset) if every record is that new, and
    /// [`committed`](Self::committed) if none is.
    ///
    /// Granularity: the sparse index finds the first [`GRANULE`] whose newest timestamp is
    /// `>= ms`, then one `pread` of that granule finds the record (if that read fails, the
    /// granule's first offset is returned). compat: RabbitMQ answers at chunk granularity
    /// (the whole chunk containing it, so a few earlier messages of the same burst may be
    /// delivered); this is record-exact, which is within what RabbitMQ documents. With
    /// timestamps that go backwards (a clock step) it answers for the first record at or
    /// after `ms` in log order.
    pub fn offset_for_timestamp(&self, ms: u64) -> u64 {
        let (file, entry, end_pos, end_off) = {
            let m = self.meta.read();
            let Some(s) = m.segments.iter().find(|s| s.max_ts >= ms && s.end > s.base) else {
                return m.segments.back().map_or(self.committed(), |s| s.end);
            };
            // The segment's max_ts is the max over its entries', so one matches.
            let i = s.index.iter().position(|e| e.max_ts >= ms).unwrap_or(0);
            let entry = s.index[i];
            let (end_pos, end_off) = s
                .index
                .get(i + 1)
                .map_or((s.bytes, s.end), |n| (n.pos, n.offset));
            (s.file.clone(), entry, end_pos, end_off)
        };
        let mut buf = vec![0; (end_pos - entry.pos) as usize];
        if file.read_exact_at(&mut buf, entry.pos).is_err() {
            return entry.offset;
        }
        let mut pos = 0;
        while let Decoded::Record(h, _, total) = decode(&buf, pos) {
            if h.timestamp_ms >= ms {
                return h.offset;
            }
            pos += total;
        }
        // Unreachable with an intact granule (its max_ts is >= ms).
        end_off.min(self.committed())
    }

    /// Reads committed records from offset `from` on: at most `max_records`, and at most
    /// `max_bytes` of payload, except that the first record is returned whatever its size.
    /// `from` below [`first_offset`](Self::first_offset) reads from there; offsets in a gap
    /// (left by damage found at recovery) are skipped; at or past
    /// [`committed`](Self::committed) the result is empty. May return fewer records than
    /// asked for (it stops at the end of a large read); ask again from the last offset + 1.
    ///
    /// Reads with `pread` on the calling thread (one per segment touched, normally one);
    /// from async code use `spawn_blocking` when the page cache may be cold.
    ///
    /// # Errors
    /// A read failed, or a committed record fails its checksum (`InvalidData`: the disk
    /// corrupted it).
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<StreamRecord>> {
        self.read_at(None, from, max_records, max_bytes)
            .map(|(r, _)| r)
    }

    /// [`read`](Self::read), starting at `cursor` when it is where the previous read of the
    /// same reader stopped (`from` is its offset and its segment is still there), and
    /// returning where this one stopped. The buffer read is sized for `max_records` of the
    /// segment's average record, not for `max_bytes`: the records' payloads are slices of
    /// it, so a larger buffer would stay allocated for as long as any of them lives.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_at(
        &self,
        cursor: Option<Cursor>,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<StreamRecord>, Option<Cursor>)> {
        let mut out = Vec::new();
        let mut payload_bytes = 0usize;
        let mut from = from;
        let mut at_end: Option<Cursor> = None;
        while out.len() < max_records {
            // Where `from` is: file, the granule's (or the cursor's) position, the segment's
            // committed end and its average record size.
            let (file, mut pos, exact, seg_bytes, seg_end, base, avg) = {
                let m = self.meta.read();
                let Some(s) = m.locate(from) else {
                    break;
                };
                from = from.max(s.base);
                let (pos, exact) = match cursor {
                    Some(c) if c.offset == from && c.base == s.base && c.pos <= s.bytes => {
                        (c.pos, true)
                    }
                    _ => (
                        s.index[s.index.partition_point(|e| e.offset <= from) - 1].pos,
                        false,
                    ),
                };
                let avg = s.bytes / (s.end - s.base).max(1);
                (
                    s.file.clone(),
                    pos,
                    exact,
                    s.bytes,
                    s.end,
                    s.base,
                    avg as usize,
                )
            };
            let room = max_bytes.saturating_sub(payload_bytes).min(READ_MAX);
            let records = max_records - out.len();
            let sized = room.min(records.saturating_mul(avg + avg / 4) + HEADER);
            // From the index, the records before `from` in its granule are read and skipped.
            let skip = if exact { 0 } else { GRANULE as usize };
            let mut want = (skip + sized + HEADER).min((seg_bytes - pos) as usize);
            let mut done_here = false;
            while !done_here {
                let mut buf = vec![0; want];
                file.read_exact_at(&mut buf, pos)?;
                let buf = Bytes::from(buf);
                let mut at = 0;
                loop {
                    if pos + at as u64 == seg_bytes {
                        done_here = true;
                        from = seg_end;
                        break;
                    }
                    let here = pos + at as u64;
                    match decode(&buf, at) {
                        Decoded::Record(h, payload, total) => {
                            if h.offset >= from {
                                if !out.is_empty() && payload_bytes + payload.len() > max_bytes {
                                    return Ok((out, at_end));
                                }
                                payload_bytes += payload.len();
                                out.push(StreamRecord {
                                    offset: h.offset,
                                    timestamp_ms: h.timestamp_ms,
                                    payload: buf.slice(payload),
                                });
                                from = h.offset + 1;
                                at_end = Some(Cursor {
                                    offset: from,
                                    base,
                                    pos: here + total as u64,
                                });
                                if out.len() == max_records {
                                    return Ok((out, at_end));
                                }
                            }
                            at += total;
                        }
                        Decoded::Incomplete(need) => {
                            if !out.is_empty() {
                                // Enough for one call; do not read again for the rest.
                                return Ok((out, at_end));
                            }
                            // A record larger than the window (or the window ended in one).
                            pos += at as u64;
                            want = need.max(want).min((seg_bytes - pos) as usize);
                            if need > want {
                                return Err(corrupt("committed record runs past its segment"));
                            }
                            break;
                        }
                        Decoded::Corrupt(why) => return Err(corrupt(why)),
                    }
                }
            }
        }
        Ok((out, at_end))
    }

    /// (records kept, bytes of records on disk, segments), after retention.
    pub fn stats(&self) -> (u64, u64, u64) {
        let m = self.meta.read();
        let records = m.segments.iter().map(|s| s.end - s.base).sum();
        (records, m.bytes, m.segments.len() as u64)
    }

    /// Removes the stream's directory and everything in it. Later flushes do nothing (a
    /// confirm for a deleted stream is moot; it must not fail the message store) and reads
    /// find nothing. Handles held by in-flight reads keep their files readable until
    /// those reads end.
    ///
    /// # Errors
    /// The directory could not be removed.
    pub fn delete(&self) -> io::Result<()> {
        let _writer = self.writer.lock();
        self.deleted.store(true, Ordering::Release);
        self.refusing.store(true, Ordering::Relaxed);
        self.pending.lock().buf = Vec::new();
        self.pending_bytes.store(0, Ordering::Relaxed);
        self.room.notify_all();
        // Consumers waiting at the tail look again, and find the stream gone.
        self.tx.send_modify(|_| {});
        {
            let mut m = self.meta.write();
            m.segments.clear();
            m.bytes = 0;
        }
        self.first.store(self.committed(), Ordering::Release);
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Sparse-index entries held, for the memory test.
    #[cfg(test)]
    fn index_entries(&self) -> usize {
        self.meta
            .read()
            .segments
            .iter()
            .map(|s| s.index.len())
            .sum()
    }
}

impl SyncTarget for StreamLog {
    fn flush_and_sync(&self) -> io::Result<()> {
        StreamLog::flush_and_sync(self)
    }
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("dir", &self.dir)
            .field("first", &self.first_offset())
            .field("committed", &self.committed())
            .finish_non_exhaustive()
    }
}

impl Meta {
    /// The segment holding `from`, or (when `from` is below the first segment or in a gap)
    /// the next one that has records; `None` when nothing at or after `from` is committed.
    fn locate(&self, from: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base <= from);
        let i = i.saturating_sub(1);
        self.segments
            .range(i..)
            .find(|s| s.end > s.base && s.end > from)
    }

    fn apply(&mut self, u: SegUpdate) {
        if let Some(file) = u.file {
            self.segments.push_back(Segment {
                base: u.base,
                end: u.end,
                bytes: u.bytes,
                max_ts: u.max_ts,
                file,
                index: u.entries,
            });
            self.bytes += u.bytes;
            return;
        }
        // Only the flusher changes segments, and retention never removes the active one,
        // so the segment this update continues is the newest.
        let s = self.segments.back_mut().expect("the active segment");
        debug_assert_eq!(s.base, u.base);
        self.bytes += u.bytes - s.bytes;
        (s.end, s.bytes, s.max_ts) = (u.end, u.bytes, u.max_ts);
        for e in u.entries {
            match s.index.last_mut() {
                Some(last) if last.pos == e.pos => *last = e,
                _ => s.index.push(e),
            }
        }
    }
}

impl SegUpdate {
    fn new(base: u64, file: Option<Arc<File>>) -> SegUpdate {
        SegUpdate {
            base,
            file,
            end: base,
            bytes: 0,
            max_ts: 0,
            entries: Vec::new(),
        }
    }
}

/// Scans segment `base` once: every record's length, CRC and offset. Stops at the first bad
/// record; truncates the file there when `newest` (a crash's torn tail), else leaves it.
fn recover_segment(dir: &Path, base: u64, newest: bool) -> io::Result<Segment> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path(dir, base))?;
    let file_len = file.metadata()?.len();
    let mut seg = Segment {
        base,
        end: base,
        bytes: 0,
        max_ts: 0,
        file: Arc::new(file),
        index: Vec::new(),
    };
    // `buf` holds the file from `buf_at`; `pos` is the next record's position in the file.
    let mut buf = Vec::new();
    let mut buf_at = 0u64;
    let mut pos = 0u64;
    let mut bad: Option<&'static str> = None;
    while pos < file_len {
        match decode(&buf, (pos - buf_at) as usize) {
            Decoded::Record(h, _, total) => {
                if h.offset != seg.end {
                    bad = Some("offset out of sequence");
                    break;
                }
                if seg.index.last().is_none_or(|g| pos - g.pos >= GRANULE) {
                    seg.index.push(Entry {
                        offset: h.offset,
                        pos,
                        max_ts: h.timestamp_ms,
                    });
                } else if let Some(g) = seg.index.last_mut() {
                    g.max_ts = g.max_ts.max(h.timestamp_ms);
                }
                seg.max_ts = seg.max_ts.max(h.timestamp_ms);
                seg.end = h.offset + 1;
                pos += total as u64;
            }
            Decoded::Incomplete(need) => {
                if pos + need as u64 > file_len {
                    bad = Some("torn record at the end of the file");
                    break;
                }
                // Refill from `pos`: a window, or the whole record if it is larger.
                let want = need.max(SCAN_WINDOW).min((file_len - pos) as usize);
                buf.resize(want, 0);
                seg.file.read_exact_at(&mut buf, pos)?;
                buf_at = pos;
            }
            Decoded::Corrupt(why) => {
                bad = Some(why);
                break;
            }
        }
    }
    seg.bytes = pos;
    if let Some(reason) = bad {
        tracing::warn!(
            dir = %dir.display(),
            segment = base,
            position = pos,
            dropped_bytes = file_len - pos,
            reason,
            truncated = newest,
            "stream log: damaged record; records from here on are dropped"
        );
        if newest {
            seg.file.set_len(pos)?;
            seg.file.sync_all()?;
        }
    }
    Ok(seg)
}

/// The fixed part of a record.
#[derive(Clone, Copy, Debug)]
struct Header {
    crc: u32,
    len: u32,
    offset: u64,
    timestamp_ms: u64,
}

/// Reads the header at the start of `b`, which holds at least [`HEADER`] bytes.
fn header(b: &[u8]) -> Header {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    Header {
        crc: u32_at(0),
        len: u32_at(4),
        offset: u64_at(8),
        timestamp_ms: u64_at(16),
    }
}

enum Decoded {
    /// A valid record: its header, its payload's range in the buffer, its total size.
    Record(Header, Range<usize>, usize),
    /// The buffer ends inside the record; it needs this many bytes from its start.
    Incomplete(usize),
    /// Not a valid record.
    Corrupt(&'static str),
}

/// Decodes the record at `buf[pos..]`. Never panics, never allocates from a length read
/// off disk (the caller checks `Incomplete` lengths against the file size).
fn decode(buf: &[u8], pos: usize) -> Decoded {
    let rest = buf.get(pos..).unwrap_or_default();
    if rest.len() < HEADER {
        return Decoded::Incomplete(HEADER);
    }
    let h = header(rest);
    let total = HEADER + h.len as usize;
    if rest.len() < total {
        return Decoded::Incomplete(total);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&rest[HEADER..total]);
    crc.update(&rest[4..HEADER]);
    if crc.finalize() != h.crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    Decoded::Record(h, pos + HEADER..pos + total, total)
}

/// Appends one record; `crc` has already seen the payload.
fn encode(
    buf: &mut Vec<u8>,
    mut crc: crc32fast::Hasher,
    len: u32,
    offset: u64,
    timestamp_ms: u64,
    payload: &[&[u8]],
) {
    let mut rest = [0u8; HEADER - 4];
    rest[..4].copy_from_slice(&len.to_le_bytes());
    rest[4..12].copy_from_slice(&offset.to_le_bytes());
    rest[12..].copy_from_slice(&timestamp_ms.to_le_bytes());
    crc.update(&rest);
    buf.reserve(HEADER + len as usize);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&rest);
    for part in payload {
        buf.extend_from_slice(part);
    }
}

fn corrupt(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("stream log: {why}"))
}

fn failed_earlier(e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("stream log failed earlier and refuses writes until reopened: {e}"),
    )
}

/// `dir/NNNNNNNNNNNNNNNNNNNN.seg`, named by the segment's first offset.
fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0DIGITS$}{SUFFIX}"))
}

/// The first offset of a segment file's name, or `None` for anything else.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MessageStore, Seq, StoreError, StoreOptions};
    use parking_lot::Condvar;
    use std::time::{Duration, Instant};

    fn opts(max_segment_bytes: u64) -> StreamOptions {
        StreamOptions {
            max_segment_bytes,
            ..StreamOptions::default()
        }
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    fn payload(i: u64, len: usize) -> Vec<u8> {
        let mut p = format!("m{i}-").into_bytes();
        p.resize(len.max(p.len()), b'x');
        p
    }

    fn offsets(recs: &[StreamRecord]) -> Vec<u64> {
        recs.iter().map(|r| r.offset).collect()
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| parse_name(e.unwrap().file_name().to_str()?))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn sequential_reads_with_a_cursor_see_every_record_once_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        // Mixed sizes (one record larger than a granule) over segments of ~200 KiB.
        let log = StreamLog::open(dir.path(), opts(200 << 10)).unwrap();
        let len = |i: u64| {
            if i == 777 {
                100 << 10
            } else {
                16 + (i % 7) as usize * 50
            }
        };
        for i in 0..3000 {
            log.append(i, &payload(i, len(i)));
            if i % 500 == 499 {
                log.flush_and_sync().unwrap();
            }
        }
        log.flush_and_sync().unwrap();
        assert!(log.stats().2 > 2, "the records span several segments");
        let (mut next, mut cursor, mut seen) = (0, None, Vec::new());
        while next < log.committed() {
            let (recs, at) = log.read_at(cursor, next, 64, 1 << 20).unwrap();
            assert!(!recs.is_empty());
            for r in &recs {
                assert_eq!(&r.payload[..], &payload(r.offset, len(r.offset))[..]);
            }
            next = recs.last().unwrap().offset + 1;
            assert_eq!(at.map(|c| c.offset), Some(next));
            seen.extend(offsets(&recs));
            cursor = at;
        }
        assert_eq!(seen, (0..3000).collect::<Vec<_>>());
        // A cursor for another offset is ignored, not trusted.
        let (_, at) = log.read_at(None, 10, 5, 1 << 20).unwrap();
        let (recs, _) = log.read_at(at, 100, 3, 1 << 20).unwrap();
        assert_eq!(offsets(&recs), vec![100, 101, 102]);
    }

    #[test]
    fn append_flush_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
        assert_eq!((log.committed(), log.first_offset()), (0, 0));
        assert_eq!(log.last_chunk_start(), 0);
        assert!(log.read(0, 10, usize::MAX).unwrap().is_empty());
        for i in 0..5 {
            assert_eq!(log.append(100 + i, &payload(i, 10)), i);
        }
        assert_eq!(log.pending_bytes(), 5 * (HEADER + 10));
        // Not committed, not readable.
        assert_eq!(log.committed(), 0);
        assert!(log.read(0, 10, usize::MAX).unwrap().is_empty());
        log.flush_and_sync().unwrap();
        assert_eq!(log.pending_bytes(), 0);
        assert_eq!(log.committed(), 5);
        assert_eq!(log.last_chunk_start(), 0);
        let recs = log.read(0, 10, usize::MAX).unwrap();
        assert_eq!(offsets(&recs), vec![0, 1, 2, 3, 4]);
        for r in &recs {
            assert_eq!(r.timestamp_ms, 100 + r.offset);
            assert_eq!(&r.payload[..], &payload(r.offset, 10)[..]);
        }
        // Limits: records, bytes (the first record always comes), and the start.
        assert_eq!(offsets(&log.read(1, 2, usize::MAX).unwrap()), vec![1, 2]);
        assert_eq!(offsets(&log.read(3, 10, 1).unwrap()), vec![3]);
        assert_eq!(offsets(&log.read(0, 10, 25).unwrap()), vec![0, 1]);
        assert!(log.read(5, 10, usize::MAX).unwrap().is_empty());
        assert!(log.read(0, 0, usize::MAX).unwrap().is_empty());
        assert_eq!(log.stats(), (5, 5 * (HEADER as u64 + 10), 1));
        // An empty flush does nothing.
        log.flush_and_sync().unwrap();
        assert_eq!(log.committed(), 5);
        log.append(200, b"a");
        log.append(201, b"b");
        log.flush_and_sync().unwrap();
        assert_eq!((log.committed(), log.last_chunk_start()), (7, 5));
        drop(log);
        let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
        assert_eq!((log.committed(), log.last_chunk_start()), (7, 6));
    }

    #[test]
    fn offsets_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = StreamLog::open(dir.path(), opts(300)).unwrap();
            for i in 0..7 {
                log.append(i, &payload(i, 50));
            }
            log.flush_and_sync().unwrap();
            // Appended but never flushed: lost, and its offset is given again.
            log.append(99, b"lost");
        }
        let log = StreamLog::open(dir.path(), opts(300)).unwrap();
        assert_eq!((log.first_offset(), log.committed()), (0, 7));
        assert_eq!(log.append(7, &payload(7, 50)), 7);
        log.flush_and_sync().unwrap();
        let recs = log.read(0, 100, usize::MAX).unwrap();
        assert_eq!(offsets(&recs), (0..8).collect::<Vec<_>>());
        assert_eq!(&recs[7].payload[..], &payload(7, 50)[..]);
        assert_eq!(log.offset_for_timestamp(3), 3);
    }

    #[test]
    fn torn_tail_is_cut_at_the_first_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let rec = (HEADER + 20) as u64;
        {
            let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
            for i in 0..10 {
                log.append(i, &payload(i, 20));
            }
            log.flush_and_sync().unwrap();
        }
        let file = path(dir.path(), 0);
        // A torn write: the last record is cut mid-payload.
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(10 * rec - 7).unwrap();
        drop(f);
        let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
        assert_eq!(log.committed(), 9);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 9 * rec);
        assert_eq!(log.append(1000, b"after"), 9);
        log.flush_and_sync().unwrap();
        let recs = log.read(0, 100, usize::MAX).unwrap();
        assert_eq!(offsets(&recs), (0..10).collect::<Vec<_>>());
        assert_eq!(&recs[9].payload[..], b"after");
        drop(log);

        // Corruption: one flipped payload byte in record 5 cuts it and everything after.
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[(5 * rec) as usize + HEADER + 3] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
        assert_eq!(log.committed(), 5);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 5 * rec);
        assert_eq!(log.append(2000, b"again"), 5);
        log.flush_and_sync().unwrap();
        assert_eq!(
            offsets(&log.read(0, 100, usize::MAX).unwrap()),
            vec![0, 1, 2, 3, 4, 5]
        );
        drop(log);

        // A zero-filled tail (file extended, data never written) is dropped too.
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        let good = 5 * rec + (HEADER + 5) as u64;
        f.set_len(good + 4096).unwrap();
        drop(f);
        let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
        assert_eq!(log.committed(), 6);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), good);
    }

    #[test]
    fn damage_in_an_older_segment_leaves_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let rec = (HEADER + 50) as u64;
        {
            // Two records per segment.
            let log = StreamLog::open(dir.path(), opts(2 * rec)).unwrap();
            for i in 0..6 {
                log.append(i, &payload(i, 50));
            }
            log.flush_and_sync().unwrap();
        }
        assert_eq!(segment_files(dir.path()), vec![0, 2, 4]);
        let file = path(dir.path(), 2);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[rec as usize + 10] ^= 1; // record 3's offset field
        std::fs::write(&file, &bytes).unwrap();
        let log = StreamLog::open(dir.path(), opts(2 * rec)).unwrap();
        assert_eq!(log.committed(), 6);
        assert_eq!(log.stats().0, 5);
        assert_eq!(
            offsets(&log.read(0, 100, usize::MAX).unwrap()),
            vec![0, 1, 2, 4, 5]
        );
        assert_eq!(offsets(&log.read(3, 100, usize::MAX).unwrap()), vec![4, 5]);
    }

    #[test]
    fn segments_roll_at_record_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let rec = (HEADER + 50) as u64;
        let log = StreamLog::open(dir.path(), opts(2 * rec + 10)).unwrap();
        for i in 0..5 {
            log.append(i, &payload(i, 50));
        }
        // A record larger than a segment gets one of its own.
        log.append(5, &payload(5, 1000));
        log.append(6, &payload(6, 50));
        log.flush_and_sync().unwrap();
        log.append(7, &payload(7, 50));
        log.flush_and_sync().unwrap();
        assert_eq!(segment_files(dir.path()), vec![0, 2, 4, 5, 6]);
        for (base, len) in [(0, 2 * rec), (2, 2 * rec), (4, rec), (6, 2 * rec)] {
            assert_eq!(
                std::fs::metadata(path(dir.path(), base)).unwrap().len(),
                len
            );
        }
        assert_eq!(log.stats().2, 5);
        let recs = log.read(0, 100, usize::MAX).unwrap();
        assert_eq!(offsets(&recs), (0..8).collect::<Vec<_>>());
        assert_eq!(recs[5].payload.len(), 1000);
        assert_eq!(offsets(&log.read(3, 3, usize::MAX).unwrap()), vec![3, 4, 5]);
        drop(log);
        let log = StreamLog::open(dir.path(), opts(2 * rec + 10)).unwrap();
        assert_eq!((log.committed(), log.stats().0), (8, 8));
        // The active segment [6, 7] is full: the next record starts segment 8.
        log.append(8, b"x");
        log.flush_and_sync().unwrap();
        assert_eq!(*segment_files(dir.path()).last().unwrap(), 8);
    }

    #[test]
    fn retention_by_bytes_removes_whole_oldest_segments() {
        let dir = tempfile::tempdir().unwrap();
        let rec = (HEADER + 50) as u64; // 74
        let o = StreamOptions {
            max_segment_bytes: 2 * rec,
            max_length_bytes: Some(300),
            max_age_ms: None,
        };
        let log = StreamLog::open(dir.path(), o.clone()).unwrap();
        for i in 0..10 {
            log.append(i, &payload(i, 50));
            log.flush_and_sync().unwrap();
        }
        // 5 segments of 148 bytes; keeping 2 (296 <= 300).
        assert_eq!(segment_files(dir.path()), vec![6, 8]);
        assert_eq!(log.first_offset(), 6);
        assert_eq!(log.stats(), (4, 4 * rec, 2));
        // From below first_offset: reads from first_offset.
        assert_eq!(
            offsets(&log.read(0, 100, usize::MAX).unwrap()),
            vec![6, 7, 8, 9]
        );
        assert_eq!(log.offset_for_timestamp(0), 6);
        // The active segment is never removed, however small the limit.
        drop(log);
        let tiny = StreamOptions {
            max_length_bytes: Some(1),
            ..o
        };
        let log = StreamLog::open(dir.path(), tiny).unwrap();
        assert_eq!(segment_files(dir.path()), vec![8]);
        assert_eq!((log.first_offset(), log.committed()), (8, 10));
        log.append(10, &payload(10, 50));
        log.flush_and_sync().unwrap();
        assert_eq!(segment_files(dir.path()), vec![10]);
        assert_eq!(offsets(&log.read(0, 100, usize::MAX).unwrap()), vec![10]);
    }

    #[test]
    fn retention_by_age_removes_segments_whose_newest_record_is_old() {
        let dir = tempfile::tempdir().unwrap();
        let rec = (HEADER + 50) as u64;
        let o = StreamOptions {
            max_segment_bytes: 2 * rec,
            max_length_bytes: None,
            max_age_ms: Some(60_000),
        };
        let log = StreamLog::open(dir.path(), o).unwrap();
        let old = now_ms() - 600_000;
        // Segment 0: both old. Segment 2: one old, one new. Segment 4: old, then active.
        for (i, ts) in [old, old, old, now_ms(), old].into_iter().enumerate() {
            log.append(ts, &payload(i as u64, 50));
        }
        log.flush_and_sync().unwrap();
        assert_eq!(segment_files(dir.path()), vec![2, 4]);
        assert_eq!(log.first_offset(), 2);
        assert_eq!(
            offsets(&log.read(0, 100, usize::MAX).unwrap()),
            vec![2, 3, 4]
        );
        // The active segment stays even though all it holds is old.
        let dir2 = tempfile::tempdir().unwrap();
        let o = StreamOptions {
            max_age_ms: Some(1),
            ..StreamOptions::default()
        };
        let log = StreamLog::open(dir2.path(), o).unwrap();
        log.append(1, b"ancient");
        log.flush_and_sync().unwrap();
        assert_eq!(log.stats().0, 1);
    }

    #[test]
    fn offset_for_timestamp_finds_the_first_record_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        // Small records (one granule per segment) and large ones (several granules).
        for (len, seg) in [(20usize, 1000u64), (30_000, 1 << 20)] {
            let sub = dir.path().join(format!("s{len}"));
            let log = StreamLog::open(&sub, opts(seg)).unwrap();
            assert_eq!(log.offset_for_timestamp(5), 0);
            for i in 0..100 {
                log.append(1000 + 10 * i, &payload(i, len));
                if i % 7 == 0 {
                    log.flush_and_sync().unwrap();
                }
            }
            log.flush_and_sync().unwrap();
            assert!(log.stats().2 > 1 || log.index_entries() > 1);
            assert_eq!(log.offset_for_timestamp(0), 0);
            assert_eq!(log.offset_for_timestamp(1000), 0);
            assert_eq!(log.offset_for_timestamp(1001), 1);
            assert_eq!(log.offset_for_timestamp(1010), 1);
            assert_eq!(log.offset_for_timestamp(1555), 56);
            assert_eq!(log.offset_for_timestamp(1990), 99);
            assert_eq!(log.offset_for_timestamp(1991), 100);
            assert_eq!(log.offset_for_timestamp(u64::MAX), log.committed());
            // Pending records are not considered.
            log.append(5000, b"pending");
            assert_eq!(log.offset_for_timestamp(4000), 100);
        }
    }

    #[tokio::test]
    async fn subscribe_wakes_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
        let mut rx = log.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        log.append(1, b"a");
        log.append(2, b"b");
        let flusher = log.clone();
        let t = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(20));
            flusher.flush_and_sync().unwrap();
        });
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);
        assert_eq!(offsets(&log.read(0, 10, usize::MAX).unwrap()), vec![0, 1]);
        t.await.unwrap();
    }

    #[test]
    fn the_index_is_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1_000_000u64;
        let log = StreamLog::open(dir.path(), opts(16 << 20)).unwrap();
        let p = [7u8; 16];
        for i in 0..n {
            log.append(i, &p);
            if i % 10_000 == 9_999 {
                log.flush_and_sync().unwrap();
            }
        }
        log.flush_and_sync().unwrap();
        let entries = log.index_entries();
        assert!(
            entries > 0 && (entries as u64) < n / 50,
            "{entries} entries"
        );
        for at in [0, 1, 123_456, 524_287, n - 1] {
            let r = log.read(at, 2, usize::MAX).unwrap();
            assert_eq!(r[0].offset, at);
            assert_eq!(r[0].timestamp_ms, at);
        }
        assert_eq!(log.offset_for_timestamp(777_777), 777_777);
        drop(log);
        // Recovery builds the same index.
        let log = StreamLog::open(dir.path(), opts(16 << 20)).unwrap();
        assert_eq!(log.index_entries(), entries);
        assert_eq!(log.committed(), n);
    }

    #[test]
    fn delete_removes_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("stream");
        let log = StreamLog::open(&sub, StreamOptions::default()).unwrap();
        log.append(1, b"a");
        log.flush_and_sync().unwrap();
        log.append(2, b"b");
        log.delete().unwrap();
        assert!(!sub.exists());
        // A flush after delete (a pending sync_with) is a no-op, not an error.
        log.flush_and_sync().unwrap();
        assert!(log.read(0, 10, usize::MAX).unwrap().is_empty());
        assert_eq!(log.stats(), (0, 0, 0));
        assert_eq!(log.last_chunk_start(), log.committed());
        log.append(3, b"c");
        assert_eq!(log.pending_bytes(), 0);
    }

    /// A target that counts its flushes, flushes a real stream, and can hold the committer
    /// inside `flush_and_sync` until the test opens the gate.
    struct Gated {
        log: Arc<StreamLog>,
        calls: AtomicU64,
        /// (entered, open)
        gate: Mutex<(bool, bool)>,
        cv: Condvar,
        fail: bool,
    }

    impl Gated {
        fn new(log: Arc<StreamLog>, closed: bool, fail: bool) -> Arc<Gated> {
            Arc::new(Gated {
                log,
                calls: AtomicU64::new(0),
                gate: Mutex::new((false, !closed)),
                cv: Condvar::new(),
                fail,
            })
        }

        fn wait_entered(&self) {
            let mut g = self.gate.lock();
            while !g.0 {
                self.cv.wait(&mut g);
            }
        }

        fn open(&self) {
            self.gate.lock().1 = true;
            self.cv.notify_all();
        }
    }

    impl SyncTarget for Gated {
        fn flush_and_sync(&self) -> io::Result<()> {
            let mut g = self.gate.lock();
            g.0 = true;
            self.cv.notify_all();
            while !g.1 {
                self.cv.wait(&mut g);
            }
            drop(g);
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(io::Error::other("injected stream failure"));
            }
            self.log.flush_and_sync()
        }
    }

    #[test]
    fn sync_with_confirms_only_after_the_target_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            MessageStore::open(&dir.path().join("msgs"), StoreOptions::default()).unwrap();
        let wm = store.watermark();
        let log = StreamLog::open(&dir.path().join("stream"), StreamOptions::default()).unwrap();
        let gated = Gated::new(log.clone(), true, false);

        // Batch 1: the committer is held inside the target's flush.
        log.append(1, b"first");
        let seq = store.sync_with(gated.clone()).unwrap();
        gated.wait_entered();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!wm.status(seq).unwrap());
        assert_eq!(log.committed(), 0);

        // Batch 2, formed while batch 1 is held: a message-log publish and the real stream,
        // enlisted many times (once per publish) but flushed once.
        let a = store.append_publish("q", b"classic").unwrap();
        let mut last = Seq(0);
        for i in 0..100 {
            log.append(i, b"more");
            last = store.sync_with(log.clone()).unwrap();
        }
        assert!(last > a.seq && a.seq > seq);
        gated.open();
        wm.wait_blocking(seq).unwrap();
        assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
        assert!(log.committed() >= 1);
        wm.wait_blocking(last).unwrap();
        assert_eq!(log.committed(), 101);
        assert_eq!(log.read(0, 1000, usize::MAX).unwrap().len(), 101);
        assert_eq!(store.read(a.loc).unwrap(), Bytes::from_static(b"classic"));
        // All 100 enlistments were one flush of the stream: it wrote one batch.
        assert_eq!(log.index_entries(), 1);

        // A batch holding only a target (no record) wakes the committer.
        let idle = Gated::new(log.clone(), false, false);
        let seq = store.sync_with(idle.clone()).unwrap();
        wm.wait_blocking(seq).unwrap();
        assert_eq!(idle.calls.load(Ordering::SeqCst), 1);
        store.close().unwrap();
    }

    #[test]
    fn a_failing_target_fails_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            MessageStore::open(&dir.path().join("msgs"), StoreOptions::default()).unwrap();
        let wm = store.watermark();
        let log = StreamLog::open(&dir.path().join("stream"), StreamOptions::default()).unwrap();
        let ok = store.append_publish("q", b"before").unwrap();
        wm.wait_blocking(ok.seq).unwrap();
        let failing = Gated::new(log.clone(), false, true);
        log.append(1, b"never confirmed");
        let seq = store.sync_with(failing.clone()).unwrap();
        assert!(matches!(wm.wait_blocking(seq), Err(StoreError::Io(_))));
        assert!(matches!(wm.status(seq), Err(StoreError::Io(_))));
        assert!(wm.status(ok.seq).unwrap());
        // Fail-stop: nothing more is accepted.
        assert!(store.sync_with(log.clone()).is_err());
        assert!(store.append_publish("q", b"after").is_err());
        assert_eq!(failing.calls.load(Ordering::SeqCst), 1);
        assert!(store.close().is_err());
    }

    #[test]
    fn a_failing_stream_write_is_fail_stop() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("stream");
        let log = StreamLog::open(&sub, opts(100)).unwrap();
        log.append(1, b"a");
        log.flush_and_sync().unwrap();
        // Creating the next segment fails: its directory is gone.
        std::fs::remove_dir_all(&sub).unwrap();
        log.append(2, &[0; 200]);
        assert!(log.flush_and_sync().is_err());
        log.append(3, b"c");
        assert!(log.flush_and_sync().is_err());
        assert_eq!(log.committed(), 1);
        // Nothing will write them, so they are not kept.
        assert_eq!(log.pending_bytes(), 0);
    }

    /// Stream publishes confirmed through the message store's group commit: append +
    /// `sync_with` per record, waiting for the watermark every 1,000 (a confirm window).
    /// `cargo test --release --lib store::stream -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_sync_with() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        for (len, n) in [(16usize, 1_000_000u64), (1024, 300_000)] {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let (store, _) =
                MessageStore::open(&dir.path().join("msgs"), StoreOptions::default()).unwrap();
            let wm = store.watermark();
            let log =
                StreamLog::open(&dir.path().join("stream"), StreamOptions::default()).unwrap();
            let target: Arc<dyn SyncTarget> = log.clone();
            let p = vec![0x5au8; len];
            let t = Instant::now();
            let mut seq = Seq(0);
            for i in 0..n {
                log.append(i, &p);
                seq = store.sync_with(target.clone()).unwrap();
                if i % 1000 == 999 {
                    wm.wait_blocking(seq).unwrap();
                }
            }
            wm.wait_blocking(seq).unwrap();
            let e = t.elapsed();
            assert_eq!(log.committed(), n);
            eprintln!(
                "sync_with {len} B x {n}: {:.0} confirmed rec/s, {} store batches",
                n as f64 / e.as_secs_f64(),
                store.stats().batches,
            );
        }
    }

    /// `cargo test --release --lib store::stream -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_append_flush_read() {
        // On the project's disk, not a tmpfs: fdatasync must be real.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        for (len, n) in [(16usize, 2_000_000u64), (1024, 500_000)] {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
            let p = vec![0xa5u8; len];
            let t = Instant::now();
            let mut in_flush = Duration::ZERO;
            for i in 0..n {
                log.append(i, &p);
                if i % 1000 == 999 {
                    let f = Instant::now();
                    log.flush_and_sync().unwrap();
                    in_flush += f.elapsed();
                }
            }
            log.flush_and_sync().unwrap();
            let w = t.elapsed();
            let t = Instant::now();
            let mut at = 0;
            let mut bytes = 0;
            while at < n {
                let recs = log.read(at, 1000, 1 << 20).unwrap();
                bytes += recs.iter().map(|r| r.payload.len()).sum::<usize>();
                at = recs.last().unwrap().offset + 1;
            }
            let r = t.elapsed();
            let t = Instant::now();
            drop(log);
            let log = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
            let o = t.elapsed();
            assert_eq!(log.committed(), n);
            eprintln!(
                "{len} B x {n}: append+flush(1000) {:.0} rec/s ({:.1} MB/s, {} flushes, {:.0} us/flush, {:.0} ns/append); read {:.0} rec/s ({:.0} MB/s payload); reopen {:.0} ms; index {} entries",
                n as f64 / w.as_secs_f64(),
                (n * (len + HEADER) as u64) as f64 / w.as_secs_f64() / 1e6,
                n / 1000,
                in_flush.as_secs_f64() * 1e6 / (n / 1000) as f64,
                (w - in_flush).as_secs_f64() * 1e9 / n as f64,
                n as f64 / r.as_secs_f64(),
                bytes as f64 / r.as_secs_f64() / 1e6,
                o.as_secs_f64() * 1e3,
                log.index_entries(),
            );
        }
    }
}
