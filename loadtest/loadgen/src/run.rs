//! The generator: workers, each with one keep-alive HTTP/1.1 connection, sharing one request
//! counter.
//!
//! Closed loop (no `--rate`): each worker sends its next request as soon as the last one is
//! answered; latency is send → answer. Open loop (`--rate R`): request `i` is due at
//! `start + i / R`, whoever sends it; a worker that is late sends at once, and latency is counted
//! from the *due* time, so a stalled server is charged for every request it delayed (no
//! coordinated omission). Not enough connections for the rate shows as latency, as it should.
//!
//! Runs on a current-thread runtime by default: the generator shares the machine's cores with
//! the server, and one thread costs the least CPU per request (its CPU use is reported).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper::{header, Request, Uri};
use hyper_util::rt::TokioIo;

use crate::body::{self, BodyBuilder};
use crate::report::{self, Percentiles, Second, Summary};

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Target URL, e.g. http://127.0.0.1:8000/collect (http only).
    #[arg(long, default_value = "http://127.0.0.1:8000/collect")]
    url: String,
    /// Concurrent connections, one worker each.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// How long to send, in seconds (ignored with --requests).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Send this many requests in all, then stop.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Open loop: requests per second in all, on a fixed schedule. Without it: closed loop, max rate.
    #[arg(long)]
    rate: Option<f64>,
    /// Events per request.
    #[arg(long, short = 'e', default_value_t = 1)]
    events: u64,
    /// Send bodies gzip-compressed (Content-Encoding: gzip).
    #[arg(long)]
    gzip: bool,
    /// Send an Idempotency-Key header, unique per request.
    #[arg(long)]
    idempotency_key: bool,
    /// Send this X-Api-Key header.
    #[arg(long, env = "LOADGEN_API_KEY")]
    api_key: Option<String>,
    /// Run id in the event ids (`lg-<run>-<n>`); default: derived from the clock.
    #[arg(long)]
    run_id: Option<String>,
    /// Write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report (inline SVG, no external resources) here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write the acknowledged event ids here (for `loadgen verify`), one per line.
    #[arg(long)]
    acked: Option<PathBuf>,
    /// Runtime threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Label of this run in the reports.
    #[arg(long, default_value = "run")]
    label: String,
    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Latencies are recorded in microseconds, up to a minute.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What one worker has seen. Behind a mutex only the worker and the once-a-second progress task
/// take, so the lock is nearly always uncontended.
struct WorkerStats {
    /// Every answered request since the start.
    total: Histogram<u64>,
    /// Answered requests since the last progress tick (taken and reset by it).
    interval: Histogram<u64>,
    acked: u64,
    /// By `"<status> <error code>"`, or `"connect"` / `"io"` for transport failures.
    errors: BTreeMap<String, u64>,
    /// Wire bytes of the acknowledged requests' bodies.
    acked_bytes: u64,
    /// Indices of the acknowledged requests (their events follow from the index).
    acked_indices: Vec<u64>,
}

