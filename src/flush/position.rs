//! Where the exactly-once flusher's WAL position lives in Kafka.
//!
//! The position is stored the way Kafka stores consumer positions: as the committed offset of
//! the consumer group `collector-flush-<node>` on partition 0 of the positions topic, written by
//! the batch's own transaction (`send_offsets_to_transaction`). So it becomes visible exactly
//! when the batch does, and reading it back after a restart is one `OffsetFetch`, whatever the
//! backlog. The offset is the next sequence number to send; the offset's metadata is the
//! identity of the WAL that committed it, so a position committed by another WAL under the same
//! node id is recognised instead of trusted.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{KafkaSettings, KafkaStageError, LogContext, Offsets};
use crate::node::NodeId;

/// A position as Kafka has it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next sequence number to send.
    pub next: u64,
    /// The identity of the WAL that committed it; `None` for positions committed before WALs
    /// had one.
    pub wal_id: Option<String>,
}

/// The flusher's committed position: a seam so the flusher loop can be tested without Kafka.
pub trait PositionStore: Send {
    /// The position as Kafka has it committed; `None` if none ever was.
    ///
    /// # Errors
    /// The [`KafkaError`] of the offset fetch (Kafka unreachable, say); retryable.
    fn committed(&self) -> Result<Option<Committed>, KafkaError>;

    /// [`PositionStore::committed`], asked quickly before this flusher's producer exists: it
    /// may fail where `committed` would wait (a transaction of a crashed predecessor still
    /// holds the position), and then tells nothing.
    ///
    /// # Errors
    /// As [`PositionStore::committed`], or a timeout.
    fn peek(&self) -> Result<Option<Committed>, KafkaError>;

    /// The offsets that commit `next` as this WAL's position, for a batch's transaction.
    fn offsets(&self, next: u64) -> Offsets;
}

/// The position as offsets of a consumer group in Kafka.
pub struct KafkaPositions {
    /// Never subscribes; exists for its group id (the position's owner) and to read the
    /// committed position back.
    consumer: BaseConsumer<LogContext>,
    topic: String,
    timeout: Duration,
    /// Committed as the offset's metadata.
    wal_id: String,
}

impl KafkaPositions {
    /// # Errors
    /// [`KafkaStageError::Config`] when librdkafka rejects the configuration.
    pub fn new(kafka: &KafkaSettings, node: &NodeId, wal_id: &str, timeout: Duration) -> Result<Self, KafkaStageError> {
        let consumer = kafka
            .client_config(&[
                ("group.id", &node.flush_transactional_id()),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
            ])
            .create_with_context(LogContext)
            .map_err(|e| KafkaStageError::Config(e.to_string()))?;
        Ok(KafkaPositions { consumer, topic: kafka.positions_topic.clone(), timeout, wal_id: wal_id.to_string() })
    }
}

/// How long [`PositionStore::peek`] waits.
const PEEK_TIMEOUT: Duration = Duration::from_secs(2);

impl KafkaPositions {
    fn committed_within(&self, timeout: Duration) -> Result<Option<Committed>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        let Some(elem) = committed.find_partition(&self.topic, 0) else { return Ok(None) };
        Ok(match elem.offset() {
            Offset::Offset(n) if n > 0 => {
                Some(Committed { next: n as u64, wal_id: Some(elem.metadata().to_string()).filter(|m| !m.is_empty()) })
            }
            _ => None,
        })
    }
}

impl PositionStore for KafkaPositions {
    fn committed(&self) -> Result<Option<Committed>, KafkaError> {
        self.committed_within(self.timeout)
    }

    fn peek(&self) -> Result<Option<Committed>, KafkaError> {
        self.committed_within(PEEK_TIMEOUT.min(self.timeout))
    }

    fn offsets(&self, next: u64) -> Offsets {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, 0, Offset::Offset(next as i64))
            .expect("an offset can be set on a partition just added");
        if let Some(mut elem) = list.find_partition(&self.topic, 0) {
            elem.set_metadata(self.wal_id.as_str());
        }
        Offsets { list, group: self.consumer.group_metadata().map(std::sync::Arc::new) }
    }
}
