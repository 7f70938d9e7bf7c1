//! The transform worker: a consumer-group member that turns raw messages into rows.
//!
//! One batch at a time: poll up to `batch_messages` raw messages, transform them, produce the
//! rows (and dead letters), then make the consumer offsets after the batch stick:
//! - exactly-once: rows and offsets in one transaction (`send_offsets_to_transaction` with the
//!   consumer's group metadata, so a worker that lost its partitions in a rebalance is fenced);
//!   on any failure the transaction is aborted and the consumer rewound to the batch's start;
//! - at-least-once: wait until Kafka confirmed every row, then commit the offsets.
//!
//! A batch during which the group rebalanced is dropped before anything is produced: its
//! partitions restart from their committed offsets, wherever they are now assigned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{info, warn};

use super::row::{Row, Transformer};
use crate::kafka::txn::{self, TxnFailure, TxnTimeouts};
use crate::kafka::{self, headers, Batch, Guarantee, KafkaSettings, KafkaStageError, LogContext, TrackingProducer};

/// Settings of the transform worker.
#[derive(Debug, Clone)]
pub struct TransformOptions {
    /// Consumer group; every worker with the same group shares the raw topic's partitions.
    pub group_id: String,
    /// Names this worker: its transactional.id is `collector-transform-<node_id>`.
    pub node_id: String,
    /// Most raw messages per batch (and per transaction).
    pub batch_messages: usize,
    /// How long to wait for a batch to fill.
    pub batch_wait: Duration,
    /// librdkafka `linger.ms` for the row producer.
    pub linger_ms: u64,
    /// At-least-once mode: librdkafka `message.timeout.ms` for the row producer.
    pub message_timeout_ms: u64,
    /// Exactly-once mode: transaction timing.
    pub txn: TxnTimeouts,
}

/// What one produced message is, so failures can be resent.
enum Out {
    Row(Row),
    DeadLetter { index: usize, reason: String },
}

/// Notices rebalances, so a batch that straddles one is dropped.
#[derive(Default)]
struct RebalanceWatch {
    happened: AtomicBool,
}

impl ClientContext for RebalanceWatch {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        LogContext.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        LogContext.error(error, reason);
    }
}

impl ConsumerContext for RebalanceWatch {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.happened.store(true, Ordering::Release);
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "Transform partitions assigned."),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "Transform partitions revoked."),
            Rebalance::Error(e) => warn!(error = %e, "Consumer group rebalance failed."),
        }
    }
}

type WorkerConsumer = BaseConsumer<RebalanceWatch>;

/// Starts the worker thread. It stops, committing nothing more, when `stop` becomes true.
///
/// # Errors
/// Only permanent errors end the worker: invalid client configuration.
pub fn spawn(
    kafka: KafkaSettings,
    options: TransformOptions,
    runtime: Handle,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Result<(), KafkaStageError>> {
    std::thread::Builder::new()
        .name("transform".into())
        .spawn(move || Worker { kafka: &kafka, options: &options, stop: &stop, producer: None }.run(&runtime))
        .expect("spawning the transform thread")
}

struct Worker<'a> {
    kafka: &'a KafkaSettings,
    options: &'a TransformOptions,
    stop: &'a watch::Receiver<bool>,
    /// Created lazily (and re-created after a fatal error) so a down broker never stops us.
    producer: Option<TrackingProducer>,
}

