//! WAL record framing (`wal::record`). Asserts:
//! - any stored bytes either fail to decode or decode to an entry that encodes back to exactly
//!   those bytes (the framing is canonical: no two byte strings mean one entry);
//! - `decode(encode(entry)) == entry` for entries built from the input, a client address past
//!   the `u16` length field being cut at a character boundary, never past it;
//! - flipping any single bit of a framed record is detected.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use collector::wal::record::{decode, encode, Entry};
use libfuzzer_sys::fuzz_target;

/// The most bytes a client address is framed with (its length is a `u16`).
const MAX_CLIENT: usize = u16::MAX as usize;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode(data) {
        assert_eq!(encode(&entry), data, "a decoded record encodes back to its bytes");
    }
    let _ = round_trip(Unstructured::new(data));
});

fn round_trip(mut u: Unstructured<'_>) -> arbitrary::Result<()> {
    let received_at_ms = u64::arbitrary(&mut u)?;
    let flip = u32::arbitrary(&mut u)?;
    // Sometimes a client address longer than the length field holds, cut where the input says.
    let long = bool::arbitrary(&mut u)?;
    let client = <&str>::arbitrary(&mut u)?;
    let client =
        if long && !client.is_empty() { client.repeat(MAX_CLIENT / client.len() + 1) } else { client.to_string() };
    let payload = u.take_rest();
    let entry = Entry { received_at_ms, client: &client, payload };
    let framed = encode(&entry);
    let back = decode(&framed).expect("a framed record decodes");
    assert_eq!((back.received_at_ms, back.payload), (received_at_ms, payload));
    if client.len() <= MAX_CLIENT {
        assert_eq!(back.client, client);
    } else {
        assert!(client.starts_with(back.client), "the client address is cut, not changed");
        assert!(back.client.len() > MAX_CLIENT - 4, "cut at the last character boundary within the limit");
    }
    let bit = flip as usize % (framed.len() * 8);
    let mut corrupt = framed;
    corrupt[bit / 8] ^= 1 << (bit % 8);
    assert!(decode(&corrupt).is_err(), "bit {bit} flipped went unnoticed");
    Ok(())
}
