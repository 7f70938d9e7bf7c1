//! The event schema: what a `/collect` body is, owned by neither HTTP nor the transform.
//!
//! # Contract
//! In: a JSON document in a scratch buffer. Out: a borrowed [`Request`] (events, context,
//! user ids) or an [`Invalid`] naming the first problem with a JSON pointer. Ingest parses with
//! it to accept or reject, applying its own HTTP limits between the two phases
//! ([`Envelope::parse`], then [`Envelope::validate`]); the transform parses with it to read what
//! ingest accepted. No limits live here: whatever ingest's limits were when a request was
//! accepted, the transform can always read it.
//!
//! The schema (see the brief): `{"events": [event, …], "ctx": {…}}`. Each event has a non-empty
//! string `event_type`, an integer `event_time` in milliseconds since the epoch (an all-digit
//! string is accepted and normalised to the integer), a `user_id` that is a non-empty string or
//! an integer, and an optional string `product_id` (`null` counts as absent). `ctx` is an object
//! with string `browser`, `device` and `version`. Unknown fields anywhere are allowed; they stay
//! in the raw message because the raw topic carries the body byte for byte.
//!
//! simd-json parses in place and rewrites its input, so callers pass a scratch copy and keep
//! the original bytes. Strings in the result borrow from that copy (simd-json unescapes them in
//! place), so a parsed request allocates only its vector of events and the parser's tape.

pub mod strict;

use std::borrow::Cow;
use std::fmt;

use simd_json::{ErrorType, Node, StaticNode};

/// A parsed, valid request. Borrows from the scratch buffer it was parsed from.
#[derive(Debug, PartialEq)]
pub struct Request<'a> {
    pub events: Vec<Event<'a>>,
    pub ctx: Ctx<'a>,
}

#[derive(Debug, PartialEq)]
pub struct Event<'a> {
    pub event_type: Cow<'a, str>,
    /// Normalised to an integer even when it was sent as an all-digit string.
    pub event_time: i64,
    pub user_id: UserId<'a>,
    pub product_id: Option<Cow<'a, str>>,
}

/// `user_id` as sent: the row keeps its JSON type.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum UserId<'a> {
    Str(Cow<'a, str>),
    Int(i128),
}

impl fmt::Display for UserId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserId::Str(s) => f.write_str(s),
            UserId::Int(i) => write!(f, "{i}"),
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct Ctx<'a> {
    pub browser: Cow<'a, str>,
    pub device: Cow<'a, str>,
    pub version: Cow<'a, str>,
}

/// What is wrong with a body, with a JSON-pointer `path` to the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub kind: InvalidKind,
    /// Stable machine-readable code, e.g. `invalid_field`.
    pub code: &'static str,
    pub message: String,
    /// JSON pointer (RFC 6901) to the field; empty for the whole document.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// Not JSON, or not UTF-8: HTTP 400.
    Malformed,
    /// JSON, but not the schema: HTTP 422.
    Schema,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.code, self.message)
        } else {
            write!(f, "{} at {}: {}", self.code, self.path, self.message)
        }
    }
}

impl Invalid {
    /// A schema violation (HTTP 422): JSON, but not what the schema asks for.
    pub fn schema(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid { kind: InvalidKind::Schema, code, message: message.into(), path: path.into() }
    }
}

fn schema(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid::schema(code, path, message)
}

/// Parses `scratch` in place and validates it.
///
/// # Errors
/// [`Invalid`] naming the first problem found.
pub fn parse_request(scratch: &mut [u8]) -> Result<Request<'_>, Invalid> {
    Envelope::parse(scratch)?.validate()
}

/// A body parsed as far as its `events` array: the first phase of [`parse_request`], so that
/// ingest can apply its event limit before the events are validated one by one.
///
/// The body is kept as simd-json's tape (one flat vector of nodes; strings borrow from the
/// scratch buffer) and read by index: no map is built per object and nothing is copied, which
/// made parsing a 100-event body about twice as fast as a tree of `BorrowedValue`s (whose maps
/// hash every key). Where an object repeats a key the last value counts, as in such a tree;
/// ingest refuses repeated keys anyway ([`strict`]).
pub struct Envelope<'a> {
    tape: Vec<Node<'a>>,
    /// Index of the `events` array's node.
    events: usize,
    /// Index of the `ctx` value's node, when there is one.
    ctx: Option<usize>,
}

