//! TLS and SASL: which of librdkafka's errors mean that the configuration is wrong rather than
//! that Kafka is away, and the sentences that name the setting to fix.
//!
//! # What is a refusal
//! librdkafka retries every broker connection forever, whatever failed. Two error codes cannot
//! come from a broker that is merely down, restarting or behind a load balancer without
//! backends, because they need a live broker (or TLS peer) that answered and said no:
//! `__AUTHENTICATION` (SASL: wrong password, unknown user, a mechanism the cluster does not
//! enable) and `__SSL` (the TLS handshake failed: a certificate not signed by a trusted CA,
//! expired, or not naming the host; no common protocol or cipher; a client certificate
//! required). Those are [`Refusal`]s. A connection that is refused, times out or is closed
//! (also "connecting to a PLAINTEXT broker listener?", which librdkafka itself reports as a
//! transport error) is not: the stages retry it, as they retry any outage.
//!
//! At start-up a refusal stops the process (`kafka::preflight`); later (a password rotated
//! on the cluster while the collector runs) it is logged at error level from every client's
//! context, and the flusher shows the latest one in its last error ([`recent_refusal`]). The
//! sentences name settings and their values, never a secret ([`super::secrets`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;

use super::KafkaSettings;

/// A configuration error the broker (or its TLS endpoint) answered with. See the module's
/// documentation for why these, and only these, stop a start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// SASL: wrong password or unknown user.
    Credentials,
    /// SASL: the cluster does not enable the client's `sasl.mechanism`.
    Mechanism,
    /// TLS: the broker's certificate was not accepted (not signed by a trusted CA, expired, or
    /// not naming the host connected to: OpenSSL says only "certificate verify failed").
    Certificate,
    /// TLS: any other handshake failure.
    Handshake,
}

impl Refusal {
    /// The refusal an error event of librdkafka means, if it is one. `reason` is the event's
    /// text.
    pub fn classify(code: RDKafkaErrorCode, reason: &str) -> Option<Refusal> {
        let lower = reason.to_ascii_lowercase();
        match code {
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState => Some(
                if code == RDKafkaErrorCode::UnsupportedSASLMechanism
                    || lower.contains("unsupported sasl mechanism")
                    || lower.contains("supported mechanisms")
                {
                    Refusal::Mechanism
                } else {
                    Refusal::Credentials
                },
            ),
            RDKafkaErrorCode::SSL => Some(
                if lower.contains("certificate verify failed") || lower.contains("failed to verify broker certificate")
                {
                    Refusal::Certificate
                } else {
                    Refusal::Handshake
                },
            ),
            _ => None,
        }
    }

    /// One sentence naming the cause and the settings to fix: `reason` is librdkafka's text,
    /// `settings` (at start-up) adds the values in use; never a secret.
    pub fn explain(self, reason: &str, settings: Option<&KafkaSettings>) -> String {
        let property = |key: &str| settings.and_then(|s| s.property(key));
        let mechanism = property("sasl.mechanism").or_else(|| property("sasl.mechanisms")).unwrap_or("GSSAPI");
        match self {
            Refusal::Credentials => {
                let oauth = mechanism.eq_ignore_ascii_case("OAUTHBEARER");
                let (who, check) = match settings {
                    Some(_) if oauth => (" (sasl.mechanism=OAUTHBEARER)".into(), "the sasl.oauthbearer.* settings"),
                    Some(_) => (
                        format!(
                            " (sasl.username={}, sasl.mechanism={mechanism})",
                            property("sasl.username").unwrap_or("<unset>")
                        ),
                        "sasl.username and sasl.password",
                    ),
                    None if reason.contains("OAUTHBEARER") => (String::new(), "the sasl.oauthbearer.* settings"),
                    None => (String::new(), "sasl.username and sasl.password"),
                };
                format!("Kafka refused the SASL credentials{who}: {reason}; check {check}")
            }
            Refusal::Mechanism => {
                let which = if settings.is_some() { format!(" {mechanism}") } else { String::new() };
                format!(
                    "Kafka does not accept the SASL mechanism{which}: {reason}; set sasl.mechanism to one the cluster enables"
                )
            }
            Refusal::Certificate => {
                let ca = match (settings, property("ssl.ca.location")) {
                    (None, _) => String::new(),
                    (Some(_), Some(ca)) => format!(" against ssl.ca.location={ca}"),
                    (Some(_), None) => " against the system's CA certificates (ssl.ca.location unset)".into(),
                };
                format!(
                    "Kafka's TLS certificate could not be verified{ca}: {reason}; set ssl.ca.location to the CA certificate that signed the brokers' certificates, and reach the brokers by a name their certificates carry"
                )
            }
            Refusal::Handshake => format!(
                "the TLS handshake with Kafka failed: {reason}; check security.protocol and the ssl.* settings (ssl.certificate.location and ssl.key.location if the cluster wants client certificates)"
            ),
        }
    }
}

