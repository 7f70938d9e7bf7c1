//! The one place where ingest errors become HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use thiserror::Error;

use crate::schema::{Invalid, InvalidKind};
use crate::wal::WalError;

/// Everything that can go wrong with one `/collect` request.
///
/// Policy: client errors (4xx) are the client's to fix and are never retried by us; 503s are
/// retryable and carry `Retry-After` (a failed or stalled disk is one: `wal_unavailable`); a
/// 500 is a bug of ours.
/// Each variant has a stable machine-readable `code`.
#[derive(Debug, Error)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(Invalid),
    #[error("the body is larger than the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    #[error("the body decompresses to more than the {limit}-byte limit")]
    DecompressedTooLarge { limit: usize },
    #[error("unsupported Content-Type {0:?}; send application/json or text/plain")]
    UnsupportedMediaType(String),
    #[error("unsupported Content-Encoding {0:?}; send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("the body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("the body could not be read: {0}")]
    BodyRead(String),
    #[error("the body did not arrive within {secs}s")]
    BodyTimeout { secs: u64 },
    #[error("the Idempotency-Key header must be 1 to {0} printable ASCII characters")]
    BadIdempotencyKey(usize),
    #[error("this Idempotency-Key was already used for a different body")]
    IdempotencyKeyReused,
    #[error("the write-ahead log is full while Kafka catches up; retry later")]
    WalFull,
    #[error("the write-ahead log is not available; nothing was stored, retry later")]
    WalUnavailable,
    #[error("the collector is shutting down; retry against another instance or later")]
    Draining,
    #[error("too many requests in flight; retry later")]
    Overloaded,
    #[error("{0}")]
    Wal(WalError),
    #[error("Kafka is not reachable, and this collector answers only once Kafka has a batch (--ack kafka); nothing was stored, retry later")]
    KafkaUnavailable,
    #[error("the batch is stored (seq {seq}) and will be delivered, but Kafka did not confirm it within {waited_ms} ms; retry with the same Idempotency-Key to get its receipt without storing it twice")]
    KafkaUnconfirmed { seq: u64, waited_ms: u64 },
    #[error("Kafka refused the batch (seq {seq}) for what it is, three times; it was set aside in the collector's quarantine for an operator")]
    KafkaRefused { seq: u64 },
    #[error("this endpoint needs an API key: send it in the X-Api-Key header, as Authorization: Bearer, or (sendBeacon) as ?api_key=")]
    MissingApiKey,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("requests from the origin {0:?} are not allowed")]
    OriginNotAllowed(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
}

