//! Status endpoints: the home page (a live page for people, the status document for machines),
//! liveness, readiness and Prometheus metrics.
//!
//! The page (`status.html`) is static and self-contained (its style and script inline; its
//! Content-Security-Policy lets it load nothing else and talk only to this listener); it asks
//! for the status document every second and writes every value with `textContent`, so nothing
//! from the document is ever read as HTML.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::history::{HistorySnapshot, Totals};
use super::state::{IngestState, Unready};
use super::summary::ConfigSummary;
use crate::flush::FlushSnapshot;
use crate::kafka::{LinkSnapshot, LinkState};
use crate::telemetry::RecentError;
use crate::transform::TransformSnapshot;
use crate::wal::{record, LogStore, WalFault, WalStats};

/// The status page.
const PAGE: &str = include_str!("status.html");

/// Nothing but the page itself, its inline style and script, and requests to this listener.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The status document (`/status.json`).
#[derive(Serialize)]
struct Status<'a> {
    service: &'static str,
    version: &'static str,
    node_id: &'a str,
    ready: bool,
    draining: bool,
    uptime_secs: u64,
    /// The one word for the page's headline, and a sentence saying what it means.
    state: Headline,
    state_detail: String,
    /// Why the WAL takes no appends (a failed or stalled disk), if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_fault: Option<String>,
    wal: WalStats,
    /// How long ago the oldest record Kafka has not confirmed was accepted (absent when none is
    /// pending, or it cannot be read now).
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_pending_age_ms: Option<u64>,
    flush: FlushSnapshot,
    totals: Totals,
    /// Each Kafka client of the stages in this process.
    kafka: Vec<LinkSnapshot>,
    /// Absent without a transform in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    transform: Option<TransformSnapshot>,
    /// Newest first.
    errors: Vec<RecentError>,
    history: HistorySnapshot,
    config: &'a ConfigSummary,
}

/// What the collector is doing, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Headline {
    Accepting,
    Draining,
    WalFull,
    WalFailed,
    KafkaUnreachable,
    /// Kafka answers but refuses what the flusher asks: retrying will not mend it.
    KafkaRefusing,
}

/// The headline: why ingest refuses, if it does (readiness decides); else whether Kafka
/// refuses the flusher (`flush_refusing`: it answered no); else whether Kafka is reachable: not
/// if a client is disconnected, or the flusher's last call failed and its producer has not
/// reported a connection since.
fn headline(unready: Option<Unready>, links: &[LinkSnapshot], flush_failing: bool, flush_refusing: bool) -> Headline {
    match unready {
        Some(Unready::Draining) => Headline::Draining,
        Some(Unready::WalUnavailable) => Headline::WalFailed,
        Some(Unready::WalFull) => Headline::WalFull,
        Some(Unready::KafkaUnavailable) if flush_refusing => Headline::KafkaRefusing,
        Some(Unready::KafkaUnavailable) => Headline::KafkaUnreachable,
        None if flush_refusing => Headline::KafkaRefusing,
        None => {
            let disconnected = links.iter().any(|l| l.state == LinkState::Disconnected);
            let flusher_up = links.iter().any(|l| l.stage == "flusher" && l.state == LinkState::Connected);
            if disconnected || (flush_failing && !flusher_up) {
                Headline::KafkaUnreachable
            } else {
                Headline::Accepting
            }
        }
    }
}

/// The headline in a sentence; `fault`: the WAL's, or the flusher's last error when Kafka
/// refuses; `acks_after_kafka`: `--ack kafka`, which refuses while Kafka is away instead of
/// filling the WAL.
fn detail(headline: Headline, fault: Option<&str>, acks_after_kafka: bool) -> String {
    match headline {
        Headline::Accepting => "Accepting events; the WAL is delivered to Kafka as it fills.".into(),
        Headline::Draining => {
            "Shutting down: no new requests; delivering what the WAL holds before exit.".into()
        }
        Headline::WalFull => {
            "The WAL holds its quota (or its disk is down to the space kept free): /collect answers 503 until Kafka takes the backlog.".into()
        }
        Headline::WalFailed => format!(
            "The WAL takes no appends ({}): /collect answers 503; the collector reopens it once the disk works.",
            fault.unwrap_or("a storage fault")
        ),
        Headline::KafkaUnreachable if acks_after_kafka => {
            "Kafka is unreachable, and this collector answers only once Kafka has a batch (--ack kafka): /collect answers 503 kafka_unavailable until it is back.".into()
        }
        Headline::KafkaUnreachable => {
            "Kafka is unreachable: events are still accepted, and wait in the WAL (up to its quota) until it is back.".into()
        }
        Headline::KafkaRefusing => format!(
            "Kafka answers but refuses the flusher ({}); {}, and the flusher retries by itself once the cause is fixed.",
            fault.unwrap_or("see the last errors"),
            if acks_after_kafka {
                "/collect answers 503 kafka_unavailable meanwhile (--ack kafka)"
            } else {
                "events are still accepted, and wait in the WAL (up to its quota)"
            }
        ),
    }
}

