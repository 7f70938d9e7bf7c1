//! Short variant of `loadtest/backlog_restart.sh`: a WAL with a backlog of pending records, the
//! collector started on it, killed with SIGKILL while draining, started again; the backlog
//! arrives in `collect-topic1` exactly once. Start-up times are printed, not asserted (tests
//! assert outcomes; the script reports the 1 M-record figures).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore, SledLog};
use common::*;

const RECORDS: u64 = 50_000;

async fn pending(c: &Collector) -> u64 {
    c.status().await["wal"]["pending_records"].as_u64().unwrap()
}

/// Starts `serve` and measures until /readyz answers 200.
async fn start_ready(wal: &std::path::Path, args: &[String]) -> (Collector, Duration) {
    let t0 = Instant::now();
    let c = Collector::start("serve", wal, 0, args);
    while reqwest::get(c.url("/readyz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (c, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_survives_kill_9_mid_drain_and_arrives_exactly_once() {
    let brokers = brokers();
    let topics = Topics::new(&brokers);
    let wal = tempfile::tempdir().unwrap();
    {
        let log = SledLog::open(
            wal.path(),
            LogOptions { segment_bytes: 4 << 20, cache_bytes: 16 << 20, idempotency_window_ms: 60_000 },
        )
        .unwrap();
        for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(1000) {
            let frames: Vec<Vec<u8>> = chunk
                .iter()
                .map(|i| {
                    record::encode(&Entry {
                        received_at_ms: 1,
                        client: "fill",
                        payload: event_body(&format!("b{i}"), "u").as_bytes(),
                    })
                })
                .collect();
            log.append(&frames, &[]).unwrap();
        }
        log.sync().unwrap();
    }
    let mut args = topics.args("serve");
    args.extend(["--flush-batch-records".into(), "2000".into()]);

    let (c, first) = start_ready(wal.path(), &args).await;
    let before = pending(&c).await;
    assert_eq!(before, RECORDS);
    // Let it drain part of the backlog, then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&c).await > RECORDS * 3 / 4 {
        assert!(Instant::now() < deadline, "the backlog did not start draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill9();
    let (c, second) = start_ready(wal.path(), &args).await;
    let left = pending(&c).await;
    eprintln!("backlog of {RECORDS}: ready in {first:?}; after kill -9 with {left} pending: ready in {second:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while pending(&c).await > 0 {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: HashSet<String> = (0..RECORDS).map(|i| format!("b{i}")).collect();
    let (b, t) = (brokers.clone(), topics.raw.clone());
    let read = tokio::task::spawn_blocking(move || {
        assert_exactly_once(&b, &t, &all, Duration::from_secs(60), "backlog restart")
    })
    .await
    .unwrap();
    assert_eq!(read as u64, RECORDS);
}
