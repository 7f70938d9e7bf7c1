//! Fills a WAL directory with pending records (valid one-event requests, event ids
//! `fill-<n>`), as if Kafka had been away while they were accepted. Used by
//! `loadtest/backlog_restart.sh`.
//!
//! cargo run --release --example wal_fill -- --dir /tmp/wal --records 1000000

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore, SledLog};

fn main() {
    let (mut dir, mut records) = (None, 1_000_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--dir" => dir = args.next(),
            "--records" => records = args.next().expect("--records needs a value").parse().expect("a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = dir.expect("--dir is required");
    let log = SledLog::open(
        std::path::Path::new(&dir),
        LogOptions { segment_bytes: 64 << 20, cache_bytes: 64 << 20, idempotency_window_ms: 86_400_000 },
    )
    .unwrap();
    let start = std::time::Instant::now();
    let mut n = 0;
    while n < records {
        let frames: Vec<Vec<u8>> = (n..(n + 1000).min(records))
            .map(|i| {
                let body = format!(
                    r#"{{"events":[{{"event_type":"fill-{i}","event_time":1750867000000,"user_id":"u{}"}}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0"}}}}"#,
                    i % 1000
                );
                record::encode(&Entry { received_at_ms: collector::now_ms(), client: "wal_fill", payload: body.as_bytes() })
            })
            .collect();
        n += frames.len() as u64;
        log.append(&frames, &[]).unwrap();
    }
    log.sync().unwrap();
    let stats = log.stats();
    eprintln!(
        "wal_fill: {} pending records in {dir} ({:.1} MiB) in {:.1} s",
        stats.pending_records,
        stats.live_bytes as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
}
