//! Request parsing: simd-json against serde_json on the same bodies, then the full
//! parse + validate path ingest runs, and the transform. Bodies of 1, 10 and 100 events.
//!
//! `cargo bench --bench parse`; compare `parse/simd_json/N` with `parse/serde_json/N`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use collector::ingest::validate::{validate, EventLimits};
use collector::transform::Transformer;

/// The defaults of `collector run`.
const LIMITS: EventLimits =
    EventLimits { max_events: 1000, max_field_bytes: 4096, max_ctx_bytes: 16 * 1024, max_row_bytes: 4 << 20 };

fn body(events: usize) -> Vec<u8> {
    let event = r#"{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo","page":"/p/123?ref=home","extra":{"a":1,"b":[1,2,3]}}"#;
    let events = vec![event; events].join(",");
    format!(r#"{{"events":[{events}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0"}}}}"#)
        .into_bytes()
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for n in [1usize, 10, 100] {
        let input = body(n);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("simd_json", n), &input, |b, input| {
            let mut scratch = Vec::with_capacity(input.len());
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(input);
                black_box(simd_json::to_borrowed_value(&mut scratch).unwrap());
            })
        });
        group.bench_with_input(BenchmarkId::new("serde_json", n), &input, |b, input| {
            b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(input).unwrap()))
        });
    }
    group.finish();
}

fn parse_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_validate");
    for n in [1usize, 10, 100] {
        let input = body(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            let mut scratch = Vec::with_capacity(input.len());
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(input);
                black_box(validate(input, &mut scratch, &LIMITS).unwrap());
            })
        });
    }
    group.finish();
}

fn transform(c: &mut Criterion) {
    let mut group = c.benchmark_group("transform");
    for n in [1usize, 10, 100] {
        let input = body(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            let mut transformer = Transformer::default();
            let mut rows = Vec::with_capacity(n);
            b.iter(|| {
                rows.clear();
                black_box(transformer.transform(input, &mut rows).unwrap());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse, parse_validate, transform);
criterion_main!(benches);
