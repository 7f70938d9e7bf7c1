//! Flush: drains the WAL into the raw topic.
//!
//! # Contract
//! In: durable WAL records, in sequence order. Out: one message per record on the raw topic
//! (`collect-topic1`), value = the request body as received, headers = sequence number,
//! receive time, node id and client address ([`crate::kafka::headers`]). The producer is
//! idempotent with `acks=all`. The WAL is acknowledged (and its segments reclaimed) only up to
//! the last record of a batch that Kafka confirmed completely. While Kafka is unreachable the
//! flusher retries with capped exponential backoff and ingest keeps filling the WAL.
//! Not guaranteed here: exactly-once. A crash between Kafka's confirmation and the WAL
//! acknowledgement resends that batch, so the raw topic is at-least-once.

mod flusher;

pub use flusher::{FlushOptions, FlushSnapshot, FlushStatus, Flusher};
