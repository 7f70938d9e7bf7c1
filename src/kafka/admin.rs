//! Creating the collector's topics, and saying where the cluster does not match the topic
//! settings.
//!
//! Before creating anything, [`ensure_topics`] reads the cluster's metadata: its live brokers,
//! and the topics that exist. It creates only the missing ones, with `--topic-partitions`,
//! `--topic-replication` and, if given, `--topic-min-insync-replicas`. It never alters an
//! existing topic; it warns instead when one has fewer replicas than `--topic-replication`, or
//! another `min.insync.replicas` than the flag, and when `--topic-replication` exceeds the
//! brokers the cluster reports (Kafka then refuses to create the topics: the callers retry,
//! since a cluster's brokers may still be starting). Each warning is logged once per process.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use super::{KafkaSettings, KafkaStageError, LogContext};
use crate::retry::{Backoff, Stop};

/// How long one admin request (metadata, create, describe) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The topic property `--topic-min-insync-replicas` sets.
const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// Creates each of `topics` that does not exist yet, with the configured partitions,
/// replication and `min.insync.replicas` (the positions topic gets one partition: only its
/// partition 0 is used). Existing topics are left as they are; where they, or the cluster, do
/// not match the settings, a warning says so (once per process).
///
/// # Errors
/// [`KafkaStageError`] if the broker cannot be reached or refuses; retryable. A replication
/// factor above the brokers the cluster reports is such a refusal, and its message says so.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[&str]) -> Result<(), KafkaStageError> {
    let admin: Arc<AdminClient<LogContext>> = Arc::new(settings.client_config(&[]).create_with_context(LogContext)?);
    let cluster = Cluster::read(&admin).await?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let mut mismatches = cluster.mismatches(settings, topics);
    if let Some(wanted) = settings.topic_min_insync_replicas {
        let existing: Vec<&str> = topics.iter().copied().filter(|t| cluster.replicas.contains_key(*t)).collect();
        mismatches.extend(min_insync_mismatches(&admin, &options, &existing, wanted).await);
    }
    for mismatch in mismatches {
        mismatch.warn_once();
    }

    let missing: Vec<&str> = topics.iter().copied().filter(|t| !cluster.replicas.contains_key(*t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let configs = topic_configs(settings);
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            let partitions = if *t == settings.positions_topic { 1 } else { settings.topic_partitions };
            let mut topic = NewTopic::new(t, partitions, TopicReplication::Fixed(settings.topic_replication));
            for (key, value) in &configs {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(topic) => info!(%topic, "Created topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code @ RDKafkaErrorCode::InvalidReplicationFactor))
                if settings.topic_replication as usize > cluster.brokers =>
            {
                let reason = format!(
                    "{code}: --topic-replication {} exceeds the {} broker(s) the cluster reports; \
                     retrying until enough brokers are up",
                    settings.topic_replication, cluster.brokers
                );
                return Err(KafkaStageError::CreateTopic { topic, code, reason });
            }
            Err((topic, code)) => return Err(KafkaStageError::CreateTopic { topic, code, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// The properties of a topic the collector creates.
fn topic_configs(settings: &KafkaSettings) -> Vec<(&'static str, String)> {
    // Whatever our producers may send, the topic must accept.
    let max_message = settings.max_message_bytes() + super::settings::MESSAGE_OVERHEAD_BYTES;
    let mut configs = vec![("max.message.bytes", max_message.to_string())];
    if let Some(n) = settings.topic_min_insync_replicas {
        configs.push((MIN_INSYNC_REPLICAS, n.to_string()));
    }
    configs
}

/// What the metadata says of the cluster.
#[derive(Debug, Default)]
struct Cluster {
    /// Brokers the cluster reports: the live ones.
    brokers: usize,
    /// Each existing topic and its fewest replicas of any partition (`None` if the metadata
    /// has no partitions for it, as while it is being created).
    replicas: HashMap<String, Option<usize>>,
}

impl Cluster {
    /// Reads the metadata of every topic: asking for one would let the broker auto-create it
    /// (librdkafka's admin client asks as a producer does) with the broker's defaults.
    async fn read(admin: &Arc<AdminClient<LogContext>>) -> Result<Cluster, KafkaStageError> {
        let admin = Arc::clone(admin);
        // A blocking call: off the runtime's threads.
        let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, ADMIN_TIMEOUT)).await;
        match metadata {
            Ok(metadata) => Ok(Cluster::from(&metadata?)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(KafkaStageError::Client(KafkaError::Canceled)),
        }
    }

    /// Where the cluster does not fit `settings` for `topics`.
    fn mismatches(&self, settings: &KafkaSettings, topics: &[&str]) -> Vec<Mismatch> {
        let replication = settings.topic_replication;
        let mut mismatches = Vec::new();
        let missing: Vec<String> =
            topics.iter().filter(|t| !self.replicas.contains_key(**t)).map(|t| t.to_string()).collect();
        if !missing.is_empty() && replication as usize > self.brokers {
            mismatches.push(Mismatch::TooFewBrokers { replication, brokers: self.brokers, topics: missing });
        }
        for topic in topics {
            if let Some(Some(replicas)) = self.replicas.get(*topic) {
                if *replicas < replication as usize {
                    mismatches.push(Mismatch::UnderReplicated {
                        topic: topic.to_string(),
                        replicas: *replicas,
                        replication,
                    });
                }
            }
        }
        mismatches
    }
}

impl From<&Metadata> for Cluster {
    fn from(metadata: &Metadata) -> Self {
        let replicas = metadata
            .topics()
            .iter()
            .map(|t| (t.name().to_string(), t.partitions().iter().map(|p| p.replicas().len()).min()))
            .collect();
        Cluster { brokers: metadata.brokers().len(), replicas }
    }
}

/// The existing `topics` whose `min.insync.replicas` is not `wanted`. Best effort: a cluster
/// that does not let us describe topic configurations gets no warning.
async fn min_insync_mismatches(
    admin: &AdminClient<LogContext>,
    options: &AdminOptions,
    topics: &[&str],
    wanted: i32,
) -> Vec<Mismatch> {
    if topics.is_empty() {
        return Vec::new();
    }
    let resources: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let described = match admin.describe_configs(&resources, options).await {
        Ok(described) => described,
        Err(e) => {
            debug!(error = %e, "Cannot describe the topics' configurations; not checking their min.insync.replicas.");
            return Vec::new();
        }
    };
    let mut mismatches = Vec::new();
    // librdkafka returns the results in the order of the request (rdkafka_admin.c parses the
    // response into the request's resource order), so they pair with `topics` as they come.
    for (topic, result) in topics.iter().zip(described) {
        let actual = match &result {
            Ok(resource) => resource.get(MIN_INSYNC_REPLICAS).and_then(|e| e.value.clone()),
            Err(code) => {
                debug!(%topic, %code, "Cannot describe the topic's configuration.");
                continue;
            }
        };
        if let Some(actual) = actual.filter(|a| *a != wanted.to_string()) {
            mismatches.push(Mismatch::MinInsync { topic: topic.to_string(), actual, wanted });
        }
    }
    mismatches
}

/// Where the cluster or an existing topic does not match the topic settings. The collector
/// carries on either way: it never alters an existing topic, and Kafka's refusal to create a
/// topic is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mismatch {
    /// `--topic-replication` exceeds the brokers the cluster reports: Kafka refuses to create
    /// `topics` (INVALID_REPLICATION_FACTOR) until enough are up.
    TooFewBrokers { replication: i32, brokers: usize, topics: Vec<String> },
    /// An existing topic has fewer replicas than `--topic-replication`.
    UnderReplicated { topic: String, replicas: usize, replication: i32 },
    /// An existing topic's `min.insync.replicas` is not `--topic-min-insync-replicas`.
    MinInsync { topic: String, actual: String, wanted: i32 },
}

/// The mismatches already logged by this process, as `kind topic` keys: the flusher and the
/// transform worker check the same topics, and both again on every retry, but each is worth
/// one line per start.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

impl Mismatch {
    /// Logs the mismatch unless this process did already (for a topic of
    /// [`Mismatch::TooFewBrokers`]: the topics not named before).
    fn warn_once(self) -> Option<Mismatch> {
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match self {
            Mismatch::TooFewBrokers { replication, brokers, topics } => {
                let topics: Vec<String> =
                    topics.into_iter().filter(|t| warned.insert(format!("brokers {t}"))).collect();
                (!topics.is_empty()).then_some(Mismatch::TooFewBrokers { replication, brokers, topics })
            }
            Mismatch::UnderReplicated { ref topic, .. } => warned.insert(format!("replicas {topic}")).then_some(self),
            Mismatch::MinInsync { ref topic, .. } => warned.insert(format!("min-insync {topic}")).then_some(self),
        };
        drop(warned);
        if let Some(mismatch) = &fresh {
            warn!("{mismatch}");
        }
        fresh
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::TooFewBrokers { replication, brokers, topics } => write!(
                f,
                "--topic-replication {replication} exceeds the {brokers} broker(s) the cluster reports; \
                 Kafka refuses to create {} until enough brokers are up (the collector retries).",
                topics.join(", ")
            ),
            Mismatch::UnderReplicated { topic, replicas, replication } => write!(
                f,
                "Topic {topic} exists with {replicas} replica(s), fewer than --topic-replication {replication}; \
                 the collector never alters existing topics (kafka-reassign-partitions adds replicas)."
            ),
            Mismatch::MinInsync { topic, actual, wanted } => write!(
                f,
                "Topic {topic} exists with min.insync.replicas={actual}, not --topic-min-insync-replicas \
                 {wanted}; the collector never alters existing topics (kafka-configs --alter changes it)."
            ),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(brokers: usize, topics: &[(&str, Option<usize>)]) -> Cluster {
        Cluster { brokers, replicas: topics.iter().map(|(t, r)| (t.to_string(), *r)).collect() }
    }

    #[test]
    fn without_the_flag_created_topics_get_no_min_insync_replicas() {
        let mut settings = KafkaSettings::for_tests("127.0.0.1:9092");
        let keys = |s: &KafkaSettings| topic_configs(s).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(&settings), ["max.message.bytes"], "the broker's default applies");
        settings.topic_replication = 3;
        settings.topic_min_insync_replicas = Some(2);
        assert!(topic_configs(&settings).contains(&(MIN_INSYNC_REPLICAS, "2".to_string())));
    }

    #[test]
    fn a_replication_above_the_brokers_is_reported_for_the_missing_topics_only() {
        let mut settings = KafkaSettings::for_tests("127.0.0.1:9092");
        settings.topic_replication = 3;
        let found = cluster(1, &[("raw", Some(3))]).mismatches(&settings, &["raw", "positions"]);
        assert_eq!(found, [Mismatch::TooFewBrokers { replication: 3, brokers: 1, topics: vec!["positions".into()] }]);
        assert_eq!(
            found[0].to_string(),
            "--topic-replication 3 exceeds the 1 broker(s) the cluster reports; Kafka refuses to create \
             positions until enough brokers are up (the collector retries)."
        );
        assert!(cluster(3, &[]).mismatches(&settings, &["raw"]).is_empty(), "three brokers suffice");
        assert!(cluster(1, &[("raw", Some(3))]).mismatches(&settings, &["raw"]).is_empty(), "nothing to create");
    }

    #[test]
    fn an_existing_topic_with_fewer_replicas_than_the_flag_is_reported() {
        let mut settings = KafkaSettings::for_tests("127.0.0.1:9092");
        settings.topic_replication = 3;
        let found = cluster(3, &[("raw", Some(1)), ("rows", Some(3)), ("dlq", None)])
            .mismatches(&settings, &["raw", "rows", "dlq"]);
        assert_eq!(found, [Mismatch::UnderReplicated { topic: "raw".into(), replicas: 1, replication: 3 }]);
    }

    #[test]
    fn each_mismatch_is_logged_once_per_process() {
        // Topic names of this test alone: the record of warnings is the process's.
        let too_few = |topics: &[&str]| Mismatch::TooFewBrokers {
            replication: 2,
            brokers: 1,
            topics: topics.iter().map(|t| t.to_string()).collect(),
        };
        assert_eq!(too_few(&["once-a"]).warn_once(), Some(too_few(&["once-a"])));
        assert_eq!(too_few(&["once-a"]).warn_once(), None, "a retry logs nothing");
        assert_eq!(too_few(&["once-a", "once-b"]).warn_once(), Some(too_few(&["once-b"])), "another stage's topic");
        let under = Mismatch::UnderReplicated { topic: "once-a".into(), replicas: 1, replication: 2 };
        assert_eq!(under.clone().warn_once(), Some(under.clone()), "another condition");
        assert_eq!(under.warn_once(), None);
    }
}