/// Every `code` an error answer can carry, with the status it comes with: the variants' own
/// codes, the body codes of [`Invalid`] (the schema's, [`crate::schema::strict`]'s and ingest's
/// limits), and `too_many_connections`, which the accept loop answers before any HTTP is read.
///
/// The one list clients can rely on: `openapi.json` lists the same codes, each under its status,
/// and tests hold the three together (this list, the code that emits codes, the document). A
/// new code is added here, in `openapi.json`, and in the README's table.
pub const CODES: &[(&str, StatusCode)] = &[
    ("invalid_json", StatusCode::BAD_REQUEST),
    ("invalid_utf8", StatusCode::BAD_REQUEST),
    ("control_character", StatusCode::BAD_REQUEST),
    ("invalid_gzip", StatusCode::BAD_REQUEST),
    ("body_read_failed", StatusCode::BAD_REQUEST),
    ("invalid_idempotency_key", StatusCode::BAD_REQUEST),
    ("missing_api_key", StatusCode::UNAUTHORIZED),
    ("invalid_api_key", StatusCode::UNAUTHORIZED),
    ("origin_not_allowed", StatusCode::FORBIDDEN),
    ("not_found", StatusCode::NOT_FOUND),
    ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
    ("request_timeout", StatusCode::REQUEST_TIMEOUT),
    ("body_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("decompressed_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ("unsupported_encoding", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ("invalid_type", StatusCode::UNPROCESSABLE_ENTITY),
    ("missing_field", StatusCode::UNPROCESSABLE_ENTITY),
    ("empty_events", StatusCode::UNPROCESSABLE_ENTITY),
    ("invalid_field", StatusCode::UNPROCESSABLE_ENTITY),
    ("duplicate_key", StatusCode::UNPROCESSABLE_ENTITY),
    ("negative_zero", StatusCode::UNPROCESSABLE_ENTITY),
    ("too_deep", StatusCode::UNPROCESSABLE_ENTITY),
    ("too_many_events", StatusCode::UNPROCESSABLE_ENTITY),
    ("ctx_too_large", StatusCode::UNPROCESSABLE_ENTITY),
    ("field_too_long", StatusCode::UNPROCESSABLE_ENTITY),
    ("rows_too_large", StatusCode::UNPROCESSABLE_ENTITY),
    ("idempotency_key_reused", StatusCode::UNPROCESSABLE_ENTITY),
    ("kafka_refused", StatusCode::UNPROCESSABLE_ENTITY),
    ("wal_error", StatusCode::INTERNAL_SERVER_ERROR),
    ("wal_full", StatusCode::SERVICE_UNAVAILABLE),
    ("wal_unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("draining", StatusCode::SERVICE_UNAVAILABLE),
    ("overloaded", StatusCode::SERVICE_UNAVAILABLE),
    ("too_many_connections", StatusCode::SERVICE_UNAVAILABLE),
    ("kafka_unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("kafka_unconfirmed", StatusCode::SERVICE_UNAVAILABLE),
];

impl IngestError {
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Invalid(i) => i.code,
            IngestError::BodyTooLarge { .. } => "body_too_large",
            IngestError::DecompressedTooLarge { .. } => "decompressed_too_large",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngestError::BadGzip(_) => "invalid_gzip",
            IngestError::BodyRead(_) => "body_read_failed",
            IngestError::BodyTimeout { .. } => "request_timeout",
            IngestError::BadIdempotencyKey(_) => "invalid_idempotency_key",
            IngestError::IdempotencyKeyReused => "idempotency_key_reused",
            IngestError::WalFull => "wal_full",
            IngestError::WalUnavailable => "wal_unavailable",
            IngestError::Draining => "draining",
            IngestError::Overloaded => "overloaded",
            IngestError::Wal(e) if e.is_retryable() => "wal_unavailable",
            IngestError::Wal(_) => "wal_error",
            IngestError::KafkaUnavailable => "kafka_unavailable",
            IngestError::KafkaUnconfirmed { .. } => "kafka_unconfirmed",
            IngestError::KafkaRefused { .. } => "kafka_refused",
            IngestError::MissingApiKey => "missing_api_key",
            IngestError::InvalidApiKey => "invalid_api_key",
            IngestError::OriginNotAllowed(_) => "origin_not_allowed",
            IngestError::NotFound(_) => "not_found",
            IngestError::MethodNotAllowed => "method_not_allowed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Invalid(i) if i.kind == InvalidKind::Malformed => StatusCode::BAD_REQUEST,
            IngestError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::BodyTooLarge { .. } | IngestError::DecompressedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngestError::BadGzip(_) | IngestError::BodyRead(_) => StatusCode::BAD_REQUEST,
            IngestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IngestError::BadIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            IngestError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::Draining
            | IngestError::WalFull
            | IngestError::WalUnavailable
            | IngestError::Overloaded
            | IngestError::KafkaUnavailable
            | IngestError::KafkaUnconfirmed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // Sending it again would be refused again.
            IngestError::KafkaRefused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::Wal(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Wal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IngestError::MissingApiKey | IngestError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            IngestError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            IngestError::NotFound(_) => StatusCode::NOT_FOUND,
            IngestError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
}

impl IngestError {
    /// The sentence a client sees. Errors of the collector's own machinery (the WAL, the
    /// connection) are logged in full and described to the client without their internal
    /// text: paths, engine messages and library details are no client's business.
    fn public_message(&self) -> String {
        match self {
            IngestError::Wal(e) => {
                // The group commit logs the failure once, at error level, for all its requests.
                tracing::debug!(error = %e, "A request failed in the WAL; the client is told it was not stored.");
                if e.is_retryable() {
                    "the write-ahead log is not available; nothing was stored, retry later".into()
                } else {
                    "the write-ahead log could not store the request; nothing was stored".into()
                }
            }
            IngestError::BodyRead(detail) => {
                tracing::debug!(%detail, "Reading a request body failed.");
                "the request body could not be read".into()
            }
            other => other.to_string(),
        }
    }
}

impl IngestError {
    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750's form, which also fits `X-Api-Key`).
    fn challenge(&self) -> Option<&'static str> {
        match self {
            IngestError::MissingApiKey => Some(r#"Bearer realm="collector""#),
            IngestError::InvalidApiKey => Some(r#"Bearer realm="collector", error="invalid_token""#),
            _ => None,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        debug_assert!(CODES.contains(&(self.code(), status)), "{} {status} is not in CODES", self.code());
        let (message, path) = match &self {
            IngestError::Invalid(i) => (i.message.clone(), Some(i.path.as_str())),
            other => (other.public_message(), None),
        };
        crate::telemetry::request_rejected(self.code());
        let body = serde_json::to_vec(&ErrorBody { error: ErrorDetail { code: self.code(), message, path } })
            .expect("serialising an error body cannot fail");
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(challenge) = self.challenge() {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::wal::WalError;

    async fn body_of(e: IngestError) -> (StatusCode, String) {
        let response = e.into_response();
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn errors_of_the_collectors_machinery_carry_no_internal_text() {
        let internal = "IO error: /var/lib/collector/sled/blobs/17: Input/output error (os error 5)";
        let (status, body) = body_of(IngestError::Wal(WalError::Storage(internal.into()))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("wal_unavailable") && !body.contains("/var/lib") && !body.contains("os error"), "{body}");
        let (status, body) = body_of(IngestError::Wal(WalError::Config(internal.into()))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("wal_error") && !body.contains("/var/lib"), "{body}");
        let (status, body) = body_of(IngestError::Wal(WalError::Closed)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("wal_unavailable"), "{body}");
        let (_, body) = body_of(IngestError::BodyRead("hyper::Error(Body, Os { code: 104 })".into())).await;
        assert!(body.contains("body_read_failed") && !body.contains("hyper"), "{body}");
    }

    #[tokio::test]
    async fn a_refused_key_is_a_401_with_a_challenge_and_a_refused_origin_a_403() {
        for (e, code, challenge) in [
            (IngestError::MissingApiKey, "missing_api_key", r#"Bearer realm="collector""#),
            (IngestError::InvalidApiKey, "invalid_api_key", r#"Bearer realm="collector", error="invalid_token""#),
        ] {
            let response = e.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], challenge);
            let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            let body = String::from_utf8(bytes.to_vec()).unwrap();
            assert!(body.contains(code), "{body}");
        }
        let response = IngestError::OriginNotAllowed("https://evil.example".into()).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    /// One error of each variant (both codes of `Wal`). The match gives each variant a number and
    /// has no wildcard: a new variant does not compile until it is numbered here, and the test
    /// below fails until it has a sample too.
    fn one_of_each() -> Vec<IngestError> {
        use crate::schema::Invalid;
        let samples = vec![
            IngestError::Invalid(Invalid::schema("missing_field", "/events", "`events` is required")),
            IngestError::BodyTooLarge { limit: 1 },
            IngestError::DecompressedTooLarge { limit: 1 },
            IngestError::UnsupportedMediaType("application/xml".into()),
            IngestError::UnsupportedEncoding("br".into()),
            IngestError::BadGzip("corrupt deflate stream".into()),
            IngestError::BodyRead("connection reset".into()),
            IngestError::BodyTimeout { secs: 1 },
            IngestError::BadIdempotencyKey(255),
            IngestError::IdempotencyKeyReused,
            IngestError::WalFull,
            IngestError::WalUnavailable,
            IngestError::Draining,
            IngestError::Overloaded,
            IngestError::Wal(WalError::Closed),
            IngestError::Wal(WalError::Config("unusable".into())),
            IngestError::MissingApiKey,
            IngestError::InvalidApiKey,
            IngestError::OriginNotAllowed("https://evil.example".into()),
            IngestError::NotFound("/nope".into()),
            IngestError::MethodNotAllowed,
            IngestError::KafkaUnavailable,
            IngestError::KafkaUnconfirmed { seq: 1, waited_ms: 10 },
            IngestError::KafkaRefused { seq: 1 },
        ];
        let numbered: std::collections::BTreeSet<u8> = samples
            .iter()
            .map(|e| match e {
                IngestError::Invalid(_) => 0,
                IngestError::BodyTooLarge { .. } => 1,
                IngestError::DecompressedTooLarge { .. } => 2,
                IngestError::UnsupportedMediaType(_) => 3,
                IngestError::UnsupportedEncoding(_) => 4,
                IngestError::BadGzip(_) => 5,
                IngestError::BodyRead(_) => 6,
                IngestError::BodyTimeout { .. } => 7,
                IngestError::BadIdempotencyKey(_) => 8,
                IngestError::IdempotencyKeyReused => 9,
                IngestError::WalFull => 10,
                IngestError::WalUnavailable => 11,
                IngestError::Draining => 12,
                IngestError::Overloaded => 13,
                IngestError::Wal(_) => 14,
                IngestError::MissingApiKey => 15,
                IngestError::InvalidApiKey => 16,
                IngestError::OriginNotAllowed(_) => 17,
                IngestError::NotFound(_) => 18,
                IngestError::MethodNotAllowed => 19,
                IngestError::KafkaUnavailable => 20,
                IngestError::KafkaUnconfirmed { .. } => 21,
                IngestError::KafkaRefused { .. } => 22,
            })
            .collect();
        assert_eq!(numbered, (0..=22).collect(), "a variant has no sample");
        samples
    }

    /// The body codes written in the source, with their status where the source says it: every
    /// `Invalid::schema("code", …)` (a 422) and every `Invalid { kind, code: "code", … }`
    /// literal (400 for `InvalidKind::Malformed`, else 422), and codes counted or answered
    /// outside [`IngestError`] (`request_rejected("code")`, a canned `"code":"code"` body).
    /// Test code (`#[cfg(test)]` onwards, `tests.rs`) is skipped.
    fn codes_in_source() -> Vec<(String, Option<StatusCode>, String)> {
        let mut found = Vec::new();
        let mut folders = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap();
                let file = path.display().to_string();
                let literal_after = |at: usize| -> Option<String> {
                    let rest = code[at..].trim_start().strip_prefix('"')?;
                    Some(rest[..rest.find('"')?].to_string())
                };
                for (at, _) in code.match_indices("schema(") {
                    if let Some(name) = literal_after(at + "schema(".len()) {
                        found.push((name, Some(StatusCode::UNPROCESSABLE_ENTITY), file.clone()));
                    }
                }
                for (at, _) in code.match_indices("code: \"") {
                    let name = literal_after(at + "code: ".len()).unwrap();
                    let literal = &code[code[..at].rfind("Invalid {").unwrap_or(0)..at];
                    let status = if literal.contains("InvalidKind::Malformed") {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::UNPROCESSABLE_ENTITY
                    };
                    found.push((name, Some(status), file.clone()));
                }
                for (at, _) in code.match_indices("request_rejected(") {
                    if let Some(name) = literal_after(at + "request_rejected(".len()) {
                        found.push((name, None, file.clone()));
                    }
                }
                for (at, _) in code.match_indices(r#"\"code\":\""#) {
                    let rest = &code[at + r#"\"code\":\""#.len()..];
                    found.push((rest[..rest.find('\\').unwrap()].to_string(), None, file.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn every_code_an_answer_can_carry_is_listed_once_with_its_status() {
        let listed: BTreeMap<&str, StatusCode> = CODES.iter().copied().collect();
        assert_eq!(listed.len(), CODES.len(), "a code is listed twice");
        let mut emitted = BTreeSet::new();
        for e in one_of_each() {
            assert_eq!(listed.get(e.code()), Some(&e.status()), "{e:?}: its code and status must be in CODES");
            emitted.insert(e.code().to_string());
        }
        let in_source = codes_in_source();
        assert!(
            in_source.iter().any(|(code, ..)| code == "duplicate_key"),
            "the scan found no body code: {in_source:?}"
        );
        for (code, status, file) in in_source {
            let listed_status = listed.get(code.as_str());
            assert!(listed_status.is_some(), "{file} emits {code:?}, which is not in CODES");
            if let Some(status) = status {
                assert_eq!(listed_status, Some(&status), "{file}: {code:?} comes with {status}");
            }
            emitted.insert(code);
        }
        let never: Vec<&str> = listed.keys().filter(|code| !emitted.contains(**code)).copied().collect();
        assert!(never.is_empty(), "CODES lists codes nothing emits: {never:?}");
    }
}
