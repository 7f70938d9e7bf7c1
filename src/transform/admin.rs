//! The admin listener of a worker run alone (`collector transform`): `/metrics` (the worker's
//! throughput, batch durations, failures, dead letters and consumer lag per partition),
//! `/healthz`, and `/readyz` (unready once the worker is stopping). A worker takes no HTTP
//! traffic, so this is all it serves; `collector run` and `serve` show the same metrics on their
//! own admin listener.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::watch;

#[derive(Clone)]
struct Admin {
    metrics: PrometheusHandle,
    /// True once the worker is stopping (a signal, or a failure).
    stopping: watch::Receiver<bool>,
}

/// The worker's admin routes; `stopping` turns `/readyz` unready.
pub fn router(metrics: PrometheusHandle, stopping: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { Json(json!({"status": "alive"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": {"code": "not_found", "message": "this listener serves /metrics, /healthz and /readyz"}}))) })
        .with_state(Admin { metrics, stopping })
}

async fn metrics_page(State(admin): State<Admin>) -> Response {
    ([(header::CONTENT_TYPE, crate::telemetry::METRICS_CONTENT_TYPE)], admin.metrics.render()).into_response()
}

async fn readyz(State(admin): State<Admin>) -> Response {
    if *admin.stopping.borrow() {
        let body = Json(json!({"ready": false, "reason": "stopping"}));
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], body).into_response();
    }
    Json(json!({"ready": true})).into_response()
}