impl WorkerStats {
    fn new() -> Self {
        WorkerStats {
            total: new_histogram(),
            interval: new_histogram(),
            acked: 0,
            errors: BTreeMap::new(),
            acked_bytes: 0,
            acked_indices: Vec::new(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// The plan all workers share.
struct Plan {
    run_id: String,
    host: String,
    authority: String,
    path: String,
    bodies: BodyBuilder,
    args: RunArgs,
    start: Instant,
    /// Next request index to claim.
    next: AtomicU64,
    /// Set when the duration is over (closed loop) or by Ctrl-C.
    stop: AtomicBool,
}

impl Plan {
    /// Claims the next request and says when it is due, or `None` when the run is over.
    fn claim(&self) -> Option<(u64, Instant)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.args.requests {
            if i >= n {
                return None;
            }
        }
        let due = match self.args.rate {
            Some(rate) => self.start + Duration::from_secs_f64(i as f64 / rate),
            None => Instant::now(),
        };
        if self.args.requests.is_none() && due >= self.start + Duration::from_secs_f64(self.args.duration) {
            return None;
        }
        Some((i, due))
    }
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.events > 0, "--events must be at least 1");
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let uri: Uri = args.url.parse().with_context(|| format!("parsing --url {}", args.url))?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "--url must be http://");
    let authority = uri.authority().context("--url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let host = format!("{}:{port}", uri.host().unwrap_or("127.0.0.1"));
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("{:x}", now_ms()));
    let cpu_before = cpu_seconds();
    let started_at_ms = now_ms();
    let plan = Arc::new(Plan {
        run_id: run_id.clone(),
        host,
        authority,
        path,
        bodies: BodyBuilder::new(&run_id, args.events, args.gzip),
        args: args.clone(),
        start: Instant::now(),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let stats: Vec<_> = (0..args.connections).map(|_| Arc::new(Mutex::new(WorkerStats::new()))).collect();
    let workers: Vec<_> = stats.iter().map(|s| tokio::spawn(worker(Arc::clone(&plan), Arc::clone(s)))).collect();

    let done = Arc::new(tokio::sync::Notify::new());
    let progress = {
        let plan = Arc::clone(&plan);
        let done = Arc::clone(&done);
        let stats = stats.clone();
        let quiet = args.quiet;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(plan.start.into(), Duration::from_secs(1));
            tick.tick().await;
            let (mut last_acked, mut last_errors, mut last_bytes) = (0u64, 0u64, 0u64);
            let mut series = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // The workers are done: the partial last second is left out of the series.
                    () = done.notified() => return series,
                    _ = tokio::signal::ctrl_c() => {
                        eprintln!("loadgen: interrupted; finishing the requests in flight");
                        plan.stop.store(true, Ordering::Relaxed);
                        continue;
                    }
                }
                let (mut acked, mut errors, mut bytes) = (0u64, 0u64, 0u64);
                let mut total = new_histogram();
                let mut interval = new_histogram();
                for s in &stats {
                    let mut s = s.lock().expect("a worker panicked");
                    acked += s.acked;
                    errors += s.errors.values().sum::<u64>();
                    bytes += s.acked_bytes;
                    let _ = total.add(&s.total);
                    let _ = interval.add(&s.interval);
                    s.interval.reset();
                }
                let second = Second {
                    t: series.len() as u64 + 1,
                    acked: acked - last_acked,
                    errors: errors - last_errors,
                    bytes: bytes - last_bytes,
                    p50_ms: ms(interval.value_at_quantile(0.5)),
                    p99_ms: ms(interval.value_at_quantile(0.99)),
                };
                (last_acked, last_errors, last_bytes) = (acked, errors, bytes);
                if !quiet {
                    eprintln!(
                        "[{:>4}s] {:>8} req/s  {:>6} errors  p99 so far {:>8.2} ms  ({} acked)",
                        second.t,
                        second.acked,
                        second.errors,
                        ms(total.value_at_quantile(0.99)),
                        acked
                    );
                }
                series.push(second);
            }
        })
    };
    for w in workers {
        w.await.context("a worker panicked")?;
    }
    let elapsed = plan.start.elapsed().as_secs_f64();
    plan.stop.store(true, Ordering::Relaxed);
    done.notify_one();
    let series = progress.await.context("the progress task panicked")?;
    let ended_at_ms = now_ms();
    let cpu = cpu_seconds() - cpu_before;

    let mut hist = new_histogram();
    let mut errors = BTreeMap::new();
    let (mut acked, mut bytes) = (0u64, 0u64);
    let mut indices = Vec::new();
    for s in &stats {
        let mut s = s.lock().expect("a worker panicked");
        hist.add(&s.total).context("merging histograms")?;
        acked += s.acked;
        bytes += s.acked_bytes;
        for (k, v) in &s.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        indices.append(&mut s.acked_indices);
    }
    let error_total: u64 = errors.values().sum();
    let summary = Summary {
        label: args.label.clone(),
        url: args.url.clone(),
        run_id: run_id.clone(),
        mode: if args.rate.is_some() { "open loop (fixed rate)".into() } else { "closed loop (max rate)".into() },
        rate: args.rate,
        connections: args.connections,
        events_per_request: args.events,
        gzip: args.gzip,
        idempotency_key: args.idempotency_key,
        elapsed_s: elapsed,
        requests: acked + error_total,
        acked,
        error_total,
        errors,
        req_per_s: acked as f64 / elapsed,
        events_per_s: (acked * args.events) as f64 / elapsed,
        mb_per_s: bytes as f64 / elapsed / 1e6,
        body_bytes_mean: if acked > 0 { bytes as f64 / acked as f64 } else { 0.0 },
        latency_ms: Percentiles::of(&hist),
        latency_spectrum: report::spectrum(&hist),
        client_cpu_s: cpu,
        client_cpu_percent: 100.0 * cpu / elapsed,
        started_at_ms,
        ended_at_ms,
        series,
    };
    eprintln!("{}", summary.text());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::html(&summary)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.acked {
        indices.sort_unstable();
        write_acked(path, &run_id, (started_at_ms, ended_at_ms), args.events, &indices)?;
    }
    Ok(())
}