fn snapshot(state: &IngestState) -> Status<'_> {
    let (wal, oldest_pending_age_ms) = wal_levels(state);
    let now = Instant::now();
    let kafka: Vec<LinkSnapshot> = state.kafka_links().iter().map(|link| link.publish(now)).collect();
    let flush = state.flush.snapshot();
    let wal_fault = state.wal_fault().map(|f| match f {
        WalFault::Failed(reason) => format!("failed: {reason}"),
        WalFault::Stalled(running) => format!("a group commit has run for {running:?}"),
    });
    let unready = state.unready();
    let headline = headline(unready, &kafka, !flush.kafka_ok && flush.last_error.is_some(), flush.refusing);
    let fault = match headline {
        Headline::KafkaRefusing => flush.last_error.clone(),
        _ => wal_fault.clone(),
    };
    Status {
        service: "collector",
        version: env!("CARGO_PKG_VERSION"),
        node_id: &state.node_id,
        ready: unready.is_none(),
        draining: state.draining.load(Ordering::Acquire),
        uptime_secs: state.started.elapsed().as_secs(),
        state: headline,
        state_detail: detail(headline, fault.as_deref(), state.options.ack.waits_for_kafka()),
        wal_fault,
        wal,
        oldest_pending_age_ms,
        flush,
        totals: state.totals(),
        kafka,
        transform: state.transform.as_ref().map(|t| t.snapshot()),
        errors: state.errors.newest_first(),
        history: state.history.snapshot(),
        config: &state.summary,
    }
}

/// `/`: the status page, or the status document for `Accept: application/json`.
pub async fn home(State(state): State<Arc<IngestState>>, headers: HeaderMap) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/html"));
    if wants_json {
        return document(State(state)).await;
    }
    let headers = [(header::CONTENT_SECURITY_POLICY, PAGE_POLICY), (header::CACHE_CONTROL, "no-store")];
    (headers, Html(PAGE)).into_response()
}

/// `/status.json`: the status document.
pub async fn document(State(state): State<Arc<IngestState>>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(snapshot(&state))).into_response()
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
    ([(header::CONTENT_TYPE, crate::telemetry::METRICS_CONTENT_TYPE)], state.metrics.render()).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn link(stage: &'static str, state: LinkState) -> LinkSnapshot {
        LinkSnapshot { stage, state, brokers_up: 0, brokers_known: 0, report_age_ms: None, for_ms: 0 }
    }

    #[test]
    fn the_headline_says_why_ingest_refuses_first_then_whether_kafka_is_reachable() {
        let up = [link("flusher", LinkState::Connected), link("transform_consumer", LinkState::Connected)];
        assert_eq!(headline(None, &up, false, false), Headline::Accepting);
        assert_eq!(headline(Some(Unready::Draining), &up, false, false), Headline::Draining);
        assert_eq!(headline(Some(Unready::WalFull), &up, true, false), Headline::WalFull);
        assert_eq!(headline(Some(Unready::WalUnavailable), &up, false, false), Headline::WalFailed);
        let consumer_down =
            [link("flusher", LinkState::Connected), link("transform_consumer", LinkState::Disconnected)];
        assert_eq!(headline(None, &consumer_down, false, false), Headline::KafkaUnreachable);
        // Starting: no report yet is not an outage; a failed call without a report since is.
        let starting = [link("flusher", LinkState::Unknown)];
        assert_eq!(headline(None, &starting, false, false), Headline::Accepting);
        assert_eq!(headline(None, &starting, true, false), Headline::KafkaUnreachable);
        // A failed batch while the producer is connected (a refused record, say) is an error
        // to list, not an outage.
        assert_eq!(headline(None, &up, true, false), Headline::Accepting);
        // Kafka answered no (topics refused, credentials turned down): not an outage either.
        assert_eq!(headline(None, &starting, true, true), Headline::KafkaRefusing);
        assert_eq!(headline(Some(Unready::KafkaUnavailable), &starting, true, true), Headline::KafkaRefusing);
        assert_eq!(headline(Some(Unready::KafkaUnavailable), &starting, true, false), Headline::KafkaUnreachable);
        // The WAL's state comes first.
        assert_eq!(headline(Some(Unready::WalFull), &starting, true, true), Headline::WalFull);
    }

    #[test]
    fn the_page_is_self_contained_and_reads_the_document_without_reloading() {
        for external in ["src=", "href=\"http", "url(", "@import"] {
            assert!(!PAGE.contains(external), "no external resource: {external}");
        }
        assert!(!PAGE.contains("http-equiv"), "no meta refresh");
        assert!(PAGE.contains("fetch(\"/status.json\""));
        assert!(!PAGE.contains("innerHTML"), "values are written with textContent");
    }
}
