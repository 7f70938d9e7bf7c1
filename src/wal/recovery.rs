//! Recovery: how opening a WAL finds its position, as a named policy (*resume, set aside,
//! report*; see the design note in `wal/mod.rs`).
//!
//! `SledLog::open_with` runs the steps in this order; each is a function, so the policy reads
//! as a list and each step says what it guarantees. Only [`RecoveryMode::Repair`] changes the
//! WAL; [`RecoveryMode::ReportOnly`] finds the same things and changes nothing.
//!
//! 1. [`Recovery::open_sequence_file`]: what the sequence file says.
//! 2. [`Recovery::open_or_set_aside_sled`]: sled, or a fresh one if sled refuses its files.
//! 3. [`read_watermark`]: every record up to it was confirmed by Kafka.
//! 4. [`load_segments`]: the segment trees.
//! 5. [`last_sequence`]: the highest record sled still holds.
//! 6. [`Recovery::detect_loss`]: durable records sled no longer has; numbering jumps past them.
//! 7. The idempotency index (`KeyIndex::open`): the key buckets as they are, with the bytes
//!    each counts against the quota (`idembytes/` in `meta`; a bucket without a count, from
//!    before counts were kept, is scanned). `Repair` stores the counts it scanned, removes
//!    those of buckets that are gone and starts the expiry thread; `ReportOnly` does none of it.
//! 8. [`load_segment_sizes`]: bytes per segment, for the quota.
//! 9. Reclaim (`SledLog::reclaim`): drop segments a crash left behind after the watermark
//!    passed them. `ReportOnly` only leaves them out of its counts.
//! 10. Roll (`SledLog::roll_segment`): a fresh segment for new appends; not in `ReportOnly`.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::error;

use super::keys::{
    key_to_seq, lost_key, segment_bytes_key, DELIVERED_KEY, LOST_PREFIX, SEGMENT_PREFIX, SEQUENCE_FILE, SLED_DIR,
};
use super::sequence::{Floor, SequenceFile};
use super::WalError;

/// What opening a WAL does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// The collector's open (`SledLog::open`): resume, set aside, report. A sled directory sled
    /// refuses is renamed aside and an empty one started; a loss the sequence file exposes is
    /// recorded under `lost/` and numbering jumps above every number ever reserved; segments a
    /// crash left behind after their acknowledgement are dropped; a fresh segment is started.
    /// The service always starts.
    Repair,
    /// Inspection (`collector wal …`, `Inspection`): find and report what `Repair`
    /// would find — the same positions, corrupt records and lost ranges, including a loss
    /// detected only now — and change nothing: no set-aside (a sled directory sled refuses is an
    /// error), no `lost/` entry, no segment dropped or started, no sequence file created. The
    /// log cannot append. sled itself still writes while opening, so this mode is only used on
    /// a copy of the WAL.
    ReportOnly,
}

/// Durable records sled no longer had at this open, and the numbers skipped because of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loss {
    /// The records that are gone (first, last).
    pub lost: (u64, u64),
    /// Numbers never to be used (first, last): the lost ones and every one reserved above them.
    pub skipped: (u64, u64),
    /// Whether the range was stored under `lost/` (only in [`RecoveryMode::Repair`]).
    pub recorded: bool,
}

/// One open's recovery: where the WAL is and what the steps may change.
pub(super) struct Recovery<'a> {
    pub dir: &'a Path,
    pub mode: RecoveryMode,
}

