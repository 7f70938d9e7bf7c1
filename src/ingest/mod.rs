//! Ingest: the HTTP front door.
//!
//! # Contract
//! In: `POST /collect` requests. Out: for each valid request, one framed record appended to the
//! WAL; the client gets `200 {"status":"ok","seq":…,"events":…}` only after the WAL reports the
//! record durable. Every rejection is a JSON error with a stable `code` (see [`IngestError`]);
//! a rejected request writes nothing, so it can harm neither the WAL nor Kafka nor the next
//! request. Bodies are read with the [`crate::schema`]; ingest adds its own limits: bytes on the
//! wire and after gzip decoding; events per request, bytes per field, of `ctx` and of the rows a
//! request turns into; and one reading for every JSON parser (no duplicate keys, no raw control
//! characters) ([`validate`]). Slow bodies and slow headers time out. `/collect` and `/readyz` share one readiness check ([`IngestState::unready`]).
//! Not guaranteed: a client whose connection drops after the WAL append but before the response
//! will retry and may store the batch twice (unless it sends an `Idempotency-Key`).

mod body;
mod error;
pub mod server;
mod state;
mod status;
pub mod validate;

pub use body::{decode_body, BodyLimits};
pub use error::IngestError;
pub use server::{router, serve};
pub use state::{IngestState, ServerOptions, Unready};
pub use validate::EventLimits;
