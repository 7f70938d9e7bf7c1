//! The flusher loop: read durable WAL records, put them into Kafka through the outbox,
//! acknowledge what Kafka has.

use std::borrow::Cow;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::position::{KafkaPositions, PositionStore};
use super::status::FlushStatus;
use crate::kafka::outbox::{self, Outcome};
use crate::kafka::ProducerOptions;
use crate::kafka::{self, headers, Guarantee, KafkaSettings, KafkaStageError, OutMessage, Outbox, OutboxError};
use crate::node::NodeId;
use crate::retry::{Backoff, Stop};
use crate::wal::{record, LogStore, ReadRecord};

/// Settings of the flusher.
#[derive(Debug, Clone)]
pub struct FlushOptions {
    /// Most records per Kafka batch (and per transaction).
    pub batch_records: usize,
    /// About this many payload bytes per batch at most.
    pub batch_bytes: usize,
    /// The raw topic's producer.
    pub producer: ProducerOptions,
    /// Upper bound of the retry backoff while Kafka is unreachable.
    pub max_backoff: Duration,
}

/// Drains a WAL into Kafka on its own thread.
pub struct Flusher {
    pub log: Arc<dyn LogStore>,
    /// Highest durable sequence number; records above it are never sent.
    pub durable: watch::Receiver<u64>,
    pub kafka: KafkaSettings,
    pub options: FlushOptions,
    pub status: Arc<FlushStatus>,
    /// Names the producer, the position group and the `collector-node` header.
    pub node: NodeId,
}

impl Flusher {
    /// Starts the flusher thread. Once `stop` carries a deadline it returns when the WAL is
    /// fully delivered or the deadline passed, whichever comes first.
    ///
    /// # Errors
    /// Only permanent errors end the thread early: an invalid producer configuration, or being
    /// fenced by another process with the same node id.
    pub fn spawn(self, runtime: Handle, stop: Stop) -> JoinHandle<Result<(), KafkaStageError>> {
        std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || self.run(runtime, stop))
            .expect("spawning the flusher thread")
    }

    fn run(self, runtime: Handle, stop: Stop) -> Result<(), KafkaStageError> {
        let mut backoff = Backoff::new(self.options.max_backoff);
        let mut topics = vec![self.kafka.raw_topic.as_str()];
        let positions = match self.kafka.guarantee {
            Guarantee::ExactlyOnce => {
                topics.push(self.kafka.positions_topic.as_str());
                Some(KafkaPositions::new(&self.kafka, &self.node, self.options.producer.txn.operation)?)
            }
            Guarantee::AtLeastOnce => None,
        };
        // Topics first; without them every send fails.
        let created = kafka::ensure_topics_retrying(&self.kafka, &topics, &runtime, &stop, &mut backoff, |e| {
            self.status.failed(e.to_string());
            warn!(error = %e, "Cannot create the topics yet; the WAL keeps the data meanwhile.");
        })?;
        if !created {
            warn!("Drain deadline reached before Kafka was reachable; undelivered records stay in the WAL.");
            return Ok(());
        }
        let transactional_id = self.node.flush_transactional_id();
        let mut outbox = outbox::open(&self.kafka, self.kafka.guarantee, transactional_id, &self.options.producer);
        FlushLoop {
            flusher: &self,
            outbox: outbox.as_mut(),
            positions: positions.as_ref().map(|p| p as &dyn PositionStore),
            runtime: &runtime,
            stop: &stop,
            backoff,
        }
        .run()
    }
}

/// The loop proper, over any outbox and position store (unit tests use fakes).
pub(super) struct FlushLoop<'a> {
    pub flusher: &'a Flusher,
    pub outbox: &'a mut dyn Outbox,
    /// Exactly-once: where the committed position is read from and committed to.
    pub positions: Option<&'a dyn PositionStore>,
    pub runtime: &'a Handle,
    pub stop: &'a Stop,
    pub backoff: Backoff,
}

