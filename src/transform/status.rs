//! Live state of the transform worker, for the status page (when the worker runs in the
//! collector's process: `collector run`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kafka::KafkaLink;
use crate::telemetry::RecentErrors;

/// How often the consumer reports its statistics: its lag per partition and its connection.
pub const CONSUMER_STATISTICS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the row producer reports its statistics (its connection state).
const PRODUCER_STATISTICS_INTERVAL: Duration = Duration::from_secs(1);

/// Written by the worker thread and its clients' callbacks, read by the status handlers.
#[derive(Debug)]
pub struct TransformStatus {
    /// The consumer's connection state (stage `transform_consumer`).
    pub consumer: Arc<KafkaLink>,
    /// The row producer's connection state (stage `transform_producer`).
    pub producer: Arc<KafkaLink>,
    rows: AtomicU64,
    dead_letters: AtomicU64,
    /// The lag per raw-topic partition from the consumer's last statistics, and when.
    lag: Mutex<Option<(Instant, BTreeMap<i32, i64>)>>,
    /// Where failures are noted, with the other stages' (stage `transform`).
    errors: Arc<RecentErrors>,
}

/// The transform as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TransformSnapshot {
    /// Rows and dead letters committed since start.
    pub rows: u64,
    pub dead_letters: u64,
    /// Raw messages not read yet, summed over the partitions this worker owns, from the
    /// consumer's last statistics (absent before the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_messages: Option<i64>,
    /// The same per partition (0 for partitions another worker owns).
    pub lag_partitions: BTreeMap<i32, i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_report_age_ms: Option<u64>,
}

impl Default for TransformStatus {
    /// With errors noted nowhere else (unit tests, and `collector transform`, which has no
    /// status page).
    fn default() -> Self {
        TransformStatus::new(Arc::default())
    }
}

impl TransformStatus {
    /// A worker's status that notes its failures in `errors` too.
    pub fn new(errors: Arc<RecentErrors>) -> Self {
        TransformStatus {
            consumer: Arc::new(KafkaLink::new("transform_consumer", CONSUMER_STATISTICS_INTERVAL)),
            producer: Arc::new(KafkaLink::new("transform_producer", PRODUCER_STATISTICS_INTERVAL)),
            rows: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            lag: Mutex::new(None),
            errors,
        }
    }

    pub fn snapshot(&self) -> TransformSnapshot {
        let lag = self.lag.lock().expect("status lock poisoned").clone();
        TransformSnapshot {
            rows: self.rows(),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            lag_messages: lag.as_ref().map(|(_, partitions)| partitions.values().sum()),
            lag_report_age_ms: lag.as_ref().map(|(at, _)| at.elapsed().as_millis() as u64),
            lag_partitions: lag.map(|(_, partitions)| partitions).unwrap_or_default(),
        }
    }

    /// Rows committed since start (one atomic read, for the status page's sampler).
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// A batch committed `rows` rows and `dead_letters` dead letters.
    pub(super) fn committed(&self, rows: usize, dead_letters: usize) {
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.dead_letters.fetch_add(dead_letters as u64, Ordering::Relaxed);
    }

    /// The consumer's statistics said this lag per partition.
    pub(super) fn lag(&self, partitions: BTreeMap<i32, i64>) {
        *self.lag.lock().expect("status lock poisoned") = Some((Instant::now(), partitions));
    }

    /// A Kafka call of the worker failed; `links` are the clients it concerns, which count as
    /// disconnected until they report again.
    pub(super) fn failed(&self, links: &[&KafkaLink], error: String) {
        for link in links {
            link.call_failed();
        }
        self.errors.note("transform", error);
    }
}
