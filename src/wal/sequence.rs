//! The sequence file: sequence numbers are never reused, even if sled loses its tail.
//!
//! sled recovers a torn or corrupt log by truncating it at the first bad message, silently.
//! Without more, the next sequence number would then restart below numbers that were already
//! acknowledged (and, in exactly-once mode, already committed to Kafka, which would make the
//! flusher skip the new records). So a small file beside the sled directory records:
//!
//! ```text
//! offset  size  field
//! 0       8     reserved_through: u64 BE — no sequence number above it has been handed out;
//!               bumped (and fsynced) before any record above it is written
//! 8       8     last_durable: u64 BE — highest sequence number made durable; written after
//!               every group commit, not fsynced (exact after a process crash, a lower bound
//!               after a power loss)
//! 16      4     CRC-32 of bytes 0..16
//! ```
//!
//! On open, if sled holds no record up to `last_durable`, the missing range is reported as lost
//! and the WAL continues after `reserved_through` (a jump of up to [`RESERVE_BLOCK`]), since
//! lost numbers may have been acknowledged or committed to Kafka. Otherwise it continues after
//! the highest record found: the only numbers that can be missing then were never durable, so
//! never acknowledged and never sent. (After a power loss `last_durable` may be stale, so a loss
//! of fsynced records can go unseen; the flusher then ignores a Kafka position beyond this
//! WAL's numbers rather than skip to it.)

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::WalError;

/// How many sequence numbers one fsync of the sequence file reserves.
pub const RESERVE_BLOCK: u64 = 1 << 20;

pub(super) struct SequenceFile {
    file: File,
    reserved_through: u64,
    last_durable: u64,
}

/// What the file said at open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Floor {
    pub reserved_through: u64,
    pub last_durable: u64,
}

fn io(e: std::io::Error) -> WalError {
    WalError::Storage(format!("sequence file: {e}"))
}

impl SequenceFile {
    /// Opens or creates the file. A missing file is a new WAL; an unreadable one is reported
    /// and treated as empty (the sled contents still bound the numbers from below).
    pub fn open(path: &Path) -> Result<(Self, Floor), WalError> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let floor = floor_of(&file, path);
        Ok((SequenceFile { file, reserved_through: floor.reserved_through, last_durable: floor.last_durable }, floor))
    }

    /// What the file at `path` says, without creating or changing it (for inspection). A
    /// missing or unreadable file reads as empty, as in [`SequenceFile::open`].
    pub fn read_floor(path: &Path) -> Result<Floor, WalError> {
        match File::open(path) {
            Ok(file) => Ok(floor_of(&file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Floor::default()),
            Err(e) => Err(io(e)),
        }
    }

    /// Makes sure every number up to `seq` is reserved; fsyncs when it has to reserve more.
    pub fn reserve(&mut self, seq: u64) -> Result<(), WalError> {
        if seq <= self.reserved_through {
            return Ok(());
        }
        self.reserved_through = seq + RESERVE_BLOCK;
        self.write()?;
        self.file.sync_data().map_err(io)
    }

    /// Records the highest durable sequence number (no fsync).
    pub fn durable(&mut self, seq: u64) -> Result<(), WalError> {
        if seq <= self.last_durable {
            return Ok(());
        }
        self.last_durable = seq;
        self.write()
    }

    fn write(&self) -> Result<(), WalError> {
        let mut buf = [0u8; 20];
        buf[..8].copy_from_slice(&self.reserved_through.to_be_bytes());
        buf[8..16].copy_from_slice(&self.last_durable.to_be_bytes());
        let crc = crc32fast::hash(&buf[..16]);
        buf[16..].copy_from_slice(&crc.to_be_bytes());
        self.file.write_all_at(&buf, 0).map_err(io)
    }
}

/// Reads the floor from an open sequence file; a short or damaged file reads as empty.
fn floor_of(file: &File, path: &Path) -> Floor {
    let mut buf = [0u8; 20];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) if crc32fast::hash(&buf[..16]).to_be_bytes() == buf[16..20] => Floor {
            reserved_through: u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")),
            last_durable: u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes")),
        },
        Ok(()) => {
            tracing::error!(path = %path.display(), "The WAL sequence file fails its checksum; ignoring it.");
            Floor::default()
        }
        Err(_) => Floor::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_and_durable_marks_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sequence");
        {
            let (mut f, floor) = SequenceFile::open(&path).unwrap();
            assert_eq!(floor, Floor::default());
            f.reserve(10).unwrap();
            f.durable(7).unwrap();
        }
        let (_, floor) = SequenceFile::open(&path).unwrap();
        assert_eq!(floor, Floor { reserved_through: 10 + RESERVE_BLOCK, last_durable: 7 });
    }

    #[test]
    fn a_damaged_file_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sequence");
        std::fs::write(&path, [0xAB; 20]).unwrap();
        let (_, floor) = SequenceFile::open(&path).unwrap();
        assert_eq!(floor, Floor::default());
    }
}
