//! In-memory liveness of every stored message, and the rule for when a segment file may go.
//!
//! Owned by the store's state lock; used by appenders (to decide whether an ack needs a
//! record), by recovery (to replay records) and by the committer's garbage collection. It
//! does no I/O.
//!
//! Memory is per segment, not per message: the store assigns message ids in append order
//! under the same lock that places records, so the messages of one segment have contiguous
//! ids `first..first + count`, and a message's liveness is one bit. The queue of each
//! message is kept as runs (`start`, `queue`), one run per change of queue, so a queue with
//! millions of messages costs a few bytes per segment.
//!
//! # When a segment may be deleted
//!
//! Records that kill or mark a message (Ack, DeleteQueue, Delivered, Summary; "dead-records")
//! live in a later segment than the message. Deleting such a later segment `T` while the
//! message's segment `S` still exists would resurrect, at the next recovery, the messages of
//! `S` that `T` acked. So each segment keeps `refs`: the older segments its dead-records
//! point into. `T` may be deleted when it is sealed, holds no live message, and for every
//! `S` in `T.refs` either `S` is already deleted (durably: the committer fsyncs the
//! directory between deletion waves) or a durable Summary of `S` was written in a segment
//! newer than `T` (it restates everything `T` said about `S`).
//!
//! Without Summaries, one long-lived message would pin every later segment: acks for
//! segment `k` land in `k` or `k + 1`, so the refs form a chain back to the old message.
//! The committer therefore writes a Summary of a segment that still has live messages when a
//! dead segment is blocked only by it; that costs one bit per message of the old segment,
//! once per blocked segment.

use std::collections::HashMap;

/// One run of consecutive messages (within a segment) published to the same queue.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Index (message id - `first`) of the run's first message.
    start: u64,
    queue: u32,
}

/// What the store knows about one segment file.
#[derive(Debug)]
pub(crate) struct SegMeta {
    pub(crate) id: u64,
    /// Id of the first message published in this segment; for a segment without messages,
    /// the next id at the time it was created (keeps `first` sorted across segments).
    pub(crate) first: u64,
    pub(crate) count: u64,
    pub(crate) live: u64,
    live_bits: Vec<u64>,
    delivered_bits: Vec<u64>,
    runs: Vec<Run>,
    /// Older segments that dead-records in this one point into; sorted, deduplicated.
    refs: Vec<u64>,
    /// The newest Summary of this segment: (segment it was written in, its sequence number;
    /// 0 for one found by recovery, which is on disk).
    summary: Option<(u64, u64)>,
}

impl SegMeta {
    fn new(id: u64, first: u64) -> SegMeta {
        SegMeta {
            id,
            first,
            count: 0,
            live: 0,
            live_bits: Vec::new(),
            delivered_bits: Vec::new(),
            runs: Vec::new(),
            refs: Vec::new(),
            summary: None,
        }
    }

    pub(crate) fn is_live(&self, i: u64) -> bool {
        get(&self.live_bits, i)
    }

    /// Which of its messages are live and which were delivered, as of now (two bits per
    /// message), for replaying recovery.
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness {
            segment: self.id,
            first: self.first,
            live: self.live_bits.clone(),
            delivered: self.delivered_bits.clone(),
        }
    }

    pub(crate) fn is_delivered(&self, i: u64) -> bool {
        get(&self.delivered_bits, i)
    }

    /// Runs as (start, end, queue) index ranges.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.runs.iter().enumerate().map(|(k, r)| {
            let end = self.runs.get(k + 1).map_or(self.count, |n| n.start);
            (r.start, end, r.queue)
        })
    }

    fn kill(&mut self, i: u64) -> bool {
        if !get(&self.live_bits, i) {
            return false;
        }
        clear(&mut self.live_bits, i);
        self.live -= 1;
        true
    }
}

/// A copy of one segment's liveness bits, taken at the end of the recovery scan.
#[derive(Debug)]
pub(crate) struct Liveness {
    pub(crate) segment: u64,
    pub(crate) first: u64,
    live: Vec<u64>,
    delivered: Vec<u64>,
}

impl Liveness {
    /// Message `id` (of this segment) is live.
    pub(crate) fn is_live(&self, id: u64) -> bool {
        id.checked_sub(self.first)
            .is_some_and(|i| get(&self.live, i))
    }

    /// Message `id` (of this segment) was delivered.
    pub(crate) fn is_delivered(&self, id: u64) -> bool {
        id.checked_sub(self.first)
            .is_some_and(|i| get(&self.delivered, i))
    }
}

