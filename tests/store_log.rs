//! The persistent message log (`warren::store`) against a real directory: round trips,
//! group commit, torn and corrupt records, space reclamation (including the resurrection
//! trap), fail-stop under injected I/O errors, and a model-based property test.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use warren::store::{Faults, MessageStore, MsgId, Recovery, Seq, StoreError, StoreOptions};

fn opts(segment_size: u64) -> StoreOptions {
    StoreOptions {
        segment_size,
        ..StoreOptions::default()
    }
}

fn open(dir: &Path, segment_size: u64) -> (MessageStore, Recovery) {
    MessageStore::open(dir, opts(segment_size)).expect("open")
}

/// A store with 1 MiB segments and injected faults.
fn open_faulty(dir: &Path, faults: Faults) -> MessageStore {
    MessageStore::open(
        dir,
        StoreOptions {
            faults,
            ..opts(1 << 20)
        },
    )
    .expect("open")
    .0
}

/// Segment files, oldest first, with their sizes. Files that GC deletes while this runs
/// are left out.
fn segments(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter_map(|p| Some((p.clone(), fs::metadata(&p).ok()?.len())))
        .collect();
    v.sort();
    v
}

fn dir_bytes(dir: &Path) -> u64 {
    segments(dir).iter().map(|(_, n)| n).sum()
}

/// Payloads recovered for `queue`, in order.
fn payloads(rec: &Recovery, queue: &str) -> Vec<Vec<u8>> {
    rec.queues
        .get(queue)
        .map(|v| {
            v.iter()
                .map(|m| m.payload.clone().unwrap().to_vec())
                .collect()
        })
        .unwrap_or_default()
}

fn payload(queue: &str, i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("{queue}-{i}-").into_bytes();
    p.resize(len.max(p.len()), b'x');
    p
}

/// Appends `n` messages to `queue` and waits until they are on disk.
fn publish_confirmed(store: &MessageStore, queue: &str, n: usize, len: usize) -> Vec<MsgId> {
    let mut ids = Vec::new();
    let mut last = Seq(0);
    for i in 0..n {
        let a = store
            .append_publish(queue, &payload(queue, i, len))
            .unwrap();
        ids.push(a.id);
        last = a.seq;
    }
    store.watermark().wait_blocking(last).unwrap();
    ids
}

#[test]
fn round_trip_two_queues_with_acks_and_delivered_marks() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path(), 4096);
    assert!(rec.queues.is_empty() && rec.damage.is_empty());

    struct Msg {
        id: MsgId,
        payload: Vec<u8>,
        delivered: bool,
        acked: bool,
    }
    let mut model: BTreeMap<&str, Vec<Msg>> = BTreeMap::new();
    let mut last = Seq(0);
    for i in 0..600 {
        let q = if i % 3 == 0 { "a" } else { "b" };
        let p = payload(q, i, i % 100);
        let a = store.append_publish(q, &p).unwrap();
        assert!(a.seq > last);
        last = a.seq;
        model.entry(q).or_default().push(Msg {
            id: a.id,
            payload: p,
            delivered: false,
            acked: false,
        });
    }
    store.watermark().wait_blocking(last).unwrap();
    for msgs in model.values_mut() {
        for (k, m) in msgs.iter_mut().enumerate() {
            if k % 4 == 1 {
                store.ack(m.id);
                m.acked = true;
            } else if k % 5 == 2 {
                store.delivered(m.id);
                store.delivered(m.id); // a second mark writes nothing
                m.delivered = true;
            }
        }
    }
    let records = store.stats().records;
    assert_eq!(
        records,
        600 + 150 + 90,
        "one record per ack and per first mark"
    );
    let max_id = model.values().flatten().map(|m| m.id).max().unwrap();
    drop(store);

    let (store, rec) = open(dir.path(), 4096);
    assert!(rec.damage.is_empty());
    assert_eq!(rec.queues.len(), 2);
    for (q, msgs) in &model {
        let live: Vec<_> = msgs.iter().filter(|m| !m.acked).collect();
        let got = &rec.queues[*q];
        assert_eq!(got.len(), live.len(), "queue {q}");
        for (g, m) in got.iter().zip(&live) {
            assert_eq!(g.id, m.id);
            assert_eq!(g.payload.as_deref(), Some(&m.payload[..]));
            assert_eq!(g.delivered, m.delivered, "delivered flag of {:?}", m.id);
            assert_eq!(&store.read(g.loc).unwrap()[..], &m.payload[..], "read back");
        }
    }
    // Ids continue after the highest recovered one.
    let a = store.append_publish("a", b"new").unwrap();
    assert!(a.id > max_id);
}

