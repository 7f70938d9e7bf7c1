//! Where flushed records go: the plain (at-least-once) or the transactional (exactly-once)
//! producer.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::flusher::{Ctx, FlushOptions};
use crate::kafka::txn::{self, TxnFailure};
use crate::kafka::{self, headers, Batch, Guarantee, KafkaSettings, KafkaStageError, LogContext, TrackingProducer};
use crate::wal::record;
use crate::wal::ReadRecord;

/// What happened to a batch.
pub(super) enum Delivery {
    /// Kafka has every record of the batch.
    Done,
    /// Read the batch again from this position (the next sequence to send) if it is ahead of
    /// where the flusher is; otherwise from where it is. A new transactional producer returns
    /// Kafka's committed position, since the batch may have been committed after all.
    Resync(u64),
    /// The drain deadline passed first.
    Abandoned,
}

pub(super) enum Sink {
    Plain(TrackingProducer),
    Transactional(TxnSink),
}

/// The exactly-once sink: every batch is one transaction that also commits the WAL position.
///
/// The position is stored the way Kafka stores consumer positions: as the committed offset of
/// the consumer group `collector-flush-<node>` on partition 0 of the positions topic, written
/// with `send_offsets_to_transaction`. So it becomes visible exactly when the batch does, and
/// reading it back after a restart is one `OffsetFetch`, whatever the backlog.
pub(super) struct TxnSink {
    producer: Option<TrackingProducer>,
    /// Never subscribes; exists for its group id (the position's owner) and to read the
    /// committed position back.
    positions: BaseConsumer<LogContext>,
    transactional_id: String,
}

impl Sink {
    pub fn new(kafka: &KafkaSettings, options: &FlushOptions) -> Result<Sink, KafkaStageError> {
        match kafka.guarantee {
            Guarantee::AtLeastOnce => {
                Ok(Sink::Plain(kafka.tracking_producer(options.linger_ms, options.message_timeout_ms)?))
            }
            Guarantee::ExactlyOnce => {
                let group = format!("collector-flush-{}", options.node_id);
                let positions = kafka
                    .client_config(&[
                        ("group.id", &group),
                        ("enable.auto.commit", "false"),
                        ("isolation.level", "read_committed"),
                    ])
                    .create_with_context(LogContext)
                    .map_err(|e| KafkaStageError::Config(e.to_string()))?;
                Ok(Sink::Transactional(TxnSink { producer: None, positions, transactional_id: group }))
            }
        }
    }

    /// Exactly-once: initialises the transactional producer (fencing any previous incarnation
    /// and aborting what it left open) and returns Kafka's committed position, the next
    /// sequence number to send (`Some(None)` if none was ever committed). At-least-once:
    /// `Some(None)`. `None` if the drain deadline passed first.
    pub fn resume_point(&mut self, ctx: &mut Ctx<'_>) -> Option<Option<u64>> {
        match self {
            Sink::Plain(_) => Some(None),
            Sink::Transactional(t) => loop {
                match t.connect(ctx) {
                    Ok(position) => return Some(position),
                    Err(e) => {
                        ctx.status.failed(e.to_string());
                        warn!(error = %e, "Cannot start a Kafka transaction yet; the WAL keeps the data meanwhile.");
                        if ctx.pause() {
                            return None;
                        }
                    }
                }
            },
        }
    }

    pub fn deliver(&mut self, records: &[ReadRecord], last: u64, ctx: &mut Ctx<'_>) -> Delivery {
        ctx.backoff.reset();
        match self {
            Sink::Plain(p) => {
                let delivery = deliver_plain(p, records, ctx);
                if p.client().fatal_error().is_some() {
                    // An idempotent producer whose sequence state broke cannot send again.
                    warn!("The producer hit a fatal error; creating a new one.");
                    match ctx.kafka.tracking_producer(ctx.options.linger_ms, ctx.options.message_timeout_ms) {
                        Ok(fresh) => *p = fresh,
                        Err(e) => warn!(error = %e, "Could not create a new producer."),
                    }
                }
                delivery
            }
            Sink::Transactional(t) => t.deliver(records, last, ctx),
        }
    }
}

/// Enqueues the readable `records` at `indices`; returns those librdkafka refused outright.
fn enqueue(
    batch: &mut Batch<'_>,
    records: &[ReadRecord],
    indices: &[usize],
    kafka: &KafkaSettings,
    node_id: &str,
) -> Vec<(usize, KafkaError)> {
    let mut refused = Vec::new();
    for &i in indices {
        let rec = &records[i];
        let Some(frame) = rec.frame.as_ref() else { continue };
        let entry = record::decode(frame).expect("records are checked when read");
        let seq = rec.seq.to_string();
        let received = entry.received_at_ms.to_string();
        let hdrs = kafka::make_headers(&[
            (headers::SEQ, seq.as_bytes()),
            (headers::RECEIVED_AT, received.as_bytes()),
            (headers::NODE, node_id.as_bytes()),
            (headers::CLIENT, entry.client.as_bytes()),
        ]);
        let msg =
            BaseRecord::<(), [u8], usize>::with_opaque_to(&kafka.raw_topic, i).payload(entry.payload).headers(hdrs);
        if let Err(e) = batch.send(msg) {
            refused.push((i, e));
        }
    }
    refused
}

