//! WAL space over time: pushes records through the WAL as a flusher would (append, fsync,
//! acknowledge what is `--lag` records old) and reports disk use as it goes, to show that it is
//! bounded by the segment size, not by the total ever written (sled #1333 is the risk).
//!
//! cargo run --release --example wal_space -- --records 10000000 --segment-mib 64
//!
//! Prints CSV (`records,written_mib,live_mib,disk_mib`) every `--every` records, then a summary
//! line; exits 1 if disk use ever exceeded `--max-disk-mib`.

use std::path::Path;
use std::time::Instant;

use collector::wal::record::{self, Entry};
use collector::wal::{LogOptions, LogStore, SledLog};

struct Args {
    records: u64,
    segment_mib: u64,
    batch: u64,
    lag: u64,
    every: u64,
    max_disk_mib: Option<u64>,
    dir: Option<String>,
}

fn parse() -> Args {
    let mut a = Args {
        records: 1_000_000,
        segment_mib: 64,
        batch: 500,
        lag: 100_000,
        every: 250_000,
        max_disk_mib: None,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => a.records = value().parse().unwrap(),
            "--segment-mib" => a.segment_mib = value().parse().unwrap(),
            "--batch" => a.batch = value().parse().unwrap(),
            "--lag" => a.lag = value().parse().unwrap(),
            "--every" => a.every = value().parse().unwrap(),
            "--max-disk-mib" => a.max_disk_mib = Some(value().parse().unwrap()),
            "--dir" => a.dir = Some(value()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    // Allocated blocks, not the apparent length: sparse holes do not count.
                    Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let args = parse();
    let tmp = tempfile::tempdir().unwrap();
    let dir = args.dir.as_ref().map(Path::new).unwrap_or(tmp.path());
    let options =
        LogOptions { segment_bytes: args.segment_mib << 20, cache_bytes: 64 << 20, idempotency_window_ms: 60_000 };
    let log = SledLog::open(dir, options).unwrap();
    let payload = format!(
        r#"{{"events":[{{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0","pad":"{}"}}}}"#,
        "x".repeat(100)
    );
    let frame = record::encode(&Entry { received_at_ms: 0, client: "127.0.0.1:1", payload: payload.as_bytes() });
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let start = Instant::now();
    let (mut written, mut max_disk) = (0u64, 0u64);
    println!("records,written_mib,live_mib,disk_mib");
    while written < args.records {
        let n = args.batch.min(args.records - written);
        let frames = vec![frame.clone(); n as usize];
        let first = log.append(&frames, &[]).unwrap();
        log.sync().unwrap();
        written += n;
        let last = first + n - 1;
        if last > args.lag {
            log.ack_through(last - args.lag).unwrap();
        }
        if written % args.every < n || written == args.records {
            let disk = dir_bytes(dir);
            max_disk = max_disk.max(disk);
            println!(
                "{written},{:.1},{:.1},{:.1}",
                mib(written * frame.len() as u64),
                mib(log.live_bytes()),
                mib(disk)
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "# {} records ({:.0} MiB) in {secs:.1} s ({:.0} records/s); segment {} MiB; max disk {:.1} MiB = {:.2} x segment",
        written,
        mib(written * frame.len() as u64),
        written as f64 / secs,
        args.segment_mib,
        mib(max_disk),
        mib(max_disk) / args.segment_mib as f64
    );
    if let Some(limit) = args.max_disk_mib {
        if mib(max_disk) > limit as f64 {
            eprintln!("disk use {:.1} MiB exceeded the limit of {limit} MiB", mib(max_disk));
            std::process::exit(1);
        }
    }
}