#[test]
fn read_back_by_location_and_errors_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 1 << 20);
    let a = store.append_publish("q", b"hello world").unwrap();
    store.watermark().wait_blocking(a.seq).unwrap();
    assert_eq!(&store.read(a.loc).unwrap()[..], b"hello world");

    let mut bad = a.loc;
    bad.offset += 1;
    assert!(store.read(bad).is_err());
    bad = a.loc;
    bad.len += 100; // past the end of the file
    assert!(store.read(bad).is_err());
    bad = a.loc;
    bad.segment += 1000;
    assert_eq!(
        store.read(bad).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );

    // Not yet written: an error, never wrong data.
    let big = vec![7u8; 1 << 16];
    let mut locs = Vec::new();
    for _ in 0..50 {
        locs.push(store.append_publish("q", &big).unwrap());
    }
    for a in &locs {
        if let Ok(b) = store.read(a.loc) {
            assert_eq!(&b[..], &big[..]);
        }
    }
    store.flush().unwrap();
    for a in &locs {
        assert_eq!(&store.read(a.loc).unwrap()[..], &big[..]);
    }
}

/// Records the page cache no longer holds come back from `read_many_cached` as
/// `WouldBlock` (the broker then reads them with its worker's other connections moved
/// off), and from `read_many` as data; read once, they are cached again.
#[cfg(target_os = "linux")]
#[test]
fn cached_reads_never_wait_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 1 << 20);
    let expect: Vec<_> = (0..64).map(|i| payload("q", i, 4096)).collect();
    let locs: Vec<_> = expect
        .iter()
        .map(|p| store.append_publish("q", p).unwrap().loc)
        .collect();
    store.flush().unwrap();
    let check = |reads: Vec<std::io::Result<bytes::Bytes>>| {
        for (r, p) in reads.into_iter().zip(&expect) {
            assert_eq!(&r.unwrap()[..], &p[..]);
        }
    };
    check(store.read_many_cached(&locs));
    // Written and synced, the pages are clean: the kernel drops them when asked.
    for (path, _) in segments(dir.path()) {
        let f = fs::File::open(&path).unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
    let cold = store.read_many_cached(&locs);
    assert_eq!(cold.len(), locs.len());
    assert!(
        cold.iter()
            .all(|r| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)),
        "{cold:?}"
    );
    check(store.read_many(&locs));
    check(store.read_many_cached(&locs));
}

#[test]
fn a_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 4096);
    let err = MessageStore::open(dir.path(), opts(4096)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    drop(store);
    let (_store, _) = open(dir.path(), 4096);
}

#[test]
fn oversized_record_gets_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 4096);
    publish_confirmed(&store, "q", 3, 100);
    let big = vec![1u8; 20_000];
    let a = store.append_publish("q", &big).unwrap();
    let b = store.append_publish("q", b"after").unwrap();
    store.watermark().wait_blocking(b.seq).unwrap();
    assert_eq!(a.loc.offset, 0, "starts a segment");
    assert_ne!(a.loc.segment, b.loc.segment, "and has it to itself");
    assert_eq!(&store.read(a.loc).unwrap()[..], &big[..]);
    drop(store);
    let (_, rec) = open(dir.path(), 4096);
    let got = payloads(&rec, "q");
    assert_eq!(got.len(), 5);
    assert_eq!(got[3], big);
    assert_eq!(got[4], b"after");
}

#[test]
fn group_commit_batches_concurrent_async_publishers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 1 << 20);
    let store = Arc::new(store);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    const TASKS: usize = 16;
    const PER_TASK: usize = 1000;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut wm = store.watermark();
                let q = format!("q{}", t % 4);
                for chunk in 0..PER_TASK / 50 {
                    // A pipelining publisher: 50 in flight, then wait for the newest.
                    let mut last = Seq(0);
                    for i in 0..50 {
                        last = store
                            .append_publish(&q, &payload(&q, chunk * 50 + i, 256))
                            .unwrap()
                            .seq;
                    }
                    wm.wait(last).await.unwrap();
                    assert!(wm.status(last).unwrap());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let stats = store.stats();
    assert_eq!(stats.appends, (TASKS * PER_TASK) as u64);
    assert!(
        stats.syncs * 4 < stats.appends,
        "expected batching, got {} syncs for {} appends",
        stats.syncs,
        stats.appends
    );
    drop(store);
    let (_, rec) = open(dir.path(), 1 << 20);
    let total: usize = rec.queues.values().map(Vec::len).sum();
    assert_eq!(total, TASKS * PER_TASK);
}

