//! The committed seed corpus (`corpus/<target>/`), made here so that each seed stays what its
//! name says. A seed is named `<verdict>__<what>.<ext>`: `ok` or the code it is refused with.
//!
//! `cargo test` (in `fuzz/`, stable Rust, no fuzzing) checks that the files are exactly these
//! bytes and that each still gets its verdict; `SEEDS_WRITE=1 cargo test` rewrites them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use collector::ingest::decode_body;
use collector::ingest::validate::validate;
use collector::schema;
use collector::wal::record::{decode, encode, Entry, FrameError};
use collector_fuzz::{defaults, SAMPLE};

const MANY_EVENTS: &[u8] = br#"{"events":[
 {"event_type":"product_view","event_time":1750867000000,"user_id":"user_test","product_id":"prod_demo"},
 {"event_type":"add_to_cart","event_time":"1750867000001","user_id":42,"product_id":null,"qty":2},
 {"event_type":"purchase","event_time":0,"user_id":-9223372036854775808,"extra":{"a":[1,2.5,true,null]}},
 {"event_type":"page_view","event_time":9223372036854775807,"user_id":18446744073709551615}],
 "ctx":{"browser":"Safari","device":"Mobile","version":"17.4","locale":"fr-FR"},"sent_at":1750867000002}"#;

const UNICODE: &[u8] = br#"{"events":[{"\u0065vent_type":"\u00e9v\u00e9nement","event_time":1,"user_id":"\ud83d\ude00 \u4e2d","product_id":"caf\u00e9"}],"ctx":{"browser":"Firefox \"Nightly\"","device":"Desk\ntop\\","version":"\u0031\u0032\u0036"}}"#;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn body(events: &str, ctx: &str) -> Vec<u8> {
    format!(r#"{{"events":[{events}],"ctx":{ctx}}}"#).into_bytes()
}

const EVENT: &str = r#"{"event_type":"e","event_time":1,"user_id":"u"}"#;
const CTX: &str = r#"{"browser":"b","device":"d","version":"v"}"#;

/// A frame whose header was edited after encoding, with its checksum made right again.
fn reframed(mut frame: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit(&mut frame);
    let crc = crc32fast::hash(&frame[5..]);
    frame[1..5].copy_from_slice(&crc.to_be_bytes());
    frame
}

