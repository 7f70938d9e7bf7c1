use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
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
    /// Kafka answered a topic creation with `code`; `reason` explains it.
    #[error("creating topic {topic} failed: {reason}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode, reason: String },
    /// The committed position belongs to another WAL under the same node id.
    #[error("{0}")]
    ForeignPosition(String),
    /// The WAL could not be read, again and again: a storage fault an operator must look at.
    #[error("the WAL cannot be read: {0}")]
    Wal(String),
    /// Another live process initialised this stage's `transactional.id`: two processes share a
    /// node id. Retrying would only fence the other one in turn.
    #[error("{0}")]
    Fenced(String),
    /// librdkafka keeps calls blocked past their timeouts (see `OutboxError::Wedged`).
    #[error("{0}")]
    Wedged(String),
    /// Kafka refused the TLS or SASL configuration at start-up (see `kafka::security`): the
    /// sentence names the cause and the settings to fix.
    #[error("{0}")]
    Refused(String),
}

impl From<super::OutboxError> for KafkaStageError {
    fn from(e: super::OutboxError) -> Self {
        match e {
            super::OutboxError::Config(reason) => KafkaStageError::Config(reason),
            fenced @ super::OutboxError::Fenced(_) => KafkaStageError::Fenced(fenced.to_string()),
            wedged @ super::OutboxError::Wedged { .. } => KafkaStageError::Wedged(wedged.to_string()),
            other => KafkaStageError::Config(format!("unexpected producer failure: {other}")),
        }
    }
}

impl KafkaStageError {
    /// Kafka answered, and no: retried like any failure, but a person must act (a replication
    /// above the brokers, a missing ACL, a policy or configuration the cluster rejects). A
    /// timeout or a controller moving during a failover mends itself and is no refusal.
    pub fn is_refusal(&self) -> bool {
        use RDKafkaErrorCode as Code;
        matches!(
            self,
            KafkaStageError::CreateTopic {
                code: Code::InvalidReplicationFactor
                    | Code::InvalidReplicaAssignment
                    | Code::InvalidPartitions
                    | Code::InvalidConfig
                    | Code::PolicyViolation
                    | Code::TopicAuthorizationFailed
                    | Code::ClusterAuthorizationFailed,
                ..
            }
        )
    }

    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            KafkaStageError::Config(_)
                | KafkaStageError::Fenced(_)
                | KafkaStageError::Wedged(_)
                | KafkaStageError::Wal(_)
                | KafkaStageError::ForeignPosition(_)
                | KafkaStageError::Refused(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_no_from_kafka_is_a_refusal() {
        let create = |code| KafkaStageError::CreateTopic { topic: "t".into(), code, reason: String::new() };
        assert!(create(RDKafkaErrorCode::InvalidReplicationFactor).is_refusal());
        assert!(create(RDKafkaErrorCode::TopicAuthorizationFailed).is_refusal());
        // A controller failover or a slow broker mends itself.
        assert!(!create(RDKafkaErrorCode::RequestTimedOut).is_refusal());
        assert!(!create(RDKafkaErrorCode::NotController).is_refusal());
        assert!(!KafkaStageError::Client(KafkaError::Canceled).is_refusal());
        // Either way the stage retries.
        assert!(create(RDKafkaErrorCode::InvalidReplicationFactor).is_retryable());
    }
}