#[test]
fn group_commit_batches_blocking_publishers_waiting_on_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 1 << 20);
    let store = Arc::new(store);
    const THREADS: usize = 8;
    const PER_THREAD: usize = 300;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let wm = store.watermark();
                for i in 0..PER_THREAD {
                    let a = store
                        .append_publish("q", &payload("t", t * 1000 + i, 64))
                        .unwrap();
                    wm.wait_blocking(a.seq).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.appends, (THREADS * PER_THREAD) as u64);
    assert!(
        stats.syncs < stats.appends,
        "expected batching, got {} syncs for {} appends",
        stats.syncs,
        stats.appends
    );
}

/// Appends 100 messages in one segment, closes, and returns the newest segment's path.
fn hundred_messages(dir: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let (store, _) = open(dir, 1 << 20);
    publish_confirmed(&store, "q", 100, 50);
    drop(store);
    let segs = segments(dir);
    assert_eq!(segs.len(), 1);
    let expect = (0..100).map(|i| payload("q", i, 50)).collect();
    (segs[0].0.clone(), expect)
}

/// Reopens after damage: the first 99 messages survive, the store is writable, and what it
/// writes survives a second reopen with no damage reported.
fn check_recovers_99_and_stays_writable(dir: &Path, expect: &[Vec<u8>]) {
    let (store, rec) = open(dir, 1 << 20);
    assert_eq!(rec.damage.len(), 1, "{:?}", rec.damage);
    assert!(rec.damage[0].truncated);
    assert_eq!(payloads(&rec, "q"), expect[..99]);
    publish_confirmed(&store, "q", 5, 10);
    drop(store);
    let (_, rec) = open(dir, 1 << 20);
    assert!(rec.damage.is_empty(), "{:?}", rec.damage);
    let got = payloads(&rec, "q");
    assert_eq!(got.len(), 104);
    assert_eq!(got[..99], expect[..99]);
}

#[test]
fn torn_tail_is_truncated_and_the_store_stays_writable() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, expect) = hundred_messages(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    check_recovers_99_and_stays_writable(dir.path(), &expect);
}

#[test]
fn flipped_byte_in_last_record_drops_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, expect) = hundred_messages(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    check_recovers_99_and_stays_writable(dir.path(), &expect);
}

#[test]
fn zeroed_tail_after_a_crash_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, expect) = hundred_messages(dir.path());
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0; 4096]).unwrap();
    drop(f);
    let (_, rec) = open(dir.path(), 1 << 20);
    assert_eq!(rec.damage.len(), 1);
    assert_eq!(payloads(&rec, "q"), expect);
}

#[test]
fn corruption_in_an_older_segment_keeps_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 2048);
    publish_confirmed(&store, "q", 60, 100);
    drop(store);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    // Damage the third record of the first segment (each is 8 + 1 + 8 + 2 + 1 + 100 bytes).
    let rec_len = 120;
    let mut f = OpenOptions::new().write(true).open(&segs[0].0).unwrap();
    f.seek(SeekFrom::Start(2 * rec_len + 50)).unwrap();
    f.write_all(b"garbage").unwrap();
    drop(f);
    let per_seg = (2048 / rec_len) as usize;

    let (_, rec) = open(dir.path(), 2048);
    assert_eq!(rec.damage.len(), 1);
    assert!(
        !rec.damage[0].truncated,
        "older segments are left as they are"
    );
    let got = payloads(&rec, "q");
    let expect: Vec<_> = (0..60)
        .filter(|&i| i < 2 || i >= per_seg)
        .map(|i| payload("q", i, 100))
        .collect();
    assert_eq!(got, expect);
}

/// Copies the segment files of a running store, newest first. A file deleted by GC during
/// the copy is skipped: GC deletes older segments before the newer ones that depend on them,
/// so copying newest first never keeps a dependent without what it depends on. The copy
/// is not an exact crash image (it reads the page cache), but it does contain torn tails and
/// half-collected logs.
fn snapshot(from: &Path, to: &Path) {
    let mut segs = segments(from);
    segs.reverse();
    for (path, _) in segs {
        match fs::copy(&path, to.join(path.file_name().unwrap())) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => {
                r.unwrap();
            }
        }
    }
}

