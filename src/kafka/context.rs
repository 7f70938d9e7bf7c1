//! librdkafka's log lines and global errors, routed to `tracing` at sensible levels.
//!
//! While a broker is unreachable librdkafka reports the same transport errors again and
//! again; the stages report their own state (status page, metrics, one warning per retry), so
//! those repeats are logged at debug level instead of flooding the log with errors.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error as error_log, info, warn};

pub(super) fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
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

pub(super) fn error(error: KafkaError, reason: &str) {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
            debug!(target: "librdkafka", %error, "{reason}")
        }
        _ => error_log!(target: "librdkafka", %error, "{reason}"),
    }
}

/// Context for admin clients and consumers that need nothing but sane logging.
#[derive(Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(error, reason);
    }
}

impl ConsumerContext for LogContext {}
