//! A `/collect` body, as the handler reads it: decoded (`ingest::decode_body`, identity and
//! gzip), then validated (`ingest::validate::validate` with the default limits). Asserts:
//! - decoding never yields more than the limit, and fails only as `invalid_gzip` or
//!   `decompressed_too_large`;
//! - an accepted body is within the limits, strict (no duplicate key, no raw control
//!   character, no `-0`, not too deep), read alike by serde_json, and transforms into exactly
//!   its events' rows ([`collector_fuzz::check_rows`]); sent gzipped (one member or two), it
//!   decodes back to itself byte for byte;
//! - a refusal has a code, a sentence, a JSON-pointer path and the right HTTP class; one the
//!   schema made (not a limit, not strictness) is the transform's refusal too, word for word.

#![no_main]

use std::io::Write;

use bytes::Bytes;
use collector::ingest::validate::validate;
use collector::ingest::{decode_body, IngestError};
use collector::schema::{strict, InvalidKind};
use collector::transform::Transformer;
use collector_fuzz::{check_rows, defaults};
use libfuzzer_sys::fuzz_target;

/// Codes only ingest gives: its limits, and strictness.
const INGEST_ONLY: &[&str] = &[
    "too_many_events",
    "ctx_too_large",
    "field_too_long",
    "rows_too_large",
    "duplicate_key",
    "control_character",
    "negative_zero",
    "too_deep",
];
const MALFORMED: &[&str] = &["invalid_json", "invalid_utf8", "control_character"];

fuzz_target!(|data: &[u8]| {
    let limit = defaults().server.body.max_decompressed_bytes;
    // Without Content-Encoding: the body is the input.
    let body = decode_body(Bytes::copy_from_slice(data), false, limit);
    match body {
        Ok(body) => {
            assert_eq!(&body[..], data);
            check_body(&body);
        }
        Err(e) => assert!(data.len() > limit, "{e}"),
    }
    // With `Content-Encoding: gzip`: the input is the gzip stream.
    match decode_body(Bytes::copy_from_slice(data), true, limit) {
        Ok(body) => {
            assert!(body.len() <= limit, "gunzipped {} bytes past the {limit}-byte limit", body.len());
            check_body(&body);
        }
        Err(IngestError::BadGzip(_) | IngestError::DecompressedTooLarge { .. }) => {}
        Err(other) => panic!("gzip decoding failed as {}: {other}", other.code()),
    }
});

/// Validates `raw` as the handler does and checks the verdict.
fn check_body(raw: &[u8]) {
    let limits = defaults().server.limits;
    let mut scratch = raw.to_vec();
    let verdict = validate(raw, &mut scratch, &limits);
    let mut rows = Vec::new();
    let transformed = Transformer::default().transform(raw, &mut rows);
    match verdict {
        Ok(events) => {
            assert!((1..=limits.max_events).contains(&events), "{events} events accepted");
            assert_eq!(strict::check(raw), Ok(()), "an accepted body is strict");
            assert_eq!(transformed, Ok(events), "an accepted body transforms into one row per event");
            check_rows(raw, &rows);
            let bytes: usize = rows.iter().map(|r| r.key.len() + r.value.len()).sum();
            assert!(bytes <= limits.max_row_bytes, "{bytes} bytes of rows accepted");
            assert!(rows.iter().all(|r| r.key.len() + r.value.len() <= limits.max_single_row_bytes()));
            resend_gzipped(raw);
        }
        Err(invalid) => {
            assert!(!invalid.code.is_empty() && !invalid.message.is_empty(), "{invalid:?}");
            assert!(invalid.path.is_empty() || invalid.path.starts_with('/'), "{invalid:?}");
            let malformed = MALFORMED.contains(&invalid.code);
            assert_eq!(invalid.kind == InvalidKind::Malformed, malformed, "{invalid:?}");
            if invalid.code == "control_character" {
                assert!(transformed.is_err(), "the transform read a body with a raw control character");
            } else if !INGEST_ONLY.contains(&invalid.code) {
                assert_eq!(transformed, Err(invalid), "ingest and the transform refuse alike");
            }
        }
    }
}

/// An accepted body sent gzipped, in one member or split over two, decodes to itself.
fn resend_gzipped(raw: &[u8]) {
    let limit = defaults().server.body.max_decompressed_bytes;
    let one = gzip(raw);
    assert_eq!(&decode_body(Bytes::from(one), true, limit).expect("gzip of an accepted body")[..], raw);
    let (a, b) = raw.split_at(raw.len() / 2);
    let two = [gzip(a), gzip(b)].concat();
    assert_eq!(&decode_body(Bytes::from(two), true, limit).expect("two gzip members")[..], raw);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}
