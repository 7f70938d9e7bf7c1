//! Status endpoints: the home page (HTML for people, JSON for machines), liveness, readiness
//! and Prometheus metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::state::IngestState;
use crate::flush::FlushSnapshot;
use crate::wal::{record, LogStore, WalStats};

#[derive(Serialize)]
struct Status {
    service: &'static str,
    version: &'static str,
    node_id: String,
    ready: bool,
    draining: bool,
    uptime_secs: u64,
    /// Why the WAL takes no appends (a failed or stalled disk), if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_fault: Option<String>,
    wal: WalStats,
    /// How long ago the oldest record Kafka has not confirmed was accepted (absent when none is
    /// pending, or it cannot be read now).
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_pending_age_ms: Option<u64>,
    flush: FlushSnapshot,
}

fn snapshot(state: &IngestState) -> Status {
    let (wal, oldest_pending_age_ms) = wal_levels(state);
    let draining = state.draining.load(Ordering::Acquire);
    let ready = state.unready().is_none();
    Status {
        service: "collector",
        version: env!("CARGO_PKG_VERSION"),
        node_id: state.node_id.clone(),
        ready,
        draining,
        uptime_secs: state.started.elapsed().as_secs(),
        wal_fault: state.wal_fault().map(|f| match f {
            crate::wal::WalFault::Failed(reason) => format!("failed: {reason}"),
            crate::wal::WalFault::Stalled(running) => format!("a group commit has run for {running:?}"),
        }),
        wal,
        oldest_pending_age_ms,
        flush: state.flush.snapshot(),
    }
}

pub async fn home(State(state): State<Arc<IngestState>>, headers: HeaderMap) -> Response {
    let status = snapshot(&state);
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/html"));
    if wants_json {
        return Json(status).into_response();
    }
    let kafka = match (&status.flush.last_error, status.flush.kafka_ok) {
        (_, true) => "delivering".to_string(),
        (Some(e), false) => format!("retrying: {}", html_escape(e)),
        (None, false) => "not connected yet".to_string(),
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>collector</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}}
td{{padding:.2rem 1rem .2rem 0}}code{{background:#f3f3f3;padding:0 .3rem}}</style></head>
<body><h1>collector</h1>
<p>Durable event collector for Kafka. <code>POST /collect</code> with a JSON batch of events;
a 200 means the batch is on disk and will reach Kafka.</p>
<table>
<tr><td>status</td><td><b>{state_word}</b></td></tr>
<tr><td>node</td><td>{node}</td></tr>
<tr><td>uptime</td><td>{uptime}s</td></tr>
<tr><td>WAL pending records</td><td>{pending}</td></tr>
<tr><td>oldest pending record</td><td>{oldest}</td></tr>
<tr><td>WAL next sequence</td><td>{next}</td></tr>
<tr><td>delivered to Kafka through</td><td>{delivered}</td></tr>
<tr><td>WAL segments / disk</td><td>{segments} / {disk} bytes</td></tr>
<tr><td>quarantined records</td><td>{quarantined}</td></tr>
<tr><td>Kafka</td><td>{kafka}</td></tr>
</table>
<p><a href="/metrics">metrics</a> · <a href="/healthz">healthz</a> · <a href="/readyz">readyz</a> ·
JSON: <code>curl -H 'Accept: application/json' /</code></p>
</body></html>"#,
        state_word = if status.draining {
            "draining"
        } else if status.ready {
            "accepting"
        } else {
            "WAL full: refusing with 503 until Kafka catches up"
        },
        node = html_escape(&status.node_id),
        uptime = status.uptime_secs,
        pending = status.wal.pending_records,
        oldest = status
            .oldest_pending_age_ms
            .map_or("none".to_string(), |ms| format!("accepted {:.1} s ago", ms as f64 / 1000.0)),
        next = status.wal.next_seq,
        delivered = status.wal.delivered_through,
        segments = status.wal.segments,
        disk = status.wal.disk_bytes,
        quarantined = status.wal.quarantined,
    ))
    .into_response()
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

pub async fn readyz(State(state): State<Arc<IngestState>>) -> Response {
    if let Some(unready) = state.unready() {
        let body = Json(serde_json::json!({"ready": false, "reason": unready.reason()}));
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], body).into_response();
    }
    Json(serde_json::json!({"ready": true})).into_response()
}

pub async fn metrics(State(state): State<Arc<IngestState>>) -> Response {
    wal_levels(&state);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// The WAL's figures and its oldest pending record's age, read now and published as the WAL
/// gauges (what the status page and a scrape both show).
fn wal_levels(state: &IngestState) -> (WalStats, Option<u64>) {
    let wal = state.log.stats();
    let oldest_pending_age_ms = oldest_pending_age_ms(&*state.log, &wal);
    crate::telemetry::wal_levels(wal.pending_records, wal.disk_bytes, oldest_pending_age_ms);
    (wal, oldest_pending_age_ms)
}

/// How long ago the oldest record Kafka has not confirmed was accepted, in milliseconds: read
/// from the WAL when asked (a scrape, the status page), so it grows through an outage even
/// while the flusher cannot reach Kafka at all. `None` when nothing is pending, or when the
/// first pending records cannot be read now (a failed WAL refuses reads).
fn oldest_pending_age_ms(log: &dyn LogStore, wal: &WalStats) -> Option<u64> {
    if wal.pending_records == 0 {
        return None;
    }
    // A few records, in case the first ones are quarantined or set aside.
    let records = log.read(wal.delivered_through + 1, wal.next_seq.saturating_sub(1), 8, 1 << 20).ok()?;
    let entry = records.iter().find_map(|r| r.frame.as_deref().and_then(|frame| record::decode(frame).ok()))?;
    Some(crate::now_ms().saturating_sub(entry.received_at_ms))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