#[test]
fn snapshots_of_a_busy_store_keep_every_confirmed_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 16 << 10);
    let mut published: HashMap<MsgId, Vec<u8>> = HashMap::new();
    let mut live: Vec<MsgId> = Vec::new();
    let mut n = 0;
    for round in 0..60 {
        let mut last = Seq(0);
        for _ in 0..40 {
            let p = payload("q", n, n % 700);
            n += 1;
            let a = store.append_publish("q", &p).unwrap();
            published.insert(a.id, p);
            live.push(a.id);
            last = a.seq;
        }
        store.watermark().wait_blocking(last).unwrap();
        // Ack two thirds, oldest first; their records are still being written and
        // collected while the snapshot below runs.
        let keep = live.split_off(live.len() * 2 / 3);
        for id in std::mem::replace(&mut live, keep) {
            store.ack(id);
        }
        if round % 7 == 0 {
            let copy = tempfile::tempdir().unwrap();
            snapshot(dir.path(), copy.path());
            let (_, rec) = open(copy.path(), 16 << 10);
            let got: HashMap<MsgId, Vec<u8>> = rec
                .queues
                .get("q")
                .into_iter()
                .flatten()
                .map(|m| (m.id, m.payload.clone().unwrap().to_vec()))
                .collect();
            for (id, p) in &got {
                assert_eq!(
                    published.get(id),
                    Some(p),
                    "recovered something never published"
                );
            }
            for id in &live {
                assert!(got.contains_key(id), "round {round}: confirmed {id:?} lost");
            }
        }
    }
}

#[test]
fn drained_queue_returns_to_near_zero_disk() {
    let dir = tempfile::tempdir().unwrap();
    const SEG: u64 = 256 << 10;
    let (store, _) = open(dir.path(), SEG);
    let ids = publish_confirmed(&store, "q", 10_000, 1024);
    assert!(dir_bytes(dir.path()) > 10_000 * 1024);
    for id in ids {
        store.ack(id);
    }
    store.flush().unwrap();
    let left = dir_bytes(dir.path());
    assert!(
        left <= SEG,
        "{left} bytes left in {:?}",
        segments(dir.path())
    );
    assert!(store.stats().segments_deleted >= 35);
    drop(store);

    let (_, rec) = open(dir.path(), SEG);
    assert!(rec.queues.is_empty());
    assert!(dir_bytes(dir.path()) <= SEG);
}

#[test]
fn streaming_consumer_keeps_disk_bounded() {
    let dir = tempfile::tempdir().unwrap();
    const SEG: u64 = 64 << 10;
    let (store, _) = open(dir.path(), SEG);
    let mut unacked = std::collections::VecDeque::new();
    let mut peak = 0;
    for round in 0..100 {
        let ids = publish_confirmed(&store, "q", 100, 1024);
        unacked.extend(ids);
        while unacked.len() > 200 {
            store.ack(unacked.pop_front().unwrap());
        }
        if round % 10 == 9 {
            store.flush().unwrap();
            peak = peak.max(dir_bytes(dir.path()));
        }
    }
    // ~10 MiB went through; at most ~200 KiB are live at any time.
    assert!(peak < 8 * SEG, "peak {peak}");
}

#[test]
fn long_lived_message_neither_pins_the_log_nor_lets_acks_resurrect() {
    let dir = tempfile::tempdir().unwrap();
    const SEG: u64 = 8 << 10;
    let (store, _) = open(dir.path(), SEG);
    // The first segment: one long-lived message and messages acked from later segments.
    let slow = publish_confirmed(&store, "slow", 1, 200)[0];
    // A consumer one round behind: every segment holds acks for the previous one, a chain
    // of refs back to the first segment.
    let mut previous = Vec::new();
    for _ in 0..60 {
        let ids = publish_confirmed(&store, "fast", 20, 200);
        for id in std::mem::replace(&mut previous, ids) {
            store.ack(id);
        }
    }
    for id in previous {
        store.ack(id);
    }
    // ~1.2 MiB passed through 8 KiB segments. The first one stays (it holds `slow`); the
    // rest go once a Summary of the first one is durable, which takes a second batch.
    store.flush().unwrap();
    store.flush().unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() <= 4, "{} segments: {segs:?}", segs.len());
    drop(store);

    let (store, rec) = open(dir.path(), SEG);
    assert_eq!(
        rec.queues.len(),
        1,
        "acked messages came back: {:?}",
        rec.queues.keys()
    );
    assert_eq!(rec.queues["slow"].len(), 1);
    assert_eq!(rec.queues["slow"][0].id, slow);
    store.ack(slow);
    store.flush().unwrap();
    drop(store);
    let (_, rec) = open(dir.path(), SEG);
    assert!(rec.queues.is_empty());
    assert!(dir_bytes(dir.path()) <= SEG);
}

