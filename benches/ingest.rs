//! The `/collect` handler's work between reading the body and the WAL, without HTTP: one group,
//! `ingest`, with bodies of 1 and 50 events (the load test's S1 and S2 bodies):
//!
//! - `json/N` — `decode_body` (plain) + `frame_request` (the handler's own function: validate a
//!   scratch copy, then `record::encode`).
//! - `gzip/N` — the same with a gzip body: `decode_body` gunzips first.
//! - `idempotency_fingerprint/N` — the SHA-256 fingerprint of the body that a request with an
//!   `Idempotency-Key` adds (`IdempotencyKey::new`); not paid without the header.
//!
//! `cargo bench --bench ingest`. Throughput is in events.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use collector::ingest::server::frame_request;
use collector::ingest::{decode_body, EventLimits};
use collector::wal::IdempotencyKey;

/// The defaults of `collector run`.
const LIMITS: EventLimits =
    EventLimits { max_events: 1000, max_field_bytes: 4096, max_ctx_bytes: 16 * 1024, max_row_bytes: 4 << 20 };
/// `--max-decompressed-bytes` default.
const MAX_DECOMPRESSED: usize = 900_000;

/// The load generator's body of `n` events (the README's sample event).
fn body(n: usize) -> Vec<u8> {
    let event =
        r#"{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}"#;
    let events = vec![event; n].join(",");
    format!(r#"{{"events":[{events}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0"}}}}"#)
        .into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    for n in [1usize, 50] {
        group.throughput(Throughput::Elements(n as u64));
        for (name, gz) in [("json", false), ("gzip", true)] {
            let plain = body(n);
            let wire = Bytes::from(if gz { gzip(&plain) } else { plain });
            group.bench_with_input(BenchmarkId::new(name, n), &wire, |b, wire| {
                b.iter(|| {
                    let raw = decode_body(wire.clone(), gz, MAX_DECOMPRESSED).expect("decode");
                    black_box(frame_request(&raw, &LIMITS, 1_750_867_000_000, "127.0.0.1:54321").expect("valid"))
                })
            });
        }
        let raw = body(n);
        group.bench_with_input(BenchmarkId::new("idempotency_fingerprint", n), &raw, |b, raw| {
            b.iter(|| black_box(IdempotencyKey::new(b"client:0123456789abcdef".to_vec(), b"key-1".to_vec(), raw)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = ingest
}
criterion_main!(benches);
