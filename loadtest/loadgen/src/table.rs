//! `table`: the scenario runner's one table, from the measurements' JSON files.
//!
//! A row is `LABEL|FILE[|key=value…]`. `FILE` is what was measured: a run summary
//! (`run --json`), a disk probe (`disk --json`, `"kind": "disk"`) or a Kafka copy measurement
//! (the `transform_floor` example's `--json`, `"kind": "pipe"`). The options compare it:
//! - `floor=FILE`: the same measurement of the floor, same run; gives the `× floor` column;
//! - `min=X`: the target `≥ X × floor`;
//! - `verify=FILE`: a `verify` result (every acknowledged event in the rows topic once);
//! - `disk=FILE`: a disk probe; the target `p99 ≤ 4 × the disk's p99` (S3);
//! - `soak=FILE`: a `soak` verdict (S4).
//!
//! The `target` column says, per row, which target applies and whether it was met.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::disk::DiskSummary;
use crate::report::Summary;
use crate::soak::SoakVerdict;

/// S3: the collector's p99 may be this many times the disk's append + fdatasync p99.
pub const DISK_P99_FACTOR: f64 = 4.0;

#[derive(clap::Args)]
pub struct TableArgs {
    /// A row: `LABEL|FILE[|floor=FILE][|min=X][|verify=FILE][|disk=FILE][|soak=FILE]`.
    #[arg(long = "row", required = true)]
    rows: Vec<String>,
    /// Also write the table (markdown, with the notes) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A line printed under the table (repeatable).
    #[arg(long)]
    note: Vec<String>,
}

/// A Kafka-to-Kafka copy measured by the `transform_floor` example: the transform worker, or
/// the plain consume + produce it is compared with.
#[derive(Deserialize)]
struct Pipe {
    /// Raw messages read.
    messages: u64,
    /// Messages written (rows, for the transform).
    rows: u64,
    elapsed_s: f64,
    msgs_per_s: f64,
    rows_per_s: f64,
    mb_per_s: f64,
}

/// What a row's `FILE` held.
enum Measured {
    Run(Box<Summary>),
    Disk(DiskSummary),
    Pipe(Pipe),
}

impl Measured {
    /// The figure ratios are taken of: req/s, or raw messages/s.
    fn rate(&self) -> f64 {
        match self {
            Measured::Run(r) => r.req_per_s,
            Measured::Disk(d) => d.iterations as f64 / d.elapsed_s.max(1e-9),
            Measured::Pipe(p) => p.msgs_per_s,
        }
    }
}

