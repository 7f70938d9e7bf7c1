//! Metric names and the Prometheus recorder. Every metric the collector emits is named here,
//! never as a string literal elsewhere.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_ACCEPTED: &str = "collector_requests_accepted_total";
pub const REQUESTS_REJECTED: &str = "collector_requests_rejected_total";
pub const EVENTS_ACCEPTED: &str = "collector_events_accepted_total";
pub const REQUESTS_DEDUPLICATED: &str = "collector_requests_deduplicated_total";
pub const WAL_GROUP_COMMITS: &str = "collector_wal_group_commits_total";
pub const WAL_GROUP_SIZE: &str = "collector_wal_group_commit_records";
pub const WAL_QUARANTINED: &str = "collector_wal_quarantined_total";
pub const WAL_LOST: &str = "collector_wal_lost_records_total";
pub const WAL_SET_ASIDE: &str = "collector_wal_set_aside_total";
pub const WAL_PENDING: &str = "collector_wal_pending_records";
pub const WAL_DISK_BYTES: &str = "collector_wal_disk_bytes";
pub const WAL_FAILURES: &str = "collector_wal_storage_failures_total";
pub const WAL_DISK_FREE: &str = "collector_wal_disk_free_bytes";
pub const FLUSH_DELIVERED: &str = "collector_flush_delivered_records_total";
pub const FLUSH_FAILURES: &str = "collector_flush_failed_batches_total";
pub const TRANSFORM_ROWS: &str = "collector_transform_rows_total";
pub const TRANSFORM_DEAD_LETTERS: &str = "collector_transform_dead_letters_total";
pub const TRANSFORM_FAILURES: &str = "collector_transform_failed_batches_total";
pub const TRANSFORM_DROPPED: &str = "collector_transform_dropped_messages_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding program); then our
            // handle renders nothing, which is better than refusing to start.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn request_accepted(events: usize) {
    counter!(REQUESTS_ACCEPTED).increment(1);
    counter!(EVENTS_ACCEPTED).increment(events as u64);
}

pub fn request_deduplicated() {
    counter!(REQUESTS_DEDUPLICATED).increment(1);
}

pub fn request_rejected(code: &'static str) {
    counter!(REQUESTS_REJECTED, "code" => code).increment(1);
}

pub fn wal_group_committed(records: usize) {
    counter!(WAL_GROUP_COMMITS).increment(1);
    histogram!(WAL_GROUP_SIZE).record(records as f64);
}

pub fn wal_record_quarantined() {
    counter!(WAL_QUARANTINED).increment(1);
}

pub fn wal_records_lost(records: u64) {
    counter!(WAL_LOST).increment(records);
}

pub fn wal_failed() {
    counter!(WAL_FAILURES).increment(1);
}

pub fn wal_disk_free(bytes: u64) {
    gauge!(WAL_DISK_FREE).set(bytes as f64);
}

pub fn wal_set_aside() {
    counter!(WAL_SET_ASIDE).increment(1);
}

pub fn wal_levels(pending: u64, disk_bytes: u64) {
    gauge!(WAL_PENDING).set(pending as f64);
    gauge!(WAL_DISK_BYTES).set(disk_bytes as f64);
}

pub fn flush_delivered(records: usize) {
    counter!(FLUSH_DELIVERED).increment(records as u64);
}

pub fn flush_failed() {
    counter!(FLUSH_FAILURES).increment(1);
}

pub fn transform_batch(rows: usize, dead_letters: usize) {
    counter!(TRANSFORM_ROWS).increment(rows as u64);
    counter!(TRANSFORM_DEAD_LETTERS).increment(dead_letters as u64);
}

pub fn transform_failed() {
    counter!(TRANSFORM_FAILURES).increment(1);
}

/// A raw message Kafka refused even as a bare dead letter was dropped.
pub fn transform_dropped() {
    counter!(TRANSFORM_DROPPED).increment(1);
}
