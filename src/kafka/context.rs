//! librdkafka's log lines and global errors, routed to `tracing` at sensible levels.
//!
//! While a broker is unreachable librdkafka reports the same transport errors again and
//! again; the stages report their own state (status page, metrics, one warning per retry), so
//! those repeats are logged at debug level instead of flooding the log with errors.
//!
//! A TLS or SASL refusal while running (a password rotated on the cluster, a certificate
//! replaced) is logged at error level as one sentence naming the settings to fix, and noted for
//! the flusher's last error ([`super::security`]); the stages keep retrying meanwhile.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error as error_log, info, warn};

use super::security::{self, Refusal};

pub fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            // Connection failures are also reported through `error`; keep one of the two.
            debug!(target: "librdkafka", "{fac}: {message}")
        }
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac}: {message}"),
    }
}

pub fn error(error: KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if let Some(refusal) = code.and_then(|code| Refusal::classify(code, reason)) {
        let explained = refusal.explain(reason, None);
        error_log!(target: "librdkafka", "{explained}");
        security::note_refusal(explained);
        return;
    }
    match code {
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
            debug!(target: "librdkafka", %error, "{reason}")
        }
        _ => error_log!(target: "librdkafka", %error, "{reason}"),
    }
}

/// Implements `ClientContext` for a context type by routing librdkafka's logs and errors
/// through [`log`] and [`error`]: the one place every client of the collector logs from.
/// `stats: path` also hands librdkafka's statistics (sent every `statistics.interval.ms`, when
/// the client sets it) to that function, with the context: `fn(&Context, Statistics)`.
macro_rules! logs_to_tracing {
    ($context:ty $(, stats: $stats:path)?) => {
        impl rdkafka::client::ClientContext for $context {
            fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
                $crate::kafka::context::log(level, fac, message);
            }

            fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
                $crate::kafka::context::error(error, reason);
            }

            $(
                fn stats(&self, statistics: rdkafka::Statistics) {
                    $stats(self, statistics);
                }
            )?
        }
    };
}
pub(crate) use logs_to_tracing;

/// Context for admin clients and consumers that need nothing but sane logging.
#[derive(Default)]
pub struct LogContext;

logs_to_tracing!(LogContext);

impl ConsumerContext for LogContext {}
