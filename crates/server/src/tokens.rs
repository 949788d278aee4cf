//! Token generation, hashing and constant-time comparison.
//!
//! Tokens are 256 random bits, shown once, stored only as SHA-256 hashes.
//! A presented token is hashed and compared against each candidate hash in
//! constant time, so timing reveals nothing about how much of it matched.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new random token: 32 random bytes, hex.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A short random public id (for token ids in the request log).
pub fn short_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored form of a token: SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `stored_hash`, compared in constant time.
pub fn matches(token: &str, stored_hash: &str) -> bool {
    let presented = hash(token);
    presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_verify_only_against_their_hash() {
        let a = generate();
        assert_eq!(a.len(), 64);
        assert_ne!(a, generate());
        let h = hash(&a);
        assert!(matches(&a, &h));
        assert!(!matches(&generate(), &h));
        assert!(!matches("", &h));
        assert_ne!(h, a, "the hash is not the token");
    }
}
