use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use tokio::runtime::Handle;
use tracing::info;

use super::{KafkaSettings, KafkaStageError, LogContext};
use crate::retry::{Backoff, Stop};

/// Creates each of `topics` that does not exist yet, with the configured partitions and
/// replication (the positions topic gets one partition: only its partition 0 is used).
/// Existing topics are left as they are.
///
/// # Errors
/// [`KafkaStageError`] if the broker cannot be reached or refuses; retryable.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[&str]) -> Result<(), KafkaStageError> {
    let admin: AdminClient<LogContext> = settings.client_config(&[]).create_with_context(LogContext)?;
    let max_message = (settings.max_message_bytes() + super::settings::MESSAGE_OVERHEAD_BYTES).to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let partitions = if *t == settings.positions_topic { 1 } else { settings.topic_partitions };
            NewTopic::new(t, partitions, TopicReplication::Fixed(settings.topic_replication))
                // Whatever our producers may send, the topic must accept.
                .set("max.message.bytes", &max_message)
        })
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

/// [`ensure_topics`], retried with `backoff` until it succeeds (true), `stop`'s deadline passes
/// first (false), or the error is permanent. `on_retry` reports each failure before the pause.
///
/// # Errors
/// A permanent [`KafkaStageError`] (invalid configuration).
pub fn ensure_topics_retrying(
    settings: &KafkaSettings,
    topics: &[&str],
    runtime: &Handle,
    stop: &Stop,
    backoff: &mut Backoff,
    mut on_retry: impl FnMut(&KafkaStageError),
) -> Result<bool, KafkaStageError> {
    loop {
        match runtime.block_on(ensure_topics(settings, topics)) {
            Ok(()) => {
                backoff.reset();
                return Ok(true);
            }
            Err(e) if e.is_retryable() => {
                on_retry(&e);
                if stop.expired() || backoff.pause(runtime, stop) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
