//! Hostile input, proven (issue 7, item 10): a table of hostile requests against the real
//! binary and a real Kafka. Each gets its documented status and code; the good request sent
//! after each one still succeeds; and at the end `collect-topic1` holds exactly the good
//! requests — nothing hostile reached Kafka.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use common::{assert_exactly_once, kcat_ids, Collector, Topics, SEED_SAMPLE};

/// Limits small enough that every case is cheap.
const LIMITS: [&str; 14] = [
    "--max-events",
    "3",
    "--max-field-bytes",
    "64",
    "--max-ctx-bytes",
    "256",
    "--max-row-bytes-per-request",
    "600",
    "--max-body-bytes",
    "8192",
    "--max-decompressed-bytes",
    "16384",
    "--drain-timeout-ms",
    "5000",
];

const CTX: &str = r#"{"browser":"Firefox","device":"Desktop","version":"126.0"}"#;

/// A request with these events and `CTX`.
fn request(events: &[&str]) -> Vec<u8> {
    format!(r#"{{"events":[{}],"ctx":{CTX}}}"#, events.join(",")).into_bytes()
}

/// An event with `field` (a raw JSON fragment, or empty) added to a valid one.
fn event_with(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"event_type":"hostile","event_time":1750867000000,"user_id":"u"{sep}{extra}}}"#)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// One hostile request: what it is, its headers, its body, and the answer it must get.
struct Case {
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Whether the valid API key is sent along (every case but those about the key).
    with_key: bool,
}

const JSON: (&str, &str) = ("content-type", "application/json");
/// The collector's one API key, and the one origin its CORS allow-list has.
const KEY: &str = "hostile-test-key-0123456789";
const ORIGIN: &str = "https://shop.example";

fn case(name: &'static str, body: Vec<u8>, status: u16, code: &'static str) -> Case {
    with_headers(name, vec![JSON], body, status, code)
}

fn with_headers(
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
) -> Case {
    Case { name, headers, body, status, code, with_key: true }
}

fn without_key(
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    code: &'static str,
) -> Case {
    Case { name, headers, body: request(&[&event_with("")]), status, code, with_key: false }
}

