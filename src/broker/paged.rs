//! A queue's paged-out messages: what stands in for a message whose body lives only in the
//! message log.
//!
//! Owns a compact FIFO of 32-byte [`Paged`] records per priority level and, once that FIFO
//! holds more than two chunks, one unlinked spill file under the data directory holding its
//! middle. Memory per queue is then at most two chunks (256 KiB) however deep the queue gets;
//! the spill file costs 32 bytes of disk per message. Talks to nothing else: the queue reads
//! bodies back from the message log, and nothing here survives a restart (recovery rebuilds
//! the FIFO from the log).
//!
//! Spill I/O is a 128 KiB `pwrite` or `pread` per 4096 messages, done under the queue lock
//! like the message log reads of paging in; it normally hits the page cache.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Location, MsgId};

/// Entries per spilled chunk.
const CHUNK: usize = 4096;
const RECORD: usize = 32;
const CHUNK_BYTES: usize = CHUNK * RECORD;
/// The top bit of the stored position marks a redelivered message.
const REDELIVERED: u64 = 1 << 63;

/// One paged-out message: where its record is and what the queue must remember about it
/// without reading it (its position, its id for acks, its size for `x-max-length-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paged {
    seq_flags: u64,
    id: u64,
    segment: u32,
    offset: u32,
    len: u32,
    size: u32,
}

impl Paged {
    /// None when the location does not fit the compact form (a segment id or offset past
    /// 4 Gi); such a message stays in memory.
    pub fn new(seq: u64, id: MsgId, loc: Location, size: u32, redelivered: bool) -> Option<Self> {
        Some(Self {
            seq_flags: seq | if redelivered { REDELIVERED } else { 0 },
            id: id.0,
            segment: u32::try_from(loc.segment).ok()?,
            offset: u32::try_from(loc.offset).ok()?,
            len: loc.len,
            size,
        })
        .filter(|_| seq & REDELIVERED == 0)
    }

    /// Position in the queue.
    pub fn seq(&self) -> u64 {
        self.seq_flags & !REDELIVERED
    }

    /// Delivered before (recovered with a delivered mark).
    pub fn redelivered(&self) -> bool {
        self.seq_flags & REDELIVERED != 0
    }

    /// Its id in the message log.
    pub fn id(&self) -> MsgId {
        MsgId(self.id)
    }

