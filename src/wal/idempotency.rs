//! Idempotency keys: a retried request with the same `Idempotency-Key` from the same client
//! inside the window is stored once.
//!
//! # Format
//! Keys live in time-bucketed trees `idem/<bucket: u64 BE>`, `bucket = stored_at_ms / window_ms`.
//! - key: `[scope_len u32 BE][scope][Idempotency-Key]` (`keys::scoped_key`). The scope says
//!   whose key it is ([`IdempotencyKey::scope`]), so clients never see each other's keys.
//! - value, 32 bytes: `[seq u64 BE][fingerprint u128 BE][stored_at_ms u64 BE]`. The
//!   fingerprint is the first 128 bits of the body's SHA-256 ([`Fingerprint::of`]): making
//!   another body match it costs about 2^128 hashes, so no one can make a key answer
//!   "duplicate" for a body that was never stored.
//!
//! A key is written in the same sled transaction as its record and its bucket's byte count, so
//! after a crash either all exist or none.
//!
//! # Lookup
//! A lookup checks the current and the previous bucket and honours `stored_at_ms`, so a key is
//! remembered for at least one window and at most two, and an expired bucket never answers,
//! whether it has been dropped yet or not. The writer answers "duplicate" only when all 128
//! bits of the fingerprint match.
//!
//! **Entries of the format before scopes** (24 bytes, `seq | CRC-32 as u64 | stored_at_ms`,
//! keyed by the bare header value), found after an upgrade, are never matched: no scoped key
//! equals their keys (see `keys::scoped_key`), and a value of any length but 32 is ignored. A
//! CRC-32 can be forged and such an entry names no client, so it proves nothing: a retry that
//! spans the upgrade is stored again, neither answered "duplicate" on evidence a forger could
//! fake nor refused. The cost is that retries spanning the upgrade (one window, once) may be
//! stored twice. Old entries count in the quota and are dropped with their bucket like any
//! other.
//!
//! # Quota
//! Every entry counts `key + value +` [`ENTRY_OVERHEAD_BYTES`] against the WAL quota (in
//! `LogStore::live_bytes`), so keys cannot fill the disk unseen. Each bucket's count is kept in
//! memory and in `meta` under `idembytes/<bucket>`, written in the same transaction as the
//! entries, so opening reads one number per bucket instead of scanning it (a bucket without a
//! count — written before counts were kept — is scanned once). Dropping a bucket takes its bytes
//! off the quota.
//!
//! # Expiry, off the request path
//! Buckets are dropped whole (never key by key: sled #1333) by an expiry thread that a
//! [`super::RecoveryMode::Repair`] open starts and dropping the log stops (and joins, so no
//! sled handle outlives the log). It wakes every [`expiry_interval`] and drops each bucket
//! outside `current - 1 ..= current + 1` (later ones appear when the window setting was made
//! longer). The writer thread never calls `drop_tree`.
//!
//! Bucket trees are used only under the lock of `Shared::buckets` and only while in
//! `Buckets::live`: the expiry thread takes a bucket out of `live` under the lock, then drops
//! it without the lock, so a slow drop never holds up a group commit, and no handle to a dropped
//! tree is ever used. A writer whose clock points at a bucket being dropped (only when two
//! threads' clocks disagree by more than a window) waits for that drop to end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use super::keys::{
    bucket_bytes_key, bucket_name, key_to_seq, scoped_key, IDEMPOTENCY_BYTES_PREFIX, IDEMPOTENCY_PREFIX,
};
use super::WalError;

/// What sled stores per entry beyond its key and value, counted against the quota with them.
///
/// Measured with sled 0.34.7 (200,000 inserts into one tree, flushed every 1,000, from 80 to
/// 300 bytes of key and value): on disk an entry takes about 1.8 × its key and value plus
/// about 90 bytes. Records are counted at their own size, without sled's amplification, so
/// keys are too, and the fixed part is 90 / 1.8 ≈ 50 bytes, rounded up.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// Bytes of a stored value: `seq | fingerprint | stored_at_ms`.
const VALUE_LEN: usize = 32;

/// The first 128 bits of a body's SHA-256, as a big-endian number: what tells a retry (same
/// body) from a reuse of its key for another body. A cryptographic hash, so a body that
/// matches another's fingerprint cannot be made on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u128);

impl Fingerprint {
    /// The fingerprint of `body`, the request's bytes as stored (after decompression).
    pub fn of(body: &[u8]) -> Self {
        let digest = Sha256::digest(body);
        Fingerprint(u128::from_be_bytes(digest[..16].try_into().expect("16 of 32 bytes")))
    }
}

