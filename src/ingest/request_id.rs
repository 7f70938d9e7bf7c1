//! Request ids and timing: one id per HTTP request, on every log line about it and in its
//! answer; one latency observation per answer.
//!
//! # Contract
//! Every request through either router gets an id: the client's `X-Request-Id` when it is a
//! plain token (1 to [`MAX_LEN`] visible ASCII characters; a proxy or tracker that already
//! names its requests keeps its name), otherwise a new one (16 hex digits, unique within the
//! process and unlikely to repeat across processes). The request is handled inside a tracing
//! span `request{request_id=…}`, so every line logged about it carries the id, in text and in
//! JSON logs; and every answer, errors included, carries it back in `X-Request-Id`. Connections
//! refused before HTTP (over `--max-connections`) get a canned answer without one. How long
//! each answer took goes to `collector_http_request_duration_seconds{route, status}`, the route
//! being the routers' path the request asked for (`other` for any other path, so that unknown
//! paths cannot grow the label set; a route added to a router needs adding to [`route_label`],
//! which `tests/openapi.rs` checks for every documented path).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header, in requests and answers.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen id kept; a longer one is replaced (it would bloat every log line).
pub const MAX_LEN: usize = 128;

/// Middleware: names the request, handles it inside its span, and echoes the id.
pub async fn tag(req: Request, next: Next) -> Response {
    let id = req.headers().get(&X_REQUEST_ID).and_then(accepted).unwrap_or_else(generate);
    // At error level so that the span is enabled whenever any line about the request is (a
    // span's level decides only whether it exists; lines show their own level): with `--log
    // warn` an info span would vanish and take the id off the warnings inside it.
    let span = tracing::error_span!("request", request_id = %id.to_str().unwrap_or_default());
    let route = route_label(req.uri().path());
    let started = Instant::now();
    let mut response = next.run(req).instrument(span).await;
    crate::telemetry::http_request(route, response.status().as_u16(), started.elapsed());
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

/// The metric label of a request's route: one of the routers' own paths (all of them fixed
/// paths, so the request's path is its route), or `other`.
fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 7] = ["/collect", "/healthz", "/readyz", "/openapi.json", "/", "/status.json", "/metrics"];
    ROUTES.into_iter().find(|r| *r == path).unwrap_or("other")
}

/// The client's id, if it is a plain token.
fn accepted(value: &HeaderValue) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let plain = (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic);
    plain.then(|| value.clone())
}

/// A new id: a per-process random key hashed with a counter (SipHash with a random key, so the
/// ids are neither guessable in sequence nor likely to repeat across processes).
fn generate() -> HeaderValue {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEY.get_or_init(Default::default).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    HeaderValue::try_from(format!("{:016x}", hasher.finish())).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_plain_client_id_is_kept_and_anything_else_replaced() {
        for kept in ["abc", "0f1e-2d3c_4b5a.9", "trace:1/2", &"x".repeat(MAX_LEN)] {
            assert_eq!(accepted(&HeaderValue::from_str(kept).unwrap()).unwrap(), kept);
        }
        for refused in ["", "has space", "tab\there", &"x".repeat(MAX_LEN + 1)] {
            assert!(accepted(&HeaderValue::from_str(refused).unwrap()).is_none(), "{refused:?}");
        }
        // Bytes a header may carry but a log line should not (obs-text).
        assert!(accepted(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
    }

    #[test]
    fn generated_ids_are_sixteen_hex_digits_and_do_not_repeat() {
        let ids: HashSet<String> = (0..10_000).map(|_| generate().to_str().unwrap().to_string()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
