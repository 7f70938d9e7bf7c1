//! What the fuzz targets share: the collector's default settings, and the check that rows are
//! exactly what the contract says a body turns into.
//!
//! The targets live in `fuzz_targets/`; `README.md` says how to run them and what each asserts.

use std::sync::OnceLock;

use clap::Parser;
use collector::app::PipelineConfig;
use collector::config::{Cli, Command};
use collector::schema;
use collector::transform::{row, Row};
use serde_json::Value;

/// The settings of `collector serve` with no flags: the limits the `/collect` handler applies
/// by default (`COLLECTOR_*` variables in the environment would change them, as they would
/// the server's).
pub fn defaults() -> &'static PipelineConfig {
    static DEFAULTS: OnceLock<PipelineConfig> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let cli = Cli::try_parse_from(["collector", "serve"]).expect("the default command line parses");
        let Command::Serve(serve) = cli.command else { unreachable!("`serve` was parsed") };
        serve.pipeline(None).expect("the default settings are valid")
    })
}

/// The sample body of the brief, and the one row it becomes.
pub const SAMPLE: &[u8] = br#"{"events":[{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}],"ctx":{"browser":"Firefox","device":"Desktop","version":"126.0"}}"#;
pub const SAMPLE_ROW: &[u8] = br#"{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","browser":"Firefox","device":"Desktop"}"#;

/// Checks that `rows` are what `raw`, a body the schema accepts, turns into, read
/// independently with serde_json: one row per event, in order, each with exactly the five
/// fields of the contract (`event_time` an integer equal to what was sent, `user_id` of the
/// JSON type it was sent as, `browser` and `device` from `ctx`), keyed by `user_id` as text,
/// and no larger than [`row::row_bytes`] promises.
///
/// # Panics
/// On any difference: that is the finding.
pub fn check_rows(raw: &[u8], rows: &[Row]) {
    let doc: Value = serde_json::from_slice(raw)
        .unwrap_or_else(|e| panic!("the schema accepted a body serde_json cannot read: {e}"));
    let events = doc["events"].as_array().expect("serde_json sees an `events` array");
    let ctx = doc["ctx"].as_object().expect("serde_json sees a `ctx` object");
    assert_eq!(rows.len(), events.len(), "one row per event");
    let mut scratch = raw.to_vec();
    let request = schema::parse_request(&mut scratch).expect("the schema accepts the body it was given");
    assert_eq!(request.events.len(), events.len(), "simd-json and serde_json count the same events");
    for (i, ((row, sent), parsed)) in rows.iter().zip(events).zip(&request.events).enumerate() {
        let value: Value = serde_json::from_slice(&row.value).expect("a row is JSON");
        let fields = value.as_object().expect("a row is a JSON object");
        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["browser", "device", "event_time", "event_type", "user_id"], "row {i}");
        assert_eq!(fields["event_type"], sent["event_type"], "row {i}: event_type");
        let sent_time = match &sent["event_time"] {
            Value::String(digits) => digits.parse::<u64>().expect("a string event_time is digits"),
            other => other.as_u64().unwrap_or_else(|| panic!("row {i}: event_time {other} is no integer")),
        };
        assert_eq!(fields["event_time"].as_u64(), Some(sent_time), "row {i}: event_time");
        assert_eq!(fields["user_id"], sent["user_id"], "row {i}: user_id as sent");
        assert_eq!(fields["browser"], ctx["browser"], "row {i}: browser");
        assert_eq!(fields["device"], ctx["device"], "row {i}: device");
        let key = match &sent["user_id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            other => panic!("row {i}: user_id {other} is neither a string nor an integer"),
        };
        assert_eq!(&row.key[..], key.as_bytes(), "row {i}: key");
        let bound = row::row_bytes(parsed, &request.ctx);
        assert!(row.key.len() + row.value.len() <= bound, "row {i}: bigger than row_bytes' bound {bound}");
    }
}