/// A client's idempotency key and a fingerprint of the body it came with, to tell a retry
/// (same body) from a reuse of the key for something else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// Whose key it is: keys are only ever matched against keys of the same scope, so one
    /// client can neither see nor claim another's. A stable, non-secret client identity;
    /// empty for anonymous requests (ingest decides, in `client_scope`).
    pub scope: Vec<u8>,
    /// The `Idempotency-Key` header's value.
    pub key: Vec<u8>,
    pub fingerprint: Fingerprint,
}

impl IdempotencyKey {
    /// `key` of the client `scope`, sent with `body`.
    pub fn new(scope: Vec<u8>, key: Vec<u8>, body: &[u8]) -> Self {
        IdempotencyKey { scope, key, fingerprint: Fingerprint::of(body) }
    }
}

/// What the log remembers about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord {
    pub seq: u64,
    pub fingerprint: Fingerprint,
}

/// The idempotency index of a log: lookups and stores on the writer thread, and the expiry
/// thread that drops old buckets.
pub(super) struct KeyIndex {
    shared: Arc<Shared>,
    /// The expiry thread and the sender whose drop stops it; `None` when opened for
    /// inspection, which changes nothing.
    expiry: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// What the writer thread and the expiry thread share.
struct Shared {
    db: sled::Db,
    meta: sled::Tree,
    window_ms: u64,
    /// A `Mutex`, not an `RwLock`: only the writer thread and the expiry thread take it, and
    /// the writer holds it across its whole transaction, so that no bucket is taken out for
    /// dropping while a transaction writes to it.
    buckets: Mutex<Buckets>,
    /// Signalled when buckets being dropped are gone, for a writer that waits for one.
    dropped: Condvar,
    /// Sum of the live buckets' bytes: read without the lock on every request, for the quota.
    bytes: AtomicU64,
}

struct Buckets {
    /// Buckets that may be read and written, by number.
    live: BTreeMap<u64, Bucket>,
    /// Taken out of `live` by the expiry thread and not yet dropped (a failed drop stays
    /// here and is tried again); their bytes are still counted.
    dropping: BTreeMap<u64, u64>,
}

struct Bucket {
    tree: sled::Tree,
    /// What the bucket's entries count against the quota (as in `meta`).
    bytes: u64,
}

/// How much one entry counts against the quota.
fn entry_bytes(key_len: usize, value_len: usize) -> u64 {
    (key_len + value_len) as u64 + ENTRY_OVERHEAD_BYTES
}

/// How often the expiry thread looks for buckets to drop: a quarter window, between 10 ms and
/// a minute, so an expired bucket lingers at most that long (and never answers meanwhile).
pub(super) fn expiry_interval(window_ms: u64) -> Duration {
    Duration::from_millis((window_ms / 4).clamp(10, 60_000))
}

impl KeyIndex {
    /// The buckets as they are, with their byte counts; `expire` (a
    /// [`super::RecoveryMode::Repair`] open) also stores the counts it had to scan, removes
    /// counts of buckets that are gone, and starts the expiry thread.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled cannot read or write the trees.
    pub fn open(db: &sled::Db, meta: &sled::Tree, window_ms: u64, expire: bool) -> Result<Self, WalError> {
        let mut live = BTreeMap::new();
        for name in db.tree_names() {
            let Some(Ok(b)) = name.strip_prefix(IDEMPOTENCY_PREFIX).map(<[u8; 8]>::try_from) else { continue };
            let b = u64::from_be_bytes(b);
            let tree = db.open_tree(&name)?;
            let bytes = match meta.get(bucket_bytes_key(b))? {
                Some(v) => key_to_seq(&v)?,
                None => {
                    let bytes = scan(&tree)?;
                    if expire {
                        meta.insert(bucket_bytes_key(b), &bytes.to_be_bytes())?;
                    }
                    bytes
                }
            };
            live.insert(b, Bucket { tree, bytes });
        }
        if expire {
            for item in meta.scan_prefix(IDEMPOTENCY_BYTES_PREFIX) {
                let (k, _) = item?;
                if !key_to_seq(&k[IDEMPOTENCY_BYTES_PREFIX.len()..]).is_ok_and(|b| live.contains_key(&b)) {
                    meta.remove(k)?;
                }
            }
        }
        let shared = Arc::new(Shared {
            db: db.clone(),
            meta: meta.clone(),
            window_ms: window_ms.max(1),
            bytes: AtomicU64::new(live.values().map(|b| b.bytes).sum()),
            buckets: Mutex::new(Buckets { live, dropping: BTreeMap::new() }),
            dropped: Condvar::new(),
        });
        let expiry = if expire { Some(start_expiry(shared.clone())?) } else { None };
        Ok(KeyIndex { shared, expiry })
    }

