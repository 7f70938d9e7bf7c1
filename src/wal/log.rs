//! The sled-backed log: segments, reads, acknowledgements and reclamation.
//! See the design note in `wal/mod.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use serde::Serialize;
use tracing::{error, info, warn};

use super::idempotency::{IdempotencyKey, KeyIndex, KeyRecord};
use super::keys::{
    aside_key, key_to_seq, segment_bytes_key, segment_name, DELIVERED_KEY, META_TREE, NODE_ID_KEY, QUARANTINE_TREE,
    WAL_ID_KEY,
};
use super::record::{self, FrameError};
use super::recovery::{self, Loss, Recovery, RecoveryMode};
use super::sequence::SequenceFile;
use super::WalError;

/// The storage engine behind the WAL. Small on purpose so the engine can be swapped and the
/// logic above it tested without disk.
pub trait LogStore: Send + Sync + 'static {
    /// Appends framed records with consecutive sequence numbers and returns the first one.
    /// `keys` pairs an index into `frames` with the idempotency key of that record; each key is
    /// stored atomically with its record. Not durable until [`LogStore::sync`] returns.
    fn append(&self, frames: &[Vec<u8>], keys: &[(usize, IdempotencyKey)]) -> Result<u64, WalError>;
    /// The record the idempotency key `key` of client `scope` was stored with inside the
    /// window, if any. Keys of other scopes are never seen.
    fn lookup_key(&self, scope: &[u8], key: &[u8]) -> Result<Option<KeyRecord>, WalError>;
    /// Makes every record appended so far durable (fsync).
    fn sync(&self) -> Result<(), WalError>;
    /// Reads up to `max_records` records (and about `max_bytes`) with `from <= seq <= upto`,
    /// in sequence order. Corrupt records are quarantined and returned as such.
    fn read(&self, from: u64, upto: u64, max_records: usize, max_bytes: usize) -> Result<Vec<ReadRecord>, WalError>;
    /// Records that every sequence number up to `seq` has been delivered downstream, makes that
    /// durable and reclaims the segments that hold nothing newer.
    fn ack_through(&self, seq: u64) -> Result<(), WalError>;
    /// Takes record `seq` out of delivery because Kafka refuses it for what it is: its bytes
    /// are copied to the quarantine (listed by `collector wal quarantine`, with `reason`), and
    /// [`LogStore::read`] returns it as unreadable from then on, also after a restart.
    fn set_aside(&self, seq: u64, reason: &str) -> Result<(), WalError>;
    /// Counters for status pages and metrics.
    fn stats(&self) -> WalStats;
    /// Bytes of records in live segments (not yet reclaimed) and of stored idempotency keys;
    /// cheap, for the quota check.
    fn live_bytes(&self) -> u64;
    /// The next sequence number as it was when the log was opened: no position committed by
    /// an earlier incarnation of this WAL can lie above it.
    fn opened_next_seq(&self) -> u64;
}

/// A record in the quarantine tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub seq: u64,
    /// The bytes as stored.
    pub bytes: Vec<u8>,
    /// Why it was set aside, when that was not a failed checksum (which the bytes show).
    pub set_aside: Option<String>,
}

/// One record as read back from the log.
#[derive(Debug)]
pub struct ReadRecord {
    pub seq: u64,
    /// The framed value; `None` when it failed its checksum or was set aside (quarantined). `Bytes`, not
    /// the engine's own buffer type, so callers of [`LogStore`] never name sled; it shares the
    /// engine's buffer rather than copying it.
    pub frame: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct WalStats {
    /// The sequence number the next append will get.
    pub next_seq: u64,
    /// Every record up to this one has been confirmed by Kafka.
    pub delivered_through: u64,
    /// Records appended but not yet confirmed by Kafka.
    pub pending_records: u64,
    /// Live segment trees.
    pub segments: u64,
    /// Bytes of records in live segments and of idempotency keys: what the WAL quota limits.
    pub live_bytes: u64,
    /// The part of `live_bytes` that idempotency keys count (each key, its value and a fixed
    /// estimate of sled's cost per entry); they leave it when their bucket expires.
    pub idempotency_bytes: u64,
    /// Records set aside because they failed their checksum.
    pub quarantined: u64,
    /// Durable records that sled no longer had when the WAL was opened (torn or corrupt log),
    /// over the WAL's life; the ranges are in `collector wal verify`.
    pub lost_records: u64,
    /// sled's own measure of its files.
    pub disk_bytes: u64,
}

/// Settings for [`SledLog::open`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Roll to a new segment tree after this many payload bytes.
    pub segment_bytes: u64,
    /// sled page cache size.
    pub cache_bytes: u64,
    /// How long an idempotency key is remembered (at least; at most twice as long).
    pub idempotency_window_ms: u64,
}

