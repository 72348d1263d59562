//! Running out of space without failing for good.
//!
//! A full filesystem (`ENOSPC`, or `EDQUOT` for a quota) is the one I/O failure the message
//! log recovers from by itself: the bytes it could not write are still in memory, in order,
//! and every `Location` already handed out assumes exactly those bytes at exactly those
//! offsets, so the committer keeps them and retries (see `committer.rs`) instead of
//! truncating anything. Meanwhile appends that need the disk are refused, and every record
//! appended before the outage began that was not yet durable is *lost* for confirms: its
//! publisher gets a nack, even if the record reaches the disk later (a nack promises nothing
//! either way). Failed `fdatasync`s stay fail-stop: after one, Linux may have dropped the
//! dirty pages and a second sync would report success for data that is gone.
//!
//! This file owns the classification of errors and the set of lost sequence numbers that
//! the watermark consults. Talks to nothing else.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Whether `e` means "no space" (the device or the user's quota), which the log waits out.
pub(crate) fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Sequence-number ranges whose confirms failed for lack of space: each `(after, upto]`,
/// from the watermark when space ran out to the newest record appended then. One range per
/// outage (or per stream that ran out of space), never pruned: outages are rare and a range
/// is 16 bytes.
#[derive(Debug, Default)]
pub(crate) struct Lost {
    ranges: Mutex<Vec<(u64, u64)>>,
    /// The newest range's upper end (0: none). Stored (Release) after the range is added
    /// and before the watermark can pass it, so a reader that sees the watermark at or
    /// beyond a lost number (Acquire) also sees this.
    max: AtomicU64,
}

impl Lost {
    /// Records that confirms in `(after, upto]` failed. Ranges arrive in increasing order.
    pub(crate) fn add(&self, after: u64, upto: u64) {
        if upto <= after {
            return;
        }
        self.ranges.lock().push((after, upto));
        self.max.store(upto, Ordering::Release);
    }

    /// The highest lost sequence number (0: none). Every number at or below it that is not
    /// yet on disk is lost: while space is missing the watermark does not move, and nothing
    /// gets a sequence number that a confirm waits for.
    pub(crate) fn max(&self) -> u64 {
        self.max.load(Ordering::Acquire)
    }

    /// Whether `seq`'s confirm failed. One atomic load unless space ever ran out.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        if self.max() < seq {
            return false;
        }
        self.ranges
            .lock()
            .iter()
            .rev()
            .any(|&(after, upto)| after < seq && seq <= upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_half_open_and_independent() {
        let l = Lost::default();
        assert!(!l.contains(1));
        l.add(3, 5);
        l.add(9, 9); // empty: ignored
        l.add(10, 12);
        assert_eq!(l.max(), 12);
        let got: Vec<u64> = (1..=13).filter(|&s| l.contains(s)).collect();
        assert_eq!(got, vec![4, 5, 11, 12]);
    }

    #[test]
    fn no_space_and_quota_are_out_of_space_other_errors_are_not() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(is_out_of_space(&io::Error::from_raw_os_error(122))); // EDQUOT
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(5))); // EIO
        assert!(!is_out_of_space(&io::Error::other("injected")));
    }
}
