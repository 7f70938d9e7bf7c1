//! The OpenAPI document (`src/ingest/openapi.json`, served at `/openapi.json`) against the
//! code and against a running collector:
//! - it is a valid OpenAPI 3.1 document (the OpenAPI Initiative's schema, in
//!   `tests/fixtures/`), every `$ref` in it resolves and every schema in it compiles;
//! - it documents exactly the routes each router serves, on the listeners that serve them (read
//!   from the `.route(…)` calls of `src/ingest/server.rs`);
//! - real answers of the real binary, good and bad, match it: the status is one the document
//!   lists for that listener, method and path (or, for a path or method it does not serve, its
//!   `x-fallback-responses`), the content type is one it lists, every required header is there,
//!   headers and bodies validate against their schemas (JSON Schema 2020-12, by `jsonschema`).
//!
//! The error codes against `src/ingest/error.rs` are checked by the unit tests of
//! `src/ingest/openapi.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use jsonschema::{Draft, Registry, Validator};
use serde_json::{json, Value};

/// The document, as the binary embeds and serves it.
const DOCUMENT: &str = include_str!("../src/ingest/openapi.json");
/// Where the document is registered for `$ref`s into it.
const BASE: &str = "urn:collector:openapi";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Listener {
    Public,
    Admin,
}

impl Listener {
    fn name(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Admin => "admin",
        }
    }
}

/// An answer as received: status, headers (names lowercase), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        Answer { status, headers, body: response.bytes().await.unwrap().to_vec() }
    }

    /// Parses an HTTP/1.1 answer read off a socket (with `Content-Length`, as the collector sends).
    fn parse(raw: &[u8]) -> Answer {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head: {raw:?}"));
        let head = String::from_utf8_lossy(&raw[..split]);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| l.split_once(':').unwrap())
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer { status, headers, body: raw[split + 4..].to_vec() }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }
}

/// The keys of a path item that are operations.
const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Where the answers to one request are documented.
struct Documented {
    /// Pointer to the responses object.
    responses: String,
    /// The one status allowed (the fallback's `404` or `405`), when it is the fallback.
    only: Option<&'static str>,
    /// Whether this is a documented operation.
    operation: bool,
}

/// The document with a registry that resolves `$ref`s into it.
struct Spec {
    doc: Value,
    registry: Registry<'static>,
}

/// `pointer` with `segment` appended (RFC 6901 escaping).
fn child(pointer: &str, segment: &str) -> String {
    format!("{pointer}/{}", segment.replace('~', "~0").replace('/', "~1"))
}

impl Spec {
    fn load() -> Spec {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        let registry = Registry::new().add(BASE, doc.clone()).unwrap().prepare().unwrap();
        Spec { doc, registry }
    }

    /// A validator for the schema at `pointer` in the document.
    fn validator(&self, pointer: &str) -> Result<Validator, String> {
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .with_registry(&self.registry)
            .build(&json!({ "$ref": format!("{BASE}#{pointer}") }))
            .map_err(|e| format!("the schema at {pointer} does not compile: {e}"))
    }

    /// Follows local `$ref`s from the value at `pointer`: the value and where it is.
    fn resolve(&self, pointer: &str) -> (String, &Value) {
        let mut pointer = pointer.to_string();
        loop {
            let value = self.doc.pointer(&pointer).unwrap_or_else(|| panic!("{pointer} is not in the document"));
            match value.get("$ref").and_then(Value::as_str) {
                Some(target) => pointer = target.strip_prefix('#').expect("a local $ref").to_string(),
                None => return (pointer, value),
            }
        }
    }

    /// The listeners a path is served on: its own `servers`, else the document's.
    fn listeners(&self, path: &str) -> BTreeSet<Listener> {
        let servers = self.doc["paths"][path].get("servers").unwrap_or(&self.doc["servers"]);
        servers
            .as_array()
            .expect("servers is an array")
            .iter()
            .map(|s| match s["x-listener"].as_str() {
                Some("public") => Listener::Public,
                Some("admin") => Listener::Admin,
                other => panic!("a server of {path} has x-listener {other:?}"),
            })
            .collect()
    }

