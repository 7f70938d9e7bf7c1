//! The acknowledgement policy: when `/collect` answers 2xx.
//!
//! - [`Ack::Wal`] (the default): once the request's record is durable in the local WAL (its
//!   group commit's fsync). Fast (one fsync, shared), and Kafka being away costs nothing until
//!   the WAL quota fills; the price is that an acknowledged batch lives on one disk until the
//!   flusher delivers it (seconds, normally; as long as an outage lasts, otherwise).
//! - [`Ack::Kafka`]: in addition, only once Kafka confirmed the record (the flusher's
//!   transaction holding it committed, in exactly-once mode; the broker acknowledged it, in
//!   at-least-once mode), so an acknowledged batch is replicated as the raw topic is. The price
//!   is latency (a flusher batch and a transaction commit on top of the fsync) and 503s while
//!   Kafka is away: `kafka_unavailable` (nothing stored) while the flusher knows Kafka is
//!   unreachable, `kafka_unconfirmed` (stored, and delivered later) when Kafka did not confirm
//!   in time. A client that retries with the same `Idempotency-Key` after
//!   `kafka_unconfirmed` gets the first attempt's receipt once Kafka has it, and stores nothing
//!   twice; a client without one may store the batch twice.
//!
//! Under `Kafka`, a request waiting for Kafka has released its in-flight permit and its share
//! of the WAL quota (its body is in the WAL): the wait holds only its connection, which
//! `--max-connections` bounds.

use std::time::Duration;

use super::IngestError;
use crate::flush::{Fate, FlushStatus};

/// When `/collect` answers 2xx (`--ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Once the record is durable in the WAL.
    Wal,
    /// Once Kafka confirmed the record; a 503 `kafka_unconfirmed` after `timeout`.
    Kafka { timeout: Duration },
}

impl Ack {
    /// Whether a 2xx waits for Kafka (`--ack kafka`): then an unreachable Kafka refuses
    /// requests instead of filling the WAL.
    pub fn waits_for_kafka(self) -> bool {
        matches!(self, Ack::Kafka { .. })
    }
}

/// Under [`Ack::Kafka`], waits until Kafka confirmed record `seq`.
///
/// # Errors
/// [`IngestError::KafkaUnconfirmed`] if Kafka did not confirm it within the policy's timeout;
/// [`IngestError::KafkaRefused`] if Kafka refused it for what it is and it was set aside.
pub async fn confirmed(ack: Ack, flush: &FlushStatus, seq: u64) -> Result<(), IngestError> {
    let Ack::Kafka { timeout } = ack else { return Ok(()) };
    match tokio::time::timeout(timeout, flush.confirmation(seq)).await {
        Ok(Fate::Delivered) => Ok(()),
        Ok(Fate::SetAside) => Err(IngestError::KafkaRefused { seq }),
        Err(_) => Err(IngestError::KafkaUnconfirmed { seq, waited_ms: timeout.as_millis() as u64 }),
    }
}
