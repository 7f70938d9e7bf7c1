//! `GET /openapi.json`: the OpenAPI 3.1 document of both listeners, served by both.
//!
//! The document is written by hand (`openapi.json` beside this file) and served byte for byte:
//! it is the contract clients read, reviewed as such, and nothing is spent building it at run
//! time. Written by hand, it could drift from the code; tests hold it there instead:
//! - here: it parses, names this build's version, and its error codes are exactly
//!   [`super::error::CODES`], each under the status it comes with, and its readiness reasons
//!   exactly [`Unready`]'s;
//! - `tests/openapi.rs`: it is a valid OpenAPI 3.1 document whose every `$ref` resolves; it
//!   documents exactly the routes of each router; and the answers of a running collector, good
//!   and bad, match it (status, content type, headers, body by JSON Schema).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Serves [`DOCUMENT`].
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::*;
    use crate::ingest::error::CODES;
    use crate::ingest::Unready;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// Follows `{"$ref": "#/…"}` within the document.
    fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(target) => {
                let pointer = target.strip_prefix('#').expect("a local $ref");
                resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("{target} does not resolve")))
            }
            None => value,
        }
    }

    /// Every `error.code` enum in `schema` (through `$ref`, `allOf` and `oneOf`): the codes an
    /// answer with this schema can carry, or `None` when it is not an error.
    fn error_codes(doc: &Value, schema: &Value) -> Option<BTreeSet<String>> {
        let schema = resolve(doc, schema);
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            // The narrowest enum wins: `Error`'s lists every code, a response narrows it.
            return parts.iter().filter_map(|p| error_codes(doc, p)).min_by_key(BTreeSet::len);
        }
        if let Some(parts) = schema.get("oneOf").and_then(Value::as_array) {
            let codes: Vec<_> = parts.iter().filter_map(|p| error_codes(doc, p)).collect();
            return (!codes.is_empty()).then(|| codes.into_iter().flatten().collect());
        }
        let codes = schema.pointer("/properties/error/properties/code/enum")?.as_array()?;
        Some(codes.iter().map(|c| c.as_str().expect("codes are strings").to_string()).collect())
    }

    #[test]
    fn the_document_is_json_and_names_this_builds_version() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"), "openapi.json's info.version");
    }

    #[test]
    fn the_error_schema_lists_exactly_the_codes_the_collector_emits() {
        let doc = document();
        let listed: BTreeSet<String> = CODES.iter().map(|(code, _)| code.to_string()).collect();
        let documented = error_codes(&doc, &doc["components"]["schemas"]["Error"]).unwrap();
        assert_eq!(documented, listed, "the Error schema's code enum and error.rs's CODES");
    }

    #[test]
    fn each_code_is_documented_under_the_status_it_comes_with_and_no_other() {
        let doc = document();
        let mut documented: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        let operations = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values().filter_map(|op| op.get("responses")));
        for responses in operations.chain([&doc["x-fallback-responses"]]) {
            for (status, response) in responses.as_object().unwrap() {
                let Ok(status) = status.parse::<u16>() else { continue };
                for media in resolve(&doc, response)["content"].as_object().into_iter().flat_map(|c| c.values()) {
                    for code in error_codes(&doc, &media["schema"]).unwrap_or_default() {
                        documented.entry(code).or_default().insert(status);
                    }
                }
            }
        }
        let listed: BTreeMap<String, BTreeSet<u16>> =
            CODES.iter().map(|(code, status)| (code.to_string(), BTreeSet::from([status.as_u16()]))).collect();
        assert_eq!(documented, listed, "code -> statuses in openapi.json's responses, and in error.rs's CODES");
    }

    #[test]
    fn the_readiness_reasons_are_documented() {
        let doc = document();
        let documented: BTreeSet<&str> = doc["components"]["schemas"]["Unready"]["properties"]["reason"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let all = [Unready::Draining, Unready::WalFull, Unready::WalUnavailable, Unready::KafkaUnavailable];
        // No wildcard: a new reason does not compile until it is listed in `all`.
        for unready in all {
            match unready {
                Unready::Draining | Unready::WalFull | Unready::WalUnavailable | Unready::KafkaUnavailable => {}
            }
        }
        assert_eq!(documented, BTreeSet::from(all.map(Unready::reason)));
    }
}
