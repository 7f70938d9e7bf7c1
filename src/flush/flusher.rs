//! The flusher loop: read durable WAL records, hand them to a sink, acknowledge what Kafka has.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::sink::{Delivery, Sink};
use crate::kafka::txn::TxnTimeouts;
use crate::kafka::{self, Guarantee, KafkaSettings, KafkaStageError};
use crate::wal::LogStore;

/// Settings of the flusher.
#[derive(Debug, Clone)]
pub struct FlushOptions {
    /// Most records per Kafka batch (and per transaction).
    pub batch_records: usize,
    /// About this many payload bytes per batch at most.
    pub batch_bytes: usize,
    /// librdkafka `linger.ms`: how long the producer waits to fill a request.
    pub linger_ms: u64,
    /// At-least-once mode: librdkafka `message.timeout.ms`; after it a message counts as failed
    /// and is resent.
    pub message_timeout_ms: u64,
    /// Exactly-once mode: transaction timing.
    pub txn: TxnTimeouts,
    /// Upper bound of the retry backoff while Kafka is unreachable.
    pub max_backoff: Duration,
    /// Identifies this collector: message headers, `transactional.id`, position group.
    pub node_id: String,
}

/// Live state of the flusher for the status page.
#[derive(Debug, Default)]
pub struct FlushStatus {
    kafka_ok: AtomicBool,
    delivered_records: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlushSnapshot {
    /// The last batch went through.
    pub kafka_ok: bool,
    /// Records delivered since start.
    pub delivered_records: u64,
    pub last_error: Option<String>,
}

impl FlushStatus {
    pub fn snapshot(&self) -> FlushSnapshot {
        FlushSnapshot {
            kafka_ok: self.kafka_ok.load(Ordering::Relaxed),
            delivered_records: self.delivered_records.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("status lock poisoned").clone(),
        }
    }

    fn ok(&self, records: usize) {
        self.kafka_ok.store(true, Ordering::Relaxed);
        self.delivered_records.fetch_add(records as u64, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = None;
    }

    pub(super) fn failed(&self, error: String) {
        self.kafka_ok.store(false, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = Some(error);
    }
}

/// Drains a WAL into Kafka on its own thread.
pub struct Flusher {
    pub log: Arc<dyn LogStore>,
    /// Highest durable sequence number; records above it are never sent.
    pub durable: watch::Receiver<u64>,
    pub kafka: KafkaSettings,
    pub options: FlushOptions,
    pub status: Arc<FlushStatus>,
}

/// Tells a running flusher to finish: deliver what is durable, until the deadline.
pub type DrainSignal = watch::Receiver<Option<Instant>>;

/// What a sink needs from the loop: where to run async calls and when to give up.
pub(super) struct Ctx<'a> {
    pub runtime: &'a Handle,
    pub drain: &'a DrainSignal,
    pub backoff: &'a mut Backoff,
    pub status: &'a FlushStatus,
    pub kafka: &'a KafkaSettings,
    pub options: &'a FlushOptions,
}

impl Ctx<'_> {
    /// Sleeps for the backoff; true if the drain deadline has passed (give up).
    pub fn pause(&mut self) -> bool {
        self.runtime.block_on(self.backoff.sleep_or_drain(&mut self.drain.clone())) || self.past_deadline()
    }

    pub fn past_deadline(&self) -> bool {
        self.drain.borrow().is_some_and(|d| Instant::now() >= d)
    }
}

impl Flusher {
    /// Starts the flusher thread. It returns when `drain` carries a deadline and either the WAL
    /// is fully delivered or the deadline passed.
    ///
    /// # Errors
    /// Only permanent errors end the thread early: an invalid producer configuration.
    pub fn spawn(self, runtime: Handle, drain: DrainSignal) -> JoinHandle<Result<(), KafkaStageError>> {
        std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || self.run(runtime, drain))
            .expect("spawning the flusher thread")
    }

