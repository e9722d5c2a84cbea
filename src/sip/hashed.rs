//! Map keys that carry their hash.
//!
//! The endpoint's transaction and dialog tables are keyed by strings from the wire (branch,
//! sent-by, Call-ID, tags) and, at 1000 calls a second, hold tens of thousands of entries
//! (an answered INVITE's transaction absorbs retransmissions for 32 s). Each time such a
//! table grows, every key is hashed again; with the strings behind pointers that was
//! SipHash plus a few cache misses per key — 10–20 ms of the signalling task at a time,
//! every INVITE in those milliseconds waiting (`perf` during `bench/setup-rate.sh 1000 10
//! 2`: `sip::Hasher::write` in every stall). A `Hashed` key is hashed once, when it is made;
//! a table growing hashes its eight bytes and never reads the strings.
//!
//! The hash stays keyed: it is SipHash with this process's random keys (std's
//! `RandomState`), so a peer that picks branch values cannot aim them at one bucket.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::ops::Deref;
use std::sync::LazyLock;

/// One set of random SipHash keys for the process, so equal keys get equal hashes.
static KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// `K` with its keyed hash. Behind a box, so a table entry stays 16 bytes whatever `K` is
/// and growing a table moves little.
#[derive(Clone)]
pub struct Hashed<K> {
    hash: u64,
    key: Box<K>,
}

impl<K: Hash> Hashed<K> {
    pub fn new(key: K) -> Self {
        Hashed {
            hash: KEYS.hash_one(&key),
            key: Box::new(key),
        }
    }
}

impl<K> Deref for Hashed<K> {
    type Target = K;

    fn deref(&self) -> &K {
        &self.key
    }
}

impl<K: PartialEq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: fmt::Debug> fmt::Debug for Hashed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn equal_keys_hash_alike_and_find_each_other() {
        let a = Hashed::new(("z9hG4bK1".to_string(), "10.0.0.1:5060".to_string()));
        let b = Hashed::new(("z9hG4bK1".to_string(), "10.0.0.1:5060".to_string()));
        let c = Hashed::new(("z9hG4bK2".to_string(), "10.0.0.1:5060".to_string()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut map = HashMap::new();
        map.insert(a, 1);
        assert_eq!(map.get(&b), Some(&1));
        assert_eq!(map.get(&c), None);
        assert_eq!(b.0, "z9hG4bK1", "derefs to the key");
    }

    #[test]
    fn a_growing_map_keeps_every_entry() {
        let mut map = HashMap::new();
        for i in 0..20_000u32 {
            map.insert(Hashed::new(format!("z9hG4bK-{i}")), i);
        }
        for i in (0..20_000u32).step_by(7) {
            assert_eq!(map.get(&Hashed::new(format!("z9hG4bK-{i}"))), Some(&i));
        }
        assert_eq!(map.len(), 20_000);
    }

    #[test]
    fn hashes_are_spread() {
        // Keyed SipHash of distinct keys: no two of 10 000 sequential branches collide in
        // 64 bits (a collision would still be correct, just slower).
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            assert!(seen.insert(Hashed::new(format!("z9hG4bK-{i}")).hash));
        }
    }
}