fn request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // `levels` of objects and arrays, the body's own object included.
    let nested = |levels: usize| {
        let (open, close) = ("[".repeat(levels - 1), "]".repeat(levels - 1));
        format!(r#"{{"events":[{EVENT}],"ctx":{CTX},"deep":{open}1{close}}}"#).into_bytes()
    };
    let too_many = body(&vec!["{}"; 1001].join(","), CTX);
    let long_user = EVENT.replace(r#""u""#, &format!("{:?}", "u".repeat(4097)));
    let (a, b) = SAMPLE.split_at(60);
    let mut latin1 = body(&EVENT.replace(r#""e""#, r#""caf?""#), CTX);
    let at = latin1.iter().position(|&c| c == b'?').unwrap();
    latin1[at] = 0xe9;
    vec![
        ("ok__sample.json", SAMPLE.to_vec()),
        ("ok__many_events.json", MANY_EVENTS.to_vec()),
        ("ok__unicode_escapes.json", UNICODE.to_vec()),
        ("ok__nesting_64_levels.json", nested(64)),
        ("too_deep__nesting_200_levels.json", nested(200)),
        ("ok__sample.json.gz", gzip(SAMPLE)),
        ("ok__two_gzip_members.json.gz", [gzip(a), gzip(b)].concat()),
        ("decompressed_too_large__gzip_bomb.gz", gzip(&vec![b' '; 1_000_000])),
        ("invalid_gzip__truncated.gz", gzip(SAMPLE)[..40].to_vec()),
        ("invalid_json__truncated.json", SAMPLE[..SAMPLE.len() - 9].to_vec()),
        ("invalid_utf8__latin1.json", latin1),
        ("control_character__raw_tab.json", body(&EVENT.replace(r#""u""#, "\"u\tv\""), CTX)),
        ("duplicate_key__user_id.json", body(&EVENT.replace(r#""user_id":"u""#, r#""user_id":"u","user_id":7"#), CTX)),
        ("invalid_json__integer_past_u64.json", body(&EVENT.replace(r#":1,"#, ":99999999999999999999,"), CTX)),
        ("negative_zero__event_time.json", body(&EVENT.replace(r#":1,"#, ":-0,"), CTX)),
        ("invalid_field__negative_event_time.json", body(&EVENT.replace(r#":1,"#, ":-1,"), CTX)),
        ("invalid_json__float_out_of_range.json", body(&EVENT.replace(r#""u""#, "1e400"), CTX)),
        ("empty_events__none.json", body("", CTX)),
        ("too_many_events__1001.json", too_many),
        ("field_too_long__user_id.json", body(&long_user, CTX)),
    ]
}

fn transform_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let frame = encode(&Entry { received_at_ms: 1_750_867_000_123, client: "127.0.0.1:5555", payload: SAMPLE });
    vec![
        ("ok__sample.json", SAMPLE.to_vec()),
        ("ok__many_events.json", MANY_EVENTS.to_vec()),
        ("ok__unicode_escapes.json", UNICODE.to_vec()),
        // Ingest refuses these; a raw message from another producer may still carry them.
        (
            "ok__foreign_duplicate_key.json",
            body(&EVENT.replace(r#""user_id":"u""#, r#""user_id":"u","user_id":7"#), CTX),
        ),
        ("ok__foreign_field_too_long.json", body(&EVENT.replace(r#""u""#, &format!("{:?}", "u".repeat(5000))), CTX)),
        ("invalid_json__plain_text.txt", b"hello, kafka".to_vec()),
        ("invalid_utf8__wal_frame_not_payload.bin", frame),
        ("invalid_utf8__gzip_not_decoded.gz", gzip(SAMPLE)),
        ("empty_events__none.json", body("", CTX)),
        ("missing_field__no_ctx.json", format!(r#"{{"events":[{EVENT}]}}"#).into_bytes()),
        ("invalid_field__empty_event_type.json", body(&EVENT.replace(r#""e""#, r#""""#), CTX)),
    ]
}

fn wal_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sample = encode(&Entry { received_at_ms: 1_750_867_000_123, client: "127.0.0.1:5555", payload: SAMPLE });
    let mut flipped = sample.clone();
    *flipped.last_mut().unwrap() ^= 0x10;
    let mut v2 = sample.clone();
    v2[0] = 2;
    vec![
        ("ok__sample.frame", sample.clone()),
        ("ok__empty.frame", encode(&Entry { received_at_ms: 0, client: "", payload: b"" })),
        (
            "ok__ipv6_client.frame",
            encode(&Entry { received_at_ms: u64::MAX, client: "[::1]:40000", payload: MANY_EVENTS }),
        ),
        (
            "ok__non_ascii_client.frame",
            encode(&Entry { received_at_ms: 1, client: "h\u{f4}te:\u{1f600}", payload: b"x" }),
        ),
        ("too_short__torn_header.frame", sample[..10].to_vec()),
        ("unknown_version__v2.frame", v2),
        ("checksum__bit_flipped.frame", flipped),
        (
            "bad_length__client_past_the_end.frame",
            reframed(sample.clone(), |f| f[13..15].copy_from_slice(&[0xff, 0xff])),
        ),
        ("client_not_utf8__latin1.frame", reframed(sample, |f| f[15] = 0xe9)),
    ]
}

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// The seeds of `target` are on disk, byte for byte, and nothing else that has a seed's name
/// (libFuzzer's own finds are named by their SHA-1 and git-ignored).
fn check_files(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = corpus(target);
    if std::env::var_os("SEEDS_WRITE").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let on_disk: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().contains("__"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    let listed: BTreeMap<String, Vec<u8>> = seeds.iter().map(|(n, b)| (n.to_string(), b.clone())).collect();
    assert_eq!(on_disk.keys().collect::<Vec<_>>(), listed.keys().collect::<Vec<_>>(), "{target}: seed names");
    for (name, bytes) in &listed {
        assert!(
            on_disk[name] == *bytes,
            "{target}/{name} differs from what this file makes; SEEDS_WRITE=1 rewrites it"
        );
    }
    let total: usize = listed.values().map(Vec::len).sum();
    assert!(total < 32 * 1024, "{target}: keep the seeds small ({total} bytes)");
}

fn verdict(name: &str) -> &str {
    name.split("__").next().unwrap()
}

#[test]
fn request_seeds_are_on_disk_and_get_their_verdicts() {
    let seeds = request_seeds();
    check_files("collect_request", &seeds);
    let limit = defaults().server.body.max_decompressed_bytes;
    for (name, bytes) in &seeds {
        let decoded = decode_body(Bytes::from(bytes.clone()), name.ends_with(".gz"), limit);
        let got = match decoded {
            Err(e) => e.code(),
            Ok(raw) => {
                let mut scratch = raw.to_vec();
                validate(&raw, &mut scratch, &defaults().server.limits).map_or_else(|e| e.code, |_| "ok")
            }
        };
        assert_eq!(got, verdict(name), "{name}");
    }
}

#[test]
fn transform_seeds_are_on_disk_and_get_their_verdicts() {
    let seeds = transform_seeds();
    check_files("transform", &seeds);
    for (name, bytes) in &seeds {
        let mut scratch = bytes.clone();
        let got = schema::parse_request(&mut scratch).map_or_else(|e| e.code, |_| "ok");
        assert_eq!(got, verdict(name), "{name}");
    }
}

#[test]
fn wal_seeds_are_on_disk_and_get_their_verdicts() {
    let seeds = wal_seeds();
    check_files("wal_record", &seeds);
    for (name, bytes) in &seeds {
        let got = match decode(bytes) {
            Ok(_) => "ok",
            Err(FrameError::TooShort { .. }) => "too_short",
            Err(FrameError::UnknownVersion(_)) => "unknown_version",
            Err(FrameError::Checksum { .. }) => "checksum",
            Err(FrameError::BadLength { .. }) => "bad_length",
            Err(FrameError::ClientNotUtf8) => "client_not_utf8",
        };
        assert_eq!(got, verdict(name), "{name}");
    }
}
