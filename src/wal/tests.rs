//! Tests of the sled log and the group-commit writer.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use super::record::{self, Entry};
use super::*;

fn frame(n: u64) -> Vec<u8> {
    let payload = format!(r#"{{"n":{n}}}"#);
    record::encode(&Entry { received_at_ms: n, client: "test", payload: payload.as_bytes() })
}

fn payload_of(r: &ReadRecord) -> String {
    let frame = r.frame.as_ref().expect("record should be readable");
    String::from_utf8(record::decode(frame).unwrap().payload.to_vec()).unwrap()
}

fn open(dir: &std::path::Path, segment_bytes: u64) -> SledLog {
    // sled releases its file lock from a background thread shortly after the last handle is
    // dropped, so an immediate in-process reopen can find it still held.
    for _ in 0..200 {
        match SledLog::open(dir, LogOptions { segment_bytes, cache_bytes: 8 << 20, idempotency_window_ms: 60_000 }) {
            Ok(log) => return log,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the WAL lock was never released");
}

#[test]
fn append_read_ack_and_reopen_resume_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 1 << 20);
        assert_eq!(log.append(&[frame(1), frame(2), frame(3)], &[]).unwrap(), 1);
        log.sync().unwrap();
        let read = log.read(1, 3, 10, usize::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(payload_of(&read[1]), r#"{"n":2}"#);
        log.ack_through(2).unwrap();
        assert_eq!(log.stats().pending_records, 1);
    }
    let log = open(dir.path(), 1 << 20);
    let stats = log.stats();
    assert_eq!((stats.next_seq, stats.delivered_through, stats.pending_records), (4, 2, 1));
    assert_eq!(log.append(&[frame(4)], &[]).unwrap(), 4, "sequence numbers continue after a reopen");
    let read = log.read(stats.delivered_through + 1, 10, 10, usize::MAX).unwrap();
    assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
}

#[test]
fn reads_respect_the_bounds_and_the_batch_limits() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 1 << 20);
    log.append(&(1..=10).map(frame).collect::<Vec<_>>(), &[]).unwrap();
    assert_eq!(log.read(3, 5, 100, usize::MAX).unwrap().len(), 3);
    assert_eq!(log.read(3, 10, 4, usize::MAX).unwrap().len(), 4);
    assert_eq!(log.read(3, 10, 100, 1).unwrap().len(), 1, "at least one record even if it exceeds max_bytes");
    assert!(log.read(11, 10, 100, usize::MAX).unwrap().is_empty());
}

#[test]
fn delivered_segments_are_dropped_whole_and_reads_cross_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny segments: every append call rolls to a new tree once the previous one has any bytes.
    let log = open(dir.path(), 1);
    for n in 1..=5 {
        log.append(&[frame(n)], &[]).unwrap();
    }
    assert_eq!(log.stats().segments, 5);
    let all = log.read(1, 5, 100, usize::MAX).unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    log.ack_through(3).unwrap();
    assert_eq!(log.stats().segments, 2, "segments 1..=3 are reclaimed, 4 and the active 5 stay");
    let rest = log.read(4, 5, 100, usize::MAX).unwrap();
    assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
    log.ack_through(5).unwrap();
    assert_eq!(log.stats().segments, 1, "the active segment is never dropped");
    drop(log);
    let log = open(dir.path(), 1);
    assert_eq!(log.stats().pending_records, 0);
    assert_eq!(log.stats().next_seq, 6);
}

#[test]
fn a_corrupt_record_is_quarantined_and_the_rest_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 1 << 20);
    let mut bad = frame(2);
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    log.append(&[frame(1), bad, frame(3)], &[]).unwrap();
    let report = log.verify().unwrap();
    assert_eq!(report.ok, 2);
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].0, 2);
    let read = log.read(1, 3, 10, usize::MAX).unwrap();
    assert_eq!(
        read.iter().map(|r| (r.seq, r.frame.is_some())).collect::<Vec<_>>(),
        vec![(1, true), (2, false), (3, true)]
    );
    assert_eq!(log.stats().quarantined, 1);
    let q = log.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].seq, 2);
}

