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
//!
//! A fourth kind is ours: *stuck*. librdkafka's `send_offsets_to_transaction` can block far
//! past its timeout when the group coordinator went away (librdkafka #5456, still open in the
//! 2.12 we link; reproduced by a mock-cluster test below, and seen in `tests/outage.rs` as a
//! flusher that never logged again after a broker restart). So that call runs on a watchdog
//! thread: if it has not returned within its timeout and a grace, the producer is abandoned to
//! that thread (dropped when the call finally returns) and replaced, and the successor's
//! `init_transactions` aborts the stuck transaction. A commit that keeps timing out is stuck
//! the same way: librdkafka keeps it in progress, and an abort would only conflict with it.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};
use tracing::{error, info, warn};

use super::{enqueue, Delivered, OutBatch, Outbox, OutboxError, ProducerOptions};
use crate::kafka::batch::{self, Batch, TrackingContext, TrackingProducer};
use crate::kafka::{KafkaLink, KafkaSettings};
use crate::retry::Backoff;

/// Transaction timing.
#[derive(Debug, Clone, Copy)]
pub struct TxnTimeouts {
    /// librdkafka `transaction.timeout.ms`: the broker aborts a transaction open longer than
    /// this, which bounds how long a crashed producer can stall `read_committed` readers.
    pub transaction_ms: u64,
    /// How long one transactional call (init, send offsets, commit, abort) may block
    /// (`--kafka-call-timeout-ms`, validated below the transaction timeout). A commit or an
    /// abort retried after a retriable failure spends at most [`RETRY_BUDGET_CALLS`] of these
    /// in all, so no Kafka call keeps a stage from its loop (and its stop signal) for minutes.
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
    /// The call is still running inside librdkafka (see the module notes): replace the
    /// producer; nothing else can be called on it meanwhile.
    Stuck(KafkaError),
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
    /// Shared only with the watchdog thread of a `send_offsets_to_transaction` in progress.
    producer: Option<Arc<TrackingProducer>>,
    /// Calls abandoned to their watchdog threads that have not returned yet (each holds a
    /// producer): past [`MAX_ABANDONED`] the outbox stops instead of leaking more.
    abandoned: Arc<AtomicUsize>,
    /// Where each producer reports its connection state ([`Outbox::reporting_to`]).
    link: Option<Arc<KafkaLink>>,
}

impl TransactionalOutbox {
    pub fn new(settings: KafkaSettings, transactional_id: String, options: &ProducerOptions) -> Self {
        TransactionalOutbox {
            settings,
            transactional_id,
            options: options.clone(),
            producer: None,
            abandoned: Arc::new(AtomicUsize::new(0)),
            link: None,
        }
    }

    fn create(&self) -> Result<TrackingProducer, OutboxError> {
        let linger = self.options.linger_ms.to_string();
        let txn_timeout = self.options.txn.transaction_ms.to_string();
        let mut defaults = vec![
            ("transactional.id", self.transactional_id.as_str()),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", &linger),
            ("transaction.timeout.ms", &txn_timeout),
            // Within a transaction a message must not outlive it.
            ("message.timeout.ms", &txn_timeout),
        ];
        let statistics = batch::statistics_interval_ms(self.link.as_ref());
        defaults.extend(statistics.as_deref().map(|ms| ("statistics.interval.ms", ms)));
        self.settings
            .client_config(&defaults)
            .create_with_context(TrackingContext::reporting_to(self.link.clone()))
            .map_err(|e| OutboxError::Config(e.to_string()))
    }

