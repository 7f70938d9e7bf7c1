//! `disk`: the disk's own durability latency, the yardstick of S3.
//!
//! Appends a fixed-size block to a fresh file in `--dir` and calls `fdatasync`
//! (`File::sync_data`) after each append, as a WAL's group commit must, and records each
//! append + sync in an HDR histogram. Put `--dir` on the WAL's filesystem: the collector's
//! acknowledged latency cannot be below what this measures, so S3 reads its p99 against it.
//! The file is removed at the end.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::Percentiles;

#[derive(clap::Args)]
pub struct DiskArgs {
    /// Directory to write the probe file in (on the filesystem under test).
    #[arg(long)]
    dir: PathBuf,
    /// Bytes per append.
    #[arg(long, default_value_t = 16 * 1024)]
    block_bytes: usize,
    /// Run this long, in seconds...
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// ...or this many appends, whichever comes first.
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The result, as `--json` writes it and `table` reads it.
#[derive(Serialize, Deserialize)]
pub struct DiskSummary {
    /// Always `"disk"`: tells this file from a run summary.
    pub kind: String,
    pub dir: String,
    pub block_bytes: usize,
    pub iterations: u64,
    pub elapsed_s: f64,
    /// Latency of one append + `fdatasync`.
    pub latency_ms: Percentiles,
    pub started_at_ms: u64,
}

pub fn main(args: DiskArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.block_bytes > 0, "--block-bytes must be at least 1");
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let path = args.dir.join(format!(".loadgen-disk-{}-{stamp}", std::process::id()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let result = probe(&mut file, &args);
    let _ = std::fs::remove_file(&path);
    let hist = result.with_context(|| format!("appending to {}", path.display()))?;
    let summary = DiskSummary {
        kind: "disk".into(),
        dir: args.dir.display().to_string(),
        block_bytes: args.block_bytes,
        iterations: hist.0.len(),
        elapsed_s: hist.1.as_secs_f64(),
        latency_ms: Percentiles::of(&hist.0),
        started_at_ms: stamp,
    };
    let l = &summary.latency_ms;
    eprintln!(
        "disk: {} appends of {} bytes + fdatasync in {:.1} s ({}): latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        summary.iterations,
        summary.block_bytes,
        summary.elapsed_s,
        summary.dir,
        l.p50,
        l.p90,
        l.p99,
        l.p99_9,
        l.max
    );
    if let Some(out) = &args.json {
        std::fs::write(out, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The appends: the histogram of their latencies (µs) and how long they took in all.
fn probe(file: &mut std::fs::File, args: &DiskArgs) -> std::io::Result<(Histogram<u64>, Duration)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid");
    // Not all zeros, so no filesystem can treat the block as a hole.
    let block: Vec<u8> = (0..args.block_bytes).map(|i| (i % 251) as u8).collect();
    let budget = Duration::from_secs_f64(args.seconds.max(0.0));
    let start = Instant::now();
    for _ in 0..args.iterations {
        if start.elapsed() >= budget {
            break;
        }
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        hist.saturating_record((t.elapsed().as_micros() as u64).max(1));
    }
    Ok((hist, start.elapsed()))
}
