//! The HTTP server: the public and admin routes, the `/collect` handler, and an accept loop
//! with connection timeouts and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Request, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::auth::{Client, ClientId};
use super::request_id;
use super::state::{IngestState, ServerOptions};
use super::validate::EventLimits;
use super::{ack, body, cors, openapi, status, validate, IngestError};
use crate::schema::Invalid;
use crate::wal::record::{self, Entry};
use crate::wal::{Appended, IdempotencyKey};

/// The 200 answer to `/collect`: sent only once the request is durable in the WAL.
#[derive(Debug, Serialize)]
struct Receipt {
    status: &'static str,
    /// WAL sequence number; also carried in the raw Kafka message's headers.
    seq: u64,
    events: usize,
    /// Present (true) when an `Idempotency-Key` retry was recognised and nothing new stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// The request's `Idempotency-Key` in the client's `scope`, with a fingerprint of the body it
/// came with (128 bits of its SHA-256).
fn idempotency_key(headers: &HeaderMap, scope: Vec<u8>, body: &[u8]) -> Result<Option<IdempotencyKey>, IngestError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(IngestError::BadIdempotencyKey(MAX_KEY_LEN));
    }
    Ok(Some(IdempotencyKey::new(scope, key.to_vec(), body)))
}

/// Whose `Idempotency-Key`s a request's key is matched against: keys of different scopes never
/// meet, so one client can neither see nor claim another's key.
///
/// The one place where the client's identity becomes a scope: its API key's [`ClientId`]
/// (stable across restarts and key-file edits, not secret) as `client:<16 hex digits>`, or the
/// empty scope for a request without an API key (`/collect` open), which all such requests
/// share. The prefix keeps every identified scope apart from the anonymous one.
fn client_scope(client: Option<&ClientId>) -> Vec<u8> {
    match client {
        None => Vec::new(),
        Some(id) => format!("client:{id}").into_bytes(),
    }
}

/// The public router: `POST /collect` (behind CORS and API keys, when configured), `/healthz`,
/// `/readyz` and `/openapi.json`. Anything else, the status page and `/metrics` included, is a
/// JSON 404. Every answer carries an `X-Request-Id` ([`request_id`]).
pub fn router(state: Arc<IngestState>) -> Router {
    // The CORS guard wraps every answer of /collect, its 405s included (hence the method
    // router's own fallback), and sees preflights (OPTIONS) before they become 405s.
    let cors = Arc::new(state.options.cors.clone());
    let collect = post(collect).fallback(method_not_allowed).layer(middleware::from_fn_with_state(cors, cors::guard));
    with_common_routes(Router::new().route("/collect", collect), state)
}

/// The admin router: the status page `/` (and its document `/status.json`), `/metrics`,
/// `/healthz`, `/readyz` and `/openapi.json`; nothing that takes data. It reports on the same
/// state as the public router.
pub fn admin_router(state: Arc<IngestState>) -> Router {
    let routes = Router::new()
        .route("/", get(status::home))
        .route("/status.json", get(status::document))
        .route("/metrics", get(status::metrics));
    with_common_routes(routes, state)
}

/// What both routers add to their own routes: `/healthz`, `/readyz`, `/openapi.json`, the JSON
/// 404 and 405 fallbacks, and request ids (the outermost layer, so that every answer, CORS
/// refusals and 404s included, carries one).
///
/// Every route of either router is documented in `openapi.json`: `tests/openapi.rs` reads the
/// `.route(…)` calls of this file and fails on one the document does not list.
fn with_common_routes(routes: Router<Arc<IngestState>>, state: Arc<IngestState>) -> Router {
    routes
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(request_id::tag))
        .with_state(state)
}

async fn collect(
    State(state): State<Arc<IngestState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    // Checked before the body is read: a request without a valid key costs no read. The
    // caller's `ClientId` (`None` while /collect is open) scopes its Idempotency-Keys.
    Client(client): Client,
    // The whole request rather than axum's `HeaderMap` extractor, which clones every header.
    request: Request<Body>,
) -> Result<Json<Receipt>, IngestError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    // Backpressure before anything is read: a bounded number of requests in flight (each holds
    // at most one body), and the WAL quota.
    let in_flight = state.in_flight.clone().try_acquire_owned().map_err(|_| IngestError::Overloaded)?;
    if let Some(unready) = state.unready() {
        return Err(unready.into());
    }
    let raw = body::read(headers, body, state.options.body).await?;
    // The quota again, counting the bodies ahead of this one that are still being appended;
    // this body is counted too until its append is done.
    let reservation = state.reserve(raw.len())?;
    let peer = peer.to_string();
    let (events, frame) =
        frame_request(&raw, &state.options.limits, crate::now_ms(), &peer).map_err(IngestError::Invalid)?;
    let key = idempotency_key(headers, client_scope(client.as_ref()), &raw)?;
    let (seq, duplicate) = match state.writer.append(frame, key).await.map_err(IngestError::Wal)? {
        Appended::Stored(seq) => (seq, false),
        Appended::Duplicate(seq) => (seq, true),
        Appended::KeyReused => return Err(IngestError::IdempotencyKeyReused),
    };
    // The body is in the WAL: what bounds the memory of bodies is free before any wait for Kafka.
    drop((raw, reservation, in_flight));
    // A duplicate waits too: its first attempt may have been answered `kafka_unconfirmed`.
    ack::confirmed(state.options.ack, &state.flush, seq).await?;
    if duplicate {
        crate::telemetry::request_deduplicated();
    } else {
        crate::telemetry::request_accepted(events);
        state.accepted.add(events);
    }
    Ok(Json(Receipt { status: "ok", seq, events, duplicate }))
}

/// What `/collect` does with a body once it is read and decoded, before the WAL: validate it
/// against `limits` and frame it as the record to append. Returns the number of events and the
/// frame. No HTTP and no I/O, so the `ingest` criterion bench runs exactly the handler's steps.
///
/// # Errors
/// The [`Invalid`] of [`validate::validate`]; nothing is framed then.
pub fn frame_request(
    raw: &[u8],
    limits: &EventLimits,
    received_at_ms: u64,
    client: &str,
) -> Result<(usize, Vec<u8>), Invalid> {
    // simd-json rewrites its input: validate a scratch copy, store the original bytes.
    let mut scratch = raw.to_vec();
    let events = validate::validate(raw, &mut scratch, limits)?;
    Ok((events, record::encode(&Entry { received_at_ms, client, payload: raw })))
}

async fn not_found(uri: Uri) -> IngestError {
    IngestError::NotFound(uri.path().to_string())
}

async fn method_not_allowed() -> IngestError {
    IngestError::MethodNotAllowed
}

/// The answer to a connection over `--max-connections`.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 92\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections; retry later\"}}";

async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to `grace`) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: &ServerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (header_timeout, grace) = (options.header_timeout, options.shutdown_grace);
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Answered and closed at once: a flood of connections costs no more than this.
            crate::telemetry::request_rejected("too_many_connections");
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move { Ok::<Response, Infallible>(app.oneshot(req).await.into_response()) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "A connection ended with an error.");
            }
            drop(permit);
        });
    }
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    drop(listener);
    info!(%addr, "Stopped accepting connections; waiting for in-flight requests.");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!(
            %addr,
            grace_ms = grace.as_millis() as u64,
            "Some connections were still open after the grace period; closing them."
        );
    }
}