#[test]
fn delete_queue_kills_earlier_messages_only_and_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    const SEG: u64 = 16 << 10;
    let (store, _) = open(dir.path(), SEG);
    publish_confirmed(&store, "gone", 300, 500);
    publish_confirmed(&store, "kept", 10, 10);
    store.delete_queue("gone");
    store.delete_queue("never-existed");
    let again = publish_confirmed(&store, "gone", 5, 10);
    drop(store);

    let (store, rec) = open(dir.path(), SEG);
    assert_eq!(payloads(&rec, "kept").len(), 10);
    let gone: Vec<_> = rec.queues["gone"].iter().map(|m| m.id).collect();
    assert_eq!(gone, again);
    store.delete_queue("gone");
    store.delete_queue("kept");
    store.flush().unwrap();
    assert!(dir_bytes(dir.path()) <= SEG, "{:?}", segments(dir.path()));
    drop(store);
    let (_, rec) = open(dir.path(), SEG);
    assert!(rec.queues.is_empty());
}

#[test]
fn failed_sync_is_fail_stop_and_confirmed_messages_survive() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults {
        fail_sync_after: Some(5),
        ..Faults::default()
    };
    let store = open_faulty(dir.path(), faults);
    let wm = store.watermark();
    let mut confirmed = Vec::new();
    let mut failed_confirms = 0;
    let mut refused = 0;
    for i in 0..20 {
        match store.append_publish("q", &payload("q", i, 10)) {
            Err(StoreError::Failed) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
            Ok(a) => match wm.wait_blocking(a.seq) {
                Ok(()) => {
                    assert_eq!(failed_confirms, 0, "a confirm after the failure");
                    confirmed.push(payload("q", i, 10));
                }
                Err(StoreError::Io(e)) => {
                    assert!(e.to_string().contains("injected"));
                    failed_confirms += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            },
        }
    }
    // One message per batch, one sync per batch: exactly five made it.
    assert_eq!(confirmed.len(), 5);
    assert_eq!(failed_confirms, 1);
    assert_eq!(refused, 14);
    assert!(matches!(wm.status(Seq(6)), Err(StoreError::Io(_))));
    assert!(store.flush().is_err());
    store.ack(MsgId(1)); // ignored, no panic
    assert!(store.close().is_err());

    let (_, rec) = open(dir.path(), 1 << 20);
    let got = payloads(&rec, "q");
    assert!(got.len() >= 5, "confirmed messages lost");
    assert_eq!(got[..5], confirmed[..]);
}

#[test]
fn failed_sync_under_concurrency_never_confirms_past_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults {
        fail_sync_after: Some(3),
        ..Faults::default()
    };
    let store = open_faulty(dir.path(), faults);
    let store = Arc::new(store);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut wm = store.watermark();
                let mut out = Vec::new();
                for i in 0..200 {
                    let Ok(a) = store.append_publish("q", &payload("q", t * 1000 + i, 100)) else {
                        break;
                    };
                    out.push((a.seq, payload("q", t * 1000 + i, 100), wm.wait(a.seq).await));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let synced = store.watermark().synced();
    let mut confirmed = Vec::new();
    for (seq, p, r) in &results {
        match r {
            Ok(()) => {
                assert!(*seq <= synced);
                confirmed.push(p.clone());
            }
            Err(e) => {
                assert!(*seq > synced);
                assert!(matches!(e, StoreError::Io(_)));
            }
        }
    }
    assert!(results.iter().any(|r| r.2.is_err()));
    drop(store);
    let (_, rec) = open(dir.path(), 1 << 20);
    let got: std::collections::HashSet<_> = payloads(&rec, "q").into_iter().collect();
    for p in confirmed {
        assert!(got.contains(&p), "confirmed message lost");
    }
}

#[test]
fn failed_write_is_fail_stop() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults {
        fail_write_after: Some(2),
        ..Faults::default()
    };
    let store = open_faulty(dir.path(), faults);
    let wm = store.watermark();
    let mut outcomes = Vec::new();
    for i in 0..5 {
        match store.append_publish("q", &payload("q", i, 10)) {
            Ok(a) => outcomes.push(wm.wait_blocking(a.seq).is_ok()),
            Err(e) => {
                assert!(matches!(e, StoreError::Failed));
                outcomes.push(false);
            }
        }
    }
    assert_eq!(outcomes, [true, true, false, false, false]);
    drop(store);
    let (_, rec) = open(dir.path(), 1 << 20);
    assert_eq!(payloads(&rec, "q").len(), 2);
}

