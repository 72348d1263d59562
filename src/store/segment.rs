//! The on-disk format of one segment file: file naming, record framing, encode and decode.
//!
//! Pure functions over byte slices; no file I/O happens here (the committer writes, recovery
//! and `MessageStore::read` read). Decoding never panics and never allocates from a length
//! read off disk: every length is checked against the bytes actually present.
//!
//! A segment is a sequence of records:
//!
//! ```text
//! [len u32 LE][crc u32 LE][kind u8][body: len - 1 bytes]
//! ```
//!
//! `len` counts kind + body. Bodies (all integers little-endian):
//!
//! | kind | name        | body |
//! |------|-------------|------|
//! | 1    | Publish     | `id u64, qlen u16, queue (UTF-8), payload` |
//! | 2    | Delivered   | `id u64` |
//! | 3    | Ack         | `id u64` |
//! | 4    | DeleteQueue | `qlen u16, queue (UTF-8)` |
//! | 5    | Summary     | `segment u64, first u64, count u64, live bits, delivered bits` |
//!
//! The CRC-32 (IEEE, crc32fast) covers kind and body, but for kinds 1-3 it is computed over
//! `kind ‖ body[8..] ‖ id`: the id comes last so a publisher can checksum its payload before
//! it takes the store lock, where the id is assigned (see `publish_crc_prefix`).
//!
//! A Summary record restates, for one older segment, which of its messages may still be
//! live and which were delivered (bit `i` is message `first + i`, LSB first, `ceil(count/8)`
//! bytes each). It only ever kills messages, so replaying it is always safe; it exists so
//! that segments holding acks for a long-lived segment can be deleted (see `index.rs`).

use std::ops::Range;
use std::path::{Path, PathBuf};

/// `len` + `crc`.
pub(crate) const HEADER: usize = 8;

pub(crate) const KIND_PUBLISH: u8 = 1;
pub(crate) const KIND_DELIVERED: u8 = 2;
pub(crate) const KIND_ACK: u8 = 3;
pub(crate) const KIND_DELETE_QUEUE: u8 = 4;
pub(crate) const KIND_SUMMARY: u8 = 5;

/// Size on disk of an Ack or Delivered record.
pub(crate) const ID_RECORD_LEN: usize = HEADER + 1 + 8;

const SUFFIX: &str = ".seg";
const DIGITS: usize = 20;

/// `dir/NNNNNNNNNNNNNNNNNNNN.seg`: zero-padded so that lexical and numeric order agree.
pub(crate) fn path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:0DIGITS$}{SUFFIX}"))
}

/// The segment id of a file name, or `None` for anything that is not a segment file.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Total size on disk of a Publish record.
pub(crate) fn publish_len(queue: &str, payload: &[u8]) -> usize {
    HEADER + 1 + 8 + 2 + queue.len() + payload.len()
}

/// Total size on disk of a DeleteQueue record.
pub(crate) fn delete_queue_len(queue: &str) -> usize {
    HEADER + 1 + 2 + queue.len()
}

/// Total size on disk of a Summary record for `count` messages.
pub(crate) fn summary_len(count: u64) -> usize {
    HEADER + 1 + 24 + 2 * bitmap_bytes(count)
}

pub(crate) fn bitmap_bytes(count: u64) -> usize {
    count.div_ceil(8) as usize
}

/// The part of a Publish record's CRC that does not depend on the id. Callers compute it
/// before taking the store lock; `encode_publish` finishes it with the id.
pub(crate) fn publish_crc_prefix(queue: &str, payload: &[u8]) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(&[KIND_PUBLISH]);
    h.update(&(queue.len() as u16).to_le_bytes());
    h.update(queue.as_bytes());
    h.update(payload);
    h
}

