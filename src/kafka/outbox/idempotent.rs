//! The at-least-once outbox: an idempotent `acks=all` producer, no transactions.
//!
//! Each call waits for every delivery report and names the messages Kafka did not take, so the
//! caller resends exactly those; an idempotent producer whose state broke (a fatal error) is
//! replaced before the next call. Nothing is ever uncertain here: a message is confirmed or
//! resent (at-least-once allows the repeat).

use rdkafka::producer::Producer;
use tracing::warn;

use super::{enqueue, Delivered, OutBatch, Outbox, OutboxError, ProducerOptions};
use crate::kafka::batch::{Batch, TrackingContext, TrackingProducer};
use crate::kafka::KafkaSettings;

pub struct IdempotentOutbox {
    settings: KafkaSettings,
    options: ProducerOptions,
    /// Created lazily, so an unreachable broker never stops a stage from starting.
    producer: Option<TrackingProducer>,
}

impl IdempotentOutbox {
    pub fn new(settings: KafkaSettings, options: &ProducerOptions) -> Self {
        IdempotentOutbox { settings, options: options.clone(), producer: None }
    }
}

impl Outbox for IdempotentOutbox {
    fn connect(&mut self) -> Result<bool, OutboxError> {
        if self.producer.is_some() {
            return Ok(false);
        }
        let linger = self.options.linger_ms.to_string();
        let timeout = self.options.message_timeout_ms.to_string();
        let producer = self
            .settings
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", &linger),
                ("message.timeout.ms", &timeout),
            ])
            .create_with_context(TrackingContext::default())
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
