//! Read-only inspection of a WAL directory, for `collector wal stats|verify|quarantine`.
//!
//! Looking must not change what is looked at: a WAL someone inspects may be the evidence of a
//! fault. But sled 0.34 has no read-only mode (opening rewrites its config, recovers a torn log
//! by truncating it, takes a lock), and a collector's open reclaims segments, records lost
//! ranges, may set an unopenable sled directory aside and starts a segment. So
//! [`Inspection::open`] copies the sled directory and the sequence file into a fresh temporary
//! directory and opens the copy with [`RecoveryMode::ReportOnly`]: the report shows what a
//! collector starting on the WAL would find, and the WAL itself is only read. The copy is
//! deleted when the `Inspection` is dropped.
//!
//! The copy lives in the system's temporary directory (`TMPDIR`, often a tmpfs, i.e. memory)
//! or where `--copy-dir` says, and needs as much space as the WAL. A WAL a collector is running on is refused (sled's lock on `sled/db` is held); the copy
//! is taken under a shared lock, so no collector can start on the WAL while it is copied.

use std::path::Path;

use tempfile::TempDir;
use tracing::info;

use super::keys::{SEQUENCE_FILE, SLED_DIR};
use super::{LogOptions, LogStore, Quarantined, RecoveryMode, SledLog, VerifyReport, WalError, WalStats};

/// A WAL opened for inspection: a [`SledLog`] over a private copy that offers only reads.
pub struct Inspection {
    // Declared before `_copy` so that sled is closed before its files are deleted.
    log: SledLog,
    /// The copy of the WAL; removed on drop. Only held for that.
    _copy: TempDir,
}

impl Inspection {
    /// Copies the WAL in `dir` to a temporary directory (in `copy_in`, or the system's
    /// temporary directory) and opens the copy for reading.
    /// Creates and changes nothing under `dir`.
    ///
    /// # Errors
    /// [`WalError::Config`] if `dir` holds no WAL (no `sled/` directory); [`WalError::Storage`]
    /// if copying fails or sled cannot open the copy.
    pub fn open(dir: &Path, copy_in: Option<&Path>) -> Result<Self, WalError> {
        let sled_dir = dir.join(SLED_DIR);
        if !sled_dir.is_dir() {
            return Err(WalError::Config(format!(
                "no WAL at {}: {} does not exist",
                dir.display(),
                sled_dir.display()
            )));
        }
        // sled holds an exclusive `flock` on `sled/db` while a collector runs on the WAL. A
        // shared lock, held while copying, refuses a live WAL (whose copy could look torn) and
        // keeps a collector from starting on it meanwhile; taking it writes nothing.
        let db = std::fs::File::open(sled_dir.join("db"))
            .map_err(|e| WalError::Storage(format!("opening {}: {e}", sled_dir.join("db").display())))?;
        if let Err(e) = db.try_lock_shared() {
            return Err(WalError::Storage(match e {
                std::fs::TryLockError::WouldBlock => {
                    format!("the WAL at {} is in use by another process (stop the collector first)", dir.display())
                }
                std::fs::TryLockError::Error(e) => format!("locking {}: {e}", sled_dir.display()),
            }));
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix("collector-wal-inspect-");
        let copy = match copy_in {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .map_err(|e| WalError::Storage(format!("creating a temporary directory for the copy: {e}")))?;
        copy_tree(&sled_dir, &copy.path().join(SLED_DIR))?;
        let sequence = dir.join(SEQUENCE_FILE);
        if sequence.exists() {
            copy_file(&sequence, &copy.path().join(SEQUENCE_FILE))?;
        }
        info!(wal = %dir.display(), copy = %copy.path().display(), "Inspecting a copy of the WAL.");
        drop(db);
        let log = SledLog::open_with(copy.path(), inspection_options(), RecoveryMode::ReportOnly)?;
        Ok(Inspection { log, _copy: copy })
    }

    /// Positions, pending records, segments and sizes, as a collector starting now would find them.
    pub fn stats(&self) -> WalStats {
        self.log.stats()
    }

    /// Every pending record's checksum, and the lost ranges (see [`SledLog::verify`]).
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled fails to read.
    pub fn verify(&self) -> Result<VerifyReport, WalError> {
        self.log.verify()
    }

    /// Every quarantined record: sequence number and the raw stored bytes.
    ///
    /// # Errors
    /// [`WalError::Storage`] if sled fails to read.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, WalError> {
        self.log.quarantined()
    }
}

/// Settings for reading: inspection appends nothing, so only the cache size matters.
fn inspection_options() -> LogOptions {
    LogOptions { segment_bytes: u64::MAX, cache_bytes: 16 * 1024 * 1024, idempotency_window_ms: 86_400_000 }
}

/// Copies the directory tree `from` to `to` (which must not exist yet).
fn copy_tree(from: &Path, to: &Path) -> Result<(), WalError> {
    let io = |what: &str, path: &Path, e: std::io::Error| WalError::Storage(format!("{what} {}: {e}", path.display()));
    std::fs::create_dir(to).map_err(|e| io("creating", to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io("reading", from, e))? {
        let entry = entry.map_err(|e| io("reading", from, e))?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(|e| io("reading", &entry.path(), e))?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), WalError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| WalError::Storage(format!("copying {} to {}: {e}", from.display(), to.display())))
}