    /// Bytes the stored keys count against the quota.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// The record stored under `key` of `scope` within the window, if any.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled fails to read.
    pub fn lookup(&self, scope: &[u8], key: &[u8], now_ms: u64) -> Result<Option<KeyRecord>, WalError> {
        let stored = scoped_key(scope, key);
        let current = now_ms / self.shared.window_ms;
        let buckets = self.shared.lock();
        for b in [current, current.wrapping_sub(1)] {
            let Some(bucket) = buckets.live.get(&b) else { continue };
            let Some(v) = bucket.tree.get(&stored)? else { continue };
            let Some((record, stored_at_ms)) = decode(&v) else {
                warn!(bucket = b, bytes = v.len(), "An idempotency entry of an unknown or older format is ignored.");
                continue;
            };
            if now_ms.saturating_sub(stored_at_ms) <= self.shared.window_ms {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Applies `batch` to `segment` and stores `keys` (index into the batch's frames, key) for
    /// the records from `first_seq` on, in one transaction with the bucket's byte count.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled fails; then nothing was written.
    pub fn append_with_keys(
        &self,
        segment: &sled::Tree,
        batch: &sled::Batch,
        keys: &[(usize, super::IdempotencyKey)],
        first_seq: u64,
    ) -> Result<(), WalError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let shared = &self.shared;
        let mut buckets = shared.lock();
        // Read under the lock, after any expiry pass that holds it: see `expire`.
        let now = crate::now_ms();
        let b = now / shared.window_ms;
        while buckets.dropping.contains_key(&b) {
            buckets = shared.dropped.wait(buckets).expect("key index lock poisoned");
        }
        let bucket = match buckets.live.entry(b) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Bucket { tree: shared.db.open_tree(bucket_name(b))?, bytes: 0 })
            }
        };
        let entries: Vec<(Vec<u8>, [u8; VALUE_LEN])> = keys
            .iter()
            .map(|(i, k)| (scoped_key(&k.scope, &k.key), encode(first_seq + *i as u64, k.fingerprint, now)))
            .collect();
        let (count_key, before) = (bucket_bytes_key(b), bucket.bytes);
        let after = (segment, &bucket.tree, &shared.meta)
            .transaction(|(seg, idem, meta)| {
                seg.apply_batch(batch)?;
                let mut bytes = before;
                for (key, value) in &entries {
                    // Only an expired entry is ever replaced; its bytes leave the count.
                    if let Some(old) = idem.insert(key.as_slice(), &value[..])? {
                        bytes = bytes.saturating_sub(entry_bytes(key.len(), old.len()));
                    }
                    bytes += entry_bytes(key.len(), value.len());
                }
                meta.insert(count_key.as_slice(), &bytes.to_be_bytes())?;
                Ok::<u64, ConflictableTransactionError<()>>(bytes)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => WalError::from(e),
                TransactionError::Abort(()) => WalError::Storage("the append transaction aborted".into()),
            })?;
        bucket.bytes = after;
        if after >= before {
            shared.bytes.fetch_add(after - before, Ordering::AcqRel);
        } else {
            shared.bytes.fetch_sub(before - after, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Numbers of the buckets not dropped.
    #[cfg(test)]
    pub fn buckets(&self) -> Vec<u64> {
        let buckets = self.shared.lock();
        buckets.live.keys().chain(buckets.dropping.keys()).copied().collect()
    }
}

impl Drop for KeyIndex {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.expiry.take() {
            drop(stop);
            if thread.join().is_err() {
                error!("The idempotency expiry thread panicked.");
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets.lock().expect("key index lock poisoned")
    }
}

/// Starts the thread that runs [`expire`] every [`expiry_interval`] until the sender is dropped.
fn start_expiry(shared: Arc<Shared>) -> Result<(mpsc::Sender<()>, JoinHandle<()>), WalError> {
    let (stop, stopped) = mpsc::channel::<()>();
    let interval = expiry_interval(shared.window_ms);
    let thread = thread::Builder::new()
        .name("wal-idem-expiry".into())
        .spawn(move || loop {
            expire(&shared);
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })
        .map_err(|e| WalError::Storage(format!("cannot start the idempotency expiry thread: {e}")))?;
    Ok((stop, thread))
}

/// One expiry pass: takes the buckets out of the window out of `live` (under the lock), then
/// drops them (without it). A drop that fails is logged and tried again at the next pass; its
/// bytes stay counted until it succeeds.
fn expire(shared: &Shared) {
    let due: Vec<(u64, u64)> = {
        let mut buckets = shared.lock();
        // Read under the lock: a writer that takes it later reads a later time, so it never
        // picks a bucket this pass finds expired (unless the clock steps back by a window).
        let current = crate::now_ms() / shared.window_ms;
        let stale: Vec<u64> = buckets
            .live
            .keys()
            .copied()
            .filter(|&b| b.saturating_add(1) < current || b > current.saturating_add(1))
            .collect();
        for b in stale {
            let bucket = buckets.live.remove(&b).expect("listed just now");
            buckets.dropping.insert(b, bucket.bytes);
        }
        buckets.dropping.iter().map(|(b, bytes)| (*b, *bytes)).collect()
    };
    for (b, bytes) in due {
        // The count first: if the drop then fails, opening scans the bucket again.
        let dropped = shared.meta.remove(bucket_bytes_key(b)).and_then(|_| shared.db.drop_tree(bucket_name(b)));
        match dropped {
            Ok(_) => {
                shared.bytes.fetch_sub(bytes, Ordering::AcqRel);
                shared.lock().dropping.remove(&b);
                shared.dropped.notify_all();
                info!(bucket = b, bytes, "Dropped an expired bucket of idempotency keys.");
            }
            Err(e) => {
                error!(bucket = b, error = %e, "Could not drop an expired bucket of idempotency keys; trying again later.")
            }
        }
    }
}

/// What a bucket's entries count against the quota, by reading them all: for a bucket written
/// before counts were kept.
fn scan(tree: &sled::Tree) -> Result<u64, WalError> {
    let mut bytes = 0;
    for item in tree.iter() {
        let (k, v) = item?;
        bytes += entry_bytes(k.len(), v.len());
    }
    Ok(bytes)
}

/// The stored value for a key.
fn encode(seq: u64, fingerprint: Fingerprint, stored_at_ms: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..24].copy_from_slice(&fingerprint.0.to_be_bytes());
    v[24..32].copy_from_slice(&stored_at_ms.to_be_bytes());
    v
}

/// A stored value's record and `stored_at_ms`; `None` for any other length than 32 (entries of
/// the format before 128-bit fingerprints are 24 bytes).
fn decode(v: &[u8]) -> Option<(KeyRecord, u64)> {
    let v: &[u8; VALUE_LEN] = v.try_into().ok()?;
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    let fingerprint = Fingerprint(u128::from_be_bytes(v[8..24].try_into().expect("16 bytes")));
    Some((KeyRecord { seq: u64_at(0), fingerprint }, u64_at(24)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_first_128_bits_of_sha256() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 ...
        assert_eq!(Fingerprint::of(b"abc"), Fingerprint(0xba7816bf_8f01cfea_414140de_5dae2223));
        assert_ne!(Fingerprint::of(b"abc"), Fingerprint::of(b"abd"));
    }

    #[test]
    fn an_entry_round_trips_and_other_lengths_are_not_read() {
        let fp = Fingerprint(u128::MAX - 7);
        assert_eq!(decode(&encode(9, fp, 1234)), Some((KeyRecord { seq: 9, fingerprint: fp }, 1234)));
        assert_eq!(decode(&[0u8; 24]), None, "the format before 128-bit fingerprints");
        assert_eq!(decode(&[0u8; 33]), None);
    }

    #[test]
    fn scoped_keys_are_unambiguous_and_never_equal_an_unscoped_one() {
        assert_ne!(scoped_key(b"ab", b"c"), scoped_key(b"a", b"bc"));
        assert_ne!(scoped_key(b"", b"k"), scoped_key(b"k", b""));
        assert_eq!(scoped_key(b"", b"k")[0], 0, "old keys were printable ASCII, never a zero byte");
        assert_eq!(scoped_key(&[b'x'; 300], b"k")[0], 0);
    }

    #[test]
    fn the_expiry_interval_is_a_quarter_window_within_bounds() {
        assert_eq!(expiry_interval(1), Duration::from_millis(10));
        assert_eq!(expiry_interval(4_000), Duration::from_secs(1));
        assert_eq!(expiry_interval(86_400_000), Duration::from_secs(60));
    }
}
