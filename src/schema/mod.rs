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
//! the original bytes. Strings in the result borrow from that copy (no allocation unless the
//! JSON string contained escapes).

pub mod strict;

use std::borrow::Cow;
use std::fmt;

use simd_json::{BorrowedValue as Value, ErrorType, StaticNode};

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
pub struct Envelope<'a> {
    root: simd_json::borrowed::Object<'a>,
    events: Vec<Value<'a>>,
}

impl<'a> Envelope<'a> {
    /// Parses `scratch` in place; checks that it is an object with a non-empty `events` array.
    ///
    /// # Errors
    /// [`Invalid`]: malformed JSON or UTF-8, or a missing, mistyped or empty `events`.
    pub fn parse(scratch: &'a mut [u8]) -> Result<Self, Invalid> {
        let value = simd_json::to_borrowed_value(scratch).map_err(|e| match e.error() {
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
        let Value::Object(mut root) = value else {
            return Err(schema(
                "invalid_type",
                "",
                format!("the body must be a JSON object, not {}", type_name(&value)),
            ));
        };
        let events = match root.remove("events") {
            None | Some(Value::Static(StaticNode::Null)) => {
                return Err(schema("missing_field", "/events", "`events` is required"));
            }
            Some(Value::Array(events)) => events,
            Some(other) => {
                return Err(schema(
                    "invalid_type",
                    "/events",
                    format!("`events` must be an array, not {}", type_name(&other)),
                ));
            }
        };
        if events.is_empty() {
            return Err(schema("empty_events", "/events", "`events` must contain at least one event"));
        }
        Ok(Envelope { root: *root, events: *events })
    }

    /// How many events the body carries (at least one).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// About how many bytes `ctx` takes as JSON (unknown fields included; 0 when absent).
    pub fn ctx_bytes(&self) -> usize {
        self.root.get("ctx").map_or(0, json_bytes)
    }

    /// Always false: [`Envelope::parse`] refuses an empty `events`.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The second phase: validates `ctx` and every event.
    ///
    /// # Errors
    /// [`Invalid`] naming the first field that breaks the schema.
    pub fn validate(mut self) -> Result<Request<'a>, Invalid> {
        let ctx = parse_ctx(self.root.remove("ctx"))?;
        let events = self
            .events
            .into_iter()
            .enumerate()
            .map(|(i, event)| parse_event(i, event))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Request { events, ctx })
    }
}

fn parse_ctx(value: Option<Value<'_>>) -> Result<Ctx<'_>, Invalid> {
    let mut ctx = match value {
        None | Some(Value::Static(StaticNode::Null)) => {
            return Err(schema("missing_field", "/ctx", "`ctx` is required"))
        }
        Some(Value::Object(ctx)) => ctx,
        Some(other) => {
            return Err(schema("invalid_type", "/ctx", format!("`ctx` must be an object, not {}", type_name(&other))))
        }
    };
    let mut field = |name: &str| -> Result<Cow<'_, str>, Invalid> {
        let path = format!("/ctx/{name}");
        match ctx.remove(name) {
            None | Some(Value::Static(StaticNode::Null)) => {
                Err(schema("missing_field", path, format!("`ctx.{name}` is required")))
            }
            Some(Value::String(s)) => Ok(s),
            Some(other) => {
                Err(schema("invalid_field", path, format!("`ctx.{name}` must be a string, not {}", type_name(&other))))
            }
        }
    };
    Ok(Ctx { browser: field("browser")?, device: field("device")?, version: field("version")? })
}

