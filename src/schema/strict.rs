//! Strict JSON: one reading for every parser.
//!
//! The raw topic carries a body byte for byte, so whatever ingest accepts, every downstream
//! parser must read the same way. Four things JSON parsers disagree on are refused here:
//! - **duplicate keys** in one object (RFC 8259 only says they SHOULD be unique; simd-json keeps
//!   the first of two in small objects and the last in large ones, other parsers one or the
//!   other), so a reader could see a different value than the one validated;
//! - **raw control characters** (U+0000–U+001F unescaped) inside strings, which RFC 8259 forbids
//!   and some parsers accept anyway;
//! - **the number `-0`** (no fraction, no exponent): simd-json and Python read the integer 0,
//!   serde_json and JavaScript the float -0.0, so an `event_time` or integer `user_id` of `-0`
//!   would be an integer to ingest and a float to some readers of the raw topic (found by the
//!   `collect_request` fuzz target). `-0.0` and `-0e0` are floats to everyone and stay;
//! - **nesting deeper than [`MAX_DEPTH`]** objects and arrays: parsers stop at different depths
//!   (serde_json at 128 by default, simd-json at 1024), so a body simd-json accepted, with
//!   200 levels in an unknown field, was one serde_json cannot read at all (found with the
//!   `collect_request` fuzz target's row check).
//!
//! [`check`] scans the raw bytes once and names the offending place with a JSON pointer. It never
//! panics on malformed input (it may then report nothing; the parser reports the malformation).
//! simd-json 0.19 itself refuses raw control characters; the check keeps that a property of the
//! collector, with its own error code, whatever the parser does.
//!
//! [`surely_strict`] spares most bodies that scan: on a body the parser read, it looks for the
//! four things on the parser's tape (repeated keys, depth) and with fast whole-body searches
//! (any byte below U+0020, `-0`, a `\u` escape); only a body where one of them turns up is
//! scanned by [`check`], which then gives the exact error and path. The searches are broader
//! than the rules (a newline between tokens, `-0.5`, any `\u` escape send a body to the full
//! scan), never narrower, so the verdict is always [`check`]'s.
//!
//! [`check`] runs on some requests, so the duplicate-key check allocates nothing per object: the keys
//! of all open objects share one stack, and an object's keys are found by a linear scan of its
//! part of it (real objects have a handful of keys, where that beats hashing). An object past
//! [`LINEAR_KEYS`] keys moves them to a hash set, so a hostile object with many keys still costs
//! linear time (profile: `loadtest/PROFILE.md`).

use std::borrow::Cow;
use std::collections::HashSet;

use simd_json::Node;

use super::{entries, span, Envelope, Invalid, InvalidKind};

/// Most keys an object's duplicate check scans linearly; one more and they move to a hash set.
const LINEAR_KEYS: usize = 32;

