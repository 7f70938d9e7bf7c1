use rdkafka::ClientConfig;

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
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Extra librdkafka properties (`key=value`), applied last so they override our defaults.
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
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room for headers, key and record framing on top of a payload.
pub const MESSAGE_OVERHEAD_BYTES: usize = 16 * 1024;

impl KafkaSettings {
    /// The largest message our producers may send: librdkafka's `message.max.bytes`, as
    /// passed with `-X` or its default. Ingest limits are validated against it so that an
    /// accepted request always fits into a Kafka message.
    pub fn max_message_bytes(&self) -> usize {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == "message.max.bytes")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
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
    /// # Errors
    /// [`KafkaStageError::Config`] for an entry without `=` or with an empty key.
    pub fn parse_properties(raw: &[String]) -> Result<Vec<(String, String)>, KafkaStageError> {
        raw.iter()
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
                _ => Err(KafkaStageError::Config(format!("Kafka property {p:?} is not of the form key=value"))),
            })
            .collect()
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
        if self.raw_topic == self.transformed_topic {
            return Err(KafkaStageError::Config("--raw-topic and --transformed-topic must differ".into()));
        }
        if self.topic_partitions < 1 || self.topic_replication < 1 {
            return Err(KafkaStageError::Config(
                "--topic-partitions and --topic-replication must be at least 1".into(),
            ));
        }
        // Let librdkafka judge the properties themselves: building a client validates them.
        // Its message quotes the property's value: mask the secrets in it.
        self.client_config(&[]).create::<rdkafka::producer::BaseProducer>().map_err(|e| {
            let message = self
                .properties
                .iter()
                .filter(|(name, value)| is_secret_property(name) && !value.is_empty())
                .fold(e.to_string(), |message, (_, value)| message.replace(value.as_str(), MASKED));
            KafkaStageError::Config(format!("-X (librdkafka properties): {message}"))
        })?;
        Ok(())
    }
}

/// What a secret property's value is shown as.
pub const MASKED: &str = "<masked>";

/// True for a librdkafka property whose value is a secret: passwords, client secrets,
/// passphrases, private keys, and the OAUTHBEARER configuration (it can carry a secret).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "passphrase", "private.key"].iter().any(|word| name.contains(word))
        || name.ends_with("key.pem")
        || ["sasl.oauthbearer.config", "ssl_key"].contains(&name.as_str())
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
}
