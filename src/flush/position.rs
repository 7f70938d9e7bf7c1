//! Where the exactly-once flusher's WAL position lives in Kafka.
//!
//! The position is stored the way Kafka stores consumer positions: as the committed offset of
//! the consumer group `collector-flush-<node>` on partition 0 of the positions topic, written by
//! the batch's own transaction (`send_offsets_to_transaction`). So it becomes visible exactly
//! when the batch does, and reading it back after a restart is one `OffsetFetch`, whatever the
//! backlog. The offset is the next sequence number to send.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{KafkaSettings, KafkaStageError, LogContext, Offsets};
use crate::node::NodeId;

/// The flusher's committed position: a seam so the flusher loop can be tested without Kafka.
pub trait PositionStore: Send {
    /// The next sequence number to send as Kafka has it committed; `None` if none ever was.
    ///
    /// # Errors
    /// The [`KafkaError`] of the offset fetch (Kafka unreachable, say); retryable.
    fn committed(&self) -> Result<Option<u64>, KafkaError>;

    /// The offsets that commit `next` as the position, for a batch's transaction.
    fn offsets(&self, next: u64) -> Offsets;
}

/// The position as offsets of a consumer group in Kafka.
pub struct KafkaPositions {
    /// Never subscribes; exists for its group id (the position's owner) and to read the
    /// committed position back.
    consumer: BaseConsumer<LogContext>,
    topic: String,
    timeout: Duration,
}

impl KafkaPositions {
    /// # Errors
    /// [`KafkaStageError::Config`] when librdkafka rejects the configuration.
    pub fn new(kafka: &KafkaSettings, node: &NodeId, timeout: Duration) -> Result<Self, KafkaStageError> {
        let consumer = kafka
            .client_config(&[
                ("group.id", &node.flush_transactional_id()),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
            ])
            .create_with_context(LogContext)
            .map_err(|e| KafkaStageError::Config(e.to_string()))?;
        Ok(KafkaPositions { consumer, topic: kafka.positions_topic.clone(), timeout })
    }
}

impl PositionStore for KafkaPositions {
    fn committed(&self) -> Result<Option<u64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let committed = self.consumer.committed_offsets(tpl, self.timeout)?;
        Ok(match committed.find_partition(&self.topic, 0).map(|p| p.offset()) {
            Some(Offset::Offset(n)) if n > 0 => Some(n as u64),
            _ => None,
        })
    }

    fn offsets(&self, next: u64) -> Offsets {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, 0, Offset::Offset(next as i64))
            .expect("an offset can be set on a partition just added");
        Offsets { list, group: self.consumer.group_metadata() }
    }
}
