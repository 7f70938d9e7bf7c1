//! The flusher's batch building: WAL records as `LogStore::read` returns them turned into
//! raw-topic messages (`raw_messages`: decode each frame, checksum included, and build the
//! `OutMessage` with its four headers). One group, `flush`, with batches of 1,000 and 5,000
//! records of 1-event requests. Producing them is librdkafka's cost, not measured here.
//!
//! `cargo bench --bench flush`. Throughput is in records.

use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use collector::flush::raw_messages;
use collector::node::NodeId;
use collector::wal::record::{self, Entry};
use collector::wal::ReadRecord;

fn records(n: usize) -> Vec<ReadRecord> {
    let body = br#"{"events":[{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}],"ctx":{"browser":"Firefox","device":"Desktop","version":"126.0"}}"#;
    (1..=n as u64)
        .map(|seq| {
            let frame = record::encode(&Entry {
                received_at_ms: 1_750_867_000_000 + seq,
                client: "127.0.0.1:54321",
                payload: body,
            });
            ReadRecord { seq, frame: Some(Bytes::from(frame)) }
        })
        .collect()
}

fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("flush");
    let node = NodeId::parse("bench-node-0123abcd").expect("node id");
    for n in [1_000usize, 5_000] {
        let batch = records(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("raw_messages", n), &batch, |b, batch| {
            b.iter(|| black_box(raw_messages(batch, "collect-topic1", &node)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = flush
}
criterion_main!(benches);
