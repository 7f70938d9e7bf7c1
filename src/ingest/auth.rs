//! API keys: who may post to `/collect`.
//!
//! # Contract
//! - No key configured ([`ApiKeys::is_open`]): `/collect` is open, as it always was, and every
//!   request's client is `None`.
//! - Keys configured: a request presents one in `X-Api-Key: <key>`, in
//!   `Authorization: Bearer <key>`, or in the query parameter `?api_key=<key>` (for
//!   `navigator.sendBeacon`, which cannot set headers), looked for in that order; the first one
//!   found is the one checked. None: `401 missing_api_key`; not a configured key:
//!   `401 invalid_api_key`; both with `WWW-Authenticate`. [`Client`] checks it as an extractor,
//!   before the body is read: a refused request costs no body read and writes no WAL byte.
//! - Constant time: the SHA-256 digest of the presented key is compared with the digest of
//!   every configured key by [`subtle`], all of them, without stopping at a match, so the time
//!   taken tells neither how much of a key was right nor which key matched.
//! - A matched key gives the request a [`ClientId`]: the first 16 hex digits of the key's SHA-256
//!   (`printf %s KEY | sha256sum | cut -c1-16`). It is stable across restarts and key-file
//!   reorderings, names a client in logs, and is no use for presenting the key; `Idempotency-Key`s
//!   are scoped by it (`server::client_scope`), so one client cannot collide with another's keys.
//! - Keys are never logged: [`ApiKeys`]'s `Debug` shows client ids only.
//!
//! Not guaranteed: secrecy on the wire (terminate TLS in front of the collector), nor in the
//! access logs of proxies, which record query strings — prefer the header; the query parameter
//! exists for beacons. Keys are read once, at start-up.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderName};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::IngestError;

/// The header a key is sent in.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
/// The query parameter a key is sent in when headers cannot be set (`sendBeacon`).
pub const API_KEY_PARAM: &str = "api_key";
/// Shortest key accepted: the client id is part of the key's digest, which a short key would
/// let anyone reverse by trying candidates.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 256;

/// A client's stable, non-secret name: the first 8 bytes of its key's SHA-256, shown as 16 hex
/// digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId([u8; 8]);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

/// One configured key, kept only as its digest.
#[derive(Clone)]
struct Configured {
    digest: [u8; 32],
    client: ClientId,
}

/// The configured API keys (empty: `/collect` is open). Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<[Configured]>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys").field("clients", &self.clients()).finish()
    }
}

impl ApiKeys {
    /// Keeps the digests of `keys`. A key that appears twice is kept once.
    ///
    /// # Errors
    /// A sentence naming the first key (by position, never by value) that is shorter than
    /// [`MIN_KEY_LEN`], longer than [`MAX_KEY_LEN`], or holds anything but printable ASCII
    /// without spaces.
    pub fn new<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Result<ApiKeys, String> {
        let mut configured: Vec<Configured> = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let key = key.as_ref();
            if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
                return Err(format!(
                    "API key {} is {} characters long; use {MIN_KEY_LEN} to {MAX_KEY_LEN} (e.g. `openssl rand -hex 24`)",
                    i + 1,
                    key.len()
                ));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("API key {} holds a character that is not printable ASCII (or a space)", i + 1));
            }
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            if configured.iter().all(|c| c.digest != digest) {
                let client = ClientId(digest[..8].try_into().expect("8 of 32 bytes"));
                configured.push(Configured { digest, client });
            }
        }
        Ok(ApiKeys { keys: configured.into() })
    }

    /// True when no key is configured: every request is let in.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured clients, in configuration order.
    pub fn clients(&self) -> Vec<ClientId> {
        self.keys.iter().map(|k| k.client).collect()
    }

    /// Checks the key a request presents (see the module's contract).
    ///
    /// # Errors
    /// [`IngestError::MissingApiKey`] if keys are configured and the request presents none;
    /// [`IngestError::InvalidApiKey`] if it presents one that is not configured.
    pub fn authenticate(&self, parts: &Parts) -> Result<Option<ClientId>, IngestError> {
        if self.is_open() {
            return Ok(None);
        }
        let presented = presented_key(parts).ok_or(IngestError::MissingApiKey)?;
        self.find(presented.as_bytes()).map(Some).ok_or(IngestError::InvalidApiKey)
    }

    /// The client whose key is `key`, comparing with every configured key in constant time.
    fn find(&self, key: &[u8]) -> Option<ClientId> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let mut matched = Choice::from(0);
        let mut index = 0u64;
        for (i, configured) in self.keys.iter().enumerate() {
            let equal = configured.digest.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), equal);
            matched |= equal;
        }
        bool::from(matched).then(|| self.keys[index as usize].client)
    }
}

/// Reads a key file: one key per line; blank lines and lines starting with `#` are skipped,
/// surrounding whitespace is trimmed.
pub fn parse_key_file(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

/// The key a request presents: `X-Api-Key`, else `Authorization: Bearer`, else `?api_key=`.
/// An empty value counts as none.
fn presented_key(parts: &Parts) -> Option<String> {
    let header_key = parts.headers.get(API_KEY_HEADER).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let bearer = || {
        let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
    };
    let query = || {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).ok()?;
        pairs.into_iter().find(|(name, _)| name == API_KEY_PARAM).map(|(_, value)| value)
    };
    header_key.or_else(bearer).or_else(query).filter(|k| !k.is_empty())
}