#[test]
fn a_record_set_aside_is_never_read_again_and_keeps_its_bytes_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 1 << 20);
        log.append(&[frame(1), frame(2), frame(3)], &[]).unwrap();
        log.sync().unwrap();
        log.set_aside(2, "Kafka refuses it: too large").unwrap();
        let read = log.read(1, 3, 10, usize::MAX).unwrap();
        assert_eq!(
            read.iter().map(|r| (r.seq, r.frame.is_some())).collect::<Vec<_>>(),
            [(1, true), (2, false), (3, true)]
        );
    }
    let log = open(dir.path(), 1 << 20);
    let read = log.read(1, 3, 10, usize::MAX).unwrap();
    assert_eq!(read.iter().map(|r| r.frame.is_some()).collect::<Vec<_>>(), [true, false, true], "also after a reopen");
    let q = log.quarantined().unwrap();
    assert_eq!(
        (q[0].seq, q[0].bytes.clone(), q[0].set_aside.as_deref()),
        (2, frame(2), Some("Kafka refuses it: too large"))
    );
    assert_eq!(log.stats().quarantined, 1);
}

/// A real log with a disk's troubles on demand: each fsync is counted and slow (as on a real
/// disk); appends can be made to fail (as on a full disk) or to block (a stalled one).
#[derive(Default)]
struct ScriptedDisk {
    syncs: AtomicUsize,
    /// Appends that reached the log.
    appends: AtomicUsize,
    /// The next append fails with this storage error.
    fail_next_append: std::sync::Mutex<Option<String>>,
    /// Each append first sleeps this long.
    append_delay_ms: AtomicU64,
}

struct ScriptedLog {
    inner: SledLog,
    disk: ScriptedDisk,
}

