//! The outbox: the one way both stages put a batch into Kafka.
//!
//! # Contract
//! A stage hands over a batch of [`OutMessage`]s and, optionally, the consumer-group
//! [`Offsets`] that say how far its input is processed (the flusher: its WAL position; the
//! transform: its consumer offsets). The outbox either makes the whole batch stick or tells
//! precisely what happened:
//! - **exactly-once** ([`TransactionalOutbox`]): messages and offsets are one Kafka transaction.
//!   An abortable failure aborts it (nothing of the batch is visible) and the same batch may be
//!   retried; a fatal failure drops the producer, and the next [`Outbox::connect`] creates one
//!   whose `init_transactions` fences its predecessor and settles whatever it left open — until
//!   then the caller cannot know whether the batch committed ([`OutboxError::ProducerLost`]);
//!   being fenced by another live producer with our `transactional.id` is
//!   [`OutboxError::Fenced`]: the stage must stop, not fight.
//! - **at-least-once** ([`IdempotentOutbox`]): an idempotent producer; the outbox waits for every
//!   delivery report and names the messages Kafka did not take ([`OutboxError::Undelivered`]),
//!   so exactly those are resent. Offsets are left to the caller ([`Delivered::MessagesOnly`]).
//!
//! [`deliver`] is the retry loop both stages share; what differs between them (how to pause,
//! when to give up, where to resume) is passed in.

mod idempotent;
mod transactional;

#[cfg(test)]
pub mod fake;

use std::borrow::Cow;
use std::sync::Arc;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::BaseRecord;
use rdkafka::TopicPartitionList;
use thiserror::Error;

pub use idempotent::IdempotentOutbox;
pub use transactional::{TransactionalOutbox, TxnTimeouts};

use super::batch::Batch;
use super::{Guarantee, KafkaLink, KafkaSettings};

/// One message to produce, borrowed from the caller's batch.
#[derive(Debug, Clone, PartialEq)]
pub struct OutMessage<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<(&'static str, Cow<'a, [u8]>)>,
}

/// One call's worth of work: `messages[i]` for each `i` in `indices` (a retry may resend a
/// subset), and the offsets to commit with them.
#[derive(Clone, Copy)]
pub struct OutBatch<'a> {
    pub messages: &'a [OutMessage<'a>],
    pub indices: &'a [usize],
    pub offsets: Option<&'a Offsets>,
}

/// Consumer-group offsets to commit together with a batch (exactly-once).
pub struct Offsets {
    pub list: TopicPartitionList,
    /// The group they belong to. `None` only where no consumer exists (tests); a transaction
    /// then aborts. Shared, because the transactional outbox hands it to a watchdog thread
    /// (see `transactional.rs`).
    pub group: Option<Arc<ConsumerGroupMetadata>>,
}

/// What a successful delivery covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The messages and the offsets, atomically (exactly-once).
    WithOffsets,
    /// The messages only: the caller records its position itself (at-least-once).
    MessagesOnly,
}

/// How a delivery failed. Policy: everything but [`OutboxError::Fenced`],
/// [`OutboxError::Config`] and [`OutboxError::Wedged`] is retryable — the data waits in the WAL or the source topic.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// Kafka refused message `index`: librdkafka at enqueue (too large, unknown topic…), or,
    /// in a transaction, its delivery report with a [poison](is_poison) error. In a transaction
    /// nothing of the batch was committed.
    #[error("Kafka refused message {index} of the batch: {error}")]
    Refused { index: usize, error: KafkaError },
    /// At-least-once: these messages (index, reason) were not delivered; the rest were.
    #[error("{} messages not delivered: {}", failed.len(), failed.first().map(|(_, e)| e.to_string()).unwrap_or_default())]
    Undelivered { failed: Vec<(usize, KafkaError)> },
    /// The transaction was aborted: nothing of the batch is visible.
    #[error("the transaction was aborted: {0}")]
    Aborted(KafkaError),
    /// Exactly-once: the producer failed fatally and was dropped; whether the batch committed
    /// is known only after the next [`Outbox::connect`] (re-read the committed position).
    #[error("the producer failed and will be replaced: {0}")]
    ProducerLost(KafkaError),
    /// No producer could be made ready (Kafka unreachable, say).
    #[error("Kafka is not reachable for a new producer yet: {0}")]
    Unavailable(KafkaError),
    /// Another live producer with our `transactional.id` took over.
    #[error("fenced: another process uses this transactional.id ({0}); give each process its own --node-id")]
    Fenced(KafkaError),
    /// The producer configuration is invalid.
    #[error("invalid Kafka producer configuration: {0}")]
    Config(String),
    /// librdkafka left this many calls blocked past their timeouts, each holding an abandoned
    /// producer: the stage stops (the process exits and can be restarted) instead of leaking
    /// producers for as long as the cluster misbehaves.
    #[error("{abandoned} Kafka calls are still blocked inside librdkafka past their timeouts; stopping instead of abandoning more producers (restart the collector; the WAL keeps the data)")]
    Wedged { abandoned: usize },
}

