//! Corruption and torn writes: edit the stored bytes, reopen, check what recovery did.
//!
//! The promise: the WAL always opens; every record that was durable is either read back
//! intact, quarantined (its checksum failed), or inside a reported lost range (sled truncated
//! its log at damage it found) — never silently gone; and sequence numbers are never reused.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore, SledLog};
use common::{copy_dir, open_wal};

const RECORDS: u64 = 100;

fn options() -> LogOptions {
    LogOptions { segment_bytes: 1 << 30, cache_bytes: 1 << 20, idempotency_window_ms: 60_000 }
}

fn payload(n: u64) -> Vec<u8> {
    format!(r#"{{"n":{n},"pad":"{}"}}"#, "p".repeat(200)).into_bytes()
}

/// A WAL with records 1..=RECORDS, each fsynced on its own, then closed.
fn written_wal() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path(), options()).unwrap();
    for n in 1..=RECORDS {
        let frame = record::encode(&Entry { received_at_ms: n, client: "t", payload: &payload(n) });
        assert_eq!(log.append(&[frame], &[]).unwrap(), n);
        log.sync().unwrap();
    }
    dir
}

fn sled_file(dir: &Path) -> std::path::PathBuf {
    dir.join("sled").join("db")
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// Reopens and accounts for every record: intact, quarantined or reported lost.
fn account(dir: &Path) -> (usize, usize, u64) {
    let log = open_wal(dir, options());
    let report = log.verify().unwrap();
    let read = log.read(1, RECORDS, usize::MAX, usize::MAX).unwrap();
    let mut intact = BTreeSet::new();
    let mut quarantined = BTreeSet::new();
    for r in &read {
        match &r.frame {
            Some(f) => {
                assert_eq!(record::decode(f).unwrap().payload, payload(r.seq), "record {} came back changed", r.seq);
                intact.insert(r.seq);
            }
            None => {
                quarantined.insert(r.seq);
            }
        }
    }
    let lost: BTreeSet<u64> = report.lost.iter().flat_map(|&(from, to)| from..=to).collect();
    for n in 1..=RECORDS {
        assert!(
            intact.contains(&n) || quarantined.contains(&n) || lost.contains(&n),
            "record {n} vanished without being reported (lost ranges {:?})",
            report.lost
        );
    }
    assert_eq!(log.stats().lost_records, lost.len() as u64);
    // New records never reuse a number that was handed out before.
    let frame = record::encode(&Entry { received_at_ms: 0, client: "t", payload: b"{}" });
    let next = log.append(&[frame], &[]).unwrap();
    assert!(next > RECORDS, "sequence number {next} reused after recovery");
    (intact.len(), quarantined.len(), lost.len() as u64)
}

#[test]
fn a_torn_tail_is_reported_and_numbers_are_not_reused() {
    let dir = written_wal();
    let file = sled_file(dir.path());
    let len = std::fs::metadata(&file).unwrap().len();
    // Cut the log in the middle of some record.
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len * 2 / 3 + 7).unwrap();
    let (intact, quarantined, lost) = account(dir.path());
    eprintln!("torn tail: {intact} intact, {quarantined} quarantined, {lost} reported lost");
    assert!(lost > 0, "truncating the log must lose (and report) the newest records");
}

#[test]
fn a_flipped_byte_anywhere_in_the_log_is_never_silent() {
    let pristine = written_wal();
    let len = std::fs::metadata(sled_file(pristine.path())).unwrap().len();
    for offset in [40, len / 4, len / 2, len * 3 / 4, len - 20] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        flip_byte(&sled_file(dir.path()), offset);
        let (intact, quarantined, lost) = account(dir.path());
        eprintln!("flip at {offset}/{len}: {intact} intact, {quarantined} quarantined, {lost} reported lost");
    }
}

#[test]
fn a_wal_whose_sled_files_are_destroyed_still_starts_and_reports_everything_lost() {
    let dir = written_wal();
    // Destroy sled's configuration and log. sled 0.34 then starts empty (if it refused, the
    // directory would be set aside as `sled.corrupt-<ms>`); either way nothing may be silent.
    std::fs::write(dir.path().join("sled").join("conf"), b"garbage").unwrap();
    std::fs::write(sled_file(dir.path()), vec![0xffu8; 4096]).unwrap();
    let (intact, _, lost) = account(dir.path());
    assert_eq!((intact as u64, lost), (0, RECORDS), "everything is reported lost, nothing silently");
}

#[test]
fn wal_verify_reports_lost_ranges_and_fails() {
    let dir = written_wal();
    let file = sled_file(dir.path());
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    // `wal verify` finds the loss as a starting collector would (on a copy; the WAL is left as is).
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["wal", "verify", "--wal-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "verify fails when records were lost");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!report["lost"].as_array().unwrap().is_empty(), "{report}");
    assert!(report["stats"]["lost_records"].as_u64().unwrap() > 0);
}

#[test]
fn quarantined_records_can_be_listed_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = record::encode(&Entry { received_at_ms: 1, client: "t", payload: &payload(2) });
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    {
        let log = SledLog::open(dir.path(), options()).unwrap();
        let good = record::encode(&Entry { received_at_ms: 1, client: "t", payload: &payload(1) });
        log.append(&[good, bad.clone()], &[]).unwrap();
        log.sync().unwrap();
        // Reading (as the flusher does) sets the corrupt record aside.
        let read = log.read(1, 2, 10, usize::MAX).unwrap();
        assert!(read[0].frame.is_some() && read[1].frame.is_none());
        assert_eq!(log.stats().quarantined, 1);
    }
    let export = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["wal", "quarantine", "--wal-dir"])
        .arg(dir.path())
        .arg("--export")
        .arg(export.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value =
        serde_json::from_slice(String::from_utf8_lossy(&out.stdout).lines().next().unwrap().as_bytes()).unwrap();
    assert_eq!(line["seq"], 2);
    assert!(line["error"].as_str().unwrap().contains("checksum"), "{line}");
    assert_eq!(std::fs::read(export.path().join("2.bin")).unwrap(), bad, "the stored bytes are exported as they were");
}