/// At-least-once: send, wait for every delivery report, resend exactly what failed.
fn deliver_plain(producer: &TrackingProducer, records: &[ReadRecord], ctx: &mut Ctx<'_>) -> Delivery {
    let mut todo: Vec<usize> = (0..records.len()).filter(|&i| records[i].frame.is_some()).collect();
    loop {
        let mut batch = Batch::new(producer);
        let refused = enqueue(&mut batch, records, &todo, ctx.kafka, &ctx.options.node_id);
        let mut failed = batch.wait().failed;
        failed.extend(refused);
        if failed.is_empty() {
            return Delivery::Done;
        }
        let message = format!("{} of {} records not delivered: {}", failed.len(), todo.len(), failed[0].1);
        warn!(%message, "Kafka did not take a batch; retrying the failed records.");
        ctx.status.failed(message);
        crate::telemetry::flush_failed();
        todo = failed.into_iter().map(|(i, _)| i).collect();
        todo.sort_unstable();
        if producer.client().fatal_error().is_some() {
            // Let the caller replace the producer; the batch is read again.
            return Delivery::Resync(0);
        }
        if ctx.pause() {
            return Delivery::Abandoned;
        }
    }
}

impl TxnSink {
    /// Creates and initialises a producer if there is none, and reads the committed position.
    fn connect(&mut self, ctx: &Ctx<'_>) -> Result<Option<u64>, KafkaError> {
        let timeout = ctx.options.txn.operation;
        if self.producer.is_none() {
            let producer = ctx
                .kafka
                .transactional_producer(&self.transactional_id, ctx.options.linger_ms, ctx.options.txn)
                .map_err(|e| match e {
                    KafkaStageError::Client(k) => k,
                    other => KafkaError::ClientCreation(other.to_string()),
                })?;
            producer.init_transactions(timeout)?;
            info!(transactional_id = %self.transactional_id, "Transactional producer ready; earlier incarnations are fenced.");
            self.producer = Some(producer);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&ctx.kafka.positions_topic, 0);
        let committed = self.positions.committed_offsets(tpl, timeout)?;
        let offset = committed.find_partition(&ctx.kafka.positions_topic, 0).map(|p| p.offset());
        Ok(match offset {
            Some(Offset::Offset(n)) if n > 0 => Some(n as u64),
            _ => None,
        })
    }

    fn deliver(&mut self, records: &[ReadRecord], last: u64, ctx: &mut Ctx<'_>) -> Delivery {
        let all: Vec<usize> = (0..records.len()).collect();
        loop {
            if self.producer.is_none() {
                match self.connect(ctx) {
                    // A fresh producer: the previous transaction may have committed after all.
                    Ok(position) => return Delivery::Resync(position.unwrap_or(0)),
                    Err(e) => {
                        ctx.status.failed(e.to_string());
                        warn!(error = %e, "Cannot start a Kafka transaction; retrying.");
                        if ctx.pause() {
                            return Delivery::Abandoned;
                        }
                        continue;
                    }
                }
            }
            let producer = self.producer.as_ref().expect("connected above");
            match self.transaction(producer, records, &all, last, ctx) {
                Ok(()) => return Delivery::Done,
                Err(failure) => {
                    let message = format!("transaction for records up to {last} failed: {failure}");
                    warn!(%message, "Kafka did not commit a batch; retrying it.");
                    ctx.status.failed(message);
                    crate::telemetry::flush_failed();
                    let keep = match failure {
                        TxnFailure::Fatal(_) => false,
                        TxnFailure::Abortable(_) | TxnFailure::Retriable(_) => {
                            txn::abort(producer, ctx.options.txn.operation)
                        }
                    };
                    if !keep {
                        self.producer = None;
                    }
                    if ctx.pause() {
                        return Delivery::Abandoned;
                    }
                }
            }
        }
    }

    /// One transaction: the records, then the position after `last`, then commit.
    fn transaction(
        &self,
        producer: &TrackingProducer,
        records: &[ReadRecord],
        indices: &[usize],
        last: u64,
        ctx: &Ctx<'_>,
    ) -> Result<(), TxnFailure> {
        let timeout = ctx.options.txn.operation;
        producer.begin_transaction().map_err(txn::classify)?;
        let mut batch = Batch::new(producer);
        if let Some((_, e)) = enqueue(&mut batch, records, indices, ctx.kafka, &ctx.options.node_id).into_iter().next()
        {
            return Err(TxnFailure::Abortable(e));
        }
        let mut position = TopicPartitionList::new();
        position
            .add_partition_offset(&ctx.kafka.positions_topic, 0, Offset::Offset(last as i64 + 1))
            .map_err(TxnFailure::Abortable)?;
        let group = self.positions.group_metadata().ok_or_else(|| {
            TxnFailure::Fatal(KafkaError::ClientCreation("the positions consumer has no group metadata".into()))
        })?;
        producer.send_offsets_to_transaction(&position, &group, timeout).map_err(txn::classify)?;
        // Committing flushes the producer: every message is delivered or the commit fails.
        txn::commit(producer, timeout)
    }
}