impl Worker<'_> {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn run(mut self, runtime: &Handle) -> Result<(), KafkaStageError> {
        let kafka = self.kafka;
        let topics = [kafka.raw_topic.as_str(), kafka.transformed_topic.as_str(), kafka.dead_letter_topic.as_str()];
        let mut backoff = Duration::from_millis(100);
        loop {
            match runtime.block_on(kafka::ensure_topics(kafka, &topics)) {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    warn!(error = %e, "Cannot create the transform's topics yet; retrying.");
                    if self.stopped() {
                        return Ok(());
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
        let consumer: WorkerConsumer = kafka
            .client_config(&[
                ("group.id", &self.options.group_id),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
                ("enable.partition.eof", "false"),
            ])
            .create_with_context(RebalanceWatch::default())
            .map_err(|e| KafkaStageError::Config(e.to_string()))?;
        consumer.subscribe(&[&kafka.raw_topic])?;
        info!(group = %self.options.group_id, topic = %kafka.raw_topic, guarantee = ?kafka.guarantee, "Transform worker started.");

        let mut transformer = Transformer::default();
        while !self.stopped() {
            let batch = self.poll_batch(&consumer);
            if batch.is_empty() {
                continue;
            }
            let outs = transform_batch(&mut transformer, &batch);
            let dead = outs.iter().filter(|o| matches!(o, Out::DeadLetter { .. })).count();
            if dead > 0 {
                warn!(count = dead, "Raw messages the transform cannot read go to the dead-letter topic.");
            }
            let delivered = match kafka.guarantee {
                Guarantee::ExactlyOnce => self.transact(&consumer, &batch, &outs)?,
                Guarantee::AtLeastOnce => self.produce_then_commit(&consumer, &batch, &outs)?,
            };
            if delivered {
                crate::telemetry::transform_batch(outs.len() - dead, dead);
            }
        }
        info!("Transform worker stopped.");
        Ok(())
    }

    /// Up to `batch_messages` messages; empty if the group rebalanced meanwhile.
    fn poll_batch(&self, consumer: &WorkerConsumer) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        consumer.context().happened.store(false, Ordering::Release);
        let deadline = Instant::now() + self.options.batch_wait;
        while batch.len() < self.options.batch_messages {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match consumer.poll(left) {
                None => break,
                Some(Ok(m)) => batch.push(BorrowedMessage::detach(&m)),
                Some(Err(e)) => {
                    warn!(error = %e, "Consuming from the raw topic failed.");
                    break;
                }
            }
        }
        if consumer.context().happened.load(Ordering::Acquire) && !batch.is_empty() {
            info!(messages = batch.len(), "The group rebalanced during a batch; dropping it to read it again.");
            // Partitions we kept (cooperative assignment) must be rewound too; revoked ones
            // restart from their committed offsets wherever they went.
            rewind(consumer, &batch);
            batch.clear();
        }
        batch
    }

    /// Creates (and for transactions, initialises) the producer if needed. False when Kafka
    /// is not reachable yet.
    fn ensure_producer(&mut self) -> Result<bool, KafkaStageError> {
        if self.producer.is_none() {
            let producer = match self.kafka.guarantee {
                Guarantee::AtLeastOnce => {
                    self.kafka.tracking_producer(self.options.linger_ms, self.options.message_timeout_ms)?
                }
                Guarantee::ExactlyOnce => {
                    let id = format!("collector-transform-{}", self.options.node_id);
                    let p = self.kafka.transactional_producer(&id, self.options.linger_ms, self.options.txn)?;
                    if let Err(e) = p.init_transactions(self.options.txn.operation) {
                        warn!(error = %e, "Cannot initialise the transform's transactions yet; retrying.");
                        return Ok(false);
                    }
                    info!(transactional_id = %id, "Transform producer ready; earlier incarnations are fenced.");
                    p
                }
            };
            self.producer = Some(producer);
        }
        Ok(true)
    }

    /// Exactly-once: one transaction for the rows and the offsets. Returns whether it committed;
    /// if not, the consumer is rewound so the batch is read again.
    fn transact(
        &mut self,
        consumer: &WorkerConsumer,
        batch: &[OwnedMessage],
        outs: &[Out],
    ) -> Result<bool, KafkaStageError> {
        if !self.ensure_producer()? {
            rewind(consumer, batch);
            std::thread::sleep(Duration::from_millis(500));
            return Ok(false);
        }
        let (kafka, timeout) = (self.kafka, self.options.txn.operation);
        let producer = self.producer.as_ref().expect("ensured above");
        let attempt = (|| {
            producer.begin_transaction().map_err(txn::classify)?;
            let mut sending = Batch::new(producer);
            if let Some((_, e)) = send_outs(&mut sending, kafka, batch, outs, 0..outs.len()).into_iter().next() {
                return Err(TxnFailure::Abortable(e));
            }
            let group = consumer.group_metadata().ok_or_else(|| {
                TxnFailure::Abortable(KafkaError::ClientCreation("no consumer group metadata".into()))
            })?;
            producer.send_offsets_to_transaction(&next_offsets(batch), &group, timeout).map_err(txn::classify)?;
            txn::commit(producer, timeout)
        })();
        match attempt {
            Ok(()) => Ok(true),
            Err(failure) => {
                warn!(error = %failure, messages = batch.len(), "A transform transaction failed; the batch will be read again.");
                crate::telemetry::transform_failed();
                let keep = !matches!(failure, TxnFailure::Fatal(_)) && txn::abort(producer, timeout);
                if keep {
                    // Aborted for sure: the batch's rows are gone, read it again.
                    rewind(consumer, batch);
                } else {
                    // The transaction may have committed after all. The next producer's
                    // init_transactions settles it; the committed offsets then say where to go on.
                    self.producer = None;
                    rewind_to_committed(consumer, batch);
                }
                std::thread::sleep(Duration::from_millis(200));
                Ok(false)
            }
        }
    }

    /// At-least-once: resend failures until Kafka has every row, then commit the offsets.
    /// Returns false if asked to stop first (the batch is read again after a restart).
    fn produce_then_commit(
        &mut self,
        consumer: &WorkerConsumer,
        batch: &[OwnedMessage],
        outs: &[Out],
    ) -> Result<bool, KafkaStageError> {
        self.ensure_producer()?;
        let (kafka, stop) = (self.kafka, self.stop);
        let producer = self.producer.as_ref().expect("plain producers need no initialisation");
        let mut todo: Vec<usize> = (0..outs.len()).collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut sending = Batch::new(producer);
            let refused = send_outs(&mut sending, kafka, batch, outs, todo.iter().copied());
            let mut failed = sending.wait().failed;
            failed.extend(refused);
            if failed.is_empty() {
                break;
            }
            warn!(failed = failed.len(), error = %failed[0].1, "Kafka did not take some rows; retrying them.");
            crate::telemetry::transform_failed();
            if *stop.borrow() {
                return Ok(false);
            }
            if producer.client().fatal_error().is_some() {
                // An idempotent producer whose state broke cannot send again: start over with a
                // new one; the batch is read again (at-least-once allows the repeat).
                warn!("The row producer hit a fatal error; replacing it.");
                self.producer = None;
                rewind(consumer, batch);
                return Ok(false);
            }
            todo = failed.into_iter().map(|(i, _)| i).collect();
            todo.sort_unstable();
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        // A failure here (the partition was revoked meanwhile) only means the batch is
        // transformed again by the partition's next owner.
        if let Err(e) = consumer.commit(&next_offsets(batch), CommitMode::Sync) {
            warn!(error = %e, "Committing consumer offsets failed; the batch may be transformed again.");
        }
        Ok(true)
    }
}