/// Appends a Publish record. `queue.len()` must fit a u16 and the record a u32 length; the
/// caller checks both.
pub(crate) fn encode_publish(
    buf: &mut Vec<u8>,
    mut crc: crc32fast::Hasher,
    id: u64,
    queue: &str,
    payload: &[u8],
) {
    crc.update(&id.to_le_bytes());
    let len = (publish_len(queue, payload) - HEADER) as u32;
    buf.reserve(HEADER + len as usize);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(KIND_PUBLISH);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&(queue.len() as u16).to_le_bytes());
    buf.extend_from_slice(queue.as_bytes());
    buf.extend_from_slice(payload);
}

/// Appends an Ack or Delivered record.
pub(crate) fn encode_id_record(buf: &mut Vec<u8>, kind: u8, id: u64) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&id.to_le_bytes());
    buf.extend_from_slice(&9u32.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&id.to_le_bytes());
}

/// Appends a DeleteQueue record.
pub(crate) fn encode_delete_queue(buf: &mut Vec<u8>, queue: &str) {
    let start = buf.len();
    let len = (delete_queue_len(queue) - HEADER) as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(KIND_DELETE_QUEUE);
    buf.extend_from_slice(&(queue.len() as u16).to_le_bytes());
    buf.extend_from_slice(queue.as_bytes());
    patch_crc(buf, start);
}

/// Appends a Summary record; `live` and `delivered` are bitmaps of `count` bits in u64 words
/// (missing words read as zero).
pub(crate) fn encode_summary(
    buf: &mut Vec<u8>,
    segment: u64,
    first: u64,
    count: u64,
    live: &[u64],
    delivered: &[u64],
) {
    let start = buf.len();
    let len = (summary_len(count) - HEADER) as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(KIND_SUMMARY);
    buf.extend_from_slice(&segment.to_le_bytes());
    buf.extend_from_slice(&first.to_le_bytes());
    buf.extend_from_slice(&count.to_le_bytes());
    let n = bitmap_bytes(count);
    for words in [live, delivered] {
        for i in 0..n {
            let word = words.get(i / 8).copied().unwrap_or(0);
            buf.push((word >> ((i % 8) * 8)) as u8);
        }
    }
    patch_crc(buf, start);
}

/// Fills in the CRC of the record starting at `start` (kinds whose CRC is in byte order).
fn patch_crc(buf: &mut [u8], start: usize) {
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One decoded record. Slices borrow from the segment bytes; `payload` is a range into the
/// buffer passed to [`decode`] so recovery can hand out zero-copy `Bytes` slices.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    Publish {
        id: u64,
        queue: &'a str,
        payload: Range<usize>,
    },
    Delivered {
        id: u64,
    },
    Ack {
        id: u64,
    },
    DeleteQueue {
        queue: &'a str,
    },
    Summary {
        segment: u64,
        first: u64,
        count: u64,
        live: &'a [u8],
        delivered: &'a [u8],
    },
}