    /// One transaction: the messages, then the offsets, then commit.
    fn transaction(&self, producer: &Arc<TrackingProducer>, batch: OutBatch<'_>) -> Result<(), Failed> {
        let timeout = self.options.txn.operation;
        producer.begin_transaction().map_err(|e| Failed::Txn(classify(e)))?;
        let mut sending = Batch::new(producer);
        if let Some((index, error)) = enqueue(&mut sending, batch).into_iter().next() {
            return Err(Failed::Refused(index, error));
        }
        if let Some(offsets) = batch.offsets {
            let group = offsets.group.clone().ok_or_else(|| {
                Failed::Txn(TxnFailure::Abortable(KafkaError::ClientCreation(
                    "no consumer group metadata for the offsets".into(),
                )))
            })?;
            self.send_offsets(producer, offsets.list.clone(), group).map_err(Failed::Txn)?;
        }
        // Committing flushes the producer: every message is delivered or the commit fails. A
        // message the broker refused for what it is (too large for the topic, say) is named, so
        // the caller can set it aside instead of retrying the batch forever.
        sending.settle(timeout);
        commit(producer, timeout).map_err(|failure| {
            match sending.failures().into_iter().find(|(_, e)| super::is_poison(e)) {
                Some((index, error)) => Failed::Refused(index, error),
                None => Failed::Txn(failure),
            }
        })
    }

