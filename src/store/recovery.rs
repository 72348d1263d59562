//! Opening a store: one sequential scan of every segment, in id order, that rebuilds the
//! liveness index and the per-queue lists of live messages (or, in replay mode, a copy of
//! the liveness bits of the segments that hold live ones; see `Recovery::replay`), then
//! deletes what is dead.
//!
//! Runs on the caller's thread inside `MessageStore::open`, before the committer exists, so
//! nothing else touches the directory.
//!
//! # Damage
//!
//! The committer syncs a segment before it creates the next one, so after a crash only the
//! newest segment can end in a torn record (or in zeros). A bad record there is the normal
//! crash case: that segment is truncated at the record, and the store starts.
//!
//! A bad record in any older segment is real corruption (the disk lost synced bytes). The
//! rest of *that* segment is unreadable and is skipped, but later segments are still read:
//! they are independently framed, and they hold confirmed messages that stopping here would
//! throw away. What the skipped bytes said is lost either way; the worst that reading on can
//! do is bring back a message whose ack (or queue delete) was in the skipped part, i.e. a
//! redelivery, which at-least-once delivery allows. The older segment is left as it is
//! (evidence, and nothing appends to it) and is deleted by GC once its readable messages
//! are dead. Each damaged segment is reported by one `warn!` line and in
//! [`Recovery::damage`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use bytes::Bytes;

use super::index::Index;
use super::segment::{self, Record};
use super::{
    Damage, HEAD_BYTES, Location, MsgId, RecoveredMessage, Recovery, StoreOptions, head_of,
};

/// What `MessageStore::open` needs to start the committer.
pub(crate) struct Recovered {
    /// Liveness of the recovered segments, plus an empty segment `next_seg` to write.
    pub(crate) index: Index,
    pub(crate) next_seg: u64,
    pub(crate) next_msg: u64,
    pub(crate) recovery: Recovery,
}

/// Where a recovered message's record is, within its segment's bytes.
struct ScanMsg {
    offset: u64,
    len: u32,
    payload_start: u64,
    head: [u8; HEAD_BYTES],
}

pub(crate) fn recover(dir: &Path, opts: &StoreOptions) -> io::Result<Recovered> {
    let ids = list_segments(dir)?;
    let mut index = Index::default();
    let mut next_msg: u64 = 1;
    // Parallel to `index.segments()` until GC runs below.
    let mut scans: Vec<(Option<Bytes>, Vec<ScanMsg>)> = Vec::with_capacity(ids.len());
    let mut damage = Vec::new();

    for (k, &seg) in ids.iter().enumerate() {
        let newest = k + 1 == ids.len();
        let path = segment::path(dir, seg);
        let data = fs::read(&path)?;
        index.push_segment(seg, next_msg);
        let mut msgs = Vec::new();
        let mut pos = 0;
        let mut bad = None;
        while pos < data.len() {
            let (rec, total) = match segment::decode(&data, pos) {
                Ok(r) => r,
                Err(why) => {
                    bad = Some(why);
                    break;
                }
            };
            match rec {
                Record::Publish { id, queue, payload } => {
                    let q = index.intern(queue);
                    if id < next_msg || id == u64::MAX || !index.add_publish(id, q) {
                        bad = Some("message id out of order");
                        break;
                    }
                    next_msg = id + 1;
                    if !opts.replay {
                        msgs.push(ScanMsg {
                            offset: pos as u64,
                            len: total as u32,
                            payload_start: payload.start as u64,
                            head: head_of(&data[payload]),
                        });
                    }
                }
                Record::Ack { id } => {
                    index.kill(id);
                }
                Record::Delivered { id } => {
                    index.mark_delivered(id);
                }
                Record::DeleteQueue { queue } => {
                    if let Some(q) = index.queue(queue) {
                        index.delete_queue(q);
                    }
                }
                Record::Summary {
                    segment,
                    first,
                    count,
                    live,
                    delivered,
                } => index.apply_summary(segment, first, count, live, delivered),
            }
            pos += total;
        }
        if let Some(reason) = bad {
            let d = Damage {
                segment: seg,
                offset: pos as u64,
                dropped_bytes: (data.len() - pos) as u64,
                reason,
                truncated: newest,
            };
            tracing::warn!(
                file = %path.display(),
                offset = d.offset,
                dropped_bytes = d.dropped_bytes,
                reason,
                truncated = newest,
                "message store: bad record; ignoring the rest of this segment"
            );
            if newest {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(d.offset)?;
                f.sync_all()?;
            }
            damage.push(d);
        } else if newest && !data.is_empty() {
            // A crashed process may have left written-but-unsynced records in the page cache;
            // GC below and later confirms must not rest on bytes that a power cut could
            // still take away.
            File::open(&path)?.sync_data()?;
        }
        let data = (opts.recover_payloads && !opts.replay).then(|| Bytes::from(data));
        scans.push((data, msgs));
    }

    let (queues, live) = if opts.replay {
        let live = index
            .segments()
            .iter()
            .filter(|s| s.live > 0)
            .map(|s| s.liveness())
            .collect();
        (HashMap::new(), live)
    } else {
        (collect_live(&index, scans), Vec::new())
    };

    let next_seg = match ids.last() {
        None => 1,
        Some(&last) => last.checked_add(1).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "segment id space exhausted")
        })?,
    };
    // Same rule and waves as the committer's GC; Summaries found above are on disk.
    loop {
        let pass = index.gc_pass(next_seg, 0);
        if pass.deleted.is_empty() {
            break;
        }
        for &id in &pass.deleted {
            match fs::remove_file(segment::path(dir, id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        sync_dir(dir)?;
    }
    index.push_segment(next_seg, next_msg);
    Ok(Recovered {
        index,
        next_seg,
        next_msg,
        recovery: Recovery {
            queues,
            damage,
            live,
            dir: dir.to_path_buf(),
        },
    })
}

/// The live messages of every queue, in append order (segment order, then id order).
fn collect_live(
    index: &Index,
    scans: Vec<(Option<Bytes>, Vec<ScanMsg>)>,
) -> HashMap<String, Vec<RecoveredMessage>> {
    let mut per_queue: Vec<Vec<RecoveredMessage>> = Vec::new();
    per_queue.resize_with(index.queue_count(), Vec::new);
    for (seg, (data, msgs)) in index.segments().iter().zip(scans) {
        if seg.live == 0 {
            continue; // its bytes (if kept) are freed here
        }
        for (start, end, q) in seg.runs() {
            for i in start..end {
                if !seg.is_live(i) {
                    continue;
                }
                // `runs` and `msgs` both cover exactly the segment's accepted Publishes.
                let m = &msgs[i as usize];
                let payload = data.as_ref().map(|d| {
                    d.slice(m.payload_start as usize..(m.offset + u64::from(m.len)) as usize)
                });
                per_queue[q as usize].push(RecoveredMessage {
                    id: MsgId(seg.first + i),
                    loc: Location {
                        segment: seg.id,
                        offset: m.offset,
                        len: m.len,
                    },
                    payload,
                    head: m.head,
                    delivered: seg.is_delivered(i),
                });
            }
        }
    }
    per_queue
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(q, v)| (index.queue_name(q as u32).to_owned(), v))
        .collect()
}

/// Segment ids in `dir`, ascending. Other files are left alone.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(segment::parse_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
