use super::*;

const SEED_SAMPLE: &str = r#"{"events":[{"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"}],"ctx":{"browser":"Firefox","device":"Desktop","version":"126.0"}}"#;

/// An event as plain strings: type, time, user id, product id.
type Flat = (String, i64, String, Option<String>);

/// Events and (browser, device) of a parsed body.
type Parsed = (usize, Vec<Flat>, (String, String));

fn parse(body: &str) -> Result<Parsed, Invalid> {
    let mut scratch = body.as_bytes().to_vec();
    let req = parse_request(&mut scratch)?;
    let events = req
        .events
        .iter()
        .map(|e| {
            (
                e.event_type.to_string(),
                e.event_time,
                e.user_id.to_string(),
                e.product_id.as_ref().map(|p| p.to_string()),
            )
        })
        .collect::<Vec<_>>();
    Ok((events.len(), events, (req.ctx.browser.to_string(), req.ctx.device.to_string())))
}

fn rejected(body: &str) -> Invalid {
    parse(body).expect_err("body should have been rejected")
}

#[test]
fn accepts_the_seed_sample_with_a_string_user_id() {
    let (n, events, ctx) = parse(SEED_SAMPLE).unwrap();
    assert_eq!(n, 1);
    assert_eq!(events[0], ("product_view".into(), 1_750_867_000_000, "user_test".into(), Some("prod_demo".into())));
    assert_eq!(ctx, ("Firefox".into(), "Desktop".into()));
}

#[test]
fn accepts_an_integer_user_id_and_keeps_its_type() {
    let body = SEED_SAMPLE.replace(r#""user_test""#, "42");
    let mut scratch = body.into_bytes();
    let req = parse_request(&mut scratch).unwrap();
    assert_eq!(req.events[0].user_id, UserId::Int(42));
}

#[test]
fn normalises_an_all_digit_event_time_string() {
    let body = SEED_SAMPLE.replace("1750867000000", r#""1750867000000""#);
    assert_eq!(parse(&body).unwrap().1[0].1, 1_750_867_000_000);
}

#[test]
fn keeps_unknown_fields_out_of_the_way() {
    let body = r#"{"events":[{"event_type":"a","event_time":1,"user_id":"u","extra":{"x":[1,2]}}],"ctx":{"browser":"b","device":"d","version":"v","os":"linux"},"sdk":"js"}"#;
    let (n, events, _) = parse(body).unwrap();
    assert_eq!(n, 1);
    assert_eq!(events[0].3, None);
}

#[test]
fn decodes_escaped_strings() {
    let body = r#"{"events":[{"event_type":"caf\u00e9 \"view\"","event_time":1,"user_id":"u\n"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#;
    let (_, events, _) = parse(body).unwrap();
    assert_eq!(events[0].0, "café \"view\"");
    assert_eq!(events[0].2, "u\n");
}

#[test]
fn malformed_json_is_a_400_kind() {
    let err = rejected(r#"{"events": [}"#);
    assert_eq!((err.kind, err.code), (InvalidKind::Malformed, "invalid_json"));
}

#[test]
fn invalid_utf8_is_reported_as_such() {
    let mut body = SEED_SAMPLE.as_bytes().to_vec();
    let at = SEED_SAMPLE.find("Firefox").unwrap();
    body[at] = 0xff;
    let err = parse_request(&mut body).unwrap_err();
    assert_eq!((err.kind, err.code), (InvalidKind::Malformed, "invalid_utf8"));
}

#[test]
fn schema_violations_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("[]", "invalid_type", ""),
        (r#"{"ctx":{}}"#, "missing_field", "/events"),
        (r#"{"events":{},"ctx":{}}"#, "invalid_type", "/events"),
        (r#"{"events":[],"ctx":{}}"#, "empty_events", "/events"),
        (r#"{"events":[{}]}"#, "missing_field", "/ctx"),
        (r#"{"events":[{}],"ctx":"x"}"#, "invalid_type", "/ctx"),
        (r#"{"events":[{}],"ctx":{"device":"d","version":"v"}}"#, "missing_field", "/ctx/browser"),
        (r#"{"events":[{}],"ctx":{"browser":1,"device":"d","version":"v"}}"#, "invalid_field", "/ctx/browser"),
        (r#"{"events":["x"],"ctx":{"browser":"b","device":"d","version":"v"}}"#, "invalid_type", "/events/0"),
        (
            r#"{"events":[{"event_time":1,"user_id":"u"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "missing_field",
            "/events/0/event_type",
        ),
        (
            r#"{"events":[{"event_type":"","event_time":1,"user_id":"u"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/event_type",
        ),
        (
            r#"{"events":[{"event_type":"a","user_id":"u"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "missing_field",
            "/events/0/event_time",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":1.5,"user_id":"u"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/event_time",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":-1,"user_id":"u"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/event_time",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":"12a","user_id":"u"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/event_time",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":"","user_id":"u"}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/event_time",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":1}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "missing_field",
            "/events/0/user_id",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":1,"user_id":""}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/user_id",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":1,"user_id":true}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/user_id",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":1,"user_id":1.5}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/user_id",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":1,"user_id":"u","product_id":7}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "invalid_field",
            "/events/0/product_id",
        ),
        (
            r#"{"events":[{"event_type":"a","event_time":1,"user_id":"u"},{"event_type":"a","event_time":1,"user_id":"u"},{"event_type":"a","event_time":1}],"ctx":{"browser":"b","device":"d","version":"v"}}"#,
            "missing_field",
            "/events/2/user_id",
        ),
    ];
    for (body, code, path) in cases {
        let err = rejected(body);
        assert_eq!(err.kind, InvalidKind::Schema, "{body}");
        assert_eq!((err.code, err.path.as_str()), (*code, *path), "{body}: {}", err.message);
        assert!(!err.message.is_empty());
    }
}

#[test]
fn null_product_id_counts_as_absent() {
    let body = r#"{"events":[{"event_type":"a","event_time":1,"user_id":"u","product_id":null}],"ctx":{"browser":"b","device":"d","version":"v"}}"#;
    assert_eq!(parse(body).unwrap().1[0].3, None);
}
