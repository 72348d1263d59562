//! Server-generated names: `amq.gen-…` queues and `amq.ctag-…` consumer tags, 22 URL-safe
//! base64 characters of randomness as in RabbitMQ.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    // RandomState is seeded per process from the OS; hashing a counter and the clock with it
    // gives unpredictable, non-repeating values without another dependency.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    h.write_u64(now);
    h.finish()
}

/// `prefix` followed by 22 random URL-safe base64 characters.
pub fn generate(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = (u128::from(random_u64()) << 64) | u128::from(random_u64());
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for i in 0..22 {
        s.push(ALPHABET[((bits >> (i * 6)) & 63) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_prefixed_and_distinct() {
        let a = super::generate("amq.gen-");
        let b = super::generate("amq.gen-");
        assert!(a.starts_with("amq.gen-") && a.len() == 30);
        assert_ne!(a, b);
    }
}
