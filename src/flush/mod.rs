//! Flush: drains the WAL into the raw topic.
//!
//! # Contract
//! In: durable WAL records, in sequence order. Out: one message per record on the raw topic
//! (`collect-topic1`), value = the request body as received, headers = sequence number,
//! receive time, node id and client address ([`crate::kafka::headers`]). The WAL is
//! acknowledged (and its segments reclaimed) only up to the last record of a batch Kafka has.
//! While Kafka is unreachable the flusher retries with capped exponential backoff and ingest
//! keeps filling the WAL. It produces through the [`crate::kafka::outbox`].
//!
//! **Exactly-once** (default): each batch is one Kafka transaction from a producer with a
//! stable `transactional.id` (`collector-flush-<node id>`), and the WAL position after the
//! batch is committed in the same transaction ([`position`]). On start the producer fences
//! its previous incarnation and the flusher resumes after Kafka's committed position, so a
//! crash at any point neither loses nor repeats a record for `read_committed` readers. Fenced
//! by another live process with the same node id, the flusher stops with an error.
//!
//! **At-least-once** (`--delivery-guarantee at-least-once`): an idempotent producer with
//! `acks=all`; a crash between Kafka's confirmation and the WAL acknowledgement resends that
//! batch.

mod flusher;
pub mod position;
mod status;

#[doc(hidden)]
pub use flusher::raw_messages;
pub use flusher::{FlushOptions, Flusher};
pub use status::{Fate, FlushSnapshot, FlushStatus};

#[cfg(test)]
mod tests;