impl LogStore for ScriptedLog {
    fn append(&self, frames: &[Vec<u8>], keys: &[(usize, IdempotencyKey)]) -> Result<u64, WalError> {
        self.disk.appends.fetch_add(1, SeqCst);
        std::thread::sleep(Duration::from_millis(self.disk.append_delay_ms.load(SeqCst)));
        if let Some(reason) = self.disk.fail_next_append.lock().unwrap().take() {
            return Err(WalError::Storage(reason));
        }
        self.inner.append(frames, keys)
    }
    fn lookup_key(&self, scope: &[u8], key: &[u8]) -> Result<Option<KeyRecord>, WalError> {
        self.inner.lookup_key(scope, key)
    }
    fn sync(&self) -> Result<(), WalError> {
        self.disk.syncs.fetch_add(1, SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        self.inner.sync()
    }
    fn read(&self, from: u64, upto: u64, max_records: usize, max_bytes: usize) -> Result<Vec<ReadRecord>, WalError> {
        self.inner.read(from, upto, max_records, max_bytes)
    }
    fn set_aside(&self, seq: u64, reason: &str) -> Result<(), WalError> {
        self.inner.set_aside(seq, reason)
    }
    fn ack_through(&self, seq: u64) -> Result<(), WalError> {
        self.inner.ack_through(seq)
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

/// A writer over a scripted log behind the fault guard, with this append deadline.
fn guarded_writer(dir: &std::path::Path, deadline: Duration) -> (WalWriter, Arc<ScriptedLog>, Arc<WalHealth>) {
    let scripted = Arc::new(ScriptedLog { inner: open(dir, 1 << 20), disk: ScriptedDisk::default() });
    let health = Arc::new(WalHealth::new(deadline));
    let guarded: Arc<dyn LogStore> = Arc::new(GuardedLog::new(scripted.clone(), health.clone()));
    (WalWriter::start(guarded, 64, health.clone()), scripted, health)
}

fn health() -> Arc<WalHealth> {
    Arc::new(WalHealth::new(Duration::from_secs(30)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_and_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let counting = Arc::new(ScriptedLog { inner: open(dir.path(), 1 << 20), disk: ScriptedDisk::default() });
    let log: Arc<dyn LogStore> = counting.clone();
    let writer = WalWriter::start(log.clone(), 64, health());
    let tasks: Vec<_> = (0..200u64)
        .map(|n| {
            let w = writer.clone();
            tokio::spawn(async move {
                match w.append(frame(n), None).await.unwrap() {
                    Appended::Stored(seq) => seq,
                    other => panic!("unexpected {other:?}"),
                }
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "every append gets a distinct consecutive sequence number");
    assert_eq!(*writer.durable().borrow(), 200);
    assert_eq!(log.read(1, 200, 1000, usize::MAX).unwrap().len(), 200);
    let syncs = counting.disk.syncs.load(SeqCst);
    assert!(syncs < 200, "200 concurrent appends took {syncs} fsyncs; group commit should share them");
}

/// An anonymous key (the empty scope) with a given fingerprint.
fn key(k: &str, fingerprint: u128) -> Option<IdempotencyKey> {
    scoped("", k, fingerprint)
}

fn scoped(scope: &str, k: &str, fingerprint: u128) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        scope: scope.as_bytes().to_vec(),
        key: k.as_bytes().to_vec(),
        fingerprint: Fingerprint(fingerprint),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_stores_once_even_when_retries_race() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn LogStore> = Arc::new(open(dir.path(), 1 << 20));
    let writer = WalWriter::start(log.clone(), 64, health());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let w = writer.clone();
            tokio::spawn(async move { w.append(frame(7), key("k-1", 42)).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let stored: Vec<u64> =
        outcomes.iter().filter_map(|o| if let Appended::Stored(s) = o { Some(*s) } else { None }).collect();
    assert_eq!(stored.len(), 1, "exactly one of the racing retries is stored: {outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, Appended::Stored(s) | Appended::Duplicate(s) if *s == stored[0])));
    assert_eq!(log.stats().next_seq, 2);

    assert_eq!(writer.append(frame(8), key("k-1", 43)).await.unwrap(), Appended::KeyReused);
    assert_eq!(writer.append(frame(8), key("k-2", 43)).await.unwrap(), Appended::Stored(2));
    assert_eq!(writer.append(frame(9), None).await.unwrap(), Appended::Stored(3));
}

#[test]
fn idempotency_keys_survive_a_reopen_and_expire_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), 1 << 20);
        log.append(&[frame(1), frame(2)], &[(1, key("abc", 9).unwrap())]).unwrap();
        log.sync().unwrap();
    }
    let log = open(dir.path(), 1 << 20);
    assert_eq!(log.lookup_key(b"", b"abc").unwrap(), Some(KeyRecord { seq: 2, fingerprint: Fingerprint(9) }));
    assert_eq!(log.lookup_key(b"", b"nope").unwrap(), None);
    assert_eq!(log.lookup_key(b"client:a", b"abc").unwrap(), None, "another scope's key is never seen");
    drop(log);
    // A 1 ms window: by the time we look, the key is out of it.
    let log = SledLog::open(
        dir.path(),
        LogOptions { segment_bytes: 1 << 20, cache_bytes: 1 << 20, idempotency_window_ms: 1 },
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(log.lookup_key(b"", b"abc").unwrap(), None);
}

#[test]
fn live_bytes_follow_appends_and_reclamation_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let size = frame(1).len() as u64;
    {
        // Segments of one record each (they roll once they hold any bytes).
        let log = open(dir.path(), 1);
        for n in 1..=4 {
            log.append(&[frame(n)], &[]).unwrap();
        }
        assert_eq!(log.live_bytes(), 4 * size);
        log.ack_through(2).unwrap();
        assert_eq!(log.live_bytes(), 2 * size, "two delivered segments reclaimed");
        log.sync().unwrap();
    }
    let log = open(dir.path(), 1);
    assert_eq!(log.live_bytes(), 2 * size, "sizes are known again after a reopen");
    assert_eq!(log.stats().live_bytes, 2 * size);
    log.ack_through(4).unwrap();
    assert_eq!(log.live_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_error_fails_the_wal_and_nothing_touches_the_disk_again() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, scripted, health) = guarded_writer(dir.path(), Duration::from_secs(30));
    assert!(matches!(writer.append(frame(1), None).await, Ok(Appended::Stored(1))));
    *scripted.disk.fail_next_append.lock().unwrap() = Some("No space left on device (os error 28)".into());
    let failed = writer.append(frame(2), None).await;
    assert!(matches!(&failed, Err(WalError::Storage(_))), "{failed:?}");
    assert_eq!(health.failure(), Some("No space left on device (os error 28)"));
    assert_eq!(*writer.durable().borrow(), 1, "the failed group is never published as durable");

    // Refused at once, without another call into the (possibly hanging) engine.
    let appends = scripted.disk.appends.load(SeqCst);
    let later = writer.append(frame(3), None).await;
    assert!(matches!(&later, Err(WalError::Unavailable(_))), "{later:?}");
    assert!(later.as_ref().unwrap_err().is_retryable(), "clients are told to retry");
    assert_eq!(scripted.disk.appends.load(SeqCst), appends, "the failed log was not written again");
    let guarded = GuardedLog::new(scripted.clone(), health.clone());
    assert!(matches!(guarded.read(1, 1, 10, usize::MAX), Err(WalError::Unavailable(_))));
    assert!(matches!(guarded.ack_through(1), Err(WalError::Unavailable(_))));
    assert!(matches!(guarded.sync(), Err(WalError::Unavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_answers_at_the_deadline_and_is_reported_until_the_commit_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, scripted, health) = guarded_writer(dir.path(), Duration::from_millis(200));
    scripted.disk.append_delay_ms.store(1500, SeqCst);
    let stalled = writer.append(frame(1), None).await;
    assert!(matches!(stalled, Err(WalError::TimedOut(200))), "{stalled:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(health.fault(), Some(WalFault::Stalled(_))), "{:?}", health.fault());

    // The commit finishes after all: the disk was slow, not broken.
    scripted.disk.append_delay_ms.store(0, SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while health.fault().is_some() {
        assert!(std::time::Instant::now() < deadline, "the stall was never cleared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(health.failure().is_none(), "slow is not failed");
    assert!(matches!(writer.append(frame(2), None).await, Ok(Appended::Stored(2))));
}

fn open_with_window(dir: &std::path::Path, window_ms: u64, mode: RecoveryMode) -> SledLog {
    let options = LogOptions { segment_bytes: 1 << 20, cache_bytes: 8 << 20, idempotency_window_ms: window_ms };
    for _ in 0..200 {
        match SledLog::open_with(dir, options.clone(), mode) {
            Ok(log) => return log,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the WAL lock was never released");
}

/// Polls `done` every 10 ms for up to 5 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_in_two_scopes_never_meets() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn LogStore> = Arc::new(open(dir.path(), 1 << 20));
    let writer = WalWriter::start(log.clone(), 64, health());
    assert_eq!(writer.append(frame(1), scoped("client:a", "k", 1)).await.unwrap(), Appended::Stored(1));
    // Another client's same key, with another body: not a reuse, its own record.
    assert_eq!(writer.append(frame(2), scoped("client:b", "k", 2)).await.unwrap(), Appended::Stored(2));
    // Nor with the first client's very body: never answered with another client's record.
    assert_eq!(writer.append(frame(1), scoped("client:c", "k", 1)).await.unwrap(), Appended::Stored(3));
    assert_eq!(writer.append(frame(1), key("k", 1)).await.unwrap(), Appended::Stored(4), "anonymous is a scope too");
    assert_eq!(writer.append(frame(2), scoped("client:b", "k", 2)).await.unwrap(), Appended::Duplicate(2));
    // The scope's length is stored with it: ("client:a", "bc") is not ("client:ab", "c").
    assert_eq!(writer.append(frame(5), scoped("client:a", "bc", 5)).await.unwrap(), Appended::Stored(5));
    assert_eq!(writer.append(frame(6), scoped("client:ab", "c", 6)).await.unwrap(), Appended::Stored(6));
    let seq = |scope: &str, k: &str| log.lookup_key(scope.as_bytes(), k.as_bytes()).unwrap().map(|r| r.seq);
    assert_eq!(
        [seq("client:a", "k"), seq("client:b", "k"), seq("client:c", "k"), seq("", "k"), seq("client:d", "k")],
        [Some(1), Some(2), Some(3), Some(4), None]
    );
    assert_eq!((seq("client:a", "bc"), seq("client:ab", "c")), (Some(5), Some(6)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_that_differs_in_any_of_its_128_bits_is_a_reused_key() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn LogStore> = Arc::new(open(dir.path(), 1 << 20));
    let writer = WalWriter::start(log.clone(), 64, health());
    let fp = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
    assert_eq!(writer.append(frame(1), key("k", fp)).await.unwrap(), Appended::Stored(1));
    // The low 64 bits equal: what a 64-bit fingerprint would have compared.
    assert_eq!(writer.append(frame(2), key("k", fp ^ (1 << 127))).await.unwrap(), Appended::KeyReused);
    assert_eq!(writer.append(frame(2), key("k", fp ^ 1)).await.unwrap(), Appended::KeyReused);
    assert_eq!(writer.append(frame(1), key("k", fp)).await.unwrap(), Appended::Duplicate(1));
    assert_eq!(log.stats().next_seq, 2, "nothing but the first was stored");
}

/// Issue 7: with a CRC-32 body fingerprint, a body made to share the stored body's CRC was
/// answered "duplicate" under its key while nothing of it was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_with_the_same_crc32_as_the_stored_one_is_not_a_duplicate() {
    // Two bodies with one CRC-32, found by the birthday bound (about 80,000 tries). The bodies
    // differ in 64 pseudo-random bits: a CRC is linear, so bodies that differ in fewer bits
    // (say, consecutive numbers) may never collide.
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u64..)
        .find_map(|n| {
            let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ n;
            let body = format!(r#"{{"n":"{mixed:016x}"}}"#).into_bytes();
            seen.insert(crc32fast::hash(&body), body.clone())
                .filter(|earlier| *earlier != body)
                .map(|earlier| (earlier, body))
        })
        .unwrap();
    assert_eq!(crc32fast::hash(&a), crc32fast::hash(&b));
    assert_ne!(Fingerprint::of(&a), Fingerprint::of(&b));

    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn LogStore> = Arc::new(open(dir.path(), 1 << 20));
    let writer = WalWriter::start(log.clone(), 64, health());
    let with = |body: &[u8]| Some(IdempotencyKey::new(Vec::new(), b"victim-key".to_vec(), body));
    assert_eq!(writer.append(frame(1), with(&a)).await.unwrap(), Appended::Stored(1));
    assert_eq!(writer.append(frame(2), with(&b)).await.unwrap(), Appended::KeyReused);
    assert_eq!(writer.append(frame(1), with(&a)).await.unwrap(), Appended::Duplicate(1));
}

#[test]
fn idempotency_keys_count_in_the_quota_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let frames_bytes = 10 * frame(0).len() as u64;
    // One key's share: scope length (4) + key ("key-N", 5) + value (32) + sled's per entry.
    let per_key = 4 + 5 + 32 + idempotency::ENTRY_OVERHEAD_BYTES;
    {
        let log = open(dir.path(), 1 << 20);
        let keys: Vec<_> = (0..10).map(|i| (i, key(&format!("key-{i}"), i as u128).unwrap())).collect();
        log.append(&(0..10).map(frame).collect::<Vec<_>>(), &keys).unwrap();
        log.sync().unwrap();
        assert_eq!(log.stats().idempotency_bytes, 10 * per_key);
        assert_eq!(log.live_bytes(), frames_bytes + 10 * per_key, "more than the frames alone");
        assert_eq!(log.stats().live_bytes, log.live_bytes());
        // Delivering the records does not free their keys: they are remembered for the window.
        log.append(&[frame(10)], &[]).unwrap();
        log.ack_through(11).unwrap();
        assert_eq!(log.stats().idempotency_bytes, 10 * per_key);
        log.sync().unwrap();
    }
    let log = open(dir.path(), 1 << 20);
    assert_eq!(log.stats().idempotency_bytes, 10 * per_key, "the count is read back at open");
}

#[test]
fn expired_buckets_are_dropped_without_an_append_and_leave_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    // A 300 ms window: the bucket is dropped between 600 and 675 ms after the append.
    let log = open_with_window(dir.path(), 300, RecoveryMode::Repair);
    log.append(&[frame(1), frame(2)], &[(0, key("a", 1).unwrap()), (1, key("b", 2).unwrap())]).unwrap();
    let (live, buckets) = (log.live_bytes(), log.idempotency_buckets());
    let frames_bytes = 2 * frame(1).len() as u64;
    assert!(live > frames_bytes);
    assert_eq!(buckets.len(), 1);
    // No append from here on: only the expiry thread can drop the bucket.
    eventually("the expired bucket was dropped", || log.idempotency_buckets().is_empty());
    assert_eq!(log.stats().idempotency_bytes, 0);
    assert_eq!(log.live_bytes(), frames_bytes, "the keys' bytes left the quota with their bucket");
    drop(log);
    let log = open_with_window(dir.path(), 300, RecoveryMode::ReportOnly);
    assert!(log.idempotency_buckets().is_empty(), "dropped for good");
    assert_eq!(log.stats().idempotency_bytes, 0);
}

#[test]
fn an_expired_bucket_not_yet_dropped_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_with_window(dir.path(), 60_000, RecoveryMode::Repair);
        log.append(&[frame(1)], &[(0, key("k", 1).unwrap())]).unwrap();
        log.sync().unwrap();
    }
    // Inspection runs no expiry thread, so the bucket stays; with a 1 ms window it is stale.
    let log = open_with_window(dir.path(), 1, RecoveryMode::ReportOnly);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(log.idempotency_buckets().len(), 1, "the bucket is still there");
    assert_eq!(log.lookup_key(b"", b"k").unwrap(), None);
    assert!(log.stats().idempotency_bytes > 0, "and still counted until it is dropped");
}

#[test]
fn the_expiry_thread_stops_with_the_log_and_releases_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let log = open_with_window(dir.path(), 20, RecoveryMode::Repair);
        log.append(&[frame(1)], &[(0, key("k", 1).unwrap())]).unwrap();
        log.sync().unwrap();
        drop(log);
        // Were the thread still running, it would hold sled open, and with it its lock.
        let options = sled::Config::new().path(dir.path().join(keys::SLED_DIR));
        eventually("sled's lock was released", || options.open().is_ok());
    }
}

/// Entries written before scopes and 128-bit fingerprints: `seq | CRC-32 | stored_at_ms`, 24
/// bytes, under the bare key, in a bucket without a byte count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_the_older_format_are_counted_but_never_answer() {
    // A window so long that every key of this test falls into bucket 0.
    const WINDOW_MS: u64 = 1 << 62;
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_with_window(dir.path(), WINDOW_MS, RecoveryMode::Repair);
        log.append(&[frame(1)], &[]).unwrap();
        log.sync().unwrap();
    }
    let old_value = [1u64, u64::from(crc32fast::hash(&frame(1))), crate::now_ms()]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect::<Vec<u8>>();
    let sled_dir = dir.path().join(keys::SLED_DIR);
    let mut db = None;
    eventually("sled opened", || {
        db = sled::Config::new().path(&sled_dir).open().ok();
        db.is_some()
    });
    let db = db.unwrap();
    let bucket = db.open_tree(keys::bucket_name(0)).unwrap();
    bucket.insert(b"old-key", old_value.as_slice()).unwrap();
    // An old value under a key of the new format too, as if it could happen.
    bucket.insert(keys::scoped_key(b"", b"odd-key"), old_value.as_slice()).unwrap();
    db.flush().unwrap();
    drop((bucket, db));

    let log: Arc<dyn LogStore> = Arc::new(open_with_window(dir.path(), WINDOW_MS, RecoveryMode::Repair));
    let expected = (7 + 24 + idempotency::ENTRY_OVERHEAD_BYTES) + (4 + 7 + 24 + idempotency::ENTRY_OVERHEAD_BYTES);
    assert_eq!(log.stats().idempotency_bytes, expected, "scanned at open and counted in the quota");
    assert_eq!(log.lookup_key(b"", b"old-key").unwrap(), None);
    assert_eq!(log.lookup_key(b"", b"odd-key").unwrap(), None);
    let writer = WalWriter::start(log.clone(), 8, health());
    // The same body as the old entry's CRC says: stored, not answered "duplicate" on a CRC-32.
    assert_eq!(writer.append(frame(1), key("old-key", 7)).await.unwrap(), Appended::Stored(2));
    assert_eq!(writer.append(frame(1), key("odd-key", 7)).await.unwrap(), Appended::Stored(3));
    assert_eq!(writer.append(frame(1), key("odd-key", 7)).await.unwrap(), Appended::Duplicate(3));
    let per_key = 4 + 7 + 32 + idempotency::ENTRY_OVERHEAD_BYTES;
    // "odd-key" replaced the old entry under the same stored key.
    assert_eq!(log.stats().idempotency_bytes, expected + per_key + (32 - 24));
}