/// The sled implementation of [`LogStore`].
pub struct SledLog {
    db: sled::Db,
    meta: sled::Tree,
    quarantine: sled::Tree,
    keys: KeyIndex,
    options: LogOptions,
    /// Live segments by first sequence number. The last one is the active (written) segment.
    /// A `RwLock` because reads (flusher) are frequent and rotation/reclaim are rare.
    segments: RwLock<BTreeMap<u64, sled::Tree>>,
    /// Only the single writer thread appends; the mutex makes that explicit and cheap.
    writer: Mutex<WriterState>,
    /// Bytes per live segment (the active one's grows with each append).
    segment_sizes: Mutex<BTreeMap<u64, u64>>,
    /// Sum of `segment_sizes`, read on every request for the quota (with the keys' bytes).
    live_bytes: AtomicU64,
    /// Guarantees sequence numbers are never reused (see `sequence.rs`). `None` when opened
    /// [`RecoveryMode::ReportOnly`]: such a log hands out no numbers, so it cannot append.
    sequence: Option<Mutex<SequenceFile>>,
    lost_records: u64,
    /// Sequence numbers skipped at this open after a loss (first, last): they hold no records.
    gap: Option<(u64, u64)>,
    /// A loss found at this open but not stored under `lost/` ([`RecoveryMode::ReportOnly`]),
    /// so that `verify` still lists it.
    unrecorded_loss: Option<(u64, u64)>,
    /// The segment a [`RecoveryMode::Repair`] open would have started and a `ReportOnly` one
    /// did not (0 or 1), counted in [`WalStats::segments`] so both report the same.
    unstarted_segments: u64,
    opened_next_seq: u64,
    next_seq: AtomicU64,
    delivered_through: AtomicU64,
    quarantined: AtomicU64,
}

struct WriterState {
    active_first_seq: u64,
    active_bytes: u64,
}

/// What the recovery steps found, before the log is assembled from it.
struct Found {
    db: sled::Db,
    meta: sled::Tree,
    sequence: Option<SequenceFile>,
    delivered: u64,
    segments: BTreeMap<u64, sled::Tree>,
    segment_sizes: BTreeMap<u64, u64>,
    keys: KeyIndex,
    /// The highest sequence number sled still holds (or the watermark).
    last_seq: u64,
    loss: Option<Loss>,
}

