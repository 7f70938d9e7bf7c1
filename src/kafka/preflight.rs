//! The start-up check: before any stage starts, one client with the collector's settings asks
//! Kafka for its metadata, for at most [`PREFLIGHT_TIMEOUT`].
//!
//! - Kafka answers: start.
//! - Kafka refuses the TLS or SASL configuration (a [`Refusal`]: wrong password, unknown user,
//!   mechanism not enabled, untrusted certificate, failed handshake): stop, with one sentence
//!   that names the cause and the settings to fix. Retrying cannot fix a configuration, and a
//!   collector that acknowledged requests it can never deliver would only fill its WAL.
//! - Kafka is unreachable (connection refused, closed, no answer in time): start anyway, with a
//!   warning, as always: ingest fills the WAL and the stages retry until Kafka is back. A broker
//!   that is merely down never answers with a refusal (see [`super::security`]), so it never
//!   stops a start.
//!
//! Certificates: OpenSSL reports an untrusted CA and a certificate issued for another host
//! alike ("certificate verify failed"). After such a failure a second handshake tells them
//! apart: with the host name check off and no credentials to send (`security.protocol=SSL`), a
//! certificate that now verifies names another host; one that still does not is not signed
//! by a trusted CA (or expired).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientConfig;
use tracing::{debug, info, warn};

use super::secrets::client_error;
use super::security::Refusal;
use super::{KafkaSettings, KafkaStageError};

/// How long the check waits for Kafka's metadata before starting anyway. It returns much
/// sooner when Kafka answers, refuses, or every broker is found down (a refused connection).
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the second handshake that tells an untrusted certificate from one for another host
/// may take.
const CERTIFICATE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the check found, when it did not stop the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Kafka answered with the metadata of this many brokers.
    Connected { brokers: usize },
    /// Kafka did not answer (librdkafka's last error, or that the time ran out).
    Unreachable(String),
}

/// Checks that the settings can talk to Kafka, and logs what it found.
///
/// # Errors
/// [`KafkaStageError::Refused`]: Kafka refused the TLS or SASL configuration; the message names
/// the cause and the settings to fix, never a secret. [`KafkaStageError::Config`]: librdkafka
/// refused the configuration before connecting.
pub async fn preflight(settings: &KafkaSettings) -> Result<Reach, KafkaStageError> {
    let settings = settings.clone();
    let reach = tokio::task::spawn_blocking(move || check(&settings, PREFLIGHT_TIMEOUT))
        .await
        .map_err(|e| KafkaStageError::Config(format!("the start-up check of Kafka panicked: {e}")))??;
    match &reach {
        Reach::Connected { brokers } => info!(brokers, "Kafka answered the start-up check."),
        Reach::Unreachable(error) => warn!(
            %error,
            "Kafka is not reachable at start-up; starting anyway: the WAL keeps what is accepted until it is."
        ),
    }
    Ok(reach)
}

/// [`preflight`]'s work, blocking for up to `timeout`.
fn check(settings: &KafkaSettings, timeout: Duration) -> Result<Reach, KafkaStageError> {
    match probe(settings.client_config(&[]), timeout)?.0 {
        Probed::Refused(Refusal::Certificate, reason) => {
            let cause = certificate_cause(settings);
            Err(KafkaStageError::Refused(cause.explain(&reason, settings)))
        }
        Probed::Refused(refusal, reason) => Err(KafkaStageError::Refused(refusal.explain(&reason, Some(settings)))),
        Probed::Connected { brokers } => Ok(Reach::Connected { brokers }),
        Probed::Unreachable(error) => Ok(Reach::Unreachable(error)),
    }
}

/// What one probing client found.
enum Probed {
    Connected { brokers: usize },
    Refused(Refusal, String),
    Unreachable(String),
}

/// Asks for metadata with a client of `config` until Kafka answers, refuses, is found down, or
/// `timeout` passes. Also says whether a broker's certificate was verified (a debug line, seen
/// only with `debug=security`).
fn probe(config: ClientConfig, timeout: Duration) -> Result<(Probed, bool), KafkaStageError> {
    let producer: BaseProducer<Probe> =
        config.create_with_context(Probe::default()).map_err(|e| KafkaStageError::Config(client_error(&e)))?;
    let deadline = Instant::now() + timeout;
    loop {
        let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(250));
        let answer = producer.client().fetch_metadata(None, slice);
        // Serve the error events the attempt raised.
        producer.poll(Duration::from_millis(20));
        let context = producer.context();
        let verified = context.verified.load(Ordering::Acquire);
        if let Ok(metadata) = answer {
            return Ok((Probed::Connected { brokers: metadata.brokers().len() }, verified));
        }
        let seen = context.seen.lock().expect("probe lock poisoned");
        if let Some((refusal, reason)) = seen.refusal.clone() {
            return Ok((Probed::Refused(refusal, reason), verified));
        }
        if seen.all_down || Instant::now() >= deadline {
            let error = seen.last.clone().unwrap_or_else(|| {
                format!(
                    "no answer within {} ms (if Kafka is up, security.protocol may not match its listener)",
                    timeout.as_millis()
                )
            });
            return Ok((Probed::Unreachable(error), verified));
        }
    }
}