impl<'a> Envelope<'a> {
    /// Parses `scratch` in place; checks that it is an object with a non-empty `events` array.
    ///
    /// # Errors
    /// [`Invalid`]: malformed JSON or UTF-8, or a missing, mistyped or empty `events`.
    pub fn parse(scratch: &'a mut [u8]) -> Result<Self, Invalid> {
        let tape = simd_json::to_tape(scratch).map_err(|e| match e.error() {
            ErrorType::InvalidUtf8 => Invalid {
                kind: InvalidKind::Malformed,
                code: "invalid_utf8",
                message: "the body is not valid UTF-8".into(),
                path: String::new(),
            },
            _ => Invalid {
                kind: InvalidKind::Malformed,
                code: "invalid_json",
                message: format!("the body is not valid JSON: {e}"),
                path: String::new(),
            },
        })?;
        let tape = tape.0;
        if !matches!(tape[0], Node::Object { .. }) {
            return Err(schema(
                "invalid_type",
                "",
                format!("the body must be a JSON object, not {}", type_name(&tape[0])),
            ));
        }
        let [events, ctx] = fields(&tape, 0, ["events", "ctx"]);
        let events = match events.map(|i| (i, &tape[i])) {
            None | Some((_, Node::Static(StaticNode::Null))) => {
                return Err(schema("missing_field", "/events", "`events` is required"));
            }
            Some((_, Node::Array { len: 0, .. })) => {
                return Err(schema("empty_events", "/events", "`events` must contain at least one event"));
            }
            Some((i, Node::Array { .. })) => i,
            Some((_, other)) => {
                return Err(schema(
                    "invalid_type",
                    "/events",
                    format!("`events` must be an array, not {}", type_name(other)),
                ));
            }
        };
        Ok(Envelope { tape, events, ctx })
    }

    /// How many events the body carries (at least one).
    pub fn len(&self) -> usize {
        match self.tape[self.events] {
            Node::Array { len, .. } => len,
            _ => unreachable!("`events` was checked to be an array"),
        }
    }

    /// About how many bytes `ctx` takes as JSON (unknown fields included; 0 when absent).
    pub fn ctx_bytes(&self) -> usize {
        self.ctx.map_or(0, |i| json_bytes(&self.tape, i))
    }

    /// Always false: [`Envelope::parse`] refuses an empty `events`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The second phase: validates `ctx` and every event.
    ///
    /// # Errors
    /// [`Invalid`] naming the first field that breaks the schema.
    pub fn validate(self) -> Result<Request<'a>, Invalid> {
        let tape = &self.tape;
        let ctx = parse_ctx(tape, self.ctx)?;
        let mut events = Vec::with_capacity(self.len());
        let mut at = self.events + 1;
        for i in 0..self.len() {
            events.push(parse_event(tape, i, at)?);
            at += span(&tape[at]);
        }
        Ok(Request { events, ctx })
    }
}

/// How many nodes the value at a node takes on the tape, itself included.
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// The keys and value indices of the object whose node is at `at`.
fn entries<'t, 'a>(tape: &'t [Node<'a>], at: usize) -> impl Iterator<Item = (&'a str, usize)> + 't {
    let len = match tape[at] {
        Node::Object { len, .. } => len,
        _ => 0,
    };
    let mut next = at + 1;
    (0..len).map(move |_| {
        let key = match tape[next] {
            Node::String(key) => key,
            _ => unreachable!("an object's keys are strings"),
        };
        let value = next + 1;
        next = value + span(&tape[value]);
        (key, value)
    })
}

/// Where the values of `names` are in the object at `at` (the last one where a key repeats).
fn fields<const N: usize>(tape: &[Node<'_>], at: usize, names: [&str; N]) -> [Option<usize>; N] {
    let mut found = [None; N];
    for (key, value) in entries(tape, at) {
        if let Some(n) = names.iter().position(|name| *name == key) {
            found[n] = Some(value);
        }
    }
    found
}

/// A field's node, with JSON `null` read as absent.
fn present<'t, 'a>(tape: &'t [Node<'a>], at: Option<usize>) -> Option<&'t Node<'a>> {
    at.map(|i| &tape[i]).filter(|node| !matches!(node, Node::Static(StaticNode::Null)))
}

fn parse_ctx<'a>(tape: &[Node<'a>], at: Option<usize>) -> Result<Ctx<'a>, Invalid> {
    let at = match (at, present(tape, at)) {
        (_, None) => return Err(schema("missing_field", "/ctx", "`ctx` is required")),
        (Some(at), Some(Node::Object { .. })) => at,
        (_, Some(other)) => {
            return Err(schema("invalid_type", "/ctx", format!("`ctx` must be an object, not {}", type_name(other))))
        }
    };
    let names = ["browser", "device", "version"];
    let found = fields(tape, at, names);
    let field = |n: usize| -> Result<Cow<'a, str>, Invalid> {
        let name = names[n];
        let path = format!("/ctx/{name}");
        match present(tape, found[n]) {
            None => Err(schema("missing_field", path, format!("`ctx.{name}` is required"))),
            Some(Node::String(s)) => Ok(Cow::Borrowed(*s)),
            Some(other) => {
                Err(schema("invalid_field", path, format!("`ctx.{name}` must be a string, not {}", type_name(other))))
            }
        }
    };
    Ok(Ctx { browser: field(0)?, device: field(1)?, version: field(2)? })
}