impl OutboxError {
    /// True when the stage must stop instead of retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(self, OutboxError::Fenced(_) | OutboxError::Config(_) | OutboxError::Wedged { .. })
    }
}

/// The seam between a stage and Kafka: a real producer in production, a scripted fake in unit
/// tests.
pub trait Outbox: Send {
    /// Producers made from now on report their connection state to `link` (librdkafka's
    /// statistics, see [`KafkaLink`]).
    fn reporting_to(&mut self, _link: Arc<KafkaLink>) {}

    /// Between batches: serves the producer's callbacks (its statistics), so that its
    /// connection state stays current while the stage has nothing to send. No batch is in
    /// flight then, so no delivery report can be taken from a batch's waiting.
    fn idle(&mut self) {}

    /// Makes a producer ready if there is none. Exactly-once: `init_transactions`, which fences
    /// earlier incarnations and aborts what they left open. Returns true when a new producer was
    /// made ready: any earlier batch's fate is settled now, so the caller re-reads its
    /// committed position.
    ///
    /// # Errors
    /// [`OutboxError::Unavailable`] (retry later) or [`OutboxError::Config`].
    fn connect(&mut self) -> Result<bool, OutboxError>;

    /// Produces the batch's messages and, exactly-once, commits them in one transaction with
    /// its offsets. Connects first if needed; that a new producer was made then needs no
    /// telling, because a producer is only ever replaced after [`OutboxError::ProducerLost`],
    /// on which callers re-read their committed position anyway.
    ///
    /// # Errors
    /// See [`OutboxError`]; the outbox is ready for another call after any of them.
    fn deliver(&mut self, batch: OutBatch<'_>) -> Result<Delivered, OutboxError>;
}

/// Producer settings of one stage.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// librdkafka `linger.ms`.
    pub linger_ms: u64,
    /// At-least-once: librdkafka `message.timeout.ms`; a message not confirmed in this time
    /// counts as failed and is resent.
    pub message_timeout_ms: u64,
    /// Exactly-once: transaction timing.
    pub txn: TxnTimeouts,
}

/// The outbox for `guarantee`: transactional with `transactional_id`, or idempotent; its
/// producers report their connection state to `link`.
pub fn open(
    settings: &KafkaSettings,
    guarantee: Guarantee,
    transactional_id: String,
    options: &ProducerOptions,
    link: Arc<KafkaLink>,
) -> Box<dyn Outbox> {
    let mut outbox: Box<dyn Outbox> = match guarantee {
        Guarantee::ExactlyOnce => Box::new(TransactionalOutbox::new(settings.clone(), transactional_id, options)),
        Guarantee::AtLeastOnce => Box::new(IdempotentOutbox::new(settings.clone(), options)),
    };
    outbox.reporting_to(link);
    outbox
}

/// How [`deliver`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kafka has the batch (and, exactly-once, the offsets).
    Delivered(Delivered),
    /// The producer was lost mid-batch: re-read the committed position before going on.
    Uncertain,
    /// `on_failure` said to stop trying; nothing of the batch is visible (at-least-once: some
    /// messages may be).
    GaveUp,
}

