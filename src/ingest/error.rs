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
}
