//! The transform worker: a consumer-group member that turns raw messages into rows.
//!
//! One batch at a time: poll up to `batch` raw messages ([`Source`]), transform them,
//! and put rows, dead letters and the consumer offsets after the batch through the outbox:
//! - exactly-once: one transaction (`send_offsets_to_transaction` with the consumer's group
//!   metadata, so a worker that lost its partitions in a rebalance is fenced); if it fails, the
//!   consumer is rewound to the batch's start — or, when the producer was lost and the commit is
//!   uncertain, to the committed offsets — and the batch is read again;
//! - at-least-once: rows are resent until Kafka confirmed every one, then the offsets are
//!   committed.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tracing::{error, info, warn};

use super::outs::{self, Out, Poisoned};
use super::row::Transformer;
use super::source::{BatchLimit, KafkaSource, Source};
use super::status::TransformStatus;
use crate::kafka::outbox::{self, Outcome};
use crate::kafka::{self, Delivered, KafkaSettings, KafkaStageError, Outbox, OutboxError, ProducerOptions};
use crate::node::NodeId;
use crate::retry::{Backoff, Stop};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};

/// Settings of the transform worker.
#[derive(Debug, Clone)]
pub struct TransformOptions {
    /// Consumer group; every worker with the same group shares the raw topic's partitions.
    pub group_id: String,
    /// Consumer `session.timeout.ms`: how long the partitions of a worker that died (and was
    /// not restarted) wait before the group hands them to another.
    pub session_timeout: Duration,
    /// Most raw messages, and bytes of them, per batch (and per transaction).
    pub batch: BatchLimit,
    /// How long to wait for a batch to fill.
    pub batch_wait: Duration,
    /// The row producer.
    pub producer: ProducerOptions,
}

/// Starts the worker thread; `node` names its transactional producer
/// (`collector-transform-<node>`). It stops, committing nothing more, once `stop` fires. It
/// reports what it does, and how its clients are connected, to `status`.
///
/// # Errors
/// Only permanent errors end the worker: invalid client configuration, or being fenced by
/// another process with the same node id.
pub fn spawn(
    kafka: KafkaSettings,
    options: TransformOptions,
    node: NodeId,
    runtime: Handle,
    stop: Stop,
    status: Arc<TransformStatus>,
) -> JoinHandle<Result<(), KafkaStageError>> {
    std::thread::Builder::new()
        .name("transform".into())
        .spawn(move || run(&kafka, &options, &node, &runtime, &stop, &status))
        .expect("spawning the transform thread")
}

fn run(
    kafka: &KafkaSettings,
    options: &TransformOptions,
    node: &NodeId,
    runtime: &Handle,
    stop: &Stop,
    status: &Arc<TransformStatus>,
) -> Result<(), KafkaStageError> {
    let topics = [kafka.raw_topic.as_str(), kafka.transformed_topic.as_str(), kafka.dead_letter_topic.as_str()];
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let created = kafka::ensure_topics_retrying(kafka, &topics, runtime, stop, &mut backoff, |e| {
        status.failed(&[&status.consumer, &status.producer], format!("creating the topics failed: {e}"));
        warn!(error = %e, "Cannot create the transform's topics yet; retrying.");
    })?;
    if !created {
        return Ok(());
    }
    let id = node.transform_transactional_id();
    let mut outbox = outbox::open(kafka, kafka.guarantee, id, &options.producer, status.producer.clone());
    // The producer first: its init_transactions fences a crashed predecessor and aborts the
    // transaction it left open. Until then that transaction's pending offsets keep our
    // partitions' committed offsets unreadable (read_committed) and its rows hold back readers
    // of the transformed topic: joining first would wait for the broker's transaction timeout.
    while let Err(e) = outbox.connect() {
        if e.is_permanent() {
            return Err(e.into());
        }
        status.failed(&[&status.producer], format!("initialising the producer failed: {e}"));
        warn!(error = %e, "Cannot initialise the transform's producer yet; retrying.");
        if backoff.pause(runtime, stop) {
            return Ok(());
        }
    }
    let mut source = KafkaSource::subscribe(kafka, options, node, status.clone())?;
    info!(group = %options.group_id, topic = %kafka.raw_topic, guarantee = ?kafka.guarantee, "Transform worker started.");
    Worker { kafka, options, runtime, stop, outbox: outbox.as_mut(), source: &mut source, status }.run()?;
    info!("Transform worker stopped.");
    Ok(())
}

/// The loop proper, over any source and outbox (unit tests use fakes).
pub(super) struct Worker<'a> {
    pub kafka: &'a KafkaSettings,
    pub options: &'a TransformOptions,
    pub runtime: &'a Handle,
    pub stop: &'a Stop,
    pub outbox: &'a mut dyn Outbox,
    pub source: &'a mut dyn Source,
    pub status: &'a TransformStatus,
}