impl FlushLoop<'_> {
    pub fn run(mut self) -> Result<(), KafkaStageError> {
        let Some(mut next) = self.resume()? else {
            warn!("Drain deadline reached before Kafka was reachable; undelivered records stay in the WAL.");
            return Ok(());
        };
        let f = self.flusher;
        let mut durable = f.durable.clone();
        info!(next_seq = next, guarantee = ?f.kafka.guarantee, "Flusher started.");
        loop {
            let upto = *durable.borrow_and_update();
            if next > upto {
                if self.stop.requested() {
                    info!(delivered_through = next - 1, "The WAL is fully delivered; flusher stopping.");
                    return Ok(());
                }
                let mut stop = self.stop.clone();
                self.runtime.block_on(async {
                    tokio::select! {
                        _ = durable.changed() => {}
                        () = stop.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                });
                continue;
            }
            if self.stop.expired() {
                warn!(
                    pending = upto + 1 - next,
                    "Drain deadline reached; undelivered records stay in the WAL for the next start."
                );
                return Ok(());
            }
            let records = match f.log.read(next, upto, f.options.batch_records, f.options.batch_bytes) {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %e, "Reading the WAL failed; retrying.");
                    self.backoff.pause(self.runtime, self.stop);
                    continue;
                }
            };
            let Some(last) = records.last().map(|r| r.seq) else {
                // Nothing stored in [next, upto]: sequence numbers of a failed group commit.
                debug!(from = next, to = upto, "No WAL records in a durable range (a failed group commit, or numbers skipped after a loss); moving on.");
                next = upto + 1;
                continue;
            };
            match self.deliver(&records, next, last)? {
                Some(after) => next = after,
                None => {
                    warn!("Drain deadline reached while delivering; undelivered records stay in the WAL.");
                    return Ok(());
                }
            }
        }
    }

    /// Makes the outbox ready and finds where to start: after the WAL's watermark, or after
    /// Kafka's committed position if that is ahead (exactly-once: the local watermark may lag
    /// it by the batch committed just before a crash). `None` if the deadline passed first.
    fn resume(&mut self) -> Result<Option<u64>, KafkaStageError> {
        let next = self.flusher.log.stats().delivered_through + 1;
        let Some(committed) = self.connect()? else { return Ok(None) };
        Ok(Some(self.adopt(next, committed, Limit::WalOpened(self.flusher.log.opened_next_seq()))))
    }

    /// Delivers one batch, `records` = `next..=last`. Returns where to go on, or `None` if
    /// the drain deadline passed first.
    fn deliver(&mut self, records: &[ReadRecord], next: u64, last: u64) -> Result<Option<u64>, KafkaStageError> {
        self.backoff.reset();
        let f = self.flusher;
        let messages = raw_messages(records, &f.kafka.raw_topic, &f.node);
        let offsets = self.positions.map(|p| p.offsets(last + 1));
        let (runtime, stop, backoff) = (self.runtime, self.stop, &mut self.backoff);
        let outcome = outbox::deliver(self.outbox, &messages, offsets.as_ref(), |e| {
            let message = format!("delivering records {next}..={last} failed: {e}");
            warn!(%message, "Kafka did not take a batch; retrying it.");
            f.status.failed(message);
            crate::telemetry::flush_failed();
            !backoff.pause(runtime, stop)
        })?;
        match outcome {
            Outcome::Delivered(_) => {
                self.ack(last);
                f.status.ok(records.len());
                crate::telemetry::flush_delivered(records.len());
                Ok(Some(last + 1))
            }
            Outcome::GaveUp => Ok(None),
            // The batch may have committed after all: the new producer settled it, and the
            // committed position says. Only this batch can have been committed behind our back.
            Outcome::Uncertain => Ok(self.connect()?.map(|committed| self.adopt(next, committed, Limit::Batch(last)))),
        }
    }

    /// Connects the outbox and reads the committed position, retrying until the deadline:
    /// `Some(position)` (itself `None` when nothing was ever committed, or at-least-once), or
    /// `None` if the deadline passed first.
    fn connect(&mut self) -> Result<Option<Option<u64>>, KafkaStageError> {
        loop {
            if self.stop.expired() {
                return Ok(None);
            }
            let read = self.outbox.connect().and_then(|_| match self.positions {
                Some(p) => p.committed().map_err(OutboxError::Unavailable),
                None => Ok(None),
            });
            match read {
                Ok(position) => return Ok(Some(position)),
                Err(e) if e.is_permanent() => return Err(e.into()),
                Err(e) => {
                    self.flusher.status.failed(e.to_string());
                    warn!(error = %e, "Cannot start a Kafka transaction yet; the WAL keeps the data meanwhile.");
                    if self.backoff.pause(self.runtime, self.stop) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Where to go on from `next` given Kafka's committed position: skip (and acknowledge)
    /// what Kafka already has, but never trust a position this WAL cannot have produced.
    fn adopt(&self, next: u64, committed: Option<u64>, limit: Limit) -> u64 {
        match (committed, limit) {
            (Some(position), Limit::WalOpened(opened_next)) if position > opened_next => {
                error!(
                    kafka = position,
                    wal_next = opened_next,
                    "Kafka's committed position for this node id is ahead of this WAL: the WAL directory was replaced or lost. Ignoring the position; give each WAL its own --node-id."
                );
                next
            }
            (Some(position), Limit::Batch(last)) if position > last + 1 => {
                // Only the batch in flight can have been committed behind our back.
                debug!(kafka = position, last, "Kafka's committed position is past the batch in flight; ignoring it.");
                next
            }
            (Some(position), _) if position > next => {
                info!(
                    local = next,
                    kafka = position,
                    "Kafka already has records the WAL had not marked delivered; skipping them."
                );
                self.ack(position - 1);
                position
            }
            _ => next,
        }
    }

    fn ack(&self, seq: u64) {
        if let Err(e) = self.flusher.log.ack_through(seq) {
            // Not fatal: Kafka has the records. Exactly-once mode skips them again after a
            // restart (Kafka's position wins); at-least-once mode sends them again.
            error!(error = %e, seq, "Recording the delivered position in the WAL failed.");
        }
    }
}

/// The highest position [`FlushLoop::adopt`] may take from Kafka.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// At start: the next sequence number when the WAL was opened. A position beyond every
    /// number this WAL had handed out belongs to another WAL under the same node id (a replaced
    /// directory).
    WalOpened(u64),
    /// After a lost producer: the last record of the batch in flight.
    Batch(u64),
}

/// One raw-topic message per readable record: the body as received, with its sequence number,
/// receive time, node and client in headers.
fn raw_messages<'r>(records: &'r [ReadRecord], topic: &'r str, node: &'r NodeId) -> Vec<OutMessage<'r>> {
    records
        .iter()
        .filter_map(|rec| {
            let frame = rec.frame.as_ref()?;
            let entry = record::decode(frame).expect("records are checked when read");
            Some(OutMessage {
                topic,
                key: None,
                payload: Some(entry.payload),
                headers: vec![
                    (headers::SEQ, Cow::Owned(rec.seq.to_string().into_bytes())),
                    (headers::RECEIVED_AT, Cow::Owned(entry.received_at_ms.to_string().into_bytes())),
                    (headers::NODE, Cow::Borrowed(node.as_str().as_bytes())),
                    (headers::CLIENT, Cow::Borrowed(entry.client.as_bytes())),
                ],
            })
        })
        .collect()
}
