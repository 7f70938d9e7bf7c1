//! Metric names and the Prometheus recorder. Every metric the collector emits is named here,
//! never as a string literal elsewhere. Also the stages' [`RecentErrors`], which the status
//! page lists.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
/// Histogram, labels `route` (`/collect`, `/healthz`, `/readyz`, `/`, `/status.json`, `/metrics`,
/// `other`) and `status` (the HTTP status code): how long each answer took, as the server saw it.
pub const HTTP_REQUEST_DURATION: &str = "collector_http_request_duration_seconds";
/// Histogram: how long each WAL group commit took, append and fsync together (a request's
/// wait for durability is its queueing plus one or two of these).
pub const WAL_COMMIT_DURATION: &str = "collector_wal_group_commit_duration_seconds";
/// Histograms: records per delivered flusher batch, and how long it took from its first
/// attempt to its commit (retries included). Their `_count` is the batches committed; failed
/// attempts (aborted transactions) are `collector_flush_failed_batches_total`.
pub const FLUSH_BATCH_RECORDS: &str = "collector_flush_batch_records";
pub const FLUSH_BATCH_DURATION: &str = "collector_flush_batch_duration_seconds";
/// Histogram: how long each transform batch took from its first attempt to its commit (its
/// `_count` is the batches committed; failed attempts: `collector_transform_failed_batches_total`).
pub const TRANSFORM_BATCH_DURATION: &str = "collector_transform_batch_duration_seconds";
/// Gauge: how long ago the oldest record not yet confirmed by Kafka was accepted (0 when the
/// flusher has caught up); read from the WAL at each scrape. An outage shows here as a steadily
/// growing age.
pub const WAL_OLDEST_PENDING_AGE: &str = "collector_wal_oldest_pending_age_seconds";
/// Gauge, label `partition`: messages of the raw topic's partition this transform worker has
/// not read yet (0 for partitions it does not own; sum over workers per partition). Refreshed
/// every 5 s from librdkafka's statistics.
pub const TRANSFORM_LAG: &str = "collector_transform_consumer_lag_messages";
/// Gauge, label `stage` (`flusher`, and with the transform in this process
/// `transform_consumer` and `transform_producer`): 1 while that stage's Kafka client has a
/// broker connection up by librdkafka's last statistics report (every second for producers,
/// every 5 s for the consumer), else 0 — also when reports stopped, the client being gone or
/// blocked (see `kafka::link`).
pub const KAFKA_CONNECTED: &str = "collector_kafka_connected";
/// Gauge, always 1, label `version`: which build is running.
pub const BUILD_INFO: &str = "collector_build_info";