/// Out of space (injected ENOSPC on every write while the flag is up): the confirm that
/// could not be written is lost (nacked), appends are refused, acks are still taken; once
/// space returns the store writes on by itself, the lost record reaches the disk anyway
/// (its confirm stays lost), and a reopen finds everything that was written in order.
#[test]
fn running_out_of_space_nacks_refuses_then_recovers_when_space_returns() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let full = Arc::new(AtomicBool::new(false));
    let faults = Faults {
        no_space: Some(full.clone()),
        ..Faults::default()
    };
    let store = open_faulty(dir.path(), faults);
    let wm = store.watermark();
    let a = store.append_publish("q", &payload("q", 0, 10)).unwrap();
    wm.wait_blocking(a.seq).unwrap();
    let gone = store.append_publish("q", &payload("gone", 0, 10)).unwrap();
    wm.wait_blocking(gone.seq).unwrap();

    full.store(true, Ordering::Relaxed);
    let b = store.append_publish("q", &payload("q", 1, 10)).unwrap();
    assert!(matches!(
        wm.wait_blocking(b.seq),
        Err(StoreError::NoSpace(_))
    ));
    assert!(matches!(wm.status(b.seq), Err(StoreError::NoSpace(_))));
    assert!(wm.status(a.seq).unwrap(), "earlier confirms stand");
    assert!(matches!(
        store.append_publish("q", &payload("refused", 0, 10)),
        Err(StoreError::NoSpace(_))
    ));
    assert!(matches!(store.flush(), Err(StoreError::NoSpace(_))));
    assert_eq!(
        store.read(b.loc).unwrap(),
        payload("q", 1, 10),
        "a record the disk has not taken is read from memory"
    );
    // Taken now, written once space returns.
    store.ack(gone.id);

    full.store(false, Ordering::Relaxed);
    // The committer retries on its own (at most `RETRY_MAX` apart): wait for it, bounded.
    let end = Instant::now() + std::time::Duration::from_secs(10);
    let c = loop {
        match store.append_publish("q", &payload("q", 2, 10)) {
            Ok(c) => break c,
            Err(StoreError::NoSpace(_)) => {
                assert!(Instant::now() < end, "the store never came back");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    wm.wait_blocking(c.seq).unwrap();
    assert!(wm.status(c.seq).unwrap());
    assert!(
        matches!(wm.status(b.seq), Err(StoreError::NoSpace(_))),
        "a lost confirm stays lost"
    );
    assert_eq!(
        store.read(b.loc).unwrap(),
        payload("q", 1, 10),
        "written after all"
    );
    store.flush().unwrap();
    drop(store);
    let (_, rec) = open(dir.path(), 1 << 20);
    assert_eq!(
        payloads(&rec, "q"),
        vec![
            payload("q", 0, 10),
            payload("q", 1, 10),
            payload("q", 2, 10)
        ]
    );
}

#[test]
fn payloads_can_be_left_on_disk_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 4096);
    publish_confirmed(&store, "q", 50, 100);
    drop(store);
    let (store, rec) = MessageStore::open(
        dir.path(),
        StoreOptions {
            recover_payloads: false,
            ..opts(4096)
        },
    )
    .unwrap();
    let msgs = &rec.queues["q"];
    assert_eq!(msgs.len(), 50);
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.payload.is_none());
        assert_eq!(store.read(m.loc).unwrap(), payload("q", i, 100));
    }
}

