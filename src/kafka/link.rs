//! The connection state of one Kafka client, as librdkafka reports it: what the status page
//! shows per stage and `collector_kafka_connected{stage}` publishes.
//!
//! # How the state is derived
//! Each client of a stage (the flusher's producer; the transform's consumer and producer) asks
//! librdkafka for statistics every [`KafkaLink::interval`] (`statistics.interval.ms`) and hands
//! each report to its link ([`KafkaLink::reported`]). The client is
//! - [`LinkState::Connected`] while its last report has at least one broker connection `UP`
//!   (brokers it was configured with or learned of; librdkafka's internal and logical brokers
//!   are not connections);
//! - [`LinkState::Disconnected`] while its last report has none up (librdkafka is connecting,
//!   or retrying every broker), or when no report came for [`KafkaLink::stale_after`] and the
//!   stage's last Kafka call failed since ([`KafkaLink::call_failed`]): a producer that cannot
//!   initialise is dropped and made again before it ever reports;
//! - [`LinkState::Unknown`] otherwise: no report yet (the client is being made), or none for a
//!   while without a failure (a long Kafka call is blocking the thread that polls it).
//!
//! librdkafka hands out reports only while the client is polled; the stages poll their clients
//! when idle too (the outbox's `idle`, the consumer's own polling), so a quiet pipeline stays
//! `Connected`. What is not seen: a broker that accepts connections but fails every request
//! (the stage's errors show that).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a stage's client knows of its connection to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connected,
    Disconnected,
    Unknown,
}

/// One client's connection state; written from librdkafka's callbacks and the stage's thread,
/// read by the status page and its sampler.
#[derive(Debug)]
pub struct KafkaLink {
    /// The metric label and the status page's name for the client: `flusher`,
    /// `transform_consumer`, `transform_producer`.
    stage: &'static str,
    /// How often the client reports (its `statistics.interval.ms`).
    interval: Duration,
    /// Behind a mutex: a report and a read each take it once a second or so.
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// When the last report came, with its brokers up and known.
    report: Option<(Instant, u32, u32)>,
    /// When the stage's last Kafka call failed.
    failed_at: Option<Instant>,
    /// The state last computed, and since when it holds.
    state: Option<(LinkState, Instant)>,
}

/// A link as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSnapshot {
    pub stage: &'static str,
    pub state: LinkState,
    /// Broker connections up, and brokers known, in the last report.
    pub brokers_up: u32,
    pub brokers_known: u32,
    /// How long ago the last report came (absent: none yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<u64>,
    /// How long the state has held.
    pub for_ms: u64,
}

impl KafkaLink {
    /// A link for a client of `stage` that reports every `interval`.
    pub fn new(stage: &'static str, interval: Duration) -> Self {
        KafkaLink { stage, interval, seen: Mutex::default() }
    }

