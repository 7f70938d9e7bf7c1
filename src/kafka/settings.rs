use std::fmt;

use rdkafka::ClientConfig;

use super::secrets::{client_error, is_secret, RedactedProperties};
use super::KafkaStageError;

/// What the pipeline promises about duplicates in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Guarantee {
    /// Kafka transactions: every record and row exactly once for `read_committed` readers.
    ExactlyOnce,
    /// Idempotent producers without transactions: cheaper, but a crash can repeat a batch.
    AtLeastOnce,
}

/// Connection and topic settings shared by every Kafka client of the collector.
///
/// `Debug` redacts secret property values ([`super::secrets::is_secret`]).
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Extra librdkafka properties (`key=value`), applied last so they override our defaults:
    /// TLS and SASL (`security.protocol`, `sasl.*`, `ssl.*`) and tuning. Every client the
    /// collector creates is built by [`KafkaSettings::client_config`], so all of them get these.
    pub properties: Vec<(String, String)>,
    pub raw_topic: String,
    pub transformed_topic: String,
    pub dead_letter_topic: String,
    /// Exactly-once mode: where the flusher commits its WAL position (offsets of a consumer
    /// group on partition 0; the topic itself stays empty).
    pub positions_topic: String,
    pub guarantee: Guarantee,
    /// Partitions for topics the collector creates.
    pub topic_partitions: i32,
    /// Replication factor for topics the collector creates.
    pub topic_replication: i32,
    /// `min.insync.replicas` for topics the collector creates; `None` leaves the broker's
    /// default. At most `topic_replication`, or no write could ever be confirmed.
    pub topic_min_insync_replicas: Option<i32>,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room for headers, key and record framing on top of a payload.
pub const MESSAGE_OVERHEAD_BYTES: usize = 16 * 1024;

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("properties", &RedactedProperties(&self.properties))
            .field("raw_topic", &self.raw_topic)
            .field("transformed_topic", &self.transformed_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("positions_topic", &self.positions_topic)
            .field("guarantee", &self.guarantee)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication", &self.topic_replication)
            .field("topic_min_insync_replicas", &self.topic_min_insync_replicas)
            .finish()
    }
}

impl KafkaSettings {
    /// The value the user gave librdkafka property `key` (the last one wins, as in librdkafka).
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The largest message our producers may send: librdkafka's `message.max.bytes`, as
    /// passed with `-X` or its default. Ingest limits are validated against it so that an
    /// accepted request always fits into a Kafka message.
    pub fn max_message_bytes(&self) -> usize {
        self.property("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// A client configuration with `bootstrap.servers`, our `defaults`, then the user's
    /// properties on top.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// Parses `key=value` pairs as given on the command line.
    ///
    /// The command line and `COLLECTOR_KAFKA_PROPERTIES` split their values at commas, but
    /// some values contain commas (`debug=broker,security`, `sasl.oauthbearer.extensions`, a
    /// password): an entry that does not start with a property name and `=` continues the
    /// entry before it, comma included.
    ///
    /// # Errors
    /// [`KafkaStageError::Config`] for a first entry without `=` or whose key is not a property
    /// name; a value is never quoted (it could be a secret).
    pub fn parse_properties(raw: &[String]) -> Result<Vec<(String, String)>, KafkaStageError> {
        let mut properties: Vec<(String, String)> = Vec::new();
        for entry in raw {
            match (entry.split_once('='), properties.last_mut()) {
                (Some((k, v)), _) if is_property_name(k.trim()) => {
                    properties.push((k.trim().to_string(), v.to_string()))
                }
                (_, Some((_, value))) => {
                    value.push(',');
                    value.push_str(entry);
                }
                (Some((k, _)), None) => {
                    return Err(KafkaStageError::Config(format!(
                        "{k:?} is not a librdkafka property name (lowercase words joined by dots, e.g. sasl.mechanism)"
                    )));
                }
                (None, None) => {
                    let shown = if is_secret(entry) { "…".into() } else { format!("{entry:?}") };
                    return Err(KafkaStageError::Config(format!(
                        "Kafka property {shown} is not of the form key=value"
                    )));
                }
            }
        }
        Ok(properties)
    }

    /// Checks what can be checked without a broker.
    ///
    /// # Errors
    /// [`KafkaStageError::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<(), KafkaStageError> {
        if self.brokers.trim().is_empty() {
            return Err(KafkaStageError::Config("--brokers must not be empty".into()));
        }
        for (name, topic) in [
            ("--raw-topic", &self.raw_topic),
            ("--transformed-topic", &self.transformed_topic),
            ("--dead-letter-topic", &self.dead_letter_topic),
            ("--positions-topic", &self.positions_topic),
        ] {
            if topic.is_empty()
                || topic.len() > 249
                || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(KafkaStageError::Config(format!("{name} {topic:?} is not a valid Kafka topic name")));
            }
        }
        // Each topic has one job; two flags naming one topic would mix raw requests, rows, dead
        // letters and positions (and Kafka refuses a request naming one topic twice).
        let named = [
            ("--raw-topic", &self.raw_topic),
            ("--transformed-topic", &self.transformed_topic),
            ("--dead-letter-topic", &self.dead_letter_topic),
            ("--positions-topic", &self.positions_topic),
        ];
        for (i, (a, topic)) in named.iter().enumerate() {
            if let Some((b, _)) = named[i + 1..].iter().find(|(_, other)| other == topic) {
                return Err(KafkaStageError::Config(format!("{a} and {b} must differ (both are {topic:?})")));
            }
        }
        if self.topic_partitions < 1 || self.topic_replication < 1 {
            return Err(KafkaStageError::Config(
                "--topic-partitions and --topic-replication must be at least 1".into(),
            ));
        }
        match self.topic_min_insync_replicas {
            Some(n) if n < 1 => {
                return Err(KafkaStageError::Config(format!(
                    "--topic-min-insync-replicas {n} must be at least 1 (leave it out for the broker's default)"
                )));
            }
            Some(n) if n > self.topic_replication => {
                return Err(KafkaStageError::Config(format!(
                    "--topic-min-insync-replicas {n} exceeds --topic-replication {}: Kafka would refuse every \
                     write to the topics the collector creates, since a write needs that many in-sync replicas",
                    self.topic_replication
                )));
            }
            _ => {}
        }
        // Let librdkafka judge the properties themselves: building a client validates them (and
        // reads the TLS files: a missing ssl.ca.location fails here). Its message quotes the
        // value it could not set: `client_error` keeps secrets out.
        self.client_config(&[])
            .create::<rdkafka::producer::BaseProducer>()
            .map_err(|e| KafkaStageError::Config(format!("-X (librdkafka properties): {}", client_error(&e))))?;
        Ok(())
    }
}