#[derive(Clone, Debug)]
enum Op {
    Publish { queue: u8, len: u16 },
    Ack { pick: u16 },
    Deliver { pick: u16 },
    DeleteQueue { queue: u8 },
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u16..300).prop_map(|(queue, len)| Op::Publish { queue, len }),
        4 => any::<u16>().prop_map(|pick| Op::Ack { pick }),
        2 => any::<u16>().prop_map(|pick| Op::Deliver { pick }),
        1 => (0u8..3).prop_map(|queue| Op::DeleteQueue { queue }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

/// Per queue: (id, payload, delivered), in append order.
type Model = BTreeMap<String, Vec<(MsgId, Vec<u8>, bool)>>;

fn check(rec: &Recovery, model: &Model, store: &MessageStore) -> Result<(), TestCaseError> {
    let live: Vec<_> = model.iter().filter(|(_, v)| !v.is_empty()).collect();
    prop_assert_eq!(rec.queues.len(), live.len());
    for (q, msgs) in live {
        let got = &rec.queues[q];
        prop_assert_eq!(got.len(), msgs.len());
        for (g, m) in got.iter().zip(msgs) {
            prop_assert_eq!(g.id, m.0);
            prop_assert_eq!(g.payload.as_deref(), Some(&m.1[..]));
            prop_assert_eq!(g.delivered, m.2);
            prop_assert_eq!(&store.read(g.loc).unwrap()[..], &m.1[..]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_histories_recover_exactly_the_model(ops in proptest::collection::vec(op(), 1..150)) {
        let dir = tempfile::tempdir().unwrap();
        let seg = 700;
        let (mut store, _) = open(dir.path(), seg);
        let mut model = Model::new();
        let mut n = 0usize;
        for op in ops {
            match op {
                Op::Publish { queue, len } => {
                    let q = format!("q{queue}");
                    let p = payload(&q, n, len as usize);
                    n += 1;
                    let a = store.append_publish(&q, &p).unwrap();
                    model.entry(q).or_default().push((a.id, p, false));
                }
                Op::Ack { pick } | Op::Deliver { pick } => {
                    let all: Vec<_> = model.values().flatten().map(|m| m.0).collect();
                    if all.is_empty() {
                        continue;
                    }
                    let id = all[pick as usize % all.len()];
                    for msgs in model.values_mut() {
                        if matches!(op, Op::Ack { .. }) {
                            msgs.retain(|m| m.0 != id);
                        } else if let Some(m) = msgs.iter_mut().find(|m| m.0 == id) {
                            m.2 = true;
                        }
                    }
                    if matches!(op, Op::Ack { .. }) {
                        store.ack(id);
                    } else {
                        store.delivered(id);
                    }
                }
                Op::DeleteQueue { queue } => {
                    let q = format!("q{queue}");
                    store.delete_queue(&q);
                    model.remove(&q);
                }
                Op::Flush => store.flush().unwrap(),
                Op::Reopen => {
                    drop(store);
                    let (s, rec) = open(dir.path(), seg);
                    store = s;
                    prop_assert!(rec.damage.is_empty());
                    check(&rec, &model, &store)?;
                }
            }
        }
        drop(store);
        let (store, rec) = open(dir.path(), seg);
        check(&rec, &model, &store)?;
        // Dead segments are gone: what is left is bounded by the live bytes, plus segments
        // kept for their acks (at most one per live segment) and the one being written.
        let live_bytes: usize = model.values().flatten().map(|m| m.1.len() + 40).sum();
        let files = segments(dir.path()).len();
        prop_assert!(files <= 2 * (live_bytes / 300 + 1) + 3, "{} files for {} live bytes", files, live_bytes);
    }
}

/// Throughput with real `fdatasync`, 1 KiB records. Run with
/// `cargo test --release --test store_log -- --ignored --nocapture throughput`.
///
/// 1. One appending thread keeping up to 20k records in flight (a broker with many
///    pipelining publishers): bound by write bandwidth, batches grow to thousands.
/// 2. 16 threads that each wait for every confirm (synchronous publishers): bound by
///    `fdatasync` latency, with at most 16 records per batch.
/// 3. Reopen with all 300k live (recovery scan), then ack everything and collect garbage.
#[test]
#[ignore]
fn throughput_1k_records_real_fdatasync() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (store, _) = open(dir.path(), 8 << 20);
    let wm = store.watermark();
    let body = vec![0x5a; 1024];
    const N: usize = 300_000;
    const WINDOW: u64 = 20_000;
    let start = Instant::now();
    let mut last = Seq(0);
    for _ in 0..N {
        last = store.append_publish("bench", &body).unwrap().seq;
        if last.0 > WINDOW && last.0.is_multiple_of(1000) {
            wm.wait_blocking(Seq(last.0 - WINDOW)).unwrap();
        }
    }
    wm.wait_blocking(last).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stats = store.stats();
    println!(
        "pipelined: {N} x 1 KiB confirmed in {secs:.2} s = {:.0} msgs/s, {:.0} MiB/s, \
         {} syncs ({:.0} msgs/sync)",
        N as f64 / secs,
        N as f64 * 1024.0 / secs / 1048576.0,
        stats.syncs,
        N as f64 / stats.syncs as f64
    );

    let store = Arc::new(store);
    const THREADS: usize = 16;
    const PER_THREAD: usize = 1000;
    let syncs_before = store.stats().syncs;
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let wm = store.watermark();
                let body = vec![0x5a; 1024];
                for _ in 0..PER_THREAD {
                    let a = store.append_publish("sync", &body).unwrap();
                    wm.wait_blocking(a.seq).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let syncs = store.stats().syncs - syncs_before;
    let n = THREADS * PER_THREAD;
    println!(
        "synchronous: {THREADS} threads x {PER_THREAD} confirmed one by one in {secs:.2} s = \
         {:.0} msgs/s, {syncs} syncs ({:.1} msgs/sync, {:.0} us/sync)",
        n as f64 / secs,
        n as f64 / syncs as f64,
        secs * 1e6 / syncs as f64
    );
    drop(store);

    let start = Instant::now();
    let (store, rec) = open(dir.path(), 8 << 20);
    let live = rec.queues["bench"].len() + rec.queues["sync"].len();
    println!(
        "reopen with {live} live messages in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let ids: Vec<_> = rec.queues.values().flatten().map(|m| m.id).collect();
    drop(rec);
    let start = Instant::now();
    for id in ids {
        store.ack(id);
    }
    store.flush().unwrap();
    println!(
        "{live} acks + GC in {:.2} s, {} bytes left on disk",
        start.elapsed().as_secs_f64(),
        dir_bytes(dir.path())
    );
}

/// `read_many` reads runs of nearby records with one `pread` each and returns exactly what
/// `read` returns one by one: across segments, with other queues' records and acks in
/// between, with gaps too large to read through, and for a location that holds nothing.
#[test]
fn read_many_matches_read_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 64 * 1024);
    let mut mine = Vec::new();
    for i in 0..400 {
        let a = store
            .append_publish("q", &payload("q", i, 100 + i * 7))
            .unwrap();
        mine.push(a.loc);
        let other = store
            .append_publish(
                "other",
                &payload("other", i, if i % 50 == 0 { 20_000 } else { 30 }),
            )
            .unwrap();
        if i % 3 == 0 {
            store.ack(other.id);
        }
    }
    store.flush().unwrap();
    let mut locs: Vec<_> = mine.iter().copied().step_by(2).collect();
    locs.push(warren::store::Location {
        segment: 999,
        offset: 0,
        len: 64,
    });
    let many = store.read_many(&locs);
    assert_eq!(many.len(), locs.len());
    for (loc, got) in locs.iter().zip(&many) {
        match (store.read(*loc), got) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{loc:?}: read {a:?}, read_many {b:?}"),
        }
    }
    assert!(many[..locs.len() - 1].iter().all(Result::is_ok));
    assert!(segments(dir.path()).len() > 2);
}

/// `replay` streams exactly the messages (ids, locations, delivered marks, payloads) that
/// the collecting open returns, in the same order, while keeping none of them at open.
#[test]
fn replay_yields_what_collecting_recovery_returns() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path(), 32 * 1024);
        for i in 0..600 {
            let q = ["a", "b", "c"][i % 3];
            let a = store.append_publish(q, &payload(q, i, 50 + i)).unwrap();
            if i % 4 == 0 {
                store.ack(a.id);
            } else if i % 5 == 0 {
                store.delivered(a.id);
            }
        }
        store.delete_queue("c");
        store.close().unwrap();
    }
    let collected = {
        let (store, rec) = open(dir.path(), 32 * 1024);
        store.close().unwrap();
        rec.queues
    };
    let (store, mut rec) = MessageStore::open(
        dir.path(),
        StoreOptions {
            segment_size: 32 * 1024,
            recover_payloads: false,
            replay: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert!(rec.queues.is_empty());
    let mut replayed: HashMap<String, Vec<_>> = HashMap::new();
    rec.replay(|q, m, p| {
        assert!(m.payload.is_none());
        assert_eq!(&m.head[..], &p[..8]);
        replayed
            .entry(q.to_owned())
            .or_default()
            .push((m.id, m.loc, m.delivered, p.to_vec()));
    })
    .unwrap();
    let want: HashMap<String, Vec<_>> = collected
        .into_iter()
        .map(|(q, v)| {
            let v = v
                .into_iter()
                .map(|m| (m.id, m.loc, m.delivered, m.payload.unwrap().to_vec()))
                .collect();
            (q, v)
        })
        .collect();
    assert_eq!(replayed, want);
    assert_eq!(replayed["a"].len(), 150);
    assert!(!replayed.contains_key("c"));
    assert!(replayed["b"].iter().any(|m| m.2));
    store.close().unwrap();
}

/// `published` names the newest Publish record, not the newest record: waiting for it
/// returns even when only acks were appended after it (a batch of acks alone is never
/// synced, so waiting for an ack's sequence number could block forever).
#[test]
fn published_is_the_newest_publish_and_waiting_for_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), 64 * 1024);
    let a = store.append_publish("q", b"one").unwrap();
    let b = store.append_publish("q", b"two").unwrap();
    store.ack(a.id);
    store.delivered(b.id);
    assert_eq!(store.published(), b.seq);
    let wm = store.watermark();
    let (tx, rx) = std::sync::mpsc::channel();
    let seq = store.published();
    std::thread::spawn(move || tx.send(wm.wait_blocking(seq)).unwrap());
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the wait returned")
        .unwrap();
    assert_eq!(&store.read(b.loc).unwrap()[..], b"two");
    store.close().unwrap();
}
