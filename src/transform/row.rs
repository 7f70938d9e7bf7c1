//! The transform itself: one raw request in, one row per event out. Pure, no I/O.
//!
//! Row value: `{"event_type":…,"event_time":<int>,"user_id":<as sent>,"browser":…,"device":…}`
//! with `browser` and `device` from the request's `ctx`. Row key: `user_id` as text (a string
//! as is, an integer in decimal), so each user's events stay in one partition, in order.
//!
//! Zero-copy: all keys and values of a batch are written into one `BytesMut` and split off as
//! frozen `Bytes` that share that allocation; nothing is copied again until librdkafka takes it.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use serde::ser::{Serialize, Serializer};

use crate::schema::{self, Ctx, Event, Invalid, UserId};

/// One output row: key and JSON value, both slices of the batch buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: Bytes,
    pub value: Bytes,
}

#[derive(serde::Serialize)]
struct RowValue<'a> {
    event_type: &'a str,
    event_time: i64,
    user_id: &'a UserIdJson<'a>,
    browser: &'a str,
    device: &'a str,
}

struct UserIdJson<'a>(&'a UserId<'a>);

impl Serialize for UserIdJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            UserId::Str(v) => s.serialize_str(v),
            UserId::Int(i) => s.serialize_i128(*i),
        }
    }
}

/// Bytes of the row `event` becomes (key and value), as an upper bound: a character JSON must
/// escape counts six bytes (`\u00XX`), integers count their widest. Ingest uses it to bound
/// how many bytes of rows one request may turn into.
pub fn row_bytes(event: &Event<'_>, ctx: &Ctx<'_>) -> usize {
    let text = |s: &str| {
        let escaping: usize = s.bytes().filter(|b| *b < 0x20 || *b == b'"' || *b == b'\\').count();
        s.len() + 5 * escaping
    };
    let user_id = match &event.user_id {
        UserId::Str(s) => text(s),
        UserId::Int(_) => 40,
    };
    // Key, then {"event_type":"…","event_time":…,"user_id":…,"browser":"…","device":"…"}.
    user_id + 80 + text(&event.event_type) + 20 + user_id + text(&ctx.browser) + text(&ctx.device)
}

/// Reusable scratch space for transforming many raw messages.
#[derive(Default)]
pub struct Transformer {
    /// simd-json parses in place; the raw payload is copied here first so it stays intact.
    scratch: Vec<u8>,
    /// Rows are written here and split off; one allocation serves a whole batch.
    out: BytesMut,
}

impl Transformer {
    /// Appends the rows of one raw request to `rows`.
    ///
    /// # Errors
    /// [`Invalid`] when `raw` is not a valid collector request; `rows` is then unchanged.
    pub fn transform(&mut self, raw: &[u8], rows: &mut Vec<Row>) -> Result<usize, Invalid> {
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        // No event limit here (the schema has none): what ingest accepted must always transform,
        // whatever the ingest limit was then; foreign producers are bounded by Kafka's message size.
        let request = schema::parse_request(&mut self.scratch)?;
        self.out.reserve(raw.len() * 2 + 64);
        for event in &request.events {
            match &event.user_id {
                UserId::Str(s) => self.out.put_slice(s.as_bytes()),
                UserId::Int(i) => write!((&mut self.out).writer(), "{i}").expect("writing to memory cannot fail"),
            }
            let key = self.out.split().freeze();
            let value = RowValue {
                event_type: &event.event_type,
                event_time: event.event_time,
                user_id: &UserIdJson(&event.user_id),
                browser: &request.ctx.browser,
                device: &request.ctx.device,
            };
            serde_json::to_writer((&mut self.out).writer(), &value).expect("serialising a row to memory cannot fail");
            rows.push(Row { key, value: self.out.split().freeze() });
        }
        Ok(request.events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_SAMPLE: &str = r#"{"events":[{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}],"ctx":{"browser":"Firefox","device":"Desktop","version":"126.0"}}"#;

    fn rows(raw: &str) -> Vec<(String, String)> {
        let mut t = Transformer::default();
        let mut out = Vec::new();
        t.transform(raw.as_bytes(), &mut out).unwrap();
        out.into_iter()
            .map(|r| (String::from_utf8(r.key.to_vec()).unwrap(), String::from_utf8(r.value.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn the_seed_sample_becomes_exactly_the_documented_row() {
        assert_eq!(
            rows(SEED_SAMPLE),
            vec![(
                "user_test".to_string(),
                r#"{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","browser":"Firefox","device":"Desktop"}"#.to_string()
            )]
        );
    }

    #[test]
    fn integer_user_ids_stay_integers_and_string_times_become_integers() {
        let raw = SEED_SAMPLE.replace(r#""user_test""#, "42").replace("1750867000000", r#""1750867000001""#);
        assert_eq!(
            rows(&raw),
            vec![(
                "42".to_string(),
                r#"{"event_type":"product_view","event_time":1750867000001,"user_id":42,"browser":"Firefox","device":"Desktop"}"#.to_string()
            )]
        );
    }

    #[test]
    fn one_row_per_event_with_the_shared_ctx_and_escaping_intact() {
        let raw = r#"{"events":[{"event_type":"a\"b","event_time":1,"user_id":"u1"},{"event_type":"c","event_time":2,"user_id":"u2","x":1}],"ctx":{"browser":"B<","device":"D","version":"1"}}"#;
        let out = rows(raw);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, r#"{"event_type":"a\"b","event_time":1,"user_id":"u1","browser":"B<","device":"D"}"#);
        assert_eq!(
            out[1],
            ("u2".into(), r#"{"event_type":"c","event_time":2,"user_id":"u2","browser":"B<","device":"D"}"#.into())
        );
    }

    #[test]
    fn unreadable_input_is_an_error_and_adds_nothing() {
        let mut t = Transformer::default();
        let mut out = Vec::new();
        assert!(t.transform(b"not json", &mut out).is_err());
        assert!(t.transform(br#"{"events":[]}"#, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn rows_of_a_batch_share_one_buffer_and_survive_reuse() {
        let mut t = Transformer::default();
        let mut out = Vec::new();
        t.transform(SEED_SAMPLE.as_bytes(), &mut out).unwrap();
        t.transform(SEED_SAMPLE.replace("user_test", "other").as_bytes(), &mut out).unwrap();
        assert_eq!(&out[0].key[..], b"user_test");
        assert_eq!(&out[1].key[..], b"other");
    }
}
