//! Reading a request body: content type and encoding checks, size limits, gzip decoding.

use std::io::Read;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::IngestError;

/// Size and time limits for bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes accepted on the wire (compressed, if gzip).
    pub max_body_bytes: usize,
    /// Most bytes a gzip body may expand to; protects against gzip bombs.
    pub max_decompressed_bytes: usize,
    /// How long a client may take to send its body.
    pub body_timeout: Duration,
}

/// Checks the headers, reads the body within the limits and returns the decoded bytes.
///
/// # Errors
/// 415 for an unsupported `Content-Type`/`Content-Encoding`, 413 over a limit, 408 when the body
/// is too slow, 400 for a broken body or gzip stream.
pub async fn read(headers: &HeaderMap, body: Body, limits: BodyLimits) -> Result<Bytes, IngestError> {
    check_content_type(headers)?;
    let gzip = is_gzip(headers)?;
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    {
        if len > limits.max_body_bytes as u64 {
            return Err(IngestError::BodyTooLarge { limit: limits.max_body_bytes });
        }
    }
    let collect = Limited::new(body, limits.max_body_bytes).collect();
    let raw = match tokio::time::timeout(limits.body_timeout, collect).await {
        Err(_) => return Err(IngestError::BodyTimeout { secs: limits.body_timeout.as_secs() }),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(IngestError::BodyTooLarge { limit: limits.max_body_bytes })
        }
        Ok(Err(e)) => return Err(IngestError::BodyRead(e.to_string())),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    decode_body(raw, gzip, limits.max_decompressed_bytes)
}

/// The body as the collector stores it: `raw` as read off the wire, gunzipped when `gzip`,
/// at most `max_decompressed_bytes` either way. Pure (no HTTP), so it can be fuzzed alone.
///
/// # Errors
/// 413 past `max_decompressed_bytes` (a gzip bomb stops there, never expanding further), 400 for
/// a broken gzip stream.
pub fn decode_body(raw: Bytes, gzip: bool, max_decompressed_bytes: usize) -> Result<Bytes, IngestError> {
    if gzip {
        gunzip(&raw, max_decompressed_bytes).map(Bytes::from)
    } else if raw.len() > max_decompressed_bytes {
        Err(IngestError::DecompressedTooLarge { limit: max_decompressed_bytes })
    } else {
        Ok(raw)
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), IngestError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // Lenient: a missing Content-Type is treated as JSON; the parser decides.
        return Ok(());
    };
    let value = value.to_str().map_err(|_| IngestError::UnsupportedMediaType("<not ASCII>".into()))?;
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(IngestError::UnsupportedMediaType(value.to_string())),
    }
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, IngestError> {
    let mut gzip = false;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| IngestError::UnsupportedEncoding("<not ASCII>".into()))?;
        for coding in value.split(',').map(|c| c.trim().to_ascii_lowercase()) {
            match coding.as_str() {
                "gzip" | "x-gzip" if !gzip => gzip = true,
                "identity" | "" => {}
                _ => return Err(IngestError::UnsupportedEncoding(value.to_string())),
            }
        }
    }
    Ok(gzip)
}

/// Decodes gzip (including concatenated members), refusing to expand past `limit` bytes.
fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(raw).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| IngestError::BadGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(IngestError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gunzip_round_trips() {
        assert_eq!(gunzip(&gz(b"hello"), 100).unwrap(), b"hello");
    }

    #[test]
    fn gzip_bomb_is_stopped_at_the_limit() {
        let bomb = gz(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 20 * 1024, "the bomb should compress well");
        assert!(matches!(gunzip(&bomb, 1024 * 1024), Err(IngestError::DecompressedTooLarge { .. })));
    }

    #[test]
    fn broken_gzip_is_a_client_error() {
        assert!(matches!(gunzip(b"not gzip at all", 100), Err(IngestError::BadGzip(_))));
    }
}
