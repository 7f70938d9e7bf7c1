//! Live state of the flusher, for the status page.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::kafka::KafkaLink;
use crate::telemetry::RecentErrors;

/// How often the flusher's producer reports its statistics (its connection state).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(1);

/// Written by the flusher thread, read by the status handlers.
#[derive(Debug)]
pub struct FlushStatus {
    kafka_ok: AtomicBool,
    delivered_records: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The producer's connection state (stage `flusher`).
    pub link: Arc<KafkaLink>,
    /// Where every failure is also noted, with the other stages' (stage `flusher`, or `wal`
    /// for a WAL the flusher cannot read).
    errors: Arc<RecentErrors>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlushSnapshot {
    /// The last batch went through.
    pub kafka_ok: bool,
    /// Records delivered since start.
    pub delivered_records: u64,
    pub last_error: Option<String>,
}

impl Default for FlushStatus {
    /// With errors noted nowhere else (unit tests).
    fn default() -> Self {
        FlushStatus::new(Arc::default())
    }
}

impl FlushStatus {
    /// A flusher's status that notes its failures in `errors` too.
    pub fn new(errors: Arc<RecentErrors>) -> Self {
        FlushStatus {
            kafka_ok: AtomicBool::new(false),
            delivered_records: AtomicU64::new(0),
            last_error: Mutex::new(None),
            link: Arc::new(KafkaLink::new("flusher", STATISTICS_INTERVAL)),
            errors,
        }
    }

    pub fn snapshot(&self) -> FlushSnapshot {
        FlushSnapshot {
            kafka_ok: self.kafka_ok.load(Ordering::Relaxed),
            delivered_records: self.delivered_records.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("status lock poisoned").clone(),
        }
    }

    /// Records delivered since start (one atomic read, for the status page's sampler).
    pub fn delivered_records(&self) -> u64 {
        self.delivered_records.load(Ordering::Relaxed)
    }

    pub(super) fn ok(&self, records: usize) {
        self.kafka_ok.store(true, Ordering::Relaxed);
        self.delivered_records.fetch_add(records as u64, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = None;
    }

    /// A Kafka call failed: the status page says so, and the producer counts as disconnected
    /// until it reports again.
    pub(super) fn failed(&self, error: String) {
        self.kafka_ok.store(false, Ordering::Relaxed);
        self.link.call_failed();
        self.errors.note("flusher", error.as_str());
        *self.last_error.lock().expect("status lock poisoned") = Some(error);
    }

    /// Reading the WAL failed.
    pub(super) fn wal_failed(&self, error: String) {
        self.errors.note("wal", error);
    }
}
