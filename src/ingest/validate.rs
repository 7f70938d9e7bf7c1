//! Ingest's limits on top of the schema. A body must be a valid [`crate::schema`] request, read
//! the same way by every JSON parser ([`crate::schema::strict`]), and stay within limits that
//! real trackers never reach but that bound what one request can cost downstream: events per
//! request, bytes per string field, bytes of `ctx`, and bytes of the rows it turns into (`ctx`
//! is copied into every row, so a large `ctx` times many events is an amplification).

use crate::schema::{strict, Envelope, Invalid, Request};
use crate::transform::row;

/// The limits, each a flag (see `config.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Most events in one request.
    pub max_events: usize,
    /// Most bytes in each string field the rows carry: `event_type`, `user_id`, `product_id`,
    /// `ctx.browser`, `ctx.device`, `ctx.version`.
    pub max_field_bytes: usize,
    /// Most bytes of `ctx` as JSON, unknown fields included.
    pub max_ctx_bytes: usize,
    /// Most bytes of rows (keys and values) one request may turn into.
    pub max_row_bytes: usize,
}

impl EventLimits {
    /// The bytes one row can take at most under these limits (four fields, each possibly
    /// escaped six-fold, plus the row's fixed part): what must fit a Kafka message.
    pub fn max_single_row_bytes(&self) -> usize {
        6 * 5 * self.max_field_bytes + 200
    }
}

/// Parses `scratch` (a copy of `raw`) in place and validates it against the schema and `limits`.
/// Returns the number of events.
///
/// Cheap checks come first: the event count is checked between the schema's two phases,
/// before any event is validated, so an oversized batch costs one parse.
///
/// # Errors
/// [`Invalid`] naming the first problem: the schema's codes, `duplicate_key`,
/// `control_character`, `negative_zero`, `too_deep`, `too_many_events`, `ctx_too_large`,
/// `field_too_long`, `rows_too_large`.
pub fn validate(raw: &[u8], scratch: &mut [u8], limits: &EventLimits) -> Result<usize, Invalid> {
    let envelope = Envelope::parse(scratch);
    // The strictness scan only where the quick screen cannot vouch for the body. A raw control
    // character is reported before the parser's generic `invalid_json`; the other strictness
    // errors only once the body is known to be JSON.
    if !envelope.as_ref().is_ok_and(|envelope| strict::surely_strict(raw, envelope)) {
        if let Err(e) = strict::check(raw) {
            if e.code == "control_character" || envelope.is_ok() {
                return Err(e);
            }
        }
    }
    let envelope = envelope?;
    if envelope.len() > limits.max_events {
        return Err(Invalid::schema(
            "too_many_events",
            "/events",
            format!("{} events in one request; at most {} are allowed", envelope.len(), limits.max_events),
        ));
    }
    let ctx_bytes = envelope.ctx_bytes();
    if ctx_bytes > limits.max_ctx_bytes {
        return Err(Invalid::schema(
            "ctx_too_large",
            "/ctx",
            format!("`ctx` takes {ctx_bytes} bytes; at most {} are allowed", limits.max_ctx_bytes),
        ));
    }
    let request = envelope.validate()?;
    check_fields(&request, limits.max_field_bytes)?;
    let rows: usize = request.events.iter().map(|e| row::row_bytes(e, &request.ctx)).sum();
    if rows > limits.max_row_bytes {
        return Err(Invalid::schema(
            "rows_too_large",
            "/events",
            format!(
                "this request would become {rows} bytes of rows (ctx is copied into each of its {} events); at most {} are allowed",
                request.events.len(),
                limits.max_row_bytes
            ),
        ));
    }
    Ok(request.events.len())
}

