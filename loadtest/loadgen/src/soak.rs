//! `watch` and `soak`: what a long run does to the collector (S4).
//!
//! `watch` samples, once a second, the collector's resident memory (`VmRSS` in
//! `/proc/<pid>/status`) and its WAL backlog (`wal.pending_records` of the JSON status page on
//! its admin listener), and writes the samples as CSV and JSON. `soak` judges the samples with
//! the run summary of the load that ran meanwhile, by the rules below, and exits non-zero if
//! one fails.
//!
//! # The rules
//! The samples are cut into windows of `W` = 60 s (or a fifth of the soak if shorter, at least
//! 5 s). The first window is warm-up (caches filling, connections opening) and is only used for
//! the maximum; the *early* window is the second one and the *late* window the last one.
//! - **RSS flat**: the late window's mean RSS is at most 10 % above the early window's.
//! - **RSS ≤ 200 MiB** (`--max-rss-mib`) in every sample.
//! - **Backlog bounded**: the late window's largest backlog is at most twice the early window's
//!   plus a slack of 5,000 records (`--backlog-slack`, one default flush batch: a batch in
//!   flight is backlog too). A pipeline that keeps up holds the backlog at a level; one that
//!   falls behind grows it by thousands of records a second, which this catches within a window.
//! - **No errors**: the load saw only 2xx answers, and every sample found the collector alive
//!   and answering its status page.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::report::{self, Summary};

#[derive(clap::Args)]
pub struct WatchArgs {
    /// The collector's process id.
    #[arg(long)]
    pid: u32,
    /// The admin listener's address (host:port); its `/` answers JSON status.
    #[arg(long)]
    admin: String,
    /// How long to sample, in seconds (one sample a second).
    #[arg(long)]
    seconds: u64,
    /// Write the samples as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the samples as JSON here (what `soak` reads).
    #[arg(long)]
    json: PathBuf,
}

/// One second of the soak.
#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct Sample {
    /// Seconds since sampling started.
    pub t: u64,
    /// Resident memory, MiB; none if the process was gone.
    pub rss_mib: Option<f64>,
    /// WAL records not yet delivered to Kafka; none if the status page did not answer.
    pub pending_records: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub struct Samples {
    pub pid: u32,
    pub started_at_ms: u64,
    pub samples: Vec<Sample>,
}

pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let started_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut samples = Vec::new();
    for t in 1..=args.seconds {
        let due = start + Duration::from_secs(t);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        samples.push(Sample { t, rss_mib: rss_mib(args.pid), pending_records: pending_records(&args.admin) });
    }
    let out = Samples { pid: args.pid, started_at_ms, samples };
    std::fs::write(&args.json, serde_json::to_vec_pretty(&out)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    if let Some(path) = &args.csv {
        let mut csv = String::from("t_s,rss_mib,pending_records\n");
        for s in &out.samples {
            let rss = s.rss_mib.map(|r| format!("{r:.1}")).unwrap_or_default();
            let pending = s.pending_records.map(|p| p.to_string()).unwrap_or_default();
            let _ = writeln!(csv, "{},{rss},{pending}", s.t);
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `VmRSS` of `pid`, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `wal.pending_records` from the collector's JSON status page (one HTTP/1.0 GET, no client
/// library: this runs once a second).
fn pending_records(admin: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET / HTTP/1.0\r\nHost: {admin}\r\nAccept: application/json\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status: serde_json::Value = serde_json::from_slice(&response[split + 4..]).ok()?;
    status["wal"]["pending_records"].as_u64()
}

#[derive(clap::Args)]
pub struct SoakArgs {
    /// The samples `watch` wrote.
    #[arg(long)]
    samples: PathBuf,
    /// The summary of the load that ran meanwhile (`run --json`).
    #[arg(long)]
    run: PathBuf,
    /// Most resident memory allowed, MiB.
    #[arg(long, default_value_t = 200.0)]
    max_rss_mib: f64,
    /// Backlog the late window may hold beyond twice the early window's, in records.
    #[arg(long, default_value_t = 5000)]
    backlog_slack: u64,
    /// Write the verdict as JSON here (what `table` reads).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an HTML page with RSS, backlog and throughput over time here.
    #[arg(long)]
    html: Option<PathBuf>,
}

/// The verdict, as `--json` writes it.
#[derive(Serialize, Deserialize)]
pub struct SoakVerdict {
    /// Always `"soak"`.
    pub kind: String,
    pub seconds: u64,
    pub window_s: u64,
    pub rss_max_mib: f64,
    pub rss_early_mean_mib: f64,
    pub rss_late_mean_mib: f64,
    pub rss_flat: bool,
    pub rss_under_limit: bool,
    pub max_rss_mib: f64,
    pub backlog_max: u64,
    pub backlog_early_max: u64,
    pub backlog_late_max: u64,
    pub backlog_bounded: bool,
    /// Failed requests of the load, plus samples that found the collector gone or silent.
    pub errors: u64,
    pub req_per_s: f64,
    pub ok: bool,
}

pub fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let samples: Samples = read_json(&args.samples)?;
    let run: Summary = read_json(&args.run)?;
    let verdict = judge(&samples.samples, &run, args.max_rss_mib, args.backlog_slack)?;
    eprintln!(
        "soak: {} s at {:.0} req/s; RSS max {:.1} MiB (limit {:.0}), early {:.1} → late {:.1} MiB ({}); backlog max {} records, early window max {} → late {} ({}); {} errors: {}",
        verdict.seconds,
        verdict.req_per_s,
        verdict.rss_max_mib,
        verdict.max_rss_mib,
        verdict.rss_early_mean_mib,
        verdict.rss_late_mean_mib,
        if verdict.rss_flat { "flat" } else { "GROWING" },
        verdict.backlog_max,
        verdict.backlog_early_max,
        verdict.backlog_late_max,
        if verdict.backlog_bounded { "bounded" } else { "GROWING" },
        verdict.errors,
        if verdict.ok { "ok" } else { "FAILS" }
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&verdict)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html(&samples.samples, &run, &verdict))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !verdict.ok {
        // The verdict line above says why; an error's backtrace would add nothing.
        std::process::exit(1);
    }
    Ok(())
}

fn judge(samples: &[Sample], run: &Summary, max_rss_mib: f64, slack: u64) -> anyhow::Result<SoakVerdict> {
    let n = samples.len() as u64;
    let window = (n / 5).clamp(5, 60);
    anyhow::ensure!(n >= 3 * window, "a soak needs at least {} samples, got {n}", 3 * window);
    let early = &samples[window as usize..2 * window as usize];
    let late = &samples[(n - window) as usize..];
    let rss = |s: &[Sample]| s.iter().filter_map(|x| x.rss_mib).collect::<Vec<f64>>();
    let mean = |v: Vec<f64>| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let max_pending = |s: &[Sample]| s.iter().filter_map(|x| x.pending_records).max().unwrap_or(0);
    let rss_max = rss(samples).into_iter().fold(0.0, f64::max);
    let (rss_early, rss_late) = (mean(rss(early)), mean(rss(late)));
    let (backlog_early, backlog_late) = (max_pending(early), max_pending(late));
    let missing = samples.iter().filter(|s| s.rss_mib.is_none() || s.pending_records.is_none()).count() as u64;
    let rss_flat = rss_late <= rss_early * 1.10;
    let rss_under_limit = rss_max <= max_rss_mib;
    let backlog_bounded = backlog_late <= 2 * backlog_early + slack;
    let errors = run.error_total + missing;
    Ok(SoakVerdict {
        kind: "soak".into(),
        seconds: n,
        window_s: window,
        rss_max_mib: rss_max,
        rss_early_mean_mib: rss_early,
        rss_late_mean_mib: rss_late,
        rss_flat,
        rss_under_limit,
        max_rss_mib,
        backlog_max: max_pending(samples),
        backlog_early_max: backlog_early,
        backlog_late_max: backlog_late,
        backlog_bounded,
        errors,
        req_per_s: run.req_per_s,
        ok: rss_flat && rss_under_limit && backlog_bounded && errors == 0,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn html(samples: &[Sample], run: &Summary, v: &SoakVerdict) -> String {
    let rss: Vec<(f64, f64)> = samples.iter().filter_map(|s| Some((s.t as f64, s.rss_mib?))).collect();
    let backlog: Vec<(f64, f64)> =
        samples.iter().filter_map(|s| Some((s.t as f64, s.pending_records? as f64))).collect();
    let throughput: Vec<(f64, f64)> = run.series.iter().map(|x| (x.t as f64, x.acked as f64)).collect();
    let mark = |ok: bool| if ok { "met" } else { "<b>missed</b>" };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>loadgen: soak</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}td{{padding:0 1em 0 0}}svg{{background:#fafafa;border:1px solid #ddd}}</style>
</head><body>
<h1>Soak: {label}</h1>
<p>{secs} s, open loop at {rate:.0} req/s asked ({rps:.0} acknowledged per second), {errors} errors. Windows of {w} s: warm-up, early (second window), late (last).</p>
<table>
<tr><td>RSS max</td><td>{rss_max:.1} MiB (≤ {limit:.0} MiB: {under})</td></tr>
<tr><td>RSS early → late window mean</td><td>{early:.1} → {late:.1} MiB (late ≤ 1.10 × early: {flat})</td></tr>
<tr><td>WAL backlog max</td><td>{bmax} records; early window max {bearly}, late {blate} (late ≤ 2 × early + slack: {bounded})</td></tr>
<tr><td>verdict</td><td>{verdict}</td></tr>
</table>
<h2>Resident memory (MiB)</h2>
{c1}
<h2>WAL backlog (pending records)</h2>
{c2}
<h2>Throughput (acknowledged req/s)</h2>
{c3}
</body></html>
"#,
        label = report::esc(&run.label),
        secs = v.seconds,
        rate = run.rate.unwrap_or(0.0),
        rps = run.req_per_s,
        errors = v.errors,
        w = v.window_s,
        rss_max = v.rss_max_mib,
        limit = v.max_rss_mib,
        under = mark(v.rss_under_limit),
        early = v.rss_early_mean_mib,
        late = v.rss_late_mean_mib,
        flat = mark(v.rss_flat),
        bmax = v.backlog_max,
        bearly = v.backlog_early_max,
        blate = v.backlog_late_max,
        bounded = mark(v.backlog_bounded),
        verdict = if v.ok { "ok" } else { "<b>fails</b>" },
        c1 = report::svg_line(&rss, "seconds", "RSS MiB"),
        c2 = report::svg_line(&backlog, "seconds", "pending records"),
        c3 = report::svg_line(&throughput, "seconds", "req/s"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(errors: u64) -> Summary {
        serde_json::from_value(serde_json::json!({
            "label": "s4", "url": "u", "run_id": "r", "mode": "m", "rate": 100.0, "connections": 1,
            "events_per_request": 1, "gzip": false, "idempotency_key": false, "elapsed_s": 1.0,
            "requests": 1, "acked": 1, "error_total": errors, "errors": {}, "req_per_s": 1.0,
            "events_per_s": 1.0, "mb_per_s": 0.0, "body_bytes_mean": 1.0,
            "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "p99_9": 1.0, "max": 1.0, "mean": 1.0},
            "latency_spectrum": [], "client_cpu_s": 0.0, "client_cpu_percent": 0.0,
            "started_at_ms": 0, "ended_at_ms": 0, "series": []
        }))
        .unwrap()
    }

    fn samples(n: u64, rss: impl Fn(u64) -> f64, pending: impl Fn(u64) -> u64) -> Vec<Sample> {
        (1..=n).map(|t| Sample { t, rss_mib: Some(rss(t)), pending_records: Some(pending(t)) }).collect()
    }

    #[test]
    fn a_steady_collector_passes() {
        let s = samples(300, |t| 80.0 + (t % 7) as f64, |t| 1000 + (t % 5) * 300);
        let v = judge(&s, &run(0), 200.0, 5000).unwrap();
        assert!(v.ok && v.rss_flat && v.backlog_bounded);
        assert_eq!(v.window_s, 60);
    }

    #[test]
    fn growth_over_limits_and_errors_fail() {
        let leak = samples(300, |t| 50.0 + t as f64 * 0.2, |_| 100);
        assert!(!judge(&leak, &run(0), 200.0, 5000).unwrap().rss_flat);
        let big = samples(300, |_| 250.0, |_| 100);
        assert!(!judge(&big, &run(0), 200.0, 5000).unwrap().rss_under_limit);
        let behind = samples(300, |_| 80.0, |t| t * 1000);
        assert!(!judge(&behind, &run(0), 200.0, 5000).unwrap().backlog_bounded);
        let steady = samples(300, |_| 80.0, |_| 100);
        assert!(!judge(&steady, &run(3), 200.0, 5000).unwrap().ok);
        let mut gone = steady.clone();
        gone[200].rss_mib = None;
        assert_eq!(judge(&gone, &run(0), 200.0, 5000).unwrap().errors, 1);
    }

    #[test]
    fn too_short_a_soak_is_refused() {
        assert!(judge(&samples(10, |_| 1.0, |_| 1), &run(0), 200.0, 5000).is_err());
    }
}