/// The event at index `i` of `events`, whose node is at `at`.
fn parse_event<'a>(tape: &[Node<'a>], i: usize, at: usize) -> Result<Event<'a>, Invalid> {
    if !matches!(tape[at], Node::Object { .. }) {
        return Err(schema(
            "invalid_type",
            format!("/events/{i}"),
            format!("an event must be an object, not {}", type_name(&tape[at])),
        ));
    }
    let [event_type_at, event_time_at, user_id_at, product_id_at] =
        fields(tape, at, ["event_type", "event_time", "user_id", "product_id"]);
    let path = |name: &str| format!("/events/{i}/{name}");
    Ok(Event {
        event_type: event_type(present(tape, event_type_at), || path("event_type"))?,
        event_time: event_time(present(tape, event_time_at), || path("event_time"))?,
        user_id: user_id(present(tape, user_id_at), || path("user_id"))?,
        product_id: product_id(present(tape, product_id_at), || path("product_id"))?,
    })
}

/// `event_type`: a non-empty string. `path` names the field in errors.
fn event_type<'a>(value: Option<&Node<'a>>, path: impl Fn() -> String) -> Result<Cow<'a, str>, Invalid> {
    match value {
        None => Err(schema("missing_field", path(), "`event_type` is required")),
        Some(Node::String(s)) if !s.is_empty() => Ok(Cow::Borrowed(*s)),
        Some(Node::String(_)) => Err(schema("invalid_field", path(), "`event_type` must not be empty")),
        Some(other) => {
            Err(schema("invalid_field", path(), format!("`event_type` must be a string, not {}", type_name(other))))
        }
    }
}

/// `event_time`: milliseconds since the epoch, an integer or a string of digits.
fn event_time(value: Option<&Node<'_>>, path: impl Fn() -> String) -> Result<i64, Invalid> {
    let v = value.ok_or_else(|| schema("missing_field", path(), "`event_time` is required"))?;
    parse_event_time(v).ok_or_else(|| {
        schema(
            "invalid_field",
            path(),
            format!(
                "`event_time` must be a non-negative integer of milliseconds since the epoch (or a string of digits), not {}",
                describe(v)
            ),
        )
    })
}

/// `user_id`: a non-empty string or an integer, kept as sent.
fn user_id<'a>(value: Option<&Node<'a>>, path: impl Fn() -> String) -> Result<UserId<'a>, Invalid> {
    match value {
        None => Err(schema("missing_field", path(), "`user_id` is required")),
        Some(Node::String(s)) if !s.is_empty() => Ok(UserId::Str(Cow::Borrowed(*s))),
        Some(Node::Static(StaticNode::I64(n))) => Ok(UserId::Int(*n as i128)),
        Some(Node::Static(StaticNode::U64(n))) => Ok(UserId::Int(*n as i128)),
        Some(other) => Err(schema(
            "invalid_field",
            path(),
            format!("`user_id` must be a non-empty string or an integer, not {}", describe(other)),
        )),
    }
}

/// `product_id`: an optional string; `null` counts as absent.
fn product_id<'a>(value: Option<&Node<'a>>, path: impl Fn() -> String) -> Result<Option<Cow<'a, str>>, Invalid> {
    match value {
        None => Ok(None),
        Some(Node::String(s)) => Ok(Some(Cow::Borrowed(*s))),
        Some(other) => {
            Err(schema("invalid_field", path(), format!("`product_id` must be a string, not {}", type_name(other))))
        }
    }
}

fn parse_event_time(v: &Node<'_>) -> Option<i64> {
    match v {
        Node::Static(StaticNode::I64(n)) if *n >= 0 => Some(*n),
        Node::Static(StaticNode::U64(n)) => i64::try_from(*n).ok(),
        Node::String(s) if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}

/// About how many bytes the value at `at` takes as compact JSON: exact for strings without
/// escapes, structure and keys; numbers count as 8.
fn json_bytes(tape: &[Node<'_>], at: usize) -> usize {
    match tape[at] {
        Node::String(s) => s.len() + 2,
        Node::Static(_) => 8,
        Node::Array { len, .. } => {
            let mut item = at + 1;
            2 + (0..len)
                .map(|_| {
                    let bytes = json_bytes(tape, item) + 1;
                    item += span(&tape[item]);
                    bytes
                })
                .sum::<usize>()
        }
        Node::Object { .. } => 2 + entries(tape, at).map(|(k, v)| k.len() + 4 + json_bytes(tape, v)).sum::<usize>(),
    }
}

fn type_name(v: &Node<'_>) -> &'static str {
    match v {
        Node::Static(StaticNode::Null) => "null",
        Node::Static(StaticNode::Bool(_)) => "a boolean",
        Node::Static(StaticNode::F64(_)) => "a floating-point number",
        Node::Static(_) => "an integer",
        Node::String(_) => "a string",
        Node::Array { .. } => "an array",
        Node::Object { .. } => "an object",
    }
}

/// Like [`type_name`] but shows short scalars, which helps people fix their tracker.
fn describe(v: &Node<'_>) -> String {
    match v {
        Node::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Node::Static(StaticNode::I64(n)) => format!("the integer {n}"),
        Node::Static(StaticNode::F64(n)) => format!("the number {n}"),
        other => type_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests;
