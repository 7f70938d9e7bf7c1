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
//! characters) ([`validate`]). Slow bodies and slow headers time out. `/collect` and `/readyz` share one readiness check ([`IngestState::unready`]):
//! draining, a failed or stalled WAL (`wal_unavailable`), the WAL quota or its disk's free-space
//! headroom (`wal_full`); under `--ack kafka` also a flusher that cannot reach Kafka
//! (`kafka_unavailable`).
//!
//! When the 2xx comes is the acknowledgement policy ([`ack`]): after the WAL's fsync (default),
//! or also after Kafka confirmed the record (`--ack kafka`).
//!
//! Access ([`auth`], [`cors`]): with API keys configured, `/collect` refuses a request without a
//! valid key (`401`) before reading its body, and hands the handler the caller's [`ClientId`];
//! with CORS origins configured, pages of other origins are refused (`403`). The status page and
//! `/metrics` are served only by the admin router ([`admin_router`]), which the binary binds to a
//! separate, by default loopback-only, address; the public router ([`router`]) serves `/collect`,
//! `/healthz` and `/readyz`. Both serve `/openapi.json`, the OpenAPI 3.1 document of every route
//! and error code ([`openapi`]).
//!
//! The status page is one static, self-contained HTML page that reads the status document
//! (`/status.json`, or `/` with `Accept: application/json`) every second and updates itself:
//! the state, throughput and backlog with their last five minutes ([`History`], sampled by
//! [`sample`]), the WAL, each Kafka client's connection, the transform's lag, the last errors
//! and a [`ConfigSummary`].
//!
//! Every answer carries an `X-Request-Id`, the client's or a new one, and every log line about
//! the request carries the same id ([`request_id`]).
//!
//! Not guaranteed: a client whose connection drops after the WAL append but before the response
//! will retry and may store the batch twice (unless it sends an `Idempotency-Key`).

pub mod ack;
pub mod auth;
mod body;
pub mod cors;
mod error;
mod history;
mod openapi;
pub mod request_id;
mod sampler;
pub mod server;
mod state;
mod status;
mod summary;
pub mod validate;

pub use ack::Ack;
pub use auth::{ApiKeys, ClientId};
pub use body::{decode_body, BodyLimits};
pub use cors::Cors;
pub use error::IngestError;
pub use history::History;
pub use sampler::sample;
pub use server::{admin_router, router, serve};
pub use state::{Accepted, IngestState, ServerOptions, Unready};
pub use summary::ConfigSummary;
pub use validate::EventLimits;