/// Buckets of every `_seconds` histogram: 0.5 ms to 10 s, about three per decade (a group
/// commit takes 1–10 ms, a stall up to hundreds).
const SECONDS_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Buckets of the group-commit size (records per commit, at most `--wal-group-commit-max`).
const RECORDS_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
/// Buckets of the flusher's batch size (records, at most `--flush-batch-records`).
const BATCH_BUCKETS: [f64; 9] = [1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The `Content-Type` of a `/metrics` answer: Prometheus' text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Histograms with buckets (rendered as Prometheus histograms, which aggregate across
            // collectors) rather than the exporter's default summaries (which do not).
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(WAL_GROUP_SIZE.into()), &RECORDS_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FLUSH_BATCH_RECORDS.into()), &BATCH_BUCKETS))
                .expect("the bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding program); then our
            // handle renders nothing, which is better than refusing to start.
            let _ = metrics::set_global_recorder(recorder);
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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

pub fn wal_group_committed(records: usize, took: Duration) {
    counter!(WAL_GROUP_COMMITS).increment(1);
    histogram!(WAL_GROUP_SIZE).record(records as f64);
    histogram!(WAL_COMMIT_DURATION).record(took.as_secs_f64());
}

pub fn http_request(route: &'static str, status: u16, took: Duration) {
    // The statuses the collector answers with as static labels: no allocation per request.
    let status: metrics::SharedString = match status {
        200 => "200".into(),
        204 => "204".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        405 => "405".into(),
        408 => "408".into(),
        413 => "413".into(),
        415 => "415".into(),
        422 => "422".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    };
    histogram!(HTTP_REQUEST_DURATION, "route" => route, "status" => status).record(took.as_secs_f64());
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

pub fn wal_levels(pending: u64, disk_bytes: u64, oldest_pending_age_ms: Option<u64>) {
    gauge!(WAL_PENDING).set(pending as f64);
    gauge!(WAL_DISK_BYTES).set(disk_bytes as f64);
    gauge!(WAL_OLDEST_PENDING_AGE).set(oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
}

pub fn flush_delivered(records: usize) {
    counter!(FLUSH_DELIVERED).increment(records as u64);
}

pub fn flush_batch(records: usize, took: Duration) {
    histogram!(FLUSH_BATCH_RECORDS).record(records as f64);
    histogram!(FLUSH_BATCH_DURATION).record(took.as_secs_f64());
}

pub fn transform_lag(partition: i32, messages: i64) {
    gauge!(TRANSFORM_LAG, "partition" => partition.to_string()).set(messages as f64);
}

pub fn kafka_connected(stage: &'static str, connected: bool) {
    gauge!(KAFKA_CONNECTED, "stage" => stage).set(if connected { 1.0 } else { 0.0 });
}

pub fn transform_batch_committed(took: Duration) {
    histogram!(TRANSFORM_BATCH_DURATION).record(took.as_secs_f64());
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

/// The last errors of every stage, newest last, for the status page: what went wrong lately
/// without reading the log. The same error again right after itself (a retry loop failing the
/// same way) is counted on its entry instead of pushing the others out.
#[derive(Debug, Default)]
pub struct RecentErrors {
    /// Behind a mutex: errors are rare, and the page reads once a second.
    entries: Mutex<VecDeque<RecentError>>,
}

/// One error (or a run of the same one) as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentError {
    /// When it happened first and last (ms since the epoch), and how often in a row.
    pub first_ms: u64,
    pub last_ms: u64,
    pub count: u64,
    /// `flusher`, `transform` or `wal`.
    pub stage: &'static str,
    pub message: String,
}

impl RecentErrors {
    /// Errors kept.
    pub const KEPT: usize = 10;
    /// Characters of a message kept (a Kafka error can quote a whole broker list).
    const MESSAGE_CHARS: usize = 500;

    /// Notes an error of `stage` now.
    pub fn note(&self, stage: &'static str, message: impl Into<String>) {
        self.note_at(crate::now_ms(), stage, message.into());
    }

    fn note_at(&self, at_ms: u64, stage: &'static str, mut message: String) {
        if let Some((cut, _)) = message.char_indices().nth(Self::MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        let mut entries = self.entries.lock().expect("errors lock poisoned");
        match entries.back_mut() {
            Some(last) if last.stage == stage && last.message == message => {
                last.last_ms = at_ms;
                last.count += 1;
            }
            _ => {
                if entries.len() == Self::KEPT {
                    entries.pop_front();
                }
                entries.push_back(RecentError { first_ms: at_ms, last_ms: at_ms, count: 1, stage, message });
            }
        }
    }

    /// The errors kept, newest first.
    pub fn newest_first(&self) -> Vec<RecentError> {
        self.entries.lock().expect("errors lock poisoned").iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_errors_keep_the_last_ten_and_count_repeats_in_a_row() {
        let errors = RecentErrors::default();
        errors.note_at(1, "flusher", "Kafka is away".into());
        errors.note_at(2, "flusher", "Kafka is away".into());
        errors.note_at(3, "wal", "disk full".into());
        errors.note_at(4, "flusher", "Kafka is away".into());
        let kept = errors.newest_first();
        assert_eq!(kept.len(), 3, "a repeat only right after itself is folded: {kept:?}");
        assert_eq!((kept[2].first_ms, kept[2].last_ms, kept[2].count), (1, 2, 2));
        assert_eq!((kept[0].stage, kept[0].count), ("flusher", 1));
        for i in 0..20 {
            errors.note_at(10 + i, "transform", format!("error {i}"));
        }
        let kept = errors.newest_first();
        assert_eq!(kept.len(), RecentErrors::KEPT);
        assert_eq!(kept[0].message, "error 19");
        assert_eq!(kept[9].message, "error 10");
        errors.note_at(40, "transform", "é".repeat(600));
        assert_eq!(errors.newest_first()[0].message.chars().count(), 501, "cut, with an ellipsis");
    }
}
