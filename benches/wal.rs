//! WAL append with group commit, through the real [`WalWriter`] over a [`SledLog`] in a
//! tempdir (so on the disk the tempdir is on: set `TMPDIR` to bench another one). One group,
//! `wal`; every id counts 64 records (1-event requests, the README's sample body, about 200
//! bytes framed) per iteration, so their throughputs compare directly:
//!
//! - `request/fsync` — per request: 64 tokio tasks on a multi-thread runtime, each appending
//!   one request's frame after the other through `WalWriter::append` (a closed loop, like 64
//!   connections); the writer thread groups whatever is waiting and fsyncs once per group.
//! - `group/fsync` — per group: `LogStore::append` of 64 frames, then `LogStore::sync`, on
//!   the bench's thread: the writer thread's work for one group of 64, without the channels.
//! - `request/no_fsync`, `group/no_fsync` — the same over a log whose `sync()` returns at
//!   once ([`NoSync`]): no `sled::Db::flush` and no sequence-file update, so nothing is made
//!   durable (sled's own background flush, every second, still runs). The engine's cost
//!   without the disk.
//! - `disk_floor/16KiB` — the floor: a plain `std::fs::File` append of 16 KiB (about one
//!   group of 64 records) + `sync_data` in the same tempdir. No WAL can commit a group faster.
//!
//! `cargo bench --bench wal`. Between timed stretches (never inside one), what was written is
//! acknowledged so sled drops whole segments, and the floor's file is truncated: live data
//! stays around 16 MiB per id whatever the disk's speed, and test mode (`cargo test
//! --benches`) writes one group per id.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use collector::wal::record::{self, Entry};
use collector::wal::{
    IdempotencyKey, KeyRecord, LogOptions, LogStore, ReadRecord, SledLog, WalError, WalHealth, WalStats, WalWriter,
};

/// Records per iteration: concurrent requests for `request/*`, frames per group for `group/*`.
const RECORDS: usize = 64;
/// Bytes the floor appends per iteration (about one group of `RECORDS` frames).
const FLOOR_BYTES: usize = 16 * 1024;
/// Acknowledge (and let sled drop segments) once this much is live.
const LIVE_LIMIT: u64 = 16 << 20;

fn frame() -> Vec<u8> {
    let body = br#"{"events":[{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}],"ctx":{"browser":"Firefox","device":"Desktop","version":"126.0"}}"#;
    record::encode(&Entry { received_at_ms: 1_750_867_000_000, client: "127.0.0.1:54321", payload: body })
}

fn open(dir: &Path) -> SledLog {
    // Small segments so acknowledging reclaims space often; the default cache.
    let options = LogOptions { segment_bytes: 4 << 20, cache_bytes: 64 << 20, idempotency_window_ms: 60_000 };
    SledLog::open(dir, options).expect("opening the WAL")
}

/// A log whose `sync()` does nothing: the "fsync off" variants. Everything else is the real
/// [`SledLog`].
struct NoSync(SledLog);

impl LogStore for NoSync {
    fn append(&self, frames: &[Vec<u8>], keys: &[(usize, IdempotencyKey)]) -> Result<u64, WalError> {
        self.0.append(frames, keys)
    }
    fn lookup_key(&self, scope: &[u8], key: &[u8]) -> Result<Option<KeyRecord>, WalError> {
        self.0.lookup_key(scope, key)
    }
    fn sync(&self) -> Result<(), WalError> {
        Ok(())
    }
    fn read(&self, from: u64, upto: u64, max_records: usize, max_bytes: usize) -> Result<Vec<ReadRecord>, WalError> {
        self.0.read(from, upto, max_records, max_bytes)
    }
    fn ack_through(&self, seq: u64) -> Result<(), WalError> {
        self.0.ack_through(seq)
    }
    fn set_aside(&self, seq: u64, reason: &str) -> Result<(), WalError> {
        self.0.set_aside(seq, reason)
    }
    fn stats(&self) -> WalStats {
        self.0.stats()
    }
    fn live_bytes(&self) -> u64 {
        self.0.live_bytes()
    }
    fn opened_next_seq(&self) -> u64 {
        self.0.opened_next_seq()
    }
}

fn open_log(dir: &Path, fsync: bool) -> Arc<dyn LogStore> {
    if fsync {
        Arc::new(open(dir))
    } else {
        Arc::new(NoSync(open(dir)))
    }
}

/// Untimed: acknowledges everything appended once `LIVE_LIMIT` is live, as the flusher would.
fn reclaim(log: &dyn LogStore) {
    if log.live_bytes() > LIVE_LIMIT {
        log.ack_through(log.stats().next_seq - 1).expect("acknowledging");
    }
}

/// How many iterations one timed stretch holds before `reclaim` runs.
const STRETCH: u64 = 64;

fn wal(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(RECORDS as u64));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let frame = frame();

    for fsync in [true, false] {
        let name = if fsync { "fsync" } else { "no_fsync" };

        let dir = tempfile::tempdir().expect("tempdir");
        let log = open_log(dir.path(), fsync);
        let writer = WalWriter::start(log.clone(), 1024, Arc::new(WalHealth::new(Duration::from_secs(30))));
        group.bench_function(BenchmarkId::new("request", name), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let rounds = left.min(STRETCH);
                    left -= rounds;
                    let start = Instant::now();
                    runtime.block_on(requests(&writer, &frame, rounds));
                    timed += start.elapsed();
                    reclaim(log.as_ref());
                }
                timed
            })
        });
        drop(writer);

        let dir = tempfile::tempdir().expect("tempdir");
        let log = open_log(dir.path(), fsync);
        let frames = vec![frame.clone(); RECORDS];
        group.bench_function(BenchmarkId::new("group", name), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    log.append(&frames, &[]).expect("append");
                    log.sync().expect("sync");
                    timed += start.elapsed();
                    if i % STRETCH == 0 {
                        reclaim(log.as_ref());
                    }
                }
                timed
            })
        });
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = OpenOptions::new().create(true).append(true).open(dir.path().join("floor")).expect("floor file");
    let block = vec![0x5a_u8; FLOOR_BYTES];
    group.bench_function(BenchmarkId::new("disk_floor", "16KiB"), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                file.write_all(&block).expect("append");
                file.sync_data().expect("sync_data");
                timed += start.elapsed();
                truncate_past(&file, LIVE_LIMIT);
            }
            timed
        })
    });
    group.finish();
}

/// 64 tasks, each appending `rounds` requests one after the other.
async fn requests(writer: &WalWriter, frame: &[u8], rounds: u64) {
    let tasks: Vec<_> = (0..RECORDS)
        .map(|_| {
            let (writer, frame) = (writer.clone(), frame.to_vec());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    writer.append(frame.clone(), None).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("append task");
    }
}

/// Untimed: starts the floor's file over once it holds `limit` bytes.
fn truncate_past(file: &File, limit: u64) {
    if file.metadata().expect("floor file metadata").len() >= limit {
        file.set_len(0).expect("truncating the floor file");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = wal
}
criterion_main!(benches);
