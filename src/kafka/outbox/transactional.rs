//! The exactly-once outbox: every batch is one Kafka transaction with the caller's offsets.
//!
//! librdkafka sorts every transactional error into three kinds, and so do we: *retriable*
//! (call the same operation again), *abortable* (abort the transaction and redo the batch) and
//! *fatal* (this producer is fenced or broken: create a new one, whose `init_transactions`
//! fences the old incarnation and aborts whatever it left open).
//!
//! Fatal fencing has two causes that look alike: the coordinator aborted a transaction of ours
//! that outlived `transaction.timeout.ms` (a long broker outage, say) and bumped our epoch; or
//! another live process initialised the same `transactional.id`. Only the second is a reason to
//! stop, and only it can fence a transaction younger than the timeout, so that is the test.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};
use tracing::{info, warn};

use super::{enqueue, Delivered, OutBatch, Outbox, OutboxError, ProducerOptions};
use crate::kafka::batch::{Batch, TrackingContext, TrackingProducer};
use crate::kafka::KafkaSettings;
use crate::retry::Backoff;

/// Transaction timing.
#[derive(Debug, Clone, Copy)]
pub struct TxnTimeouts {
    /// librdkafka `transaction.timeout.ms`: the broker aborts a transaction open longer than
    /// this, which bounds how long a crashed producer can stall `read_committed` readers.
    pub transaction_ms: u64,
    /// How long one transactional call (init, send offsets, commit, abort) may block.
    pub operation: Duration,
}

/// How a transactional call failed.
#[derive(Debug)]
enum TxnFailure {
    /// Retry the same call.
    Retriable(KafkaError),
    /// Abort the transaction, then redo the batch.
    Abortable(KafkaError),
    /// Replace the producer.
    Fatal(KafkaError),
}

/// Classifies an error of a transactional call.
fn classify(e: KafkaError) -> TxnFailure {
    match &e {
        KafkaError::Transaction(r) if r.is_fatal() => TxnFailure::Fatal(e),
        KafkaError::Transaction(r) if r.txn_requires_abort() => TxnFailure::Abortable(e),
        KafkaError::Transaction(r) if r.is_retriable() => TxnFailure::Retriable(e),
        // Errors outside the transaction API (message delivery, say) poison the transaction.
        _ => TxnFailure::Abortable(e),
    }
}

/// A transactional producer with a stable `transactional.id`, created lazily and replaced after
/// a fatal error.
pub struct TransactionalOutbox {
    settings: KafkaSettings,
    transactional_id: String,
    options: ProducerOptions,
    producer: Option<TrackingProducer>,
}

impl TransactionalOutbox {
    pub fn new(settings: KafkaSettings, transactional_id: String, options: &ProducerOptions) -> Self {
        TransactionalOutbox { settings, transactional_id, options: options.clone(), producer: None }
    }

    fn create(&self) -> Result<TrackingProducer, OutboxError> {
        let linger = self.options.linger_ms.to_string();
        let txn_timeout = self.options.txn.transaction_ms.to_string();
        self.settings
            .client_config(&[
                ("transactional.id", &self.transactional_id),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", &linger),
                ("transaction.timeout.ms", &txn_timeout),
                // Within a transaction a message must not outlive it.
                ("message.timeout.ms", &txn_timeout),
            ])
            .create_with_context(TrackingContext::default())
            .map_err(|e| OutboxError::Config(e.to_string()))
    }

    /// One transaction: the messages, then the offsets, then commit.
    fn transaction(producer: &TrackingProducer, batch: OutBatch<'_>, timeout: Duration) -> Result<(), Failed> {
        producer.begin_transaction().map_err(|e| Failed::Txn(classify(e)))?;
        let mut sending = Batch::new(producer);
        if let Some((index, error)) = enqueue(&mut sending, batch).into_iter().next() {
            return Err(Failed::Refused(index, error));
        }
        if let Some(offsets) = batch.offsets {
            let group = offsets.group.as_ref().ok_or_else(|| {
                Failed::Txn(TxnFailure::Abortable(KafkaError::ClientCreation(
                    "no consumer group metadata for the offsets".into(),
                )))
            })?;
            producer
                .send_offsets_to_transaction(&offsets.list, group, timeout)
                .map_err(|e| Failed::Txn(classify(e)))?;
        }
        // Committing flushes the producer: every message is delivered or the commit fails. A
        // message the broker refused for what it is (too large for the topic, say) is named, so
        // the caller can set it aside instead of retrying the batch forever.
        commit(producer, timeout).map_err(|failure| {
            match sending.failures().into_iter().find(|(_, e)| super::is_poison(e)) {
                Some((index, error)) => Failed::Refused(index, error),
                None => Failed::Txn(failure),
            }
        })
    }