    /// Every documented operation: listener, method (uppercase), path.
    fn operations(&self) -> BTreeSet<(Listener, String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys().filter(|k| HTTP_METHODS.contains(&k.as_str())) {
                for listener in self.listeners(path) {
                    all.insert((listener, method.to_uppercase(), path.clone()));
                }
            }
        }
        all
    }

    /// Where the answers to `method path` on `listener` are documented: the operation's
    /// responses (a `HEAD` without its own operation is its `GET`'s), or the fallback for a path
    /// not served (only `404`) or a method not served there (only `405`).
    fn responses_for(&self, listener: Listener, method: &str, path: &str) -> Documented {
        let served = self.doc["paths"].get(path).is_some() && self.listeners(path).contains(&listener);
        let operation =
            |method: &str| Some(child(&child("/paths", path), method)).filter(|at| self.doc.pointer(at).is_some());
        let own = operation(&method.to_lowercase());
        let found = if method == "HEAD" { own.or_else(|| operation("get")) } else { own };
        match (served, found) {
            (true, Some(at)) => Documented { responses: child(&at, "responses"), only: None, operation: true },
            (true, None) => {
                Documented { responses: "/x-fallback-responses".into(), only: Some("405"), operation: false }
            }
            (false, _) => Documented { responses: "/x-fallback-responses".into(), only: Some("404"), operation: false },
        }
    }

    /// Checks `answer` to `method path` on `listener` against the document. Returns what does
    /// not match, and whether a documented operation answered.
    fn check(&self, listener: Listener, method: &str, path: &str, answer: &Answer) -> (Vec<String>, bool) {
        let what = format!("{method} {path} on the {} listener -> {}", listener.name(), answer.status);
        let mut wrong = Vec::new();
        let Documented { responses, only, operation } = self.responses_for(listener, method, path);
        let status = answer.status.to_string();
        if let Some(only) = only.filter(|only| *only != status) {
            wrong.push(format!("{what}: the document allows only {only} here"));
            return (wrong, operation);
        }
        if self.doc.pointer(&child(&responses, &status)).is_none() {
            wrong.push(format!("{what}: status {status} is not documented (at {responses})"));
            return (wrong, operation);
        }
        let (response, documented) = self.resolve(&child(&responses, &status));
        // Headers: the required ones are there; every documented one present matches its schema.
        for (name, _) in documented["headers"].as_object().into_iter().flatten() {
            let (header_at, header) = self.resolve(&child(&child(&response, "headers"), name));
            let Some(value) = answer.header(name) else {
                if header["required"] == true {
                    wrong.push(format!("{what}: the required header {name} is missing"));
                }
                continue;
            };
            let value = match header["schema"]["type"].as_str() {
                Some("integer") => value.parse::<i64>().map_or_else(|_| json!(value), |n| json!(n)),
                _ => json!(value),
            };
            match self.validator(&child(&header_at, "schema")) {
                Ok(v) if !v.is_valid(&value) => wrong.push(format!("{what}: header {name}: {value} breaks its schema")),
                Ok(_) => {}
                Err(e) => wrong.push(e),
            }
        }
        // Content: a documented media type, and a body that matches its schema.
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            if !answer.body.is_empty() {
                wrong.push(format!("{what}: a body where none is documented"));
            }
            return (wrong, operation);
        };
        let Some(content_type) = answer.header("content-type") else {
            wrong.push(format!("{what}: no Content-Type"));
            return (wrong, operation);
        };
        let essence = content_type.split(';').next().unwrap().trim().to_ascii_lowercase();
        if !content.contains_key(&essence) {
            wrong.push(format!("{what}: Content-Type {content_type} is not one of {:?}", content.keys()));
            return (wrong, operation);
        }
        if method == "HEAD" {
            if !answer.body.is_empty() {
                wrong.push(format!("{what}: a body in the answer to HEAD"));
            }
            return (wrong, operation);
        }
        let body = if essence.ends_with("json") {
            match serde_json::from_slice(&answer.body) {
                Ok(body) => body,
                Err(e) => {
                    wrong.push(format!("{what}: the body is not JSON ({e})"));
                    return (wrong, operation);
                }
            }
        } else {
            Value::String(String::from_utf8(answer.body.clone()).expect("a text body is UTF-8"))
        };
        let schema = child(&child(&child(&response, "content"), &essence), "schema");
        match self.validator(&schema) {
            Ok(v) => {
                for error in v.iter_errors(&body) {
                    wrong.push(format!("{what}: the body breaks {schema} at {}: {error}", error.instance_path()));
                }
            }
            Err(e) => wrong.push(e),
        }
        (wrong, operation)
    }
}