/// The `/collect` handler's view of who is calling: `Some` client when keys are configured
/// (and the request presented one of them), `None` when `/collect` is open. Extracting it
/// refuses the request without a valid key, before the body is read.
#[derive(Debug, Clone, Copy)]
pub struct Client(pub Option<ClientId>);

/// What a router's state offers the [`Client`] extractor: the configured keys. A trait rather
/// than the ingest state itself, so that this module does not depend on the state that holds it.
pub trait HoldsApiKeys {
    fn api_keys(&self) -> &ApiKeys;
}

impl<S: HoldsApiKeys + Send + Sync> FromRequestParts<Arc<S>> for Client {
    type Rejection = IngestError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<S>) -> Result<Self, Self::Rejection> {
        state.api_keys().authenticate(parts).map(Client)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    const KEY_A: &str = "key-a-0123456789abcdef";
    const KEY_B: &str = "key-b-0123456789abcdef";

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn check(keys: &ApiKeys, uri: &str, headers: &[(&str, &str)]) -> Result<Option<ClientId>, &'static str> {
        keys.authenticate(&parts(uri, headers)).map_err(|e| e.code())
    }

    #[test]
    fn without_keys_everything_is_let_in_as_no_client() {
        let open = ApiKeys::new(Vec::<String>::new()).unwrap();
        assert!(open.is_open());
        assert_eq!(check(&open, "/collect", &[]), Ok(None));
        assert_eq!(check(&open, "/collect?api_key=whatever", &[("x-api-key", "x")]), Ok(None));
    }

    #[test]
    fn a_key_is_accepted_from_the_header_the_bearer_token_or_the_query() {
        let keys = ApiKeys::new([KEY_A, KEY_B]).unwrap();
        let b = keys.clients()[1];
        assert_eq!(check(&keys, "/collect", &[("x-api-key", KEY_B)]), Ok(Some(b)));
        assert_eq!(check(&keys, "/collect", &[("authorization", &format!("Bearer {KEY_B}"))]), Ok(Some(b)));
        assert_eq!(check(&keys, "/collect", &[("authorization", &format!("bearer  {KEY_B} "))]), Ok(Some(b)));
        assert_eq!(check(&keys, &format!("/collect?x=1&api_key={KEY_B}"), &[]), Ok(Some(b)));
        assert_eq!(check(&keys, "/collect", &[("x-api-key", KEY_A)]), Ok(Some(keys.clients()[0])));
    }

    #[test]
    fn a_missing_key_and_a_wrong_key_are_told_apart() {
        let keys = ApiKeys::new([KEY_A]).unwrap();
        assert_eq!(check(&keys, "/collect", &[]), Err("missing_api_key"));
        assert_eq!(check(&keys, "/collect?api_key=", &[("x-api-key", "")]), Err("missing_api_key"));
        assert_eq!(check(&keys, "/collect", &[("authorization", &format!("Basic {KEY_A}"))]), Err("missing_api_key"));
        assert_eq!(check(&keys, "/collect", &[("x-api-key", "key-a-0123456789abcdeF")]), Err("invalid_api_key"));
        assert_eq!(check(&keys, "/collect", &[("x-api-key", &KEY_A[..KEY_A.len() - 1])]), Err("invalid_api_key"));
        assert_eq!(check(&keys, "/collect?api_key=nope", &[]), Err("invalid_api_key"));
        // The header is checked first: a wrong header is not rescued by a right query.
        assert_eq!(
            check(&keys, &format!("/collect?api_key={KEY_A}"), &[("x-api-key", "wrong")]),
            Err("invalid_api_key")
        );
    }

    #[test]
    fn the_client_id_is_the_keys_sha256_prefix_whatever_the_order() {
        let ab = ApiKeys::new([KEY_A, KEY_B]).unwrap().clients();
        let ba = ApiKeys::new([KEY_B, KEY_A, KEY_B]).unwrap().clients();
        assert_eq!(ba, vec![ab[1], ab[0]], "a repeated key is kept once; ids do not depend on order");
        // printf %s key-a-0123456789abcdef | sha256sum | cut -c1-16
        let expected: String = Sha256::digest(KEY_A).iter().take(8).map(|b| format!("{b:02x}")).collect();
        assert_eq!(ab[0].to_string(), expected);
        assert_eq!(ab[0].to_string().len(), 16);
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let keys = ApiKeys::new([KEY_A]).unwrap();
        let shown = format!("{keys:?}");
        assert!(!shown.contains(KEY_A) && shown.contains(&keys.clients()[0].to_string()), "{shown}");
    }

    #[test]
    fn short_long_or_unprintable_keys_refuse_to_boot() {
        assert!(ApiKeys::new(["short"]).unwrap_err().contains("API key 1"));
        assert!(ApiKeys::new([KEY_A.to_string(), "k".repeat(MAX_KEY_LEN + 1)]).unwrap_err().contains("API key 2"));
        assert!(ApiKeys::new(["with a space 0123456789"]).is_err());
        assert!(ApiKeys::new(["tab\there-0123456789"]).is_err());
        let err = ApiKeys::new(["secret-short"]).map(|_| ()).unwrap_err();
        assert!(!err.contains("secret"), "the message names the key by position: {err}");
    }

    #[test]
    fn key_files_skip_comments_and_blank_lines() {
        let text = "# web trackers\n  key-a-0123456789abcdef  \n\n#key-old-0123456789\r\nkey-b-0123456789abcdef\r\n";
        assert_eq!(parse_key_file(text), vec![KEY_A, KEY_B]);
        assert!(parse_key_file("# none\n\n").is_empty());
    }
}