    pub fn stage(&self) -> &'static str {
        self.stage
    }

    /// The client's `statistics.interval.ms`.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long without a report before the last one no longer counts: three intervals.
    pub fn stale_after(&self) -> Duration {
        self.interval * 3
    }

    /// Takes a statistics report of the client (librdkafka's `stats` callback).
    pub fn reported(&self, statistics: &rdkafka::Statistics) {
        let brokers = statistics.brokers.values().filter(|b| b.source == "learned" || b.source == "configured");
        let (mut up, mut known) = (0, 0);
        for broker in brokers {
            known += 1;
            up += u32::from(broker.state == "UP");
        }
        self.report_brokers(Instant::now(), up, known);
    }

    fn report_brokers(&self, at: Instant, up: u32, known: u32) {
        self.seen.lock().expect("link lock poisoned").report = Some((at, up, known));
        self.publish(at);
    }

    /// The stage's Kafka call failed: without fresh reports, the client counts as disconnected.
    pub fn call_failed(&self) {
        let now = Instant::now();
        self.seen.lock().expect("link lock poisoned").failed_at = Some(now);
        self.publish(now);
    }

    /// The state now, and sets the gauge to it (reports stop coming exactly when a client is
    /// gone, so the sampler calls this every second to let a stale report count as such).
    pub fn publish(&self, now: Instant) -> LinkSnapshot {
        let snapshot = self.snapshot(now);
        crate::telemetry::kafka_connected(self.stage, snapshot.state == LinkState::Connected);
        snapshot
    }

    fn snapshot(&self, now: Instant) -> LinkSnapshot {
        let mut seen = self.seen.lock().expect("link lock poisoned");
        let state = match seen.report {
            Some((at, up, _)) if now.saturating_duration_since(at) <= self.stale_after() => {
                if up > 0 {
                    LinkState::Connected
                } else {
                    LinkState::Disconnected
                }
            }
            report => match seen.failed_at {
                Some(failed) if report.is_none_or(|(at, ..)| failed >= at) => LinkState::Disconnected,
                _ => LinkState::Unknown,
            },
        };
        let since = match seen.state {
            Some((before, since)) if before == state => since,
            _ => {
                seen.state = Some((state, now));
                now
            }
        };
        let (brokers_up, brokers_known) = seen.report.map_or((0, 0), |(_, up, known)| (up, known));
        LinkSnapshot {
            stage: self.stage,
            state,
            brokers_up,
            brokers_known,
            report_age_ms: seen.report.map(|(at, ..)| now.saturating_duration_since(at).as_millis() as u64),
            for_ms: now.saturating_duration_since(since).as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_fresh_report_says_connected_while_a_broker_is_up() {
        let link = KafkaLink::new("flusher", SECOND);
        let t = Instant::now();
        assert_eq!(link.snapshot(t).state, LinkState::Unknown, "no report yet");
        link.report_brokers(t, 1, 2);
        let s = link.snapshot(t + SECOND);
        assert_eq!((s.state, s.brokers_up, s.brokers_known, s.report_age_ms), (LinkState::Connected, 1, 2, Some(1000)));
        link.report_brokers(t + 2 * SECOND, 0, 2);
        assert_eq!(link.snapshot(t + 2 * SECOND).state, LinkState::Disconnected, "every broker down");
    }

    #[test]
    fn a_stale_report_counts_for_nothing_and_a_failed_call_then_means_disconnected() {
        let link = KafkaLink::new("flusher", SECOND);
        let t = Instant::now();
        link.report_brokers(t, 1, 1);
        assert_eq!(link.snapshot(t + 3 * SECOND).state, LinkState::Connected);
        assert_eq!(link.snapshot(t + 4 * SECOND).state, LinkState::Unknown, "blocked in a call, or gone");
        link.call_failed();
        assert_eq!(link.snapshot(Instant::now() + 4 * SECOND).state, LinkState::Disconnected);
        // A failure before a fresh report does not outweigh it.
        let later = Instant::now() + SECOND;
        link.report_brokers(later, 1, 1);
        assert_eq!(link.snapshot(later).state, LinkState::Connected);
    }

    #[test]
    fn a_client_that_never_reported_but_failed_is_disconnected() {
        let link = KafkaLink::new("transform_producer", SECOND);
        link.call_failed();
        assert_eq!(link.snapshot(Instant::now()).state, LinkState::Disconnected);
    }

    #[test]
    fn the_state_remembers_since_when_it_holds() {
        let link = KafkaLink::new("flusher", SECOND);
        let t = Instant::now();
        link.report_brokers(t, 1, 1);
        assert_eq!(link.snapshot(t).for_ms, 0);
        link.report_brokers(t + 2 * SECOND, 1, 1);
        assert_eq!(link.snapshot(t + 2 * SECOND).for_ms, 2000, "still connected since the first report");
        link.report_brokers(t + 3 * SECOND, 0, 1);
        assert_eq!(link.snapshot(t + 3 * SECOND).for_ms, 0, "disconnected just now");
    }
}
