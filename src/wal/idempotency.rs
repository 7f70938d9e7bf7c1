//! Idempotency keys: a retried request with the same `Idempotency-Key` inside the window is
//! stored once.
//!
//! Keys live in time-bucketed trees `idem/<bucket: u64 BE>` where `bucket = now_ms / window_ms`;
//! value = `seq u64 BE | fingerprint u64 BE | stored_at_ms u64 BE`. A lookup checks the current
//! and the previous bucket and honours `stored_at_ms`, so a key is remembered for at least one
//! window and at most two. Old buckets are dropped whole (never key by key: sled #1333).
//! A key is written in the same sled transaction as its record, so after a crash either both
//! exist or neither.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::keys::{bucket_name, IDEMPOTENCY_PREFIX};
use super::WalError;

/// A client's idempotency key and a fingerprint of the body it came with, to tell a retry
/// (same body) from a reuse of the key for something else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub key: Vec<u8>,
    pub fingerprint: u64,
}

/// What the log remembers about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord {
    pub seq: u64,
    pub fingerprint: u64,
}

pub(super) struct KeyIndex {
    db: sled::Db,
    window_ms: u64,
    buckets: RwLock<BTreeMap<u64, sled::Tree>>,
}

impl KeyIndex {
    pub fn open(db: &sled::Db, window_ms: u64) -> Result<Self, WalError> {
        let mut buckets = BTreeMap::new();
        for name in db.tree_names() {
            if let Some(b) = name.strip_prefix(IDEMPOTENCY_PREFIX) {
                if let Ok(b) = <[u8; 8]>::try_from(b) {
                    buckets.insert(u64::from_be_bytes(b), db.open_tree(&name)?);
                }
            }
        }
        Ok(KeyIndex { db: db.clone(), window_ms: window_ms.max(1), buckets: RwLock::new(buckets) })
    }

    /// The record stored under `key` within the window, if any.
    pub fn lookup(&self, key: &[u8], now_ms: u64) -> Result<Option<KeyRecord>, WalError> {
        let current = now_ms / self.window_ms;
        let trees: Vec<sled::Tree> = self
            .buckets
            .read()
            .expect("key index lock poisoned")
            .range(current.saturating_sub(1)..=current)
            .map(|(_, t)| t.clone())
            .collect();
        for tree in trees.iter().rev() {
            if let Some(v) = tree.get(key)? {
                if v.len() != 24 {
                    return Err(WalError::Storage(format!("idempotency entry of {} bytes, expected 24", v.len())));
                }
                let field = |i: usize| u64::from_be_bytes(v[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                if now_ms.saturating_sub(field(2)) <= self.window_ms {
                    return Ok(Some(KeyRecord { seq: field(0), fingerprint: field(1) }));
                }
            }
        }
        Ok(None)
    }

    /// The tree new keys go to; drops buckets that can no longer be looked up.
    pub fn current_tree(&self, now_ms: u64) -> Result<sled::Tree, WalError> {
        let current = now_ms / self.window_ms;
        if let Some(t) = self.buckets.read().expect("key index lock poisoned").get(&current) {
            return Ok(t.clone());
        }
        let tree = self.db.open_tree(bucket_name(current))?;
        let mut buckets = self.buckets.write().expect("key index lock poisoned");
        buckets.insert(current, tree.clone());
        // Anything but the current and the previous bucket is out of the window (buckets from
        // the future appear when the window setting was made shorter).
        let stale: Vec<u64> = buckets.keys().copied().filter(|&b| b != current && b + 1 != current).collect();
        for b in stale {
            buckets.remove(&b);
            self.db.drop_tree(bucket_name(b))?;
        }
        Ok(tree)
    }
}

/// The stored value for a key.
pub(super) fn entry(seq: u64, fingerprint: u64, now_ms: u64) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..16].copy_from_slice(&fingerprint.to_be_bytes());
    v[16..].copy_from_slice(&now_ms.to_be_bytes());
    v
}