fn parse_event(i: usize, value: Value<'_>) -> Result<Event<'_>, Invalid> {
    let mut event = match value {
        Value::Object(e) => e,
        other => {
            return Err(schema(
                "invalid_type",
                format!("/events/{i}"),
                format!("an event must be an object, not {}", type_name(&other)),
            ))
        }
    };
    let path = |name: &str| format!("/events/{i}/{name}");
    Ok(Event {
        event_type: event_type(event.remove("event_type"), || path("event_type"))?,
        event_time: event_time(event.remove("event_time"), || path("event_time"))?,
        user_id: user_id(event.remove("user_id"), || path("user_id"))?,
        product_id: product_id(event.remove("product_id"), || path("product_id"))?,
    })
}

/// `event_type`: a non-empty string. `path` names the field in errors.
fn event_type<'a>(value: Option<Value<'a>>, path: impl Fn() -> String) -> Result<Cow<'a, str>, Invalid> {
    match value {
        None | Some(Value::Static(StaticNode::Null)) => {
            Err(schema("missing_field", path(), "`event_type` is required"))
        }
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(schema("invalid_field", path(), "`event_type` must not be empty")),
        Some(other) => {
            Err(schema("invalid_field", path(), format!("`event_type` must be a string, not {}", type_name(&other))))
        }
    }
}

/// `event_time`: milliseconds since the epoch, an integer or a string of digits.
fn event_time(value: Option<Value<'_>>, path: impl Fn() -> String) -> Result<i64, Invalid> {
    match value {
        None | Some(Value::Static(StaticNode::Null)) => {
            Err(schema("missing_field", path(), "`event_time` is required"))
        }
        Some(v) => parse_event_time(&v).ok_or_else(|| {
            schema(
                "invalid_field",
                path(),
                format!(
                    "`event_time` must be a non-negative integer of milliseconds since the epoch (or a string of digits), not {}",
                    describe(&v)
                ),
            )
        }),
    }
}

/// `user_id`: a non-empty string or an integer, kept as sent.
fn user_id<'a>(value: Option<Value<'a>>, path: impl Fn() -> String) -> Result<UserId<'a>, Invalid> {
    match value {
        None | Some(Value::Static(StaticNode::Null)) => Err(schema("missing_field", path(), "`user_id` is required")),
        Some(Value::String(s)) if !s.is_empty() => Ok(UserId::Str(s)),
        Some(Value::Static(StaticNode::I64(n))) => Ok(UserId::Int(n as i128)),
        Some(Value::Static(StaticNode::U64(n))) => Ok(UserId::Int(n as i128)),
        Some(other) => Err(schema(
            "invalid_field",
            path(),
            format!("`user_id` must be a non-empty string or an integer, not {}", describe(&other)),
        )),
    }
}

/// `product_id`: an optional string; `null` counts as absent.
fn product_id<'a>(value: Option<Value<'a>>, path: impl Fn() -> String) -> Result<Option<Cow<'a, str>>, Invalid> {
    match value {
        None | Some(Value::Static(StaticNode::Null)) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => {
            Err(schema("invalid_field", path(), format!("`product_id` must be a string, not {}", type_name(&other))))
        }
    }
}

fn parse_event_time(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Static(StaticNode::I64(n)) if *n >= 0 => Some(*n),
        Value::Static(StaticNode::U64(n)) => i64::try_from(*n).ok(),
        Value::String(s) if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}

/// About how many bytes `v` takes as compact JSON: exact for strings without escapes,
/// structure and keys; numbers count as 8.
fn json_bytes(v: &Value<'_>) -> usize {
    match v {
        Value::String(s) => s.len() + 2,
        Value::Static(_) => 8,
        Value::Array(items) => 2 + items.iter().map(|i| json_bytes(i) + 1).sum::<usize>(),
        Value::Object(fields) => 2 + fields.iter().map(|(k, v)| k.len() + 4 + json_bytes(v)).sum::<usize>(),
    }
}

fn type_name(v: &Value<'_>) -> &'static str {
    match v {
        Value::Static(StaticNode::Null) => "null",
        Value::Static(StaticNode::Bool(_)) => "a boolean",
        Value::Static(StaticNode::F64(_)) => "a floating-point number",
        Value::Static(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Like [`type_name`] but shows short scalars, which helps people fix their tracker.
fn describe(v: &Value<'_>) -> String {
    match v {
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Value::Static(StaticNode::I64(n)) => format!("the integer {n}"),
        Value::Static(StaticNode::F64(n)) => format!("the number {n}"),
        other => type_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests;