    /// After a failed transaction: aborts it, or drops the producer when it cannot be aborted.
    fn settle(&mut self, failed: Failed, began: Instant) -> OutboxError {
        let (failure, refused) = match failed {
            Failed::Refused(index, error) => (TxnFailure::Abortable(error.clone()), Some((index, error))),
            Failed::Txn(failure) => (failure, None),
        };
        match failure {
            TxnFailure::Fatal(e) => {
                self.producer = None;
                if fenced_by_rival(e.rdkafka_error_code(), began.elapsed(), self.options.txn.transaction_ms) {
                    OutboxError::Fenced(e)
                } else {
                    OutboxError::ProducerLost(e)
                }
            }
            TxnFailure::Abortable(e) | TxnFailure::Retriable(e) => {
                let producer = self.producer.as_ref().expect("a transaction ran on it");
                if !abort(producer, self.options.txn.operation) {
                    self.producer = None;
                    return OutboxError::ProducerLost(e);
                }
                match refused {
                    Some((index, error)) => OutboxError::Refused { index, error },
                    None => OutboxError::Aborted(e),
                }
            }
        }
    }
}

/// Whether a fatal error means another live producer took our `transactional.id` over: a
/// fencing error on a transaction younger than the timeout, which the broker cannot have
/// aborted itself.
fn fenced_by_rival(code: Option<RDKafkaErrorCode>, age: Duration, transaction_ms: u64) -> bool {
    matches!(code, Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced))
        && age < Duration::from_millis(transaction_ms)
}

/// Why a transaction did not commit.
enum Failed {
    /// librdkafka refused this message outright.
    Refused(usize, KafkaError),
    Txn(TxnFailure),
}

impl Outbox for TransactionalOutbox {
    fn connect(&mut self) -> Result<bool, OutboxError> {
        if self.producer.is_some() {
            return Ok(false);
        }
        let producer = self.create()?;
        producer.init_transactions(self.options.txn.operation).map_err(OutboxError::Unavailable)?;
        info!(transactional_id = %self.transactional_id, "Transactional producer ready; earlier incarnations are fenced.");
        self.producer = Some(producer);
        Ok(true)
    }

    fn deliver(&mut self, batch: OutBatch<'_>) -> Result<Delivered, OutboxError> {
        self.connect()?;
        let began = Instant::now();
        let producer = self.producer.as_ref().expect("connected above");
        match Self::transaction(producer, batch, self.options.txn.operation) {
            Ok(()) => Ok(Delivered::WithOffsets),
            Err(failed) => Err(self.settle(failed, began)),
        }
    }
}

/// Commits the open transaction, repeating the call while librdkafka says it is retriable
/// (a retriable commit may or may not have happened; only a repeated commit tells).
fn commit(producer: &TrackingProducer, timeout: Duration) -> Result<(), TxnFailure> {
    let mut attempts = 0;
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        match producer.commit_transaction(timeout).map_err(classify) {
            Ok(()) => return Ok(()),
            Err(TxnFailure::Retriable(e)) if attempts < 20 => {
                attempts += 1;
                warn!(error = %e, attempts, "Committing a transaction failed retriably; trying again.");
                std::thread::sleep(backoff.next_delay());
            }
            Err(TxnFailure::Retriable(e)) => return Err(TxnFailure::Abortable(e)),
            Err(other) => return Err(other),
        }
    }
}

/// Aborts the open transaction. Returns false when the producer must be replaced instead.
///
/// librdkafka completes an abort only once every outstanding message's delivery report was
/// served, and rust-rdkafka's `abort_transaction` (unlike its commit) does not serve them: an
/// abort with messages in flight would time out. So what is outstanding is purged (the abort
/// would purge it anyway) and the reports are served first.
fn abort(producer: &TrackingProducer, timeout: Duration) -> bool {
    producer.purge(PurgeConfig::default().queue().inflight());
    let _ = producer.flush(Duration::from_millis(500));
    let mut backoff = Backoff::new(Duration::from_secs(2));
    for attempt in 1..=5 {
        match producer.abort_transaction(timeout).map_err(classify) {
            Ok(()) => return true,
            Err(TxnFailure::Retriable(e)) => {
                warn!(error = %e, attempt, "Aborting a transaction failed retriably; trying again.");
                // Serve delivery reports while waiting, so the next attempt can complete.
                producer.poll(backoff.next_delay());
            }
            Err(e) => {
                warn!(error = ?e, "Aborting a transaction failed; the producer will be replaced.");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_young_transaction_fenced_means_a_rival() {
        let fenced = Some(RDKafkaErrorCode::Fenced);
        assert!(fenced_by_rival(fenced, Duration::from_secs(1), 60_000));
        assert!(fenced_by_rival(Some(RDKafkaErrorCode::ProducerFenced), Duration::ZERO, 60_000));
        // Open longer than the timeout: the broker aborted it (a long outage); replace, go on.
        assert!(!fenced_by_rival(fenced, Duration::from_secs(61), 60_000));
        assert!(!fenced_by_rival(Some(RDKafkaErrorCode::InvalidTransactionalState), Duration::ZERO, 60_000));
        assert!(!fenced_by_rival(None, Duration::ZERO, 60_000));
    }
}
