//! Ingest's limits on top of the schema: a body must be a valid [`crate::schema`] request and
//! carry no more events than this collector accepts per request.

use crate::schema::{Envelope, Invalid};

/// Parses `scratch` in place and validates it, refusing more than `max_events` events.
///
/// The limit is checked between the schema's two phases, before any event is validated, so an
/// oversized batch costs one parse and the client hears about the limit first.
///
/// # Errors
/// [`Invalid`] naming the first problem; `too_many_events` for a batch over the limit.
pub fn events_within(scratch: &mut [u8], max_events: usize) -> Result<usize, Invalid> {
    let envelope = Envelope::parse(scratch)?;
    if envelope.len() > max_events {
        return Err(Invalid::schema(
            "too_many_events",
            "/events",
            format!("{} events in one request; at most {max_events} are allowed", envelope.len()),
        ));
    }
    Ok(envelope.validate()?.events.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::InvalidKind;

    #[test]
    fn a_batch_over_the_event_limit_is_refused_before_its_events_are_checked() {
        // Four events that are not even objects, and no valid ctx: the limit is reported.
        let mut body = br#"{"events":[1,2,3,4],"ctx":{}}"#.to_vec();
        let err = events_within(&mut body, 3).unwrap_err();
        assert_eq!((err.kind, err.code, err.path.as_str()), (InvalidKind::Schema, "too_many_events", "/events"));
        assert!(!err.message.is_empty());
    }

    #[test]
    fn a_batch_at_the_limit_is_validated_and_counted() {
        let event = r#"{"event_type":"a","event_time":1,"user_id":"u"}"#;
        let mut body =
            format!(r#"{{"events":[{event},{event},{event}],"ctx":{{"browser":"b","device":"d","version":"v"}}}}"#)
                .into_bytes();
        assert_eq!(events_within(&mut body, 3), Ok(3));
        let mut bad = br#"{"events":[1],"ctx":{"browser":"b","device":"d","version":"v"}}"#.to_vec();
        assert_eq!(events_within(&mut bad, 3).unwrap_err().path, "/events/0");
    }
}