fn get(bits: &[u64], i: u64) -> bool {
    bits.get((i / 64) as usize)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set(bits: &mut Vec<u64>, i: u64) {
    let w = (i / 64) as usize;
    if bits.len() <= w {
        bits.resize(w + 1, 0);
    }
    bits[w] |= 1 << (i % 64);
}

fn clear(bits: &mut [u64], i: u64) {
    if let Some(w) = bits.get_mut((i / 64) as usize) {
        *w &= !(1 << (i % 64));
    }
}

/// The bit `i` of a little-endian byte bitmap (as stored in a Summary record).
fn byte_bit(bytes: &[u8], i: u64) -> bool {
    bytes
        .get((i / 8) as usize)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Liveness of all stored messages, by segment. The last segment is the one being written.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Sorted by id, and therefore also by `first`.
    segs: Vec<SegMeta>,
    queue_ids: HashMap<Box<str>, u32>,
    queue_names: Vec<Box<str>>,
}

/// The outcome of one garbage-collection pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct GcPass {
    /// Segments removed from the index; the caller unlinks their files and fsyncs the
    /// directory before the next pass.
    pub(crate) deleted: Vec<u64>,
    /// Segments with live messages that block a dead segment; the caller appends a Summary
    /// of each (see [`Index::summarize_at`]).
    pub(crate) summarize: Vec<u64>,
}

impl Index {
    pub(crate) fn segments(&self) -> &[SegMeta] {
        &self.segs
    }

    pub(crate) fn last(&self) -> Option<&SegMeta> {
        self.segs.last()
    }

    /// Starts a new segment; it becomes the target of `add_publish` and of new refs.
    pub(crate) fn push_segment(&mut self, id: u64, first: u64) {
        debug_assert!(self.segs.last().is_none_or(|s| s.id < id));
        self.segs.push(SegMeta::new(id, first));
    }

    pub(crate) fn queue(&self, name: &str) -> Option<u32> {
        self.queue_ids.get(name).copied()
    }

    pub(crate) fn queue_name(&self, q: u32) -> &str {
        &self.queue_names[q as usize]
    }

    pub(crate) fn queue_count(&self) -> usize {
        self.queue_names.len()
    }

