//! The write-ahead log: every accepted request is on disk before the client hears 2xx.
//!
//! # Contract
//! In: framed records from ingest ([`WalWriter::append`]). Out: records in sequence order to the
//! flusher ([`LogStore::read`]), which acknowledges what Kafka confirmed
//! ([`LogStore::ack_through`]). Guaranteed: an `append` that returned `Ok(seq)` survives
//! `kill -9` and power loss (sled's `flush()` ends in `fdatasync` of its log, and every
//! directory entry the WAL's files need is fsynced: vendored sled, `vendor/README.md`; the
//! power-cut proof on a filesystem that forgets is issue 9's); records are read back in the order of
//! their sequence numbers; a record is only reclaimed after it was acknowledged; sequence
//! numbers are never reused. Not guaranteed by the WAL alone: it hands records out *at least
//! once* — a record Kafka already has may be read again after a crash, because the watermark
//! is written after Kafka confirms. The flusher turns that into exactly-once (the default) for
//! `read_committed` readers by committing the WAL position with each batch in one Kafka
//! transaction and resuming after Kafka's committed position (see `crate::flush`); with
//! `--delivery-guarantee at-least-once` such a record is sent again.
//!
//! Inspection (`collector wal stats|verify|quarantine`, [`Inspection`]) never changes a WAL.
//!
//! # Design
//! **Engine.** sled 0.34 behind the small [`LogStore`] trait. sled is beta and known to leak
//! space under queue-like insert-then-remove (sled #1333), so records are never removed one by
//! one: they live in *segment trees* that are dropped whole.
//!
//! **Directory.** `<wal-dir>/sled/` is the sled database; `<wal-dir>/sequence` is the sequence
//! file (see [`sequence`]-module docs: the highest number ever reserved, fsynced once per
//! million, and the last durable one); `<wal-dir>/sled.corrupt-<ms>/` is a sled directory sled
//! refused to open, set aside for inspection. The names, and the key encoding below, are
//! defined in one place, `keys.rs`.
//!
//! **Trees.**
//! - `seg/<first_seq: u64 BE>` — one per segment; key = sequence number as `u64` big-endian
//!   (so sled's byte order is sequence order), value = a framed record (see [`record`]).
//!   The segment with the highest `first_seq` is active; it rolls over after
//!   `segment_bytes` of records, and a fresh one is started at every open.
//! - `meta` — `delivered_through` → `u64` BE: every record up to it was confirmed by Kafka;
//!   `node_id` → this WAL's generated node id; `wal_id` → its identity (16 hex digits, committed
//!   with the position in Kafka); `segbytes/<first>` → size of a closed segment;
//!   `lost/<first>` → last: a range of durable records sled no longer had at some open;
//!   `aside/<seq>` → why a record Kafka refused was set aside; `idembytes/<bucket>` → what the
//!   keys of an idempotency bucket count against the quota.
//! - `quarantine` — `u64` BE sequence → the raw bytes of a record that failed its checksum, or
//!   that Kafka refused for what it is (set aside).
//! - `idem/<bucket: u64 BE>` — idempotency keys, `bucket = stored_at_ms / window`, dropped whole
//!   (see [`idempotency`]). Key: `[scope_len u32 BE][scope][Idempotency-Key]`, the scope being
//!   the client's identity (empty = anonymous), so clients never see each other's keys and the
//!   pair is unambiguous. Value, 32 bytes: `[seq u64 BE][fingerprint u128 BE][stored_at_ms u64
//!   BE]`, the fingerprint being the first 128 bits of the body's SHA-256, which no one can
//!   match with another body on purpose. Each key is written in one sled transaction with its
//!   record and its bucket's byte count. Entries of the format before scopes (24 bytes, a CRC-32
//!   fingerprint, the bare key) are never matched, so a retry spanning that upgrade may be
//!   stored twice but is never answered "duplicate" on a forgeable CRC; they are counted and
//!   expire like the others.
//!
//! **Sequence numbers** start at 1 and are never reused. After a clean restart the next one
//! follows the highest key found; after a detected loss it jumps above everything the sequence
//! file ever reserved, since lost numbers may have been acknowledged or committed to Kafka.
//!
//! **Framing.** `[version u8][crc32 u32 BE][received_at_ms u64 BE][client_len u16 BE][client][payload]`,
//! the CRC covering everything after itself ([`record`]). Checked on every read.
//!
//! **Group commit.** One writer thread ([`WalWriter`]) appends whatever requests are waiting
//! as one sled batch and fsyncs once for all of them.
//!
//! **Storage faults.** The first storage error of a write fails the log for the process
//! ([`GuardedLog`], `guard.rs`): later calls are refused without touching sled, and nothing
//! written but not fsynced before the failure is ever treated as durable. `crate::heal` reopens
//! the WAL — by restarting the process in place — once the disk is usable again. An append
//! that misses its deadline is answered as not stored ([`WalError::TimedOut`]).
//!
//! **What survives a crash.** Everything that was fsynced: all records whose `append`
//! returned, and the last flushed watermark. Records written but not yet fsynced may or may
//! not survive; their clients never got a 2xx.
//!
//! **Recovery** is a named policy, [`RecoveryMode`], run as the documented steps of
//! `recovery.rs`. [`RecoveryMode::Repair`] (every [`SledLog::open`]) *resumes, sets aside,
//! reports*: read the watermark, drop segments wholly at or below it, continue sequence numbers
//! as above, start a fresh segment. A record that fails its checksum when read is copied to
//! `quarantine`, logged, counted (`collector_wal_quarantined_total`) and skipped. sled itself
//! recovers a torn or corrupt log by truncating it at the first bad message, silently, and a
//! flipped byte early in its log loses everything after it: the sequence file's `last_durable`
//! exposes that, and the missing range is logged, counted (`collector_wal_lost_records_total`),
//! stored under `lost/` and listed by `collector wal verify`. If sled refuses to open at all,
//! its directory is set aside and an empty one started. None of this ever stops the service
//! from starting.
//!
//! **Inspection.** sled 0.34 has no read-only mode: opening writes (its config, its own log
//! recovery, its lock), and `Repair` writes more. So [`Inspection::open`] copies `sled/` and
//! the sequence file to a temporary directory and opens the copy with
//! [`RecoveryMode::ReportOnly`]: the same steps, reporting what `Repair` would find (including
//! a loss detected only now) and changing nothing — no set-aside (an error instead), no `lost/`
//! entry, no segment dropped or started, no sequence number handed out. The copy is deleted
//! afterwards. The original is only read, under a shared lock on `sled/db`: a WAL a collector is
//! running on is refused (its copy could look torn), and no collector can start on it while it
//! is copied.
//!
//! **Reclamation.** After Kafka confirms a batch, the flusher calls `ack_through(seq)`: the
//! watermark is written and fsynced, then every non-active segment whose records are all
//! `<= seq` is dropped with `drop_tree`.
//!
//! **Quota.** [`LogStore::live_bytes`], what ingest compares with `--wal-max-mib`, is the bytes
//! of records in live segments plus the bytes of idempotency keys: each key, its value and a
//! fixed estimate of sled's cost per entry ([`idempotency::ENTRY_OVERHEAD_BYTES`]). A key
//! stays counted for its window, after its record was delivered, until its bucket is dropped.
//!
//! **Key expiry, off the request path.** A bucket is dropped by an expiry thread that the log
//! starts at a `Repair` open and stops (joining it) when dropped, never by the writer thread, so
//! no `drop_tree` runs inside a group commit. Lookups only read the current and previous
//! bucket and honour `stored_at_ms`, so an expired bucket not yet dropped never answers.

mod error;
mod guard;
pub mod idempotency;
mod inspect;
mod keys;
mod log;
pub mod record;
mod recovery;
mod sequence;
mod writer;

pub use error::WalError;
pub use guard::{GuardedLog, WalFault, WalHealth};
pub use idempotency::{Fingerprint, IdempotencyKey, KeyRecord};
pub use inspect::Inspection;
pub use log::{LogOptions, LogStore, Quarantined, ReadRecord, SledLog, VerifyReport, WalStats};
pub use recovery::RecoveryMode;
pub use writer::{Appended, WalWriter};

#[cfg(test)]
mod tests;
