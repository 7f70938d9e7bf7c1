//! The status page's recent history: throughput and backlog sampled once a second (by
//! `sampler.rs`), the last [`History::KEPT`] samples, so that a page opened now shows the last
//! minutes at once.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Counters since start, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub requests_accepted: u64,
    pub events_accepted: u64,
    /// Records the flusher delivered to the raw topic.
    pub records_delivered: u64,
    /// Rows the transform committed (0 without a transform in this process).
    pub rows_transformed: u64,
}

/// One second of the pipeline: rates over the interval before `at_ms`, and the backlog then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub requests_per_s: f64,
    pub events_per_s: f64,
    pub delivered_per_s: f64,
    pub rows_per_s: f64,
    pub wal_pending: u64,
}

impl Sample {
    /// The rates between two readings of the counters `elapsed` apart (a counter never goes
    /// down; if it seems to, the rate is 0).
    pub fn between(before: &Totals, after: &Totals, elapsed: Duration, at_ms: u64, wal_pending: u64) -> Sample {
        let secs = elapsed.as_secs_f64().max(0.001);
        // One decimal: the page shows no more, and the document stays small.
        let rate = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs * 10.0).round() / 10.0;
        Sample {
            at_ms,
            requests_per_s: rate(before.requests_accepted, after.requests_accepted),
            events_per_s: rate(before.events_accepted, after.events_accepted),
            delivered_per_s: rate(before.records_delivered, after.records_delivered),
            rows_per_s: rate(before.rows_transformed, after.rows_transformed),
            wal_pending,
        }
    }
}

/// The last samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    /// Behind a mutex: one push a second, one read per status request.
    samples: Mutex<VecDeque<Sample>>,
}

/// The history as the status document carries it: one array per figure, oldest first, one
/// value per `interval_ms`, the last taken at `last_ms` (compact: the page asks every second).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistorySnapshot {
    pub interval_ms: u64,
    /// When the newest sample was taken (ms since the epoch; absent before the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<u64>,
    pub requests_per_s: Vec<f64>,
    pub events_per_s: Vec<f64>,
    pub delivered_per_s: Vec<f64>,
    pub rows_per_s: Vec<f64>,
    pub wal_pending: Vec<u64>,
}

impl History {
    /// Samples kept: five minutes.
    pub const KEPT: usize = 300;

    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("history lock poisoned");
        if samples.len() == Self::KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn snapshot(&self) -> HistorySnapshot {
        let samples = self.samples.lock().expect("history lock poisoned");
        let column = |f: fn(&Sample) -> f64| samples.iter().map(f).collect();
        HistorySnapshot {
            interval_ms: SAMPLE_EVERY.as_millis() as u64,
            last_ms: samples.back().map(|s| s.at_ms),
            requests_per_s: column(|s| s.requests_per_s),
            events_per_s: column(|s| s.events_per_s),
            delivered_per_s: column(|s| s.delivered_per_s),
            rows_per_s: column(|s| s.rows_per_s),
            wal_pending: samples.iter().map(|s| s.wal_pending).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(n: u64) -> Totals {
        Totals { requests_accepted: n, events_accepted: 3 * n, records_delivered: n / 2, rows_transformed: n }
    }

    #[test]
    fn a_sample_holds_the_rates_between_two_readings() {
        let s = Sample::between(&totals(10), &totals(30), Duration::from_millis(2000), 5, 7);
        assert_eq!((s.requests_per_s, s.events_per_s, s.delivered_per_s, s.rows_per_s), (10.0, 30.0, 5.0, 10.0));
        assert_eq!((s.at_ms, s.wal_pending), (5, 7));
        let back = Sample::between(&totals(30), &totals(10), Duration::from_secs(1), 6, 0);
        assert_eq!(back.requests_per_s, 0.0, "a counter that seems to go down gives no rate");
        let third = Sample::between(&totals(0), &totals(1), Duration::from_secs(3), 7, 0);
        assert_eq!(third.requests_per_s, 0.3, "one decimal");
    }

    #[test]
    fn the_history_keeps_the_last_five_minutes_oldest_first() {
        let history = History::default();
        assert_eq!(history.snapshot().last_ms, None);
        for i in 0..(History::KEPT as u64 + 20) {
            history.push(Sample::between(&totals(0), &totals(i), SAMPLE_EVERY, 1000 + i, i));
        }
        let snapshot = history.snapshot();
        assert_eq!(snapshot.requests_per_s.len(), History::KEPT);
        assert_eq!(snapshot.wal_pending.first(), Some(&20));
        assert_eq!(snapshot.last_ms, Some(1000 + History::KEPT as u64 + 19));
        assert_eq!(snapshot.interval_ms, 1000);
    }
}
