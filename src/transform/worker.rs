//! The transform worker: a consumer-group member that turns raw messages into rows.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{info, warn};

use super::row::{Row, Transformer};
use crate::kafka::{self, headers, Batch, KafkaSettings, KafkaStageError, TrackingProducer};

/// Settings of the transform worker.
#[derive(Debug, Clone)]
pub struct TransformOptions {
    /// Consumer group; every worker with the same group shares the raw topic's partitions.
    pub group_id: String,
    /// Most raw messages per batch.
    pub batch_messages: usize,
    /// How long to wait for a batch to fill.
    pub batch_wait: Duration,
    /// librdkafka `linger.ms` for the row producer.
    pub linger_ms: u64,
    /// librdkafka `message.timeout.ms` for the row producer.
    pub message_timeout_ms: u64,
}

/// What one produced message is, so failures can be resent.
enum Out {
    Row(Row),
    DeadLetter { index: usize, reason: String },
}

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
        .spawn(move || run(&kafka, &options, &runtime, &stop))
        .expect("spawning the transform thread")
}

fn run(
    kafka: &KafkaSettings,
    options: &TransformOptions,
    runtime: &Handle,
    stop: &watch::Receiver<bool>,
) -> Result<(), KafkaStageError> {
    let stopped = || *stop.borrow();
    let topics = [kafka.raw_topic.as_str(), kafka.transformed_topic.as_str(), kafka.dead_letter_topic.as_str()];
    let mut backoff = Duration::from_millis(100);
    loop {
        match runtime.block_on(kafka::ensure_topics(kafka, &topics)) {
            Ok(()) => break,
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "Cannot create the transform's topics yet; retrying.");
                if stopped() {
                    return Ok(());
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("group.id", &options.group_id),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "false"),
        ])
        .create()
        .map_err(|e| KafkaStageError::Config(e.to_string()))?;
    let producer = kafka.tracking_producer(options.linger_ms, options.message_timeout_ms)?;
    consumer.subscribe(&[&kafka.raw_topic])?;
    info!(group = %options.group_id, topic = %kafka.raw_topic, "Transform worker started.");

    let mut transformer = Transformer::default();
    while !stopped() {
        let batch = poll_batch(&consumer, options);
        if batch.is_empty() {
            continue;
        }
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
        let dead = outs.iter().filter(|o| matches!(o, Out::DeadLetter { .. })).count();
        if dead > 0 {
            warn!(count = dead, "Raw messages the transform cannot read go to the dead-letter topic.");
        }
        if !produce_all(&producer, kafka, &batch, &outs, stop) {
            info!("Stopping with a batch undelivered; it will be transformed again after restart.");
            return Ok(());
        }
        crate::telemetry::transform_batch(outs.len() - dead, dead);
        commit(&consumer, &batch);
    }
    info!("Transform worker stopped.");
    Ok(())
}

fn poll_batch(consumer: &BaseConsumer, options: &TransformOptions) -> Vec<OwnedMessage> {
    let mut batch = Vec::new();
    let deadline = Instant::now() + options.batch_wait;
    while batch.len() < options.batch_messages {
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
    batch
}

/// Produces every output, resending failures with backoff. Returns false if asked to stop
/// before everything was delivered.
fn produce_all(
    producer: &TrackingProducer,
    kafka: &KafkaSettings,
    batch: &[OwnedMessage],
    outs: &[Out],
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut todo: Vec<usize> = (0..outs.len()).collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut sending = Batch::new(producer);
        let mut refused = Vec::new();
        for &i in &todo {
            let sent = match &outs[i] {
                Out::Row(row) => sending.send(
                    BaseRecord::with_opaque_to(&kafka.transformed_topic, i).key(&row.key[..]).payload(&row.value[..]),
                ),
                Out::DeadLetter { index, reason } => {
                    let raw = &batch[*index];
                    let source = format!("{}/{}/{}", raw.topic(), raw.partition(), raw.offset());
                    let hdrs = kafka::make_headers(&[
                        (headers::ERROR, reason.as_bytes()),
                        (headers::SOURCE, source.as_bytes()),
                    ]);
                    let mut record =
                        BaseRecord::<[u8], [u8], usize>::with_opaque_to(&kafka.dead_letter_topic, i).headers(hdrs);
                    if let Some(p) = raw.payload() {
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
        let mut failed = sending.wait().failed;
        failed.extend(refused);
        if failed.is_empty() {
            return true;
        }
        warn!(failed = failed.len(), error = %failed[0].1, "Kafka did not take some rows; retrying them.");
        crate::telemetry::transform_failed();
        if *stop.borrow() {
            return false;
        }
        todo = failed.into_iter().map(|(i, _)| i).collect();
        todo.sort_unstable();
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Commits, per partition, the offset after the last message of the batch. A failure (the
/// partition was revoked by a rebalance meanwhile) only means those messages are transformed
/// again by their new owner: at-least-once.
fn commit(consumer: &BaseConsumer, batch: &[OwnedMessage]) {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let entry = next.entry((m.topic(), m.partition())).or_insert(0);
        *entry = (*entry).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            warn!(error = %e, "Building the offset commit failed.");
            return;
        }
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        warn!(error = %e, "Committing consumer offsets failed; the batch may be transformed again.");
    }
}