pub fn main(args: TableArgs) -> anyhow::Result<()> {
    let mut t = String::from(
        "| scenario | req/s | × floor | events/s | MB/s | p50 ms | p99 ms | p99.9 ms | errors | generator CPU | all in topic2 after | target |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for row in &args.rows {
        let _ = writeln!(t, "{}", render(row)?);
    }
    for n in &args.note {
        let _ = write!(t, "\n{n}\n");
    }
    println!("{t}");
    if let Some(out) = &args.out {
        std::fs::write(out, &t).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn render(row: &str) -> anyhow::Result<String> {
    let f: Vec<&str> = row.split('|').collect();
    anyhow::ensure!(f.len() >= 2, "a row is LABEL|FILE[|key=value…]: {row}");
    let measured = measured(Path::new(f[1]))?;
    let mut floor = None;
    let mut min = None;
    let mut verified = "–".to_string();
    let mut targets = Vec::new();
    for opt in &f[2..] {
        let Some((key, value)) = opt.split_once('=') else {
            anyhow::bail!("a row option is key=value: {opt} in {row}");
        };
        match key {
            "floor" => floor = Some(measured_rate(Path::new(value))?),
            "min" => min = Some(value.parse::<f64>().with_context(|| format!("min={value}"))?),
            "verify" => verified = verify(Path::new(value))?,
            "disk" => targets.push(disk_target(&measured, &read::<DiskSummary>(Path::new(value))?)),
            "soak" => targets.push(soak_target(&read::<SoakVerdict>(Path::new(value))?)),
            other => anyhow::bail!("unknown row option {other} in {row}"),
        }
    }
    let ratio = floor.map(|fl| measured.rate() / fl.max(1e-9));
    if let Some(min) = min {
        let ratio = ratio.context("min= needs floor=")?;
        targets.insert(0, format!("≥ {min} × floor: {}", verdict(ratio >= min)));
    }
    let ratio = ratio.map_or("–".into(), |r| format!("{r:.2}"));
    let target = if targets.is_empty() { "–".into() } else { targets.join("; ") };
    let dash = "–";
    Ok(match &measured {
        Measured::Run(run) => {
            let l = &run.latency_ms;
            format!(
                "| {} | {:.0} | {ratio} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} % | {verified} | {target} |",
                f[0],
                run.req_per_s,
                run.events_per_s,
                run.mb_per_s,
                l.p50,
                l.p99,
                l.p99_9,
                run.error_total,
                run.client_cpu_percent
            )
        }
        Measured::Disk(d) => {
            let l = &d.latency_ms;
            format!(
                "| {} | {dash} | {ratio} | {dash} | {dash} | {:.2} | {:.2} | {:.2} | 0 | {dash} | {dash} | {target} |",
                f[0], l.p50, l.p99, l.p99_9
            )
        }
        Measured::Pipe(p) => format!(
            "| {} | {:.0} msg | {ratio} | {:.0} rows | {:.2} | {dash} | {dash} | {dash} | 0 | {dash} | {} rows of {} raw in {:.1} s | {target} |",
            f[0], p.msgs_per_s, p.rows_per_s, p.mb_per_s, p.rows, p.messages, p.elapsed_s
        ),
    })
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

fn disk_target(measured: &Measured, disk: &DiskSummary) -> String {
    let bound = DISK_P99_FACTOR * disk.latency_ms.p99;
    match measured {
        Measured::Run(run) => {
            format!("p99 ≤ {DISK_P99_FACTOR} × disk p99 = {bound:.2} ms: {}", verdict(run.latency_ms.p99 <= bound))
        }
        _ => format!("disk p99 {:.2} ms", disk.latency_ms.p99),
    }
}

fn soak_target(v: &SoakVerdict) -> String {
    format!(
        "RSS max {:.0} MiB (≤ {:.0}: {}), {:.0} → {:.0} MiB ({}); backlog max {} records, late window {} ({}); {} errors: {}",
        v.rss_max_mib,
        v.max_rss_mib,
        verdict(v.rss_under_limit),
        v.rss_early_mean_mib,
        v.rss_late_mean_mib,
        if v.rss_flat { "flat" } else { "**growing**" },
        v.backlog_max,
        v.backlog_late_max,
        if v.backlog_bounded { "bounded" } else { "**growing**" },
        v.errors,
        verdict(v.ok)
    )
}

fn verify(path: &Path) -> anyhow::Result<String> {
    let v: serde_json::Value = read(path)?;
    let verdict = if v["ok"].as_bool() == Some(true) { "" } else { " **(fails)**" };
    Ok(match v["all_found_after_s"].as_f64() {
        Some(s) => format!("{s:.1} s, {} duplicated{verdict}", v["duplicated"]),
        None => format!("**{} lost**, {} duplicated", v["lost"], v["duplicated"]),
    })
}

fn measured_rate(path: &Path) -> anyhow::Result<f64> {
    Ok(measured(path)?.rate())
}

fn measured(path: &Path) -> anyhow::Result<Measured> {
    let v: serde_json::Value = read(path)?;
    let parse = |what| format!("reading {} as {what}", path.display());
    Ok(match v["kind"].as_str() {
        Some("disk") => Measured::Disk(serde_json::from_value(v).with_context(|| parse("a disk probe"))?),
        Some("pipe") => Measured::Pipe(serde_json::from_value(v).with_context(|| parse("a copy measurement"))?),
        _ => Measured::Run(serde_json::from_value(v).map(Box::new).with_context(|| parse("a run summary"))?),
    })
}

fn read<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}