/// One open container while scanning. Keys borrow from the body unless they hold escapes.
enum Frame<'a> {
    Object {
        /// Where this object's keys start in the shared key stack (see [`Keys`]).
        start: usize,
        /// The object's keys once it has more than [`LINEAR_KEYS`] (then none are on the stack).
        many: Option<HashSet<Cow<'a, [u8]>>>,
        /// The key whose value is being read (for paths).
        key: Option<Cow<'a, [u8]>>,
        /// The next string is a key.
        expect_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The most levels of objects and arrays a body may nest, its own object included. A
/// `/collect` body needs 3; this leaves room for any sensible unknown field and stays well
/// inside what common JSON parsers read (serde_json: 128).
pub const MAX_DEPTH: usize = 64;

/// Checks a JSON document for duplicate keys, raw control characters, the number `-0` and
/// nesting deeper than [`MAX_DEPTH`].
///
/// # Errors
/// [`Invalid`] with code `duplicate_key` (422), `control_character` (400), `negative_zero`
/// (422) or `too_deep` (422) and the path.
pub fn check(raw: &[u8]) -> Result<(), Invalid> {
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut keys = Keys::default();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                // An unterminated string: not JSON, which the parser reports.
                let Some((end, escaped)) = string_end(raw, i, &stack)? else { return Ok(()) };
                if let Some(Frame::Object { expect_key: true, .. }) = stack.last() {
                    record_key(&mut stack, &mut keys, key_text(&raw[i..=end], escaped))?;
                }
                i = end + 1;
                continue;
            }
            // Outside strings a `-` only starts a number; `-0` then `.`, `e` or a digit is not
            // this integer (or not JSON, which the parser reports).
            b'-' if raw.get(i + 1) == Some(&b'0')
                && !matches!(raw.get(i + 2), Some(b'.' | b'e' | b'E' | b'0'..=b'9')) =>
            {
                return Err(Invalid::schema(
                    "negative_zero",
                    path(&stack),
                    "the number -0 is the integer 0 to some JSON readers and the float -0.0 to others; send 0",
                ));
            }
            b'{' | b'[' if stack.len() == MAX_DEPTH => {
                return Err(Invalid::schema(
                    "too_deep",
                    path(&stack),
                    format!("objects and arrays nest deeper than {MAX_DEPTH} levels; some JSON readers stop earlier"),
                ));
            }
            b'{' => stack.push(Frame::Object { start: keys.open(), many: None, key: None, expect_key: true }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                if let Some(Frame::Object { start, .. }) = stack.pop() {
                    keys.close(start);
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Records `name` as the next key of the innermost object (which expects a key).
///
/// # Errors
/// `duplicate_key` when that object already has it.
fn record_key<'a>(stack: &mut [Frame<'a>], keys: &mut Keys<'a>, name: Cow<'a, [u8]>) -> Result<(), Invalid> {
    let parent = stack.len().saturating_sub(1);
    let Some(Frame::Object { start, many, key, expect_key }) = stack.last_mut() else { return Ok(()) };
    if !keys.insert(*start, many, name.clone()) {
        let name = String::from_utf8_lossy(&name);
        let at = format!("{}/{}", path(&stack[..parent]), pointer_escape(&name));
        return Err(Invalid::schema(
            "duplicate_key",
            at,
            format!("the key {name:?} appears twice in one object; JSON readers disagree on which value counts"),
        ));
    }
    *key = Some(name);
    *expect_key = false;
    Ok(())
}

/// True when [`check`] would surely pass `raw`, whose parsed form is `envelope`; false when it
/// might not (then run it). Costs a pass over the tape and three vectorised searches of the
/// bytes instead of [`check`]'s byte-by-byte scan with its key bookkeeping.
pub fn surely_strict(raw: &[u8], envelope: &Envelope<'_>) -> bool {
    // Control bytes: the smallest byte per 256 (a loop without an early exit, which the
    // compiler vectorises).
    !raw.chunks(256).any(|chunk| chunk.iter().copied().min().is_some_and(|least| least < 0x20))
        && memchr::memmem::find(raw, b"-0").is_none()
        // A `\u` escape is the one place where the parser's unescaping and `check`'s could
        // differ (lone surrogates); without one, keys on the tape are exactly the keys `check`
        // compares.
        && memchr::memmem::find(raw, b"\\u").is_none()
        && tape_is_strict(&envelope.tape)
}

/// No object on `tape` repeats a key, and nothing nests deeper than [`MAX_DEPTH`].
fn tape_is_strict(tape: &[Node<'_>]) -> bool {
    // The end (exclusive) of every container open at the node being read.
    let mut open: Vec<usize> = Vec::new();
    for (at, node) in tape.iter().enumerate() {
        while open.last().is_some_and(|&end| end <= at) {
            open.pop();
        }
        if let Node::Object { .. } | Node::Array { .. } = node {
            if open.len() == MAX_DEPTH {
                return false;
            }
            if let Node::Object { len, .. } = node {
                if !keys_unique(tape, at, *len) {
                    return false;
                }
            }
            open.push(at + span(node));
        }
    }
    true
}

/// Whether the object at `at` (with `len` keys) has no key twice: pairwise for the handful of
/// keys real objects have, a hash set past [`LINEAR_KEYS`].
fn keys_unique(tape: &[Node<'_>], at: usize, len: usize) -> bool {
    if len > LINEAR_KEYS {
        let mut seen = HashSet::with_capacity(len);
        return entries(tape, at).all(|(key, _)| seen.insert(key));
    }
    let mut keys = [""; LINEAR_KEYS];
    for (n, (key, _)) in entries(tape, at).enumerate() {
        if keys[..n].contains(&key) {
            return false;
        }
        keys[n] = key;
    }
    true
}

/// The keys of every open object, outermost first: an object's keys are pushed after those of
/// the objects around it and popped when it closes, and while it is open no outer object gets a
/// key. One allocation per document instead of a hash set per object.
#[derive(Default)]
struct Keys<'a> {
    stack: Vec<Cow<'a, [u8]>>,
}

impl<'a> Keys<'a> {
    /// Where the keys of an object opening now start.
    fn open(&self) -> usize {
        self.stack.len()
    }

    /// Forgets the keys of the object whose keys start at `start`.
    fn close(&mut self, start: usize) {
        self.stack.truncate(start);
    }

    /// Adds `name` to the innermost open object (keys from `start`, or `many` once it has more
    /// than [`LINEAR_KEYS`]); false if the object already has it.
    fn insert(&mut self, start: usize, many: &mut Option<HashSet<Cow<'a, [u8]>>>, name: Cow<'a, [u8]>) -> bool {
        if let Some(set) = many {
            return set.insert(name);
        }
        let own = &self.stack[start..];
        if own.contains(&name) {
            return false;
        }
        if own.len() == LINEAR_KEYS {
            let mut set: HashSet<_> = self.stack.drain(start..).collect();
            set.insert(name);
            *many = Some(set);
        } else {
            self.stack.push(name);
        }
        true
    }
}

/// The index of the quote closing the string that opens at `start`, and whether it had escapes;
/// `None` if the string never ends.
fn string_end(raw: &[u8], start: usize, stack: &[Frame<'_>]) -> Result<Option<(usize, bool)>, Invalid> {
    let mut j = start + 1;
    let mut escaped = false;
    while j < raw.len() {
        j = skip_plain(raw, j);
        let Some(&byte) = raw.get(j) else { break };
        match byte {
            b'\\' => {
                escaped = true;
                j += 2;
                continue;
            }
            b'"' => return Ok(Some((j, escaped))),
            c if c < 0x20 => {
                return Err(Invalid {
                    kind: InvalidKind::Malformed,
                    code: "control_character",
                    message: format!("a string contains the raw control character U+{c:04X}; escape it (\\u{c:04x})"),
                    path: path(stack),
                })
            }
            _ => j += 1,
        }
    }
    Ok(None)
}

/// The first index from `at` that may hold a quote, a backslash or a control character: skips
/// eight bytes at a time while none of them is one (most of a body is string text, and a byte
/// at a time was most of this check's cost).
fn skip_plain(raw: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Whether any byte of `word` is below `n` (n <= 128; "Bit Twiddling Hacks", hasless).
    let any_below = |word: u64, n: u8| word.wrapping_sub(ONES * n as u64) & !word & HIGH != 0;
    while let Some(chunk) = raw.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let special = any_below(word, 0x20)
            || any_below(word ^ (ONES * b'"' as u64), 1)
            || any_below(word ^ (ONES * b'\\' as u64), 1);
        if special {
            break;
        }
        at += 8;
    }
    at
}

/// A key's bytes: as they are, or decoded when it has escapes (`"a"` and `"\u0061"` are one
/// key). Compared as bytes; made text only for an error message (most keys are never decoded
/// or checked as UTF-8 here: the parser checks the whole body).
fn key_text(quoted: &[u8], escaped: bool) -> Cow<'_, [u8]> {
    if escaped {
        if let Ok(s) = serde_json::from_slice::<String>(quoted) {
            return Cow::Owned(s.into_bytes());
        }
    }
    Cow::Borrowed(&quoted[1..quoted.len() - 1])
}

/// The JSON pointer of the place being read.
fn path(stack: &[Frame<'_>]) -> String {
    let mut out = String::new();
    for frame in stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                out.push('/');
                out.push_str(&pointer_escape(&String::from_utf8_lossy(k)));
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
        }
    }
    out
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn pointer_escape(key: &str) -> Cow<'_, str> {
    if key.contains(['~', '/']) {
        Cow::Owned(key.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_and_path(body: &str) -> Option<(&'static str, String)> {
        check(body.as_bytes()).err().map(|e| (e.code, e.path))
    }

    /// The screen vouches for a body only where the full scan finds nothing.
    fn screened(body: &str) -> bool {
        let mut scratch = body.as_bytes().to_vec();
        let envelope = Envelope::parse(&mut scratch).expect("a body with an events array");
        let vouched = surely_strict(body.as_bytes(), &envelope);
        if vouched {
            assert_eq!(check(body.as_bytes()), Ok(()), "vouched for a body the scan refuses: {body}");
        }
        vouched
    }

    #[test]
    fn the_screen_vouches_for_plain_bodies_and_sends_every_doubtful_one_to_the_full_scan() {
        let event = r#"{"event_type":"a","event_time":1,"user_id":"u","x":{"y":[1,{"z":2}]}}"#;
        let wrap = |event: &str| {
            format!(r#"{{"events":[{event},{event}],"ctx":{{"browser":"b","device":"d","version":"v"}}}}"#)
        };
        assert!(screened(&wrap(event)), "a compact body without any of the four needs no scan");
        // Repeated keys, at any level, also where only unescaping makes them equal.
        for doubtful in [
            event.replace(r#""x":"#, r#""user_id":"v","x":"#),
            event.replace(r#""z":2"#, r#""z":2,"z":3"#),
            event.replace(r#""x":"#, r#""x":1,"x":"#),
            event.replace(r#""x":"#, r#""a"b":1,"a"b":2,"x":"#),
            // -0, and what merely looks like it.
            event.replace(r#""event_time":1"#, r#""event_time":-0"#),
            event.replace(r#""event_time":1"#, r#""event_time":1,"lat":-0.5"#),
            // Whitespace between tokens, and a raw control character in a string.
            event.replace(',', ",\n"),
            event.replace(r#""u""#, "\"u\u{1}\""),
            // Nesting past the limit: the body, events, the event and x, then y's arrays.
            event.replace(
                r#""y":[1,{"z":2}]"#,
                &format!(r#""y":{}1{}"#, "[".repeat(MAX_DEPTH - 3), "]".repeat(MAX_DEPTH - 3)),
            ),
        ] {
            let body = wrap(&doubtful);
            if Envelope::parse(&mut body.as_bytes().to_vec()).is_ok() {
                assert!(!screened(&body), "the screen vouched for {body}");
            }
        }
        // At the limit, and compact: vouched for (and the scan agrees).
        let deep = format!(r#""y":{}1{}"#, "[".repeat(MAX_DEPTH - 4), "]".repeat(MAX_DEPTH - 4));
        assert!(screened(&wrap(&event.replace(r#""y":[1,{"z":2}]"#, &deep))));
        // Many keys, all different, past the linear limit: vouched for; one repeated: not.
        let many: Vec<String> = (0..LINEAR_KEYS + 5).map(|k| format!(r#""k{k}":{k}"#)).collect();
        let wide = event.replace(r#""x":"#, &format!("{},\"x\":", many.join(",")));
        assert!(screened(&wrap(&wide)));
        let repeated = event.replace(r#""x":"#, &format!("{},\"k3\":0,\"x\":", many.join(",")));
        assert!(!screened(&wrap(&repeated)));
    }

    #[test]
    fn the_eight_byte_skip_stops_at_or_before_every_byte_that_ends_or_breaks_a_string() {
        let specials = [b'"', b'\\', 0x00, 0x07, 0x1f];
        let plain = [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xc3, 0xff];
        for &filler in &plain {
            for len in 0..40 {
                let mut body = vec![filler; len];
                // No special byte: the skip stops only within eight bytes of the end.
                let end = skip_plain(&body, 0);
                assert!(end <= len && end + 8 > len, "filler {filler:#x}, len {len}: stopped at {end}");
                for &special in &specials {
                    for at in 0..len {
                        body[at] = special;
                        let stop = skip_plain(&body, 0);
                        assert!(stop <= at && at < stop + 8, "{special:#x} at {at} of {len}: stopped at {stop}");
                        body[at] = filler;
                    }
                }
            }
        }
    }

    #[test]
    fn duplicate_keys_are_refused_wherever_they_are() {
        assert_eq!(code_and_path(r#"{"a":1,"a":2}"#), Some(("duplicate_key", "/a".into())));
        assert_eq!(
            code_and_path(r#"{"events":[{"x":1},{"user_id":"a","user_id":"b"}]}"#),
            Some(("duplicate_key", "/events/1/user_id".into()))
        );
        assert_eq!(code_and_path(r#"{"ctx":{"a/b":1,"a/b":2}}"#), Some(("duplicate_key", "/ctx/a~1b".into())));
        // The same key spelled with an escape is the same key.
        assert_eq!(code_and_path(r#"{"a":1,"\u0061":2}"#), Some(("duplicate_key", "/a".into())));
    }

    #[test]
    fn duplicate_keys_are_found_past_the_linear_scan_and_after_nested_objects() {
        // Objects with more keys than the linear scan takes, duplicates before and after the
        // switch to a hash set, and keys of a closed inner object that must not count.
        let keys = |n: usize| (0..n).map(|k| format!(r#""k{k}":{k}"#)).collect::<Vec<_>>().join(",");
        for n in [LINEAR_KEYS - 1, LINEAR_KEYS, LINEAR_KEYS + 1, 3 * LINEAR_KEYS] {
            assert_eq!(code_and_path(&format!("{{{}}}", keys(n))), None, "{n} keys");
            for dup in [0, n / 2, n - 1] {
                let body = format!(r#"{{"o":{{{},"k{dup}":1}}}}"#, keys(n));
                assert_eq!(code_and_path(&body), Some(("duplicate_key", format!("/o/k{dup}"))), "{n} keys, k{dup}");
            }
        }
        let nested = format!(r#"{{"a":{{{}}},"b":{{"a":1}},"k0":[{{"k0":1}}],"a":2}}"#, keys(2 * LINEAR_KEYS));
        assert_eq!(code_and_path(&nested), Some(("duplicate_key", "/a".into())));
        let fine = format!(r#"{{"a":{{{}}},"k1":{{"k1":{{"k1":1}}}},"k2":1}}"#, keys(2 * LINEAR_KEYS));
        assert_eq!(code_and_path(&fine), None);
    }

    #[test]
    fn equal_keys_in_different_objects_and_keylike_values_are_fine() {
        assert_eq!(code_and_path(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}],"c":"a","d":["a","a"]}"#), None);
        assert_eq!(code_and_path(r#"{"a":"x\"y","b":"\\","c":"\\\""}"#), None);
    }

    #[test]
    fn raw_control_characters_in_strings_are_refused_escaped_ones_are_fine() {
        assert_eq!(
            code_and_path("{\"events\":[{\"user_id\":\"a\u{1}b\"}]}"),
            Some(("control_character", "/events/0/user_id".into()))
        );
        assert_eq!(code_and_path("{\"a\":\"tab\there\"}"), Some(("control_character", "/a".into())));
        assert_eq!(code_and_path(r#"{"a":"\u0001\t\n"}"#), None);
        // Whitespace between tokens is not inside a string.
        assert_eq!(code_and_path("{\n\t\"a\" :\r\n 1 }"), None);
    }

    #[test]
    fn negative_zero_is_refused_where_it_is_an_integer() {
        // Found by the `collect_request` fuzz target: accepted as event_time 0, while serde_json
        // reads the raw body's `-0` as the float -0.0.
        assert_eq!(
            code_and_path(r#"{"events":[{"event_time":-0}]}"#),
            Some(("negative_zero", "/events/0/event_time".into()))
        );
        assert_eq!(code_and_path(r#"{"a":[1, -0 ]}"#), Some(("negative_zero", "/a/1".into())));
        assert_eq!(code_and_path("-0"), Some(("negative_zero", String::new())));
        for fine in [r#"{"a":-0.0,"b":-0e1,"c":-0E-1,"d":-1,"e":-10,"f":0,"g":"-0","h":"x\"-0"}"#, "-01"] {
            assert_eq!(code_and_path(fine), None, "{fine}");
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused_where_it_goes_too_deep() {
        // Found with the `collect_request` fuzz target's row check: 200 levels in an unknown
        // field were accepted (simd-json reads 1024), and serde_json refuses past 128.
        let nest = |levels: usize| format!(r#"{{"deep":{}1{}}}"#, "[".repeat(levels - 1), "]".repeat(levels - 1));
        assert_eq!(code_and_path(&nest(MAX_DEPTH)), None);
        let path = format!("/deep{}", "/0".repeat(MAX_DEPTH - 1));
        assert_eq!(code_and_path(&nest(MAX_DEPTH + 1)), Some(("too_deep", path)));
        assert_eq!(code_and_path(&nest(200)).map(|(code, _)| code), Some("too_deep"));
    }

    #[test]
    fn malformed_input_never_panics() {
        for body in ["{\"a", "{\"a\\", "\"", "{\"a\":\"\\", "}}]]", "{\"a\":1,\"a"] {
            let _ = check(body.as_bytes());
        }
    }
}