impl SledLog {
    /// Opens (or creates) the log in `dir` and recovers its position with
    /// [`RecoveryMode::Repair`].
    ///
    /// Recovery: the delivered watermark is read from `meta`; segments wholly at or below it are
    /// dropped (a crash may have happened between the watermark write and the drop); the next
    /// sequence number follows the highest key found, or, after a loss the sequence file
    /// exposes, everything ever reserved. A new segment is started for new appends.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled cannot open the directory.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Self, WalError> {
        Self::open_with(dir, options, RecoveryMode::Repair)
    }

    /// Opens the log in `dir`, recovering as `mode` says; the steps are in `recovery.rs`.
    ///
    /// # Errors
    /// [`WalError::Config`] for a zero segment size; [`WalError::Storage`] if a step fails.
    pub(super) fn open_with(dir: &Path, options: LogOptions, mode: RecoveryMode) -> Result<Self, WalError> {
        if options.segment_bytes == 0 {
            return Err(WalError::Config("segment size must be above zero".into()));
        }
        let recovery = Recovery { dir, mode };
        let (sequence, floor) = recovery.open_sequence_file()?;
        let db = recovery.open_or_set_aside_sled(options.cache_bytes)?;
        let meta = db.open_tree(META_TREE)?;
        let delivered = recovery::read_watermark(&meta)?;
        let segments = recovery::load_segments(&db)?;
        let last_seq = recovery::last_sequence(&segments, delivered)?;
        let loss = recovery.detect_loss(floor, last_seq, &meta)?;
        let keys = KeyIndex::open(&db, &meta, options.idempotency_window_ms, mode == RecoveryMode::Repair)?;
        let segment_sizes = recovery::load_segment_sizes(&meta, &segments)?;
        let found = Found { db, meta, sequence, delivered, segments, segment_sizes, keys, last_seq, loss };
        let mut log = SledLog::assemble(found, options)?;
        match mode {
            RecoveryMode::Repair => {
                log.reclaim(delivered)?;
                log.roll_segment(log.opened_next_seq)?;
            }
            RecoveryMode::ReportOnly => {
                log.count_as_if_repaired(delivered);
                return Ok(log);
            }
        }
        info!(
            dir = %dir.display(),
            next_seq = log.opened_next_seq,
            delivered_through = delivered,
            pending = log.opened_next_seq - 1 - delivered,
            "Opened the WAL."
        );
        Ok(log)
    }

    /// Builds the log from what recovery found: the next number follows the highest record,
    /// or after a loss every number skipped because of it.
    fn assemble(found: Found, options: LogOptions) -> Result<Self, WalError> {
        let Found { db, meta, sequence, delivered, segments, segment_sizes, keys, last_seq, loss } = found;
        let unrecorded_loss = loss.filter(|l| !l.recorded).map(|l| l.lost);
        let lost_records =
            recovery::lost_ranges(&meta, unrecorded_loss)?.iter().map(|(from, to)| to.saturating_sub(*from) + 1).sum();
        let next_seq = loss.map_or(last_seq, |l| l.skipped.1) + 1;
        let quarantine = db.open_tree(QUARANTINE_TREE)?;
        Ok(SledLog {
            keys,
            db,
            meta,
            quarantined: AtomicU64::new(quarantine.len() as u64),
            quarantine,
            options,
            live_bytes: AtomicU64::new(segment_sizes.values().sum()),
            segments: RwLock::new(segments),
            writer: Mutex::new(WriterState { active_first_seq: 0, active_bytes: 0 }),
            segment_sizes: Mutex::new(segment_sizes),
            sequence: sequence.map(Mutex::new),
            lost_records,
            gap: loss.map(|l| l.skipped),
            unrecorded_loss,
            unstarted_segments: 0,
            opened_next_seq: next_seq,
            next_seq: AtomicU64::new(next_seq),
            delivered_through: AtomicU64::new(delivered),
        })
    }

    /// Makes a new segment starting at `first_seq` the active one; the old one's size is kept.
    fn roll_segment(&self, first_seq: u64) -> Result<(), WalError> {
        let mut w = self.writer.lock().expect("writer lock poisoned");
        {
            let mut sizes = self.segment_sizes.lock().expect("sizes lock poisoned");
            if w.active_first_seq != 0 && w.active_first_seq != first_seq {
                sizes.insert(w.active_first_seq, w.active_bytes);
            }
            sizes.entry(first_seq).or_insert(0);
        }
        let tree = self.db.open_tree(segment_name(first_seq))?;
        self.segments.write().expect("segments lock poisoned").insert(first_seq, tree);
        w.active_first_seq = first_seq;
        w.active_bytes = 0;
        Ok(())
    }

    /// Drops every segment whose records are all `<= delivered` and that is not the active one.
    fn reclaim(&self, delivered: u64) -> Result<(), WalError> {
        for first in self.reclaimable(delivered) {
            self.segments.write().expect("segments lock poisoned").remove(&first);
            self.db.drop_tree(segment_name(first))?;
            self.forget_size(first);
            self.meta.remove(segment_bytes_key(first))?;
        }
        Ok(())
    }

    /// Makes this handle count segments as a [`RecoveryMode::Repair`] open would leave them,
    /// without its writes ([`RecoveryMode::ReportOnly`]): the segments [`SledLog::reclaim`]
    /// would drop are left out (the disk keeps them), and the fresh one
    /// [`SledLog::roll_segment`] would start is counted.
    fn count_as_if_repaired(&mut self, delivered: u64) {
        for first in self.reclaimable(delivered) {
            self.segments.write().expect("segments lock poisoned").remove(&first);
            self.forget_size(first);
        }
        let segments = self.segments.read().expect("segments lock poisoned");
        self.unstarted_segments = u64::from(!segments.contains_key(&self.opened_next_seq));
    }

    /// The segments whose records are all `<= delivered`, except the active one.
    fn reclaimable(&self, delivered: u64) -> Vec<u64> {
        let segments = self.segments.read().expect("segments lock poisoned");
        let firsts: Vec<u64> = segments.keys().copied().collect();
        firsts
            .windows(2)
            // A segment ends where the next one starts, so it is done if the next starts at or
            // below delivered + 1. The last (active) segment has no successor and is kept.
            .filter(|w| w[1] <= delivered + 1)
            .map(|w| w[0])
            .collect()
    }

    fn forget_size(&self, first: u64) {
        if let Some(size) = self.segment_sizes.lock().expect("sizes lock poisoned").remove(&first) {
            self.live_bytes.fetch_sub(size, Ordering::AcqRel);
        }
    }

    /// The sequence file, which only a log opened [`RecoveryMode::Repair`] has.
    fn sequence(&self) -> Result<MutexGuard<'_, SequenceFile>, WalError> {
        let sequence = self.sequence.as_ref().ok_or(WalError::ReadOnly)?;
        Ok(sequence.lock().expect("sequence lock poisoned"))
    }

    fn quarantine_record(&self, seq: u64, value: &[u8], err: &FrameError) {
        error!(seq, error = %err, "A WAL record failed its checksum; it is set aside in the quarantine tree.");
        crate::telemetry::wal_record_quarantined();
        if let Err(e) = self.quarantine.insert(seq.to_be_bytes(), value) {
            error!(seq, error = %e, "Could not copy a corrupt WAL record to quarantine.");
        } else {
            self.quarantined.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LogStore for SledLog {
    fn append(&self, frames: &[Vec<u8>], keys: &[(usize, IdempotencyKey)]) -> Result<u64, WalError> {
        if frames.is_empty() {
            return Ok(self.next_seq.load(Ordering::Acquire));
        }
        let first = self.next_seq.load(Ordering::Acquire);
        let roll = {
            let w = self.writer.lock().expect("writer lock poisoned");
            w.active_bytes >= self.options.segment_bytes
        };
        if roll {
            self.roll_segment(first)?;
        }
        // Reserve before writing: no record may carry a number the sequence file does not cover.
        self.sequence()?.reserve(first + frames.len() as u64 - 1)?;
        let mut w = self.writer.lock().expect("writer lock poisoned");
        let tree = self.segments.read().expect("segments lock poisoned")[&w.active_first_seq].clone();
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        for (i, frame) in frames.iter().enumerate() {
            batch.insert(&(first + i as u64).to_be_bytes(), frame.as_slice());
            bytes += frame.len() as u64;
        }
        // The segment's size first: if that write fails nothing else happened, and if the
        // records then fail, an overstated size only makes the quota stricter.
        self.meta.insert(segment_bytes_key(w.active_first_seq), &(w.active_bytes + bytes).to_be_bytes())?;
        if keys.is_empty() {
            tree.apply_batch(batch)?;
        } else {
            // Record and key in one transaction: after a crash both exist or neither, so a
            // retry can never be answered "duplicate" for a record that is not there.
            self.keys.append_with_keys(&tree, &batch, keys, first)?;
        }
        // Counters move only once everything is written. The size in `meta` (made durable by
        // the same fsync as the records) means opening never scans a segment.
        w.active_bytes += bytes;
        *self.segment_sizes.lock().expect("sizes lock poisoned").entry(w.active_first_seq).or_insert(0) += bytes;
        self.live_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.next_seq.store(first + frames.len() as u64, Ordering::Release);
        Ok(first)
    }

    fn lookup_key(&self, scope: &[u8], key: &[u8]) -> Result<Option<KeyRecord>, WalError> {
        self.keys.lookup(scope, key, crate::now_ms())
    }

    fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Acquire) + self.keys.bytes()
    }

    fn opened_next_seq(&self) -> u64 {
        self.opened_next_seq
    }

    fn sync(&self) -> Result<(), WalError> {
        self.db.flush()?;
        let durable = self.next_seq.load(Ordering::Acquire) - 1;
        self.sequence()?.durable(durable)
    }

    fn read(&self, from: u64, upto: u64, max_records: usize, max_bytes: usize) -> Result<Vec<ReadRecord>, WalError> {
        let mut out = Vec::new();
        if from > upto {
            return Ok(out);
        }
        let trees: Vec<sled::Tree> = {
            let segments = self.segments.read().expect("segments lock poisoned");
            // Start at the segment containing `from`: the last one whose first seq <= from.
            let start = segments.range(..=from).next_back().map(|(k, _)| *k).unwrap_or(0);
            segments.range(start..).map(|(_, t)| t.clone()).collect()
        };
        let mut bytes = 0usize;
        // Set-aside records stay in their segment; only look them up when there are any.
        let any_quarantined = self.quarantined.load(Ordering::Relaxed) > 0;
        'segments: for tree in trees {
            for item in tree.range(from.to_be_bytes()..=upto.to_be_bytes()) {
                let (k, v) = item?;
                let seq = key_to_seq(&k)?;
                if any_quarantined && self.quarantine.contains_key(seq.to_be_bytes())? {
                    out.push(ReadRecord { seq, frame: None });
                    if out.len() >= max_records {
                        break 'segments;
                    }
                    continue;
                }
                match record::decode(&v) {
                    Ok(_) => {
                        bytes += v.len();
                        out.push(ReadRecord { seq, frame: Some(Bytes::from_owner(v)) });
                    }
                    Err(e) => {
                        self.quarantine_record(seq, &v, &e);
                        out.push(ReadRecord { seq, frame: None });
                    }
                }
                if out.len() >= max_records || bytes >= max_bytes {
                    break 'segments;
                }
            }
        }
        Ok(out)
    }

    fn set_aside(&self, seq: u64, reason: &str) -> Result<(), WalError> {
        let stored = {
            let segments = self.segments.read().expect("segments lock poisoned");
            match segments.range(..=seq).next_back() {
                // A record sled cannot read is set aside too, without its bytes: the reason
                // says why.
                Some((_, tree)) => tree.get(seq.to_be_bytes()).unwrap_or_else(|_| Some(sled::IVec::default())),
                None => None,
            }
        };
        let Some(bytes) = stored else { return Ok(()) };
        self.meta.insert(aside_key(seq), reason.as_bytes())?;
        if self.quarantine.insert(seq.to_be_bytes(), bytes)?.is_none() {
            self.quarantined.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::wal_record_quarantined();
        }
        self.db.flush()?;
        error!(seq, %reason, "Kafka refuses a WAL record for what it is; it is set aside in the quarantine tree (`collector wal quarantine` lists it).");
        Ok(())
    }

    fn ack_through(&self, seq: u64) -> Result<(), WalError> {
        if seq <= self.delivered_through.load(Ordering::Acquire) {
            return Ok(());
        }
        self.meta.insert(DELIVERED_KEY, &seq.to_be_bytes())?;
        // Durable before reclaiming, so a crash never leaves us with dropped segments but an
        // older watermark (which would be harmless, yet confusing in `wal verify`).
        self.db.flush()?;
        self.delivered_through.store(seq, Ordering::Release);
        self.reclaim(seq)
    }

    fn stats(&self) -> WalStats {
        let next_seq = self.next_seq.load(Ordering::Acquire);
        let delivered_through = self.delivered_through.load(Ordering::Acquire);
        let skipped = self.gap.map_or(0, |(from, to)| {
            let (lo, hi) = (from.max(delivered_through + 1), to.min(next_seq - 1));
            if hi >= lo {
                hi - lo + 1
            } else {
                0
            }
        });
        let idempotency_bytes = self.keys.bytes();
        WalStats {
            next_seq,
            delivered_through,
            pending_records: next_seq.saturating_sub(delivered_through + 1) - skipped,
            segments: self.segments.read().expect("segments lock poisoned").len() as u64 + self.unstarted_segments,
            live_bytes: self.live_bytes.load(Ordering::Acquire) + idempotency_bytes,
            idempotency_bytes,
            quarantined: self.quarantined.load(Ordering::Relaxed),
            lost_records: self.lost_records,
            disk_bytes: self.db.size_on_disk().unwrap_or_else(|e| {
                warn!(error = %e, "Could not measure the WAL's size on disk.");
                0
            }),
        }
    }
}

