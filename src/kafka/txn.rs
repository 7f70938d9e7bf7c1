//! Kafka transactions, shared by the flusher and the transform worker.
//!
//! librdkafka sorts every transactional error into three kinds, and so do we: *retriable*
//! (call the same operation again), *abortable* (abort the transaction and redo the batch) and
//! *fatal* (this producer is fenced or broken: create a new one, whose `init_transactions`
//! fences the old incarnation and aborts whatever it left open).

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use tracing::warn;

use super::{KafkaSettings, KafkaStageError, TrackingContext, TrackingProducer};

/// How a transactional operation failed.
#[derive(Debug)]
pub enum TxnFailure {
    /// Retry the same call.
    Retriable(KafkaError),
    /// Abort the transaction, then redo the batch.
    Abortable(KafkaError),
    /// Replace the producer.
    Fatal(KafkaError),
}

impl std::fmt::Display for TxnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnFailure::Retriable(e) => write!(f, "retriable: {e}"),
            TxnFailure::Abortable(e) => write!(f, "abortable: {e}"),
            TxnFailure::Fatal(e) => write!(f, "fatal: {e}"),
        }
    }
}

/// Classifies an error of a transactional call.
pub fn classify(e: KafkaError) -> TxnFailure {
    match &e {
        KafkaError::Transaction(r) if r.is_fatal() => TxnFailure::Fatal(e),
        KafkaError::Transaction(r) if r.txn_requires_abort() => TxnFailure::Abortable(e),
        KafkaError::Transaction(r) if r.is_retriable() => TxnFailure::Retriable(e),
        // Errors outside the transaction API (message delivery, say) poison the transaction.
        _ => TxnFailure::Abortable(e),
    }
}

/// Transaction timing.
#[derive(Debug, Clone, Copy)]
pub struct TxnTimeouts {
    /// librdkafka `transaction.timeout.ms`: the broker aborts a transaction open longer than
    /// this, which bounds how long a crashed producer can stall `read_committed` readers.
    pub transaction_ms: u64,
    /// How long one transactional call (init, send offsets, commit, abort) may block.
    pub operation: Duration,
}

impl KafkaSettings {
    /// A transactional producer with a stable `transactional.id`, not yet initialised.
    ///
    /// # Errors
    /// [`KafkaStageError::Config`] when librdkafka rejects the configuration.
    pub fn transactional_producer(
        &self,
        transactional_id: &str,
        linger_ms: u64,
        timeouts: TxnTimeouts,
    ) -> Result<TrackingProducer, KafkaStageError> {
        let linger = linger_ms.to_string();
        let txn_timeout = timeouts.transaction_ms.to_string();
        self.client_config(&[
            ("transactional.id", transactional_id),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", &linger),
            ("transaction.timeout.ms", &txn_timeout),
            // Within a transaction a message must not outlive it.
            ("message.timeout.ms", &txn_timeout),
        ])
        .create_with_context(TrackingContext::default())
        .map_err(|e| KafkaStageError::Config(e.to_string()))
    }
}

/// Commits the open transaction, repeating the call while librdkafka says it is retriable
/// (a retriable commit may or may not have happened; only a repeated commit tells).
///
/// # Errors
/// The abortable or fatal failure; the caller aborts or replaces the producer.
pub fn commit(producer: &TrackingProducer, timeout: Duration) -> Result<(), TxnFailure> {
    let mut attempts = 0;
    loop {
        match producer.commit_transaction(timeout).map_err(classify) {
            Ok(()) => return Ok(()),
            Err(TxnFailure::Retriable(e)) if attempts < 20 => {
                attempts += 1;
                warn!(error = %e, attempts, "Committing a transaction failed retriably; trying again.");
                std::thread::sleep(Duration::from_millis(100 * attempts));
            }
            Err(TxnFailure::Retriable(e)) => return Err(TxnFailure::Abortable(e)),
            Err(other) => return Err(other),
        }
    }
}

/// Aborts the open transaction. Returns false when the producer must be replaced instead.
pub fn abort(producer: &TrackingProducer, timeout: Duration) -> bool {
    for attempt in 1..=5u64 {
        match producer.abort_transaction(timeout).map_err(classify) {
            Ok(()) => return true,
            Err(TxnFailure::Retriable(e)) => {
                warn!(error = %e, attempt, "Aborting a transaction failed retriably; trying again.");
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            Err(e) => {
                warn!(error = %e, "Aborting a transaction failed; the producer will be replaced.");
                return false;
            }
        }
    }
    false
}
