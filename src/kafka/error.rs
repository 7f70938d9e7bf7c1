use rdkafka::error::KafkaError;
use thiserror::Error;

/// Errors talking to Kafka.
///
/// Policy: the flusher and the transform retry [`KafkaStageError::is_retryable`] errors forever
/// with backoff (the WAL or the source topic holds the data meanwhile); anything else stops the
/// stage with a clear message because retrying cannot fix it (bad configuration, say).
#[derive(Debug, Error)]
pub enum KafkaStageError {
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    #[error("Kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error("creating topic {topic} failed: {reason}")]
    CreateTopic { topic: String, reason: String },
}

impl KafkaStageError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, KafkaStageError::Config(_))
    }
}