fn transform_batch(transformer: &mut Transformer, batch: &[OwnedMessage]) -> Vec<Out> {
    let mut outs = Vec::new();
    let mut rows = Vec::new();
    for (index, msg) in batch.iter().enumerate() {
        rows.clear();
        match msg.payload() {
            None => outs.push(Out::DeadLetter { index, reason: "the message has no payload".into() }),
            Some(raw) => match transformer.transform(raw, &mut rows) {
                Ok(_) => outs.extend(rows.drain(..).map(Out::Row)),
                Err(e) => outs.push(Out::DeadLetter { index, reason: e.to_string() }),
            },
        }
    }
    outs
}

/// Enqueues `outs[i]` for each `i`; returns the ones librdkafka refused outright.
fn send_outs(
    sending: &mut Batch<'_>,
    kafka: &KafkaSettings,
    batch: &[OwnedMessage],
    outs: &[Out],
    indices: impl Iterator<Item = usize>,
) -> Vec<(usize, KafkaError)> {
    let mut refused = Vec::new();
    for i in indices {
        let sent = match &outs[i] {
            Out::Row(row) => sending.send(
                BaseRecord::with_opaque_to(&kafka.transformed_topic, i).key(&row.key[..]).payload(&row.value[..]),
            ),
            Out::DeadLetter { index, reason } => {
                let raw = &batch[*index];
                let source = format!("{}/{}/{}", raw.topic(), raw.partition(), raw.offset());
                // A foreign message too large to forward with our headers would stall the
                // partition forever; forward the reason and where to find it instead.
                let limit = kafka.max_message_bytes().saturating_sub(kafka::MESSAGE_OVERHEAD_BYTES);
                let payload = raw.payload().filter(|p| p.len() <= limit);
                let reason = match raw.payload() {
                    Some(p) if payload.is_none() => {
                        format!("{reason} (payload of {} bytes not copied: too large)", p.len())
                    }
                    _ => reason.clone(),
                };
                let hdrs =
                    kafka::make_headers(&[(headers::ERROR, reason.as_bytes()), (headers::SOURCE, source.as_bytes())]);
                let mut record =
                    BaseRecord::<[u8], [u8], usize>::with_opaque_to(&kafka.dead_letter_topic, i).headers(hdrs);
                if let Some(p) = payload {
                    record = record.payload(p);
                }
                if let Some(k) = raw.key() {
                    record = record.key(k);
                }
                sending.send(record)
            }
        };
        if let Err(e) = sent {
            refused.push((i, e));
        }
    }
    refused
}

