//! Storage faults: a WAL that failed once is not written again by this process.
//!
//! # Contract
//! [`GuardedLog`] wraps the log every stage uses. The first storage error of a write (append,
//! fsync, acknowledgement, set-aside) *fails* the log: from then on every call that would touch
//! the disk answers [`WalError::Unavailable`] at once, [`WalHealth::fault`] says why, and
//! ingest answers `503 wal_unavailable` and turns unready. Nothing written before the failure
//! and not yet fsynced is treated as durable by this process: no request of the failed group
//! commit got a 2xx, and no later fsync of this handle is trusted (sled's own periodic flush may
//! still run; nothing is answered on its strength). What the disk holds is read again only by a
//! fresh open, which `crate::heal` does once the disk is usable. (That fresh process may read
//! the failed group's records from the page cache; it delivers them, at least once — their
//! clients were told they were not stored — and a retry with the same `Idempotency-Key` may be
//! answered as a duplicate of such a record: see the README's "not guaranteed".)
//!
//! Why not go on with the same handle: sled 0.34 does not survive a storage fault. On a full
//! tmpfs its appends fail with ENOSPC, and after space is freed the next append blocks forever
//! (found by the tmpfs test; the issue that started this saw every request hang). And after a
//! failed fsync the kernel may have dropped the dirty pages, so a later fsync that succeeds
//! proves nothing about them (PostgreSQL's "fsyncgate").
//!
//! A disk can also stall without an error. [`WalHealth`] knows when the group commit in
//! progress started; one running longer than the append deadline makes the collector unready
//! (its requests already got `503` at their deadline) until it finishes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::error;

use super::idempotency::{IdempotencyKey, KeyRecord};
use super::log::{LogStore, ReadRecord, WalStats};
use super::WalError;

/// Why the WAL should not take appends right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFault {
    /// A write failed (its error): the WAL stays failed until the process reopens it.
    Failed(String),
    /// The group commit in progress has run this long, past the append deadline.
    Stalled(Duration),
}

/// The WAL's fault state, shared by the guard, the writer, ingest and the healer.
#[derive(Debug)]
pub struct WalHealth {
    failed: OnceLock<String>,
    /// When the group commit in progress started ([`monotonic_ms`]); 0 when none runs.
    commit_started_ms: AtomicU64,
    append_deadline: Duration,
}

impl WalHealth {
    pub fn new(append_deadline: Duration) -> Self {
        WalHealth { failed: OnceLock::new(), commit_started_ms: AtomicU64::new(0), append_deadline }
    }

    /// How long an append may take before its request is answered `503 wal_unavailable`.
    pub fn append_deadline(&self) -> Duration {
        self.append_deadline
    }

    /// Fails the log for good (the first reason is kept).
    pub fn fail(&self, reason: &str) {
        if self.failed.set(reason.to_string()).is_ok() {
            error!(%reason, "The WAL's storage failed: appends are refused (503 wal_unavailable) and the collector is unready until the WAL is reopened.");
            crate::telemetry::wal_failed();
        }
    }

    /// The first storage error, if the log failed.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// The writer starts a group commit.
    pub fn commit_started(&self) {
        self.commit_started_ms.store(monotonic_ms(), Ordering::Release);
    }

    /// The writer's group commit ended (either way).
    pub fn commit_ended(&self) {
        self.commit_started_ms.store(0, Ordering::Release);
    }

    /// How long the group commit in progress has run, if it has outlived the deadline.
    pub fn stalled(&self) -> Option<Duration> {
        let started = self.commit_started_ms.load(Ordering::Acquire);
        if started == 0 {
            return None;
        }
        let running = Duration::from_millis(monotonic_ms().saturating_sub(started));
        (running > self.append_deadline).then_some(running)
    }

    /// What keeps the WAL from taking appends, if anything.
    pub fn fault(&self) -> Option<WalFault> {
        match self.failure() {
            Some(reason) => Some(WalFault::Failed(reason.to_string())),
            None => self.stalled().map(WalFault::Stalled),
        }
    }
}

/// Milliseconds on a monotonic clock since the first call, from 1: a wall clock stepped
/// forward (NTP, a resumed VM) must not look like a stalled disk.
fn monotonic_ms() -> u64 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// The log behind a fault guard (see the module notes).
pub struct GuardedLog {
    inner: Arc<dyn LogStore>,
    health: Arc<WalHealth>,
}

impl GuardedLog {
    pub fn new(inner: Arc<dyn LogStore>, health: Arc<WalHealth>) -> Self {
        GuardedLog { inner, health }
    }

    /// Refuses once the log failed.
    fn usable(&self) -> Result<(), WalError> {
        match self.health.failure() {
            Some(reason) => Err(WalError::Unavailable(reason.to_string())),
            None => Ok(()),
        }
    }

    /// A write: refused once the log failed; its own storage error fails the log.
    fn write<T>(&self, op: impl FnOnce(&dyn LogStore) -> Result<T, WalError>) -> Result<T, WalError> {
        self.usable()?;
        op(self.inner.as_ref()).inspect_err(|e| {
            if let WalError::Storage(reason) = e {
                self.health.fail(reason);
            }
        })
    }
}

impl LogStore for GuardedLog {
    fn append(&self, frames: &[Vec<u8>], keys: &[(usize, IdempotencyKey)]) -> Result<u64, WalError> {
        self.write(|log| log.append(frames, keys))
    }

    fn lookup_key(&self, scope: &[u8], key: &[u8]) -> Result<Option<KeyRecord>, WalError> {
        self.usable()?;
        self.inner.lookup_key(scope, key)
    }

    fn sync(&self) -> Result<(), WalError> {
        self.write(|log| log.sync())
    }

    /// Reads are refused once the log failed too: after a fault sled may block on any call,
    /// and a flusher waiting here is better than one blocked inside sled.
    fn read(&self, from: u64, upto: u64, max_records: usize, max_bytes: usize) -> Result<Vec<ReadRecord>, WalError> {
        self.usable()?;
        self.inner.read(from, upto, max_records, max_bytes)
    }

    fn ack_through(&self, seq: u64) -> Result<(), WalError> {
        self.write(|log| log.ack_through(seq))
    }

    fn set_aside(&self, seq: u64, reason: &str) -> Result<(), WalError> {
        self.write(|log| log.set_aside(seq, reason))
    }

    fn stats(&self) -> WalStats {
        self.inner.stats()
    }

    fn live_bytes(&self) -> u64 {
        self.inner.live_bytes()
    }

    fn opened_next_seq(&self) -> u64 {
        self.inner.opened_next_seq()
    }
}