/// The retry loop both stages share: delivers `messages` with `offsets`; after each failure
/// calls `on_failure` (report it, pause) which returns whether to try again. An aborted
/// transaction is retried whole; at-least-once, only the undelivered messages are resent.
///
/// # Errors
/// A permanent failure ([`OutboxError::is_permanent`]): the stage must stop.
pub fn deliver(
    outbox: &mut dyn Outbox,
    messages: &[OutMessage<'_>],
    offsets: Option<&Offsets>,
    mut on_failure: impl FnMut(&OutboxError) -> bool,
) -> Result<Outcome, OutboxError> {
    let all: Vec<usize> = (0..messages.len()).collect();
    let mut todo = all.clone();
    loop {
        let error = match outbox.deliver(OutBatch { messages, indices: &todo, offsets }) {
            Ok(delivered) => return Ok(Outcome::Delivered(delivered)),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => e,
        };
        todo = match &error {
            OutboxError::Undelivered { failed } => {
                let mut failed: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
                failed.sort_unstable();
                failed
            }
            _ => all.clone(),
        };
        let again = on_failure(&error);
        if matches!(error, OutboxError::ProducerLost(_)) {
            // Whether or not the caller goes on, the batch's fate is open until a new producer
            // settles it.
            return Ok(Outcome::Uncertain);
        }
        if !again {
            return Ok(Outcome::GaveUp);
        }
    }
}

/// Whether Kafka refuses this message for what it is, whatever the state of the cluster (too
/// large, not a valid record): retrying cannot help, the message must go elsewhere.
pub fn is_poison(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
                | Code::InvalidArgument
                | Code::BadMessage
        )
    )
}

/// Enqueues the batch's messages on `sending` (the delivery opaque is the message's index);
/// returns those librdkafka refused outright.
fn enqueue(sending: &mut Batch<'_>, batch: OutBatch<'_>) -> Vec<(usize, KafkaError)> {
    let mut refused = Vec::new();
    for &i in batch.indices {
        let m = &batch.messages[i];
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(m.topic, i);
        if let Some(key) = m.key {
            record = record.key(key);
        }
        if let Some(payload) = m.payload {
            record = record.payload(payload);
        }
        if !m.headers.is_empty() {
            record = record.headers(headers(&m.headers));
        }
        if let Err(e) = sending.send(record) {
            refused.push((i, e));
        }
    }
    refused
}

fn headers(pairs: &[(&'static str, Cow<'_, [u8]>)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new_with_capacity(pairs.len()), |h, (key, value)| {
        h.insert(rdkafka::message::Header { key, value: Some(value.as_ref()) })
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod driver_tests {
    use super::fake::{FakeOutbox, Step};
    use super::*;

    fn messages() -> Vec<OutMessage<'static>> {
        (0..3).map(|_| OutMessage { topic: "t", key: None, payload: Some(b"x".as_slice()), headers: vec![] }).collect()
    }

    fn fail() -> KafkaError {
        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::BrokerNotAvailable)
    }

    #[test]
    fn an_aborted_transaction_is_retried_whole() {
        let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Aborted(fail())), Step::Commit]);
        let mut failures = 0;
        let outcome = deliver(&mut outbox, &messages(), None, |_| {
            failures += 1;
            true
        })
        .unwrap();
        assert_eq!(outcome, Outcome::Delivered(Delivered::MessagesOnly));
        assert_eq!(failures, 1);
        assert_eq!(outbox.attempts, vec![vec![0, 1, 2], vec![0, 1, 2]]);
    }

    #[test]
    fn at_least_once_resends_only_what_kafka_did_not_take() {
        let undelivered = OutboxError::Undelivered { failed: vec![(2, fail()), (0, fail())] };
        let mut outbox = FakeOutbox::new(vec![Step::Fail(undelivered), Step::Commit]);
        deliver(&mut outbox, &messages(), None, |_| true).unwrap();
        assert_eq!(outbox.attempts, vec![vec![0, 1, 2], vec![0, 2]]);
    }

    #[test]
    fn a_lost_producer_makes_the_outcome_uncertain() {
        let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::ProducerLost(fail()))]);
        assert_eq!(deliver(&mut outbox, &messages(), None, |_| true).unwrap(), Outcome::Uncertain);
    }

    #[test]
    fn fencing_ends_the_loop_with_an_error() {
        let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Fenced(fail()))]);
        let mut asked = false;
        let result = deliver(&mut outbox, &messages(), None, |_| {
            asked = true;
            true
        });
        assert!(matches!(result, Err(OutboxError::Fenced(_))));
        assert!(!asked, "a permanent failure is not retried");
    }

    #[test]
    fn giving_up_leaves_the_batch_undelivered() {
        let mut outbox = FakeOutbox::new(vec![Step::Fail(OutboxError::Aborted(fail()))]);
        assert_eq!(deliver(&mut outbox, &messages(), None, |_| false).unwrap(), Outcome::GaveUp);
        assert!(outbox.committed.is_empty());
    }
}
