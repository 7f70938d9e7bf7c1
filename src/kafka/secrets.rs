//! Secrets among librdkafka's properties (`sasl.password`, `ssl.key.password`, …) never reach a
//! log line or an error message: [`super::KafkaSettings`]' `Debug` redacts them
//! ([`RedactedProperties`]), and [`client_error`] scrubs them from rust-rdkafka's configuration
//! errors, which quote the value they could not set. librdkafka itself redacts them in its
//! configuration dumps (`debug=conf`), and `--help` does not show the environment's value of
//! `COLLECTOR_KAFKA_PROPERTIES`.

use std::fmt;

use rdkafka::error::KafkaError;

/// Whether a librdkafka property's value is a secret. librdkafka's own list (its
/// `_RK_SENSITIVE` properties) less the ones that are names, paths or public certificates
/// (`sasl.username`, `ssl.key.location`, `ssl.ca.pem`), which error messages may show; plus
/// anything named like a password or secret, so that a property added later is covered too.
pub fn is_secret(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    ["password", "secret", "passphrase", "private.key"].iter().any(|word| key.contains(word))
        || key.ends_with("key.pem")
        || matches!(key.as_str(), "sasl.oauthbearer.config" | "ssl_key" | "sasl.jaas.config")
}

/// Shown instead of a secret.
pub const REDACTED: &str = "[redacted]";

/// `key=value` pairs for a `Debug` line, secrets redacted.
pub struct RedactedProperties<'a>(pub &'a [(String, String)]);

impl fmt::Debug for RedactedProperties<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if is_secret(k) { REDACTED } else { v.as_str() })))
            .finish()
    }
}

/// A client creation error as a sentence without secrets: rust-rdkafka's configuration error
/// quotes the value it could not set, and librdkafka's description may too.
pub fn client_error(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, description, key, value) => {
            let (description, value) = if is_secret(key) && !value.is_empty() {
                (description.replace(value.as_str(), REDACTED), REDACTED)
            } else {
                (description.clone(), value.as_str())
            };
            format!("{description} ({key}={value})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_and_scrubbed_from_configuration_errors() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.assertion.private.key.passphrase",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in ["sasl.username", "ssl.ca.location", "ssl.key.location", "security.protocol", "linger.ms"] {
            assert!(!is_secret(key), "{key}");
        }
        let e = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"ssl.key.password\"".into(),
            "ssl.key.password".into(),
            "hunter2".into(),
        );
        let text = client_error(&e);
        assert!(!text.contains("hunter2") && text.contains("ssl.key.password"), "{text}");
    }
}
