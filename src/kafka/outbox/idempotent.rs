//! The at-least-once outbox: an idempotent `acks=all` producer, no transactions.
//!
//! Each call waits for every delivery report and names the messages Kafka did not take, so the
//! caller resends exactly those; an idempotent producer whose state broke (a fatal error) is
//! replaced before the next call. Nothing is ever uncertain here: a message is confirmed or
//! resent (at-least-once allows the repeat).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tracing::warn;

use super::{enqueue, Delivered, OutBatch, Outbox, OutboxError, ProducerOptions};
use crate::kafka::batch::{self, Batch, TrackingContext, TrackingProducer};
use crate::kafka::{KafkaLink, KafkaSettings};

pub struct IdempotentOutbox {
    settings: KafkaSettings,
    options: ProducerOptions,
    /// Created lazily, so an unreachable broker never stops a stage from starting.
    producer: Option<TrackingProducer>,
    /// Where each producer reports its connection state ([`Outbox::reporting_to`]).
    link: Option<Arc<KafkaLink>>,
}

impl IdempotentOutbox {
    pub fn new(settings: KafkaSettings, options: &ProducerOptions) -> Self {
        IdempotentOutbox { settings, options: options.clone(), producer: None, link: None }
    }
}

impl Outbox for IdempotentOutbox {
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
        let linger = self.options.linger_ms.to_string();
        let timeout = self.options.message_timeout_ms.to_string();
        let mut defaults = vec![
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", &linger),
            ("message.timeout.ms", &timeout),
        ];
        let statistics = batch::statistics_interval_ms(self.link.as_ref());
        defaults.extend(statistics.as_deref().map(|ms| ("statistics.interval.ms", ms)));
        let producer = self
            .settings
            .client_config(&defaults)
            .create_with_context(TrackingContext::reporting_to(self.link.clone()))
            .map_err(|e| OutboxError::Config(e.to_string()))?;
        self.producer = Some(producer);
        Ok(true)
    }

    /// The batch's offsets are the caller's to commit once this returns `Ok`.
    fn deliver(&mut self, batch: OutBatch<'_>) -> Result<Delivered, OutboxError> {
        self.connect()?;
        let producer = self.producer.as_ref().expect("connected above");
        let mut sending = Batch::new(producer);
        let refused = enqueue(&mut sending, batch);
        let mut failed = sending.wait().failed;
        failed.extend(refused);
        if producer.client().fatal_error().is_some() {
            // An idempotent producer whose sequence state broke cannot send again; the next call
            // makes a new one. What it did deliver stays delivered, the rest is resent.
            warn!("The producer hit a fatal error; the next batch gets a new one.");
            self.producer = None;
        }
        if failed.is_empty() {
            Ok(Delivered::MessagesOnly)
        } else {
            Err(OutboxError::Undelivered { failed })
        }
    }
}
