use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::producer::BaseRecord;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::kafka::{self, headers, Batch, KafkaSettings, KafkaStageError, TrackingProducer};
use crate::wal::record;
use crate::wal::{LogStore, ReadRecord};

/// Settings of the flusher.
#[derive(Debug, Clone)]
pub struct FlushOptions {
    /// Most records per Kafka batch.
    pub batch_records: usize,
    /// About this many payload bytes per batch at most.
    pub batch_bytes: usize,
    /// librdkafka `linger.ms`: how long the producer waits to fill a request.
    pub linger_ms: u64,
    /// librdkafka `message.timeout.ms`: after this a message counts as failed and is resent.
    pub message_timeout_ms: u64,
    /// Upper bound of the retry backoff while Kafka is unreachable.
    pub max_backoff: Duration,
    /// Identifies this collector in message headers.
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

    fn failed(&self, error: String) {
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

    fn producer(&self) -> Result<TrackingProducer, KafkaStageError> {
        self.kafka.tracking_producer(self.options.linger_ms, self.options.message_timeout_ms)
    }

    fn run(self, runtime: Handle, mut drain: DrainSignal) -> Result<(), KafkaStageError> {
        let mut producer = self.producer()?;
        let mut backoff = Backoff::new(self.options.max_backoff);
        let deadline = |drain: &DrainSignal| *drain.borrow();
        let past = |drain: &DrainSignal| deadline(drain).is_some_and(|d| Instant::now() >= d);

        // Topics first; without them every send fails.
        loop {
            match runtime.block_on(kafka::ensure_topics(&self.kafka, &[&self.kafka.raw_topic])) {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    self.status.failed(e.to_string());
                    warn!(error = %e, "Cannot create the raw topic yet; the WAL keeps the data meanwhile.");
                    if past(&drain) || runtime.block_on(backoff.sleep_or_drain(&mut drain)) {
                        warn!(
                            "Drain deadline reached before Kafka was reachable; undelivered records stay in the WAL."
                        );
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        backoff.reset();

        let mut durable = self.durable.clone();
        let mut next = self.log.stats().delivered_through + 1;
        info!(next_seq = next, "Flusher started.");
        loop {
            let upto = *durable.borrow_and_update();
            if next > upto {
                if deadline(&drain).is_some() {
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
            if past(&drain) {
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
                    runtime.block_on(backoff.sleep_or_drain(&mut drain));
                    continue;
                }
            };
            let Some(last) = records.last().map(|r| r.seq) else {
                // Nothing stored in [next, upto]: sequence numbers of a failed group commit.
                warn!(from = next, to = upto, "No WAL records in a durable range; skipping it.");
                next = upto + 1;
                continue;
            };
            match self.deliver(&producer, &records, &drain, &runtime, &mut backoff) {
                Delivery::Done => {}
                Delivery::Abandoned => return Ok(()),
            }
            if kafka::is_fatal(&producer) {
                warn!("The producer hit a fatal error; creating a new one.");
                producer = self.producer()?;
            }
            if let Err(e) = self.log.ack_through(last) {
                // Not fatal for delivery: the records went to Kafka; worst case they go again.
                error!(error = %e, seq = last, "Recording the delivered position in the WAL failed.");
            }
            self.status.ok(records.len());
            crate::telemetry::flush_delivered(records.len());
            next = last + 1;
        }
    }

    /// Sends `records` and resends what failed until Kafka has them all, or the drain deadline
    /// passes.
    fn deliver(
        &self,
        producer: &TrackingProducer,
        records: &[ReadRecord],
        drain: &DrainSignal,
        runtime: &Handle,
        backoff: &mut Backoff,
    ) -> Delivery {
        let mut todo: Vec<usize> = (0..records.len()).filter(|&i| records[i].frame.is_some()).collect();
        backoff.reset();
        loop {
            let mut batch = Batch::new(producer);
            let mut refused = Vec::new();
            for &i in &todo {
                let rec = &records[i];
                let frame = rec.frame.as_ref().expect("only readable records are sent");
                let entry = record::decode(frame).expect("records are checked when read");
                let seq = rec.seq.to_string();
                let received = entry.received_at_ms.to_string();
                let hdrs = kafka::make_headers(&[
                    (headers::SEQ, seq.as_bytes()),
                    (headers::RECEIVED_AT, received.as_bytes()),
                    (headers::NODE, self.options.node_id.as_bytes()),
                    (headers::CLIENT, entry.client.as_bytes()),
                ]);
                let msg = BaseRecord::<(), [u8], usize>::with_opaque_to(&self.kafka.raw_topic, i)
                    .payload(entry.payload)
                    .headers(hdrs);
                if let Err(e) = batch.send(msg) {
                    refused.push((i, e));
                }
            }
            let mut failed = batch.wait().failed;
            failed.extend(refused);
            if failed.is_empty() {
                return Delivery::Done;
            }
            let (_, first_error) = &failed[0];
            let message = format!("{} of {} records not delivered: {first_error}", failed.len(), todo.len());
            warn!(%message, "Kafka did not take a batch; retrying it.");
            self.status.failed(message);
            crate::telemetry::flush_failed();
            todo = failed.into_iter().map(|(i, _)| i).collect();
            todo.sort_unstable();
            if runtime.block_on(backoff.sleep_or_drain(&mut drain.clone()))
                && drain.borrow().is_some_and(|d| Instant::now() >= d)
            {
                warn!("Drain deadline reached while Kafka was refusing records; they stay in the WAL.");
                return Delivery::Abandoned;
            }
        }
    }
}

enum Delivery {
    Done,
    Abandoned,
}

/// Capped exponential backoff that wakes up early when a drain starts.
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Backoff { current: Self::START, max }
    }

    fn reset(&mut self) {
        self.current = Self::START;
    }

    /// Sleeps for the current backoff (doubling it for next time). Returns true if it was cut
    /// short because a drain deadline passed.
    async fn sleep_or_drain(&mut self, drain: &mut DrainSignal) -> bool {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        let until = Instant::now() + wait;
        loop {
            let deadline = *drain.borrow_and_update();
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return true;
                }
            }
            let wake = deadline.map_or(until, |d| d.min(until));
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= until {
                        return deadline.is_some_and(|d| Instant::now() >= d);
                    }
                }
                changed = drain.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(until.into()).await;
                        return false;
                    }
                }
            }
        }
    }
}