impl SledLog {
    /// This WAL's node id: generated as `<host>-<8 hex digits>` the first time it is asked
    /// for and stored in `meta`, so the WAL keeps its identity (and its Kafka
    /// `transactional.id`) across restarts.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled cannot read or write `meta`.
    pub fn node_id(&self, host: &str) -> Result<String, WalError> {
        self.stored_or_new(NODE_ID_KEY, || format!("{host}-{:08x}", random_u64() as u32))
    }

    /// This WAL's identity: 16 hex digits generated the first time it is asked for and stored
    /// in `meta`. Unlike the node id it cannot be set from outside, so it tells this WAL (and
    /// copies of it) from any other under the same node id: the flusher commits it with its
    /// position in Kafka and refuses a position committed by another WAL.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled cannot read or write `meta`.
    pub fn wal_id(&self) -> Result<String, WalError> {
        self.stored_or_new(WAL_ID_KEY, || format!("{:016x}", random_u64()))
    }

    /// The value of `key` in `meta`, or `new()` stored there (durably) first.
    fn stored_or_new(&self, key: &[u8], new: impl FnOnce() -> String) -> Result<String, WalError> {
        if let Some(id) = self.meta.get(key)? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let id = new();
        self.meta.insert(key, id.as_bytes())?;
        self.db.flush()?;
        Ok(id)
    }
}

