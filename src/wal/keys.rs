//! Names on disk: the WAL directory's entries, sled's tree names and the keys inside them, as
//! listed in the design note (`wal/mod.rs`). Every number in a name or key is a `u64`
//! big-endian, so sled's byte order is numeric order.
//!
//! Kept apart from the code that reads and writes the trees so that the log, the idempotency
//! index and recovery share one encoding without depending on one another.

use super::WalError;

/// The sled database inside the WAL directory.
pub(super) const SLED_DIR: &str = "sled";
/// The sequence file beside the sled directory (see `sequence.rs`).
pub(super) const SEQUENCE_FILE: &str = "sequence";

/// Watermark, node id, segment sizes and lost ranges.
pub(super) const META_TREE: &[u8] = b"meta";
/// `u64` sequence number → the raw bytes of a record that failed its checksum.
pub(super) const QUARANTINE_TREE: &[u8] = b"quarantine";
/// `seg/<first_seq>`: one tree per segment, keyed by sequence number.
pub(super) const SEGMENT_PREFIX: &[u8] = b"seg/";
/// `idem/<bucket>`: one tree of idempotency keys per time window (see `idempotency.rs`).
pub(super) const IDEMPOTENCY_PREFIX: &[u8] = b"idem/";

/// In `meta`: every record up to this `u64` was confirmed by Kafka.
pub(super) const DELIVERED_KEY: &[u8] = b"delivered_through";
/// In `meta`: this WAL's generated node id (UTF-8).
pub(super) const NODE_ID_KEY: &[u8] = b"node_id";
/// In `meta`: this WAL's identity, 16 hex digits, committed with its position in Kafka.
pub(super) const WAL_ID_KEY: &[u8] = b"wal_id";
/// In `meta`: `lost/<first>` → last `u64`: a range of durable records sled no longer had at open.
pub(super) const LOST_PREFIX: &[u8] = b"lost/";
/// In `meta`: `segbytes/<first_seq>` → bytes of a segment, so opening needs no scan.
pub(super) const SEGMENT_BYTES_PREFIX: &[u8] = b"segbytes/";

/// In `meta`: `idembytes/<bucket>` → bytes the keys of an idempotency bucket count against the
/// quota, so opening needs no scan (see `idempotency.rs`).
pub(super) const IDEMPOTENCY_BYTES_PREFIX: &[u8] = b"idembytes/";

/// In `meta`: `aside/<seq>` → why (UTF-8): a record set aside because Kafka refused it; its
/// bytes are in the quarantine tree.
pub(super) const ASIDE_PREFIX: &[u8] = b"aside/";

/// `prefix` followed by `n` as a big-endian u64: the shape of every tree name and meta key
/// that carries a number, so they sort numerically.
pub(super) fn prefixed(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub(super) fn segment_name(first_seq: u64) -> Vec<u8> {
    prefixed(SEGMENT_PREFIX, first_seq)
}

pub(super) fn segment_bytes_key(first_seq: u64) -> Vec<u8> {
    prefixed(SEGMENT_BYTES_PREFIX, first_seq)
}

pub(super) fn aside_key(seq: u64) -> Vec<u8> {
    prefixed(ASIDE_PREFIX, seq)
}

pub(super) fn lost_key(from: u64) -> Vec<u8> {
    prefixed(LOST_PREFIX, from)
}

pub(super) fn bucket_name(bucket: u64) -> Vec<u8> {
    prefixed(IDEMPOTENCY_PREFIX, bucket)
}

pub(super) fn bucket_bytes_key(bucket: u64) -> Vec<u8> {
    prefixed(IDEMPOTENCY_BYTES_PREFIX, bucket)
}

/// The key an idempotency entry is stored under in its bucket:
/// `[scope_len u32 BE][scope][key]`. The length prefix makes the pair unambiguous (`("ab", "c")`
/// and `("a", "bc")` differ), and its first byte is 0 for any real scope, so no key of this
/// format equals a key of the format before scopes (the bare header value: printable ASCII).
pub(super) fn scoped_key(scope: &[u8], key: &[u8]) -> Vec<u8> {
    let len = u32::try_from(scope.len()).expect("an idempotency scope is a client id, far below 4 GiB");
    let mut stored = Vec::with_capacity(4 + scope.len() + key.len());
    stored.extend_from_slice(&len.to_be_bytes());
    stored.extend_from_slice(scope);
    stored.extend_from_slice(key);
    stored
}

/// Decodes a stored big-endian `u64` (a sequence-number key, or a number value in `meta`).
///
/// # Errors
/// [`WalError::Storage`] if `key` is not 8 bytes long.
pub(super) fn key_to_seq(key: &[u8]) -> Result<u64, WalError> {
    let arr: [u8; 8] =
        key.try_into().map_err(|_| WalError::Storage(format!("WAL key of {} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(arr))
}
