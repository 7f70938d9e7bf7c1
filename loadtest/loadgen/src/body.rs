//! Request bodies: the README's sample event, repeated, each with its own id.
//!
//! Event `n` of run `R` has `event_type` = `lg-R-n`, and request `i` carries events
//! `i * events .. (i + 1) * events`, so the acknowledged request indices are all `verify` needs.

use std::fmt::Write as _;
use std::io::Write as _;

use bytes::Bytes;

/// A fixed `event_time`, so that bodies of one size stay one size.
const EVENT_TIME_MS: u64 = 1_750_867_000_000;
/// Distinct `user_id`s (the Kafka key of the rows), enough to spread rows over partitions.
const USERS: u64 = 1000;

/// The `event_type` of event `n` of run `run`.
pub fn event_id(run: &str, n: u64) -> String {
    format!("lg-{run}-{n}")
}

/// Builds the body of request `index`: `events` events, gzip-compressed if asked.
pub struct BodyBuilder {
    run: String,
    events: u64,
    gzip: bool,
}

impl BodyBuilder {
    pub fn new(run: &str, events: u64, gzip: bool) -> Self {
        BodyBuilder { run: run.to_owned(), events, gzip }
    }

    /// The body of request `index` (what goes on the wire).
    pub fn build(&self, index: u64) -> Bytes {
        let mut s = String::with_capacity(64 + 130 * self.events as usize);
        s.push_str("{\"events\":[");
        for k in 0..self.events {
            let n = index * self.events + k;
            if k > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"event_type\":\"lg-{}-{n}\",\"event_time\":{EVENT_TIME_MS},\"user_id\":\"user_{}\",\"product_id\":\"prod_demo\"}}",
                self.run,
                n % USERS
            );
        }
        s.push_str("],\"ctx\":{\"browser\":\"Firefox\",\"device\":\"Desktop\",\"version\":\"126.0\"}}");
        if !self.gzip {
            return Bytes::from(s);
        }
        let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(s.len() / 3), flate2::Compression::fast());
        enc.write_all(s.as_bytes()).expect("writing to a Vec cannot fail");
        Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_with_unique_ids() {
        let b = BodyBuilder::new("r1", 3, false);
        let v: serde_json::Value = serde_json::from_slice(&b.build(2)).unwrap();
        let ids: Vec<_> = v["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
        assert_eq!(ids, ["lg-r1-6", "lg-r1-7", "lg-r1-8"]);
        assert_eq!(v["ctx"]["browser"], "Firefox");
    }

    #[test]
    fn gzip_bodies_decompress_to_the_same_json() {
        use std::io::Read as _;
        let plain = BodyBuilder::new("r", 5, false).build(7);
        let gz = BodyBuilder::new("r", 5, true).build(7);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
    }
}
