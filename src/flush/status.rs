//! Live state of the flusher, for the status page.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Written by the flusher thread, read by the status handlers.
#[derive(Debug, Default)]
pub struct FlushStatus {
    kafka_ok: AtomicBool,
    delivered_records: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlushSnapshot {
    /// The last batch went through.
    pub kafka_ok: bool,
    /// Records delivered since start.
    pub delivered_records: u64,
    pub last_error: Option<String>,
}

impl FlushStatus {
    pub fn snapshot(&self) -> FlushSnapshot {
        FlushSnapshot {
            kafka_ok: self.kafka_ok.load(Ordering::Relaxed),
            delivered_records: self.delivered_records.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("status lock poisoned").clone(),
        }
    }

    pub(super) fn ok(&self, records: usize) {
        self.kafka_ok.store(true, Ordering::Relaxed);
        self.delivered_records.fetch_add(records as u64, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = None;
    }

    pub(super) fn failed(&self, error: String) {
        self.kafka_ok.store(false, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = Some(error);
    }
}