    fn run(self, runtime: Handle, mut drain: DrainSignal) -> Result<(), KafkaStageError> {
        let mut backoff = Backoff::new(self.options.max_backoff);
        let mut sink = Sink::new(&self.kafka, &self.options)?;
        let mut topics = vec![self.kafka.raw_topic.as_str()];
        if self.kafka.guarantee == Guarantee::ExactlyOnce {
            topics.push(self.kafka.positions_topic.as_str());
        }
        let mut ctx = self.ctx(&runtime, &drain, &mut backoff);

        // Topics first; without them every send fails.
        loop {
            match runtime.block_on(kafka::ensure_topics(&self.kafka, &topics)) {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    self.status.failed(e.to_string());
                    warn!(error = %e, "Cannot create the topics yet; the WAL keeps the data meanwhile.");
                    if ctx.past_deadline() || ctx.pause() {
                        warn!(
                            "Drain deadline reached before Kafka was reachable; undelivered records stay in the WAL."
                        );
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        ctx.backoff.reset();

        let mut next = self.log.stats().delivered_through + 1;
        // Exactly-once: Kafka's committed position is the truth; the local watermark may lag it
        // by the batch that was committed just before a crash.
        match sink.resume_point(&mut ctx) {
            None => return Ok(()),
            Some(Some(committed_next)) if committed_next > self.log.opened_next_seq() => {
                // Kafka holds a position beyond any number this WAL had handed out: it belongs
                // to another WAL under the same node id (a replaced directory). Skipping to it
                // would drop this WAL's records unsent; send them instead.
                error!(
                    kafka = committed_next,
                    wal_next = self.log.opened_next_seq(),
                    "Kafka's committed position for this node id is ahead of this WAL: the WAL directory was replaced or lost. Ignoring the position; give each WAL its own --node-id."
                );
            }
            Some(Some(committed_next)) if committed_next > next => {
                info!(
                    local = next,
                    kafka = committed_next,
                    "Kafka already has records the WAL had not marked delivered; skipping them."
                );
                self.ack(committed_next - 1);
                next = committed_next;
            }
            Some(_) => {}
        }
        let mut durable = self.durable.clone();
        info!(next_seq = next, guarantee = ?self.kafka.guarantee, "Flusher started.");
        loop {
            let upto = *durable.borrow_and_update();
            if next > upto {
                if drain.borrow().is_some() {
                    info!(delivered_through = next - 1, "The WAL is fully delivered; flusher stopping.");
                    return Ok(());
                }
                runtime.block_on(async {
                    tokio::select! {
                        _ = durable.changed() => {}
                        _ = drain.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                });
                continue;
            }
            let mut ctx = self.ctx(&runtime, &drain, &mut backoff);
            if ctx.past_deadline() {
                warn!(
                    pending = upto + 1 - next,
                    "Drain deadline reached; undelivered records stay in the WAL for the next start."
                );
                return Ok(());
            }
            let records = match self.log.read(next, upto, self.options.batch_records, self.options.batch_bytes) {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %e, "Reading the WAL failed; retrying.");
                    ctx.pause();
                    continue;
                }
            };
            let Some(last) = records.last().map(|r| r.seq) else {
                // Nothing stored in [next, upto]: sequence numbers of a failed group commit.
                debug!(from = next, to = upto, "No WAL records in a durable range (a failed group commit, or numbers skipped after a loss); moving on.");
                next = upto + 1;
                continue;
            };
            match sink.deliver(&records, last, &mut ctx) {
                Delivery::Done => {
                    self.ack(last);
                    self.status.ok(records.len());
                    crate::telemetry::flush_delivered(records.len());
                    next = last + 1;
                }
                Delivery::Resync(committed_next) => {
                    // Only this batch can have been committed behind our back; a position past
                    // it is not ours (see the resume check above).
                    if committed_next > next && committed_next <= last + 1 {
                        self.ack(committed_next - 1);
                        next = committed_next;
                    }
                }
                Delivery::Abandoned => {
                    warn!("Drain deadline reached while delivering; undelivered records stay in the WAL.");
                    return Ok(());
                }
            }
        }
    }

    fn ctx<'a>(&'a self, runtime: &'a Handle, drain: &'a DrainSignal, backoff: &'a mut Backoff) -> Ctx<'a> {
        Ctx { runtime, drain, backoff, status: &self.status, kafka: &self.kafka, options: &self.options }
    }

    fn ack(&self, seq: u64) {
        if let Err(e) = self.log.ack_through(seq) {
            // Not fatal: Kafka has the records. Exactly-once mode skips them again after a
            // restart (Kafka's position wins); at-least-once mode sends them again.
            error!(error = %e, seq, "Recording the delivered position in the WAL failed.");
        }
    }
}