fn cases() -> Vec<Case> {
    let long = "x".repeat(65);
    let many_events: Vec<String> = (0..4).map(|_| event_with("")).collect();
    let many: Vec<&str> = many_events.iter().map(String::as_str).collect();
    let deep = format!(r#"{{"events":[{}],"ctx":{CTX}}}"#, "[".repeat(2000) + &"]".repeat(2000));
    let big_ctx = format!(r#"{{"events":[{}],"ctx":{{"browser":"{}"}}}}"#, event_with(""), "b".repeat(300));
    let rows_flood = {
        let e = event_with(&format!(r#""product_id":"{}""#, "p".repeat(60)));
        format!(
            r#"{{"events":[{e},{e},{e}],"ctx":{{"browser":"{}","device":"{}","version":"{}"}}}}"#,
            "b".repeat(60),
            "d".repeat(60),
            "v".repeat(60)
        )
    };
    let bomb = gzip(&vec![b' '; 5_000_000]);
    vec![
        // Not JSON, or not UTF-8.
        case("empty body", vec![], 400, "invalid_json"),
        case("truncated JSON", br#"{"events":[{"event_type":"a""#.to_vec(), 400, "invalid_json"),
        case("trailing garbage", [request(&[&event_with("")]), b"}}".to_vec()].concat(), 400, "invalid_json"),
        case("invalid UTF-8", b"{\"events\":[\"\xff\xfe\"]}".to_vec(), 400, "invalid_utf8"),
        case("lone surrogate escape", request(&[&event_with(r#""product_id":"\ud800""#)]), 400, "invalid_json"),
        case("NaN literal", request(&[&event_with(r#""product_id":NaN"#)]), 400, "invalid_json"),
        case("nesting simd-json cannot read", deep.into_bytes(), 400, "invalid_json"),
        case(
            "nesting serde_json cannot read",
            request(&[&event_with(&format!(r#""x":{}1{}"#, "[".repeat(200), "]".repeat(200)))]),
            422,
            "too_deep",
        ),
        case("raw control character", request(&[&event_with("\"product_id\":\"a\u{1}b\"")]), 400, "control_character"),
        case("raw newline in a string", request(&[&event_with("\"product_id\":\"a\nb\"")]), 400, "control_character"),
        // Shape of the request.
        case("a JSON array", b"[1,2,3]".to_vec(), 422, "invalid_type"),
        case("a JSON string", br#""events""#.to_vec(), 422, "invalid_type"),
        case("null", b"null".to_vec(), 422, "invalid_type"),
        case("no events", format!(r#"{{"ctx":{CTX}}}"#).into_bytes(), 422, "missing_field"),
        case("events not an array", format!(r#"{{"events":{{}},"ctx":{CTX}}}"#).into_bytes(), 422, "invalid_type"),
        case("empty events", request(&[]), 422, "empty_events"),
        case("too many events", request(&many), 422, "too_many_events"),
        case("an event that is a number", request(&["42"]), 422, "invalid_type"),
        case(
            "ctx not an object",
            format!(r#"{{"events":[{}],"ctx":[]}}"#, event_with("")).into_bytes(),
            422,
            "invalid_type",
        ),
        // Fields of an event.
        case("missing event_type", request(&[r#"{"event_time":1,"user_id":"u"}"#]), 422, "missing_field"),
        case("empty event_type", request(&[r#"{"event_type":"","event_time":1,"user_id":"u"}"#]), 422, "invalid_field"),
        case(
            "event_type a number",
            request(&[r#"{"event_type":7,"event_time":1,"user_id":"u"}"#]),
            422,
            "invalid_field",
        ),
        case("missing event_time", request(&[r#"{"event_type":"a","user_id":"u"}"#]), 422, "missing_field"),
        case(
            "event_time a word",
            request(&[r#"{"event_type":"a","event_time":"soon","user_id":"u"}"#]),
            422,
            "invalid_field",
        ),
        case(
            "event_time a float",
            request(&[r#"{"event_type":"a","event_time":1.5,"user_id":"u"}"#]),
            422,
            "invalid_field",
        ),
        case(
            "event_time overflowing 64 bits (simd-json refuses such numbers)",
            request(&[r#"{"event_type":"a","event_time":99999999999999999999999,"user_id":"u"}"#]),
            400,
            "invalid_json",
        ),
        case(
            "event_time -0 (parsers read it as 0 or as -0.0)",
            request(&[r#"{"event_type":"a","event_time":-0,"user_id":"u"}"#]),
            422,
            "negative_zero",
        ),
        case("missing user_id", request(&[r#"{"event_type":"a","event_time":1}"#]), 422, "missing_field"),
        case("null user_id", request(&[r#"{"event_type":"a","event_time":1,"user_id":null}"#]), 422, "missing_field"),
        case("empty user_id", request(&[r#"{"event_type":"a","event_time":1,"user_id":""}"#]), 422, "invalid_field"),
        case(
            "user_id an object",
            request(&[r#"{"event_type":"a","event_time":1,"user_id":{"id":1}}"#]),
            422,
            "invalid_field",
        ),
        case("product_id a number", request(&[&event_with(r#""product_id":5"#)]), 422, "invalid_field"),
        // Readings that differ between parsers.
        case(
            "duplicate key in an event",
            request(&[r#"{"event_type":"a","event_type":"b","event_time":1,"user_id":"u"}"#]),
            422,
            "duplicate_key",
        ),
        case(
            "duplicate key in ctx",
            format!(r#"{{"events":[{}],"ctx":{{"browser":"a","browser":"b"}}}}"#, event_with("")).into_bytes(),
            422,
            "duplicate_key",
        ),
        case(
            "duplicate top-level key",
            format!(r#"{{"events":[{e}],"events":[{e}],"ctx":{CTX}}}"#, e = event_with("")).into_bytes(),
            422,
            "duplicate_key",
        ),
        case(
            "duplicate key spelt with an escape",
            request(&[r#"{"event_type":"a","event\u005ftype":"b","event_time":1,"user_id":"u"}"#]),
            422,
            "duplicate_key",
        ),
        // Amplification and size.
        case(
            "a field over the limit",
            request(&[&format!(r#"{{"event_type":"a","event_time":1,"user_id":"{long}"}}"#)]),
            422,
            "field_too_long",
        ),
        case("ctx over the limit", big_ctx.into_bytes(), 422, "ctx_too_large"),
        case("rows over the limit", rows_flood.into_bytes(), 422, "rows_too_large"),
        case("body over the limit", vec![b' '; 9000], 413, "body_too_large"),
        with_headers("gzip bomb", vec![JSON, ("content-encoding", "gzip")], bomb, 413, "decompressed_too_large"),
        with_headers(
            "broken gzip",
            vec![JSON, ("content-encoding", "gzip")],
            b"\x1f\x8bnot gzip".to_vec(),
            400,
            "invalid_gzip",
        ),
        with_headers(
            "unknown encoding",
            vec![JSON, ("content-encoding", "br")],
            request(&[&event_with("")]),
            415,
            "unsupported_encoding",
        ),
        with_headers(
            "XML content type",
            vec![("content-type", "application/xml")],
            b"<a/>".to_vec(),
            415,
            "unsupported_media_type",
        ),
        // Idempotency keys.
        with_headers(
            "idempotency key too long",
            vec![JSON, ("idempotency-key", Box::leak("k".repeat(300).into_boxed_str()))],
            request(&[&event_with("")]),
            400,
            "invalid_idempotency_key",
        ),
        with_headers(
            "idempotency key with a control character",
            vec![JSON, ("idempotency-key", "a\tb")],
            request(&[&event_with("")]),
            400,
            "invalid_idempotency_key",
        ),
        // Access.
        without_key("no API key", vec![JSON], 401, "missing_api_key"),
        without_key("a wrong API key", vec![JSON, ("x-api-key", "not-the-key-0123456789")], 401, "invalid_api_key"),
        without_key(
            "a wrong bearer token",
            vec![JSON, ("authorization", "Bearer not-the-key-0123456789")],
            401,
            "invalid_api_key",
        ),
        without_key("an empty API key", vec![JSON, ("x-api-key", "")], 401, "missing_api_key"),
        with_headers(
            "a page of another origin",
            vec![JSON, ("origin", "https://evil.example")],
            request(&[&event_with("")]),
            403,
            "origin_not_allowed",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_its_code_harms_nothing_and_never_reaches_kafka() {
    let topics = Topics::new(&common::brokers());
    let wal = tempfile::tempdir().unwrap();
    let mut args = topics.args("serve");
    args.extend(LIMITS.map(String::from));
    args.extend(["--api-keys", KEY, "--cors-origin", ORIGIN].map(String::from));
    let c = Collector::start("serve", wal.path(), 0, &args);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let cases = cases();
    assert!(cases.len() >= 40, "the issue asks for at least 40 hostile requests; {} here", cases.len());

    let mut good = HashSet::new();
    let mut wrong = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let mut req = http.post(c.url("/collect")).body(case.body.clone());
        for (k, v) in &case.headers {
            req = req.header(*k, *v);
        }
        if case.with_key {
            req = req.header("x-api-key", KEY);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{}: no answer: {e}", case.name));
        let status = r.status().as_u16();
        let json: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{}: not JSON: {e}", case.name));
        let code = json["error"]["code"].as_str().unwrap_or_default().to_string();
        if (status, code.as_str()) != (case.status, case.code) {
            wrong.push(format!("{}: expected {} {}, got {status} {json}", case.name, case.status, case.code));
        }
        // The next good request is unaffected.
        let id = format!("good-{n}");
        let body = SEED_SAMPLE.replace("product_view", &id);
        let next = http.post(c.url("/collect")).header("content-type", "application/json").header("x-api-key", KEY);
        let r = next.header("origin", ORIGIN).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "the good request after {:?}", case.name);
        good.insert(id);
    }
    assert!(wrong.is_empty(), "{} of {} cases answered otherwise:\n{}", wrong.len(), cases.len(), wrong.join("\n"));

    // Kafka has every good request once and nothing else.
    let (brokers, raw) = (topics.brokers.clone(), topics.raw.clone());
    let expected = good.clone();
    tokio::task::spawn_blocking(move || {
        assert_exactly_once(&brokers, &raw, &expected, Duration::from_secs(60), "good requests between hostile ones");
        let ids = kcat_ids(&brokers, &raw);
        let extra: Vec<&String> = ids.keys().filter(|id| !expected.contains(*id)).collect();
        assert!(extra.is_empty(), "hostile requests reached Kafka: {extra:?}");
    })
    .await
    .unwrap();
    drop(c);
}