/// The latest refusal any client of this process met, and when: for the flusher's last error.
static LATEST: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// How long a refusal is worth mentioning: librdkafka repeats an identical error of a broker at
/// most every 30 s, so a refusal that persists is seen again within this.
const REFUSAL_RECENT: Duration = Duration::from_secs(60);

/// Notes a refusal met while running (see [`recent_refusal`]).
pub fn note_refusal(explained: String) {
    *LATEST.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), explained));
}

/// The latest refusal of the last minute, with how long ago it was: what a failure the stage
/// saw (a timeout, say) is most likely due to.
pub fn recent_refusal() -> Option<String> {
    let latest = LATEST.lock().unwrap_or_else(|p| p.into_inner());
    let (at, explained) = latest.as_ref()?;
    let age = at.elapsed();
    (age < REFUSAL_RECENT).then(|| format!("{} s ago: {explained}", age.as_secs()))
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;

    use super::*;

    // Texts as librdkafka 2.12 reports them against the SASL_SSL listener of scripts/kafka.sh.
    const WRONG_PASSWORD: &str = "sasl_ssl://127.0.0.1:9344/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 312ms in state AUTH_REQ)";
    const UNTRUSTED: &str = "sasl_ssl://127.0.0.1:9344/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 14ms in state SSL_HANDSHAKE)";

    #[test]
    fn authentication_and_tls_errors_are_refusals_and_transport_errors_are_not() {
        use RDKafkaErrorCode as C;
        assert_eq!(Refusal::classify(C::Authentication, WRONG_PASSWORD), Some(Refusal::Credentials));
        assert_eq!(Refusal::classify(C::SSL, UNTRUSTED), Some(Refusal::Certificate));
        assert_eq!(
            Refusal::classify(
                C::SSL,
                "SSL handshake failed: error:0A000410:SSL routines::sslv3 alert handshake failure"
            ),
            Some(Refusal::Handshake)
        );
        assert_eq!(Refusal::classify(C::UnsupportedSASLMechanism, "x"), Some(Refusal::Mechanism));
        for (code, reason) in [
            (C::BrokerTransportFailure, "Connect to ipv4#127.0.0.1:1 failed: Connection refused"),
            (
                C::BrokerTransportFailure,
                "SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?",
            ),
            (C::AllBrokersDown, "1/1 brokers are down"),
            (C::OperationTimedOut, "timed out"),
        ] {
            assert_eq!(Refusal::classify(code, reason), None, "{reason}");
        }
    }

    #[test]
    fn a_refusal_names_the_settings_to_fix_without_the_secret() {
        let mut settings = KafkaSettings::for_tests("127.0.0.1:9344");
        settings.properties = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "alice"),
            ("sasl.password", "hunter2"),
            ("ssl.ca.location", "/etc/kafka/ca.pem"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        let credentials = Refusal::Credentials.explain(WRONG_PASSWORD, Some(&settings));
        assert!(credentials.contains("sasl.username=alice, sasl.mechanism=SCRAM-SHA-512"), "{credentials}");
        assert!(credentials.contains("check sasl.username and sasl.password"), "{credentials}");
        let certificate = Refusal::Certificate.explain(UNTRUSTED, Some(&settings));
        assert!(certificate.contains("ssl.ca.location=/etc/kafka/ca.pem"), "{certificate}");
        for text in [credentials, certificate, format!("{settings:?}")] {
            assert!(!text.contains("hunter2"), "a secret leaked: {text}");
        }
        // While running, nothing but librdkafka's text is known.
        assert!(Refusal::Credentials.explain("x", None).starts_with("Kafka refused the SASL credentials: x;"));
    }

    #[test]
    fn a_refusal_while_running_is_noted_for_the_flushers_last_error() {
        super::super::context::error(KafkaError::Global(RDKafkaErrorCode::Authentication), WRONG_PASSWORD);
        let noted = recent_refusal().unwrap();
        assert!(noted.starts_with("0 s ago: Kafka refused the SASL credentials: sasl_ssl://"), "{noted}");
        assert!(noted.ends_with("; check sasl.username and sasl.password"), "{noted}");
    }

    /// The build must never silently lose TLS or a SASL mechanism (rdkafka's `ssl` feature).
    #[test]
    fn the_build_has_tls_and_the_sasl_mechanisms_the_readme_documents() {
        let native = rdkafka::ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        for feature in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
            assert!(features.split(',').any(|f| f == feature), "librdkafka is built without {feature}: {features}");
        }
        for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "OAUTHBEARER"] {
            let mut settings = KafkaSettings::for_tests("127.0.0.1:9");
            settings.properties = [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "alice"),
                ("sasl.password", "secret"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec();
            settings.validate().unwrap_or_else(|e| panic!("SASL_SSL with {mechanism} is refused: {e}"));
        }
    }
}