    /// `send_offsets_to_transaction` on a watchdog thread (see the module notes): its result,
    /// or [`TxnFailure::Stuck`] once it outlived the call timeout by [`STUCK_GRACE`]. The
    /// thread then keeps the producer until librdkafka lets the call return.
    fn send_offsets(
        &self,
        producer: &Arc<TrackingProducer>,
        list: rdkafka::TopicPartitionList,
        group: Arc<rdkafka::consumer::ConsumerGroupMetadata>,
    ) -> Result<(), TxnFailure> {
        let timeout = self.options.txn.operation;
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(PENDING));
        let end = CallEnd { state: Arc::clone(&state), abandoned: Arc::clone(&self.abandoned) };
        let on_thread = Arc::clone(producer);
        let spawned = std::thread::Builder::new().name("kafka-send-offsets".into()).spawn(move || {
            let sent = on_thread.send_offsets_to_transaction(&list, &group, timeout);
            let _ = done.send(sent);
            // Settled after the result is in the channel (and also when the call panics).
            drop(end);
        });
        if let Err(e) = spawned {
            return Err(TxnFailure::Abortable(KafkaError::ClientCreation(format!("no thread for a Kafka call: {e}"))));
        }
        let panicked = || TxnFailure::Abortable(KafkaError::ClientCreation("a Kafka call panicked".into()));
        match result.recv_timeout(timeout + STUCK_GRACE) {
            Ok(sent) => sent.map_err(classify),
            Err(RecvTimeoutError::Disconnected) => Err(panicked()),
            Err(RecvTimeoutError::Timeout) => {
                // Counted before the call can see it abandoned, so its uncounting comes after.
                let stuck = self.abandoned.fetch_add(1, Ordering::AcqRel) + 1;
                if state.compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    // It returned just now after all.
                    self.abandoned.fetch_sub(1, Ordering::AcqRel);
                    return result.try_recv().map_err(|_| panicked())?.map_err(classify);
                }
                error!(
                    timeout_ms = timeout.as_millis() as u64,
                    abandoned = stuck,
                    "Sending offsets to a Kafka transaction did not return in time (librdkafka #5456: the group coordinator went away); replacing the producer."
                );
                Err(TxnFailure::Stuck(stuck_error()))
            }
        }
    }

    /// After a failed transaction: aborts it, or drops the producer when it cannot be aborted.
    fn settle(&mut self, failed: Failed, began: Instant) -> OutboxError {
        let (failure, refused) = match failed {
            Failed::Refused(index, error) => (TxnFailure::Abortable(error.clone()), Some((index, error))),
            Failed::Txn(failure) => (failure, None),
        };
        match failure {
            TxnFailure::Stuck(e) => {
                self.producer = None;
                OutboxError::ProducerLost(e)
            }
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

/// A watched call's state; whoever moves it out of `PENDING` settles it: the call, when it
/// returns in time, or the caller, when it stops waiting (and counts it abandoned).
const PENDING: u8 = 0;
const RETURNED: u8 = 1;
const ABANDONED: u8 = 2;

/// Dropped on the call's thread when the call is over (returned, or panicked): uncounts the
/// call if the caller had abandoned it.
struct CallEnd {
    state: Arc<AtomicU8>,
    abandoned: Arc<AtomicUsize>,
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        if self.state.compare_exchange(PENDING, RETURNED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            self.abandoned.fetch_sub(1, Ordering::AcqRel);
            info!("A Kafka call abandoned earlier has returned; its producer is released.");
        }
    }
}

/// How long past its own timeout `send_offsets_to_transaction` may run before it counts as
/// stuck.
const STUCK_GRACE: Duration = Duration::from_secs(2);

/// Calls left blocked inside librdkafka (each holding a producer and its threads) at which the
/// outbox stops replacing producers and the stage stops, loudly, instead of leaking more: a
/// restart starts from clean clients, and the WAL keeps the data meanwhile.
pub const MAX_ABANDONED: usize = 4;

/// The error a stuck call is reported with (librdkafka's own never came).
fn stuck_error() -> KafkaError {
    KafkaError::Global(RDKafkaErrorCode::OperationTimedOut)
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
    fn reporting_to(&mut self, link: Arc<KafkaLink>) {
        self.link = Some(link);
    }

    fn idle(&mut self) {
        if let Some(producer) = &self.producer {
            producer.poll(Duration::ZERO);
        }
    }

    fn connect(&mut self) -> Result<bool, OutboxError> {
        if self.producer.is_some() {
            return Ok(false);
        }
        let abandoned = self.abandoned.load(Ordering::Acquire);
        if abandoned >= MAX_ABANDONED {
            return Err(OutboxError::Wedged { abandoned });
        }
        let producer = self.create()?;
        producer.init_transactions(self.options.txn.operation).map_err(OutboxError::Unavailable)?;
        info!(transactional_id = %self.transactional_id, "Transactional producer ready; earlier incarnations are fenced.");
        self.producer = Some(Arc::new(producer));
        Ok(true)
    }

    fn deliver(&mut self, batch: OutBatch<'_>) -> Result<Delivered, OutboxError> {
        self.connect()?;
        let began = Instant::now();
        let producer = Arc::clone(self.producer.as_ref().expect("connected above"));
        match self.transaction(&producer, batch) {
            Ok(()) => Ok(Delivered::WithOffsets),
            Err(failed) => Err(self.settle(failed, began)),
        }
    }
}

/// How many call timeouts ([`TxnTimeouts::operation`]) a commit, or an abort, may spend in all,
/// retries and pauses included. A retriable failure that outlasts this is Kafka being away, not
/// a hiccup: the batch is aborted (or the producer replaced) and redone later, which loses
/// nothing, while the stage gets back to its loop instead of blocking for minutes (before:
/// 20 retries of a call that could block for the whole transaction timeout each).
pub const RETRY_BUDGET_CALLS: u32 = 3;

/// When the retries of a call that began now must have ended.
fn retry_deadline(timeout: Duration) -> Instant {
    Instant::now() + timeout * RETRY_BUDGET_CALLS
}

/// Whether another call of up to `timeout`, after a pause of `pause`, still ends by `deadline`.
fn another_call_fits(deadline: Instant, pause: Duration, timeout: Duration) -> bool {
    Instant::now() + pause + timeout <= deadline
}

/// Commits the open transaction, repeating the call while librdkafka says it is retriable
/// (a retriable commit may or may not have happened; only a repeated commit tells), for at
/// most [`RETRY_BUDGET_CALLS`] call timeouts. A commit still failing retriably then is
/// reported abortable: the caller aborts, which settles the transaction either way.
fn commit(producer: &TrackingProducer, timeout: Duration) -> Result<(), TxnFailure> {
    let deadline = retry_deadline(timeout);
    let mut attempts = 0;
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        match producer.commit_transaction(timeout).map_err(classify) {
            Ok(()) => return Ok(()),
            Err(TxnFailure::Retriable(e)) => {
                attempts += 1;
                let pause = backoff.next_delay();
                if !another_call_fits(deadline, pause, timeout) {
                    if still_in_progress(&e) {
                        // librdkafka keeps a timed-out commit going, and refuses an abort
                        // while it does ("Conflicting commit_transaction API call").
                        warn!(error = %e, attempts, "Committing a transaction kept timing out; replacing the producer, which aborts it.");
                        return Err(TxnFailure::Stuck(e));
                    }
                    warn!(error = %e, attempts, "Committing a transaction kept failing retriably; aborting it instead.");
                    return Err(TxnFailure::Abortable(e));
                }
                warn!(error = %e, attempts, "Committing a transaction failed retriably; trying again.");
                std::thread::sleep(pause);
            }
            Err(other) => return Err(other),
        }
    }
}

