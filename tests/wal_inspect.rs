//! `collector wal stats|verify|quarantine` only look: they run on a copy of the WAL, so the WAL
//! an operator inspects is byte for byte what it was, and the reports still show what a
//! collector starting on it would find (positions, corrupt records, lost ranges — including a
//! loss only detected now).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore};
use common::{copy_dir, open_wal};

fn options() -> LogOptions {
    LogOptions { segment_bytes: 1 << 30, cache_bytes: 1 << 20, idempotency_window_ms: 60_000 }
}

fn frame(n: u64) -> Vec<u8> {
    record::encode(&Entry { received_at_ms: n, client: "t", payload: format!(r#"{{"n":{n}}}"#).as_bytes() })
}

/// Makes the sequence file claim that every record up to `last_durable` was made durable, as
/// it would after sled lost its tail: the next open finds the records above the newest one
/// sled still has missing. Returns the file's `reserved_through`.
fn claim_durable_through(dir: &Path, last_durable: u64) -> u64 {
    let path = dir.join("sequence");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..16].copy_from_slice(&last_durable.to_be_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

/// What the WAL built by [`interesting_wal`] holds.
struct Expected {
    /// A recorded lost range (from an earlier open) and one only detectable now.
    lost: Vec<(u64, u64)>,
    next_seq: u64,
}

/// A closed WAL with acknowledged records (1..=3), pending ones (4..=10, of which 4 is
/// corrupt and quarantined), a lost range recorded by an earlier open (11..=15), two records
/// written after that loss, and a loss that only the next open can detect.
fn interesting_wal(dir: &Path) -> Expected {
    {
        let log = open_wal(dir, options());
        let mut frames: Vec<Vec<u8>> = (1..=10).map(frame).collect();
        let last = frames[3].len() - 1;
        frames[3][last] ^= 0x01;
        assert_eq!(log.append(&frames, &[]).unwrap(), 1);
        log.sync().unwrap();
        // Reading (as the flusher does) quarantines record 4.
        assert!(log.read(1, 10, 100, usize::MAX).unwrap()[3].frame.is_none());
        log.ack_through(3).unwrap();
    }
    let reserved = claim_durable_through(dir, 15);
    let after_loss = reserved + 1;
    {
        // A collector's open records the loss of 11..=15 and continues above every reserved number.
        let log = open_wal(dir, options());
        assert_eq!(log.append(&[frame(11), frame(12)], &[]).unwrap(), after_loss);
        log.sync().unwrap();
    }
    let reserved = claim_durable_through(dir, after_loss + 4);
    Expected { lost: vec![(11, 15), (after_loss + 2, after_loss + 4)], next_seq: reserved + 1 }
}

/// Every file under `dir` (relative path → bytes), once sled's background thread has stopped
/// writing: it may still flush for a moment after the last handle is dropped.
fn settled_snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut last = snapshot(dir);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot(dir);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(name, Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs `collector wal <args> --wal-dir <dir>` with a private temporary directory, and checks
/// that the copy it inspected is gone afterwards.
fn collector_wal(dir: &Path, args: &[&str]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("wal")
        .args(args)
        .arg("--wal-dir")
        .arg(dir)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "`wal {args:?}` left its copy behind: {left:?}");
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

#[test]
fn inspecting_a_wal_changes_no_byte_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let expected = interesting_wal(dir.path());
    let before = settled_snapshot(dir.path());
    let export = tempfile::tempdir().unwrap();

    let stats = collector_wal(dir.path(), &["stats"]);
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let verify = collector_wal(dir.path(), &["verify"]);
    let quarantine = collector_wal(dir.path(), &["quarantine", "--export", export.path().to_str().unwrap()]);
    assert!(quarantine.status.success(), "{}", String::from_utf8_lossy(&quarantine.stderr));

    let after = snapshot(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "inspection added or removed files in the WAL directory"
    );
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "inspection changed {}", name.display());
    }

    // The reports still say what a collector starting now would find.
    let stats = json(&stats);
    assert_eq!(stats["delivered_through"], 3);
    assert_eq!(stats["next_seq"], expected.next_seq);
    assert_eq!(stats["quarantined"], 1);
    assert_eq!(stats["lost_records"], 5 + 3, "the recorded loss and the one detected now");
    assert_eq!(verify.status.code(), Some(1), "verify fails: a record is corrupt and some are lost");
    let verify = json(&verify);
    assert_eq!(verify["ok"], 6 + 2, "records 5..=10 and the two written after the first loss");
    assert_eq!(verify["corrupt"].as_array().unwrap().len(), 1);
    assert_eq!(verify["corrupt"][0][0], 4);
    assert_eq!(verify["lost"], serde_json::json!(expected.lost));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&quarantine.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["seq"], 4);
    assert!(export.path().join("4.bin").exists());
}

#[test]
fn inspection_reports_what_a_collector_starting_now_would_find() {
    let dir = tempfile::tempdir().unwrap();
    interesting_wal(dir.path());
    settled_snapshot(dir.path());
    let stats = json(&collector_wal(dir.path(), &["stats"]));
    let verify = json(&collector_wal(dir.path(), &["verify"]));

    // A collector's own open, on a copy.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let log = open_wal(copy.path(), options());
    let mut real = serde_json::to_value(log.stats()).unwrap();
    let report = serde_json::to_value(log.verify().unwrap()).unwrap();
    // sled's measure of its own files differs between two copies that were opened differently.
    real["disk_bytes"] = stats["disk_bytes"].clone();
    assert_eq!(stats, real);
    assert_eq!(
        (&verify["ok"], &verify["corrupt"], &verify["lost"]),
        (&report["ok"], &report["corrupt"], &report["lost"])
    );
}

#[test]
fn inspecting_a_directory_without_a_wal_fails_and_creates_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("no-wal-here");
    let out = collector_wal(&missing, &["stats"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no WAL at"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!missing.exists(), "inspection created the WAL directory");

    let empty = parent.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = collector_wal(&empty, &["verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no WAL at"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "inspection wrote into a directory without a WAL");
}

#[test]
fn a_wal_a_collector_is_running_on_is_refused_not_copied_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_wal(dir.path(), options());
    log.append(&[frame(1)], &[]).unwrap();
    log.sync().unwrap();
    // `log` holds sled's lock, as a running collector does.
    let out = collector_wal(dir.path(), &["stats"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    drop(log);
}
