//! What a run reports: the summary (printed, and as JSON), and a self-contained HTML page with
//! two inline SVG charts (throughput per second, latency by percentile). No script, no external
//! resource: the file opens anywhere, offline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone)]
pub struct Summary {
    pub label: String,
    pub url: String,
    pub run_id: String,
    pub mode: String,
    /// Requests per second asked for (open loop); none in a closed loop.
    pub rate: Option<f64>,
    pub connections: usize,
    pub events_per_request: u64,
    pub gzip: bool,
    pub idempotency_key: bool,
    /// From the start until the last answer.
    pub elapsed_s: f64,
    /// Acknowledged plus failed (failed connections included).
    pub requests: u64,
    /// Answered 2xx.
    pub acked: u64,
    pub error_total: u64,
    /// By `"<status> <error code>"`, or `connect` / `io`.
    pub errors: BTreeMap<String, u64>,
    /// Acknowledged requests per second.
    pub req_per_s: f64,
    pub events_per_s: f64,
    /// Wire bytes of acknowledged bodies, per second (MB = 10^6 bytes).
    pub mb_per_s: f64,
    pub body_bytes_mean: f64,
    pub latency_ms: Percentiles,
    /// (percentile, latency in ms) for the distribution chart.
    pub latency_spectrum: Vec<(f64, f64)>,
    /// CPU time the generator itself used, and as a share of one core over the run.
    pub client_cpu_s: f64,
    pub client_cpu_percent: f64,
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub series: Vec<Second>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let q = |q| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        }
    }
}