/// librdkafka property names: lowercase words joined by dots (`linger.ms`, `acks`).
fn is_property_name(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
}

#[cfg(test)]
impl KafkaSettings {
    /// Exactly-once settings for unit tests: topics `raw`, `rows`, `dlq`, `positions`.
    pub fn for_tests(brokers: &str) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            properties: Vec::new(),
            raw_topic: "raw".into(),
            transformed_topic: "rows".into(),
            dead_letter_topic: "dlq".into(),
            positions_topic: "positions".into(),
            guarantee: Guarantee::ExactlyOnce,
            topic_partitions: 1,
            topic_replication: 1,
            topic_min_insync_replicas: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_and_reject_garbage() {
        let ok = KafkaSettings::parse_properties(&["linger.ms=50".into(), "sasl.password=a=b".into()]).unwrap();
        assert_eq!(ok, vec![("linger.ms".into(), "50".into()), ("sasl.password".into(), "a=b".into())]);
        assert!(KafkaSettings::parse_properties(&["nonsense".into()]).is_err());
        assert!(KafkaSettings::parse_properties(&["=1".into()]).is_err());
    }

    #[test]
    fn values_split_at_commas_are_joined_again() {
        // As clap hands over `-X debug=broker,security -X sasl.password=p,Q=r,s -X linger.ms=5`.
        let split = ["debug=broker", "security", "sasl.password=p", "Q=r", "s", "linger.ms=5"].map(String::from);
        let parsed = KafkaSettings::parse_properties(&split).unwrap();
        assert_eq!(
            parsed,
            [("debug", "broker,security"), ("sasl.password", "p,Q=r,s"), ("linger.ms", "5")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let extensions =
            ["sasl.oauthbearer.extensions=logicalCluster=lkc-1", "identityPoolId=pool-2"].map(String::from);
        assert_eq!(
            KafkaSettings::parse_properties(&extensions).unwrap()[0].1,
            "logicalCluster=lkc-1,identityPoolId=pool-2"
        );
    }

    #[test]
    fn min_insync_replicas_must_be_between_one_and_the_replication() {
        let mut settings = KafkaSettings::for_tests("127.0.0.1:9092");
        assert!(settings.validate().is_ok(), "absent: the broker's default");
        settings.topic_replication = 3;
        for fine in 1..=3 {
            settings.topic_min_insync_replicas = Some(fine);
            assert!(settings.validate().is_ok(), "{fine} of 3");
        }
        settings.topic_min_insync_replicas = Some(4);
        let e = settings.validate().unwrap_err().to_string();
        assert!(e.contains("--topic-min-insync-replicas 4 exceeds --topic-replication 3"), "{e}");
        for below in [0, -1] {
            settings.topic_min_insync_replicas = Some(below);
            let e = settings.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("--topic-min-insync-replicas {below} must be at least 1")), "{e}");
        }
    }

    #[test]
    fn every_topic_flag_names_a_topic_of_its_own() {
        let mut settings = KafkaSettings::for_tests("127.0.0.1:9092");
        settings.dead_letter_topic = "positions".into();
        let e = settings.validate().unwrap_err().to_string();
        assert!(e.contains("--dead-letter-topic and --positions-topic must differ (both are \"positions\")"), "{e}");
        settings.dead_letter_topic = "raw".into();
        let e = settings.validate().unwrap_err().to_string();
        assert!(e.contains("--raw-topic and --dead-letter-topic must differ"), "{e}");
    }

    #[test]
    fn a_malformed_property_is_reported_without_its_value() {
        for entry in ["Password=hunter2", "sasl.password:hunter2"] {
            let e = KafkaSettings::parse_properties(&[entry.into()]).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