impl Recovery<'_> {
    /// Step 1: the sequence file and what it says (see `sequence.rs`). `Repair` creates the WAL
    /// directory and the file if they are new and keeps the file to reserve numbers with;
    /// `ReportOnly` only reads it, so it has none.
    ///
    /// # Errors
    /// [`WalError::Storage`] if the directory or the file cannot be created or read.
    pub fn open_sequence_file(&self) -> Result<(Option<SequenceFile>, Floor), WalError> {
        let path = self.dir.join(SEQUENCE_FILE);
        match self.mode {
            RecoveryMode::Repair => {
                std::fs::create_dir_all(self.dir)
                    .map_err(|e| WalError::Storage(format!("creating {}: {e}", self.dir.display())))?;
                let (file, floor) = SequenceFile::open(&path)?;
                // A new directory's and file's names are durable only once their directories
                // are fsynced (their own fsyncs do not cover them): the WAL directory's entry
                // in its parent, the sequence file's in the WAL directory.
                if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
                sync_dir(self.dir)?;
                Ok((Some(file), floor))
            }
            RecoveryMode::ReportOnly => Ok((None, SequenceFile::read_floor(&path)?)),
        }
    }

    /// Step 2: opens sled. If sled cannot open its directory (its own files are damaged beyond
    /// its recovery), `Repair` renames it to `sled.corrupt-<ms>` for inspection and starts a
    /// fresh one: the service must start, and the sequence file keeps numbers from being
    /// reused. `ReportOnly` reports that as an error instead.
    ///
    /// # Errors
    /// [`WalError::Storage`] if the WAL is in use by another process, if sled fails for another
    /// reason than damage, or (`ReportOnly`) if sled refuses the directory.
    pub fn open_or_set_aside_sled(&self, cache_bytes: u64) -> Result<sled::Db, WalError> {
        let path = self.dir.join(SLED_DIR);
        let open = || {
            sled::Config::new()
                .path(&path)
                .cache_capacity(cache_bytes)
                // We fsync explicitly at every group commit; the background flush is only a backstop.
                .flush_every_ms(Some(1000))
                .open()
        };
        match open_waiting_for_lock(open) {
            Ok(db) => Ok(db),
            Err(e) if is_lock_held(&e) => Err(WalError::Storage(format!(
                "the WAL at {} is in use by another process (is another collector running on it?)",
                path.display()
            ))),
            Err(sled::Error::Io(e)) if e.kind() != std::io::ErrorKind::InvalidData => {
                Err(WalError::Storage(format!("opening {}: {e}", path.display())))
            }
            Err(e) if self.mode == RecoveryMode::ReportOnly => Err(WalError::Storage(format!(
                "sled cannot open {}: {e}; a collector starting on this WAL would set it aside as \
                 sled.corrupt-<ms> and start an empty one",
                path.display()
            ))),
            Err(e) => {
                let aside = path.with_extension(format!("corrupt-{}", crate::now_ms()));
                error!(
                    path = %path.display(),
                    aside = %aside.display(),
                    error = %e,
                    "sled cannot open the WAL; setting it aside and starting an empty one. Its records are not delivered; inspect it with `collector wal verify`."
                );
                crate::telemetry::wal_set_aside();
                std::fs::rename(&path, &aside)
                    .map_err(|e| WalError::Storage(format!("setting aside {}: {e}", path.display())))?;
                sync_dir(self.dir)?;
                Ok(open()?)
            }
        }
    }

    /// Step 6: compares the highest record sled still has with the highest the sequence file
    /// saw made durable. Durable records sled no longer has are reported, never ignored: logged,
    /// counted and (`Repair`) stored under `lost/`. After such a loss the numbers continue above
    /// every one ever reserved, since some of the lost ones may have been acknowledged or
    /// committed to Kafka; otherwise they stay dense.
    ///
    /// # Errors
    /// [`WalError::Storage`] if the lost range cannot be stored.
    pub fn detect_loss(&self, floor: Floor, last_seq: u64, meta: &sled::Tree) -> Result<Option<Loss>, WalError> {
        if floor.last_durable <= last_seq {
            return Ok(None);
        }
        let (from, to) = (last_seq + 1, floor.last_durable);
        error!(
            from,
            to,
            "The WAL lost durable records: sled truncated its log (torn write or corruption). They are reported, not recoverable; in exactly-once mode those already committed to Kafka are skipped."
        );
        let recorded = self.mode == RecoveryMode::Repair;
        if recorded {
            meta.insert(lost_key(from), &to.to_be_bytes())?;
            crate::telemetry::wal_records_lost(to - from + 1);
        }
        Ok(Some(Loss { lost: (from, to), skipped: (from, last_seq.max(floor.reserved_through)), recorded }))
    }
}