    /// The queue's index, interning the name on first use. Names are never forgotten: a
    /// durable queue name costs one small allocation for the life of the process.
    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        if let Some(&q) = self.queue_ids.get(name) {
            return q;
        }
        let q = self.queue_names.len() as u32;
        self.queue_names.push(name.into());
        self.queue_ids.insert(name.into(), q);
        q
    }

    /// Records message `id` of queue `q` in the last segment. Returns false (and changes
    /// nothing) if that would break the segment's contiguous, increasing ids, which only a
    /// damaged log can ask for.
    pub(crate) fn add_publish(&mut self, id: u64, q: u32) -> bool {
        let Some(seg) = self.segs.last_mut() else {
            return false;
        };
        if seg.count == 0 {
            if id < seg.first {
                return false;
            }
            seg.first = id;
        } else if Some(id) != seg.first.checked_add(seg.count) {
            return false;
        }
        let i = seg.count;
        seg.count += 1;
        seg.live += 1;
        set(&mut seg.live_bits, i);
        if seg.runs.last().is_none_or(|r| r.queue != q) {
            seg.runs.push(Run { start: i, queue: q });
        }
        true
    }

    /// (position in `segments()`, index within the segment) of message `id`, if its segment
    /// still exists.
    pub(crate) fn locate(&self, id: u64) -> Option<(usize, u64)> {
        let p = self
            .segs
            .partition_point(|s| s.first <= id)
            .checked_sub(1)?;
        let i = id - self.segs[p].first;
        (i < self.segs[p].count).then_some((p, i))
    }

    pub(crate) fn is_live(&self, id: u64) -> bool {
        self.locate(id)
            .is_some_and(|(p, i)| self.segs[p].is_live(i))
    }

    /// True if `id` is live and not yet marked delivered: only then is a Delivered record
    /// worth writing.
    pub(crate) fn needs_delivered_mark(&self, id: u64) -> bool {
        self.locate(id)
            .is_some_and(|(p, i)| self.segs[p].is_live(i) && !self.segs[p].is_delivered(i))
    }

    /// Kills message `id` because a dead-record for it is being written in the last segment.
    /// Returns false if it was not live (unknown, already acked, or its queue deleted).
    pub(crate) fn kill(&mut self, id: u64) -> bool {
        let Some((p, i)) = self.locate(id) else {
            return false;
        };
        if !self.segs[p].kill(i) {
            return false;
        }
        self.add_ref(p);
        true
    }

    /// Marks live message `id` delivered (a Delivered record is being written in the last
    /// segment). Returns false if it is not live.
    pub(crate) fn mark_delivered(&mut self, id: u64) -> bool {
        let Some((p, i)) = self.locate(id) else {
            return false;
        };
        if !self.segs[p].is_live(i) {
            return false;
        }
        set(&mut self.segs[p].delivered_bits, i);
        self.add_ref(p);
        true
    }

    /// Whether queue `q` has any live message.
    pub(crate) fn has_live(&self, q: u32) -> bool {
        self.segs.iter().any(|s| {
            s.live > 0
                && s.runs()
                    .any(|(a, b, rq)| rq == q && (a..b).any(|i| s.is_live(i)))
        })
    }

    /// Kills every live message of queue `q` (a DeleteQueue record is being written in the
    /// last segment). Returns how many died.
    pub(crate) fn delete_queue(&mut self, q: u32) -> u64 {
        let mut total = 0;
        for p in 0..self.segs.len() {
            let seg = &mut self.segs[p];
            if seg.live == 0 {
                continue;
            }
            let mut killed = 0;
            for k in 0..seg.runs.len() {
                if seg.runs[k].queue != q {
                    continue;
                }
                let end = seg.runs.get(k + 1).map_or(seg.count, |n| n.start);
                for i in seg.runs[k].start..end {
                    killed += u64::from(seg.kill(i));
                }
            }
            if killed > 0 {
                self.add_ref(p);
            }
            total += killed;
        }
        total
    }

    /// Replays a Summary of `segment` found by recovery in the last segment: kills what it
    /// says is dead and marks what it says was delivered. A Summary that does not match the
    /// segment (which only damage can produce) is ignored; that can only resurrect, never lose.
    pub(crate) fn apply_summary(
        &mut self,
        segment: u64,
        first: u64,
        count: u64,
        live: &[u8],
        delivered: &[u8],
    ) {
        let Some(p) = self.position(segment) else {
            return;
        };
        let Some(last) = self.segs.last().map(|s| s.id) else {
            return;
        };
        let seg = &mut self.segs[p];
        if seg.first != first || seg.count != count || seg.id == last {
            return;
        }
        for i in 0..count {
            if !byte_bit(live, i) {
                seg.kill(i);
            } else if byte_bit(delivered, i) && seg.is_live(i) {
                set(&mut seg.delivered_bits, i);
            }
        }
        seg.summary = Some((last, 0));
        self.add_ref(p);
    }

    /// Position in `segments()` of segment `id`, if it still exists.
    pub(crate) fn position(&self, id: u64) -> Option<usize> {
        self.segs.binary_search_by_key(&id, |s| s.id).ok()
    }

    /// Fields of a Summary record of the segment at position `p` as it is now: (first,
    /// count, live bits, delivered bits). Records it as that segment's newest Summary,
    /// written at sequence `seq` into the last segment. `p` must not be the last segment.
    pub(crate) fn summarize_at(&mut self, p: usize, seq: u64) -> (u64, u64, &[u64], &[u64]) {
        debug_assert!(p + 1 < self.segs.len());
        self.add_ref(p);
        let last = self.segs.last().map_or(0, |s| s.id);
        let seg = &mut self.segs[p];
        seg.summary = Some((last, seq));
        (seg.first, seg.count, &seg.live_bits, &seg.delivered_bits)
    }

    /// The last segment (where the current record goes) now refers to segment at `p`.
    fn add_ref(&mut self, p: usize) {
        let target = self.segs[p].id;
        let Some(last) = self.segs.last_mut() else {
            return;
        };
        if last.id == target {
            return;
        }
        if let Err(at) = last.refs.binary_search(&target) {
            last.refs.insert(at, target);
        }
    }

    /// One garbage-collection wave: removes from the index every segment below `below` (the
    /// segment the committer writes; older ones are sealed on disk) that may be deleted now
    /// (see the module docs), given that records up to sequence `synced` are durable. Also
    /// names the live segments whose Summary would unblock a dead one.
    ///
    /// Segments deleted in one wave never depend on each other, so the caller may unlink
    /// them in any order; it must make those unlinks durable before the next wave.
    pub(crate) fn gc_pass(&mut self, below: u64, synced: u64) -> GcPass {
        let mut pass = GcPass::default();
        for t in &self.segs {
            if t.id >= below || t.live > 0 {
                continue;
            }
            let mut blocked = false;
            for &r in &t.refs {
                let Some(p) = self.position(r) else {
                    continue; // already deleted
                };
                let s = &self.segs[p];
                let covered = s
                    .summary
                    .is_some_and(|(written_in, seq)| written_in > t.id && seq <= synced);
                if covered {
                    continue;
                }
                blocked = true;
                // A dead blocker will be deleted in a later wave; a summary of it would
                // only be wasted bytes. A summary already on its way needs only its sync.
                let requested = s.summary.is_some_and(|(written_in, _)| written_in > t.id);
                if s.live > 0 && !requested && !pass.summarize.contains(&r) {
                    pass.summarize.push(r);
                }
            }
            if !blocked {
                pass.deleted.push(t.id);
            }
        }
        if !pass.deleted.is_empty() {
            self.segs
                .retain(|s| pass.deleted.binary_search(&s.id).is_err());
        }
        pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs GC waves to a fixed point with everything durable; returns what was deleted.
    fn gc_all(ix: &mut Index, below: u64) -> Vec<u64> {
        let mut all = Vec::new();
        loop {
            let pass = ix.gc_pass(below, u64::MAX);
            if pass.deleted.is_empty() {
                return all;
            }
            all.extend(pass.deleted);
        }
    }

    #[test]
    fn ids_locate_across_segments_including_empty_ones() {
        let mut ix = Index::default();
        let q = ix.intern("q");
        ix.push_segment(1, 1);
        assert!(ix.add_publish(1, q) && ix.add_publish(2, q));
        ix.push_segment(2, 3); // no messages
        ix.push_segment(3, 3);
        assert!(ix.add_publish(3, q));
        assert!(!ix.add_publish(5, q), "gap inside a segment");
        assert_eq!(ix.locate(2), Some((0, 1)));
        assert_eq!(ix.locate(3), Some((2, 0)));
        assert_eq!(ix.locate(4), None);
        assert_eq!(ix.locate(0), None);
    }

    #[test]
    fn acked_segment_chain_is_deleted_oldest_first() {
        let mut ix = Index::default();
        let q = ix.intern("q");
        ix.push_segment(1, 1);
        ix.add_publish(1, q);
        ix.push_segment(2, 2);
        ix.add_publish(2, q);
        assert!(ix.kill(1)); // ack of 1 lives in segment 2
        ix.push_segment(3, 3);
        assert!(ix.kill(2)); // ack of 2 lives in segment 3
        assert!(!ix.kill(2), "double ack");
        // Segment 2 cannot go in the same wave as segment 1: its ack for 1 must outlive 1.
        assert_eq!(ix.gc_pass(3, u64::MAX).deleted, vec![1]);
        assert_eq!(ix.gc_pass(3, u64::MAX).deleted, vec![2]);
        assert_eq!(gc_all(&mut ix, 3), Vec::<u64>::new(), "3 is being written");
    }

    #[test]
    fn long_lived_message_is_summarized_instead_of_pinning_the_log() {
        let mut ix = Index::default();
        let q = ix.intern("q");
        ix.push_segment(1, 1);
        ix.add_publish(1, q); // long-lived
        ix.add_publish(2, q);
        ix.push_segment(2, 3);
        ix.kill(2);
        ix.push_segment(3, 3);
        // Segment 2 is dead but holds the ack of 2, which segment 1 still needs.
        let pass = ix.gc_pass(3, u64::MAX);
        assert_eq!(
            pass,
            GcPass {
                deleted: vec![],
                summarize: vec![1]
            }
        );
        let (first, count, live, _) = ix.summarize_at(0, 10);
        assert_eq!((first, count, live), (1, 2, &[0b01][..]));
        // Not durable yet: still blocked, and no second summary requested.
        assert_eq!(ix.gc_pass(3, 9), GcPass::default());
        assert_eq!(ix.gc_pass(3, 10).deleted, vec![2]);
        assert!(ix.is_live(1));
    }

    #[test]
    fn delete_queue_kills_only_that_queue_and_refs_its_segments() {
        let mut ix = Index::default();
        let (a, b) = (ix.intern("a"), ix.intern("b"));
        ix.push_segment(1, 1);
        for id in 1..=6 {
            ix.add_publish(id, if id % 2 == 0 { a } else { b });
        }
        ix.push_segment(2, 7);
        assert!(ix.has_live(a));
        assert_eq!(ix.delete_queue(a), 3);
        assert!(!ix.has_live(a) && ix.has_live(b));
        assert_eq!(ix.segs[1].refs, vec![1]);
        assert!((1..=6).all(|id| ix.is_live(id) == (id % 2 == 1)));
    }
}
