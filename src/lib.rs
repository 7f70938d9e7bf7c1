//! # collector
//!
//! A durable event collector for Kafka: accepted means on disk, and everything on disk reaches
//! Kafka.
//!
//! # Layout
//!
//! ```text
//!  HTTP POST /collect
//!        │  body (gzip decoded), validated with simd-json
//!        ▼
//!  ingest ──framed record──▶ wal ──(fsync, group commit)──▶ 200 receipt
//!                             │
//!                             │ records in sequence order
//!                             ▼
//!                           flush ──one message per request──▶ Kafka `collect-topic1`
//!                             │ ack_through(seq) once Kafka confirmed          │
//!                             ▼                                                ▼
//!                        segments reclaimed                  transform (consumer group)
//!                                                   one row per event ──▶ `collect-topic2`
//!                                                   unreadable message ──▶ dead-letter topic
//! ```
//!
//! - [`schema`]: the event schema: request, event, context and user-id types, parsing and field
//!   validation (simd-json). Ingest and the transform both read bodies with it.
//! - [`ingest`]: HTTP server; decoding, limits, error responses, API keys and CORS, the live
//!   status page and its document (on a separate admin listener), with its once-a-second history.
//! - [`wal`]: sled write-ahead log with group commit, checksummed framing, segment reclamation.
//! - [`heal`]: the WAL's disk: free-space headroom, and a restart in place that reopens the
//!   WAL after a storage fault.
//! - [`flush`]: drains the WAL into the raw topic; acknowledges only what Kafka confirmed.
//! - [`transform`]: raw request → rows; the consumer-group worker that produces them.
//! - [`kafka`]: settings, topic creation, and the [`kafka::outbox`] both stages produce
//!   through (a batch plus the caller's offsets, one transaction; or at-least-once).
//! - [`node`]: the node id that names transactional producers, the position group and headers.
//! - [`retry`]: the one backoff and stop signal every retry loop uses.
//! - [`config`]: the command line, environment and `--config` file (in that precedence),
//!   validated at start-up; `collector config check`.
//! - [`app`]: wires the stages into the `run`, `serve` and `transform` modes.
//! - [`telemetry`]: metric names, the Prometheus recorder, and the stages' recent errors.
//!
//! Dependencies point one way; no module imports one that imports it back: `config` → `app` →
//! the stages (`ingest`, `flush`, `transform`) → `kafka`, `wal`, `heal`, `schema`, `node` → the
//! leaf helpers (`retry`, `telemetry`, `now_ms`). One stage reads others: `ingest` shows the
//! flusher's and the transform's status and sizes rows with `transform::row` (to refuse at the door a request whose
//! rows Kafka could not take). Inside each folder the same holds between its files. The stages meet Kafka only through
//! traits (`kafka::Outbox`, `flush::position::PositionStore`, `transform::source::Source`) and
//! the disk only through `wal::LogStore`, so their loops are unit-tested with fakes.

pub mod app;
pub mod config;
pub mod flush;
pub mod heal;
pub mod ingest;
pub mod kafka;
pub mod node;
pub mod retry;
pub mod schema;
pub mod telemetry;
pub mod transform;
pub mod wal;

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