/// sled's file lock may still be held for a moment by a process that is exiting (or, in tests,
/// by sled's background thread after the last handle was dropped): try again for up to two
/// seconds before giving up.
fn open_waiting_for_lock(open: impl Fn() -> sled::Result<sled::Db>) -> sled::Result<sled::Db> {
    let mut attempts = 0;
    loop {
        match open() {
            Err(e) if is_lock_held(&e) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether sled failed because another handle holds its file lock. sled 0.34 reports that as
/// an `io::Error` of kind `Other` whose message says so (not as `WouldBlock`), so the message
/// is the only sign.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// Step 3: the delivered watermark: every record up to it was confirmed by Kafka (0 if none).
///
/// # Errors
/// [`WalError::Storage`] if sled fails or the stored value is not 8 bytes.
pub(super) fn read_watermark(meta: &sled::Tree) -> Result<u64, WalError> {
    match meta.get(DELIVERED_KEY)? {
        Some(v) if v.len() == 8 => Ok(u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes"))),
        Some(v) => Err(WalError::Storage(format!("meta/{DELIVERED_KEY:?} has {} bytes, expected 8", v.len()))),
        None => Ok(0),
    }
}

/// Step 4: every segment tree, by first sequence number.
///
/// # Errors
/// [`WalError::Storage`] if sled fails or a segment's name does not end in 8 bytes.
pub(super) fn load_segments(db: &sled::Db) -> Result<BTreeMap<u64, sled::Tree>, WalError> {
    let mut segments = BTreeMap::new();
    for name in db.tree_names() {
        if let Some(first) = name.strip_prefix(SEGMENT_PREFIX) {
            let first: [u8; 8] = first
                .try_into()
                .map_err(|_| WalError::Storage(format!("unexpected tree name {:?}", String::from_utf8_lossy(&name))))?;
            segments.insert(u64::from_be_bytes(first), db.open_tree(&name)?);
        }
    }
    Ok(segments)
}

/// Step 5: the highest sequence number sled still holds, or the watermark if that is higher
/// (every segment up to it may have been reclaimed).
///
/// # Errors
/// [`WalError::Storage`] if sled fails or a key is not 8 bytes.
pub(super) fn last_sequence(segments: &BTreeMap<u64, sled::Tree>, delivered: u64) -> Result<u64, WalError> {
    for tree in segments.values().rev() {
        if let Some((k, _)) = tree.last()? {
            return Ok(delivered.max(key_to_seq(&k)?));
        }
    }
    Ok(delivered)
}

/// Step 8: bytes per segment. Every segment's size is in `meta` (written before its records);
/// one without an entry (never written to) is scanned, which costs nothing.
///
/// # Errors
/// [`WalError::Storage`] if sled fails.
pub(super) fn load_segment_sizes(
    meta: &sled::Tree,
    segments: &BTreeMap<u64, sled::Tree>,
) -> Result<BTreeMap<u64, u64>, WalError> {
    let mut sizes = BTreeMap::new();
    for (first, tree) in segments {
        let size = match meta.get(segment_bytes_key(*first))? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => tree.iter().values().map(|v| v.map(|v| v.len() as u64)).sum::<Result<u64, _>>()?,
        };
        sizes.insert(*first, size);
    }
    Ok(sizes)
}

/// The ranges (first, last) of durable records sled no longer had at some open: those stored
/// under `lost/`, and one found at this open but not stored (`ReportOnly`).
///
/// # Errors
/// [`WalError::Storage`] if sled fails or an entry is malformed.
pub(super) fn lost_ranges(meta: &sled::Tree, unrecorded: Option<(u64, u64)>) -> Result<Vec<(u64, u64)>, WalError> {
    let mut ranges = meta
        .scan_prefix(LOST_PREFIX)
        .map(|item| {
            let (k, v) = item?;
            Ok((key_to_seq(&k[LOST_PREFIX.len()..])?, key_to_seq(&v)?))
        })
        .collect::<Result<Vec<_>, WalError>>()?;
    if let Some(range) = unrecorded {
        ranges.push(range);
        ranges.sort_unstable();
    }
    Ok(ranges)
}

/// Fsyncs a directory, which makes the names in it durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::Storage(format!("fsyncing the directory {}: {e}", dir.display())))
}