/// Every string field a row carries is at most `max` bytes.
fn check_fields(request: &Request<'_>, max: usize) -> Result<(), Invalid> {
    let too_long = |path: String, len: usize| {
        Invalid::schema("field_too_long", path, format!("{len} bytes; a field may have at most {max}"))
    };
    let ctx = &request.ctx;
    for (name, value) in [("browser", &ctx.browser), ("device", &ctx.device), ("version", &ctx.version)] {
        if value.len() > max {
            return Err(too_long(format!("/ctx/{name}"), value.len()));
        }
    }
    for (i, event) in request.events.iter().enumerate() {
        let user_id = match &event.user_id {
            crate::schema::UserId::Str(s) => s.len(),
            crate::schema::UserId::Int(_) => 0,
        };
        let product_id = event.product_id.as_ref().map_or(0, |p| p.len());
        for (name, len) in [("event_type", event.event_type.len()), ("user_id", user_id), ("product_id", product_id)] {
            if len > max {
                return Err(too_long(format!("/events/{i}/{name}"), len));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::InvalidKind;

    const LIMITS: EventLimits =
        EventLimits { max_events: 3, max_field_bytes: 16, max_ctx_bytes: 200, max_row_bytes: 500 };

    fn check(body: &str) -> Result<usize, (&'static str, String)> {
        let mut scratch = body.as_bytes().to_vec();
        validate(body.as_bytes(), &mut scratch, &LIMITS).map_err(|e| (e.code, e.path))
    }

    fn body(events: &[&str], ctx: &str) -> String {
        format!(r#"{{"events":[{}],"ctx":{ctx}}}"#, events.join(","))
    }

    const EVENT: &str = r#"{"event_type":"a","event_time":1,"user_id":"u"}"#;
    const CTX: &str = r#"{"browser":"b","device":"d","version":"v"}"#;

    #[test]
    fn a_batch_over_the_event_limit_is_refused_before_its_events_are_checked() {
        // Four events that are not even objects, and no valid ctx: the limit is reported.
        let mut raw = br#"{"events":[1,2,3,4],"ctx":{}}"#.to_vec();
        let err = validate(&raw.clone(), &mut raw, &LIMITS).unwrap_err();
        assert_eq!((err.kind, err.code, err.path.as_str()), (InvalidKind::Schema, "too_many_events", "/events"));
        assert!(!err.message.is_empty());
    }

    #[test]
    fn a_batch_at_the_limits_is_validated_and_counted() {
        assert_eq!(check(&body(&[EVENT, EVENT, EVENT], CTX)), Ok(3));
        assert_eq!(check(&body(&["1"], CTX)).unwrap_err().1, "/events/0");
    }

    #[test]
    fn a_string_field_over_the_limit_is_refused_by_name() {
        let long = "x".repeat(17);
        let event = EVENT.replace(r#""u""#, &format!("{long:?}"));
        assert_eq!(check(&body(&[&event], CTX)), Err(("field_too_long", "/events/0/user_id".into())));
        let ctx = CTX.replace(r#""b""#, &format!("{long:?}"));
        assert_eq!(check(&body(&[EVENT], &ctx)), Err(("field_too_long", "/ctx/browser".into())));
        // At the limit is fine.
        let event = EVENT.replace(r#""u""#, &format!("{:?}", "x".repeat(16)));
        assert_eq!(check(&body(&[&event], CTX)), Ok(1));
    }

    #[test]
    fn a_large_ctx_is_refused_even_in_fields_nobody_reads() {
        let ctx = CTX.replace(r#""v"}"#, &format!(r#""v","extra":{:?}}}"#, "y".repeat(300)));
        assert_eq!(check(&body(&[EVENT], &ctx)), Err(("ctx_too_large", "/ctx".into())));
    }

    #[test]
    fn rows_one_request_turns_into_are_bounded() {
        // Each field within its limit, but three events with the longest browser and device
        // make more row bytes than allowed.
        let ctx = format!(r#"{{"browser":{:?},"device":{:?},"version":"v"}}"#, "b".repeat(16), "d".repeat(16));
        let event = format!(r#"{{"event_type":{:?},"event_time":1,"user_id":{:?}}}"#, "e".repeat(16), "u".repeat(16));
        assert_eq!(check(&body(&[&event, &event, &event], &ctx)), Err(("rows_too_large", "/events".into())));
        assert_eq!(check(&body(&[&event], &ctx)), Ok(1));
    }

    #[test]
    fn duplicate_keys_and_raw_control_characters_are_refused_with_their_own_codes() {
        let dup = EVENT.replace(r#""user_id":"u""#, r#""user_id":"u","user_id":"v""#);
        assert_eq!(check(&body(&[&dup], CTX)), Err(("duplicate_key", "/events/0/user_id".into())));
        let control = EVENT.replace(r#""u""#, "\"u\u{7}\"");
        assert_eq!(check(&body(&[&control], CTX)), Err(("control_character", "/events/0/user_id".into())));
    }

    #[test]
    fn negative_zero_event_time_or_user_id_is_refused() {
        // Found by the `collect_request` fuzz target (fuzz/README.md): simd-json read `-0` as the
        // integer 0 and the body was accepted; serde_json reads the stored body's -0 as a float.
        let time = EVENT.replace(r#""event_time":1"#, r#""event_time":-0"#);
        assert_eq!(check(&body(&[&time], CTX)), Err(("negative_zero", "/events/0/event_time".into())));
        let user = EVENT.replace(r#""u""#, "-0");
        assert_eq!(check(&body(&[&user], CTX)), Err(("negative_zero", "/events/0/user_id".into())));
        let zero = EVENT.replace(r#""u""#, "0");
        assert_eq!(check(&body(&[&zero], CTX)), Ok(1));
    }

    #[test]
    fn a_body_nested_deeper_than_serde_json_reads_is_refused() {
        // Found with the `collect_request` fuzz target's row check: accepted, and unreadable to
        // serde_json (recursion limit 128).
        let deep =
            |levels: usize| EVENT.replace('}', &format!(r#","x":{}1{}}}"#, "[".repeat(levels), "]".repeat(levels)));
        assert_eq!(check(&body(&[&deep(200)], CTX)).unwrap_err().0, "too_deep");
        assert_eq!(check(&body(&[&deep(strict::MAX_DEPTH - 3)], CTX)), Ok(1), "body, events, event, then x");
    }
}
