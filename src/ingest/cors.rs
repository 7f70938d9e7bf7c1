//! CORS: which web pages may post events to `/collect` from a browser.
//!
//! # Contract
//! - No origin configured (the default): no CORS headers at all, as before. Browsers then keep
//!   pages of other sites from reading the answers, and from sending anything that needs a
//!   preflight (`Content-Type: application/json`, an `X-Api-Key` header).
//! - Origins configured (`--cors-origin`, each exactly `scheme://host[:port]`, or `*` for any):
//!   - a preflight (`OPTIONS /collect` with `Origin` and `Access-Control-Request-Method`) from
//!     an allowed origin is answered `204` with `Access-Control-Allow-Origin: <that origin>` (`*`
//!     when `*` is configured), `Vary: Origin`, `Access-Control-Allow-Methods: POST, OPTIONS`,
//!     `Access-Control-Allow-Headers` ([`ALLOW_HEADERS`]) and `Access-Control-Max-Age`
//!     ([`MAX_AGE_SECS`]);
//!   - every other answer to an allowed origin, errors included, carries
//!     `Access-Control-Allow-Origin`, `Vary: Origin` and `Access-Control-Expose-Headers:
//!     Retry-After, X-Request-Id`, so a page can read the JSON error, honour a 503's
//!     `Retry-After` and report the request's id;
//!   - a request (preflight or not) whose `Origin` is not allowed is answered
//!     `403 origin_not_allowed`, without CORS headers, before anything else is looked at: a
//!     page on another site cannot post. Refusing only its preflight would not be enough: a
//!     `text/plain` POST — `sendBeacon`'s — needs none;
//!   - requests without `Origin` (server-side trackers, curl) are not affected.
//!
//! Not a defence against clients other than browsers, which choose their `Origin` freely; API
//! keys are ([`super::auth`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::IngestError;

/// Request headers a page may send: everything `/collect` reads, and the key.
pub const ALLOW_HEADERS: &str =
    "content-type, content-encoding, idempotency-key, x-api-key, authorization, x-request-id";
/// How long a browser may cache a preflight answer (Chromium caps this at two hours anyway).
pub const MAX_AGE_SECS: u32 = 3600;

/// The configured origins. Default: none (no CORS).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Exact origins, lowercase (browsers send scheme and host lowercase).
    origins: Vec<String>,
    /// `*` was configured: any origin may post, and is answered `*`.
    any: bool,
}

impl Cors {
    /// Validates the configured origins.
    ///
    /// # Errors
    /// A sentence naming the first origin that is neither `*` nor `http(s)://host[:port]`
    /// (no path, no trailing slash). `null` (sandboxed pages, `file:`) is refused: any page can
    /// make its origin `null`.
    pub fn new<S: AsRef<str>>(origins: impl IntoIterator<Item = S>) -> Result<Cors, String> {
        let mut cors = Cors::default();
        for origin in origins {
            let origin = origin.as_ref().trim();
            if origin == "*" {
                cors.any = true;
                continue;
            }
            let lower = origin.to_ascii_lowercase();
            let host = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
            let valid = host
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)));
            if !valid {
                return Err(format!(
                    "--cors-origin {origin:?} is not an origin: write `*` or scheme://host[:port], e.g. https://shop.example (no path, no trailing slash)"
                ));
            }
            cors.origins.push(lower);
        }
        Ok(cors)
    }

    /// True when origins are configured; otherwise no request gets CORS treatment.
    pub fn is_enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, or `None` if that
    /// origin may not post.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let presented = origin.as_bytes();
        self.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(presented)).then(|| origin.clone())
    }
}

fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECS));
    response
}

/// Middleware around `/collect` applying the module's contract.
pub async fn guard(State(cors): State<Arc<Cors>>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).filter(|_| cors.is_enabled()).cloned() else {
        return next.run(req).await;
    };
    let Some(allow) = cors.allow(&origin) else {
        tracing::debug!(origin = %String::from_utf8_lossy(origin.as_bytes()), "Refused a request from an origin not in --cors-origin.");
        let mut refused =
            IngestError::OriginNotAllowed(String::from_utf8_lossy(origin.as_bytes()).into_owned()).into_response();
        refused.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
        return refused;
    };
    let preflight_request = is_preflight(&req);
    let mut response = if preflight_request { preflight() } else { next.run(req).await };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if !preflight_request {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after, x-request-id"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(cors: &Cors, origin: &str) -> Option<String> {
        cors.allow(&HeaderValue::from_str(origin).unwrap()).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn only_listed_origins_are_allowed_and_echoed_exactly() {
        let cors = Cors::new(["https://shop.example", "HTTP://localhost:3000"]).unwrap();
        assert!(cors.is_enabled());
        assert_eq!(allows(&cors, "https://shop.example").as_deref(), Some("https://shop.example"));
        assert_eq!(allows(&cors, "http://localhost:3000").as_deref(), Some("http://localhost:3000"));
        for other in [
            "https://evil.example",
            "http://shop.example",
            "https://shop.example:8443",
            "https://shop.example.evil.example",
            "https://sub.shop.example",
            "null",
        ] {
            assert_eq!(allows(&cors, other), None, "{other}");
        }
    }

    #[test]
    fn a_configured_star_allows_every_origin_with_star() {
        let cors = Cors::new(["*"]).unwrap();
        assert_eq!(allows(&cors, "https://anyone.example").as_deref(), Some("*"));
        assert_eq!(allows(&cors, "null").as_deref(), Some("*"));
    }

    #[test]
    fn nothing_configured_means_no_cors() {
        assert!(!Cors::new(Vec::<String>::new()).unwrap().is_enabled());
    }

    #[test]
    fn what_is_not_an_origin_refuses_to_boot() {
        for bad in ["shop.example", "https://shop.example/", "https://shop.example/path", "null", "ftp://x", "https://"]
        {
            let err = Cors::new([bad]).unwrap_err();
            assert!(err.contains("--cors-origin"), "{bad}: {err}");
        }
        assert!(Cors::new(["https://[::1]:8080", "http://127.0.0.1:8000"]).is_ok());
    }
}