/// One second of the run.
#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct Second {
    /// Seconds since the start (end of this second).
    pub t: u64,
    pub acked: u64,
    pub errors: u64,
    pub bytes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Latency at percentiles spaced evenly on the "nines" scale, from 0 to 99.999.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=50)
        .map(|i| {
            // x in nines: 0 → 0 %, 1 → 90 %, 2 → 99 %, … 5 → 99.999 %.
            let nines = i as f64 / 10.0;
            let q = 1.0 - 10f64.powf(-nines);
            (q * 100.0, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

impl Summary {
    /// The human summary printed at the end of a run.
    pub fn text(&self) -> String {
        let l = &self.latency_ms;
        let mut s = format!(
            "{}: {} acked, {} errors in {:.1} s: {:.0} req/s, {:.0} events/s, {:.2} MB/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; generator CPU {:.0} % of a core",
            self.label,
            self.acked,
            self.error_total,
            self.elapsed_s,
            self.req_per_s,
            self.events_per_s,
            self.mb_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.max,
            self.client_cpu_percent
        );
        for (k, v) in &self.errors {
            let _ = write!(s, "\n  error {k}: {v}");
        }
        s
    }
}

/// A latency spectrum `(percentile, ms)` on the "nines" scale: x = 1 at 90 %, 2 at 99 %, …
pub fn nines(spectrum: &[(f64, f64)]) -> Vec<(f64, f64)> {
    spectrum.iter().map(|&(p, ms)| (-(1.0 - p / 100.0).max(1e-9).log10(), ms)).collect()
}

/// The HTML report of one run.
pub fn html(s: &Summary) -> String {
    let l = &s.latency_ms;
    let throughput: Vec<(f64, f64)> = s.series.iter().map(|x| (x.t as f64, x.acked as f64)).collect();
    let p99: Vec<(f64, f64)> = s.series.iter().map(|x| (x.t as f64, x.p99_ms)).collect();
    let nines = nines(&s.latency_spectrum);
    let mut errors = String::new();
    for (k, v) in &s.errors {
        let _ = write!(errors, "<tr><td>error {}</td><td>{v}</td></tr>", esc(k));
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>loadgen: {label}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}td{{padding:0 1em 0 0}}svg{{background:#fafafa;border:1px solid #ddd}}</style>
</head><body>
<h1>loadgen: {label}</h1>
<p>{url} — {mode}{rate}, {conns} connections, {events} event(s) per request{gzip}. Run <code>{run}</code>.</p>
<table>
<tr><td>acknowledged</td><td>{acked} in {elapsed:.1} s</td></tr>
<tr><td>req/s</td><td>{rps:.0}</td></tr>
<tr><td>events/s</td><td>{eps:.0}</td></tr>
<tr><td>MB/s (bodies on the wire)</td><td>{mbps:.2}</td></tr>
<tr><td>latency p50 / p90 / p99 / p99.9 / max</td><td>{p50:.2} / {p90:.2} / {p99:.2} / {p999:.2} / {max:.2} ms</td></tr>
<tr><td>generator CPU</td><td>{cpu:.0} % of one core</td></tr>
{errors}
</table>
<h2>Throughput</h2>
{chart1}
<h2>Latency per second (p99)</h2>
{chart2}
<h2>Latency distribution</h2>
{chart3}
<p>x: percentile on the “nines” scale (1 = 90 %, 2 = 99 %, 3 = 99.9 %…). Open-loop latencies count from the intended send time.</p>
</body></html>
"#,
        label = esc(&s.label),
        url = esc(&s.url),
        mode = esc(&s.mode),
        rate = s.rate.map(|r| format!(" at {r} req/s")).unwrap_or_default(),
        conns = s.connections,
        events = s.events_per_request,
        gzip = if s.gzip { ", gzip" } else { "" },
        run = esc(&s.run_id),
        acked = s.acked,
        elapsed = s.elapsed_s,
        rps = s.req_per_s,
        eps = s.events_per_s,
        mbps = s.mb_per_s,
        p50 = l.p50,
        p90 = l.p90,
        p99 = l.p99,
        p999 = l.p99_9,
        max = l.max,
        cpu = s.client_cpu_percent,
        chart1 = svg_line(&throughput, "seconds", "acknowledged req/s"),
        chart2 = svg_line(&p99, "seconds", "p99 ms"),
        chart3 = svg_line(&nines, "percentile (nines)", "latency ms"),
    )
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A line chart with axes from 0 to the data's maximum, five ticks each.
pub fn svg_line(points: &[(f64, f64)], x_label: &str, y_label: &str) -> String {
    svg_lines(&[("", points.to_vec())], x_label, y_label)
}

/// Line colours of [`svg_lines`], in series order (then repeated).
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// A chart of several labelled lines on shared axes (0 to the largest value of any series, five
/// ticks each), with a legend when the series have labels.
pub fn svg_lines(series: &[(&str, Vec<(f64, f64)>)], x_label: &str, y_label: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 40.0;
    const TOP: f64 = 10.0;
    const RIGHT: f64 = 20.0;
    let all = || series.iter().flat_map(|(_, points)| points.iter());
    if all().next().is_none() {
        return "<p>(no data)</p>".into();
    }
    let x_max = all().map(|p| p.0).fold(f64::MIN, f64::max).max(1e-9);
    let y_max = all().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-9) * 1.05;
    let px = |x: f64| LEFT + x / x_max * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y_max * (H - BOTTOM - TOP);
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-size="11">"#);
    let _ = write!(
        svg,
        r##"<rect width="{W}" height="{H}" fill="#fafafa"/><line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="#333"/>"##,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for i in 0..=5 {
        let (x, y) = (x_max * i as f64 / 5.0, y_max * i as f64 / 5.0);
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="end">{}</text><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#e4e4e4"/>"##,
            px(x),
            H - BOTTOM + 15.0,
            tick(x),
            LEFT - 5.0,
            py(y) + 4.0,
            tick(y),
            py(y),
            W - RIGHT,
            py(y)
        );
    }
    for (i, (label, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ =
            write!(svg, r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##, line.join(" "));
        if !label.is_empty() {
            let y = TOP + 14.0 * (i as f64 + 1.0);
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"##,
                W - RIGHT - 250.0,
                y - 4.0,
                W - RIGHT - 230.0,
                y - 4.0,
                W - RIGHT - 225.0,
                y,
                esc(label)
            );
        }
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text></svg>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 5.0,
        esc(x_label),
        (H - BOTTOM) / 2.0,
        (H - BOTTOM) / 2.0,
        esc(y_label)
    );
    svg
}

fn tick(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
