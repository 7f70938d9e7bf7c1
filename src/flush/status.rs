//! Live state of the flusher: for the status page, and for `/collect` under `--ack kafka`,
//! which answers only once Kafka confirmed the request's record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::kafka::KafkaLink;
use crate::telemetry::RecentErrors;

/// How often the flusher's producer reports its statistics (its connection state).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(1);

/// How many set-aside sequence numbers are remembered for waiting requests: far more than can
/// be set aside while one request waits (each takes three refused deliveries).
const SET_ASIDE_REMEMBERED: usize = 1024;

/// Written by the flusher thread, read by the status handlers and by requests waiting for Kafka.
#[derive(Debug)]
pub struct FlushStatus {
    kafka_ok: AtomicBool,
    /// Set by a failed Kafka call, cleared by the next success. The flusher retries what failed
    /// until it succeeds, so this never stays set while Kafka is back.
    failing: AtomicBool,
    /// Set with `failing` when a reachable Kafka refused the call (topic creation, credentials),
    /// which retrying alone will not mend; cleared by the next success or other failure.
    refusing: AtomicBool,
    delivered_records: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The highest WAL sequence number Kafka has confirmed: every record up to it is in the raw
    /// topic (committed, in exactly-once mode), or was set aside.
    confirmed: watch::Sender<u64>,
    /// Recently set-aside records: confirmed in the sense above, yet not in Kafka.
    set_aside: Mutex<VecDeque<u64>>,
    /// The producer's connection state (stage `flusher`).
    pub link: Arc<KafkaLink>,
    /// Where every failure is also noted, with the other stages' (stage `flusher`, or `wal`
    /// for a WAL the flusher cannot read).
    errors: Arc<RecentErrors>,
}

impl Default for FlushStatus {
    /// With errors noted nowhere else (unit tests).
    fn default() -> Self {
        FlushStatus::new(Arc::default())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FlushSnapshot {
    /// The last batch went through.
    pub kafka_ok: bool,
    /// Kafka answers, and refuses what the flusher asks (see [`FlushStatus::refused`]).
    pub refusing: bool,
    /// Records delivered since start.
    pub delivered_records: u64,
    pub last_error: Option<String>,
}

/// What became of a WAL record, as far as the flusher knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Kafka has it.
    Delivered,
    /// Kafka refused it for what it is; it is in the WAL's quarantine instead.
    SetAside,
}

impl FlushStatus {
    /// A flusher's status that notes its failures in `errors` too.
    pub fn new(errors: Arc<RecentErrors>) -> Self {
        FlushStatus {
            kafka_ok: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            delivered_records: AtomicU64::new(0),
            last_error: Mutex::new(None),
            confirmed: watch::channel(0).0,
            set_aside: Mutex::new(VecDeque::new()),
            link: Arc::new(KafkaLink::new("flusher", STATISTICS_INTERVAL)),
            errors,
        }
    }

    pub fn snapshot(&self) -> FlushSnapshot {
        FlushSnapshot {
            kafka_ok: self.kafka_ok.load(Ordering::Relaxed),
            refusing: self.refusing.load(Ordering::Relaxed),
            delivered_records: self.delivered_records.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("status lock poisoned").clone(),
        }
    }

    /// Records delivered since start (one atomic read, for the status page's sampler).
    pub fn delivered_records(&self) -> u64 {
        self.delivered_records.load(Ordering::Relaxed)
    }

    /// Whether the flusher's last Kafka call failed and it is retrying.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Waits until Kafka confirmed record `seq`, and says what became of it. Never returns if
    /// the flusher never gets there: the caller bounds the wait.
    pub async fn confirmation(&self, seq: u64) -> Fate {
        let mut confirmed = self.confirmed.subscribe();
        // `Err` only if the sender is gone, and `self` holds it.
        let _ = confirmed.wait_for(|&through| through >= seq).await;
        if self.set_aside.lock().expect("status lock poisoned").contains(&seq) {
            Fate::SetAside
        } else {
            Fate::Delivered
        }
    }

    /// Every record up to `seq` is confirmed by Kafka (or set aside).
    pub(super) fn confirmed_through(&self, seq: u64) {
        self.confirmed.send_if_modified(|through| {
            let advanced = seq > *through;
            if advanced {
                *through = seq;
            }
            advanced
        });
    }

    /// Record `seq` was set aside; called before [`FlushStatus::confirmed_through`] passes it.
    pub(super) fn set_aside(&self, seq: u64) {
        let mut set_aside = self.set_aside.lock().expect("status lock poisoned");
        if set_aside.len() == SET_ASIDE_REMEMBERED {
            set_aside.pop_front();
        }
        set_aside.push_back(seq);
    }

    /// The flusher reached Kafka (a producer is ready and the position read).
    pub(super) fn connected(&self) {
        self.kafka_ok.store(true, Ordering::Relaxed);
        self.failing.store(false, Ordering::Release);
        self.refusing.store(false, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = None;
    }

    pub(super) fn ok(&self, records: usize) {
        self.delivered_records.fetch_add(records as u64, Ordering::Relaxed);
        self.connected();
    }

    /// A Kafka call failed: the status page says so, and the producer counts as disconnected
    /// until it reports again.
    pub(super) fn failed(&self, error: String) {
        self.refusing.store(false, Ordering::Relaxed);
        self.fail(error);
    }

    /// A reachable Kafka refused the call: it would not create the topics (a replication above
    /// its brokers, a missing ACL), or turned the credentials down. Retried like any failure,
    /// but the status page says Kafka refuses rather than that it is away.
    pub(super) fn refused(&self, error: String) {
        self.refusing.store(true, Ordering::Relaxed);
        self.fail(error);
    }

    fn fail(&self, error: String) {
        self.kafka_ok.store(false, Ordering::Relaxed);
        self.failing.store(true, Ordering::Release);
        self.link.call_failed();
        self.errors.note("flusher", error.as_str());
        *self.last_error.lock().expect("status lock poisoned") = Some(error);
    }

    /// Reading the WAL failed.
    pub(super) fn wal_failed(&self, error: String) {
        self.errors.note("wal", error);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_confirmation_waits_until_the_flusher_passes_the_record_and_says_if_it_was_set_aside() {
        let status = FlushStatus::default();
        status.confirmed_through(4);
        assert_eq!(status.confirmation(3).await, Fate::Delivered, "already confirmed");
        let waiting = status.confirmation(6);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut waiting).await.is_err(), "6 is not confirmed yet");
        status.confirmed_through(5);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut waiting).await.is_err(), "nor at 5");
        status.set_aside(6);
        status.confirmed_through(7);
        assert_eq!(waiting.await, Fate::SetAside);
        // The watermark never goes back (a skipped range acknowledged again, say).
        status.confirmed_through(2);
        assert_eq!(status.confirmation(7).await, Fate::Delivered);
    }

    #[test]
    fn failing_lasts_from_a_failed_call_to_the_next_success() {
        let status = FlushStatus::default();
        assert!(!status.failing(), "not before the first call");
        status.failed("broker down".into());
        assert!(status.failing());
        status.connected();
        assert!(!status.failing());
        status.failed("aborted".into());
        status.ok(10);
        assert!(!status.failing());
        assert_eq!(status.snapshot().delivered_records, 10);
    }
}
