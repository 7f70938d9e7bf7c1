//! Sending a batch through a `BaseProducer` and learning the fate of every message.
//!
//! `BaseProducer` with a `usize` delivery opaque is much cheaper per message than awaiting
//! `FutureProducer` futures; the opaque is the message's index in the caller's batch, so a
//! caller can resend exactly the messages that failed.
//!
//! Delivery reports are served in slices of [`POLL_SLICE`]: rust-rdkafka 0.39's
//! `BaseProducer::poll` keeps polling until its timeout even after it served an event, and its
//! `flush` (which `commit_transaction` calls first) polls in 100 ms slices; every batch and
//! every transaction took at least 100 ms however quickly Kafka answered (15-30 ms for a small
//! transaction here). That capped `--ack kafka` at one batch per 100 ms and was most of the
//! flusher's time per batch (loadtest/PROFILE.md, "Fourth step"). A slice waits on librdkafka's
//! queue, so this does not spin.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::KafkaLink;

/// Producer context that counts outstanding deliveries and records failures.
#[derive(Default)]
pub struct TrackingContext {
    /// Behind a mutex because librdkafka calls `delivery` from the thread that polls, which is
    /// also the thread that sends; contention is nil.
    state: Mutex<Tracked>,
    /// Where the producer's statistics go (its stage's connection state), if anywhere.
    link: Option<Arc<KafkaLink>>,
}

impl TrackingContext {
    /// A context whose producer reports its connection state to `link` (the producer sets
    /// `statistics.interval.ms` to the link's interval: [`statistics_interval_ms`]).
    pub fn reporting_to(link: Option<Arc<KafkaLink>>) -> Self {
        TrackingContext { state: Mutex::default(), link }
    }

    fn report(&self, statistics: rdkafka::Statistics) {
        if let Some(link) = &self.link {
            link.reported(&statistics);
        }
    }
}

/// The `statistics.interval.ms` a producer reporting to `link` sets (none without a link).
pub fn statistics_interval_ms(link: Option<&Arc<KafkaLink>>) -> Option<String> {
    link.map(|link| link.interval().as_millis().to_string())
}

#[derive(Default)]
struct Tracked {
    outstanding: usize,
    failed: Vec<(usize, KafkaError)>,
}

pub type TrackingProducer = BaseProducer<TrackingContext>;

super::context::logs_to_tracing!(TrackingContext, stats: TrackingContext::report);

impl ProducerContext for TrackingContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let mut state = self.state.lock().expect("tracking lock poisoned");
        state.outstanding = state.outstanding.saturating_sub(1);
        if let Err((e, _)) = result {
            state.failed.push((index, e.clone()));
        }
    }
}

/// What happened to a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Indices (the delivery opaques) of the messages Kafka did not take, with the reason.
    pub failed: Vec<(usize, KafkaError)>,
}

/// One batch in flight on a producer. Only one batch per producer at a time.
pub struct Batch<'p> {
    producer: &'p TrackingProducer,
}

impl<'p> Batch<'p> {
    pub fn new(producer: &'p TrackingProducer) -> Self {
        let mut state = producer.context().state.lock().expect("tracking lock poisoned");
        state.outstanding = 0;
        state.failed.clear();
        drop(state);
        Batch { producer }
    }

    /// Enqueues one message; waits (polling delivery reports) while librdkafka's queue is full.
    ///
    /// # Errors
    /// The [`KafkaError`] librdkafka refused the message with (too large, unknown topic…); the
    /// message is then not outstanding.
    pub fn send<K, P>(&mut self, mut record: BaseRecord<'_, K, P, usize>) -> Result<(), KafkaError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            // Count before sending: the delivery callback can only run inside `poll`, on this
            // thread, so there is no race.
            self.producer.context().state.lock().expect("tracking lock poisoned").outstanding += 1;
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, returned)) => {
                    self.producer.context().state.lock().expect("tracking lock poisoned").outstanding -= 1;
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                        self.producer.poll(POLL_SLICE);
                        record = returned;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The failures reported so far (by delivery reports already served), without waiting.
    pub fn failures(&self) -> Vec<(usize, KafkaError)> {
        self.producer.context().state.lock().expect("tracking lock poisoned").failed.clone()
    }

    /// Polls until every enqueued message was confirmed or failed, for at most `timeout`;
    /// true if none is outstanding any more. Before a commit: rust-rdkafka's own flush then
    /// finds nothing outstanding and returns at once (see the module notes).
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.producer.context().state.lock().expect("tracking lock poisoned").outstanding == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.producer.poll(POLL_SLICE);
        }
    }

    /// Polls until every enqueued message was confirmed or failed. librdkafka fails a message
    /// after `message.timeout.ms` at the latest, so this returns in bounded time.
    pub fn wait(self) -> BatchOutcome {
        while !self.settle(Duration::from_secs(3600)) {}
        let mut state = self.producer.context().state.lock().expect("tracking lock poisoned");
        BatchOutcome { failed: std::mem::take(&mut state.failed) }
    }
}

/// How long one poll for delivery reports waits: the latency it may add to a batch.
const POLL_SLICE: Duration = Duration::from_millis(1);