/// Every `$ref` in `value` (at `pointer`) that does not resolve within `doc`.
fn unresolved(doc: &Value, value: &Value, pointer: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    let target = v.as_str().unwrap_or_default();
                    if target.strip_prefix('#').is_none_or(|p| doc.pointer(p).is_none()) {
                        out.push(format!("{pointer}: $ref {target}"));
                    }
                } else {
                    unresolved(doc, v, &child(pointer, k), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                unresolved(doc, v, &format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Where every schema of the document is: each `schema` of a parameter, header or media type,
/// and each of `components/schemas`.
fn schemas(value: &Value, pointer: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let at = child(pointer, k);
                if k == "schema" || pointer == "/components/schemas" {
                    out.push(at);
                } else {
                    schemas(v, &at, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                schemas(v, &format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_valid_openapi_3_1_and_its_refs_and_schemas_resolve() {
    let spec = Spec::load();
    let oas: Value =
        serde_json::from_str(include_str!("fixtures/openapi-3.1-schema.json")).expect("the OpenAPI 3.1 schema");
    let validator = jsonschema::options().with_draft(Draft::Draft202012).build(&oas).expect("it compiles");
    let errors: Vec<String> = validator.iter_errors(&spec.doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "openapi.json breaks the OpenAPI 3.1 schema:\n{}", errors.join("\n"));

    let mut broken = Vec::new();
    unresolved(&spec.doc, &spec.doc, "", &mut broken);
    assert!(broken.is_empty(), "$refs that do not resolve:\n{}", broken.join("\n"));

    let mut all = Vec::new();
    schemas(&spec.doc, "", &mut all);
    assert!(all.len() > 20 && all.contains(&"/components/schemas/Error".to_string()), "{all:?}");
    let failed: Vec<String> = all.iter().filter_map(|at| spec.validator(at).err()).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));

    let ids: Vec<&str> = spec
        .doc
        .pointer("/paths")
        .unwrap()
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values().filter_map(|op| op["operationId"].as_str()))
        .collect();
    assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len(), "operationIds are unique: {ids:?}");
    assert_eq!(ids.len(), spec.operations().iter().map(|(_, m, p)| (m, p)).collect::<BTreeSet<_>>().len());
}

/// The routes of each router, read from `src/ingest/server.rs`: the `.route("…", …)` calls of
/// `router` (public), `admin_router` (admin) and `with_common_routes` (both).
fn routes_in_source() -> BTreeMap<String, BTreeSet<Listener>> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/ingest/server.rs")).unwrap();
    let source = source.split("#[cfg(test)]").next().unwrap();
    let source: String =
        source.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
    for unsupported in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
        assert!(!source.contains(unsupported), "server.rs uses {unsupported}: teach this test to read it");
    }
    let functions = [
        ("pub fn router(", vec![Listener::Public]),
        ("pub fn admin_router(", vec![Listener::Admin]),
        ("fn with_common_routes(", vec![Listener::Public, Listener::Admin]),
    ];
    let mut routes: BTreeMap<String, BTreeSet<Listener>> = BTreeMap::new();
    let mut seen = 0;
    for (signature, listeners) in &functions {
        let start = source.find(signature).unwrap_or_else(|| panic!("server.rs has no `{signature}`"));
        let rest = &source[start..];
        let end = ["\nfn ", "\npub fn ", "\nasync fn ", "\npub async fn "]
            .iter()
            .filter_map(|f| rest[1..].find(f).map(|e| e + 1))
            .min()
            .unwrap_or(rest.len());
        let body = &rest[..end];
        if *signature != "fn with_common_routes(" {
            assert!(body.contains("with_common_routes("), "`{signature}` no longer adds the common routes");
        }
        for (at, _) in body.match_indices(".route(") {
            let rest = body[at + ".route(".len()..].trim_start();
            let path = rest.strip_prefix('"').and_then(|r| r.split('"').next()).expect("a route's path is a literal");
            routes.entry(path.to_string()).or_default().extend(listeners);
            seen += 1;
        }
    }
    assert_eq!(seen, source.matches(".route(").count(), "server.rs adds routes outside the three router functions");
    routes
}

#[test]
fn every_route_of_either_router_is_documented_for_the_listeners_that_serve_it() {
    let spec = Spec::load();
    let served = routes_in_source();
    assert!(served.contains_key("/collect") && served.contains_key("/metrics"), "{served:?}");
    let documented: BTreeMap<String, BTreeSet<Listener>> =
        spec.doc["paths"].as_object().unwrap().keys().map(|path| (path.clone(), spec.listeners(path))).collect();
    assert_eq!(documented, served, "openapi.json's paths and listeners, and the routers' (server.rs)");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// A client that opens a connection per request. Many of the table's refusals come before the
/// body is read, and the server then closes the connection right after its answer: a pooled
/// connection reused at that moment fails the next request (a race of keep-alive, not a fault).
fn unpooled_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(0).build().unwrap()
}

const KEY: &str = "openapi-test-key-0123456789";
const SHOP: &str = "https://shop.example";

/// One request of the table: what is sent and what must come back.
struct Case {
    name: &'static str,
    listener: Listener,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn case(name: &'static str, listener: Listener, method: &'static str, path: &str, status: u16) -> Case {
    Case { name, listener, method, path: path.into(), headers: vec![], body: vec![], status, code: None }
}

impl Case {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }

    fn body(self, body: impl Into<Vec<u8>>) -> Case {
        Case { body: body.into(), ..self }
    }

    fn json(self, body: impl Into<Vec<u8>>) -> Case {
        self.header("content-type", "application/json").body(body)
    }

    fn keyed(self) -> Case {
        self.header("x-api-key", KEY)
    }

    fn code(self, code: &'static str) -> Case {
        Case { code: Some(code), ..self }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn batch(events: usize) -> String {
    let event = r#"{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test"}"#;
    let events = vec![event; events].join(",");
    format!(r#"{{"events":[{events}],"ctx":{{"browser":"Firefox","device":"Desktop","version":"126.0"}}}}"#)
}

/// Sends `head`, a raw HTTP/1.1 request whose body stops short of its `Content-Length`, and
/// returns the answer the collector sends when it gives up on the body.
fn stalled(addr: SocketAddr, head: String) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    Answer::parse(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_good_and_bad_match_the_document() {
    let spec = Spec::load();
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("keys"), format!("{KEY}\n")).unwrap();
    let wal = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--brokers",
        &format!("127.0.0.1:{}", free_port()),
        "--api-key-file",
        keys.path().join("keys").to_str().unwrap(),
        "--cors-origin",
        SHOP,
        "--max-events",
        "3",
        "--max-body-bytes",
        "20000",
        "--max-decompressed-bytes",
        "100000",
        "--max-in-flight",
        "1",
        "--body-timeout-ms",
        "1500",
        "--drain-timeout-ms",
        "200",
    ]
    .map(String::from)
    .to_vec();
    let c = Collector::start("serve", wal.path(), 0, &args);
    use Listener::{Admin, Public};

    let sample = SEED_SAMPLE.as_bytes().to_vec();
    let cases = vec![
        case("a valid batch", Public, "POST", "/collect", 200).json(sample.clone()).keyed(),
        case("the key as a bearer token", Public, "POST", "/collect", 200)
            .json(batch(3))
            .header("authorization", format!("Bearer {KEY}")),
        case("a beacon: text/plain, the key in the query", Public, "POST", &format!("/collect?api_key={KEY}"), 200)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(sample.clone()),
        case("gzip", Public, "POST", "/collect", 200).json(gzip(&sample)).keyed().header("content-encoding", "gzip"),
        case("an idempotent request", Public, "POST", "/collect", 200)
            .json(batch(2))
            .keyed()
            .header("idempotency-key", "order-1"),
        case("its retry", Public, "POST", "/collect", 200).json(batch(2)).keyed().header("idempotency-key", "order-1"),
        case("the key again with another body", Public, "POST", "/collect", 422)
            .json(batch(1))
            .keyed()
            .header("idempotency-key", "order-1")
            .code("idempotency_key_reused"),
        case("a malformed Idempotency-Key", Public, "POST", "/collect", 400)
            .json(sample.clone())
            .keyed()
            .header("idempotency-key", "k".repeat(256))
            .code("invalid_idempotency_key"),
        case("the client's request id", Public, "POST", "/collect", 200)
            .json(sample.clone())
            .keyed()
            .header("x-request-id", "tracker-42.a"),
        case("from an allowed origin", Public, "POST", "/collect", 200)
            .json(sample.clone())
            .keyed()
            .header("origin", SHOP),
        case("malformed JSON", Public, "POST", "/collect", 400).json("{not json").keyed().code("invalid_json"),
        case("not UTF-8", Public, "POST", "/collect", 400)
            .json(b"{\"events\":[\"\xff\"]}".to_vec())
            .keyed()
            .code("invalid_utf8"),
        case("a raw control character", Public, "POST", "/collect", 400)
            .json(SEED_SAMPLE.replace("user_test", "user\u{1}test"))
            .keyed()
            .code("control_character"),
        case("broken gzip", Public, "POST", "/collect", 400)
            .json("not gzip")
            .keyed()
            .header("content-encoding", "gzip")
            .code("invalid_gzip"),
        case("a wrong content type", Public, "POST", "/collect", 415)
            .keyed()
            .header("content-type", "application/xml")
            .code("unsupported_media_type"),
        case("a wrong encoding", Public, "POST", "/collect", 415)
            .json(sample.clone())
            .keyed()
            .header("content-encoding", "br")
            .code("unsupported_encoding"),
        case("too large", Public, "POST", "/collect", 413).json(vec![b' '; 30_000]).keyed().code("body_too_large"),
        case("a gzip bomb", Public, "POST", "/collect", 413)
            .json(gzip(&vec![b' '; 1_000_000]))
            .keyed()
            .header("content-encoding", "gzip")
            .code("decompressed_too_large"),
        case("too many events", Public, "POST", "/collect", 422).json(batch(4)).keyed().code("too_many_events"),
        case("no events", Public, "POST", "/collect", 422).json(r#"{"ctx":{}}"#).keyed().code("missing_field"),
        case("an empty batch", Public, "POST", "/collect", 422)
            .json(r#"{"events":[],"ctx":{"browser":"Firefox","device":"Desktop","version":"126.0"}}"#)
            .keyed()
            .code("empty_events"),
        case("no user_id", Public, "POST", "/collect", 422)
            .json(SEED_SAMPLE.replace(r#""user_id":"user_test","#, ""))
            .keyed()
            .code("missing_field"),
        case("a wrong event_time", Public, "POST", "/collect", 422)
            .json(SEED_SAMPLE.replace("1750867000000", "\"soon\""))
            .keyed()
            .code("invalid_field"),
        case("not an object", Public, "POST", "/collect", 422).json("[1]").keyed().code("invalid_type"),
        case("a key twice", Public, "POST", "/collect", 422)
            .json(SEED_SAMPLE.replace(r#""user_id":"user_test""#, r#""user_id":"a","user_id":"b""#))
            .keyed()
            .code("duplicate_key"),
        case("no API key", Public, "POST", "/collect", 401).json(sample.clone()).code("missing_api_key"),
        case("a wrong API key", Public, "POST", "/collect", 401)
            .json(sample.clone())
            .header("x-api-key", "wrong-key-0123456789abcdef")
            .code("invalid_api_key"),
        case("a refused origin", Public, "POST", "/collect", 403)
            .json(sample.clone())
            .keyed()
            .header("origin", "https://evil.example")
            .code("origin_not_allowed"),
        case("a preflight", Public, "OPTIONS", "/collect", 204)
            .header("origin", SHOP)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-api-key"),
        case("a preflight from a refused origin", Public, "OPTIONS", "/collect", 403)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .code("origin_not_allowed"),
        case("OPTIONS without a preflight", Public, "OPTIONS", "/collect", 405).code("method_not_allowed"),
        case("GET /collect", Public, "GET", "/collect", 405).code("method_not_allowed"),
        case("POST /healthz", Public, "POST", "/healthz", 405).code("method_not_allowed"),
        case("DELETE / on the admin listener", Admin, "DELETE", "/", 405).code("method_not_allowed"),
        case("an unknown path", Public, "GET", "/nope", 404).code("not_found"),
        case("the status page on the public listener", Public, "GET", "/", 404).code("not_found"),
        case("metrics on the public listener", Public, "GET", "/metrics", 404).code("not_found"),
        case("the status document on the public listener", Public, "GET", "/status.json", 404).code("not_found"),
        case("/collect on the admin listener", Admin, "POST", "/collect", 404)
            .json(sample.clone())
            .keyed()
            .code("not_found"),
        case("an unknown admin path", Admin, "GET", "/nope", 404).code("not_found"),
        case("healthz", Public, "GET", "/healthz", 200),
        case("healthz (admin)", Admin, "GET", "/healthz", 200),
        case("HEAD, answered like GET", Public, "HEAD", "/healthz", 200),
        case("readyz", Public, "GET", "/readyz", 200),
        case("readyz (admin)", Admin, "GET", "/readyz", 200),
        case("this document", Public, "GET", "/openapi.json", 200),
        case("this document (admin)", Admin, "GET", "/openapi.json", 200),
        case("the status page", Admin, "GET", "/", 200),
        case("the status page for a browser", Admin, "GET", "/", 200).header("accept", "text/html,*/*;q=0.8"),
        case("the status page as JSON", Admin, "GET", "/", 200).header("accept", "application/json"),
        case("the status page's document", Admin, "GET", "/status.json", 200),
        case("metrics", Admin, "GET", "/metrics", 200),
    ];

    let batch_schema = spec.validator("/components/schemas/Batch").unwrap();
    let http = unpooled_client();
    let mut wrong = Vec::new();
    let mut answered = BTreeSet::new();
    for case in &cases {
        let base = match case.listener {
            Listener::Public => c.url(&case.path),
            Listener::Admin => c.admin_url(&case.path),
        };
        let mut request = http.request(case.method.parse().unwrap(), base);
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let answer = Answer::of(request.body(case.body.clone()).send().await.unwrap()).await;
        let path = case.path.split('?').next().unwrap();
        if (answer.status, answer.code().as_deref()) != (case.status, case.code) {
            wrong.push(format!(
                "{}: expected {} {:?}, got {} {}",
                case.name,
                case.status,
                case.code,
                answer.status,
                answer.json()
            ));
        }
        let (mismatches, operation) = spec.check(case.listener, case.method, path, &answer);
        wrong.extend(mismatches.into_iter().map(|m| format!("{}: {m}", case.name)));
        if operation {
            answered.insert((case.listener, case.method.to_string(), path.to_string()));
        }
        // The request schema agrees with the collector: what it took is a Batch, and what it
        // refused as breaking the schema is not.
        let body = serde_json::from_slice::<Value>(&case.body);
        if let (Public, "POST", "/collect", Ok(body)) = (case.listener, case.method, path, body) {
            let valid = batch_schema.is_valid(&body);
            let schema_codes = ["invalid_type", "missing_field", "empty_events", "invalid_field"];
            if answer.status == 200 && !valid || case.code.is_some_and(|c| schema_codes.contains(&c)) && valid {
                wrong.push(format!("{}: the Batch schema calls this body valid: {valid}", case.name));
            }
        }
        if path == "/openapi.json" && answer.body != DOCUMENT.as_bytes() {
            wrong.push(format!("{}: /openapi.json is not the document byte for byte", case.name));
        }
    }

    // The echoed request id, a retry's receipt, and the allowed origin's CORS headers.
    let answer = Answer::of(
        http.post(c.url("/collect"))
            .header("content-type", "application/json")
            .header("x-api-key", KEY)
            .header("idempotency-key", "order-1")
            .header("x-request-id", "tracker-42.b")
            .header("origin", SHOP)
            .body(batch(2))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.header("x-request-id"), Some("tracker-42.b"));
    assert_eq!(answer.json()["duplicate"], true, "{:?}", answer.json());
    assert_eq!(answer.header("access-control-allow-origin"), Some(SHOP));
    wrong.extend(spec.check(Public, "POST", "/collect", &answer).0);

    // A body that stalls holds the only request slot (--max-in-flight 1): the next request is
    // refused as overloaded, and the stalled one times out.
    let addr = c.addr;
    let head = format!(
        "POST /collect HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"events\""
    );
    let slow = tokio::task::spawn_blocking(move || stalled(addr, head));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = Answer::of(
        http.post(c.url("/collect"))
            .header("content-type", "application/json")
            .header("x-api-key", KEY)
            .body(SEED_SAMPLE)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let timed_out = slow.await.unwrap();
    for (answer, status, code) in [(&busy, 503, "overloaded"), (&timed_out, 408, "request_timeout")] {
        assert_eq!((answer.status, answer.code().as_deref()), (status, Some(code)), "{:?}", answer.json());
        wrong.extend(spec.check(Public, "POST", "/collect", answer).0);
    }

    assert!(wrong.is_empty(), "answers that do not match openapi.json:\n{}", wrong.join("\n"));
    let missed: Vec<_> = spec.operations().difference(&answered).cloned().collect();
    assert!(missed.is_empty(), "documented operations this test never saw answer: {missed:?}");

    // Every documented path has its own route label in the request metrics.
    let metrics = http.get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for path in spec.doc["paths"].as_object().unwrap().keys() {
        assert!(metrics.contains(&format!("route=\"{path}\"")), "no route label {path} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_for_a_full_wal_and_too_many_connections_match_the_document() {
    let spec = Spec::load();
    let broker = format!("127.0.0.1:{}", free_port());
    // More free space kept than any disk has: the WAL counts as full from the start.
    let full_wal = ["--brokers", &broker, "--wal-min-free-mib", "100000000", "--drain-timeout-ms", "200"];
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("serve", wal.path(), 0, &full_wal.map(String::from));
    let mut wrong = Vec::new();
    {
        let http = client();
        let unready = Answer::of(http.get(c.url("/readyz")).send().await.unwrap()).await;
        assert_eq!((unready.status, unready.json()["reason"].as_str()), (503, Some("wal_full")));
        wrong.extend(spec.check(Listener::Public, "GET", "/readyz", &unready).0);
        let status =
            Answer::of(http.get(c.admin_url("/")).header("accept", "application/json").send().await.unwrap()).await;
        assert_eq!(status.json()["ready"], false);
        wrong.extend(spec.check(Listener::Admin, "GET", "/", &status).0);
        let full = Answer::of(
            http.post(c.url("/collect"))
                .header("content-type", "application/json")
                .body(SEED_SAMPLE)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((full.status, full.code().as_deref()), (503, Some("wal_full")), "{:?}", full.json());
        wrong.extend(spec.check(Listener::Public, "POST", "/collect", &full).0);
    }

    // --max-connections 1 (a collector of its own, so the requests above never race for the
    // one connection): an idle connection holds it; the next is refused before HTTP.
    let one = ["--brokers", &broker, "--max-connections", "1", "--drain-timeout-ms", "200"];
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("serve", wal.path(), 0, &one.map(String::from));
    let addr = c.addr;
    let refused = tokio::task::spawn_blocking(move || {
        let mut held = vec![TcpStream::connect(addr).unwrap()];
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            if !raw.is_empty() {
                return Answer::parse(&raw);
            }
            held.push(s);
        }
        panic!("no connection was refused");
    })
    .await
    .unwrap();
    assert_eq!((refused.status, refused.code().as_deref()), (503, Some("too_many_connections")));
    for (method, path) in [("POST", "/collect"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json")] {
        wrong.extend(spec.check(Listener::Public, method, path, &refused).0);
    }
    assert!(wrong.is_empty(), "answers that do not match openapi.json:\n{}", wrong.join("\n"));
}
