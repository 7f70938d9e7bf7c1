//! Record framing: how one accepted request is laid out in a sled value.
//!
//! ```text
//! offset  size  field
//! 0       1     format version, currently 1
//! 1       4     CRC-32 (IEEE, crc32fast) of every byte from offset 5 to the end
//! 5       8     received_at_ms: u64 big-endian, wall clock when the request was accepted
//! 13      2     client_len: u16 big-endian
//! 15      n     client: UTF-8, the peer address the request came from
//! 15+n    ..    payload: the request body as received, after gzip decoding
//! ```
//!
//! The checksum covers the metadata and the payload, so a torn value or a flipped bit anywhere
//! after the version byte is detected by [`decode`]; a wrong version byte is reported as such.

use thiserror::Error;

/// The only framing version written today.
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 15;

/// One accepted request, as the ingest stage hands it to the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Milliseconds since the Unix epoch at which the collector accepted the request.
    pub received_at_ms: u64,
    /// Peer address of the client ("where it was received from"); may be empty.
    pub client: &'a str,
    /// The request body as received (decompressed), byte for byte.
    pub payload: &'a [u8],
}

/// Why a stored value could not be decoded. Every variant means the record is unusable as-is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("record is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("record has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record client field is {client_len} bytes but only {available} remain")]
    BadLength { client_len: usize, available: usize },
    #[error("record client field is not UTF-8")]
    ClientNotUtf8,
}

/// Frames `entry` into a freshly allocated value ready to be stored.
pub fn encode(entry: &Entry<'_>) -> Vec<u8> {
    // Client addresses are short; clamp rather than fail on something absurd.
    let client = truncate_utf8(entry.client, u16::MAX as usize);
    let mut out = Vec::with_capacity(HEADER_LEN + client.len() + entry.payload.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&entry.received_at_ms.to_be_bytes());
    out.extend_from_slice(&(client.len() as u16).to_be_bytes());
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(entry.payload);
    let crc = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Checks the frame and returns a view borrowing from `bytes`.
///
/// # Errors
/// A [`FrameError`] when the value is truncated, has an unknown version or fails its checksum.
pub fn decode(bytes: &[u8]) -> Result<Entry<'_>, FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::TooShort { len: bytes.len() });
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(FrameError::UnknownVersion(bytes[0]));
    }
    let stored = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&bytes[5..]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let received_at_ms = u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes"));
    let client_len = u16::from_be_bytes(bytes[13..15].try_into().expect("2 bytes")) as usize;
    let rest = &bytes[HEADER_LEN..];
    if client_len > rest.len() {
        return Err(FrameError::BadLength { client_len, available: rest.len() });
    }
    let client = std::str::from_utf8(&rest[..client_len]).map_err(|_| FrameError::ClientNotUtf8)?;
    Ok(Entry { received_at_ms, client, payload: &rest[client_len..] })
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(&Entry { received_at_ms: 1_750_867_000_123, client: "127.0.0.1:5555", payload: br#"{"events":[]}"# })
    }

    #[test]
    fn round_trips() {
        let framed = sample();
        let entry = decode(&framed).unwrap();
        assert_eq!(entry.received_at_ms, 1_750_867_000_123);
        assert_eq!(entry.client, "127.0.0.1:5555");
        assert_eq!(entry.payload, br#"{"events":[]}"#);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let framed = sample();
        for byte in 0..framed.len() {
            for bit in 0..8 {
                let mut corrupt = framed.clone();
                corrupt[byte] ^= 1 << bit;
                assert!(decode(&corrupt).is_err(), "flip of bit {bit} in byte {byte} went unnoticed");
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let framed = sample();
        for len in 0..framed.len() {
            assert!(decode(&framed[..len]).is_err(), "truncation to {len} bytes went unnoticed");
        }
    }
}