    /// Body size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Where its record is.
    pub fn location(&self) -> Location {
        Location {
            segment: u64::from(self.segment),
            offset: u64::from(self.offset),
            len: self.len,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq_flags.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        for v in [self.segment, self.offset, self.len, self.size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Self {
            seq_flags: u64_at(0),
            id: u64_at(8),
            segment: u32_at(16),
            offset: u32_at(20),
            len: u32_at(24),
            size: u32_at(28),
        }
    }
}

/// Paged messages of one priority level, oldest first: `head`, then the spilled chunks in
/// order, then `tail`.
#[derive(Debug, Default)]
pub struct PagedFifo {
    head: VecDeque<Paged>,
    tail: Vec<Paged>,
    /// Slots of the spill file holding whole chunks, oldest first.
    spilled: VecDeque<u32>,
    spill: Option<Spill>,
    /// A spill write failed: stop trying until the FIFO drains.
    spill_broken: bool,
    len: usize,
    /// Messages dropped because their spilled chunk could not be read back.
    lost: usize,
}

#[derive(Debug)]
struct Spill {
    file: File,
    /// Slots read back and free for reuse, so the file only grows to the most chunks ever
    /// spilled at once.
    free: Vec<u32>,
    slots: u32,
}

impl PagedFifo {
    /// How many messages are paged out.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No paged-out messages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the newest message. `dir` is where a spill file may be created; without one
    /// (or if the file cannot be written) everything stays in memory.
    pub fn push_back(&mut self, p: Paged, dir: Option<&Path>) {
        if self.tail.len() >= CHUNK {
            if self.spilled.is_empty() && self.head.is_empty() {
                self.head.extend(self.tail.drain(..));
            } else if let Some(dir) = dir.filter(|_| !self.spill_broken) {
                self.spill_tail(dir);
            }
        }
        self.tail.push(p);
        self.len += 1;
    }

    /// Takes the oldest message.
    pub fn pop_front(&mut self) -> Option<Paged> {
        if self.head.is_empty() {
            self.refill_head();
        }
        let p = self.head.pop_front()?;
        self.len -= 1;
        if self.len == 0 {
            self.reset();
        }
        Some(p)
    }

    /// Takes the newest message if it is at position `seq`.
    pub fn pop_back_if(&mut self, seq: u64) -> Option<Paged> {
        let p = if self.tail.last().is_some_and(|p| p.seq() == seq) {
            self.tail.pop()
        } else if self.tail.is_empty()
            && self.spilled.is_empty()
            && self.head.back().is_some_and(|p| p.seq() == seq)
        {
            self.head.pop_back()
        } else {
            None
        }?;
        self.len -= 1;
        Some(p)
    }

    /// How many messages were dropped since the last call because their spilled chunk could
    /// not be read back (an I/O error; they come back at the next restart).
    pub fn take_lost(&mut self) -> usize {
        std::mem::take(&mut self.lost)
    }

    /// Empties the FIFO, calling `f` on every message in order (purge acks each one).
    pub fn clear_with(&mut self, mut f: impl FnMut(&Paged)) {
        while let Some(p) = self.pop_front() {
            f(&p);
        }
        self.reset();
    }

    /// Empties the FIFO without looking at what it held (queue deleted).
    pub fn clear(&mut self) {
        self.head.clear();
        self.tail.clear();
        self.spilled.clear();
        self.len = 0;
        self.reset();
    }

    /// Drained: give back the spill file and any large buffers.
    fn reset(&mut self) {
        self.spill = None;
        self.spill_broken = false;
        self.spilled.clear();
        self.head.shrink_to(CHUNK);
        self.tail.shrink_to(CHUNK);
    }

    fn refill_head(&mut self) {
        while self.head.is_empty() {
            if let Some(slot) = self.spilled.pop_front() {
                match self.read_slot(slot) {
                    Ok(chunk) => self.head.extend(chunk),
                    Err(e) => {
                        // The messages stay in the message log and come back at the next
                        // restart; here they are lost from the queue.
                        tracing::error!(
                            "cannot read a queue spill chunk back: {e}; {CHUNK} paged messages \
                             are skipped until restart"
                        );
                        self.len -= CHUNK;
                        self.lost += CHUNK;
                    }
                }
            } else {
                self.head.extend(self.tail.drain(..));
                return;
            }
        }
    }

    fn read_slot(&mut self, slot: u32) -> std::io::Result<Vec<Paged>> {
        let spill = self
            .spill
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no spill file"))?;
        spill.free.push(slot);
        let mut buf = vec![0u8; CHUNK_BYTES];
        super::blocking(|| {
            spill
                .file
                .read_exact_at(&mut buf, u64::from(slot) * CHUNK_BYTES as u64)
        })?;
        Ok(buf.chunks_exact(RECORD).map(Paged::decode).collect())
    }

    fn spill_tail(&mut self, dir: &Path) {
        let result = super::blocking(|| {
            if self.spill.is_none() {
                self.spill = Some(Spill {
                    file: spill_file(dir)?,
                    free: Vec::new(),
                    slots: 0,
                });
            }
            let spill = self.spill.as_mut().expect("just created");
            let slot = spill.free.pop().unwrap_or_else(|| {
                spill.slots += 1;
                spill.slots - 1
            });
            let mut buf = Vec::with_capacity(CHUNK_BYTES);
            for p in &self.tail {
                p.encode(&mut buf);
            }
            if let Err(e) = spill
                .file
                .write_all_at(&buf, u64::from(slot) * CHUNK_BYTES as u64)
            {
                spill.free.push(slot);
                return Err(e);
            }
            Ok(slot)
        });
        match result {
            Ok(slot) => {
                self.spilled.push_back(slot);
                self.tail.clear();
            }
            Err(e) => {
                // Keep going in memory (the tail just grows): a full disk costs RAM, not
                // messages.
                tracing::warn!("cannot spill a queue's paged index to disk: {e}");
                self.spill_broken = true;
            }
        }
    }
}

/// A fresh spill file, unlinked at once: it disappears with the process, crash or not.
fn spill_file(dir: &Path) -> std::io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        "{}-{}.spill",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paged(seq: u64) -> Paged {
        let loc = Location {
            segment: seq / 7,
            offset: seq * 3,
            len: 40,
        };
        Paged::new(seq, MsgId(seq + 1), loc, seq as u32, seq.is_multiple_of(5)).unwrap()
    }

    #[test]
    fn encodes_every_field() {
        let p = paged(123_456);
        let mut buf = Vec::new();
        p.encode(&mut buf);
        assert_eq!(buf.len(), RECORD);
        let q = Paged::decode(&buf);
        assert_eq!(q, p);
        assert_eq!(
            (q.seq(), q.id(), q.size()),
            (123_456, MsgId(123_457), 123_456)
        );
        assert!(!q.redelivered());
        assert!(paged(10).redelivered());
        let far = Location {
            segment: 1 << 33,
            offset: 0,
            len: 1,
        };
        assert!(Paged::new(1, MsgId(1), far, 1, false).is_none());
    }

    /// Random pushes and pops against a `VecDeque`: order holds across the spill file, and
    /// memory stays at two chunks while the middle is on disk.
    #[test]
    fn keeps_fifo_order_across_the_spill_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut fifo = PagedFifo::default();
        let mut model = VecDeque::new();
        let mut next = 0u64;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut spilled_at_once = 0;
        for round in 0..40_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Mostly pushes for the first half, mostly pops after.
            let push = (rng % 100) < if round < 20_000 { 80 } else { 20 };
            if push {
                fifo.push_back(paged(next), Some(dir.path()));
                model.push_back(next);
                next += 1;
            } else {
                assert_eq!(fifo.pop_front().map(|p| p.seq()), model.pop_front());
            }
            assert_eq!(fifo.len(), model.len());
            assert!(fifo.head.len() + fifo.tail.len() <= 2 * CHUNK + 1);
            spilled_at_once = spilled_at_once.max(fifo.spilled.len());
        }
        assert!(spilled_at_once >= 2, "{spilled_at_once}");
        // The newest one can be taken back (a TTL-0 message).
        fifo.push_back(paged(next), Some(dir.path()));
        assert_eq!(fifo.pop_back_if(next + 1), None);
        assert_eq!(fifo.pop_back_if(next).map(|p| p.seq()), Some(next));
        let mut rest = Vec::new();
        fifo.clear_with(|p| rest.push(p.seq()));
        assert_eq!(rest, Vec::from(model));
        assert!(fifo.is_empty() && fifo.spill.is_none());
    }

    #[test]
    fn without_a_directory_everything_stays_in_memory() {
        let mut fifo = PagedFifo::default();
        for i in 0..3 * CHUNK as u64 {
            fifo.push_back(paged(i), None);
        }
        assert!(fifo.spill.is_none());
        for i in 0..3 * CHUNK as u64 {
            assert_eq!(fifo.pop_front().unwrap().seq(), i);
        }
        assert!(fifo.pop_front().is_none());
    }
}
