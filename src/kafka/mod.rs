//! Kafka plumbing shared by the flusher and the transform worker.
//!
//! # Contract
//! [`KafkaSettings`] turns the command line into librdkafka configurations (user-supplied
//! properties win over ours, so TLS/SASL and tuning pass straight through). [`ensure_topics`]
//! creates missing topics and leaves existing ones alone, warning once where they or the
//! cluster do not fit the topic settings (too few brokers for the replication, say). The
//! [`outbox`] is the one way a stage produces: a batch plus the stage's offsets, committed
//! together (exactly-once) or delivered with every refusal reported (at-least-once); it sends
//! through [`batch::Batch`], which waits until Kafka confirmed or refused every message. Every
//! client logs through one context ([`LogContext`] and the `logs_to_tracing!` macro); the
//! stages' clients also report their connection state to a [`KafkaLink`] from librdkafka's
//! statistics.
//!
//! TLS and SASL: [`preflight()`] checks at start-up that Kafka accepts the configuration and
//! stops the start with one clear sentence if it refuses it (wrong password, untrusted
//! certificate…); an unreachable Kafka is no reason to stop. [`security`] says which errors are
//! such refusals and explains them; [`secrets`] keeps passwords and keys out of logs and shows.

mod admin;
pub mod batch;
pub(crate) mod context;
mod error;
pub mod link;
pub mod outbox;
mod preflight;
pub mod secrets;
pub mod security;
mod settings;

pub use admin::{ensure_topics, ensure_topics_retrying};
pub(crate) use context::logs_to_tracing;
pub use context::LogContext;
pub use error::KafkaStageError;
pub use link::{KafkaLink, LinkSnapshot, LinkState};
pub use outbox::{Delivered, Offsets, OutMessage, Outbox, OutboxError, ProducerOptions, TxnTimeouts};
pub use preflight::{preflight, Reach, PREFLIGHT_TIMEOUT};
pub use settings::{Guarantee, KafkaSettings, MESSAGE_OVERHEAD_BYTES};

/// Header names on raw (`collect-topic1`) messages.
pub mod headers {
    /// WAL sequence number of the request, decimal.
    pub const SEQ: &str = "collector-seq";
    /// When the collector accepted the request: milliseconds since the epoch, decimal.
    pub const RECEIVED_AT: &str = "collector-received-at";
    /// Which collector instance accepted it (`--node-id`).
    pub const NODE: &str = "collector-node";
    /// The client's address as the collector saw it.
    pub const CLIENT: &str = "collector-client";
    /// On dead-letter messages: why the transform could not read the raw message.
    pub const ERROR: &str = "collector-error";
    /// On dead-letter messages: where the raw message came from, `topic/partition/offset`.
    pub const SOURCE: &str = "collector-source";
}
