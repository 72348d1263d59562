//! Password hashes in RabbitMQ's format, so users exported from RabbitMQ log in with their
//! passwords and users exported from Warren import into RabbitMQ.
//!
//! `password_hash` = base64(salt ‖ H(salt ‖ utf8(password))), with a 4-byte random salt and H
//! SHA-256 (`rabbit_password_hashing_sha256`, the default) or SHA-512. MD5 hashes (RabbitMQ's
//! legacy `rabbit_password_hashing_md5`) are read and checked too, never written. Pure
//! functions; the user registry stores what they return.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256, Sha512};

/// A hashing algorithm, by RabbitMQ's module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// `rabbit_password_hashing_sha256`.
    #[default]
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    Sha512,
    /// `rabbit_password_hashing_md5` (legacy; checked, never produced).
    Md5,
}

impl Algorithm {
    /// RabbitMQ's name, as in definitions JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "rabbit_password_hashing_sha256",
            Self::Sha512 => "rabbit_password_hashing_sha512",
            Self::Md5 => "rabbit_password_hashing_md5",
        }
    }

    /// The algorithm of RabbitMQ's name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Sha256, Self::Sha512, Self::Md5]
            .into_iter()
            .find(|a| a.name() == name)
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
            Self::Sha512 => Sha512::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
            Self::Md5 => md5::Md5::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        }
    }
}

/// Hashes `password` with a fresh random salt.
pub fn hash(algorithm: Algorithm, password: &str) -> String {
    let mut salt = [0u8; 4];
    // The OS random source failing is not something a broker can work around.
    getrandom::fill(&mut salt).expect("the OS random source");
    let algorithm = match algorithm {
        Algorithm::Md5 => Algorithm::Sha256,
        a => a,
    };
    hash_with_salt(algorithm, salt, password)
}

fn hash_with_salt(algorithm: Algorithm, salt: [u8; 4], password: &str) -> String {
    let mut raw = salt.to_vec();
    raw.extend(algorithm.digest(&salt, password.as_bytes()));
    STANDARD.encode(raw)
}

/// Whether `password` matches `stored` (an empty hash matches nothing: a user without a
/// password cannot log in with one).
pub fn verify(algorithm: Algorithm, stored: &str, password: &str) -> bool {
    let Ok(raw) = STANDARD.decode(stored) else {
        return false;
    };
    if raw.len() <= 4 {
        return false;
    }
    let (salt, digest) = raw.split_at(4);
    let want = algorithm.digest(salt, password.as_bytes());
    // Constant time in the digest's length: no early exit on the first differing byte.
    want.len() == digest.len() && want.iter().zip(digest).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// Whether `stored` is a well-formed hash for `algorithm` (salt plus a digest of its size),
/// for definitions imported with a `password_hash`. Empty means "no password".
pub fn well_formed(algorithm: Algorithm, stored: &str) -> bool {
    if stored.is_empty() {
        return true;
    }
    let want = match algorithm {
        Algorithm::Sha256 => 32,
        Algorithm::Sha512 => 64,
        Algorithm::Md5 => 16,
    };
    STANDARD
        .decode(stored)
        .is_ok_and(|raw| raw.len() == 4 + want)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash RabbitMQ 3.10.8 exported for password `s3cret-pw`
    /// (`../shared/reference/security.md`).
    #[test]
    fn a_hash_exported_from_rabbitmq_verifies() {
        let h = "rV8LSLs6WTEfrgLH19yhT+kEGDEaL2/Fq1P+8K47+lzx6e15";
        assert!(verify(Algorithm::Sha256, h, "s3cret-pw"));
        assert!(!verify(Algorithm::Sha256, h, "s3cret-px"));
        assert!(well_formed(Algorithm::Sha256, h));
        assert!(!well_formed(Algorithm::Sha512, h));
    }

    #[test]
    fn hashes_are_salted_and_verify() {
        for a in [Algorithm::Sha256, Algorithm::Sha512] {
            let (h1, h2) = (hash(a, "pw"), hash(a, "pw"));
            assert_ne!(h1, h2, "a fresh salt each time");
            assert!(verify(a, &h1, "pw") && verify(a, &h2, "pw"));
            assert!(!verify(a, &h1, "pW"));
            assert!(well_formed(a, &h1));
        }
        assert!(!verify(Algorithm::Sha256, "", ""));
        assert!(!verify(Algorithm::Sha256, "not base64!", "x"));
    }

    #[test]
    fn legacy_md5_hashes_verify() {
        let h = hash_with_salt(Algorithm::Md5, [1, 2, 3, 4], "pw");
        assert!(verify(Algorithm::Md5, &h, "pw"));
        assert!(well_formed(Algorithm::Md5, &h));
    }
}