/// Decodes the record at `buf[pos..]`; returns it and its total size, or why the bytes there
/// are not a valid record (a torn write, corruption, or zeros left by a crash).
pub(crate) fn decode(buf: &[u8], pos: usize) -> Result<(Record<'_>, usize), &'static str> {
    let rest = buf.get(pos..).ok_or("offset past end")?;
    if rest.len() < HEADER {
        return Err("truncated header");
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 {
        return Err("zero length");
    }
    let total = HEADER.checked_add(len).ok_or("length overflow")?;
    let rec = rest.get(HEADER..total).ok_or("truncated record")?;
    let (kind, body) = (rec[0], &rec[1..]);
    let has_id = matches!(kind, KIND_PUBLISH | KIND_DELIVERED | KIND_ACK);
    let actual = if has_id {
        if body.len() < 8 {
            return Err("short body");
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&[kind]);
        h.update(&body[8..]);
        h.update(&body[..8]);
        h.finalize()
    } else {
        crc32fast::hash(rec)
    };
    if actual != crc {
        return Err("checksum mismatch");
    }
    let record = match kind {
        KIND_PUBLISH => {
            let id = u64_at(body, 0);
            let qlen = body.get(8..10).ok_or("short body")?;
            let qlen = u16::from_le_bytes([qlen[0], qlen[1]]) as usize;
            let queue = body.get(10..10 + qlen).ok_or("queue name past record")?;
            let queue = std::str::from_utf8(queue).map_err(|_| "queue name not UTF-8")?;
            let start = pos + HEADER + 1 + 10 + qlen;
            Record::Publish {
                id,
                queue,
                payload: start..pos + total,
            }
        }
        KIND_DELIVERED | KIND_ACK if body.len() == 8 => {
            let id = u64_at(body, 0);
            if kind == KIND_ACK {
                Record::Ack { id }
            } else {
                Record::Delivered { id }
            }
        }
        KIND_DELETE_QUEUE if body.len() >= 2 => {
            let qlen = u16::from_le_bytes([body[0], body[1]]) as usize;
            if body.len() != 2 + qlen {
                return Err("bad queue name length");
            }
            let queue = std::str::from_utf8(&body[2..]).map_err(|_| "queue name not UTF-8")?;
            Record::DeleteQueue { queue }
        }
        KIND_SUMMARY if body.len() >= 24 => {
            let (segment, first, count) = (u64_at(body, 0), u64_at(body, 8), u64_at(body, 16));
            let n = count.div_ceil(8);
            if (body.len() as u64 - 24) != n.saturating_mul(2) {
                return Err("bad summary length");
            }
            let n = n as usize;
            Record::Summary {
                segment,
                first,
                count,
                live: &body[24..24 + n],
                delivered: &body[24 + n..],
            }
        }
        _ => return Err("unknown kind or bad body length"),
    };
    Ok((record, total))
}

/// Reads a little-endian u64; callers have checked that 8 bytes are there.
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn publish(id: u64, queue: &str, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_publish(
            &mut buf,
            publish_crc_prefix(queue, payload),
            id,
            queue,
            payload,
        );
        buf
    }

    #[test]
    fn names_round_trip_and_reject_strangers() {
        let p = path(Path::new("/d"), 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_name(name), Some(42));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_name("00000000000000000042.seg.tmp"), None);
        assert_eq!(parse_name("99999999999999999999.seg"), None); // > u64::MAX
    }

    #[test]
    fn every_kind_round_trips() {
        let mut buf = publish(7, "q1", b"hello");
        assert_eq!(buf.len(), publish_len("q1", b"hello"));
        encode_id_record(&mut buf, KIND_DELIVERED, 7);
        encode_id_record(&mut buf, KIND_ACK, 7);
        encode_delete_queue(&mut buf, "q1");
        encode_summary(&mut buf, 3, 100, 10, &[0b1010_0000_0001], &[0b10]);
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < buf.len() {
            let (r, n) = decode(&buf, pos).unwrap();
            got.push(format!("{r:?}"));
            if let Record::Publish { payload, .. } = &r {
                assert_eq!(&buf[payload.clone()], b"hello");
            }
            pos += n;
        }
        assert_eq!(got.len(), 5);
        let (r, _) = decode(&buf, pos - summary_len(10)).unwrap();
        assert_eq!(
            r,
            Record::Summary {
                segment: 3,
                first: 100,
                count: 10,
                live: &[0b0000_0001, 0b1010],
                delivered: &[0b10, 0],
            }
        );
    }

    #[test]
    fn damage_is_detected() {
        let good = publish(1, "q", b"payload");
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], 0).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, 0).is_err(), "flip at {i}");
        }
        assert_eq!(decode(&[0; 32], 0), Err("zero length"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), pos in 0usize..80) {
            let _ = decode(&bytes, pos);
        }

        #[test]
        fn publish_round_trips(id in any::<u64>(), queue in "[a-z.]{0,20}", payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let buf = publish(id, &queue, &payload);
            let (r, n) = decode(&buf, 0).unwrap();
            prop_assert_eq!(n, buf.len());
            let Record::Publish { id: got, queue: q, payload: range } = r else { panic!("kind") };
            prop_assert_eq!(got, id);
            prop_assert_eq!(q, queue.as_str());
            prop_assert_eq!(&buf[range], &payload[..]);
        }
    }
}