/// Per partition, the offset after the batch's last message: what to commit.
fn next_offsets(batch: &[OwnedMessage]) -> TopicPartitionList {
    offsets(batch, |entry, offset| *entry = (*entry).max(offset + 1), i64::MIN)
}

/// Seeks every partition of the batch back to the batch's first message in it, so the next
/// poll reads the batch again. A partition no longer assigned is skipped: its new owner starts
/// from the committed offset anyway.
fn rewind(consumer: &WorkerConsumer, batch: &[OwnedMessage]) {
    let firsts = offsets(batch, |entry, offset| *entry = (*entry).min(offset), i64::MAX);
    for elem in firsts.elements() {
        if let Err(e) = consumer.seek(elem.topic(), elem.partition(), elem.offset(), Duration::from_secs(5)) {
            info!(topic = elem.topic(), partition = elem.partition(), error = %e, "Could not rewind a partition; it was probably reassigned.");
        }
    }
}

/// Seeks every partition of the batch to its committed offset (read_committed, so an open
/// transaction of ours is waited out), falling back to the batch start if that fails.
fn rewind_to_committed(consumer: &WorkerConsumer, batch: &[OwnedMessage]) {
    let mut tpl = TopicPartitionList::new();
    for elem in next_offsets(batch).elements() {
        tpl.add_partition(elem.topic(), elem.partition());
    }
    match consumer.committed_offsets(tpl, Duration::from_secs(30)) {
        Ok(committed) => {
            for elem in committed.elements() {
                let to = match elem.offset() {
                    Offset::Offset(_) => elem.offset(),
                    _ => Offset::Beginning,
                };
                if let Err(e) = consumer.seek(elem.topic(), elem.partition(), to, Duration::from_secs(5)) {
                    info!(topic = elem.topic(), partition = elem.partition(), error = %e, "Could not rewind a partition; it was probably reassigned.");
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "Could not read the committed offsets; rewinding to the batch start.");
            rewind(consumer, batch);
        }
    }
}

fn offsets(batch: &[OwnedMessage], fold: impl Fn(&mut i64, i64), init: i64) -> TopicPartitionList {
    let mut per: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        fold(per.entry((m.topic(), m.partition())).or_insert(init), m.offset());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in per {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).expect("a valid offset");
    }
    tpl
}
