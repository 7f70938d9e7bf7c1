//! Short variant of `loadtest/wal_space.rs`: disk use stays bounded while many times its size
//! flows through the WAL, because delivered segments are dropped whole (the insert-then-remove
//! pattern that leaks space in sled, #1333, is never used).

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore, SledLog};

fn allocated_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                allocated_bytes(&e.path())
            } else {
                std::os::unix::fs::MetadataExt::blocks(&m) * 512
            }
        })
        .sum()
}

#[test]
fn disk_use_stays_bounded_while_ten_times_more_flows_through() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(
        dir.path(),
        LogOptions { segment_bytes: MIB, cache_bytes: 8 * MIB, idempotency_window_ms: 60_000 },
    )
    .unwrap();
    let frame = record::encode(&Entry { received_at_ms: 0, client: "c", payload: &[b'x'; 300] });
    let (mut written, mut max_disk) = (0u64, 0u64);
    // About 10 × 30 MiB through a WAL whose delivered part is acknowledged 5,000 records late.
    for round in 0..1000u64 {
        let first = log.append(&vec![frame.clone(); 300], &[]).unwrap();
        log.sync().unwrap();
        written += 300 * frame.len() as u64;
        let last = first + 299;
        if last > 5000 {
            log.ack_through(last - 5000).unwrap();
        }
        if round % 50 == 49 {
            max_disk = max_disk.max(allocated_bytes(dir.path()));
        }
    }
    eprintln!("written {} MiB, max disk {} MiB", written / MIB, max_disk / MIB);
    assert!(written > 80 * MIB);
    assert!(max_disk < written / 4, "disk use {} MiB grew with the {} MiB written", max_disk / MIB, written / MIB);
    assert!(log.stats().segments <= 4, "delivered segments are reclaimed");
}