/// One line per acknowledged event id, after a `#` header naming the run and when the load
/// started and ended (wall clock, ms since the epoch).
fn write_acked(
    path: &PathBuf,
    run_id: &str,
    (started, ended): (u64, u64),
    events: u64,
    indices: &[u64],
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    writeln!(out, "# run={run_id} started_at_ms={started} ended_at_ms={ended}")?;
    for &i in indices {
        for k in 0..events {
            writeln!(out, "{}", body::event_id(run_id, i * events + k))?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn worker(plan: Arc<Plan>, stats: Arc<Mutex<WorkerStats>>) {
    let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
    // A request claimed but not sent because the connection could not be made; retried.
    let mut pending: Option<(u64, Instant)> = None;
    loop {
        let Some((index, due)) = pending.take().or_else(|| plan.claim()) else { return };
        if plan.args.rate.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sender = match conn.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(&plan.host).await {
                Ok(s) => conn.insert(s),
                Err(_) => {
                    record_error(&stats, "connect".into());
                    if plan.stop.load(Ordering::Relaxed) || past_end(&plan) {
                        return;
                    }
                    pending = Some((index, due));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            conn = None;
            pending = Some((index, due));
            continue;
        }
        let body = plan.bodies.build(index);
        let len = body.len() as u64;
        let mut req = Request::post(&plan.path)
            .header(header::HOST, &plan.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, len);
        if plan.args.gzip {
            req = req.header(header::CONTENT_ENCODING, "gzip");
        }
        if plan.args.idempotency_key {
            req = req.header("idempotency-key", format!("lg-{}-r{index}", plan.run_id));
        }
        if let Some(key) = &plan.args.api_key {
            req = req.header("x-api-key", key);
        }
        let req = req.body(Full::new(body)).expect("a request built from valid parts");
        let result = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(b) => Ok((status, b.to_bytes())),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let latency_us = (due.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        let mut s = stats.lock().expect("the progress task panicked");
        s.total.saturating_record(latency_us);
        s.interval.saturating_record(latency_us);
        match result {
            Ok((status, _)) if status.is_success() => {
                s.acked += 1;
                s.acked_bytes += len;
                s.acked_indices.push(index);
            }
            Ok((status, body)) => {
                *s.errors.entry(format!("{} {}", status.as_u16(), error_code(&body))).or_insert(0) += 1;
            }
            Err(_) => {
                *s.errors.entry("io".into()).or_insert(0) += 1;
                conn = None;
            }
        }
    }
}

fn past_end(plan: &Plan) -> bool {
    plan.args.requests.is_none() && plan.start.elapsed().as_secs_f64() >= plan.args.duration
}

fn record_error(stats: &Mutex<WorkerStats>, key: String) {
    *stats.lock().expect("the progress task panicked").errors.entry(key).or_insert(0) += 1;
}

async fn connect(host: &str) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The `error.code` of a collector error body, `-` if there is none.
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (the state, field 3, comes first after
    // the name); in clock ticks, which are 100 per second on Linux.
    let ticks: u64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}