/// After "certificate verify failed": whether the certificate names another host, or is not
/// trusted at all, found with a second handshake that checks the chain but not the host name
/// and sends no credentials.
fn certificate_cause(settings: &KafkaSettings) -> CertificateCause {
    if settings.property("ssl.endpoint.identification.algorithm").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return CertificateCause::Untrusted;
    }
    let mut config = settings.client_config(&[]);
    for (key, _) in &settings.properties {
        if key.starts_with("sasl.") {
            config.remove(key);
        }
    }
    config
        .set("security.protocol", "ssl")
        .set("ssl.endpoint.identification.algorithm", "none")
        // The "Broker SSL certificate verified" line is a debug line.
        .set("debug", "security")
        .set_log_level(RDKafkaLogLevel::Debug);
    match probe(config, CERTIFICATE_PROBE_TIMEOUT) {
        Ok((Probed::Refused(Refusal::Certificate, _), _)) => CertificateCause::Untrusted,
        Ok((_, true)) => CertificateCause::OtherHost,
        Ok((_, false)) | Err(_) => CertificateCause::Unknown,
    }
}

/// Why a certificate was not accepted, as far as the check could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertificateCause {
    /// Not signed by a CA in `ssl.ca.location` (or the system's), or expired.
    Untrusted,
    /// Signed by a trusted CA, but for other host names than the one connected to.
    OtherHost,
    /// The second handshake did not tell.
    Unknown,
}

impl CertificateCause {
    fn explain(self, reason: &str, settings: &KafkaSettings) -> String {
        match self {
            CertificateCause::Unknown => Refusal::Certificate.explain(reason, Some(settings)),
            CertificateCause::Untrusted => {
                let ca = settings
                    .property("ssl.ca.location")
                    .map_or("the system's CA certificates (ssl.ca.location unset)".to_string(), |ca| {
                        format!("ssl.ca.location={ca}")
                    });
                format!(
                    "Kafka's TLS certificate is not signed by a CA in {ca}, or has expired: {reason}; set ssl.ca.location to the CA certificate that signed the brokers' certificates"
                )
            }
            CertificateCause::OtherHost => format!(
                "Kafka's TLS certificate is signed by a trusted CA but names other hosts than the one connected to ({}): {reason}; reach the brokers by a name their certificates carry (--brokers, and the brokers' advertised listeners)",
                settings.brokers
            ),
        }
    }
}

/// The probing client's context: records librdkafka's error events instead of logging them
/// (the check reports once, in a sentence), and watches its debug lines for a verified
/// certificate.
#[derive(Default)]
struct Probe {
    seen: Mutex<Seen>,
    verified: AtomicBool,
}

#[derive(Default)]
struct Seen {
    /// The first refusal.
    refusal: Option<(Refusal, String)>,
    /// Every broker was found down (connection refused, say).
    all_down: bool,
    /// The last error, for the warning when Kafka is unreachable.
    last: Option<String>,
}

impl ClientContext for Probe {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "SSLVERIFY" && message.contains("certificate verified") {
            self.verified.store(true, Ordering::Release);
        }
        if !matches!(level, RDKafkaLogLevel::Debug) {
            debug!(target: "librdkafka", "{fac}: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(target: "librdkafka", %error, "{reason}");
        let mut seen = self.seen.lock().expect("probe lock poisoned");
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            seen.all_down = true;
            return;
        }
        if seen.refusal.is_none() {
            seen.refusal = code.and_then(|c| Refusal::classify(c, reason)).map(|r| (r, reason.to_string()));
        }
        seen.last = Some(format!("{error}: {reason}"));
    }
}

/// It sends nothing; the producer is only the cheapest client that polls its error events.
impl ProducerContext for Probe {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, (): ()) {}
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[test]
    fn a_broker_that_answers_passes() {
        let mock = MockCluster::new(1).unwrap();
        let settings = KafkaSettings::for_tests(&mock.bootstrap_servers());
        assert_eq!(check(&settings, PREFLIGHT_TIMEOUT).unwrap(), Reach::Connected { brokers: 1 });
    }

    /// Nothing listens: the start goes on, and without waiting for the whole timeout.
    #[test]
    fn a_broker_that_is_not_there_passes_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let settings = KafkaSettings::for_tests(&format!("127.0.0.1:{port}"));
        let started = Instant::now();
        let reach = check(&settings, PREFLIGHT_TIMEOUT).unwrap();
        assert!(matches!(&reach, Reach::Unreachable(e) if e.contains("Connection refused")), "{reach:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }
}