impl Worker<'_> {
    pub fn run(mut self) -> Result<(), KafkaStageError> {
        let mut transformer = Transformer::default();
        let mut poisoned = Poisoned::default();
        while !self.stop.requested() {
            let batch = self.source.poll_batch(self.options.batch, self.options.batch_wait)?;
            if batch.is_empty() {
                // Nothing to send: let the idle producer report its connection state.
                self.outbox.idle();
                continue;
            }
            let outs = outs::transform_batch(&mut transformer, &batch, &poisoned);
            report_set_asides(&outs, &batch);
            let outcome = self.deliver(&batch, &outs, &mut poisoned)?;
            self.settle(outcome, &batch, &outs, &mut poisoned);
        }
        Ok(())
    }

    /// Puts a batch's outputs and offsets through the outbox, noting what Kafka refuses.
    fn deliver(
        &mut self,
        batch: &[OwnedMessage],
        outs: &[Out],
        poisoned: &mut Poisoned,
    ) -> Result<Outcome, KafkaStageError> {
        let messages = outs::messages(self.kafka, batch, outs);
        let sources = outs::message_sources(outs);
        let offsets = self.source.offsets(batch);
        let (runtime, stop, status) = (self.runtime, self.stop, self.status);
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let started = std::time::Instant::now();
        let outcome = outbox::deliver(self.outbox, &messages, Some(&offsets), |e| {
            crate::telemetry::transform_failed();
            status.failed(&[&status.producer], format!("a batch of {} raw messages failed: {e}", batch.len()));
            let refused = note_refusals(e, batch, &sources, poisoned);
            retry_in_place(e, refused, runtime, stop, &mut backoff, batch.len())
        })?;
        if matches!(outcome, Outcome::Delivered(_)) {
            crate::telemetry::transform_batch_committed(started.elapsed());
        }
        Ok(outcome)
    }

    /// What follows a batch's delivery: commit (at-least-once), or read it again.
    fn settle(&mut self, outcome: Outcome, batch: &[OwnedMessage], outs: &[Out], poisoned: &mut Poisoned) {
        match outcome {
            Outcome::Delivered(delivered) => {
                if delivered == Delivered::MessagesOnly {
                    self.source.commit(batch);
                }
                poisoned.delivered(batch);
                let dead = outs.iter().filter(|o| !matches!(o, Out::Row { .. })).count();
                crate::telemetry::transform_batch(outs.len() - dead, dead);
                self.status.committed(outs.len() - dead, dead);
            }
            // Aborted for sure: the batch's rows are gone, read it again.
            Outcome::GaveUp => self.source.rewind(batch),
            // The transaction may have committed after all. Reading the committed offsets
            // (read_committed) waits until it is settled — by the next producer's
            // init_transactions, or the broker's transaction timeout — and says where to go on.
            Outcome::Uncertain => self.source.rewind_to_committed(batch),
        }
    }
}

/// Notes each output Kafka refused for what it is, so that the batch read again replaces it
/// after a few refusals instead of stalling the partition. Returns whether there was one.
fn note_refusals(e: &OutboxError, batch: &[OwnedMessage], sources: &[usize], poisoned: &mut Poisoned) -> bool {
    let refused: Vec<(usize, &KafkaError)> = match e {
        OutboxError::Refused { index, error } if outbox::is_poison(error) => vec![(*index, error)],
        OutboxError::Undelivered { failed } => {
            failed.iter().filter(|(_, err)| outbox::is_poison(err)).map(|(i, err)| (*i, err)).collect()
        }
        _ => Vec::new(),
    };
    for (index, error) in &refused {
        let raw = &batch[sources[*index]];
        warn!(topic = raw.topic(), partition = raw.partition(), offset = raw.offset(), %error, "Kafka refuses an output of a raw message; after a few refusals it goes to the dead-letter topic instead.");
        poisoned.refused(raw, error.to_string());
    }
    !refused.is_empty()
}

/// After a failed delivery: whether to retry it in place (at-least-once resends of what Kafka
/// did not take), or give the batch up to be read again, after a pause.
fn retry_in_place(
    e: &OutboxError,
    refused: bool,
    runtime: &Handle,
    stop: &Stop,
    backoff: &mut Backoff,
    messages: usize,
) -> bool {
    match e {
        OutboxError::Undelivered { failed } if !refused => {
            warn!(failed = failed.len(), error = %e, "Kafka did not take some rows; retrying them.");
            !stop.requested() && !backoff.pause(runtime, stop)
        }
        // Not retried in place: the consumer must keep polling (rebalances happen there), so
        // the batch is read again instead.
        OutboxError::Unavailable(_) => {
            warn!(error = %e, "Cannot initialise the transform's transactions yet; retrying.");
            stop.sleep_blocking(runtime, Duration::from_millis(500));
            false
        }
        _ => {
            warn!(error = %e, messages, "A transform transaction failed; the batch will be read again.");
            stop.sleep_blocking(runtime, Duration::from_millis(200));
            false
        }
    }
}

/// Logs the raw messages of a batch that go to the dead-letter topic (unreadable, or refused
/// by Kafka too often) or are dropped.
fn report_set_asides(outs: &[Out], batch: &[OwnedMessage]) {
    for out in outs {
        match out {
            Out::Row { .. } => {}
            Out::DeadLetter { index, reason, .. } => {
                let raw = &batch[*index];
                warn!(topic = raw.topic(), partition = raw.partition(), offset = raw.offset(), %reason, "A raw message goes to the dead-letter topic.");
            }
            Out::Dropped { index } => {
                let raw = &batch[*index];
                error!(topic = raw.topic(), partition = raw.partition(), offset = raw.offset(), "Kafka refuses even a bare dead letter for this raw message; it is dropped so that its partition moves on.");
                crate::telemetry::transform_dropped();
            }
        }
    }
}
