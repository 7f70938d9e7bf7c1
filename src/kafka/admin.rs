use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use super::{KafkaSettings, KafkaStageError};

/// Creates each of `topics` that does not exist yet, with the configured partitions and
/// replication. Existing topics are left as they are.
///
/// # Errors
/// [`KafkaStageError`] if the broker cannot be reached or refuses; retryable.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[&str]) -> Result<(), KafkaStageError> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config(&[]).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, settings.topic_partitions, TopicReplication::Fixed(settings.topic_replication)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(topic) => info!(%topic, "Created topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaStageError::CreateTopic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}