/// 64 bits that differ between processes and instants (std's per-process random hash keys,
/// the time and the pid), enough to tell WALs apart.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// Result of [`SledLog::verify`].
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub stats: WalStats,
    /// Pending records whose checksum is correct.
    pub ok: u64,
    /// Pending records that fail their checksum: sequence number and reason.
    pub corrupt: Vec<(u64, String)>,
    /// Ranges of durable records sled no longer had at some open (first, last).
    pub lost: Vec<(u64, u64)>,
}

impl SledLog {
    /// Reads every pending record and checks its frame, changing nothing.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled fails to read.
    pub fn verify(&self) -> Result<VerifyReport, WalError> {
        let stats = self.stats();
        let trees: Vec<sled::Tree> = self.segments.read().expect("segments lock poisoned").values().cloned().collect();
        let (mut ok, mut corrupt) = (0, Vec::new());
        for tree in trees {
            for item in tree.range((stats.delivered_through + 1).to_be_bytes()..) {
                let (k, v) = item?;
                match record::decode(&v) {
                    Ok(_) => ok += 1,
                    Err(e) => corrupt.push((key_to_seq(&k)?, e.to_string())),
                }
            }
        }
        Ok(VerifyReport { stats, ok, corrupt, lost: recovery::lost_ranges(&self.meta, self.unrecorded_loss)? })
    }

    /// Numbers of the idempotency buckets not dropped yet.
    #[cfg(test)]
    pub(super) fn idempotency_buckets(&self) -> Vec<u64> {
        self.keys.buckets()
    }

    /// Every quarantined record.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, WalError> {
        self.quarantine
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let seq = key_to_seq(&k)?;
                let reason = self.meta.get(aside_key(seq))?.map(|r| String::from_utf8_lossy(&r).into_owned());
                Ok(Quarantined { seq, bytes: v.to_vec(), set_aside: reason })
            })
            .collect()
    }
}
