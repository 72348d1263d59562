//! Figures: a log-linear latency histogram, and CPU time / RSS read from /proc (there is no
//! libc crate in the dependency set).

/// Sub-buckets per power of two: about 1.6 % relative precision.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (2 * SUB + (63 - SUB_BITS as u64) * SUB) as usize;

/// Latencies in nanoseconds, HDR-style buckets.
#[derive(Debug, Clone)]
pub struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            n: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) - SUB;
    (2 * SUB + (e as u64 - SUB_BITS as u64 - 1) * SUB + sub) as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let k = i - 2 * SUB;
    let e = k / SUB + SUB_BITS as u64 + 1;
    let width = 1u64 << (e - SUB_BITS as u64);
    let lower = (SUB + k % SUB) * width;
    lower + width / 2
}

impl Hist {
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.n += 1;
        self.max = self.max.max(ns);
    }

    /// Records the time from the send timestamp that opens `body` (big-endian nanoseconds
    /// on the run's time base) to `now`; a body too short to carry one is skipped.
    /// Records `now` minus the body's timestamp; false when the stamp is later than `now`
    /// (a delayed message delivered before it was due). Bodies too short for a stamp count
    /// as recorded.
    pub fn record_stamp(&mut self, now: u64, body: &[u8]) -> bool {
        if let Some(raw) = body.first_chunk::<8>() {
            let ts = u64::from_be_bytes(*raw);
            if ts > now {
                return false;
            }
            self.record(now - ts);
        }
        true
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `p`-th percentile (0–100), in nanoseconds.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let target = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

/// Clock ticks per second for /proc's CPU fields: AT_CLKTCK from the aux vector, else 100.
pub fn clock_ticks() -> f64 {
    if let Ok(aux) = std::fs::read("/proc/self/auxv") {
        for pair in aux.chunks_exact(16) {
            let key = u64::from_ne_bytes(pair[..8].try_into().expect("8"));
            let val = u64::from_ne_bytes(pair[8..].try_into().expect("8"));
            if key == 17 && val > 0 {
                return val as f64;
            }
        }
    }
    100.0
}

/// user + system CPU seconds of a process (`self` or a pid), from /proc/<pid>/stat fields
/// 14 and 15.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident set size in KiB (VmRSS from /proc/<pid>/status).
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Sum over several pids (RabbitMQ: the beam.smp process); None if any is unreadable.
pub fn sum_over(pids: &[u32], f: impl Fn(&str) -> Option<f64>) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| f(&p.to_string())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_precise() {
        let mut last = 0;
        for v in (0..10_000_000u64).step_by(997) {
            let i = index(v);
            assert!(i >= last);
            last = i;
            let m = value(i);
            let err = (m as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "v={v} m={m}");
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles() {
        let mut h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.percentile(50.0) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02);
        assert_eq!(h.percentile(100.0), 1_000_000);
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib("self").unwrap() > 0);
    }
}