/// Whether a failed call is still running inside librdkafka (it timed out; a repeated call
/// resumes it).
fn still_in_progress(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut)
}

/// Aborts the open transaction. Returns false when the producer must be replaced instead:
/// after a non-retriable failure, or retriable ones for [`RETRY_BUDGET_CALLS`] call timeouts.
///
/// librdkafka completes an abort only once every outstanding message's delivery report was
/// served, and rust-rdkafka's `abort_transaction` (unlike its commit) does not serve them: an
/// abort with messages in flight would time out. So what is outstanding is purged (the abort
/// would purge it anyway) and the reports are served first.
fn abort(producer: &TrackingProducer, timeout: Duration) -> bool {
    let deadline = retry_deadline(timeout);
    producer.purge(PurgeConfig::default().queue().inflight());
    let _ = producer.flush(Duration::from_millis(500));
    let mut backoff = Backoff::new(Duration::from_secs(2));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match producer.abort_transaction(timeout).map_err(classify) {
            Ok(()) => return true,
            Err(TxnFailure::Retriable(e)) => {
                let pause = backoff.next_delay();
                if !another_call_fits(deadline, pause, timeout) {
                    warn!(error = %e, attempt, "Aborting a transaction kept failing retriably; the producer will be replaced.");
                    return false;
                }
                warn!(error = %e, attempt, "Aborting a transaction failed retriably; trying again.");
                // Serve delivery reports while waiting, so the next attempt can complete.
                producer.poll(pause);
            }
            Err(e) => {
                warn!(error = ?e, "Aborting a transaction failed; the producer will be replaced.");
                return false;
            }
        }
    }
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

    /// A producer in an open transaction with one message, on a mock cluster whose transaction
    /// coordinator answers `EndTxn` with a retriable error for good.
    fn stuck_commit(
    ) -> (rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>, TrackingProducer) {
        use rdkafka::producer::BaseRecord;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("out", 1, 1).unwrap();
        let producer: TrackingProducer = KafkaSettings::for_tests(&mock.bootstrap_servers())
            .client_config(&[("transactional.id", "stuck"), ("linger.ms", "0")])
            .create_with_context(TrackingContext::default())
            .unwrap();
        producer.init_transactions(Duration::from_secs(10)).unwrap();
        producer.begin_transaction().unwrap();
        producer.send(BaseRecord::<[u8], [u8], usize>::with_opaque_to("out", 0).payload(b"x")).unwrap();
        mock.request_errors(RDKafkaApiKey::EndTxn, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS; 1000]);
        (mock, producer)
    }

    #[test]
    fn a_commit_that_keeps_timing_out_gives_up_within_its_budget_and_replaces_the_producer() {
        let (_mock, producer) = stuck_commit();
        let call = Duration::from_millis(300);
        let started = Instant::now();
        let result = commit(&producer, call);
        let took = started.elapsed();
        // librdkafka retries the refused EndTxn itself until the call times out; the commit is
        // then still in progress inside it, so no abort is attempted.
        assert!(matches!(result, Err(TxnFailure::Stuck(_))), "{result:?}");
        // The budget is three calls, 0.9 s; the generous bound only tells a budget from the old
        // 20 retries with pauses of up to 2 s (about 40 s).
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }
}
